"""The call engine: one logical call across its attempts, for every integration.

A logical call — an HTTP request, a TCP connect, a gRPC call — may take several
attempts on different endpoints. What to do between them is decided here, once,
without I/O (the sans-I/O style of h11: the engine decides, the integration's
shell only does what it is told; docs/architecture.md, "The call engine"):

* :meth:`LogicalCall.pick` — the next endpoint: the sticky one first when
  there is one, then never one already tried while another may take the call;
* :meth:`LogicalCall.after_failure` — after a failed attempt: retry at once,
  after a delay, or stop (and why), under one rule:

  1. no retry policy (``LoadBalancer(retry=None)``, read *live* from the
     balancer when the call starts, so ``Registry.update(retry=...)`` reaches
     every integration): never retry;
  2. an attempt that **never reached** a backend (connection refused, connect
     timeout, TLS handshake failure — gRPC's "transparent retry", gRFC A6) is
     retried at once on another endpoint. It costs nothing from the retry
     budget, which exists to stop retries from multiplying the load on
     backends, and these added none; it is bounded instead by the number of
     endpoints (each at most once per call) and by the integration's own cap
     (``transparent_retries=``, TCP's ``attempts=``);
  3. an attempt that **may have reached** one is retried only when the
     integration says the failure is retryable (an HTTP status in
     ``RetryPolicy.statuses`` or an I/O error, a gRPC code in
     ``retryable_codes``) *and* the call may be replayed (idempotent, opted
     in, a body that can be sent again); then after the policy's jittered
     backoff (``Retry-After`` honoured up to its cap), within the policy's
     ``attempts``, and only when the balancer's :class:`RetryBudget` has a
     token (Finagle's budget: an outage never becomes a retry storm);
  4. never past the call's deadline (``deadline=``: the total time of the
     logical call, all attempts and backoffs included).

* hedging (``_engine/hedging.py``), for a call given a :class:`Hedging`:
  :meth:`LogicalCall.hedge_delay` — when the next hedge is due (at once for a
  probe of a slow endpoint), or that none is; :meth:`LogicalCall.take_hedge` —
  pay for one from the extra-load budget and the retry budget;
  :meth:`LogicalCall.lost` — what becomes of an attempt another one beat (the
  strategy's own pick runs on to its end; a hedge is cancelled, its wait
  reported as a lower bound of its endpoint's latency); :meth:`LogicalCall.won`
  — count a hedge that answered first; :meth:`LogicalCall.answered` — the
  latency of the answer, for the adaptive delay. The shells start, wait for and
  cancel the attempts.
* :class:`Completion` — the one way an attempt reports its outcome: created
  next to the pick, carried into whatever the call returns (a response
  stream, a socket, a gRPC call object, as tower's ``TrackCompletion``), and
  finished exactly once, which reports the outcome to the balancer and
  releases the integration's resources (a pool slot, a sub-channel count).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable
from typing import TYPE_CHECKING, Any

from .._core.outcome import Outcome
from .._ops.telemetry import record_budget_exhausted, record_hedge, record_retry
from .hedging import HedgeState, Hedging
from .retry import RetryBudget, RetryPolicy, RetryState

if TYPE_CHECKING:
    from .._core.balancer import LoadBalancer, Pick
    from .._strategies import Key

__all__ = ["Completion", "LogicalCall", "describe"]

_SUCCESS = Outcome.SUCCESS
LIVE_POLICY: Any = object()


def describe(outcome: Outcome, detail: str) -> str:
    """``"outcome: detail"`` for error messages naming every attempt."""
    return f"{outcome.value}: {detail}" if detail else outcome.value


class Completion:
    """Reports one attempt's outcome exactly once, then releases what it held.

    ``outcome`` may be updated while the attempt runs (a response status, an
    error while reading a body); :meth:`finish` reports it with the latency
    measured to ``first_byte`` when the shell set one (time to response
    headers), else to now. Idempotent: every cleanup path may call it.
    """

    __slots__ = ("finished", "first_byte", "outcome", "pick", "release")

    def __init__(self, pick: Pick, release: Callable[[], Any] | None = None) -> None:
        self.pick = pick
        self.release = release
        self.outcome = _SUCCESS
        self.first_byte: float | None = None
        self.finished = False

    @property
    def address(self) -> str:
        return self.pick.address

    def mark_first_byte(self) -> None:
        """The attempt got its first answer (response headers, a connection): the
        latency reported is measured to now."""
        self.first_byte = self.pick.elapsed()

    def finish(self, outcome: Outcome | None = None) -> Any:
        """Report the outcome (``outcome`` or the one recorded); returns what
        ``release`` returned (e.g. a pool to close), None the second time."""
        if self.finished:
            return None
        self.finished = True
        self.pick.done(self.outcome if outcome is None else outcome, self.first_byte)
        release = self.release
        return release() if release is not None else None

    def __repr__(self) -> str:
        status = "finished" if self.finished else "in flight"
        return f"<Completion {self.pick.address} {self.outcome.value} {status}>"


class LogicalCall:
    """One logical call's attempts: the endpoints tried, the retry state, the deadline.

    Args:
        lb: the balancer (its retry policy and budget are read now, once per call).
        key: the pick key (``ring_hash``/``maglev``).
        prefer: the address of a sticky endpoint for the first attempt.
        replayable: whether an attempt that may have reached a backend may be
            sent again (idempotent method, opt-in, replayable body).
        deadline: seconds for the whole call; None: the policy's ``deadline``.
        max_unreached: a cap on retries of attempts that never reached a
            backend (None: each endpoint once).
        policy: a policy overriding the balancer's (gRPC's ``max_attempts=``).
        hedging: the :class:`Hedging` of this call when it may be hedged (the
            integration decides: method, body, opt-in); None: never hedged.
    """

    __slots__ = ("budget", "deadline_at", "hedger", "hedges", "hedging", "key", "lb",
                 "max_unreached", "note", "policy", "prefer", "probe", "replayable",
                 "retry_state", "tried", "unreached")

    def __init__(self, lb: LoadBalancer, *, key: Key | None = None, prefer: str | None = None,
                 replayable: bool = True, deadline: float | None = None,
                 max_unreached: int | None = None,
                 policy: RetryPolicy | None = LIVE_POLICY,
                 hedging: Hedging | None = None) -> None:
        self.lb = lb
        self.policy: RetryPolicy | None = lb.retry_policy if policy is LIVE_POLICY else policy
        budget: RetryBudget | None = lb.retry_budget
        self.budget = budget
        if budget is not None:
            budget.deposit()
        self.key = key
        self.prefer = prefer
        self.replayable = replayable
        if deadline is None and self.policy is not None:
            deadline = self.policy.deadline
        self.deadline_at = None if deadline is None else time.monotonic() + deadline
        self.max_unreached = max_unreached
        self.tried: list[tuple[str, str]] = []
        self.retry_state: RetryState | None = None
        self.unreached = 0
        self.note = ""
        self.hedging = hedging
        self.hedges = 0
        self.probe: Pick | None = None
        self.hedger: HedgeState | None = None
        if hedging is not None:
            self.hedger = lb.hedge_state()
            self.hedger.begin(hedging)

    # -- attempts ---------------------------------------------------------------------

    def pick(self, busy: Collection[str] = ()) -> Pick:
        """The endpoint of the next attempt (raises :class:`NoEndpointAvailable`); never
        one already tried, nor one of ``busy`` (a hedge's: those of the attempts in
        flight), while another may take the call."""
        if not self.tried and not busy:
            return self.lb.pick(self.key, prefer=self.prefer)
        return self.lb.pick(self.key, exclude=self.tried_addresses().union(busy))

    def tried_addresses(self) -> set[str]:
        return {address for address, _ in self.tried}

    def remaining(self) -> float | None:
        """Seconds left before the deadline (None: no deadline; may be <= 0)."""
        if self.deadline_at is None:
            return None
        return self.deadline_at - time.monotonic()

    def timeout(self, per_attempt: float | None) -> float | None:
        """An attempt's timeout: ``per_attempt`` bounded by the time left."""
        left = self.remaining()
        if left is None:
            return per_attempt
        return left if per_attempt is None else min(per_attempt, left)

    def after_failure(self, address: str, outcome: Outcome, *, reached: bool, retryable: bool,
                      detail: str = "", retry_after: float | None = None,
                      reason: str | None = None) -> float | None:
        """Record a failed attempt on ``address``; the delay before the next one
        (0: at once), or None to stop (:attr:`note` may say why)."""
        self.tried.append((address, describe(outcome, detail)))
        lb = self.lb
        policy = self.policy
        if policy is None:
            return None
        reason = reason or outcome.value
        left = self.remaining()
        if left is not None and left <= 0:
            self.note = "deadline exceeded"
            return None
        if not reached:
            self.unreached += 1
            if self.max_unreached is not None and self.unreached > self.max_unreached:
                return None
            if len(self.tried_addresses()) >= len(lb.endpoints()):
                self.note = "every endpoint tried"
                return None
            record_retry(lb, attempt=len(self.tried) + 1, reason=reason, endpoint=address)
            return 0.0
        if not (retryable and self.replayable):
            return None
        state = self.retry_state
        if state is None:
            state = self.retry_state = policy.start(lb.rng)
        delay = state.next_delay(retry_after)
        if delay is None:
            return None
        if left is not None and delay >= left:
            self.note = "deadline exceeded"
            return None
        budget = self.budget
        if budget is not None and not budget.try_withdraw():
            self.note = "retry budget exhausted"
            record_budget_exhausted(lb)
            return None
        record_retry(lb, attempt=len(self.tried) + 1, reason=reason, endpoint=address)
        return delay

    def can_fail_over(self, address: str) -> bool:
        """Could an attempt on ``address`` that never reaches a backend be followed by
        one on another endpoint? (Rule 2 of :meth:`after_failure`, asked beforehand: a
        call that cannot be replayed waits for a connection only when it may move on.)"""
        if self.policy is None:
            return False
        left = self.remaining()
        if left is not None and left <= 0:
            return False
        if self.max_unreached is not None and self.unreached >= self.max_unreached:
            return False
        return len(self.tried_addresses() | {address}) < len(self.lb.endpoints())

    # -- hedging (clientlb._engine.hedging) ----------------------------------------------

    def hedge_delay(self, alone: Pick | None = None) -> float | None:
        """Seconds from now until the next hedge is due, or None when none will be.

        ``alone``: the attempt just started with no other in flight (the first, or a
        retry). When its endpoint is known to be slow now — the probe rule: its latency
        estimate is ``PROBE_FACTOR`` times the typical endpoint's or more; the lagging
        rule: it holds an attempt still unanswered past its hedge delay — the hedge is
        due at once (0) and that attempt is the call's probe (:meth:`lost` lets it
        finish).
        """
        hedging = self.hedging
        hedger = self.hedger
        if hedging is None or hedger is None or self.hedges >= hedging.max_attempts - 1:
            return None
        delay = hedger.delay(hedging)
        if delay is None:
            return None
        if alone is not None and hedger.is_probe(alone, delay, len(self.lb.endpoints())):
            self.probe = alone
            delay = 0.0
        left = self.remaining()
        if left is not None and delay >= left:
            return None
        return delay

    def take_hedge(self, attempt: int, endpoint: str | None = None,
                   waiting: Iterable[Pick] = ()) -> bool:
        """Pay one hedge (the ``attempt``-th attempt; ``endpoint``: the slow one's address)
        from the extra-load budget and the retry budget; False when either is spent.

        ``waiting``: the attempts in flight, unanswered — when the hedge is due to the
        delay (not a probe's), their endpoints are lagging (``HedgeState.lagging``),
        whether or not a budget allows the hedge.
        """
        budget = self.budget
        hedging = self.hedging
        hedger = self.hedger
        probe = self.hedges == 0 and self.probe is not None
        if hedging is None or hedger is None:  # a policy without hedging: the budget only
            taken = budget is None or budget.try_withdraw()
        else:
            if not probe:
                hedger.lagging(waiting)
            taken = hedger.take(hedging, None if budget is None else budget.try_withdraw)
        if not taken:
            record_budget_exhausted(self.lb)
            return False
        if probe and hedger is not None:
            hedger.count("probes")
        self.hedges += 1
        record_hedge(self.lb, attempt=attempt, reason="probe" if probe else "delay",
                     endpoint=endpoint)
        return True

    def lost(self, pick: Pick, hedge: bool) -> bool:
        """Another attempt answered first: True when ``pick``'s attempt is to run on — the
        strategy's own pick (the first attempt, a retry, a probe), whose end tells the
        balancer what the endpoint it chose did, and whose in-flight count stays true
        while the endpoint works on it (over HTTP/1.1 a cancel only closes the client's
        connection); False for a ``hedge``, to be cancelled — then the time it waited is
        reported as a lower bound of its endpoint's latency (``Pick.outlasted``)."""
        if not hedge:
            return True
        pick.outlasted()
        return False

    def answered(self, latency: float | None) -> None:
        """The call's answer came, a success ``latency`` seconds after its attempt started:
        a sample of the adaptive delay (only the answers callers get count)."""
        hedger = self.hedger
        if hedger is not None and latency is not None:
            hedger.answered(latency)

    def won(self, hedge: bool) -> None:
        """The call's answer came from a hedge (``hedge``) or from the attempt it hedged."""
        if hedge and self.hedger is not None:
            self.hedger.count("won")

    def describe_failure(self, first_line: str) -> str:
        """``first_line`` followed by the service and every attempt that failed."""
        tried = self.tried
        note = f"; {self.note}" if self.note else ""
        name = self.lb.name
        if not tried:
            return f"{first_line} (service {name!r}{note})"
        if len(tried) == 1:
            return f"{first_line} (service {name!r}, endpoint {tried[0][0]}{note})"
        steps = "; ".join(f"{a} → {d}" for a, d in tried)
        return f"{first_line} (service {name!r}: {len(tried)} attempts failed: {steps}{note})"



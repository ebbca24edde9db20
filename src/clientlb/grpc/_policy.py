"""One logical gRPC call's policy, sans I/O: the state machine both channel shells drive.

Every call through a balanced channel — unary or streaming, blocking, future,
grpc.aio, hedged or not — is one :class:`RpcCall` built on the call engine's
``LogicalCall`` (docs/architecture.md, "The call engine" and "Integrations").
It decides; the shells (``_channel`` for sync grpcio, ``aio`` for grpc.aio) only
start grpcio calls, wait and sleep as they are told, so the two cannot disagree:

* :meth:`RpcCall.next` — the next attempt: a pick (never an endpoint already
  tried while another may take the call), its sub-channel, and the attempt's
  :class:`Attempt`, the engine's ``Completion``: one outcome report per attempt,
  carried by the call object until grpcio says the attempt ended;
* :meth:`RpcCall.ended` — an attempt ended with a status: record the ORCA load
  report of its trailing metadata when the strategy reads them
  (:attr:`RpcCall.reads_reports`; ``_engine/orca.record_trailers``), report its outcome
  (``_common.classify``: "failed to connect" ``UNAVAILABLE`` is a
  ``CONNECT_FAILURE``, any other ``UNAVAILABLE`` a ``GATEWAY_FAILURE``) and say
  what follows — ``None``: this attempt's answer is the call's; a delay: start
  another attempt after it; :data:`WAIT`: nothing now (hedges in flight);
* :meth:`RpcCall.must_connect_first` / :meth:`RpcCall.unready` — a call that
  cannot be replayed (client and bidi streams) is only sent on a READY
  sub-channel, as gRPC's own balancers only pick READY sub-channels; one that
  does not connect in time is that attempt's ``CONNECT_FAILURE``.

The retry rule is the engine's, gRFC A6's in gRPC words: an attempt that never
reached a server is retried at once on another endpoint (*transparent retry*,
free of the budget, at most ``transparent_retries`` times); one that did is
retried only for a code of ``retryable_codes`` while the call can be replayed
(a unary request, or a server-streaming one before its first message), after
the balancer's backoff, within ``max_attempts`` and the retry budget; never past
the call's ``timeout``, which bounds the whole call, every attempt included.
The policy and budget are the balancer's *at call start*, so
``Registry.update(retry=...)`` reaches existing channels.

Hedging (gRFC A6 hedging policy, with the engine's decisions: ``_engine/hedging.py``)
is the same machine with several attempts in flight: a hedge starts every hedge
delay (``Hedging.delay``, or adaptive) while none has answered — at once when the
first attempt probes an endpoint known to be slow — or at once after a non-fatal
failure; each is paid with ``LogicalCall.take_hedge`` (extra-load and retry
budgets); the first success or fatal answer wins and the shell cancels the hedges
(:meth:`RpcCall.losers`); the first attempt runs on and is reported when it ends.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import grpc

from .._core.errors import NoEndpointAvailable
from .._core.outcome import Outcome
from .._engine.call import Completion, LogicalCall
from .._engine.connectivity import PROBE_TIMEOUT, Connectivity
from .._engine.hedging import LIVE_HEDGING, Hedging
from .._engine.orca import record_trailers
from ._common import NoEndpointRpcError, classify

if TYPE_CHECKING:
    from .._core.balancer import Pick
    from ._pool import ChannelBase, SubChannel

__all__ = ["WAIT", "Attempt", "RpcCall", "connect_verdict"]

#: :meth:`RpcCall.ended`: nothing to start now, other attempts are in flight.
WAIT = math.inf

_OK = grpc.StatusCode.OK
_CANCELLED_CODE = grpc.StatusCode.CANCELLED
_CANCELLED = Outcome.CANCELLED
_CONNECT_FAILURE = Outcome.CONNECT_FAILURE
_READY = grpc.ChannelConnectivity.READY
_FAILING = grpc.ChannelConnectivity.TRANSIENT_FAILURE
_SHUTDOWN = grpc.ChannelConnectivity.SHUTDOWN


def connect_verdict(state: grpc.ChannelConnectivity, early: bool) -> bool | None:
    """A sub-channel being waited for is in ``state``: True when READY, False when it
    cannot connect (shut down; in TRANSIENT_FAILURE, when ``early``), None: wait on.

    ``early=False`` is the connect probe's patience: a sub-channel in grpcio's own
    reconnect backoff stays in TRANSIENT_FAILURE until it connects, so only READY
    (or the probe's timeout) ends the wait.
    """
    if state is _READY:
        return True
    if state is _SHUTDOWN or (early and state is _FAILING):
        return False
    return None


class Attempt(Completion):
    """One attempt: the engine's completion, the sub-channel it holds, its grpcio call."""

    __slots__ = ("call", "sub")

    def __init__(self, pick: Pick, sub: SubChannel) -> None:
        super().__init__(pick, sub.release)
        self.sub = sub
        self.call: Any = None


class RpcCall:
    """The policy of one logical gRPC call (see the module doc); not thread-safe."""

    __slots__ = ("attempts", "channel", "config", "done", "first", "hedge_ok", "hedging",
                 "in_flight", "latest", "logical", "reads_reports", "replay", "wfr")

    def __init__(self, channel: ChannelBase, method: str, request: Any, metadata: Any,
                 timeout: float | None, wait_for_ready: bool | None, *,
                 replayable: bool = True, hedge: bool = False) -> None:
        self.config = config = channel.config
        lb = channel.lb
        hash_key = config.hash_key
        source, policy = config.policy_cache  # config.policy(lb) without a call, mostly
        hedging: Hedging | None = None
        if hedge:
            hedging = config.hedging
            if hedging is LIVE_HEDGING:  # the balancer's: only the gRPC methods it names
                hedging = lb.hedging
                if hedging is not None and not hedging.names_grpc_methods():
                    hedging = None
            if hedging is not None and not hedging.applies_to(method):
                hedging = None
        self.hedging = hedging
        self.logical = LogicalCall(
            lb, key=None if hash_key is None else hash_key(method, request, metadata),
            replayable=replayable, deadline=timeout, max_unreached=config.max_unreached,
            policy=policy if source is lb.retry_policy else config.policy(lb), hedging=hedging)
        self.channel = channel
        self.wfr = wait_for_ready
        #: may a failed attempt be replaced? Never for client streams (their requests
        #: are an iterator), and no longer once a server stream's first message came.
        self.replay = replayable
        self.attempts = 0
        self.in_flight = 0
        self.done = False
        self.hedge_ok = True
        self.first: Attempt | None = None
        self.latest: Attempt | None = None
        #: whether the shells pass each attempt's trailing metadata (ORCA load reports)
        self.reads_reports: bool = lb.strategy.uses_load_reports

    def next(self) -> Attempt:
        """Start an attempt: pick an endpoint and count it on its sub-channel.

        Raises :class:`NoEndpointRpcError`, or the channel's closed error.
        """
        channel = self.channel
        while True:
            if channel.closed:  # checked before the pick: no pick is left in flight
                raise channel.closed_error("Cannot invoke RPC on closed channel!")
            try:
                pick = self.logical.pick()
            except NoEndpointAvailable as exc:
                raise NoEndpointRpcError(exc) from exc
            sub = channel.sub_channel(pick.endpoint)
            if sub.acquire():
                break
            pick.done(_CANCELLED)  # closed between the pick and now: pick again
        self.attempts += 1
        self.in_flight += 1
        attempt = Attempt(pick, sub)
        if self.hedging is not None:  # hedges go to endpoints not yet tried
            self.logical.tried.append((pick.address, "hedged"))
            self.latest = attempt
            if self.first is None:
                self.first = attempt
        return attempt

    def timeout(self) -> float | None:
        """The attempt's grpcio ``timeout``: what is left of the call's."""
        logical = self.logical
        return None if logical.deadline_at is None else logical.timeout(None)

    def wait_for_ready(self) -> bool | None:
        """The attempt's ``wait_for_ready``.

        With ``wait_for_ready=True`` a grpcio channel queues a call while its
        endpoint cannot connect; behind a balancer that would pin the call to a
        dead endpoint while others are up. gRPC's own balancers only wait when
        *no* endpoint is ready; likewise, an attempt that another endpoint could
        still take goes out without waiting (and fails over transparently), and
        only the last candidate waits.
        """
        wfr = self.wfr
        if not wfr:
            return wfr
        logical = self.logical
        cap = logical.max_unreached
        if logical.policy is None or (cap is not None and logical.unreached >= cap):
            return wfr
        if len(logical.tried_addresses()) + 1 < len(logical.lb.endpoints()):
            return False
        return wfr

    def must_connect_first(self, attempt: Attempt,
                           state: grpc.ChannelConnectivity | None = None) -> bool:
        """Should a call that cannot be replayed wait for its sub-channel to connect?

        grpcio's own balancers only send to READY sub-channels; a client- or
        bidi-streaming call sent to an endpoint that cannot connect is lost (its
        requests cannot be sent again). So such a call first waits — at most
        :meth:`connect_timeout` — until its sub-channel is READY when grpcio says it is
        not (``state``, where the shell can read it cheaply) or, without ``state``,
        when no call has reached the endpoint since it was last seen failing (the
        engine's connectivity). A last candidate with ``wait_for_ready`` lets grpcio
        wait instead.
        """
        if self.logical.replayable or self.wait_for_ready():
            return False
        if state is not None:
            return state is not _READY
        endpoint = self.logical.lb.state_of(attempt.address)
        return endpoint is not None and endpoint.connectivity is not Connectivity.READY

    def connect_timeout(self) -> float:
        """How long a sub-channel may take to connect before its endpoint is skipped."""
        return self.logical.timeout(PROBE_TIMEOUT) or 0.0

    def unready(self, attempt: Attempt) -> bool:
        """The attempt's sub-channel did not connect in time: report a connect failure
        (the call never left); True when another endpoint may take the call."""
        attempt.finish(_CONNECT_FAILURE)
        self.in_flight -= 1
        return self.logical.after_failure(
            attempt.address, _CONNECT_FAILURE, reached=False, retryable=False,
            detail="sub-channel not ready", reason="transparent_not_ready") is not None

    def report(self, attempt: Attempt, code: grpc.StatusCode | None,
               details: str | None, trailers: Any = None) -> Outcome:
        """Finish the attempt's completion with the outcome of ``code`` (after recording
        the load report in ``trailers``, its trailing metadata, when there is one)."""
        if trailers:
            record_trailers(attempt, trailers)
        outcome = classify(code, details, self.config.failure_codes)
        attempt.finish(outcome)
        return outcome

    def ended(self, attempt: Attempt, code: grpc.StatusCode | None,
              details: str | None, trailers: Any = None) -> float | None:
        """The attempt ended with ``code``: report it, then what follows (module doc)."""
        return self.decide(attempt, self.report(attempt, code, details, trailers), code)

    def failed(self, attempt: Attempt, code: grpc.StatusCode | None,
               details: str | None) -> float | None:
        """A stream attempt failed (its done callback reports it): what follows."""
        if not self.replay:
            self.done = True
            return None
        return self.decide(attempt, classify(code, details, self.config.failure_codes), code)

    def decide(self, attempt: Attempt, outcome: Outcome,
               code: grpc.StatusCode | None) -> float | None:
        """What follows an attempt that ended with ``outcome`` (reported already)."""
        self.in_flight -= 1
        if self.done:
            return WAIT
        if code is _OK or code is _CANCELLED_CODE or code is None:
            self.done = True
            if code is _OK:
                self.logical.answered(attempt.pick.elapsed())  # the adaptive delay's sample
            return None
        reached = outcome is not _CONNECT_FAILURE
        hedging = self.hedging
        if hedging is not None:
            retryable = self.config.retryable_codes
            if not reached or code.name in hedging.non_fatal_codes or code in retryable:
                if self.hedge():
                    return 0.0
                if self.in_flight:
                    return WAIT
            self.done = True
            return None
        name = code.name.lower()
        delay = self.logical.after_failure(
            attempt.address, outcome, reached=reached,
            retryable=code in self.config.retryable_codes,
            detail=code.name, reason=name if reached else f"transparent_{name}")
        if delay is None:
            self.done = True
        return delay

    def hedge_delay(self) -> float | None:
        """Seconds before the next hedge should start, or None when none may (the
        engine's delay: fixed or adaptive, 0 when a lone attempt probes a slow endpoint)."""
        hedging = self.hedging
        if hedging is None or self.done or not self.hedge_ok \
                or self.attempts >= hedging.max_attempts:
            return None
        latest = self.latest
        return self.logical.hedge_delay(
            latest.pick if latest is not None and self.in_flight == 1 else None)

    def hedge(self) -> bool:
        """May a hedge start now? It is paid from the extra-load and retry budgets (gRFC A6
        throttling)."""
        if self.hedging is None or self.done or not self.hedge_ok \
                or self.attempts >= self.hedging.max_attempts:
            return False
        latest = self.latest
        self.hedge_ok = self.logical.take_hedge(
            self.attempts + 1, None if latest is None else latest.address,
            () if latest is None else (latest.pick,))
        return self.hedge_ok

    def losers(self, winner: Attempt | None, live: list[Attempt]) -> list[Attempt]:
        """The race is over (``winner``: the attempt whose answer is the call's; None when
        the call was cancelled or failed): the attempts of ``live`` to cancel — the hedges.
        The first attempt, the strategy's own pick, runs on and reports what its endpoint
        did (``LogicalCall.lost``)."""
        logical = self.logical
        if winner is None:
            return list(live)
        logical.won(winner is not self.first)
        return [a for a in live
                if a is not winner and not logical.lost(a.pick, a is not self.first)]

    def __repr__(self) -> str:
        status = "done" if self.done else f"{self.in_flight} in flight"
        return f"<RpcCall {self.attempts} attempts, {status}>"

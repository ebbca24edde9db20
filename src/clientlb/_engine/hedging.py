"""Hedged requests: a second attempt on another endpoint when the first is slow to answer.

A service that fans out to many backends feels their slowest answers: when a page
needs 100 calls, one call in a hundred at its p99 makes the page slow at its median.
Dean and Barroso ("The Tail at Scale", CACM 56(2), 2013) showed the remedy that
costs least: *defer sending a secondary request until the first has been
outstanding for more than the 95th-percentile expected latency* — which limits the
extra load to about 5% while cutting the tail (BigTable's 99.9th percentile fell
from 1,800 ms to 74 ms for 2% more requests). Finagle's ``BackupRequestFilter`` and
gRPC's hedging policy (gRFC A6) are that idea; this module is clientlb's, shared by
the HTTP transports and the gRPC channels through the call engine
(docs/architecture.md, "The call engine"):

* :class:`Hedging` — the policy (one type for HTTP and gRPC).
* :class:`LatencyWindow` — the *adaptive delay* (``Hedging(delay=None)``): the
  95th percentile of the latencies of the answers the balancer's hedgeable calls got
  (the winning attempt's time to its answer: "the expected latency for this class of
  requests"); a fixed ring of :data:`WINDOW` samples, the percentile recomputed every
  :data:`REFRESH_EVERY` samples, never on a pick. Nothing is hedged on an adaptive
  delay before :data:`MIN_SAMPLES` answers were seen (Finagle sends no backup before
  its histogram has data either). An attempt a hedge beat is not an answer: counting
  the slow attempts that run on after their caller was served (see below) would raise
  the delay exactly when a backend stalls, and hedges would come too late.
* :class:`ExtraLoadBudget` — the cap: over the last 10 s, hedges may not exceed
  ``max_extra_load`` of the hedgeable requests (default 5%), or 10 for a client
  sending fewer than 200 requests in that time (a quiet client can still hedge).
  Every hedge is also withdrawn from the balancer's :class:`~clientlb.RetryBudget`
  (Finagle combines its backup budget with the client's retry budget the same way),
  so an overload never doubles traffic and hedges plus retries stay within the
  retry budget's ratio.
* The **probe rule** (:meth:`HedgeState.is_probe`): a request sent to an endpoint the
  balancer's own estimates call slow (``peak_ewma`` probing a slow endpoint to notice
  when it recovers, ``round_robin`` that does not look) is hedged *at once* when that
  endpoint's latency estimate is at least :data:`PROBE_FACTOR` times the typical
  endpoint's estimate (an average over recent outcomes, so weighted by traffic) and
  above the hedge delay: the caller gets the fast answer, and the probe, like every
  attempt the strategy chose, runs on to its end (its answer read and discarded) so
  that the balancer still learns the slow endpoint's latency. The comparison is with
  the other endpoints, not with the delay: a peak EWMA jumps to any slow answer and
  decays over seconds, so after a pause of the whole client every estimate is high
  for a while, and only an endpoint slower than its peers is a probe.
* The **lagging rule** (:meth:`HedgeState.lagging`): a stall shows in no estimate
  until an answer arrives (peak EWMA learns of a 200 ms pause when it ends), but a
  hedge that is due says the attempt in flight has waited longer than 95% of answers.
  So when a hedge is due to the delay, the endpoints of the attempts still waiting get
  a censored observation — their estimate rises to at least the time waited, as for a
  cancelled hedge — and, until those attempts end, a request sent to one of them is
  hedged at once, like a probe; not while half the endpoints or more lag at once (a
  pause of the client, an overload: nothing to learn about one endpoint).
* :class:`HedgeState` — one per balancer: the latency window, the budgets, the
  counters of ``lb.hedging_statistics()`` and of the ``clientlb.hedges`` metric.

Where this departs from the published designs, and why:

* **The strategy's own attempt is not cancelled when a hedge wins** (Finagle and gRPC
  cancel the loser, whichever it is): see below — cancelling it would hide the slow
  endpoint from a latency-aware strategy. Its answer is read and discarded; the extra
  work on the server is the same as with a cancel over HTTP/1.1 (a server notices a
  closed connection only when it writes).
* **A probe is an endpoint whose estimate is at least** :data:`PROBE_FACTOR` **times its
  peers'** (and above the delay), not an endpoint whose estimate exceeds the delay:
  after a pause of the whole client every estimate is high at once.
* **The adaptive delay counts the answers callers got** (the winning attempt's
  latency), not every attempt: an attempt a hedge beat runs on, and counting it would
  raise the delay exactly while an endpoint stalls.
* **The lagging rule** above is clientlb's: neither Finagle nor gRFC A6 hedges at once
  on what earlier hedges revealed.

What the call engine does with them (:class:`~clientlb._engine.call.LogicalCall`):
``hedge_delay`` says when the next hedge is due (or that none is), ``take_hedge``
pays for one, ``lost`` says what becomes of an attempt another one beat, and ``won``
counts the hedges that answered first. An attempt the strategy chose (the first, a
retry, a probe) is never cancelled when a hedge beats it: it runs to its end and
reports what its endpoint did. Cancelling it would hide the very signal a
latency-aware strategy needs — its in-flight count would drop while the endpoint
still works on it (an HTTP/1.1 cancel only closes the client's side), and its
latency would never be observed, so the strategy would send the slow endpoint
*more* traffic. A hedge that lost is cancelled, its elapsed time reported as a
lower bound of its endpoint's latency (it took *at least* that long).
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._core.errors import ConfigError, strict_arguments
from .._core.outcome import Outcome

if TYPE_CHECKING:
    from .._core.balancer import Pick
    from .._core.state import EndpointState

__all__ = ["ADAPTIVE_PERCENTILE", "DEFAULT_HTTP_METHODS", "PROBE_FACTOR", "ExtraLoadBudget",
           "HedgeState", "Hedging", "LatencyWindow"]

Clock = Callable[[], float]

#: The percentile of recent latencies an adaptive delay waits for (Dean and Barroso's p95).
ADAPTIVE_PERCENTILE = 0.95
#: How many recent successful latencies the adaptive delay is computed from.
WINDOW = 512
#: The adaptive delay is recomputed every this many samples (a sort of WINDOW floats).
REFRESH_EVERY = 64
#: No adaptive hedge before this many latencies were seen.
MIN_SAMPLES = 32
#: The shortest adaptive delay (Finagle's ``MinSendBackupAfterMs``): a service that
#: answers in microseconds still gets its tail cut, not every request doubled.
MIN_DELAY = 0.001
#: An attempt whose endpoint's latency estimate is this many times the typical
#: endpoint's (and above the hedge delay) is a probe of a slow endpoint: hedged at once.
#: Measured in benchmarks/tail_latency.py's scenarios, the picks of the slow backend
#: have 2.5 to 4.8 times the typical estimate, those of healthy ones 0.8 to 1.1.
PROBE_FACTOR = 2.0
#: The typical estimate is an average over about this many recent outcomes.
TYPICAL_N = 64
#: HTTP methods hedged when ``methods`` is None: safe and idempotent (RFC 9110 §9.2).
#: PUT and DELETE are idempotent but write: list them to hedge them.
DEFAULT_HTTP_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: The counters of ``lb.hedging_statistics()`` and of the ``clientlb.hedges`` metric.
COUNTERS = ("requests", "sent", "won", "refused", "probes")
#: The extra-load budget's window, in seconds, and the hedges always allowed in it.
BUDGET_WINDOW = 10.0
BUDGET_FLOOR = 10
_SLOTS = 10

#: gRPC status code names (``non_fatal_codes``), without importing grpcio.
GRPC_CODES = frozenset({
    "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED",
})
_HTTP_METHOD = re.compile(r"[A-Za-z][A-Za-z0-9_-]*\Z")
_GRPC_METHOD = re.compile(r"/[^/\s]+/[^/\s]+\Z")


def _number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) \
        and math.isfinite(value)


def _code_names(value: object) -> frozenset[str]:
    """``non_fatal_codes`` as status code names: ``grpc.StatusCode`` members or names."""
    items: Iterable[Any] = (value,) if isinstance(value, str) or hasattr(value, "name") \
        else value  # type: ignore[assignment]
    try:
        items = list(items)
    except TypeError:
        raise ConfigError(f"non_fatal_codes must be a collection of gRPC status codes, got "
                          f"{value!r}", field="hedging.non_fatal_codes") from None
    names = set()
    for item in items:
        name = item.upper() if isinstance(item, str) else getattr(item, "name", None)
        if name not in GRPC_CODES:
            raise ConfigError(f"non_fatal_codes must be gRPC status codes other than OK, got "
                              f"{item!r}", field="hedging.non_fatal_codes")
        names.add(name)
    return frozenset(names)


def _methods(value: object) -> frozenset[str]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ConfigError(f"methods must be a collection of HTTP methods ('GET') or full gRPC "
                          f"method names ('/pkg.Service/Method'), got {value!r}",
                          field="hedging.methods")
    out = set()
    for item in value:
        if isinstance(item, str) and _GRPC_METHOD.match(item):
            out.add(item)
        elif isinstance(item, str) and _HTTP_METHOD.match(item):
            out.add(item.upper())
        else:
            raise ConfigError(f"methods must be HTTP methods ('GET') or full gRPC method "
                              f"names ('/pkg.Service/Method'), got {item!r}",
                              field="hedging.methods")
    return frozenset(out)


@strict_arguments
@dataclass(frozen=True)
class Hedging:
    """Hedged requests: when an attempt has not answered after ``delay``, another one
    goes to a different endpoint; the first answer wins, the others are cancelled.

    ::

        lb = clientlb.LoadBalancer(target, hedging=clientlb.Hedging())   # every transport
        transport = clientlb.HTTPTransport(lb, hedging=clientlb.Hedging(delay=0.05))
        channel = clientlb.grpc.insecure_channel(
            lb, hedging=clientlb.Hedging(methods={"/pkg.Users/Get"}))

    One type for the HTTP transports and the gRPC channels
    (``clientlb.grpc.Hedging`` is this class). Only idempotent calls are hedged: a
    hedged call may run twice on the servers.

    Args:
        delay: seconds to wait for an answer before hedging; ``None`` (default)
            adapts it to the balancer's recent latencies: their 95th percentile
            (Dean and Barroso's choice: about 5% of requests get a hedge). ``0``
            hedges every call at once (doubling the load up to the
            ``max_extra_load`` cap).
        max_attempts: attempts in flight for one call at most, the first included,
            2..5 (default 2; gRFC A6 caps it at 5): with more, another hedge
            starts every ``delay`` while none has answered.
        max_extra_load: the most hedges may add to the requests, 0 < x <= 1
            (default 0.05: 5% more requests; a quiet client may still send 10
            hedges per 10 s). Hedges are also withdrawn from the retry budget.
        methods: what is hedged: HTTP methods (``"GET"``) and full gRPC method
            names (``"/pkg.Service/Method"``). ``None`` (default): GET, HEAD and
            OPTIONS on HTTP; on a gRPC channel given this policy, every
            unary-unary method (use it only where they are all idempotent), and
            none when the policy is the balancer's (name them).
        non_fatal_codes: gRPC only — status codes (``grpc.StatusCode`` or names)
            after which the next hedge starts at once instead of the answer being
            final (default ``{"UNAVAILABLE"}``, gRFC A6's ``nonFatalStatusCodes``).

    A request may opt in or out with ``extensions={"clientlb.hedge": True/False}``
    (HTTP); only requests whose body can be sent again (bytes) are hedged.

    Raises:
        ConfigError: a field out of its range, naming it.
    """

    delay: float | None = None
    max_attempts: int = 2
    max_extra_load: float = 0.05
    methods: frozenset[str] | None = None
    non_fatal_codes: frozenset[str] = frozenset({"UNAVAILABLE"})

    def __post_init__(self) -> None:
        d = self.delay
        if d is not None and (not _number(d) or d < 0):
            raise ConfigError(f"delay must be a number of seconds >= 0 or None (adaptive), "
                              f"got {d!r}", field="hedging.delay")
        n = self.max_attempts
        if isinstance(n, bool) or not isinstance(n, int) or not 2 <= n <= 5:
            raise ConfigError(f"max_attempts must be an integer 2..5 (gRFC A6 caps it at 5), "
                              f"got {n!r}", field="hedging.max_attempts")
        x = self.max_extra_load
        if not _number(x) or not 0 < x <= 1:
            raise ConfigError(f"max_extra_load must be a fraction of the requests, 0 < x <= 1, "
                              f"got {x!r}", field="hedging.max_extra_load")
        if d is not None:
            object.__setattr__(self, "delay", float(d))
        object.__setattr__(self, "max_extra_load", float(x))
        if self.methods is not None:
            object.__setattr__(self, "methods", _methods(self.methods))
        object.__setattr__(self, "non_fatal_codes", _code_names(self.non_fatal_codes))

    def applies_to(self, method: str) -> bool:
        """Is ``method`` hedged: an HTTP method, or a gRPC method (``/pkg.Svc/Method``)?"""
        methods = self.methods
        if method.startswith("/"):
            return methods is None or method in methods
        return method in (DEFAULT_HTTP_METHODS if methods is None else methods)

    def names_grpc_methods(self) -> bool:
        """True when ``methods`` lists gRPC methods (the balancer's policy reaches gRPC
        channels only for the methods it names)."""
        return self.methods is not None and any(m.startswith("/") for m in self.methods)

    def describe(self) -> str:
        """``"adaptive"`` or the fixed delay, as the transports' ``repr`` shows it."""
        return "adaptive" if self.delay is None else f"{self.delay * 1000:g}ms"


class _Live:
    """The default of the transports' and channels' ``hedging=``: the balancer's policy."""

    def __repr__(self) -> str:
        return "<the balancer's hedging>"


#: ``hedging=`` not given to a transport or channel: use the balancer's, live.
LIVE_HEDGING: Any = _Live()


def check(value: object, field: str = "hedging") -> Hedging | None:
    """``value`` when it is a balancer's hedging policy: a :class:`Hedging` or None."""
    if value is not None and not isinstance(value, Hedging):
        raise ConfigError(f"hedging must be a clientlb.Hedging or None, got {value!r}",
                          field=field)
    return value


def resolve(given: object, field: str = "hedging") -> Hedging | None:
    """Check a transport's or channel's ``hedging=``: a :class:`Hedging`, ``None`` for the
    balancer's (kept as :data:`LIVE_HEDGING`, read at each call) or ``False`` for none."""
    if given is None or given is LIVE_HEDGING:
        live: Hedging | None = LIVE_HEDGING
        return live
    if given is False:
        return None
    if not isinstance(given, Hedging):
        raise ConfigError(f"must be a clientlb.Hedging, None (the balancer's) or False (off), "
                          f"got {given!r}", field=field)
    return given


class LatencyWindow:
    """The :data:`ADAPTIVE_PERCENTILE` of the last :data:`WINDOW` latencies, cheaply.

    :meth:`add` writes into a fixed ring; every :data:`REFRESH_EVERY` samples the
    percentile is recomputed (one sort of the ring) and cached; :attr:`value` is a
    plain attribute read. Thread-safe.
    """

    __slots__ = ("_lock", "_ring", "count", "percentile", "value")

    def __init__(self, percentile: float = ADAPTIVE_PERCENTILE) -> None:
        self._lock = threading.Lock()
        self._ring: list[float] = []
        self.count = 0
        self.percentile = percentile
        #: the cached percentile, None before MIN_SAMPLES latencies
        self.value: float | None = None

    def add(self, latency: float) -> None:
        with self._lock:
            count = self.count
            if count < WINDOW:
                self._ring.append(latency)
            else:
                self._ring[count % WINDOW] = latency
            self.count = count = count + 1
            if count % REFRESH_EVERY and count != MIN_SAMPLES:
                return
            samples = list(self._ring)
        if len(samples) < MIN_SAMPLES:
            return
        samples.sort()  # the nearest-rank percentile
        value = samples[max(0, math.ceil(self.percentile * len(samples)) - 1)]
        self.value = max(MIN_DELAY, value)


class ExtraLoadBudget:
    """Caps hedges at ``ratio`` of the requests over the last :data:`BUDGET_WINDOW` seconds.

    ``deposit()`` once per hedgeable request, ``try_take()`` before each hedge: it
    succeeds while ``hedges + 1 <= max(ratio × requests, BUDGET_FLOOR)`` over the
    window (counted in 10 slices that expire in turn, as :class:`RetryBudget`). Unlike
    the retry budget's floor, which adds to the ratio, this one only applies to a
    quiet client: at 200 requests or more per window the cap is exactly ``ratio``.
    ``also`` (the retry budget's ``try_withdraw``) is asked under the lock and the
    hedge is taken only when both agree. Thread-safe.
    """

    __slots__ = ("_clock", "_hedges", "_lock", "_requests", "_slot", "_width", "ratio")

    def __init__(self, ratio: float, clock: Clock | None = None) -> None:
        self.ratio = ratio
        self._clock: Clock = clock or time.monotonic
        self._width = BUDGET_WINDOW / _SLOTS
        self._requests = [0] * _SLOTS
        self._hedges = [0] * _SLOTS
        self._slot = int(self._clock() / self._width)
        self._lock = threading.Lock()

    def _advance(self) -> int:
        slot = int(self._clock() / self._width)
        gap = slot - self._slot
        if gap > 0:
            for i in range(self._slot + 1, self._slot + 1 + min(gap, _SLOTS)):
                self._requests[i % _SLOTS] = self._hedges[i % _SLOTS] = 0
            self._slot = slot
        return slot % _SLOTS

    def deposit(self) -> None:
        with self._lock:
            self._requests[self._advance()] += 1

    def try_take(self, also: Callable[[], bool] | None = None) -> bool:
        with self._lock:
            i = self._advance()
            if sum(self._hedges) + 1 > max(self.ratio * sum(self._requests), BUDGET_FLOOR):
                return False
            if also is not None and not also():
                return False
            self._hedges[i] += 1
            return True

    def window(self) -> tuple[int, int]:
        """``(requests, hedges)`` in the current window."""
        with self._lock:
            self._advance()
            return sum(self._requests), sum(self._hedges)


class HedgeState:
    """One balancer's hedging: the adaptive delay, the extra-load budgets, the counters.

    Created by ``lb.hedge_state()`` the first time a call may be hedged; from then on
    the calls report their answers' latencies (:meth:`answered`) to the
    :class:`LatencyWindow`, and an outcome listener keeps the typical estimate.
    Counters (``lb.hedging_statistics()``): ``requests`` (hedgeable calls), ``sent``
    hedges, ``won`` (a hedge answered first), ``refused`` (a budget said no),
    ``probes`` (hedged at once by the probe rule).
    """

    __slots__ = ("__weakref__", "_budgets", "_clock", "_counters", "_lagging", "_lock",
                 "typical", "window")

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._budgets: dict[float, ExtraLoadBudget] = {}
        self._counters = dict.fromkeys(COUNTERS, 0)
        #: per endpoint, the attempts still unanswered when their hedge delay passed
        #: (the lagging rule; finished ones are dropped when looked at)
        self._lagging: dict[str, list[Pick]] = {}
        self.window = LatencyWindow()
        #: the endpoints' latency estimates, averaged over the outcomes (so weighted by
        #: traffic): what the strategy's estimate of a typical endpoint is now
        self.typical = 0.0

    def on_outcome(self, state: EndpointState, outcome: Outcome, latency: float,
                   now: float) -> None:
        """The balancer's outcome listener: every outcome moves the typical estimate."""
        if outcome is Outcome.CANCELLED:
            return
        estimate = state.load.latency(now)
        typical = self.typical
        self.typical = estimate if typical == 0.0 else typical + (estimate - typical) / TYPICAL_N

    def answered(self, latency: float) -> None:
        """A hedgeable call got its answer from an attempt that took ``latency`` seconds."""
        if latency > 0:
            self.window.add(latency)

    def budget(self, hedging: Hedging) -> ExtraLoadBudget:
        """The extra-load budget of ``hedging.max_extra_load`` (one per ratio in use)."""
        budget = self._budgets.get(hedging.max_extra_load)
        if budget is None:
            with self._lock:
                budget = self._budgets.setdefault(
                    hedging.max_extra_load, ExtraLoadBudget(hedging.max_extra_load, self._clock))
        return budget

    def begin(self, hedging: Hedging) -> None:
        """A hedgeable call starts: it adds ``max_extra_load`` of a hedge to the budget."""
        self.budget(hedging).deposit()
        self.count("requests")

    def count(self, counter: str) -> None:
        """Add one to a counter (:data:`COUNTERS`)."""
        with self._lock:
            self._counters[counter] += 1

    def delay(self, hedging: Hedging) -> float | None:
        """The hedge delay of ``hedging``: fixed, or adaptive (None before enough samples)."""
        return hedging.delay if hedging.delay is not None else self.window.value

    def is_probe(self, pick: Pick, delay: float, endpoints: int = 0) -> bool:
        """Does ``pick`` go to an endpoint known to be slow now: its estimate calls it slow
        (the probe rule), or it holds an attempt unanswered past its hedge delay while
        fewer than half of the ``endpoints`` do (the lagging rule)?"""
        if delay <= 0:
            return False
        if self._lagging and self._lags(pick.address, endpoints):
            return True
        if self.typical <= 0:
            return False
        estimate = pick.latency_estimate()
        return estimate > delay and estimate >= PROBE_FACTOR * self.typical

    def lagging(self, picks: Iterable[Pick]) -> None:
        """A hedge was due: ``picks`` (the attempts in flight) are still unanswered after
        the hedge delay. Each endpoint's latency estimate rises to at least the time its
        attempt has waited (a censored observation, ``Pick.outlasted``), and until the
        attempt ends, requests sent to that endpoint are hedged at once."""
        for pick in picks:
            if pick.finished:
                continue
            pick.outlasted()
            with self._lock:
                self._lagging.setdefault(pick.address, []).append(pick)

    def _lags(self, address: str, endpoints: int) -> bool:
        with self._lock:
            lagging = self._lagging
            for key in list(lagging):
                running = [p for p in lagging[key] if not p.finished]
                if running:
                    lagging[key] = running
                else:
                    del lagging[key]
            # every endpoint lagging at once is the client's pause or an overload: it says
            # nothing about one endpoint (as for the probe rule's typical estimate)
            return address in lagging and 2 * len(lagging) < endpoints

    def take(self, hedging: Hedging, also: Callable[[], bool] | None = None) -> bool:
        """Pay one hedge from the extra-load budget (and ``also``, the retry budget)."""
        taken = self.budget(hedging).try_take(also)
        self.count("sent" if taken else "refused")
        return taken

    def statistics(self) -> dict[str, Any]:
        """Counters since creation and the current adaptive delay (seconds, or None)."""
        with self._lock:
            statistics: dict[str, Any] = dict(self._counters)
        statistics["adaptive_delay"] = self.window.value
        return statistics

    def __repr__(self) -> str:
        delay = self.window.value
        shown = "warming up" if delay is None else f"{delay * 1000:.1f}ms"
        counts = " ".join(f"{k}={v}" for k, v in self.statistics().items()
                          if k != "adaptive_delay")
        return f"<HedgeState delay={shown} {counts}>"

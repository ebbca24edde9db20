"""The load balancer: snapshots in, picks out, outcomes back.

Data flows one way (docs/architecture.md, "Data flow"): a resolver publishes :class:`EndpointSet`
snapshots; the balancer keeps one :class:`EndpointState` per address (load,
counters, health), selects the endpoints that may take traffic, and asks the
strategy for a new picker, which it publishes with a single reference
assignment. ``pick()`` reads that reference and never blocks, never does I/O
and never takes the rebuild lock: a 10,000-endpoint update is built beside
the old picker, which keeps serving until the swap.

Every pick ends with an outcome (``Pick.done`` or the ``with`` block), which
feeds the load metrics and the outcome listeners (outlier detection,
telemetry). ``clock=`` and ``rng=`` are injectable so tests never sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import random as _random
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .._engine.connectivity import UNUSABLE, Connectivity, ConnectivityTracker, Probe
from .._engine.hedging import COUNTERS as HEDGE_COUNTERS
from .._engine.hedging import HedgeState, Hedging
from .._engine.hedging import check as check_hedging
from .._engine.retry import DEFAULT_RETRY_POLICY, RetryBudget, RetryPolicy
from .._health import HealthCheck, HealthManager, OutlierDetection, SlowStart
from .._strategies import Key, Picker, Strategy, resolve_strategy
from .._strategies.base import redraw
from .._subset.config import SubsetConfig, check_subset
from .._subset.subsetter import SubsetSnapshot, Subsetter
from .checks import check_clock
from .closing import Closing
from .endpoint import Endpoint, EndpointSet, EndpointSetDiff
from .errors import ClientLBError, ConfigError, NoEndpointAvailable, strict_arguments
from .outcome import Outcome
from .state import EndpointState, Health
from .target import Target, parse_target
from .text import plural

if TYPE_CHECKING:
    from .._resolvers.base import Resolver

__all__ = ["BalancerSnapshot", "EndpointSnapshot", "LoadBalancer", "Pick", "check_options"]

logger = logging.getLogger("clientlb.balancer")

Clock = Callable[[], float]
OutcomeListener = Callable[[EndpointState, Outcome, float, float], None]
DiffListener = Callable[[EndpointSetDiff], None]

_SUCCESS = Outcome.SUCCESS
#: On by default (the public contract); frozen, so one shared instance is safe.
_DEFAULT_OUTLIER_DETECTION = OutlierDetection()
_CANCELLED = Outcome.CANCELLED
_CONNECT_FAILURE = Outcome.CONNECT_FAILURE
_READY = Connectivity.READY


def _check_resolver_options(options: object, target: Target) -> dict[str, Any]:
    """``resolver_options`` as keyword arguments for the target's resolver."""
    if options is None:
        return {}
    if not isinstance(options, Mapping) or not all(isinstance(k, str) for k in options):
        raise ConfigError(f"resolver_options must be a mapping of option names to values, "
                          f"got {options!r}", field="resolver_options")
    if options and target.scheme == "static":
        raise ConfigError(f"a static target takes no resolver options, got "
                          f"{sorted(options)}", field="resolver_options")
    return dict(options)


def _classify_exception(exc: BaseException) -> Outcome:
    if not isinstance(exc, Exception) or isinstance(exc, asyncio.CancelledError):
        return Outcome.CANCELLED
    if isinstance(exc, ConnectionRefusedError):
        return Outcome.CONNECT_FAILURE
    # asyncio.TimeoutError is TimeoutError from 3.11 on, a class of its own on 3.10
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return Outcome.TIMEOUT
    return Outcome.FAILURE


class Pick:
    """One chosen endpoint, in flight until :meth:`done` (or the end of a ``with`` block).

    ``with lb.pick() as p: call(p.endpoint)`` reports success, or a failure
    if the block raises (``ConnectionRefusedError`` → connect failure,
    ``TimeoutError`` or ``asyncio.TimeoutError`` → timeout, cancellation →
    cancelled, anything else → failure). Integrations that know better call ``p.done(outcome)``
    explicitly inside the block; the first report wins and later ones are
    ignored, so ``done`` is safe to call from several cleanup paths.
    """

    __slots__ = ("_finished", "_lb", "_start", "_state", "endpoint")

    def __init__(self, lb: LoadBalancer, state: EndpointState, start: float) -> None:
        self._lb = lb
        self._state = state
        self._start = start
        self._finished = False
        self.endpoint: Endpoint = state.endpoint
        load = state.load  # in flight from here until done(): the +1 of the pair
        with load._lock:
            load.in_flight += 1

    @property
    def address(self) -> str:
        """The picked endpoint's ``host:port`` (its key in the balancer)."""
        return self._state.address

    @property
    def state(self) -> EndpointState:
        """The picked endpoint's live state (where its load reports are recorded)."""
        return self._state

    @property
    def balancer(self) -> LoadBalancer:
        return self._lb

    @property
    def started_at(self) -> float:
        """The balancer clock's reading when the pick was made."""
        return self._start

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def draining(self) -> bool:
        """The endpoint left the target (or was drained) since it was picked."""
        return self._state.draining

    def elapsed(self) -> float:
        """Seconds since the pick, on the balancer's clock."""
        return self._lb._clock() - self._start

    def latency_estimate(self) -> float:
        """The endpoint's peak-EWMA latency estimate now (what ``peak_ewma`` compares)."""
        return self._state.load.latency(self._lb._clock())

    def outlasted(self) -> None:
        """The call is given up unanswered (a hedge answered first): its endpoint's latency
        estimate rises to at least the time it waited (``EndpointLoad.outlasted``)."""
        if not self._finished:
            now = self._lb._clock()
            self._state.load.outlasted(now, now - self._start)

    def done(self, outcome: Outcome | str = _SUCCESS, latency: float | None = None) -> None:
        """Report how the call ended and, optionally, its latency in seconds.

        Without ``latency`` the time since the pick (balancer clock) is used.
        """
        if self._finished:
            return
        if outcome.__class__ is not Outcome:
            outcome = Outcome(outcome)  # a bad string raises before the pick is finished
        self._finished = True
        lb = self._lb
        now = lb._clock()
        if latency is None:
            latency = now - self._start
        state = self._state
        # the -1 of the pair: EndpointLoad.release decrements in_flight; and connectivity
        # (clientlb._engine.connectivity), fed by every outcome but a cancellation
        if outcome is _SUCCESS:
            state.load.release(now, latency, False)
            if state.connectivity is not _READY:
                lb._connectivity.reached(state)
        elif outcome is _CANCELLED:
            state.load.release(now, None, False)
        else:
            state.load.release(now, latency, True)
            if outcome is _CONNECT_FAILURE:
                lb._connectivity.failed(state)
            elif state.connectivity is not _READY:
                lb._connectivity.reached(state)
        listeners = lb._outcome_listeners
        if listeners:
            for listener in listeners:
                listener(state, outcome, latency, now)

    def __enter__(self) -> Pick:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if not self._finished:
            self.done(_SUCCESS if exc is None else _classify_exception(exc))

    def __del__(self) -> None:
        # A pick that is dropped without an outcome must not stay "in flight"
        # forever and skew least_request: count it as cancelled.
        if not self._finished:
            with contextlib.suppress(Exception):  # interpreter shutdown
                self.done(_CANCELLED)

    def __repr__(self) -> str:
        status = "done" if self._finished else "in flight"
        return f"<Pick {self.endpoint.address} {status}>"


@dataclass(frozen=True)
class EndpointSnapshot:
    """The state of one endpoint, as ``LoadBalancer.snapshot()`` reports it."""

    endpoint: Endpoint
    state: str
    effective_weight: float
    in_flight: int
    ewma_latency: float
    ejection_count: int
    requests: int
    failures: int
    connectivity: str = "idle"
    #: False for an endpoint outside this client's subset (``subset=``): discovered,
    #: never picked. True for every endpoint without subsetting.
    in_subset: bool = True
    #: share of failed calls over the last few seconds (what peak_ewma's cost
    #: penalises); None with strategies that do not weigh errors (not tracked)
    error_rate: float | None = None
    #: The weight ``weighted_round_robin`` gives the endpoint from its load reports
    #: (the mean of the others' while it has none; picks follow it multiplied by
    #: ``effective_weight``); None with other strategies.
    load_weight: float | None = None

    @property
    def address(self) -> str:
        return self.endpoint.address


@dataclass(frozen=True)
class BalancerSnapshot:
    """A consistent view of a balancer: its mode and every endpoint's state."""

    name: str
    target: str
    strategy: str
    mode: str  # "normal", "panic", "empty", "waiting" (first resolution), "closed"
    endpoints: tuple[EndpointSnapshot, ...]
    version: int
    #: The subset (size, aperture width, widening, place) with ``subset=``; else None.
    subset: SubsetSnapshot | None = None
    #: Hedged requests (``lb.hedging_statistics()``: requests, sent, won, refused,
    #: probes, adaptive_delay) once a call could be hedged; else None.
    hedging: dict[str, Any] | None = None

    def by_address(self) -> dict[str, EndpointSnapshot]:
        return {e.address: e for e in self.endpoints}


@strict_arguments
class LoadBalancer(Closing):
    """An in-process load balancer over the endpoints of a target.

    ::

        lb = clientlb.LoadBalancer("static://10.0.0.1:8080,10.0.0.2:8080",
                                   strategy="least_request")
        with lb.pick() as p:
            send_request(p.endpoint.host, p.endpoint.port)

    Args:
        target: a target string (``static://``, ``dns://``, ``srv://``,
            ``consul://``, ``etcd://``), or a list of ``"host:port"`` strings
            or :class:`Endpoint` objects.
        strategy: a strategy name (``round_robin``, ``random``,
            ``least_request``, ``peak_ewma`` — the default —, ``ring_hash``,
            ``maglev``, ``weighted_round_robin``) or a :class:`Strategy` object.
        name: the logical service name used in logs, metrics and as the HTTP
            ``Host``/TLS name; defaults to the target's service name.
        first_resolution_timeout: how long the first ``pick()`` waits for a
            resolver's first answer before raising ``NoEndpointAvailable``
            (default 5 s; static targets never wait).
        clock: a monotonic clock in seconds (default ``time.monotonic``).
        rng: a ``random.Random`` (default: a new one seeded from the OS).
        health_check: a :class:`HealthCheck` for active probes (default None).
        outlier_detection: an :class:`OutlierDetection` (default on, Envoy's
            defaults); ``None`` turns passive ejection off.
        panic_threshold: percent of healthy endpoints in a priority level below
            which traffic spreads over all of them (default 50, Envoy's);
            0 disables panic (then nothing healthy means NoEndpointAvailable).
        slow_start: a :class:`SlowStart` weight ramp for new and returning
            endpoints (default None: off).
        local_zone: prefer endpoints whose ``zone`` equals this (default None).
        overprovisioning_factor: Envoy's priority/zone spill-over factor
            (default 1.4).
        max_requests: circuit breaker, concurrent requests through the
            balancer; over it ``pick()`` raises :class:`CircuitOpen` (default None).
        max_requests_per_endpoint: circuit breaker per endpoint (default None).
        retry: the :class:`RetryPolicy` of the HTTP and gRPC integrations
            (default ``RetryPolicy()``); ``None`` turns retries off. The
            balancer keeps its own retry budget, ``lb.retry_budget``.
        hedging: a :class:`Hedging` policy for the HTTP transports built on this
            balancer (and the gRPC methods it names) — hedged requests, see
            docs/http.md; default None: none. ``lb.hedging_statistics()`` counts them.
        subset: :class:`Aperture` or :class:`RandomSubset` to use only a
            subset of the endpoints (large fleets); None (default) uses all.
            See docs/architecture.md, "Subsetting".
        telemetry: report through OpenTelemetry's global providers (default
            True; a no-op without an SDK, see docs/telemetry.md); ``False``
            turns it off. ``clientlb.instrument(lb, meter_provider=...)``
            moves a balancer to a provider of its own.

    Raises:
        ConfigError: for a malformed target, an unknown scheme or strategy.
    """

    #: False only for :func:`check_options`: validate, start nothing.
    _starts = True

    def __init__(
        self,
        target: str | Iterable[str | Endpoint] | Target,
        *,
        strategy: str | Strategy = "peak_ewma",
        name: str | None = None,
        first_resolution_timeout: float = 5.0,
        clock: Clock | None = None,
        rng: _random.Random | None = None,
        resolver_options: dict[str, Any] | None = None,
        health_check: HealthCheck | None = None,
        outlier_detection: OutlierDetection | None = _DEFAULT_OUTLIER_DETECTION,
        panic_threshold: float = 50.0,
        slow_start: SlowStart | None = None,
        local_zone: str | None = None,
        overprovisioning_factor: float = 1.4,
        max_requests: int | None = None,
        max_requests_per_endpoint: int | None = None,
        retry: RetryPolicy | None = DEFAULT_RETRY_POLICY,
        subset: SubsetConfig | None = None,
        telemetry: bool = True,
        hedging: Hedging | None = None,
    ) -> None:
        self._closed = True  # until construction succeeds: __del__ has nothing to stop
        self._target = parse_target(target)
        if not isinstance(telemetry, bool):
            raise ConfigError(f"telemetry must be True or False, got {telemetry!r}",
                              field="telemetry")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise ConfigError(f"retry must be a RetryPolicy or None, got {retry!r}", field="retry")
        check_hedging(hedging)
        self._strategy = resolve_strategy(strategy)
        if name is not None and (not isinstance(name, str) or not name):
            raise ConfigError(f"name must be a non-empty string, got {name!r}", field="name")
        if isinstance(first_resolution_timeout, bool) or not isinstance(
                first_resolution_timeout, (int, float)) \
                or not 0 <= first_resolution_timeout < math.inf:
            raise ConfigError(f"first_resolution_timeout must be a finite number >= 0 seconds, "
                              f"got {first_resolution_timeout!r}",
                              field="first_resolution_timeout")
        if rng is not None and not isinstance(rng, _random.Random):
            raise ConfigError(f"rng must be a random.Random, got {rng!r}", field="rng")
        check_clock(clock)
        options = _check_resolver_options(resolver_options, self._target)
        self.name: str = name or self._target.service
        self._first_resolution_timeout = float(first_resolution_timeout)
        self._clock: Clock = clock or time.monotonic
        self._rng = rng or _random.Random()
        #: The retry policy of the integrations (None: no retries) and this
        #: balancer's own retry budget, shared by its HTTP and gRPC calls.
        self.retry_policy: RetryPolicy | None = retry
        self.retry_budget: RetryBudget | None = (
            retry.new_budget(self._clock) if retry is not None else None)
        #: The hedging policy of the integrations that take the balancer's (None: none);
        #: read at each call, so ``set_hedging`` reaches them.
        self.hedging: Hedging | None = hedging
        self._hedge_state: HedgeState | None = None
        self._lock = threading.RLock()
        self._states: dict[str, EndpointState] = {}
        self._draining: dict[str, EndpointState] = {}
        self._endpoint_set = EndpointSet()
        # what endpoints() shows: swapped only once the picker for it is in place
        self._visible_endpoints: tuple[Endpoint, ...] = ()
        self._picker: Picker | None = None
        self._weights: dict[str, float] = {}
        self._mode = "waiting"
        self._no_pick_reason = "waiting for the first resolution of the target"
        self._ready = threading.Event()
        self._ready_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._discovery_error: BaseException | None = None
        self._outcome_listeners: tuple[OutcomeListener, ...] = ()
        self._diff_listeners: tuple[DiffListener, ...] = ()
        self._error_listeners: tuple[Callable[[BaseException], None], ...] = ()
        self._weight_overrides: dict[str, float] = {}  # set_weight(); survives updates
        self._edit_lock = threading.Lock()  # serialises add()/remove() on static targets
        # Health (docs/health.md): the earliest instant at which pick() must
        # let the health manager run time-driven work (ejection end, sweep,
        # slow-start step); one float comparison on the hot path.
        self._health_deadline = math.inf
        self._health = HealthManager(
            self, health_check=health_check, outlier_detection=outlier_detection,
            panic_threshold=panic_threshold, slow_start=slow_start,
            local_zone=local_zone, overprovisioning_factor=overprovisioning_factor,
            max_requests=max_requests, max_requests_per_endpoint=max_requests_per_endpoint)
        self._circuit = self._health.circuit
        self._connectivity = ConnectivityTracker(self)
        # Subsetting (docs/architecture.md, "Subsetting"): between discovery and health.
        self._subsetter = self._new_subsetter(check_subset(subset))
        # Discovery (dnspython, httpx for consul/etcd) loads with the first balancer, not
        # with ``import clientlb``.
        from .._resolvers.base import create_resolver

        self._resolver: Resolver = create_resolver(self._target, **options)
        if not self._starts:  # check_options(): every check made, nothing started
            return
        if telemetry:
            # OpenTelemetry loads with the first balancer that reports, not with clientlb.
            from .._ops.telemetry import default_telemetry

            default_telemetry().instrument(self)
        self._closed = False
        try:
            self._start_resolver()
            self._health.start()
            if self._subsetter is not None:
                self._subsetter.start()
        except BaseException:  # release what was started: nothing keeps running
            self.close()
            raise

    # -- resolver side ------------------------------------------------------------------

    def _start_resolver(self) -> None:
        # The resolver talks to a weak proxy: its thread or task must not keep a
        # balancer dropped without close() alive (then __del__ stops it).
        from .._resolvers.base import start_resolver

        self._resolver_task = start_resolver(self._resolver, _WeakSink(self))

    def publish(self, endpoints: EndpointSet) -> None:
        """Apply a new endpoint set (called by resolvers; safe from any thread)."""
        with self._lock:
            if self._closed:
                return
            now = self._clock()
            diff = self._endpoint_set.diff(endpoints)
            states = self._states
            for ep in diff.added:
                old = self._draining.pop(ep.address, None)
                if old is not None:  # came back while draining: keep its load and history
                    old.draining = False
                    old.endpoint = ep
                    states[ep.address] = old
                else:
                    states[ep.address] = EndpointState(ep, now, self._strategy.new_load(now))
            for _, new in diff.changed:
                states[new.address].endpoint = new
            for ep in diff.removed:
                state = states.pop(ep.address)
                state.draining = True
                if state.load.in_flight > 0:
                    self._draining[ep.address] = state
            self._endpoint_set = endpoints
            self._discovery_error = None
            self._rebuild_locked(now)
            self._visible_endpoints = endpoints.endpoints
            if diff:  # routine: DEBUG (ejections and panic are the health layer's INFO)
                logger.debug("%s: endpoints updated (+%d -%d ~%d, %d total)", self.name,
                            len(diff.added), len(diff.removed), len(diff.changed),
                            len(endpoints))
            listeners = self._diff_listeners
        self._set_ready()
        if diff:
            for listener in listeners:
                listener(diff)

    def error(self, exc: BaseException) -> None:
        """Record a discovery failure (called by resolvers); the last good set stays.

        Logged at DEBUG only: the resolver logs the episode (one WARNING when its
        source starts failing, DEBUG until it recovers, INFO when it does;
        ``_resolvers/_loop.py``), since only it knows when an unchanged answer
        ends the episode.
        """
        with self._lock:
            self._discovery_error = exc
            if not self._ready.is_set():
                self._no_pick_reason = f"discovery failed: {exc}"
            kept = (f"keeping the last good set ({plural(len(self._endpoint_set), 'endpoint')})"
                    if self._ready.is_set() else "no endpoint set yet")
            error_listeners = self._error_listeners
        logger.debug("%s: discovery error, %s: %s", self.name, kept, exc)
        for error_listener in error_listeners:
            error_listener(exc)

    def _set_ready(self) -> None:
        if self._ready.is_set():
            return
        self._ready.set()
        with self._lock:
            waiters, self._ready_waiters = self._ready_waiters, []
        for loop, fut in waiters:
            loop.call_soon_threadsafe(_resolve_future, fut)

    # -- selection ------------------------------------------------------------------------

    def _select(self, states: Sequence[EndpointState], now: float
                ) -> tuple[list[EndpointState], list[float], str]:
        """The endpoints that may take traffic, their effective weights, and the mode.

        Delegated to the health manager (clientlb._health): health filter,
        priority levels with spill-over, panic, zone preference, slow start.
        """
        return self._health.select(states, now)

    def _current_states(self) -> list[EndpointState]:
        """The states of the current endpoint set, in its order (draining ones excluded);
        with ``subset=``, only those of this client's subset. Safe without the lock
        (the health checker lists its probe targets so): a state not there yet is left out."""
        states = self._states
        current = [s for ep in self._endpoint_set if (s := states.get(ep.address)) is not None]
        subsetter = self._subsetter
        return current if subsetter is None else subsetter.members(current)

    def _rebuild_locked(self, now: float) -> None:
        if self._weight_overrides:
            self._apply_weight_overrides_locked()
        subsetter = self._subsetter
        if subsetter is not None:  # the subset first: health and strategy see only it
            states = subsetter.update([self._states[ep.address] for ep in self._endpoint_set],
                                      now)
        else:
            states = self._current_states()
        # Connectivity: endpoints that cannot be connected to are left out while
        # another one may take calls (clientlb._engine.connectivity).
        usable = [s for s in states if s.connectivity not in UNUSABLE]
        if usable and len(usable) < len(states):
            chosen, weights, mode = self._select(usable, now)
            if not chosen:
                chosen, weights, mode = self._select(states, now)
        else:
            chosen, weights, mode = self._select(states, now)
        self._mode = mode
        if subsetter is not None:  # the aperture's overlap weights
            weights = subsetter.scale(chosen, weights)
        self._weights = {s.address: w for s, w in zip(chosen, weights, strict=True)}
        if chosen:
            self._picker = self._strategy.build(chosen, weights, self._rng)
        else:
            self._picker = None
            why = self._resolver.empty_reason if not states else None
            self._no_pick_reason = (
                "no endpoint may take traffic" if states
                else f"the target resolved to no endpoint: {why}" if why
                else "the target resolved to no endpoint"
            )

    def rebuild(self) -> None:
        """Recompute the picker now (after a health change; rarely needed by users)."""
        with self._lock:
            if not self._closed:
                self._rebuild_locked(self._clock())

    def endpoint_reconnected(self, state: EndpointState) -> None:
        """A background probe connected to ``state``'s endpoint again (called by the
        connectivity tracker): end an outlier ejection early and put it back."""
        with self._lock:
            if self._closed:
                return
            now = self._clock()
            self._health.on_reconnected(state, now)
            self._rebuild_locked(now)

    def set_connect_probe(self, probe: Probe | None) -> None:
        """How endpoints in transient failure are probed (None: a TCP handshake).

        Integrations with a connection state of their own (the gRPC channels)
        register a probe that waits for it; see clientlb._engine.connectivity.
        """
        self._connectivity.set_probe(probe)

    def refresh(self) -> None:
        """Ask the resolver to re-resolve the target early (e.g. when every endpoint
        fails). Non-blocking and rate-limited by the resolver; static targets ignore it."""
        if not self._closed:
            self._resolver.refresh()

    # -- the health layer's contract (clientlb._health.view.BalancerView) ------------------
    #
    # Public names so that the health manager may call them, but not part of the API:
    # users never need them. Everything else the manager uses (name, target, clock, rng,
    # closed, rebuild, refresh, add_outcome_listener, remove_listener) is public anyway.

    @contextlib.contextmanager
    def locked(self, *, blocking: bool = True) -> Iterator[bool]:
        """For the health layer: hold the balancer lock for a ``with`` block.

        The block gets True when it holds the (re-entrant) lock; with
        ``blocking=False``, False and no lock when another thread has it.
        """
        lock = self._lock
        if not lock.acquire(blocking):
            yield False
            return
        try:
            yield True
        finally:
            lock.release()

    def rebuild_locked(self, now: float) -> None:
        """For the health layer: rebuild the picker now (inside :meth:`locked`, not closed)."""
        self._rebuild_locked(now)

    @property
    def health_deadline(self) -> float:
        """For the health layer: when ``pick()`` must next let health run (see ``tick``)."""
        return self._health_deadline

    @health_deadline.setter
    def health_deadline(self, deadline: float) -> None:
        self._health_deadline = deadline

    def endpoint_states(self) -> list[EndpointState]:
        """For the health layer: the states of the current endpoint set, in its order.

        ``drain()``-ed endpoints included, draining ones removed by discovery not
        (:meth:`draining_states`). Safe without the lock: an endpoint whose state
        is not there yet is left out.
        """
        states = self._states
        return [s for ep in self._endpoint_set if (s := states.get(ep.address)) is not None]

    def draining_states(self) -> list[EndpointState]:
        """For the health layer: endpoints discovery removed, calls still in flight."""
        return list(self._draining.values())

    def states_in_use(self) -> list[EndpointState]:
        """For the health layer: :meth:`endpoint_states` narrowed to this client's subset
        (``subset=``; docs/architecture.md, "Subsetting"); all of them without one."""
        return self._current_states()

    # -- picking --------------------------------------------------------------------------

    def pick(self, key: Key | None = None, *, exclude: Collection[str] | None = None,
             prefer: str | None = None) -> Pick:
        """Choose an endpoint; the returned :class:`Pick` is in flight until done.

        ``key`` (str, bytes or int) drives ``ring_hash`` and ``maglev``; other
        strategies ignore it. ``exclude`` is a collection of addresses
        (``host:port``) to avoid — retries use it so that an attempt never
        goes back to an endpoint already tried while another one may take
        traffic; when every candidate is excluded, one is picked anyway.
        ``prefer`` is the address of an endpoint to use when it may take
        traffic (sticky sessions); otherwise the strategy picks.

        Never blocks, except that the very first pick of
        a balancer whose resolver has not answered yet waits for it, up to
        ``first_resolution_timeout`` (from asyncio, ``await lb.wait_ready()``
        first instead).

        Raises:
            NoEndpointAvailable: nothing to pick, with the reason (and the
                discovery error as ``__cause__`` when there is one).
        """
        picker = self._picker
        if picker is None:
            picker = self._picker_or_raise()
        now = self._clock()
        if now >= self._health_deadline:
            self._health.tick(now)
            picker = self._picker or self._picker_or_raise()
        if prefer is not None and prefer in self._weights:
            state = self._states.get(prefer) or picker.pick(key, now)
        else:
            state = picker.pick(key, now)
            if exclude and state.address in exclude:
                state = self._pick_excluding(picker, key, now, exclude, state)
        if self._circuit is not None:
            state = self._circuit.admit(state, picker, key, now, self._weights,
                                        self._states, exclude)
        return Pick(self, state, now)

    def _pick_excluding(self, picker: Picker, key: Key | None, now: float,
                        exclude: Collection[str], first: EndpointState) -> EndpointState:
        states = self._states
        candidates = (s for a in self._weights if (s := states.get(a)) is not None)
        other = redraw(picker, key, now, lambda s: s.address not in exclude, candidates)
        return first if other is None else other

    def _picker_or_raise(self) -> Picker:
        if self._closed:
            raise NoEndpointAvailable("the balancer is closed", service=self.name)
        if not self._ready.is_set():
            try:
                asyncio.get_running_loop()
                in_loop = True
            except RuntimeError:
                in_loop = False
            if not in_loop:
                self._ready.wait(self._first_resolution_timeout)
        picker = self._picker
        if picker is not None:
            return picker
        reason = self._no_pick_reason
        if not self._ready.is_set():
            reason = ("the first resolution of the target did not finish in "
                      f"{self._first_resolution_timeout:g}s")
            if self._discovery_error is not None:
                reason += f" (last error: {self._discovery_error})"
        raise NoEndpointAvailable(reason, service=self.name) from self._discovery_error

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until the first resolution finished; True when it did in time."""
        return self._ready.wait(self._first_resolution_timeout if timeout is None else timeout)

    async def await_ready(self, timeout: float | None = None) -> bool:
        """The async twin of :meth:`wait_ready`: await the first resolution without
        blocking the event loop (asyncio or trio); True when it finished in time.

        Named as httpx names async twins (``close``/``aclose``): ``a`` + the sync
        name, here ``a`` + ``wait_ready``.
        """
        if self._ready.is_set():
            return True
        if timeout is None:
            timeout = self._first_resolution_timeout
        loop = _asyncio_loop()
        if loop is None:  # trio (through anyio): wait for the event in a worker thread
            import anyio.to_thread

            return await anyio.to_thread.run_sync(self._ready.wait, timeout)
        fut: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if self._ready.is_set():
                return True
            self._ready_waiters.append((loop, fut))
        try:
            await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            return False
        return True

    # -- listeners --------------------------------------------------------------------------

    def add_outcome_listener(self, listener: OutcomeListener) -> None:
        """Call ``listener(state, outcome, latency, now)`` after every outcome."""
        with self._lock:
            self._outcome_listeners = (*self._outcome_listeners, listener)

    def add_diff_listener(self, listener: DiffListener) -> None:
        """Call ``listener(diff)`` after every endpoint-set change (e.g. to close pools)."""
        with self._lock:
            self._diff_listeners = (*self._diff_listeners, listener)

    def remove_listener(self, listener: Callable[..., None]) -> None:
        with self._lock:
            self._outcome_listeners = tuple(x for x in self._outcome_listeners if x != listener)
            self._diff_listeners = tuple(x for x in self._diff_listeners if x != listener)
            self._error_listeners = tuple(x for x in self._error_listeners if x != listener)

    def add_error_listener(self, listener: Callable[[BaseException], None]) -> None:
        """Call ``listener(exc)`` after every discovery error (the last good set stays)."""
        with self._lock:
            self._error_listeners = (*self._error_listeners, listener)

    # -- introspection ----------------------------------------------------------------------

    @property
    def target(self) -> Target:
        return self._target

    @property
    def resolver(self) -> Resolver:
        """The resolver behind the target (``statistics()`` on the discovery resolvers)."""
        return self._resolver

    @property
    def strategy(self) -> Strategy:
        return self._strategy

    @property
    def discovery_error(self) -> BaseException | None:
        """The last discovery failure, or None since the last good endpoint set."""
        return self._discovery_error

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def rng(self) -> _random.Random:
        return self._rng

    @property
    def mode(self) -> str:
        return "closed" if self._closed else self._mode

    def set_health_check(self, health_check: HealthCheck | None) -> None:
        """Replace the active health checks live (``None`` stops them)."""
        self._health.set_health_check(health_check)

    def set_outlier_detection(self, outlier_detection: OutlierDetection | None) -> None:
        """Replace outlier detection live (``None`` turns it off and ends ejections)."""
        self._health.set_outlier_detection(outlier_detection)

    def set_panic_threshold(self, panic_threshold: float) -> None:
        self._health.set_option("panic_threshold", panic_threshold)

    def set_slow_start(self, slow_start: SlowStart | None) -> None:
        self._health.set_option("slow_start", slow_start)

    def set_local_zone(self, local_zone: str | None) -> None:
        self._health.set_option("local_zone", local_zone)

    def set_hedging(self, hedging: Hedging | None) -> None:
        """Replace the hedging policy live (``None``: no hedging for the integrations that
        use the balancer's); the adaptive delay and the counters carry over."""
        self.hedging = check_hedging(hedging)

    def hedge_state(self) -> HedgeState:
        """The balancer's hedging state (adaptive delay, extra-load budget, counters),
        created — and fed by an outcome listener — the first time a call may be hedged."""
        state = self._hedge_state
        if state is None:
            with self._lock:
                state = self._hedge_state
                if state is None:
                    state = self._hedge_state = HedgeState(self._clock)
                    self.add_outcome_listener(state.on_outcome)
        return state

    def hedging_statistics(self) -> dict[str, Any]:
        """Hedged requests since the first one: ``requests`` (hedgeable calls), ``sent``,
        ``won`` (a hedge answered first), ``refused`` (over the extra-load or retry
        budget), ``probes`` (slow endpoints hedged at once), and the current
        ``adaptive_delay`` in seconds (None before enough latencies were seen)."""
        state = self._hedge_state
        if state is None:
            return {**dict.fromkeys(HEDGE_COUNTERS, 0), "adaptive_delay": None}
        return state.statistics()

    def _new_subsetter(self, subset: SubsetConfig | None) -> Subsetter | None:
        if subset is None:
            return None
        return Subsetter(subset, name=self.name, rng=self._rng, on_place_change=self.rebuild)

    def set_subset(self, subset: SubsetConfig | None) -> None:
        """Replace the subset live (``None``: every endpoint again); in-flight calls finish.

        Raises:
            ConfigError: not an Aperture, a RandomSubset or None; an aperture
                whose place cannot be found.
        """
        new = self._new_subsetter(check_subset(subset))
        with self._lock:
            old, self._subsetter = self._subsetter, new
            closed = self._closed
            if not closed:
                self._rebuild_locked(self._clock())
        if old is not None:
            old.close()
        if new is not None and not closed:
            new.start()

    def health_statistics(self) -> dict[str, int]:
        """Health counters since creation (ejections by detector, probes,
        transitions, panics, circuit-breaker rejections, re-resolution requests)
        and gauges ``endpoints_<state>``; see docs/health.md."""
        with self._lock:
            return self._health.statistics()

    def endpoints(self) -> tuple[Endpoint, ...]:
        """Every discovered endpoint, whatever its health."""
        return self._visible_endpoints

    def state_of(self, address: str) -> EndpointState | None:
        """The live state of an endpoint (``host:port``), including draining ones."""
        return self._states.get(address) or self._draining.get(address)

    def snapshot(self) -> BalancerSnapshot:
        """Per endpoint: state, effective weight, in-flight, EWMA latency, ejections."""
        with self._lock:
            now = self._clock()
            for addr in [a for a, s in self._draining.items() if s.load.in_flight <= 0]:
                del self._draining[addr]
            rows = [
                self._row(state, now)
                for state in (*self._states.values(), *self._draining.values())
            ]
            subsetter = self._subsetter
            hedge_state = self._hedge_state
            return BalancerSnapshot(
                name=self.name, target=str(self._target), strategy=self._strategy.name,
                mode=self.mode, endpoints=tuple(rows), version=self._endpoint_set.version,
                subset=subsetter.snapshot() if subsetter is not None else None,
                hedging=hedge_state.statistics() if hedge_state is not None else None,
            )

    def _row(self, state: EndpointState, now: float) -> EndpointSnapshot:
        load = state.load
        picker = self._picker
        return EndpointSnapshot(
            endpoint=state.endpoint,
            state=state.health(now).value,
            effective_weight=self._weights.get(state.address, 0.0),
            in_flight=load.in_flight,
            ewma_latency=load.latency(now),
            ejection_count=state.ejection_count,
            requests=load.requests,
            failures=load.failures,
            connectivity=state.connectivity.value,
            in_subset=self._subsetter is None or self._subsetter.contains(state.address),
            error_rate=load.error_rate if load.track_errors else None,
            load_weight=None if picker is None else picker.weight_of(state, now),
        )

    def __repr__(self) -> str:
        now = self._clock()
        states = list(self._states.values())
        healthy = sum(1 for s in states if s.health(now) is Health.HEALTHY)
        in_flight = sum(s.load.in_flight for s in states)
        return (f"<LoadBalancer {self.name!r} {self._target.scheme} {self._strategy.name} "
                f"[{plural(len(states), 'endpoint')}: {healthy} healthy] in_flight={in_flight} "
                f"mode={self.mode}>")

    # -- runtime control (the control API; see clientlb.Registry) ------------------------------

    def set_strategy(self, strategy: str | Strategy) -> None:
        """Switch the algorithm live: a new picker over the same endpoint states.

        In-flight calls are untouched and load metrics (in-flight counts,
        latency estimates) carry over, so a switch to ``least_request`` sees
        the calls already running. The error rate is tracked only while a
        strategy that weighs it (``peak_ewma``) is installed: after a switch to
        one, it starts from zero.

        Raises:
            ConfigError: an unknown strategy name.
        """
        new = resolve_strategy(strategy)
        with self._lock:
            old, self._strategy = self._strategy, new
            if new.weighs_errors != old.weighs_errors:  # e.g. to peak_ewma: start counting
                for state in (*self._states.values(), *self._draining.values()):
                    state.load.track(new.weighs_errors)
            if not self._closed:
                self._rebuild_locked(self._clock())
        logger.info("%s: strategy %s -> %s", self.name, old.name, new.name)

    def set_weight(self, address: str, weight: float | None) -> None:
        """Override the weight of one endpoint (``host:port``); ``None`` removes the override.

        The override survives discovery updates (the endpoint keeps the weight
        given here, whatever discovery says) and applies when the address
        comes back after leaving. ``0`` takes the endpoint out of rotation
        unless every endpoint of its level has weight 0.

        Raises:
            ConfigError: a weight that is not a finite number >= 0.
        """
        if weight is not None and (isinstance(weight, bool) or not isinstance(weight, (int, float))
                                   or not math.isfinite(weight) or weight < 0):
            raise ConfigError(f"weight must be a finite number >= 0 or None, got {weight!r}",
                              field="weight")
        with self._lock:
            if weight is None:
                self._weight_overrides.pop(address, None)
                ep = self._endpoint_set.get(address)
                state = self._states.get(address)
                if ep is not None and state is not None:
                    state.endpoint = ep
            else:
                self._weight_overrides[address] = float(weight)
            if not self._closed:
                self._rebuild_locked(self._clock())
        logger.info("%s: weight of %s set to %s", self.name, address,
                    "discovery's" if weight is None else f"{weight:g}")

    def _apply_weight_overrides_locked(self) -> None:
        for address, weight in self._weight_overrides.items():
            state = self._states.get(address)
            if state is not None and state.endpoint.weight != weight:
                state.endpoint = dataclasses.replace(state.endpoint, weight=weight)

    def drain(self, address: str) -> bool:
        """Stop sending new calls to an endpoint; its in-flight calls finish.

        The endpoint stays in ``snapshot()`` as ``draining`` until
        :meth:`undrain` or until discovery removes it. Returns False when no
        endpoint has that address.
        """
        with self._lock:
            state = self._states.get(address)
            if state is None:
                return False
            if not state.draining:
                state.draining = True
                if not self._closed:
                    self._rebuild_locked(self._clock())
                logger.info("%s: %s draining (%d in flight)", self.name, address,
                            state.load.in_flight)
            return True

    def undrain(self, address: str) -> bool:
        """Put an endpoint drained with :meth:`drain` back in rotation."""
        with self._lock:
            state = self._states.get(address)
            if state is None:
                return False
            if state.draining:
                state.draining = False
                if not self._closed:
                    self._rebuild_locked(self._clock())
                logger.info("%s: %s back in rotation", self.name, address)
            return True

    def add(self, endpoint: Endpoint | str) -> None:
        """Add an endpoint to a ``static://`` target (``Endpoint`` or ``"host:port"``).

        Adding an address that is already there replaces its attributes
        (weight, priority, zone, metadata), keeping its load and history.

        Raises:
            ConfigError: the target is managed by discovery, or the endpoint is malformed.
        """
        ep = endpoint if isinstance(endpoint, Endpoint) else Endpoint.parse(endpoint)
        self._check_static("add")
        with self._edit_lock:
            current = [e for e in self._endpoint_set if e.address != ep.address]
            self.publish(EndpointSet([*current, ep], version=self._endpoint_set.version + 1))

    def remove(self, address: str) -> bool:
        """Remove an endpoint from a ``static://`` target; its in-flight calls finish.

        Returns False when no endpoint has that address.

        Raises:
            ConfigError: the target is managed by discovery.
        """
        self._check_static("remove")
        with self._edit_lock:
            if address not in self._endpoint_set:
                return False
            rest = [e for e in self._endpoint_set if e.address != address]
            self.publish(EndpointSet(rest, version=self._endpoint_set.version + 1))
            return True

    async def wait_ready_async(self, timeout: float | None = None) -> bool:
        """Deprecated: the old name of :meth:`await_ready`."""
        warnings.warn("LoadBalancer.wait_ready_async() is deprecated; use await_ready(), the "
                      "async twin of wait_ready()", DeprecationWarning, stacklevel=2)
        return await self.await_ready(timeout)

    def _check_static(self, what: str) -> None:
        if self._target.scheme != "static":
            raise ConfigError(
                f"{what}() only edits static targets; {self._target.scheme}:// endpoints come "
                "from discovery (use set_weight() or drain() instead)", field="target")
        if not self._ready.is_set():
            # Created inside an event loop, the static list is published by a task that
            # has not run yet: an edit now would be overwritten by it.
            raise ClientLBError(f"{what}() before the balancer's first endpoint set; "
                                "await lb.await_ready() first")

    def in_flight(self) -> int:
        """Calls in flight on every endpoint, including draining ones."""
        with self._lock:
            states = (*self._states.values(), *self._draining.values())
        return sum(s.load.in_flight for s in states)

    # -- lifecycle --------------------------------------------------------------------------

    def close(self) -> None:
        """Stop discovery and refuse new picks; in-flight calls finish. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._picker = None
        self._resolver.close()
        self._health.close()
        if self._subsetter is not None:
            self._subsetter.close()
        self._set_ready()

    async def aclose(self) -> None:
        """:meth:`close` without blocking the event loop (asyncio or trio)."""
        if _asyncio_loop() is None:
            # trio (through anyio): created outside asyncio, discovery and health run on
            # their own threads; close() waits for them, so it runs in a worker thread.
            import anyio.to_thread

            await anyio.to_thread.run_sync(self.close)
            return
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._picker = None
        await self._resolver.aclose()
        await self._health.aclose()
        if self._subsetter is not None:
            await self._subsetter.aclose()
        self._set_ready()

    @property
    def closed(self) -> bool:
        return self._closed

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        # Collected without close(), as a socket or an asyncio transport can be:
        # stop the background work (discovery, probes) without waiting for it,
        # then say so with a ResourceWarning, as they do.
        if getattr(self, "_closed", True):  # closed, or __init__ failed early
            return
        self._closed = True
        self._picker = None
        with contextlib.suppress(Exception):  # interpreter shutdown
            self._resolver.stop()
        with contextlib.suppress(Exception):
            self._health.close(wait=False)
        _warn(f"unclosed {self!r}; close() it or use 'with'", ResourceWarning, source=self)



class _WeakSink:
    """What a balancer's resolver publishes to: the balancer, weakly referenced."""

    __slots__ = ("_ref",)

    def __init__(self, lb: LoadBalancer) -> None:
        self._ref = weakref.ref(lb)

    def publish(self, endpoints: EndpointSet) -> None:
        lb = self._ref()
        if lb is not None:
            lb.publish(endpoints)

    def error(self, exc: BaseException) -> None:
        lb = self._ref()
        if lb is not None:
            lb.error(exc)


class _Unstarted(LoadBalancer):
    """A balancer that makes every check and starts nothing (no discovery, no probes)."""

    _starts = False


def check_options(target: object, **options: Any) -> None:
    """Raise what ``LoadBalancer(target, **options)`` would raise, starting nothing.

    The configuration file check (``clientlb config``, ``Registry.from_config``
    before it creates anything) uses it, so that a file is validated by the very
    code that builds the balancers: a misspelt ``resolver_options`` key or
    ``max_requests = -5`` is refused there as it is here.
    """
    _Unstarted(target, **options)  # type: ignore[arg-type]


def _asyncio_loop() -> asyncio.AbstractEventLoop | None:
    """The running asyncio loop, or None (no loop, or another library such as trio)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _resolve_future(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)

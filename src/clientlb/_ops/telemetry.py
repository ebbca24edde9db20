"""OpenTelemetry metrics and span events for load balancers.

clientlb depends on ``opentelemetry-api`` only: without an SDK configured by
the application, every instrument is the API's no-op and the cost per call is
a few attribute look-ups. Every balancer reports through the global providers
unless created with ``telemetry=False`` (:func:`default_telemetry`);
:func:`instrument` with a ``meter_provider`` moves it to that provider. With
an SDK (``opentelemetry-sdk``, an exporter) the instruments record:

==================================  =========  ===============================================
instrument                          kind       attributes
==================================  =========  ===============================================
``clientlb.requests``               counter    service, endpoint, ``clientlb.outcome``
``clientlb.request.duration``       histogram  same; seconds, the buckets of OpenTelemetry's
                                               ``http.client.request.duration``
``clientlb.endpoint.count``         gauge      service, ``clientlb.endpoint.state``
                                               (healthy, ejected, unhealthy, draining)
``clientlb.panic``                  gauge      service; 1 while the balancer is in panic mode
``clientlb.ejections``              counter    service, endpoint (observed from ``snapshot()``)
``clientlb.retries``                counter    service (retries the budget allowed)
``clientlb.retry.budget_exhausted`` counter    service (retries the budget refused)
``clientlb.hedges``                 counter    service, ``clientlb.hedge`` (sent, won, refused,
                                               probes: ``lb.hedging_statistics()``)
``clientlb.discovery.updates``      counter    service
``clientlb.discovery.errors``       counter    service, ``error.type``
``clientlb.discovery.malformed``    counter    service (records skipped as malformed)
``clientlb.health.events``          counter    service, ``clientlb.event`` (ejections by
                                               detector, probes, panic entered/exited,
                                               circuit breaker rejections, ...)
``clientlb.endpoint.weight``        gauge      service, endpoint; the weight
                                               ``weighted_round_robin`` computed from the
                                               endpoint's load reports (other strategies:
                                               not recorded)
``clientlb.load_reports``           counter    service, ``clientlb.load_report.result``
                                               (``read``, ``malformed``, ``unsupported``)
==================================  =========  ===============================================

Attribute names follow OpenTelemetry's semantic conventions where one
exists (as ``http.client.request.duration`` uses them): the *service* is
``clientlb.service`` (``LoadBalancer.name``) and ``server.address`` +
``server.port`` — the logical name and port the client asked for
(clientlb._engine.naming; a bare static list names none, so there they are
the endpoint's); the *endpoint* the connection went to is
``network.peer.address`` + ``network.peer.port``. A failed outcome also sets
``error.type`` (the outcome kind, e.g. ``gateway_failure``), a discovery
error's ``error.type`` is the exception class. clientlb's own names live
under ``clientlb.``. Instrument names follow the conventions' pluralization
rule: counters of discrete things are plural (``{request}``, ``{retry}``), a
gauge is not (``clientlb.endpoint.count``). Nothing secret is ever an
attribute: targets are not recorded at all, only the service name and
endpoint addresses.

The retry counters are read from the balancer's retry budget
(``lb.retry_budget.statistics()``) at collection time, so the HTTP and gRPC
layers need no extra call to be counted.

Span events: when the caller's current span is recording, every attempt
adds a ``clientlb.attempt`` event (service, endpoint, attempt number within
that span, outcome, duration); a retry layer that calls :func:`record_retry`
adds ``clientlb.retry`` (attempt, reason, failed endpoint), and
:func:`record_budget_exhausted` adds ``clientlb.retry.budget_exhausted`` — the
HTTP, gRPC and TCP integrations call both; a hedge adds ``clientlb.hedge``
(attempt, reason ``delay`` or ``probe``, the slow endpoint) through
:func:`record_hedge`. A hedge that lost reports its attempt ``cancelled``.

Cost: the outcome listener looks up attribute sets pre-built per endpoint
and outcome, increments a request count under a lock (the count is reported
by an observable counter at collection time, not by an SDK ``add`` per
call), and makes one histogram ``record`` — the one SDK call per outcome,
and most of the cost with an SDK installed; see
``benchmarks/telemetry_overhead.py`` for the measured figures.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry import context, metrics, trace
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

from .._core.endpoint import Endpoint, EndpointSetDiff
from .._core.outcome import Outcome
from .._core.state import EndpointState, Health
from .._engine.naming import logical_name
from .._engine.orca import statistics as load_report_statistics

if TYPE_CHECKING:
    from .._core.balancer import LoadBalancer

__all__ = ["Telemetry", "instrument", "record_budget_exhausted", "record_hedge",
           "record_retry"]

logger = logging.getLogger("clientlb.telemetry")

#: OpenTelemetry's advisory buckets for ``http.client.request.duration`` (seconds).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                    10.0)

SERVICE = "clientlb.service"
SERVER_ADDRESS = "server.address"  # the logical service (semantic conventions)
SERVER_PORT = "server.port"
PEER_ADDRESS = "network.peer.address"  # the endpoint the connection went to
PEER_PORT = "network.peer.port"
OUTCOME = "clientlb.outcome"
STATE = "clientlb.endpoint.state"
RETRY_REASON = "clientlb.retry.reason"
ATTEMPT = "clientlb.attempt"
EVENT = "clientlb.event"
HEDGE = "clientlb.hedge"
HEDGE_REASON = "clientlb.hedge.reason"
HEDGE_COUNTERS = ("sent", "won", "refused", "probes")
REPORT_RESULT = "clientlb.load_report.result"

_STATES = tuple(h.value for h in Health)
_current_context = context.get_current

Attributes = Mapping[str, Any]


class _Series:
    """One endpoint's pre-built attribute sets and request counts, by outcome."""

    __slots__ = ("attrs", "counts")

    def __init__(self, service_attrs: Attributes, state: EndpointState) -> None:
        base = _endpoint_attrs(service_attrs, state.endpoint)
        self.attrs: dict[int, Attributes] = {}
        for outcome in Outcome:
            a = dict(base)
            a[OUTCOME] = outcome.value
            if outcome.is_failure:
                a["error.type"] = outcome.value
            self.attrs[id(outcome)] = a
        # Keyed by id(outcome): hashing an Enum member is a Python-level call, id() is not.
        self.counts: dict[int, int] = dict.fromkeys(map(id, Outcome), 0)


def _service_attrs(lb: LoadBalancer) -> dict[str, Any]:
    """``clientlb.service`` and, when the balancer has a logical name, ``server.*``."""
    attrs: dict[str, Any] = {SERVICE: lb.name}
    name = logical_name(lb)
    if name is not None:
        attrs[SERVER_ADDRESS] = name.host
        if name.port is not None:
            attrs[SERVER_PORT] = name.port
    return attrs


def _endpoint_attrs(service_attrs: Attributes, ep: Endpoint) -> dict[str, Any]:
    """The service's attributes and the endpoint's ``network.peer.*``; without a logical
    name (a bare static list) the endpoint is the server too."""
    attrs = {**service_attrs, PEER_ADDRESS: ep.host, PEER_PORT: ep.port}
    if SERVER_ADDRESS not in attrs:
        attrs[SERVER_ADDRESS] = ep.host
        attrs[SERVER_PORT] = ep.port
    return attrs


class _Bound:
    """One instrumented balancer: its listeners and per-endpoint series."""

    __slots__ = ("lock", "record", "series", "service", "service_attrs", "span_events",
                 "telemetry")

    def __init__(self, telemetry: Telemetry, lb: LoadBalancer) -> None:
        self.telemetry = telemetry
        # the per-outcome work, bound once (every balancer reports by default: keep it cheap)
        self.record = telemetry._duration.record if telemetry._durations else None
        self.span_events = telemetry._span_events
        self.service = lb.name
        self.service_attrs: Attributes = _service_attrs(lb)
        # address -> series; built on the endpoint's first outcome, dropped when it
        # leaves (its counter then restarts from 0 if it comes back: a counter reset).
        self.series: dict[str, _Series] = {}
        self.lock = threading.Lock()

    def new_series(self, state: EndpointState) -> _Series:
        with self.lock:
            series = self.series.get(state.address)
            if series is None:
                series = self.series[state.address] = _Series(self.service_attrs, state)
            return series

    # -- listeners (called by the balancer) --------------------------------------------

    def on_outcome(self, state: EndpointState, outcome: Outcome, latency: float,
                   now: float) -> None:
        # The request count is kept here and reported by an observable counter at
        # collection time: an increment under a lock instead of an SDK ``add``
        # (attribute validation and hashing on every call, ~5 µs).
        # Cheap without an SDK, as every balancer reports by default: acquire/release
        # rather than ``with`` (half the cost), and no span look-up in an empty context.
        series = self.series.get(state.address) or self.new_series(state)
        lock = self.lock
        lock.acquire()
        key = id(outcome)
        series.counts[key] += 1
        lock.release()
        attrs = series.attrs[key]
        record = self.record
        if record is not None:
            record(latency, attrs)
        if self.span_events:
            ctx = _current_context()
            if ctx:  # something is set: maybe a span
                span = trace.get_current_span(ctx)
                if span.is_recording():
                    self.telemetry._span_event(span, attrs, latency)

    def on_diff(self, diff: EndpointSetDiff) -> None:
        self.telemetry._discovery_updates.add(1, self.service_attrs)
        if diff.removed:
            with self.lock:
                for ep in diff.removed:
                    self.series.pop(ep.address, None)

    def on_error(self, exc: BaseException) -> None:
        self.telemetry._discovery_errors.add(
            1, {**self.service_attrs, "error.type": type(exc).__qualname__})


class Telemetry:
    """A set of OpenTelemetry instruments shared by the balancers it instruments.

    ::

        telemetry = clientlb.Telemetry()          # the global providers
        telemetry.instrument(lb)

    Args:
        meter_provider: defaults to the global one (``metrics.get_meter_provider()``).
        span_events: add ``clientlb.attempt`` and ``clientlb.retry`` events to the
            caller's current span, whatever tracer provider made it (default True).
        durations: record ``clientlb.request.duration`` (default True). The
            histogram is the one SDK call per outcome; ``False`` brings the cost
            with an SDK down to that without one, for the hottest paths.
    """

    def __init__(self, *, meter_provider: MeterProvider | None = None,
                 span_events: bool = True, durations: bool = True) -> None:
        from .. import __version__

        meter = metrics.get_meter("clientlb", __version__, meter_provider)
        self._span_events = span_events
        self._durations = durations
        self._bound: weakref.WeakKeyDictionary[LoadBalancer, _Bound] = (
            weakref.WeakKeyDictionary())
        self._lock = threading.Lock()
        # span -> attempts seen in that span (weak: spans end and go away)
        self._attempts: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
        meter.create_observable_counter(
            "clientlb.requests", callbacks=[self._observe_requests], unit="{request}",
            description="Calls through a balancer, by service, endpoint and outcome.")
        self._duration = meter.create_histogram(
            "clientlb.request.duration", unit="s",
            description="Duration of calls through a balancer, from pick to outcome.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS)
        meter.create_observable_counter(
            "clientlb.retries", callbacks=[self._observe_retries], unit="{retry}",
            description="Retries allowed by each balancer's retry budget.")
        meter.create_observable_counter(
            "clientlb.retry.budget_exhausted", callbacks=[self._observe_refused],
            unit="{retry}", description="Retries refused because the retry budget was spent.")
        meter.create_observable_counter(
            "clientlb.hedges", callbacks=[self._observe_hedges], unit="{hedge}",
            description="Hedged requests of each balancer: sent, won, refused by a budget, "
                        "probes hedged at once (lb.hedging_statistics()).")
        self._discovery_updates = meter.create_counter(
            "clientlb.discovery.updates", unit="{update}",
            description="Endpoint-set changes published by discovery.")
        self._discovery_errors = meter.create_counter(
            "clientlb.discovery.errors", unit="{error}",
            description="Discovery failures (the last good endpoint set was kept).")
        meter.create_observable_gauge(
            "clientlb.endpoint.count", callbacks=[self._observe_endpoints], unit="{endpoint}",
            description="Endpoints of each balancer, by state.")
        meter.create_observable_gauge(
            "clientlb.panic", callbacks=[self._observe_panic], unit="1",
            description="1 while a balancer spreads traffic over every endpoint (panic mode).")
        meter.create_observable_counter(
            "clientlb.ejections", callbacks=[self._observe_ejections], unit="{ejection}",
            description="Outlier ejections per endpoint since it was discovered.")
        meter.create_observable_counter(
            "clientlb.discovery.malformed", callbacks=[self._observe_malformed],
            unit="{record}", description="Discovery records skipped because malformed.")
        meter.create_observable_counter(
            "clientlb.health.events", callbacks=[self._observe_health], unit="{event}",
            description="Health events of each balancer (lb.health_statistics()).")
        meter.create_observable_gauge(
            "clientlb.endpoint.weight", callbacks=[self._observe_weights], unit="1",
            description="Endpoint weights computed from load reports (weighted_round_robin).")
        meter.create_observable_counter(
            "clientlb.load_reports", callbacks=[self._observe_load_reports], unit="{report}",
            description="ORCA load reports received, by result (read, malformed, unsupported).")

    # -- instrumenting --------------------------------------------------------------------

    def instrument(self, lb: LoadBalancer, *, replace_default: bool = True) -> None:
        """Record ``lb``'s outcomes, discovery updates and errors. Idempotent.

        Every balancer reports through the process-wide ``Telemetry`` on the global
        providers (:func:`default_telemetry`) unless created with
        ``telemetry=False``; instrumenting it with another one takes it off that one,
        so that nothing is counted twice (or added twice to a span).
        ``replace_default=False`` keeps both (a side channel such as the control
        room's ``/metrics``).
        """
        with self._lock:
            if lb in self._bound:
                return
            bound = _Bound(self, lb)
            self._bound[lb] = bound
        default = _default
        if replace_default and default is not None and default is not self:
            default.uninstrument(lb)
        lb.add_outcome_listener(bound.on_outcome)
        lb.add_diff_listener(bound.on_diff)
        lb.add_error_listener(bound.on_error)
        _REGISTRY.setdefault(lb, []).append(bound)
        logger.debug("%s: telemetry on", lb.name)

    def uninstrument(self, lb: LoadBalancer) -> None:
        """Stop recording ``lb``. Idempotent."""
        with self._lock:
            bound = self._bound.pop(lb, None)
        if bound is None:
            return
        lb.remove_listener(bound.on_outcome)
        lb.remove_listener(bound.on_diff)
        lb.remove_listener(bound.on_error)
        bounds = _REGISTRY.get(lb)
        if bounds is not None and bound in bounds:
            bounds.remove(bound)

    def _live(self) -> list[tuple[_Bound, LoadBalancer]]:
        with self._lock:
            items = list(self._bound.items())
        return [(b, lb) for lb, b in items if not lb.closed]

    # -- span events ----------------------------------------------------------------------

    def _span_event(self, span: Any, attrs: Attributes, latency: float) -> None:
        try:
            n = self._attempts.get(span, 0) + 1
            self._attempts[span] = n
        except TypeError:  # a span type that cannot be weakly referenced
            n = 1
        event = dict(attrs)
        event[ATTEMPT] = n
        event["clientlb.duration"] = latency
        span.add_event("clientlb.attempt", event)

    def _retry(self, bound: _Bound, attempt: int, reason: str, address: str | None,
               name: str = "clientlb.retry", reason_key: str = RETRY_REASON) -> None:
        if self._span_events:
            span = trace.get_current_span()
            if span.is_recording():
                event: dict[str, Any] = {**bound.service_attrs, ATTEMPT: attempt,
                                         reason_key: reason}
                if address is not None:
                    event["clientlb.endpoint"] = address
                span.add_event(name, event)

    # -- observable callbacks ---------------------------------------------------------

    def _observe_endpoints(self, options: CallbackOptions) -> Iterable[Observation]:
        for bound, lb in self._live():
            counts = dict.fromkeys(_STATES, 0)
            for row in lb.snapshot().endpoints:
                counts[row.state] = counts.get(row.state, 0) + 1
            for state, n in counts.items():
                yield Observation(n, {**bound.service_attrs, STATE: state})

    def _observe_requests(self, options: CallbackOptions) -> Iterable[Observation]:
        for bound, _ in self._live():
            with bound.lock:
                rows = [(series.attrs[o], n) for series in bound.series.values()
                        for o, n in series.counts.items() if n]
            for attrs, n in rows:
                yield Observation(n, attrs)

    def _observe_retries(self, options: CallbackOptions) -> Iterable[Observation]:
        return self._budget_counter("retries")

    def _observe_refused(self, options: CallbackOptions) -> Iterable[Observation]:
        return self._budget_counter("refused")

    def _budget_counter(self, key: str) -> Iterable[Observation]:
        for bound, lb in self._live():
            budget = getattr(lb, "retry_budget", None)  # present with the retry layer
            if budget is not None:
                yield Observation(int(budget.statistics()[key]), bound.service_attrs)

    def _observe_hedges(self, options: CallbackOptions) -> Iterable[Observation]:
        for bound, lb in self._live():
            statistics = lb.hedging_statistics()
            if statistics["requests"]:
                for counter in HEDGE_COUNTERS:
                    yield Observation(int(statistics[counter]),
                                      {**bound.service_attrs, HEDGE: counter})

    def _observe_malformed(self, options: CallbackOptions) -> Iterable[Observation]:
        for bound, lb in self._live():
            statistics = getattr(lb.resolver, "statistics", None)  # discovery resolvers
            if statistics is not None:
                yield Observation(int(statistics().malformed), bound.service_attrs)

    def _observe_health(self, options: CallbackOptions) -> Iterable[Observation]:
        for bound, lb in self._live():
            statistics = getattr(lb, "health_statistics", None)
            if statistics is None:
                continue
            for event, n in statistics().items():
                if not event.startswith("endpoints_"):  # gauges: see clientlb.endpoint.count
                    yield Observation(int(n), {**bound.service_attrs, EVENT: event})

    def _observe_weights(self, options: CallbackOptions) -> Iterable[Observation]:
        for bound, lb in self._live():
            if not lb.strategy.uses_load_reports:
                continue
            for row in lb.snapshot().endpoints:
                if row.load_weight is not None:
                    yield Observation(row.load_weight,
                                      _endpoint_attrs(bound.service_attrs, row.endpoint))

    def _observe_load_reports(self, options: CallbackOptions) -> Iterable[Observation]:
        for bound, lb in self._live():
            states = (lb.state_of(ep.address) for ep in lb.endpoints())
            totals = load_report_statistics(s for s in states if s is not None)
            if not any(totals.values()):
                continue
            for result, key in (("read", "reports"), ("malformed", "malformed"),
                                ("unsupported", "unsupported")):
                yield Observation(totals[key], {**bound.service_attrs, REPORT_RESULT: result})

    def _observe_panic(self, options: CallbackOptions) -> Iterable[Observation]:
        for bound, lb in self._live():
            yield Observation(1 if lb.mode == "panic" else 0, bound.service_attrs)

    def _observe_ejections(self, options: CallbackOptions) -> Iterable[Observation]:
        for bound, lb in self._live():
            for row in lb.snapshot().endpoints:
                yield Observation(row.ejection_count,
                                  _endpoint_attrs(bound.service_attrs, row.endpoint))


# Balancer -> its instrumentations, for the hooks the retry layer calls.
_REGISTRY: weakref.WeakKeyDictionary[LoadBalancer, list[_Bound]] = weakref.WeakKeyDictionary()
_default: Telemetry | None = None
_default_lock = threading.Lock()


def default_telemetry() -> Telemetry:
    """The process-wide :class:`Telemetry` on the global providers (created on first use)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Telemetry()
        return _default


def instrument(lb: LoadBalancer, *, meter_provider: MeterProvider | None = None) -> Telemetry:
    """Record ``lb`` with OpenTelemetry; returns the :class:`Telemetry` used.

    Every balancer already reports through the process-wide instruments on the
    global providers (``LoadBalancer(telemetry=True)``, the default; set the
    SDK up before or after: the API forwards), so without ``meter_provider``
    this only turns it back on. With one, the balancer reports there instead.
    """
    telemetry = default_telemetry() if meter_provider is None else Telemetry(
        meter_provider=meter_provider)
    telemetry.instrument(lb)
    return telemetry


def record_retry(lb: LoadBalancer, *, attempt: int, reason: str,
                 endpoint: str | None = None) -> None:
    """Note a retry of ``lb`` on the current span (called by the retry layer; cheap).

    ``attempt`` is the number of the attempt about to start (2 for the first
    retry), ``reason`` a short word (``connect_failure``, ``status_503``...),
    ``endpoint`` the address that failed.
    """
    for bound in _REGISTRY.get(lb, ()):
        bound.telemetry._retry(bound, attempt, reason, endpoint)


def record_hedge(lb: LoadBalancer, *, attempt: int, reason: str,
                 endpoint: str | None = None) -> None:
    """Note a hedge of ``lb`` on the current span: a ``clientlb.hedge`` event with the
    attempt number, ``clientlb.hedge.reason`` (``delay``: the hedge delay passed;
    ``probe``: a slow endpoint, hedged at once) and the slow attempt's endpoint."""
    for bound in _REGISTRY.get(lb, ()):
        bound.telemetry._retry(bound, attempt, reason, endpoint, "clientlb.hedge", HEDGE_REASON)


def record_budget_exhausted(lb: LoadBalancer) -> None:
    """Note on the current span that ``lb``'s retry budget refused a retry."""
    for bound in _REGISTRY.get(lb, ()):
        if bound.telemetry._span_events:
            span = trace.get_current_span()
            if span.is_recording():
                span.add_event("clientlb.retry.budget_exhausted", bound.service_attrs)

"""The health manager: one per balancer, the glue between health and picking.

It owns the outlier detector, the active checker, the circuit breaker and
the selection settings, and implements ``LoadBalancer._select``: every
rebuild of the picker goes through :meth:`HealthManager.select`, which
updates the endpoints' health (ejections that expired, slow-start ramps),
logs and counts every transition once (logger ``clientlb.health``), and
computes the eligible endpoints and their effective weights
(:mod:`.selection`).

The manager sees its balancer only through :class:`~.view.BalancerView`
(states, lock, rebuild, clock, listeners), never its private attributes.

Nothing here needs a timer thread for correctness. The balancer keeps one
float, ``health_deadline``: the earliest instant at which something
time-driven must happen (an ejection ends, the outlier sweep is due, a
slow-start step). ``pick()`` compares the clock with it — one comparison on
the hot path — and past it calls :meth:`tick`, which takes the balancer lock
*without blocking* (another thread already doing the work is enough), runs
what is due and republishes the picker. So an ejected endpoint comes back at
the end of its ejection even when no outcome arrives, with a fake clock in
tests as with the real one.

When nothing at all is healthy, the manager asks discovery for an early
re-resolution (``Resolver.refresh()``), at most once per
:data:`REFRESH_MIN_INTERVAL`: the addresses may simply have changed (gRPC
re-resolves only on connection loss: grpc/grpc#12295, #30015).
"""

from __future__ import annotations

import logging
import math
import weakref
from collections.abc import Sequence
from typing import TypeVar

from .._core.errors import ConfigError
from .._core.outcome import Outcome
from .._core.state import EndpointState, Health
from .._engine.naming import logical_name
from .checks import HealthChecker
from .circuit import CircuitBreaker, check_limit
from .config import HealthCheck, OutlierDetection, SlowStart
from .outlier import OutlierDetector, OutlierStats
from .selection import Selection, select
from .slow_start import STEPS, ramp_factor
from .view import BalancerView

__all__ = ["REFRESH_MIN_INTERVAL", "HealthManager"]

logger = logging.getLogger("clientlb.health")

#: seconds between two re-resolution requests while nothing is healthy
REFRESH_MIN_INTERVAL = 5.0

_HEALTHY = Health.HEALTHY
_EJECTED = Health.EJECTED
_UNHEALTHY = Health.UNHEALTHY
_SUCCESS = Outcome.SUCCESS
_CANCELLED = Outcome.CANCELLED
_INF = math.inf

_COUNTERS = (
    "ejections_total",
    "ejections_consecutive_failures",
    "ejections_consecutive_gateway_failures",
    "ejections_consecutive_local_origin_failures",
    "ejections_success_rate",
    "ejections_failure_percentage",
    "ejections_overflow",
    "ejections_not_enforced",
    "unejections_expired",
    "unejections_health_check",
    "unejections_reconnected",
    "probes_passed",
    "probes_failed",
    "became_healthy",
    "became_unhealthy",
    "became_ejected",
    "panic_entered",
    "panic_exited",
    "circuit_open_balancer",
    "circuit_open_endpoint",
    "refresh_requested",
)


_C = TypeVar("_C")


def _check_fraction(name: str, value: object, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not low <= value <= high:
        raise ConfigError(f"must be a number {low:g}..{high:g}, got {value!r}", field=name)
    return float(value)


def _check_config(name: str, value: object, cls: type[_C]) -> _C | None:
    """A health setting: a ``cls`` or None (at construction and when set live)."""
    if value is None or isinstance(value, cls):
        return value
    raise ConfigError(f"must be a clientlb.{cls.__name__} or None, got {value!r}", field=name)


def _check_zone(value: object) -> str | None:
    if value is None or (isinstance(value, str) and value):
        return value
    raise ConfigError(f"must be a non-empty string or None, got {value!r}", field="local_zone")


class HealthManager:
    """Health state of one balancer's endpoints; see the module documentation."""

    def __init__(
        self,
        lb: BalancerView,
        *,
        health_check: HealthCheck | None,
        outlier_detection: OutlierDetection | None,
        panic_threshold: float,
        slow_start: SlowStart | None,
        local_zone: str | None,
        overprovisioning_factor: float,
        max_requests: int | None,
        max_requests_per_endpoint: int | None,
    ) -> None:
        _check_config("health_check", health_check, HealthCheck)
        _check_config("outlier_detection", outlier_detection, OutlierDetection)
        _check_config("slow_start", slow_start, SlowStart)
        _check_zone(local_zone)
        self.panic_threshold = _check_fraction("panic_threshold", panic_threshold, 0, 100)
        self.overprovisioning_factor = _check_fraction(
            "overprovisioning_factor", overprovisioning_factor, 1.0, 100.0)
        # Weak: the balancer owns its manager, and nothing the manager runs (the probe
        # thread, the outcome listeners) may keep a balancer dropped without close()
        # alive — its finalizer is what stops them.
        self._lb_ref = weakref.ref(lb)
        self.health_check = health_check
        self.outlier_detection = outlier_detection
        self.slow_start = slow_start
        self.local_zone = local_zone
        self.outlier = (OutlierDetector(outlier_detection, lb.rng)
                        if outlier_detection is not None else None)
        self.checker = (HealthChecker(self, health_check, self._logical_name())
                        if health_check is not None else None)
        self.circuit = None
        limits = (check_limit("max_requests", max_requests),
                  check_limit("max_requests_per_endpoint", max_requests_per_endpoint))
        if limits != (None, None):
            self.circuit = CircuitBreaker(lb.name, *limits)
        self.counters = dict.fromkeys(_COUNTERS, 0)
        self.mode = "waiting"
        self.last = Selection([], [], "waiting", 0, 0, {}, False)
        self._interval = outlier_detection.interval if outlier_detection else _INF
        self._split = bool(outlier_detection and outlier_detection.split_local_origin_errors)
        self._next_sweep = _INF
        self._ramp_due = _INF
        self._last_refresh = -_INF
        self._seen_first_set = False
        self._new_endpoints = False
        self._overflow_logged: dict[str, float] = {}
        if self.outlier is not None:
            lb.add_outcome_listener(self.on_outcome)
        if self.circuit is not None and self.circuit.max_requests is not None:
            lb.add_outcome_listener(self.circuit.release)

    @property
    def _lb(self) -> BalancerView:
        lb = self._lb_ref()
        if lb is None:
            raise ReferenceError("the balancer of this health manager was collected")
        return lb

    def _logical_name(self) -> str | None:
        """The service name probes present (None: a static list without ``name=``)."""
        name = logical_name(self._lb)
        return None if name is None else name.host

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        if self.checker is not None:
            self.checker.start()

    def close(self, *, wait: bool = True) -> None:
        if self.checker is not None:
            self.checker.close(wait=wait)

    async def aclose(self) -> None:
        if self.checker is not None:
            await self.checker.aclose()

    # -- selection (called under the balancer lock by its rebuild) -------------------------

    def select(self, states: Sequence[EndpointState], now: float
               ) -> tuple[list[EndpointState], list[float], str]:
        lb = self._lb
        self._update(states, now)
        slow = self.slow_start
        sel = select(
            states, now,
            panic_threshold=self.panic_threshold / 100.0,
            overprovisioning_factor=self.overprovisioning_factor,
            local_zone=self.local_zone,
            ramp=(lambda s: 1.0 if s.ramp_start is None
                  else ramp_factor(slow, s.ramp_start, now)) if slow is not None else None,
        )
        self.last = sel
        self._ramp_due = now + slow.window / STEPS if (slow is not None and sel.ramping) \
            else _INF
        if not sel.ramping and slow is not None:
            for s in states:
                s.ramp_start = None
        self._set_mode(sel, now)
        if sel.total and sel.healthy == 0 and not any(
                s.probe is not None and s.probe.pending and not s.probe_healthy
                for s in states):  # not while waiting for the first probes
            self._request_refresh(now, "no endpoint is healthy")
        lb.health_deadline = self._deadline(states, now)
        if self._new_endpoints:
            self._new_endpoints = False
            if self.checker is not None:
                self.checker.wake()
        return sel.chosen, sel.weights, sel.mode

    def _request_refresh(self, now: float, why: str) -> None:
        """Ask discovery to re-resolve early (rate-limited; the addresses may have moved)."""
        if now - self._last_refresh < REFRESH_MIN_INTERVAL:
            return
        lb = self._lb
        self._last_refresh = now
        self.counters["refresh_requested"] += 1
        logger.warning("%s: %s; asking discovery to re-resolve now", lb.name, why)
        try:
            lb.refresh()
        except Exception:  # a hint: never let it break a rebuild
            logger.exception("%s: resolver refresh failed", lb.name)

    def _update(self, states: Sequence[EndpointState], now: float) -> None:
        """Initialise new endpoints, end expired ejections, log/count transitions."""
        first = not self._seen_first_set
        if states:
            self._seen_first_set = True
        if self.outlier is not None and self._next_sweep is _INF:
            self._next_sweep = now + self._interval
        initial_healthy = (self.health_check is None
                           or self.health_check.initial_health == "healthy")
        for s in states:
            if s.reported is None:  # first seen
                self._new_endpoints = True
                if self.outlier is not None:
                    s.outlier = OutlierStats()
                if self.checker is not None:
                    s.probe = self.checker.new_state()
                    s.probe_healthy = initial_healthy
                if not first and self.slow_start is not None:
                    s.ramp_start = now
            until = s.ejected_until
            if until is not None and now >= until:
                self._uneject(s, now, f"ejection of {until - (s.ejected_at or until):g}s ended",
                              "unejections_expired")
            h = s.health(now)
            previous = s.reported
            if h is previous:
                continue
            s.reported = h
            if previous is None:
                if h is not _HEALTHY:
                    logger.debug("%s: %s starts %s (%s)", self._lb.name, s.address, h.value,
                                "waiting for its first health check")
                continue
            self._transition(s, previous, h, now)

    def _transition(self, s: EndpointState, previous: Health, h: Health, now: float) -> None:
        name = self._lb.name
        note = s.note  # why: set by whatever caused the change (kept for introspection)
        if h is _HEALTHY:
            self.counters["became_healthy"] += 1
            if self.slow_start is not None:
                s.ramp_start = now
            if previous is Health.DRAINING:
                note = "back in rotation"
            logger.info("%s: %s %s -> healthy (%s)", name, s.address, previous.value,
                        note or "recovered")
        elif h is _EJECTED:
            self.counters["became_ejected"] += 1
            logger.warning("%s: %s %s -> ejected (%s)", name, s.address, previous.value, note)
        elif h is _UNHEALTHY:
            self.counters["became_unhealthy"] += 1
            logger.warning("%s: %s %s -> unhealthy (%s)", name, s.address, previous.value,
                           note or "its health checks are failing")

    def _set_mode(self, sel: Selection, now: float) -> None:
        old, new = self.mode, sel.mode
        self.mode = new
        if old == new:
            return
        name = self._lb.name
        if new == "panic":
            self.counters["panic_entered"] += 1
            logger.warning(
                "%s: PANIC: %d of %d endpoints healthy (below panic_threshold=%g%%); "
                "spreading traffic over every endpoint", name, sel.healthy, sel.total,
                self.panic_threshold)
        elif old == "panic":
            self.counters["panic_exited"] += 1
            logger.info("%s: panic over: %d of %d endpoints healthy", name, sel.healthy,
                        sel.total)
        elif new == "unavailable":
            logger.error("%s: no endpoint may take traffic (%d endpoints, none healthy, "
                         "panic disabled)", name, sel.total)

    def _deadline(self, states: Sequence[EndpointState], now: float) -> float:
        deadline = min(self._next_sweep, self._ramp_due)
        for s in states:
            until = s.ejected_until
            if until is not None and until < deadline:
                deadline = until
        return deadline

    # -- time-driven work (from pick) ------------------------------------------------------

    def tick(self, now: float) -> None:
        """Run what is due at ``now``; never blocks (skips if the lock is busy)."""
        lb = self._lb
        with lb.locked(blocking=False) as held:
            if not held or lb.closed or now < lb.health_deadline:
                return
            self._tick_locked(now)

    def _tick_locked(self, now: float) -> None:
        lb = self._lb
        states = lb.endpoint_states()
        changed = now >= self._ramp_due
        if self.outlier is not None and now >= self._next_sweep:
            changed = self._sweep_locked(states, now) or changed
        for s in states:
            if s.ejected_until is not None and now >= s.ejected_until:
                changed = True
        if changed:
            lb.rebuild_locked(now)
        else:
            lb.health_deadline = self._deadline(states, now)

    # -- outlier detection -------------------------------------------------------------------

    def on_outcome(self, state: EndpointState, outcome: Outcome, latency: float,
                   now: float) -> None:
        """Outcome listener: feed the detectors (cheap; ejects under the lock)."""
        stats = state.outlier
        if stats is None:
            return
        if outcome is _SUCCESS and not self._split:  # the common case, inlined
            stats.successes += 1
            stats.consecutive = 0
            stats.consecutive_gateway = 0
        else:
            detector = self.outlier
            assert detector is not None
            fired = detector.record(stats, outcome)
            if fired is not None:
                self._fire(state, fired, now)
        if now >= self._next_sweep:
            lb = self._lb
            with lb.locked(blocking=False) as held:
                if held and now >= self._next_sweep and not lb.closed:
                    self._tick_locked(now)

    def _fire(self, state: EndpointState, detector: str, now: float) -> None:
        lb = self._lb
        with lb.locked():
            if lb.closed or state.draining:
                return
            outlier = self.outlier
            assert outlier is not None
            stats: OutlierStats = state.outlier
            count = {"consecutive_failures": stats.consecutive,
                     "consecutive_gateway_failures": stats.consecutive_gateway,
                     "consecutive_local_origin_failures": stats.consecutive_local}[detector]
            if not outlier.enforced(detector):
                self.counters["ejections_not_enforced"] += 1
                stats.reset_consecutive()
                return
            if self.eject(state, detector, f"{count} in a row", now):
                lb.rebuild_locked(now)

    def eject(self, state: EndpointState, detector: str, detail: str, now: float) -> bool:
        """Eject ``state`` (caller holds the lock and rebuilds); False if refused."""
        cfg = self.outlier_detection
        outlier = self.outlier
        assert cfg is not None and outlier is not None
        if state.ejected_until is not None and now < state.ejected_until:
            return False
        lb = self._lb
        live = [s for s in lb.states_in_use() if not s.draining]  # the subset's, if any
        ejected = sum(1 for s in live if s.ejected_until is not None and now < s.ejected_until)
        if not outlier.may_eject(ejected, len(live)):
            self.counters["ejections_overflow"] += 1
            # more endpoints failing than may be ejected: perhaps they all moved
            self._request_refresh(now, f"{ejected + 1} of {len(live)} endpoints are outliers")
            if state.outlier is not None:
                state.outlier.reset_consecutive()
            # logged at most once per sweep interval per endpoint: a pool that
            # keeps failing must not flood the log at the request rate
            if now - self._overflow_logged.get(state.address, -_INF) >= cfg.interval:
                self._overflow_logged[state.address] = now
                logger.info("%s: %s is an outlier (%s: %s) but not ejected: %d of %d "
                            "endpoints already ejected (max_ejection_percent=%g%%)", lb.name,
                            state.address, detector, detail, ejected, len(live),
                            cfg.max_ejection_percent)
            return False
        # the multiplier stops growing once the cap is reached (Envoy)
        cap = max(cfg.base_ejection_time, cfg.max_ejection_time)
        if cfg.base_ejection_time * state.ejection_multiplier < cap:
            state.ejection_multiplier += 1
        state.ejection_count += 1
        duration = cfg.ejection_time(max(1, state.ejection_multiplier))
        state.ejected_at = now
        state.ejected_until = now + duration
        state.note = (f"{detector}: {detail}; ejected for {duration:g}s, "
                      f"multiplier {state.ejection_multiplier}")
        if state.outlier is not None:
            state.outlier.reset_consecutive()
        if state.probe is not None:
            state.probe.ok = 0
        self.counters["ejections_total"] += 1
        self.counters[f"ejections_{detector}"] += 1
        return True

    def on_reconnected(self, s: EndpointState, now: float) -> bool:
        """A background probe connected to an ejected endpoint: end its ejection early
        (Envoy's ``successful_active_health_check_uneject_host``). True when it was ejected."""
        if s.ejected_until is None or now >= s.ejected_until:
            return False
        self._uneject(s, now, "accepts connections again", "unejections_reconnected")
        return True

    def _uneject(self, s: EndpointState, now: float, why: str, counter: str) -> None:
        s.ejected_until = None
        s.ejected_at = None
        s.note = why
        if s.outlier is not None:
            s.outlier.reset_consecutive()
        self.counters[counter] += 1

    def _sweep_locked(self, states: Sequence[EndpointState], now: float) -> bool:
        """The outlier interval sweep; True when an ejection happened."""
        outlier = self.outlier
        assert outlier is not None
        intervals = 1 + int((now - self._next_sweep) // self._interval)
        self._next_sweep += intervals * self._interval
        ejected: list[EndpointState] = []

        def eject(s: EndpointState, detector: str, detail: str, at: float) -> bool:
            done = self.eject(s, detector, detail, at)
            if done:
                ejected.append(s)
            return done

        outlier.sweep(states, now, intervals, eject)
        return bool(ejected)

    # -- active health checks -------------------------------------------------------------

    def probe_targets(self) -> list[EndpointState]:
        """The endpoints to probe: every discovered one not draining (any thread);
        with ``subset=``, those of the subset only (docs/architecture.md, "Subsetting")."""
        lb = self._lb_ref()
        if lb is None:
            return []
        return [s for s in lb.states_in_use() if not s.draining]

    def on_probe(self, state: EndpointState, ok: bool, detail: str,
                 source: HealthChecker | None = None) -> None:
        """A probe finished (from ``source``'s loop; None: the current checker)."""
        lb = self._lb_ref()
        if lb is None:  # collected: its finalizer is stopping the probes
            return
        with lb.locked():
            checker = self.checker
            if checker is None or (source is not None and source is not checker):
                return  # a late result of a checker that was replaced
            if lb.closed or state.draining:
                return
            self.counters["probes_passed" if ok else "probes_failed"] += 1
            changed = checker.record(state, ok, detail)
            now = lb.clock()
            cfg = self.outlier_detection
            if (ok and cfg is not None and cfg.uneject_on_health_check
                    and state.ejected_until is not None and now < state.ejected_until
                    and state.probe is not None
                    and state.probe.ok >= checker.config.healthy_threshold):
                self._uneject(state, now, f"health check passed {state.probe.ok} times in a "
                              "row: ejection ended early", "unejections_health_check")
                changed = True
            if changed:
                lb.rebuild_locked(now)

    # -- live reconfiguration (LoadBalancer.set_*; Registry.update) -------------------------

    def set_health_check(self, health_check: HealthCheck | None) -> None:
        """Replace the active checks; current endpoints stay healthy until probed."""
        _check_config("health_check", health_check, HealthCheck)
        lb = self._lb
        new = (HealthChecker(self, health_check, self._logical_name())
               if health_check is not None else None)
        with lb.locked():
            old, self.checker, self.health_check = self.checker, new, health_check
            for st in lb.endpoint_states():
                st.probe = new.new_state() if new is not None else None
                st.probe_healthy = True
            closed = lb.closed
            if not closed:
                lb.rebuild_locked(lb.clock())
        if old is not None:
            old.close()  # outside the lock: its thread may be waiting for it
        if new is not None and not closed:
            new.start()
        logger.info("%s: health_check set to %r", lb.name, health_check)

    def set_outlier_detection(self, outlier_detection: OutlierDetection | None) -> None:
        """Replace the detectors; ``None`` also ends every current ejection."""
        _check_config("outlier_detection", outlier_detection, OutlierDetection)
        lb = self._lb
        with lb.locked():
            if self.outlier is not None:
                lb.remove_listener(self.on_outcome)
            self.outlier_detection = outlier_detection
            self.outlier = (OutlierDetector(outlier_detection, lb.rng)
                            if outlier_detection is not None else None)
            self._interval = outlier_detection.interval if outlier_detection else _INF
            self._split = bool(outlier_detection
                               and outlier_detection.split_local_origin_errors)
            self._next_sweep = _INF
            now = lb.clock()
            for st in lb.endpoint_states():
                st.outlier = OutlierStats() if outlier_detection is not None else None
                if outlier_detection is None and st.ejected_until is not None:
                    st.ejected_until = st.ejected_at = None
                    st.ejection_multiplier = 0
                    st.note = "outlier detection turned off"
            if outlier_detection is not None:
                lb.add_outcome_listener(self.on_outcome)
            if not lb.closed:
                lb.rebuild_locked(now)
        logger.info("%s: outlier_detection set to %r", lb.name, outlier_detection)

    def set_option(self, name: str, value: object) -> None:
        """Change ``panic_threshold``, ``slow_start``, ``local_zone`` or
        ``overprovisioning_factor`` live (validated as at construction)."""
        if name == "panic_threshold":
            self.panic_threshold = _check_fraction(name, value, 0, 100)
        elif name == "overprovisioning_factor":
            self.overprovisioning_factor = _check_fraction(name, value, 1.0, 100.0)
        elif name == "slow_start":
            self.slow_start = _check_config(name, value, SlowStart)
        elif name == "local_zone":
            self.local_zone = _check_zone(value)
        else:
            raise ConfigError(f"{name!r} cannot be changed live", field=name)
        self._lb.rebuild()
        logger.info("%s: %s set to %r", self._lb.name, name, value)

    # -- introspection --------------------------------------------------------------------

    def statistics(self) -> dict[str, int]:
        """Counters since creation plus current gauges (``endpoints_*``)."""
        lb = self._lb
        now = lb.clock()
        out = dict(self.counters)
        gauges = dict.fromkeys(("healthy", "ejected", "unhealthy", "draining"), 0)
        for s in (*lb.endpoint_states(), *lb.draining_states()):
            gauges[s.health(now).value] += 1
        for k, v in gauges.items():
            out[f"endpoints_{k}"] = v
        if self.circuit is not None:
            out["circuit_open_balancer"] = self.circuit.rejected_balancer
            out["circuit_open_endpoint"] = self.circuit.rejected_endpoint
        return out

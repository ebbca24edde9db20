"""Which endpoints may take traffic, with which effective weights: priorities, panic, zones.

The degradation ladder, as Envoy's load balancer computes it
(``arch_overview/upstream/load_balancing/priority``, ``panic_threshold``,
``zone_aware``):

1. **Priority levels.** Each level ``p`` (0 is best; SRV priorities, or
   ``Endpoint(priority=...)``) has a *health* ``h_p = min(1, OF × healthy_p /
   hosts_p)`` where ``OF`` is the overprovisioning factor (default 1.4, Envoy's:
   a level with 72 % of its hosts healthy still takes all the traffic, since
   it was provisioned with 40 % headroom). Traffic goes to level 0 up to
   ``h_0``, the rest spills to level 1 up to ``h_1``, and so on. When the
   levels together cannot absorb 100 % (``Σ h_p < 1``, "normalized total
   health" below 100 %), each level's share is ``h_p / Σ h``.
2. **Panic.** In that degraded case a level whose healthy share
   ``healthy_p / hosts_p`` is below ``panic_threshold`` (default 50 %) spreads
   its share over *all* its hosts, healthy or not: better some failures on
   every host than a cascade in which the few healthy ones drown under the
   whole load. The balancer's mode is then ``panic``. When no host of any
   level is healthy, level 0 takes everything, in panic. ``panic_threshold=0``
   disables panic: with nothing healthy, ``pick()`` raises
   ``NoEndpointAvailable`` (Envoy's ``fail_traffic_on_panic``).
3. **Zones.** With ``local_zone`` set, inside a (non-panicking) level the
   local zone takes ``min(1, OF × healthy_local / hosts_local)`` of the level's
   traffic and the remainder is spread over the healthy endpoints of the
   other zones in proportion to their weights: all traffic stays in the zone
   while it has enough healthy capacity (cross-zone traffic costs money and
   latency), and it falls back proportionally, never all at once. A level in
   panic ignores zones. (Envoy's zone-aware routing also weighs the
   client's own zone distribution, which a library cannot know.)
4. **Weights.** Within each group the endpoint weights (zero-weight
   endpoints only when the whole level has weight 0), times the slow-start
   ramp factor, share the group's traffic; the results are scaled so that in
   the common case (one level, no zone split) the effective weight equals
   the endpoint weight times its ramp.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .._core.state import EndpointState, Health

__all__ = ["Selection", "select"]

_HEALTHY = Health.HEALTHY
_DRAINING = Health.DRAINING
_EPS = 1e-9


@dataclass
class Selection:
    """The result of :func:`select`."""

    chosen: list[EndpointState]
    weights: list[float]
    mode: str  # "normal", "panic", "empty", "unavailable"
    healthy: int  # endpoints healthy right now (all levels)
    total: int  # endpoints considered (all levels)
    levels: dict[int, float]  # priority -> share of the traffic
    ramping: bool  # some chosen endpoint's weight is still ramping up


def _base_weights(hosts: Sequence[EndpointState]) -> tuple[list[EndpointState], list[float]]:
    """Positive-weight hosts, or every host with weight 1 when all weigh 0."""
    chosen = [s for s in hosts if s.endpoint.weight > 0]
    if chosen:
        return chosen, [float(s.endpoint.weight) for s in chosen]
    return list(hosts), [1.0] * len(hosts)


def select(
    states: Sequence[EndpointState],
    now: float,
    *,
    panic_threshold: float,
    overprovisioning_factor: float,
    local_zone: str | None,
    ramp: Callable[[EndpointState], float] | None,
) -> Selection:
    """Eligible endpoints and effective weights; see the module documentation.

    ``panic_threshold`` is a fraction (0.5 for Envoy's 50 %); ``ramp(state)``
    gives the slow-start factor in (0, 1] (None when slow start is off).
    """
    by_level: dict[int, list[EndpointState]] = {}
    healthy_set: set[int] = set()  # id() of the healthy states
    n_live = 0
    for s in states:
        h = s.health(now)
        if h is _DRAINING:
            continue
        n_live += 1
        if h is _HEALTHY:
            healthy_set.add(id(s))
        by_level.setdefault(s.endpoint.priority, []).append(s)
    if not n_live:
        return Selection([], [], "empty", 0, 0, {}, False)
    n_healthy = len(healthy_set)
    live = n_live
    order = sorted(by_level)
    of = overprovisioning_factor

    hosts_of: dict[int, list[EndpointState]] = {}
    healthy_of: dict[int, list[EndpointState]] = {}
    raw: dict[int, float] = {}
    health: dict[int, float] = {}
    for p in order:
        hosts, _ = _base_weights(by_level[p])
        healthy = [s for s in hosts if id(s) in healthy_set]
        hosts_of[p], healthy_of[p] = hosts, healthy
        raw[p] = len(healthy) / len(hosts)
        health[p] = min(1.0, of * raw[p])

    total_health = sum(health.values())
    loads: dict[int, float] = {}
    degraded = total_health < 1.0 - _EPS
    if not degraded:
        remaining = 1.0
        for p in order:
            take = min(health[p], remaining)
            if take > _EPS:
                loads[p] = take
            remaining -= take
            if remaining <= _EPS:
                break
    elif total_health > _EPS:
        for p in order:
            if health[p] > _EPS:
                loads[p] = health[p] / total_health
    else:
        loads[order[0]] = 1.0

    chosen: list[EndpointState] = []
    scaled: list[float] = []  # weight / group total × group share
    scale = 0.0  # sum of the (ramped) weights of every chosen endpoint
    groups: list[tuple[float, list[float]]] = []
    panic = False
    ramping = False

    def add_group(group: Sequence[EndpointState], fraction: float) -> None:
        nonlocal ramping, scale
        if not group or fraction <= _EPS:
            return
        ws = [float(s.endpoint.weight) if s.endpoint.weight > 0 else 1.0 for s in group]
        if ramp is not None:
            factors = [ramp(s) for s in group]
            if any(f < 1.0 for f in factors):
                ramping = True
                ws = [w * f for w, f in zip(ws, factors, strict=True)]
        total = sum(ws)
        k = fraction / total
        chosen.extend(group)
        scaled.extend([w * k for w in ws])
        scale += total
        groups.append((fraction, ws))

    for p, load in loads.items():
        hosts, healthy = hosts_of[p], healthy_of[p]
        if degraded and raw[p] < panic_threshold:
            panic = True
            add_group(hosts, load)
            continue
        if not healthy:
            continue
        if local_zone is not None:
            local = [s for s in healthy if s.endpoint.zone == local_zone]
            remote = [s for s in healthy if s.endpoint.zone != local_zone]
            if local and remote:
                local_hosts = sum(1 for s in hosts if s.endpoint.zone == local_zone)
                zone_health = min(1.0, of * len(local) / local_hosts)
                add_group(local, load * zone_health)
                add_group(remote, load * (1.0 - zone_health))
                continue
        add_group(healthy, load)

    if not chosen:
        return Selection([], [], "unavailable", n_healthy, live, loads, False)
    if len(groups) == 1 and groups[0][0] == 1.0:
        weights = groups[0][1]  # the common case, exactly the (ramped) weights
    else:
        weights = [w * scale for w in scaled]
    return Selection(chosen, weights, "panic" if panic else "normal", n_healthy, live,
                     loads, ramping)

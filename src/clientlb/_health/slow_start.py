"""Slow start: ramp an endpoint's effective weight up after it joins or returns.

Envoy's ``SlowStartConfig`` (round robin and least request only) with its
formula ``factor = max(min_weight, (t / window) ^ (1 / aggression))``; gRPC
has no slow start. Here it works for *every* strategy because it acts on the
effective weights handed to ``Strategy.build``: the weighted samplers
(random, P2C's candidate sampling, round robin's schedule, the hash rings)
give a ramping endpoint a smaller share, and the P2C strategies
(``least_request``, ``peak_ewma``) also divide its cost by the smaller weight,
so a cold endpoint with an empty queue does not win every comparison — the
herd that slow start exists to prevent.

Since the picker is immutable, a ramp needs rebuilds: the health manager
asks for one every :data:`STEPS`-th of the window (lazily, on the first pick
after each step, using the balancer clock), and stops once no endpoint
ramps. Where a ramp starts: an endpoint added to a balancer that already
had endpoints, and one that returns from an ejection or from failed active
checks. The endpoints of the very first set do not ramp (all would ramp
together, which changes nothing but costs rebuilds).
"""

from __future__ import annotations

from .config import SlowStart

__all__ = ["STEPS", "ramp_factor"]

#: rebuilds per window while a ramp is in progress
STEPS = 20


def ramp_factor(config: SlowStart, started: float, now: float) -> float:
    """The weight multiplier in (0, 1] for an endpoint whose ramp began at ``started``."""
    elapsed = now - started
    if elapsed >= config.window:
        return 1.0
    minimum = config.min_weight_percent / 100.0
    if elapsed <= 0:
        return minimum
    frac: float = (elapsed / config.window) ** (1.0 / config.aggression)
    return max(minimum, frac)

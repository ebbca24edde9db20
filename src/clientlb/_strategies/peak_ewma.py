"""Peak EWMA: power of two choices on latency × load — the default strategy.

From Finagle's ``Balancers.p2cPeakEwma`` (and Linkerd, which made it its
default): each endpoint's cost is its peak-EWMA latency estimate times
``(in_flight + 1)``, divided by its weight; the cheaper of two random
candidates wins (:mod:`.p2c`). It reacts within a few requests to an
endpoint that turns slow (the estimate jumps to a slower observation at once)
and forgives it gradually (the estimate decays with ``decay``), and it
accounts for work already sent (in-flight), which a pure latency average
does not. This makes it the best default when backends differ or degrade;
``docs/performance.md`` shows the numbers behind that choice.

Errors count too: the cost is multiplied by ``1 + error_penalty × error_rate²``
(``error_rate``: the endpoint's failed share of calls over the last ``decay / 2``
seconds, see :mod:`clientlb._core.load`). Without it a *gray failure* — a
backend that answers 503 to 30% of its requests, as fast as the others
answer — keeps its full share under the defaults: retries hide the errors
from callers, the consecutive-failure detector needs five in a row, the
success-rate detector five hosts, and the failure-percentage detector (off
by default) 85%.

Why the square, and why 100: the penalty must be negligible at the error
rates of a healthy service and decisive at those of a sick one. With
``error_penalty = 100``, 1% of errors costs 1.01×, 5% 1.25×, 10% 2×, 30% 10×.
Power of two choices turns a 10× cost into a few percent of the traffic
(``tests/test_reliability_gray_failure.py`` pins it: from a third to under
a sixth within 10 s, on simulated and on real backends), while a 5% backend
keeps most of its share and 1% ones all of theirs. A linear penalty cannot
do both: one strong enough at 30% (10×) would cost 1.3× at 1%. The backend
is never ejected for this and gets a little traffic, so it wins its share
back within seconds of recovering. The idea is the error term of gRPC's
weighted round robin (``error_utilization_penalty``); ``error_penalty=0``
turns it off.

Defaults: ``decay = 10 s`` (Finagle), ``default_rtt = 30 ms`` (Linkerd),
``error_penalty = 100`` (above); see :mod:`clientlb._core.load` for the
estimators and why.
"""

from __future__ import annotations

import functools
import math
import random as _random
from collections.abc import Sequence
from math import exp as _exp
from typing import ClassVar

from .._core.errors import ConfigError
from .._core.load import DEFAULT_DECAY, DEFAULT_RTT, EndpointLoad
from .._core.state import EndpointState
from .base import Picker, Strategy
from .p2c import Cost, P2CPicker

__all__ = ["PeakEwma"]


#: Default weight of the error rate in the cost (see the module documentation).
DEFAULT_ERROR_PENALTY = 100.0


def _cost(state: EndpointState, now: float) -> float:
    # EndpointLoad.peak_ewma_cost, inlined: this runs twice per pick
    load = state.load
    elapsed = now - load.stamp
    ewma = load.ewma if elapsed <= 0 else load.ewma * _exp(-elapsed / load.decay)
    return ewma * (load.in_flight + 1)


@functools.lru_cache(maxsize=64)
def _cost_with_errors(penalty: float) -> Cost:
    def cost(state: EndpointState, now: float) -> float:
        load = state.load
        elapsed = now - load.stamp
        ewma = load.ewma if elapsed <= 0 else load.ewma * _exp(-elapsed / load.decay)
        rate = load.error_rate
        return ewma * (load.in_flight + 1) * (1.0 + penalty * rate * rate)
    return cost


class PeakEwma(Strategy):
    """Lowest ``peak_ewma_latency × (in_flight + 1) × (1 + error_penalty × error_rate²)
    / weight`` of two candidates.

    Args:
        decay: time constant of the moving averages, seconds (default 10).
        default_rtt: latency assumed for an endpoint not yet measured (default 0.03 s).
        error_penalty: how much the error rate weighs in the cost (default 100: a
            backend failing 30% of its calls costs 10× one that does not, one failing
            1% costs 1.01×); 0 ignores errors.
    """

    name: ClassVar[str] = "peak_ewma"
    weighs_errors: ClassVar[bool] = True

    def __init__(self, *, decay: float = DEFAULT_DECAY, default_rtt: float = DEFAULT_RTT,
                 error_penalty: float = DEFAULT_ERROR_PENALTY) -> None:
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) \
                or not 0 < decay < math.inf:
            raise ConfigError(f"decay must be a finite number > 0 seconds, got {decay!r}",
                              field="decay")
        if isinstance(default_rtt, bool) or not isinstance(default_rtt, (int, float)) \
                or not 0 <= default_rtt < math.inf:
            raise ConfigError(f"default_rtt must be a finite number >= 0 seconds, got "
                              f"{default_rtt!r}", field="default_rtt")
        if isinstance(error_penalty, bool) or not isinstance(error_penalty, (int, float)) \
                or not 0 <= error_penalty <= 10000:
            raise ConfigError(f"error_penalty must be a number 0..10000, got {error_penalty!r}",
                              field="error_penalty")
        self.decay = float(decay)
        self.default_rtt = float(default_rtt)
        self.error_penalty = float(error_penalty)

    def build(self, endpoints: Sequence[EndpointState], weights: Sequence[float],
              rng: _random.Random) -> Picker:
        penalty = self.error_penalty
        return P2CPicker(endpoints, weights, rng, _cost_with_errors(penalty) if penalty else _cost)

    def new_load(self, now: float) -> EndpointLoad:
        return EndpointLoad(now, decay=self.decay, default_rtt=self.default_rtt,
                            track_errors=True)

    def __repr__(self) -> str:
        return (f"PeakEwma(decay={self.decay:g}, default_rtt={self.default_rtt:g}, "
                f"error_penalty={self.error_penalty:g})")

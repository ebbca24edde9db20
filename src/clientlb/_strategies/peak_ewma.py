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

Defaults: ``decay = 10 s`` (Finagle), ``default_rtt = 30 ms`` (Linkerd);
see :mod:`clientlb._core.load` for the estimator and why.
"""

from __future__ import annotations

import math
import random as _random
from collections.abc import Sequence
from math import exp as _exp
from typing import ClassVar

from .._core.errors import ConfigError
from .._core.load import DEFAULT_DECAY, DEFAULT_RTT, EndpointLoad
from .._core.state import EndpointState
from .base import Picker, Strategy
from .p2c import P2CPicker

__all__ = ["PeakEwma"]


def _cost(state: EndpointState, now: float) -> float:
    # EndpointLoad.peak_ewma_cost, inlined: this runs twice per pick
    load = state.load
    elapsed = now - load.stamp
    ewma = load.ewma if elapsed <= 0 else load.ewma * _exp(-elapsed / load.decay)
    return ewma * (load.in_flight + 1)


class PeakEwma(Strategy):
    """Lowest ``peak_ewma_latency × (in_flight + 1) / weight`` of two candidates.

    Args:
        decay: time constant of the moving average, seconds (default 10).
        default_rtt: latency assumed for an endpoint not yet measured (default 0.03 s).
    """

    name: ClassVar[str] = "peak_ewma"

    def __init__(self, *, decay: float = DEFAULT_DECAY, default_rtt: float = DEFAULT_RTT) -> None:
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) \
                or not 0 < decay < math.inf:
            raise ConfigError(f"decay must be a finite number > 0 seconds, got {decay!r}",
                              field="decay")
        if isinstance(default_rtt, bool) or not isinstance(default_rtt, (int, float)) \
                or not 0 <= default_rtt < math.inf:
            raise ConfigError(f"default_rtt must be a finite number >= 0 seconds, got "
                              f"{default_rtt!r}", field="default_rtt")
        self.decay = float(decay)
        self.default_rtt = float(default_rtt)

    def build(self, endpoints: Sequence[EndpointState], weights: Sequence[float],
              rng: _random.Random) -> Picker:
        return P2CPicker(endpoints, weights, rng, _cost)

    def new_load(self, now: float) -> EndpointLoad:
        return EndpointLoad(now, decay=self.decay, default_rtt=self.default_rtt)

    def __repr__(self) -> str:
        return f"PeakEwma(decay={self.decay:g}, default_rtt={self.default_rtt:g})"

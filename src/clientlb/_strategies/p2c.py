"""Power of two choices: the sampling half of ``least_request`` and ``peak_ewma``.

Mitzenmacher's result ("The Power of Two Choices in Randomized Load
Balancing", 2001): picking the less loaded of two random candidates gives an
exponentially better maximum load than one random choice, at O(1) cost and
without the herd behaviour of always picking the global minimum from stale
data. Envoy's ``LEAST_REQUEST`` (``choice_count = 2``), gRPC's
``least_request_experimental`` (gRFC A48) and Finagle's ``P2C`` balancers all
use it.

Weights: candidates are *sampled* in proportion to their weight, and the one
with the lower ``load / weight`` wins; on a tie (an idle pool, where every
load is 0) the first candidate wins, so an idle pool is served exactly in
weight proportion and a loaded one is steered by load. The load metric is a
parameter (:func:`make_p2c`): this module never knows which one it compares.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable, Sequence

from .._core.state import EndpointState
from .base import AliasSampler, Key, Picker, uniform_weights

__all__ = ["Cost", "P2CPicker"]

#: ``cost(state, now)``: lower is better; must be cheap and must not block.
Cost = Callable[[EndpointState, float], float]


class P2CPicker(Picker):
    __slots__ = ("_cost", "_inv_w", "_n", "_random", "_sample", "_states")

    def __init__(self, states: Sequence[EndpointState], weights: Sequence[float],
                 rng: _random.Random, cost: Cost) -> None:
        self._states = tuple(states)
        self._n = len(self._states)
        self._cost = cost
        self._random = rng.random
        if uniform_weights(weights):
            self._inv_w: tuple[float, ...] | None = None
            self._sample: Callable[[], int] | None = None
        else:
            self._inv_w = tuple(1.0 / w for w in weights)
            self._sample = AliasSampler(weights, rng).sample

    def pick(self, key: Key | None, now: float) -> EndpointState:
        n = self._n
        states = self._states
        if n == 1:
            return states[0]
        sample = self._sample
        if sample is None:
            # one draw for both candidates: the integer part picks the first,
            # the fraction (53-bit precision) the second among the n-1 others
            u = self._random() * n
            i = int(u)
            j = (i + 1 + int((u - i) * (n - 1))) % n
            a, b = states[i], states[j]
            cost = self._cost
            return b if cost(b, now) < cost(a, now) else a
        i = sample()
        j = sample()
        if j == i:
            j = sample()
            if j == i:
                return states[i]
        inv_w = self._inv_w
        assert inv_w is not None
        a, b = states[i], states[j]
        cost = self._cost
        return b if cost(b, now) * inv_w[j] < cost(a, now) * inv_w[i] else a

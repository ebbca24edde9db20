"""Weighted random choice.

Each pick is independent: endpoint *i* is chosen with probability
``wᵢ / Σw`` (Vose's alias method, O(1) per pick). No shared state, so it
scales across threads without contention; the price is variance — over a
small number of requests the shares wander more than round robin's.
"""

from __future__ import annotations

import random as _random
from collections.abc import Sequence
from typing import ClassVar

from .._core.state import EndpointState
from .base import AliasSampler, Key, Picker, Strategy, uniform_weights

__all__ = ["Random"]


class _UniformPicker(Picker):
    __slots__ = ("_n", "_random", "_states")

    def __init__(self, states: Sequence[EndpointState], rng: _random.Random) -> None:
        self._states = tuple(states)
        self._n = len(self._states)
        self._random = rng.random

    def pick(self, key: Key | None, now: float) -> EndpointState:
        return self._states[int(self._random() * self._n)]


class _WeightedPicker(Picker):
    __slots__ = ("_sample", "_states")

    def __init__(self, states: Sequence[EndpointState], weights: Sequence[float],
                 rng: _random.Random) -> None:
        self._states = tuple(states)
        self._sample = AliasSampler(weights, rng).sample

    def pick(self, key: Key | None, now: float) -> EndpointState:
        return self._states[self._sample()]


class Random(Strategy):
    """Independent weighted random picks."""

    name: ClassVar[str] = "random"

    def build(self, endpoints: Sequence[EndpointState], weights: Sequence[float],
              rng: _random.Random) -> Picker:
        if uniform_weights(weights):
            return _UniformPicker(endpoints, rng)
        return _WeightedPicker(endpoints, weights, rng)

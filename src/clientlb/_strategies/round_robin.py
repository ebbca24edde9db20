"""Smooth weighted round robin.

Equal weights: a plain rotation starting at a random offset, so that a fleet
of clients started together does not hit the first endpoint in lockstep (the
same reason gRPC's ``round_robin`` randomizes its start). Lock-free: the
position comes from ``itertools.count``, atomic under the GIL.

Unequal weights: earliest-deadline-first scheduling, the technique of Envoy's
weighted round robin and gRPC's weighted_round_robin scheduler (gRFC A58):
endpoint *i* is due at times ``(k + φᵢ) / wᵢ`` for ``k = 0, 1, 2, ...``;
each pick takes the earliest deadline (a heap: O(log n)). Over every window of
``Σw`` picks each endpoint gets exactly ``wᵢ`` picks (integer weights). The
phases φᵢ are spread by the golden ratio (plus one random offset) so that
endpoints of equal weight are not due at the same instant; with plain EDF or
nginx's smooth WRR, light endpoints bunch up and the heavy one runs long
(weights 8,1,1,1: nginx's longest run on one endpoint is 4, this one's is 3).
"""

from __future__ import annotations

import heapq
import itertools
import random as _random
import threading
from collections.abc import Sequence
from typing import ClassVar

from .._core.state import EndpointState
from .base import Key, Picker, Strategy, uniform_weights

__all__ = ["RoundRobin"]

_GOLDEN = 0.6180339887498949


class _RotationPicker(Picker):
    __slots__ = ("_n", "_next", "_states")

    def __init__(self, states: Sequence[EndpointState], start: int) -> None:
        self._states = tuple(states)
        self._n = len(self._states)
        self._next = itertools.count(start).__next__

    def pick(self, key: Key | None, now: float) -> EndpointState:
        return self._states[self._next() % self._n]


class _EDFPicker(Picker):
    __slots__ = ("_heap", "_lock", "_phase", "_states", "_weights")

    def __init__(self, states: Sequence[EndpointState], weights: Sequence[float],
                 offset: float) -> None:
        self._states = tuple(states)
        self._weights = tuple(float(w) for w in weights)
        self._phase = tuple(((i + 1) * _GOLDEN + offset) % 1.0 for i in range(len(states)))
        self._heap = [(self._phase[i] / w, i, 0) for i, w in enumerate(self._weights)]
        heapq.heapify(self._heap)
        self._lock = threading.Lock()

    def pick(self, key: Key | None, now: float) -> EndpointState:
        with self._lock:
            heap = self._heap
            _, i, k = heap[0]
            k += 1
            heapq.heapreplace(heap, ((k + self._phase[i]) / self._weights[i], i, k))
        return self._states[i]


class RoundRobin(Strategy):
    """Each endpoint in turn, in proportion to its weight, evenly interleaved."""

    name: ClassVar[str] = "round_robin"

    def build(self, endpoints: Sequence[EndpointState], weights: Sequence[float],
              rng: _random.Random) -> Picker:
        if uniform_weights(weights):
            return _RotationPicker(endpoints, int(rng.random() * len(endpoints)))
        return _EDFPicker(endpoints, weights, rng.random())

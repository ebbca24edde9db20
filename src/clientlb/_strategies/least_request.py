"""Least request: power of two choices on in-flight requests.

The classic "least connections" of hardware balancers, done the way Envoy's
``LEAST_REQUEST`` and gRPC's ``least_request`` (gRFC A48) do it: compare the
in-flight counts of two random candidates (weight-aware: ``in_flight / w``)
instead of scanning every endpoint, which is O(n) and herds every client onto
the same momentary minimum. See :mod:`.p2c` for the sampling.

In-flight means "picked and not yet done": an httpx response being streamed,
a gRPC stream still open and a raw TCP connection count until they close.
"""

from __future__ import annotations

import random as _random
from collections.abc import Sequence
from typing import ClassVar

from .._core.state import EndpointState
from .base import Picker, Strategy
from .p2c import P2CPicker

__all__ = ["LeastRequest"]


def _in_flight(state: EndpointState, now: float) -> float:
    return state.load.in_flight


class LeastRequest(Strategy):
    """Fewest in-flight requests among two random (weighted) candidates."""

    name: ClassVar[str] = "least_request"

    def build(self, endpoints: Sequence[EndpointState], weights: Sequence[float],
              rng: _random.Random) -> Picker:
        return P2CPicker(endpoints, weights, rng, _in_flight)

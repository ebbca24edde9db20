"""Ring hash: consistent hashing with virtual nodes (Karger et al., 1997).

The same key goes to the same endpoint while the endpoint set is stable, and
when it changes only the keys of the endpoints that came or went move:
removing one of N equal endpoints moves about 1/N of the keys. Use it for
cache affinity, "IP hash" and sticky routing by user or tenant
(``lb.pick(key=user_id)``).

Construction follows Envoy's ``RING_HASH`` (and gRFC A42): each endpoint
gets a number of points on a 64-bit ring proportional to its weight; point
*i* of an endpoint is ``xxHash64("<host:port>", seed=i)``, so every process
builds the same ring from the same endpoint set; a key is hashed with
xxHash64 and served by the first point clockwise. A pick is a binary search:
O(log ring size), independent of the number of endpoints' churn.

Ring size (defaults and why): an endpoint of weight *w* gets
``points_per_weight × w`` points (default 100 per unit of weight), so that its
points do not depend on the other endpoints and an update moves only the keys
of the endpoints that changed. Envoy instead spreads a fixed ring size
(minimum 1,024) over the endpoints, which at 1,000 endpoints leaves one point
each and a poor spread (the largest share several times the mean), and makes
every endpoint's points depend on the pool size. 100 points keep the shares
within about ±20% of the weight. Weights below 1 are scaled so that the
lightest endpoint still gets ``points_per_weight`` points. When the total
would exceed ``max_ring_size`` (131,072 — it bounds the rebuild cost of a
10,000-endpoint update in Python), every count is scaled down to fit (then
the counts depend on the pool size, and an update moves slightly more than
the minimum). Without a key, a pick uses a random key.
"""

from __future__ import annotations

import bisect
import random as _random
from collections.abc import Sequence
from typing import ClassVar

import xxhash

from .._core.errors import ConfigError
from .._core.state import EndpointState
from .base import Key, Picker, Strategy, hash_key

__all__ = ["RingHash"]

_IDX_BITS = 24  # up to 16M endpoints; ring entries are (position << 24) | index
_IDX_MASK = (1 << _IDX_BITS) - 1
_xxh64 = xxhash.xxh64_intdigest


class _RingPicker(Picker):
    __slots__ = ("_random", "_ring", "_states")

    def __init__(self, states: Sequence[EndpointState], ring: list[int],
                 rng: _random.Random) -> None:
        self._states = tuple(states)
        self._ring = ring
        self._random = rng.random

    def pick(self, key: Key | None, now: float) -> EndpointState:
        if key.__class__ is str:  # the common case, without hash_key's dispatch
            h = _xxh64(key.encode())
        elif key is None:
            h = int(self._random() * 18446744073709551616.0)
        else:
            h = hash_key(key)
        ring = self._ring
        i = bisect.bisect_left(ring, h << _IDX_BITS)
        if i == len(ring):
            i = 0
        return self._states[ring[i] & _IDX_MASK]


class RingHash(Strategy):
    """Consistent hashing on a ring of virtual nodes (weight-aware).

    Args:
        points_per_weight: ring points per unit of weight (default 100).
        max_ring_size: upper bound on the ring size (default 131,072).
    """

    name: ClassVar[str] = "ring_hash"
    uses_key: ClassVar[bool] = True

    def __init__(self, *, points_per_weight: int = 100, max_ring_size: int = 131072) -> None:
        for field, value in (("points_per_weight", points_per_weight),
                             ("max_ring_size", max_ring_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{field} must be an integer >= 1, got {value!r}", field=field)
        if max_ring_size > 1 << 23:
            raise ConfigError(f"max_ring_size must be <= {1 << 23}, got {max_ring_size}",
                              field="max_ring_size")
        self.points_per_weight = points_per_weight
        self.max_ring_size = max_ring_size

    def point_counts(self, weights: Sequence[float]) -> list[int]:
        """Ring points per endpoint: ``points_per_weight × w``, scaled into bounds."""
        scale = float(self.points_per_weight) / min(1.0, min(weights))
        total = scale * float(sum(weights))
        if total > self.max_ring_size:
            scale *= self.max_ring_size / total
        return [max(1, round(scale * w)) for w in weights]

    def build(self, endpoints: Sequence[EndpointState], weights: Sequence[float],
              rng: _random.Random) -> Picker:
        ring: list[int] = []
        counts = self.point_counts(weights)
        for idx, (state, count) in enumerate(zip(endpoints, counts, strict=True)):
            data = state.address.encode()
            ring.extend((_xxh64(data, seed) << _IDX_BITS) | idx for seed in range(count))
        ring.sort()
        return _RingPicker(endpoints, ring, rng)

    def __repr__(self) -> str:
        return (f"RingHash(points_per_weight={self.points_per_weight}, "
                f"max_ring_size={self.max_ring_size})")

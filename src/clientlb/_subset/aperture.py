"""The deterministic aperture's ring: where backends sit and what a client's slice covers.

Finagle's deterministic aperture (Twitter engineering blog, "Deterministic
Aperture: A distributed, load balancing algorithm", 2019; ``DeterministicAperture``
and ``Ring`` in finagle-core) solves the full-mesh problem of client-side load
balancing — 1,000 clients × 300 backends is 300,000 connections — without the
uneven load of random subsets. The Google SRE book ("Load Balancing in the
Datacenter", deterministic subsetting) describes the same goal.

* **Backends** sit on the unit ring in a fixed order — by ``xxh64(address)``
  with :data:`RING_SEED`, the same in every client process, so that ring
  neighbours are unrelated hosts rather than one rack's consecutive addresses —
  each on an arc proportional to its weight (``1/n`` when weights are equal).
* **Clients**: client ``i`` of ``c`` starts at ``i/c``; its slice spans ``k``
  client slots, ``[i/c, (i+k)/c)``.
* **Coverage**: since the slice is a whole number ``k`` of slots, every point of
  the ring lies in exactly ``k`` slices. A client spreads its load over its
  slice evenly — each backend weighted by the length of its arc that the slice
  covers (:func:`slice_of` returns that share) — so every point of the ring
  receives the same load, and every backend a load proportional to its arc:
  balanced by construction, not by chance.
* **Churn**: a backend that joins or leaves changes the arcs after it, so
  each slice's edges move by at most one arc; a client that joins or leaves
  moves every offset by at most ``1/c``: each client opens or closes about one
  connection per change, far fewer than a full mesh opens, more than random
  subsetting (:mod:`.random`) — the price of the even load
  (``benchmarks/subsetting.py`` measures both).

Everything here is pure arithmetic on addresses and weights (no endpoint
state), so the benchmark and the balancer use the same functions. Offsets and
slice ends are computed as ``integer / integer`` — correctly rounded — so a slice
edge that falls exactly on an arc boundary gives an overlap of exactly 0 and
never a sliver of a neighbour.
"""

from __future__ import annotations

import functools
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import xxhash

__all__ = [
    "RING_SEED",
    "Ring",
    "aperture_size",
    "build_ring",
    "neighbours",
    "slice_of",
    "slot_count",
]

#: The seed of the ring order's hash: b"clientlb" read as an integer. Every client
#: must use the same one, or they would not agree on the ring.
RING_SEED = 0x636C69656E746C62
#: Overlaps shorter than this (in ring units) are rounding noise, not coverage.
_EPS = 1e-12


@dataclass(frozen=True)
class Ring:
    """Backends on the unit ring, in ring order.

    ``order[p]`` is the index (in the caller's sequence) of the backend at ring
    position ``p``; its arc is ``[bounds[p], bounds[p + 1])``, with
    ``bounds[0] == 0`` and ``bounds[-1] == 1``. Zero-weight backends get an
    empty arc (never covered), unless every weight is 0 (then all are equal).
    """

    order: tuple[int, ...]
    bounds: tuple[float, ...]

    def __len__(self) -> int:
        return len(self.order)

    def arc(self, position: int) -> float:
        """The length of the arc at ring ``position``."""
        return self.bounds[position + 1] - self.bounds[position]


def _ring_key(address: str) -> int:
    return xxhash.xxh64_intdigest(address.encode(), seed=RING_SEED)


@functools.lru_cache(maxsize=32)
def _cached_ring(addresses: tuple[str, ...], weights: tuple[float, ...]) -> Ring:
    keys = [(_ring_key(a), a) for a in addresses]
    order = sorted(range(len(addresses)), key=keys.__getitem__)
    ws = [weights[i] for i in order]
    if not any(w > 0 for w in ws):
        ws = [1.0] * len(ws)
    cumulative = [0.0]
    for w in ws:
        cumulative.append(cumulative[-1] + max(w, 0.0))
    total = cumulative[-1]
    bounds = [c / total for c in cumulative]
    bounds[-1] = 1.0
    return Ring(tuple(order), tuple(bounds))


def build_ring(addresses: Sequence[str], weights: Sequence[float]) -> Ring:
    """The ring of these backends (``host:port`` addresses and their weights).

    Cached: every balancer of a process (and every simulated client of the
    benchmark) over the same backends shares one ring.
    """
    if not addresses:
        return Ring((), (0.0,))
    if len(addresses) != len(weights):
        raise ValueError("one weight per address")
    return _cached_ring(tuple(addresses), tuple(map(float, weights)))


def aperture_size(backends: int, clients: int, connections_per_backend: int,
                  min_size: int) -> int:
    """Backends per client so each backend gets ``connections_per_backend`` clients.

    ``ceil(connections_per_backend × backends / clients)``, at least
    ``min_size``, at most ``backends``.
    """
    if backends <= 0:
        return 0
    size = -(-connections_per_backend * backends // clients)
    return min(backends, max(min_size, size))


def slot_count(size: int, backends: int, clients: int) -> int:
    """The slice's width in client slots: the fewest ``k`` with ``k/clients >= size/backends``.

    At least 1 (every point of the ring must be in some slice) and at most
    ``clients`` (the whole ring).
    """
    if backends <= 0:
        return clients
    k = -(-size * clients // backends)
    return max(1, min(k, clients))


def slice_of(ring: Ring, index: int, clients: int, slots: int) -> list[tuple[int, float]]:
    """What client ``index`` of ``clients`` covers with a slice of ``slots`` slots.

    Returns ``(ring position, share of its arc covered)`` for every backend the
    slice ``[index/clients, (index+slots)/clients)`` overlaps, in ring order
    from the slice's start; shares are in (0, 1]. The whole ring when
    ``slots >= clients``.
    """
    n = len(ring)
    bounds = ring.bounds
    if n == 0:
        return []
    if slots >= clients:
        return [(p, 1.0) for p in range(n) if bounds[p + 1] > bounds[p]]
    end = index + slots
    if end <= clients:
        segments = [(index / clients, end / clients)]
    else:
        segments = [(index / clients, 1.0), (0.0, (end - clients) / clients)]
    covered: dict[int, float] = {}
    for lo, hi in segments:
        p = max(0, bisect_right(bounds, lo) - 1)
        while p < n and bounds[p] < hi:
            overlap = min(hi, bounds[p + 1]) - max(lo, bounds[p])
            if overlap > _EPS:
                covered[p] = covered.get(p, 0.0) + overlap
            p += 1
    return [(p, min(1.0, overlap / ring.arc(p))) for p, overlap in covered.items()]


def neighbours(ring: Ring, first: int, last: int) -> Iterator[int]:
    """Ring positions beyond a contiguous run ``first..last``: after, before, after...

    How the aperture widens: alternately the next backend clockwise after
    ``last`` and counter-clockwise before ``first``, skipping empty arcs, until
    every position has been given.
    """
    n = len(ring)
    if n == 0:
        return
    inside = (last - first) % n + 1
    ahead, behind = last, first
    remaining = n - inside
    forward = True
    while remaining > 0:
        if forward:
            ahead = (ahead + 1) % n
            position = ahead
        else:
            behind = (behind - 1) % n
            position = behind
        forward = not forward
        remaining -= 1
        if ring.arc(position) > 0:
            yield position

"""Random subsetting with rendezvous hashing (gRFC A68, gRPC's ``random_subsetting``).

Each client ranks every backend by a hash of (its seed, the backend's address)
and keeps the first ``size`` (A68: "Random subsetting with rendezvous hashing").
Rendezvous hashing (Thaler and Ravishankar, 1996) is what makes it stable: a
backend that joins enters only the subsets of the clients that rank it high
enough, pushing out one backend each; one that leaves is replaced by each of
its clients' next-ranked backend. Nothing else moves, and clients never need to
know about each other.

The price is balance: how many clients pick a backend is binomial
(``clients × size / backends`` on average, with a spread of about its square
root), so some backends get noticeably more connections and load than
others — the reason for the deterministic :mod:`.aperture`.

Weights: with unequal weights the score is weighted rendezvous hashing's
``-w / ln(u)`` (``u`` the hash as a fraction in (0, 1)), so a backend of weight
2 is chosen as often as two of weight 1; with equal weights that is the order
of the hashes themselves.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import xxhash

__all__ = ["rank"]

_MASK = (1 << 64) - 1
_SCALE = 1.0 / (1 << 52)


def rank(addresses: Sequence[str], weights: Sequence[float], seed: int) -> list[int]:
    """Indices of ``addresses``, best first, for the client whose seed is ``seed``.

    Zero-weight backends come last (in address order), unless every weight is 0.
    """
    seed &= _MASK
    digest = xxhash.xxh64_intdigest
    hashes = [digest(a.encode(), seed=seed) for a in addresses]
    n = len(addresses)
    if not n:
        return []
    if all(w == weights[0] for w in weights) or not any(w > 0 for w in weights):
        # highest hash first; equal 64-bit hashes (never seen in practice) keep input order
        return sorted(range(n), key=hashes.__getitem__, reverse=True)

    def score(i: int) -> float:
        w = weights[i]
        if w <= 0:
            return -math.inf
        u = ((hashes[i] >> 12) + 0.5) * _SCALE  # 52 bits, exactly in (0, 1): ln(u) < 0
        return -w / math.log(u)

    return sorted(range(n), key=lambda i: (-score(i), addresses[i]))

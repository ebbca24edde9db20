"""Timing rules shared by the resolvers: error backoff and TTL-driven refresh.

**Backoff** follows gRPC's connection backoff (``doc/connection-backoff.md`` in
grpc/grpc): the first retry waits ``initial`` seconds, each further one
``multiplier`` times longer, capped at ``maximum``, and every delay is spread
by ``± jitter`` so that a fleet of clients that lost the same registry at the
same moment does not come back in lock step. Defaults: 1 s, ×1.6, 30 s, 0.2 —
gRPC's values except the cap (gRPC: 120 s), lowered because a discovery source
that comes back should be followed within half a minute.

**Refresh** (:func:`ttl_delay`) turns a DNS TTL into the time until the next
query: the TTL is clamped to ``[floor, ceiling]`` and then shortened by up to
``jitter`` (never lengthened, so a record is re-read before it expires). The
floor keeps a TTL of 0 from turning every client into a query loop; the
ceiling keeps a day-long TTL from freezing a set that is actually changing.

Both take an injectable ``random.Random`` so tests are deterministic.
"""

from __future__ import annotations

import math
import random as _random
from dataclasses import dataclass

from .._core.errors import ConfigError

__all__ = ["Backoff", "BackoffPolicy", "check_seconds", "ttl_delay"]


def check_seconds(name: str, value: object, *, minimum: float = 0.0,
                  allow_zero: bool = True) -> float:
    """Validate a duration option, raising ``ConfigError`` naming field, value and rule."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"must be a finite number of seconds, got {value!r}", field=name)
    if value < minimum or (not allow_zero and value == 0):
        rule = f"> {minimum:g}" if not allow_zero else f">= {minimum:g}"
        raise ConfigError(f"must be {rule} seconds, got {value!r}", field=name)
    return float(value)


@dataclass(frozen=True)
class BackoffPolicy:
    """Exponential backoff with jitter (gRPC connection-backoff parameters).

    Attributes:
        initial: first delay in seconds (default 1.0).
        multiplier: growth factor per consecutive failure (default 1.6).
        maximum: cap in seconds (default 30.0).
        jitter: relative spread, each delay is multiplied by a uniform
            factor in ``[1 - jitter, 1 + jitter]`` (default 0.2).
    """

    initial: float = 1.0
    multiplier: float = 1.6
    maximum: float = 30.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        check_seconds("backoff_initial", self.initial, allow_zero=False)
        check_seconds("backoff_maximum", self.maximum, allow_zero=False)
        if isinstance(self.multiplier, bool) or not isinstance(self.multiplier, (int, float)) \
                or not self.multiplier >= 1:
            raise ConfigError(f"must be a number >= 1, got {self.multiplier!r}",
                              field="backoff_multiplier")
        if isinstance(self.jitter, bool) or not isinstance(self.jitter, (int, float)) \
                or not 0 <= self.jitter < 1:
            raise ConfigError(f"must be in [0, 1), got {self.jitter!r}", field="backoff_jitter")
        if self.maximum < self.initial:
            raise ConfigError(f"must be >= backoff_initial ({self.initial:g}), got "
                              f"{self.maximum!r}", field="backoff_maximum")


class Backoff:
    """The delays of one run of consecutive failures; :meth:`reset` after a success."""

    __slots__ = ("_attempt", "_rng", "policy")

    def __init__(self, policy: BackoffPolicy | None = None,
                 rng: _random.Random | None = None) -> None:
        self.policy = policy or BackoffPolicy()
        self._rng = rng or _random.Random()
        self._attempt = 0

    @property
    def failures(self) -> int:
        """Consecutive failures so far."""
        return self._attempt

    def next_delay(self) -> float:
        """The delay before the next attempt; counts one more failure."""
        p = self.policy
        base = min(p.maximum, p.initial * p.multiplier ** min(self._attempt, 64))
        self._attempt += 1
        if p.jitter:
            base *= self._rng.uniform(1 - p.jitter, 1 + p.jitter)
        return min(base, p.maximum * (1 + p.jitter))

    def reset(self) -> None:
        self._attempt = 0


def ttl_delay(ttl: float, *, floor: float, ceiling: float, jitter: float,
              rng: _random.Random) -> float:
    """Seconds until the next refresh of an answer whose TTL is ``ttl``.

    >>> import random
    >>> ttl_delay(0, floor=5, ceiling=300, jitter=0, rng=random.Random(1))
    5.0
    >>> ttl_delay(86400, floor=5, ceiling=300, jitter=0, rng=random.Random(1))
    300.0
    """
    delay = min(max(float(ttl), floor), ceiling)
    if jitter:
        delay *= 1 - rng.uniform(0, jitter)
    return delay

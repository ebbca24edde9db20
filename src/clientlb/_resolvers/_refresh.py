"""TTL-driven polling, shared by ``dns://`` and ``srv://``.

A DNS answer carries its own lifetime: the record TTL (RFC 1035 §3.2.1), or
for "no such name" / "no data" the negative TTL from the SOA record (RFC 2308
§5: the smaller of the SOA's own TTL and its MINIMUM field). The resolver asks
again when that lifetime ends, clamped and jittered by
:func:`~clientlb._resolvers._backoff.ttl_delay`:

* ``min_ttl`` (default 5 s): the floor. A TTL of 0 is common (Consul's DNS,
  some cloud load balancers); without a floor every client would query in a
  loop.
* ``max_ttl`` (default 300 s): the ceiling, so a long TTL cannot hide
  auto-scaling for hours.
* ``ttl_jitter`` (default 0.1): each delay is shortened by up to 10% so that
  clients started together spread their queries.

On an error the last good set stays and the next attempt follows the error
backoff; an answer whose records are all malformed keeps it too
(:meth:`~clientlb._resolvers._loop.LoopResolver.answer`).
:meth:`~clientlb.Resolver.refresh` re-resolves early (the balancer asks for
it when every endpoint is failing: gRPC only re-resolves on connection loss,
grpc/grpc#12295 and #30015).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

from .._core.endpoint import Endpoint
from .._core.errors import ConfigError, DiscoveryError
from .._core.target import Target
from ._backoff import check_seconds, ttl_delay
from ._loop import LoopResolver
from .base import ResolverSink

__all__ = ["TTLResolver"]


class TTLResolver(LoopResolver):
    """A resolver that polls its source and waits the answer's TTL in between.

    Args:
        min_ttl: floor of the refresh interval in seconds (default 5).
        max_ttl: ceiling of the refresh interval in seconds (default 300).
        ttl_jitter: fraction by which a delay may be shortened (default 0.1).
        **options: see :class:`~clientlb._resolvers._loop.LoopResolver`.
    """

    def __init__(self, target: Target, *, min_ttl: float = 5.0, max_ttl: float = 300.0,
                 ttl_jitter: float = 0.1, **options: Any) -> None:
        super().__init__(target, **options)
        self.min_ttl = check_seconds("min_ttl", min_ttl)
        self.max_ttl = check_seconds("max_ttl", max_ttl, allow_zero=False)
        if self.max_ttl < self.min_ttl:
            raise ConfigError(f"must be >= min_ttl ({self.min_ttl:g}), got {max_ttl!r}",
                              field="max_ttl")
        if isinstance(ttl_jitter, bool) or not isinstance(ttl_jitter, (int, float)) \
                or not 0 <= ttl_jitter < 1:
            raise ConfigError(f"must be in [0, 1), got {ttl_jitter!r}", field="ttl_jitter")
        self.ttl_jitter = float(ttl_jitter)
        self.next_refresh_in: float | None = None

    @abstractmethod
    async def resolve_once(self) -> tuple[Sequence[Endpoint], float]:
        """One resolution: the endpoints and the TTL of the answer, in seconds.

        Raises:
            DiscoveryError: the source failed (the last good set is kept).
        """

    def refresh_delay(self, ttl: float) -> float:
        return ttl_delay(ttl, floor=self.min_ttl, ceiling=self.max_ttl,
                         jitter=self.ttl_jitter, rng=self._rng)

    async def run(self, sink: ResolverSink) -> None:
        while True:
            self.mark_attempt()
            malformed = self.malformed_count
            try:
                endpoints, ttl = await self.resolve_once()
            except DiscoveryError as exc:
                self.fail(sink, exc)
                delay = self.next_backoff()
            else:
                # every record malformed: reported as an error, the last good set stays;
                # asked again when the answer's TTL ends, as for a good one
                self.answer(sink, endpoints, malformed_before=malformed)
                delay = self.refresh_delay(ttl)
            self.next_refresh_in = delay
            await self.sleep(delay)

    def describe(self) -> dict[str, Any]:
        if self.next_refresh_in is None:
            return {}
        return {"refresh_in": f"{self.next_refresh_in:.3g}s"}

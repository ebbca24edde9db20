"""One balancer's subset: which endpoints it uses, and with which weight factor.

The layer between discovery and health (docs/architecture.md, "Subsetting").
On every rebuild the balancer hands :meth:`Subsetter.update` every discovered
endpoint; the subsetter answers with the members of this client's subset, and
from then on health, connectivity and the strategy only see those. Discovery
is untouched: ``lb.endpoints()`` still lists every endpoint, and ``snapshot()``
marks each one ``in_subset`` or not.

* **Per priority level.** Each level (SRV priority, ``Endpoint.priority``) has
  its own ring or ranking, so a subset keeps its failover levels.
* **Weights.** The aperture weighs each member by the share of its arc the
  slice covers (:func:`.aperture.slice_of`); :meth:`Subsetter.scale` multiplies
  the health layer's effective weights by it, so every strategy — P2C,
  round robin, the hash rings — spreads the client's load as the ring says.
  Random subsets weigh members equally (factor 1).
* **Widening.** When fewer than ``min_healthy`` of a level's members may take
  traffic (healthy, not draining, not in transient failure), the subset takes
  in more endpoints — the aperture its ring neighbours (:func:`.aperture.neighbours`),
  alternately after and before its slice, at full weight; a random subset its
  next-ranked ones — until the share is reached or the level is exhausted.
  Endpoints outside the subset have never been used, so they count as able to
  take traffic; once in, health and outlier detection judge them like the
  others. When the members recover the subset narrows back at the next rebuild.
"""

from __future__ import annotations

import logging
import os
import random as _random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from .._core.state import EndpointState, Health
from .._engine.connectivity import UNUSABLE
from .aperture import aperture_size, build_ring, neighbours, slice_of, slot_count
from .config import Aperture, RandomSubset, SubsetConfig
from .peers import PeerTracker, Place, default_client_id, static_place
from .random import rank

__all__ = ["SubsetSnapshot", "Subsetter"]

logger = logging.getLogger("clientlb.subset")

_HEALTHY = Health.HEALTHY


@dataclass(frozen=True)
class SubsetSnapshot:
    """The subset of a balancer, as ``lb.snapshot().subset`` reports it.

    Attributes:
        kind: ``"aperture"`` or ``"random"``.
        size: backends per client wanted (``size=``, or derived) in the best level.
        endpoints: endpoints in the subset now, every level, widening included.
        widened: of those, how many widening added (0 while enough are healthy).
        width: the aperture's share of the ring in the best level, widening
            included (``1.0`` is a full mesh); None for a random subset.
        base_width: the slice's own share of the ring, ``slots / client_count``;
            None for a random subset.
        client_index, client_count: the aperture's place (None for random).
        place: where the place came from: ``config``, ``environment``,
            ``hostname``, ``peers``, ``peers (not listed)``, ``provisional``.
        seed: the random subset's seed (None for the aperture).
    """

    kind: str
    size: int
    endpoints: int
    widened: int
    width: float | None = None
    base_width: float | None = None
    client_index: int | None = None
    client_count: int | None = None
    place: str | None = None
    seed: int | None = None


def _usable(state: EndpointState, now: float) -> bool:
    return state.health(now) is _HEALTHY and state.connectivity not in UNUSABLE


class Subsetter:
    """The subset of one balancer; built from its ``subset=`` option.

    Args:
        config: an :class:`Aperture` or a :class:`RandomSubset`.
        name: the balancer's name (log lines).
        rng: the balancer's random source (a random subset's seed when not given).
        on_place_change: called (from the peers resolver) after the aperture's
            place changed; the balancer rebuilds its picker.
        environ: the environment to read the place and ``client_id`` from
            (default ``os.environ``).

    Raises:
        ConfigError: the aperture's place cannot be found.
    """

    def __init__(self, config: SubsetConfig, *, name: str, rng: _random.Random,
                 on_place_change: Callable[[], None],
                 environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.config = config
        self._name = name
        self._tracker: PeerTracker | None = None
        self._place: Place | None = None
        self._seed = 0
        if isinstance(config, Aperture):
            if config.peers is not None:
                client_id = config.client_id or default_client_id(env)
                self._tracker = PeerTracker(config.peers, client_id, self._moved, name)
                self._place = self._tracker.place
            else:
                self._place = static_place(config, env)
        else:
            self._seed = config.seed if config.seed is not None else rng.getrandbits(64)
        self._on_place_change = on_place_change
        self._factors: dict[str, float] = {}  # members: address -> weight factor
        self._info = SubsetSnapshot(config.kind, 0, 0, 0)
        self._widened_logged = False

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        if self._tracker is not None:
            self._tracker.start()

    def close(self) -> None:
        if self._tracker is not None:
            self._tracker.close()

    async def aclose(self) -> None:
        if self._tracker is not None:
            await self._tracker.aclose()

    def _moved(self, place: Place) -> None:
        self._place = place
        self._on_place_change()

    @property
    def place(self) -> Place | None:
        """The aperture's current place (None for a random subset)."""
        return self._place

    # -- membership (called under the balancer's lock) -------------------------------------

    def update(self, states: Sequence[EndpointState], now: float) -> list[EndpointState]:
        """The members among ``states`` (every discovered endpoint), in their order.

        Recomputes the subset — rings or rankings, then widening — and
        remembers each member's weight factor for :meth:`scale`.
        """
        levels: dict[int, list[EndpointState]] = {}
        if states and all(s.endpoint.priority == 0 for s in states):
            levels[0] = list(states)  # the common case: one level
        else:
            for s in states:
                levels.setdefault(s.endpoint.priority, []).append(s)
        factors: dict[str, float] = {}
        widened = 0
        best: tuple[int, float | None, float | None] | None = None
        for priority in sorted(levels):
            level = levels[priority]
            width: float | None = None
            base: float | None = None
            if isinstance(self.config, Aperture):
                size, width, base, added = self._aperture(level, now, factors)
            else:
                size, added = self._random(self.config, level, now, factors)
            widened += added
            if best is None:
                best = (size, width, base)
        self._factors = factors
        size, width, base = best if best is not None else (0, None, None)
        place = self._place
        self._info = SubsetSnapshot(
            kind=self.config.kind, size=size, endpoints=len(factors), widened=widened,
            width=width, base_width=base,
            client_index=place.index if place is not None else None,
            client_count=place.count if place is not None else None,
            place=place.source if place is not None else None,
            seed=self._seed if isinstance(self.config, RandomSubset) else None)
        if widened and not self._widened_logged:
            logger.warning("%s: too few endpoints of the subset may take traffic; widened by %d",
                           self._name, widened)
        elif not widened and self._widened_logged:
            logger.info("%s: subset back to its own endpoints", self._name)
        self._widened_logged = bool(widened)
        return [s for s in states if s.address in factors]

    def _aperture(self, level: list[EndpointState], now: float, factors: dict[str, float]
                  ) -> tuple[int, float, float, int]:
        config = self.config
        assert isinstance(config, Aperture) and self._place is not None
        place = self._place
        n = len(level)
        ring = build_ring([s.address for s in level], [s.endpoint.weight for s in level])
        size = config.size if config.size is not None else aperture_size(
            n, place.count, config.connections_per_backend, config.min_size)
        slots = slot_count(min(size, n), n, place.count)
        covered = slice_of(ring, place.index, place.count, slots)
        base_width = slots / place.count if slots < place.count else 1.0
        members = {ring.order[p]: share for p, share in covered}
        usable = sum(1 for i in members if _usable(level[i], now))
        added = 0
        width = sum(ring.arc(p) * share for p, share in covered)
        if covered and usable < config.min_healthy * len(members) and len(members) < n:
            for p, _ in covered:  # a widened slice takes whole arcs
                members[ring.order[p]] = 1.0
            width = sum(ring.arc(p) for p, _ in covered)
            for p in neighbours(ring, covered[0][0], covered[-1][0]):
                if usable >= config.min_healthy * len(members):
                    break
                i = ring.order[p]
                members[i] = 1.0
                width += ring.arc(p)
                added += 1
                usable += _usable(level[i], now)
        for i, share in members.items():
            factors[level[i].address] = share
        return size, min(1.0, width), base_width, added

    def _random(self, config: RandomSubset, level: list[EndpointState], now: float,
                factors: dict[str, float]) -> tuple[int, int]:
        ranking = rank([s.address for s in level], [s.endpoint.weight for s in level],
                       self._seed)
        size = min(config.size, len(level))
        members = ranking[:size]
        usable = sum(1 for i in members if _usable(level[i], now))
        added = 0
        for i in ranking[size:]:
            if usable >= config.min_healthy * len(members):
                break
            members.append(i)
            added += 1
            usable += _usable(level[i], now)
        for i in members:
            factors[level[i].address] = 1.0
        return config.size, added

    def members(self, states: Sequence[EndpointState]) -> list[EndpointState]:
        """``states`` narrowed to the members of the last :meth:`update`."""
        factors = self._factors
        return [s for s in states if s.address in factors]

    def scale(self, chosen: Sequence[EndpointState], weights: Sequence[float]) -> list[float]:
        """The health layer's effective weights times each member's factor."""
        factors = self._factors
        return [w * factors.get(s.address, 1.0) for s, w in zip(chosen, weights, strict=True)]

    def contains(self, address: str) -> bool:
        """Whether ``address`` is in the subset (as of the last :meth:`update`)."""
        return address in self._factors

    def snapshot(self) -> SubsetSnapshot:
        return self._info

    def __repr__(self) -> str:
        info = self._info
        where = ""
        if info.client_count is not None:
            where = f" place={info.client_index}/{info.client_count} ({info.place})"
        return (f"<Subsetter {info.kind} size={info.size} endpoints={info.endpoints} "
                f"widened={info.widened}{where}>")

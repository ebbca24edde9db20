"""Subset configuration: what the user writes, validated at construction.

Two kinds, chosen with ``LoadBalancer(subset=...)``:

* :class:`Aperture` — the deterministic aperture of Finagle (Twitter's
  "Deterministic Aperture" post, ``DeterministicAperture``/``Ring`` in
  ``finagle-core``): clients and backends share one ring, each client uses the
  backends its slice covers, weighted by the overlap. Even load, few
  connections; it needs each client's place (index and count).
* :class:`RandomSubset` — random subsetting with rendezvous hashing, gRFC A68
  (``random_subsetting``): each client keeps the ``size`` backends that rank
  first for its seed. No coordination at all, but uneven load; here mostly for
  comparison (``benchmarks/subsetting.py``).

The algorithms live next door (:mod:`.aperture`, :mod:`.random`,
:mod:`.peers`, :mod:`.subsetter`); this module only holds frozen dataclasses
with documented defaults. Every bad value raises :class:`~clientlb.ConfigError`
naming the field, the value and the rule (``subset.size: must be an integer >= 1,
got 0``). See docs/architecture.md, "Subsetting".
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Union

from .._core.errors import ConfigError
from .._core.target import parse_target

__all__ = [
    "DEFAULT_CONNECTIONS_PER_BACKEND",
    "DEFAULT_MIN_HEALTHY",
    "DEFAULT_MIN_SIZE",
    "Aperture",
    "RandomSubset",
    "SubsetConfig",
    "check_subset",
    "subset_option",
]

#: With ``Aperture(size=None)``: the number of client connections each backend should
#: get. 25 keeps a backend's fan-in small (a 1,000-client fleet over 300 backends
#: needs 8 backends per client instead of 300) while every client still has several
#: backends to balance over; see :data:`DEFAULT_MIN_SIZE` for the floor.
DEFAULT_CONNECTIONS_PER_BACKEND = 25
#: With ``Aperture(size=None)``: never fewer backends per client than this (fewer
#: clients than backends would otherwise give tiny subsets). Five survives two
#: backends lost at once without widening (see :data:`DEFAULT_MIN_HEALTHY`).
DEFAULT_MIN_SIZE = 5
#: The aperture widens when fewer than this share of its endpoints may take traffic.
#: 0.5 is the health layer's default ``panic_threshold`` (50 %, Envoy's): below it, a
#: subset would spread its traffic over failing endpoints (panic) while healthy ones
#: sit outside it; widening first brings ring neighbours in, so panic stays for an
#: outage of the whole target.
DEFAULT_MIN_HEALTHY = 0.5


def _count(name: str, value: object, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"must be an integer >= {minimum}, got {value!r}",
                          field=f"subset.{name}")
    return value


def _fraction(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or not 0 <= value <= 1:
        raise ConfigError(f"must be a fraction 0..1, got {value!r}", field=f"subset.{name}")
    return float(value)


@dataclass(frozen=True)
class Aperture:
    """The deterministic aperture: each client uses only the backends of its slice of a ring.

    Clients sit on a ring at ``client_index / client_count``; backends share the
    same ring, each covering an arc proportional to its weight. A client uses
    the backends its slice covers, each weighted by the share of its arc the
    slice covers, so that every backend gets the same load when every client
    sends the same load — with a few connections per client instead of one per
    backend. The strategy (P2C, round robin, ...) picks inside the slice.

    ::

        lb = clientlb.LoadBalancer("dns:///users.internal:8080",
                                   subset=clientlb.Aperture(client_index=3, client_count=40))

    **Size.** ``size`` is the number of backends per client. ``None`` (the
    default) chooses it so each backend gets about ``connections_per_backend``
    client connections: ``ceil(connections_per_backend × backends / clients)``,
    at least ``min_size``. The slice is then rounded up to a whole number of
    client slots (``1 / client_count`` each), so every point of the ring is
    covered by the same number of clients; a client touches one or two more
    backends than ``size`` where its slice ends part-way through an arc.

    **Place.** In this order: ``peers=`` (a target listing the clients
    themselves — ``consul:///web``, ``dns:///web.internal:80``, ``etcd://...``
    — resolved with clientlb's resolvers: the count is the number of peers, the
    index this client's rank among them sorted by name (Consul service ID, etcd
    key, else ``host:port``), found by ``client_id``); else ``client_index=`` and
    ``client_count=`` (both); else the environment: ``CLIENTLB_CLIENT_INDEX`` (or
    the ordinal ``N`` of a StatefulSet-style ``HOSTNAME`` ending in ``-N``) and
    ``CLIENTLB_CLIENT_COUNT``.
    A place that cannot be found raises :class:`~clientlb.ConfigError` when the
    balancer is built.

    **Widening.** When fewer than ``min_healthy`` of the subset's endpoints may
    take traffic (ejected, unhealthy, draining or unreachable), the aperture
    takes in its ring neighbours until enough may.

    Args:
        size: backends per client (>= 1), or None to derive it.
        client_index: this client's index, ``0 <= client_index < client_count``.
        client_count: the number of clients (>= 1).
        peers: a target whose endpoints are the clients (discovered place).
        client_id: how this client finds itself among ``peers``: an endpoint's
            ``host:port``, its host, or its metadata ``service_id`` (Consul),
            ``key`` (etcd) or ``id``. Default: ``CLIENTLB_CLIENT_ID``, else
            the host name.
        connections_per_backend: the target fan-in when ``size`` is None
            (default 25).
        min_size: the smallest derived ``size`` (default 5).
        min_healthy: the share of the subset that must be able to take
            traffic before it widens (default 0.5, the default panic threshold).

    Raises:
        ConfigError: a value of the wrong type or out of range, ``client_index``
            without ``client_count`` (or the reverse), ``peers`` together with
            them, a malformed ``peers`` target.
    """

    size: int | None = None
    client_index: int | None = None
    client_count: int | None = None
    peers: str | None = None
    client_id: str | None = None
    connections_per_backend: int = DEFAULT_CONNECTIONS_PER_BACKEND
    min_size: int = DEFAULT_MIN_SIZE
    min_healthy: float = DEFAULT_MIN_HEALTHY

    kind: ClassVar[str] = "aperture"

    def __post_init__(self) -> None:
        if self.size is not None:
            _count("size", self.size, minimum=1)
        if self.client_count is not None:
            _count("client_count", self.client_count, minimum=1)
        if self.client_index is not None:
            _count("client_index", self.client_index, minimum=0)
        if (self.client_index is None) != (self.client_count is None):
            given = "client_index" if self.client_count is None else "client_count"
            raise ConfigError("client_index and client_count go together: give both or "
                              "neither (then peers= or the environment gives the place)",
                              field=f"subset.{given}")
        if self.client_index is not None and self.client_count is not None \
                and self.client_index >= self.client_count:
            raise ConfigError(f"must be < client_count ({self.client_count}), got "
                              f"{self.client_index}", field="subset.client_index")
        if self.peers is not None:
            if not isinstance(self.peers, str) or not self.peers:
                raise ConfigError(f"must be a target string such as 'consul:///my-clients', "
                                  f"got {self.peers!r}", field="subset.peers")
            if self.client_count is not None:
                raise ConfigError("peers= discovers the client index and count; do not also "
                                  "give client_index/client_count", field="subset.peers")
            try:
                parse_target(self.peers)
            except ConfigError as exc:
                raise ConfigError(str(exc), field="subset.peers") from None
        if self.client_id is not None and (not isinstance(self.client_id, str)
                                           or not self.client_id):
            raise ConfigError(f"must be a non-empty string, got {self.client_id!r}",
                              field="subset.client_id")
        _count("connections_per_backend", self.connections_per_backend, minimum=1)
        _count("min_size", self.min_size, minimum=1)
        object.__setattr__(self, "min_healthy", _fraction("min_healthy", self.min_healthy))


@dataclass(frozen=True)
class RandomSubset:
    """Random subsetting (gRFC A68): each client keeps ``size`` backends chosen by hashing.

    Every backend gets a score ``xxh64(seed, address)`` (weighted rendezvous
    hashing when weights differ) and the client keeps the ``size`` best. A
    backend that joins or leaves only moves the connections of the clients
    that have it among their best — no coordination, no place to configure —
    but the number of clients per backend is random (binomial), so the load is
    uneven; the deterministic :class:`Aperture` exists for that.

    Args:
        size: backends per client (>= 1).
        seed: the client's seed (an integer); None draws one from the
            balancer's ``rng`` (a different subset per process, as in A68).
        min_healthy: as for :class:`Aperture`: below this share of usable
            endpoints, the next-ranked backends are taken in (default 0.5).

    Raises:
        ConfigError: a value of the wrong type or out of range.
    """

    size: int
    seed: int | None = None
    min_healthy: float = DEFAULT_MIN_HEALTHY

    kind: ClassVar[str] = "random"

    def __post_init__(self) -> None:
        _count("size", self.size, minimum=1)
        if self.seed is not None and (isinstance(self.seed, bool)
                                      or not isinstance(self.seed, int)):
            raise ConfigError(f"must be an integer or None, got {self.seed!r}",
                              field="subset.seed")
        object.__setattr__(self, "min_healthy", _fraction("min_healthy", self.min_healthy))


SubsetConfig = Union[Aperture, RandomSubset]  # noqa: UP007 - a runtime alias, valid on 3.10

_KINDS: dict[str, type[Aperture] | type[RandomSubset]] = {
    "aperture": Aperture, "random": RandomSubset}


def subset_option(value: Any, path: str = "subset") -> SubsetConfig | None:
    """The ``subset`` option from a configuration file or ``Registry.update``.

    A table with ``kind = "aperture"`` or ``kind = "random"`` and the fields of
    that class; ``false``/``None`` for no subsetting; an :class:`Aperture` or
    :class:`RandomSubset` passes through. Errors name ``path``.
    """
    if value is None or value is False:
        return None
    if isinstance(value, (Aperture, RandomSubset)):
        return value
    if not isinstance(value, Mapping):
        raise ConfigError(f"must be a table with kind = \"aperture\" or \"random\", or false, "
                          f"got {type(value).__name__} {value!r}", field=path)
    kind = value.get("kind")
    cls = _KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ConfigError(f"must be \"aperture\" or \"random\", got {kind!r}",
                          field=f"{path}.kind")
    fields = {k: v for k, v in value.items() if k != "kind"}
    allowed = tuple(cls.__dataclass_fields__)
    for key in fields:
        if key not in allowed:
            raise ConfigError(f"unknown key {key!r} for kind = {kind!r}; expected one of "
                              f"kind, {', '.join(allowed)}", field=f"{path}.{key}")
    if cls is RandomSubset and "size" not in fields:
        raise ConfigError("missing; kind = \"random\" needs size, the backends per client",
                          field=f"{path}.size")
    try:
        return cls(**fields)
    except ConfigError as exc:
        field = exc.field or ""
        message = str(exc)
        if field and message.startswith(field + ": "):
            message = message[len(field) + 2:]
        name = field.removeprefix("subset.").removeprefix("subset")
        raise ConfigError(message, field=f"{path}.{name}" if name else path) from None


def check_subset(value: object) -> SubsetConfig | None:
    """``LoadBalancer(subset=...)``: an Aperture, a RandomSubset or None."""
    if value is None or isinstance(value, (Aperture, RandomSubset)):
        return value
    raise ConfigError(f"must be a clientlb.Aperture, a clientlb.RandomSubset or None, got "
                      f"{value!r}", field="subset")

"""Each client's place on the aperture ring: its index and the number of clients.

The deterministic aperture needs every client to know where it stands among
its peers. Three sources, tried in this order (docs/architecture.md, "Subsetting"):

1. **Discovered** — ``Aperture(peers="consul:///web")``: the clients' own
   service, resolved with clientlb's resolvers (static, DNS, SRV, Consul, etcd)
   and followed as it changes, so the aperture follows auto-scaling of the
   clients as well as of the backends. The count is the number of peers; the
   index is this client's rank among them **sorted by name**: the Consul
   service ID, else the etcd key, else ``host:port`` (:func:`peer_name`) — so a
   client that comes back under the same registration (a StatefulSet pod, a
   fixed service ID) takes back its place and nobody else moves. This client
   finds itself by ``client_id``: a peer whose ``host:port``, host, or metadata
   ``service_id`` (Consul), ``key`` (etcd) or ``id`` equals it (an exact
   address match wins over the others). Not listed (not registered yet, or
   registered under another name) — it counts itself in at the rank its
   ``client_id`` would sort, and says so in ``lb.snapshot()``. Before the first
   answer its place is *provisional*: a slot picked by hashing ``client_id`` on
   a fine ring, so clients starting together spread out instead of piling onto
   index 0.
2. **Configured** — ``Aperture(client_index=3, client_count=40)``.
3. **Environment** — when ``CLIENTLB_CLIENT_COUNT`` is set: the count from it,
   the index from ``CLIENTLB_CLIENT_INDEX`` or else from a StatefulSet-style
   ``HOSTNAME`` ending in ``-N`` (``web-7`` → 7), e.g. with the StatefulSet's
   replica count in ``CLIENTLB_CLIENT_COUNT``.

``client_id`` defaults to ``CLIENTLB_CLIENT_ID``, else the host name.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import xxhash

from .._core.endpoint import Endpoint, EndpointSet
from .._core.errors import ConfigError
from .._core.target import parse_target
from .config import Aperture

if TYPE_CHECKING:
    from .._resolvers.base import Resolver

__all__ = [
    "ENV_CLIENT_COUNT",
    "ENV_CLIENT_ID",
    "ENV_CLIENT_INDEX",
    "PROVISIONAL_SLOTS",
    "PeerTracker",
    "Place",
    "check_place",
    "default_client_id",
    "locate",
    "peer_name",
    "place_from_environment",
    "provisional_place",
    "static_place",
]

logger = logging.getLogger("clientlb.subset")

ENV_CLIENT_INDEX = "CLIENTLB_CLIENT_INDEX"
ENV_CLIENT_COUNT = "CLIENTLB_CLIENT_COUNT"
ENV_CLIENT_ID = "CLIENTLB_CLIENT_ID"
#: The fine ring of a provisional place (before the peers answer): 2**16 slots.
PROVISIONAL_SLOTS = 1 << 16
_ORDINAL = re.compile(r"-(\d+)$")
#: Metadata keys that may name a peer: Consul's service ID, etcd's key, a generic id.
_ID_KEYS = ("service_id", "key", "id")


@dataclass(frozen=True)
class Place:
    """Where a client stands: ``index`` of ``count``, and where that came from."""

    index: int
    count: int
    #: "config", "environment", "hostname", "peers", "peers (not listed)", "provisional"
    source: str


def _env_int(environ: Mapping[str, str], name: str, minimum: int) -> int:
    text = environ[name].strip()
    if not text.isdigit() or int(text) < minimum:
        raise ConfigError(f"must be an integer >= {minimum}, got {environ[name]!r}", field=name)
    return int(text)


def place_from_environment(environ: Mapping[str, str]) -> Place | None:
    """The place the environment gives (see the module documentation), or None.

    Raises:
        ConfigError: a malformed variable, or an index out of range.
    """
    if ENV_CLIENT_COUNT not in environ:
        if ENV_CLIENT_INDEX in environ:
            raise ConfigError(f"is set but {ENV_CLIENT_COUNT} is not: the aperture needs the "
                              "number of clients too", field=ENV_CLIENT_INDEX)
        return None
    count = _env_int(environ, ENV_CLIENT_COUNT, 1)
    if ENV_CLIENT_INDEX in environ:
        index, source, name = _env_int(environ, ENV_CLIENT_INDEX, 0), "environment", \
            ENV_CLIENT_INDEX
    else:
        match = _ORDINAL.search(environ.get("HOSTNAME", ""))
        if match is None:
            raise ConfigError(f"is set but neither {ENV_CLIENT_INDEX} nor a HOSTNAME ending in "
                              f"'-N' (a StatefulSet ordinal) gives this client's index",
                              field=ENV_CLIENT_COUNT)
        index, source, name = int(match.group(1)), "hostname", "HOSTNAME"
    if index >= count:
        raise ConfigError(f"gives index {index}, which must be < {ENV_CLIENT_COUNT} ({count})",
                          field=name)
    return Place(index, count, source)


def static_place(config: Aperture, environ: Mapping[str, str]) -> Place:
    """The place of an aperture without ``peers``: configured, else from the environment.

    Raises:
        ConfigError: no place anywhere, or a bad environment variable.
    """
    if config.client_index is not None and config.client_count is not None:
        return Place(config.client_index, config.client_count, "config")
    place = place_from_environment(environ)
    if place is None:
        raise ConfigError(
            "the aperture needs this client's place among its peers: give client_index= and "
            "client_count=, or peers= (a target listing the clients), or set "
            f"{ENV_CLIENT_COUNT} (with {ENV_CLIENT_INDEX}, or a HOSTNAME ending in '-N')",
            field="subset")
    return place


def check_place(config: object, environ: Mapping[str, str] | None = None) -> None:
    """Raise the :class:`ConfigError` an aperture without ``peers`` would raise for its place."""
    if isinstance(config, Aperture) and config.peers is None:
        static_place(config, os.environ if environ is None else environ)


def default_client_id(environ: Mapping[str, str]) -> str:
    """``CLIENTLB_CLIENT_ID``, else the host name."""
    return environ.get(ENV_CLIENT_ID) or socket.gethostname()


def provisional_place(client_id: str) -> Place:
    """A place before the peers answer: a slot of a fine ring chosen by hashing ``client_id``."""
    return Place(xxhash.xxh64_intdigest(client_id.encode()) % PROVISIONAL_SLOTS,
                 PROVISIONAL_SLOTS, "provisional")


def peer_name(ep: Endpoint) -> str:
    """What peers are ranked by: Consul's ``service_id``, else etcd's ``key``, else
    ``host:port``."""
    for key in ("service_id", "key"):
        value = ep.metadata.get(key)
        if isinstance(value, str) and value:
            return value
    return ep.address


def _names(ep: Endpoint) -> tuple[str, ...]:
    names = [ep.host]
    for key in _ID_KEYS:
        value = ep.metadata.get(key)
        if isinstance(value, str) and value:
            names.append(value)
    return tuple(names)


def locate(peers: Sequence[Endpoint], client_id: str) -> Place:
    """This client's place among ``peers`` (see the module documentation for the rule)."""
    keys = sorted((peer_name(ep), ep.address) for ep in peers)
    count = len(keys)
    for index, (_, address) in enumerate(keys):
        if address == client_id:
            return Place(index, count, "peers")
    by_address = {ep.address: ep for ep in peers}
    mine = [i for i, (_, address) in enumerate(keys) if client_id in _names(by_address[address])]
    if mine:
        if len(mine) > 1:
            logger.warning("client_id %r matches %d peers (%s); using the first", client_id,
                           len(mine), ", ".join(keys[i][1] for i in mine[:5]))
        return Place(mine[0], count, "peers")
    rank = sum(1 for key in keys if key < (client_id, client_id))
    return Place(rank, count + 1, "peers (not listed)")


class PeerTracker:
    """Follows the clients' own service and reports this client's place when it changes.

    A resolver sink (``publish``/``error``) over a resolver of the ``peers``
    target; ``on_change(place)`` is called from the resolver's thread or task.
    """

    def __init__(self, peers: str, client_id: str, on_change: Callable[[Place], None],
                 name: str) -> None:
        self.target = parse_target(peers)
        self.client_id = client_id
        self.name = name
        self._on_change = on_change
        # discovery loads with the first peers resolver, not with ``import clientlb``
        from .._resolvers.base import create_resolver

        self._resolver: Resolver = create_resolver(self.target)
        self._lock = threading.Lock()
        self._place = provisional_place(client_id)
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self.last_error: str | None = None

    @property
    def place(self) -> Place:
        return self._place

    def start(self) -> None:
        """Resolve from the running event loop if there is one, else from a thread."""
        from .._resolvers.base import start_resolver

        self._task = start_resolver(self._resolver, self)

    def close(self) -> None:
        self._closed = True
        self._resolver.close()

    async def aclose(self) -> None:
        self._closed = True
        await self._resolver.aclose()

    # -- the resolver sink ----------------------------------------------------------------

    def publish(self, endpoints: EndpointSet) -> None:
        place = locate(endpoints.endpoints, self.client_id)
        with self._lock:
            if self._closed or place == self._place:
                return
            old, self._place = self._place, place
        self.last_error = None
        if place.source == "peers (not listed)":
            logger.warning("%s: client_id %r is not among the %d peers of %s; counting "
                           "itself in as %d of %d", self.name, self.client_id, place.count - 1,
                           self.target, place.index, place.count)
        else:
            logger.info("%s: aperture place %d of %d (was %d of %d, %s)", self.name,
                        place.index, place.count, old.index, old.count, old.source)
        self._on_change(place)

    def error(self, exc: BaseException) -> None:
        self.last_error = str(exc)
        logger.warning("%s: peers discovery failed, keeping place %d of %d: %s", self.name,
                       self._place.index, self._place.count, exc)


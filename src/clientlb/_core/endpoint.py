"""Endpoints and immutable endpoint-set snapshots.

An :class:`Endpoint` is one backend address with the attributes the balancer
uses: ``weight`` (relative share of traffic, 0 means "never pick unless
nothing else is left"), ``priority`` (0 is the best level; higher levels are
failover, as SRV priorities in RFC 2782), ``zone`` (for locality preference)
and free-form ``metadata`` (Consul tags, etcd metadata...).

An :class:`EndpointSet` is what a resolver publishes: an immutable, ordered
snapshot, unique by address, with a :meth:`EndpointSet.diff` to see what an
update changed. Snapshots are never mutated; a change publishes a new one.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .errors import ConfigError, strict_arguments

__all__ = ["Endpoint", "EndpointSet", "EndpointSetDiff"]

# RFC 1123 host names; underscores are tolerated because real registries
# (Consul node names, Kubernetes-generated SRV targets) contain them.
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")
_EMPTY: Mapping[str, Any] = MappingProxyType({})


def _check_host(host: object) -> str:
    if not isinstance(host, str):
        raise ConfigError(f"host must be a string, got {host!r}", field="host")
    if not host:
        raise ConfigError("host must not be empty", field="host")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if ":" in host:
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            raise ConfigError(f"host {host!r} is not a valid IPv6 address", field="host") from None
        return host
    name = host[:-1] if host.endswith(".") else host
    if len(name) > 253 or not name or not all(_LABEL.match(label) for label in name.split(".")):
        raise ConfigError(
            f"host {host!r} is not a valid host name or IP address", field="host"
        )
    return host


@strict_arguments
@dataclass(frozen=True, eq=True, repr=False)
class Endpoint:
    """One backend: ``Endpoint("10.0.0.7", 8080, weight=2, zone="eu-west-1a")``.

    Frozen and hashable; equality compares every attribute, while
    :attr:`address` identifies the backend across snapshots (an endpoint whose
    weight changed is the same backend, "changed" in a diff).

    Raises:
        ConfigError: empty or malformed host, port outside 1..65535, negative
            or non-finite weight, negative priority.
    """

    host: str
    port: int
    weight: float = 1
    priority: int = 0
    zone: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)

    def __post_init__(self) -> None:
        object.__setattr__(self, "host", _check_host(self.host))
        port = self.port
        if isinstance(port, bool) or not isinstance(port, int):
            raise ConfigError(f"port must be an integer 1..65535, got {port!r}", field="port")
        if not 1 <= port <= 65535:
            raise ConfigError(f"port must be 1..65535, got {port}", field="port")
        w = self.weight
        if isinstance(w, bool) or not isinstance(w, (int, float)):
            raise ConfigError(f"weight must be a number >= 0, got {w!r}", field="weight")
        if not math.isfinite(w) or w < 0:
            raise ConfigError(f"weight must be a finite number >= 0, got {w!r}", field="weight")
        p = self.priority
        if isinstance(p, bool) or not isinstance(p, int) or p < 0:
            raise ConfigError(f"priority must be an integer >= 0, got {p!r}", field="priority")
        if self.zone is not None and not isinstance(self.zone, str):
            raise ConfigError(f"zone must be a string or None, got {self.zone!r}", field="zone")
        md = self.metadata
        if not isinstance(md, Mapping):
            raise ConfigError(f"metadata must be a mapping, got {md!r}", field="metadata")
        if not isinstance(md, MappingProxyType):
            object.__setattr__(self, "metadata", MappingProxyType(dict(md)))

    def __hash__(self) -> int:
        return hash((self.host, self.port, self.weight, self.priority, self.zone))

    @property
    def address(self) -> str:
        """``host:port``, with brackets around an IPv6 host: ``[::1]:80``."""
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str, **attributes: Any) -> Endpoint:
        """Parse ``"host:port"`` or ``"[v6]:port"``; extra attributes are passed on.

        >>> Endpoint.parse("[::1]:8080").address
        '[::1]:8080'
        """
        host, port = split_host_port(text)
        return cls(host, port, **attributes)

    def __repr__(self) -> str:
        extras = []
        if self.weight != 1:
            extras.append(f"weight={self.weight:g}")
        if self.priority:
            extras.append(f"priority={self.priority}")
        if self.zone is not None:
            extras.append(f"zone={self.zone!r}")
        if self.metadata:
            extras.append(f"metadata={dict(self.metadata)!r}")
        tail = (" " + " ".join(extras)) if extras else ""
        return f"<Endpoint {self.address}{tail}>"


def split_host_port(text: str) -> tuple[str, int]:
    """Split ``host:port`` / ``[v6]:port`` into its parts, validating both.

    Raises ConfigError for an empty host, a missing or non-numeric port and an
    IPv6 address without brackets (``::1:80`` is ambiguous).
    """
    if not isinstance(text, str):
        raise ConfigError(f"expected 'host:port', got {text!r}", field="endpoint")
    s = text.strip()
    if not s:
        raise ConfigError("empty endpoint; expected 'host:port'", field="endpoint")
    if s.startswith("["):
        end = s.find("]")
        if end < 0:
            raise ConfigError(f"{text!r}: unclosed '[' in IPv6 address", field="endpoint")
        host, rest = s[1:end], s[end + 1 :]
        if not rest.startswith(":"):
            raise ConfigError(f"{text!r}: expected ':port' after ']'", field="endpoint")
        port_text = rest[1:]
        if ":" not in host:
            raise ConfigError(f"{text!r}: brackets are only for IPv6 addresses", field="endpoint")
    else:
        if s.count(":") > 1:
            raise ConfigError(
                f"{text!r}: IPv6 addresses must be written in brackets, as '[::1]:80'",
                field="endpoint",
            )
        host, sep, port_text = s.partition(":")
        if not sep:
            raise ConfigError(f"{text!r}: missing ':port'", field="endpoint")
    if not host:
        raise ConfigError(f"{text!r}: host must not be empty", field="endpoint")
    if not port_text.isascii() or not port_text.isdigit():
        raise ConfigError(f"{text!r}: port must be a number 1..65535, got {port_text!r}",
                          field="endpoint")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ConfigError(f"{text!r}: port must be 1..65535, got {port}", field="endpoint")
    return host, port


@dataclass(frozen=True)
class EndpointSetDiff:
    """What changed between two snapshots, by address."""

    added: tuple[Endpoint, ...]
    removed: tuple[Endpoint, ...]
    changed: tuple[tuple[Endpoint, Endpoint], ...]  # (old, new) with the same address

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)


class EndpointSet:
    """An immutable, ordered snapshot of endpoints, unique by address.

    ``EndpointSet([...])`` raises :class:`ConfigError` on duplicates; resolvers
    that receive duplicates from a registry use :meth:`from_iterable` with
    ``dedupe=True`` (the first occurrence wins).
    """

    __slots__ = ("_by_address", "_endpoints", "version")

    def __init__(self, endpoints: Iterable[Endpoint] = (), *, version: int = 0) -> None:
        eps = tuple(endpoints)
        by_address: dict[str, Endpoint] = {}
        for ep in eps:
            if not isinstance(ep, Endpoint):
                raise ConfigError(f"expected an Endpoint, got {ep!r}", field="endpoints")
            if ep.address in by_address:
                raise ConfigError(f"duplicate endpoint {ep.address}", field="endpoints")
            by_address[ep.address] = ep
        self._endpoints = eps
        self._by_address = by_address
        self.version = version

    @classmethod
    def from_iterable(
        cls, endpoints: Iterable[Endpoint], *, version: int = 0, dedupe: bool = False
    ) -> EndpointSet:
        if not dedupe:
            return cls(endpoints, version=version)
        seen: dict[str, Endpoint] = {}
        for ep in endpoints:
            seen.setdefault(ep.address, ep)
        return cls(seen.values(), version=version)

    def __iter__(self) -> Iterator[Endpoint]:
        return iter(self._endpoints)

    def __len__(self) -> int:
        return len(self._endpoints)

    def __contains__(self, item: object) -> bool:
        if isinstance(item, Endpoint):
            return self._by_address.get(item.address) == item
        if isinstance(item, str):
            return item in self._by_address
        return False

    def __getitem__(self, index: int) -> Endpoint:
        return self._endpoints[index]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EndpointSet):
            return NotImplemented
        return self._by_address == other._by_address

    __hash__ = None  # type: ignore[assignment]

    def get(self, address: str) -> Endpoint | None:
        """The endpoint with this ``host:port`` address, or None."""
        return self._by_address.get(address)

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        return self._endpoints

    def diff(self, new: EndpointSet) -> EndpointSetDiff:
        """What ``new`` adds, removes and changes relative to this snapshot."""
        old_map, new_map = self._by_address, new._by_address
        added = tuple(ep for addr, ep in new_map.items() if addr not in old_map)
        removed = tuple(ep for addr, ep in old_map.items() if addr not in new_map)
        changed = tuple(
            (old_map[addr], ep)
            for addr, ep in new_map.items()
            if addr in old_map and old_map[addr] != ep
        )
        return EndpointSetDiff(added, removed, changed)

    def __repr__(self) -> str:
        shown = ", ".join(ep.address for ep in self._endpoints[:5])
        more = f", ... +{len(self._endpoints) - 5}" if len(self._endpoints) > 5 else ""
        return f"<EndpointSet v{self.version} [{shown}{more}]>"

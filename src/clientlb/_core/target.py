"""Target strings: where a balancer finds its endpoints.

==========================================  ============================================
``static://10.0.0.1:8080,10.0.0.2:8080``    a fixed list (``[::1]:80`` for IPv6); a list of
                                            ``"host:port"`` strings or Endpoints is the same
``dns://[server[:port]]/name:port``         every A/AAAA record of ``name``
``srv://[server[:port]]/_svc._proto.name``  DNS SRV records (RFC 2782)
``consul://[agent[:port]]/service?dc=...``  Consul's health API (``dc``, ``tag``, ``near``,
                                            ``ns``, ``filter``, ``token``, ``passing``)
``etcd://[host[:port]]/prefix``             etcd v3 keys under ``prefix/``
==========================================  ============================================

The bracketed server is optional; without it the system default is used. A
string without ``://`` is read as a static list (``"a:80,b:80"``).

gRPC's own target syntax (``grpc/doc/naming.md``) is understood too, so that a
target written for ``grpc.insecure_channel`` works unchanged:
``dns:name:port`` and ``dns://[server]/name:port`` are ``dns://`` targets,
``ipv4:a:p,b:p`` and ``ipv6:[a]:p,[b]:p`` static lists. What clientlb cannot
follow is refused with the clientlb form in the message: a missing port (gRPC
assumes 443, clientlb wants it written), ``unix:`` sockets. A bare ``host:port``
is a static target of one endpoint: clientlb does not look the name up, the
connection does (grpcio would resolve it with DNS and balance over the
addresses; ``dns:///host:port`` does that here).

:func:`parse_target` validates the syntax of every scheme and raises
:class:`ConfigError` naming the rule that was broken. Whether a scheme can be
*resolved* is the resolver registry's business (``_resolvers``).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from urllib.parse import parse_qsl

from .endpoint import Endpoint, split_host_port
from .errors import ConfigError
from .redact import MASK, is_secret_key, redact, redact_target

__all__ = ["SCHEMES", "Target", "TargetLike", "parse_target"]

SCHEMES = ("static", "dns", "srv", "consul", "etcd")
#: gRPC's schemes that clientlb does not take (grpc/doc/naming.md).
_GRPC_ONLY = frozenset({"unix", "unix-abstract", "vsock", "xds", "google-c2p"})
#: ``dns:name:port``, ``ipv4:...``, ``unix:...``: gRPC's form without ``//``.
_GRPC_SHORT = re.compile(r"^(dns|ipv4|ipv6|unix|unix-abstract|vsock):(?!\d+(?:,|$))(.*)$",
                         re.IGNORECASE | re.DOTALL)
_GRPC_DEFAULT_PORT = 443
DEFAULT_PORTS = {"dns": 53, "srv": 53, "consul": 8500, "etcd": 2379}
_CONSUL_PARAMS = frozenset({"dc", "tag", "near", "ns", "namespace", "filter", "token", "passing",
                            "wait", "partition"})
_DNS_NAME = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9_-]{1,63}(?<!-))*\.?$")

TargetLike = "str | Iterable[str | Endpoint]"


@dataclass(frozen=True)
class Target:
    """A parsed target. ``str(target)`` never shows a secret: the value of ``token=``
    (any parameter :func:`~clientlb._core.redact.is_secret_key` names) is ``***``."""

    scheme: str
    name: str
    server: tuple[str, int] | None = None
    port: int | None = None
    params: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    endpoints: tuple[Endpoint, ...] = ()

    @property
    def service(self) -> str:
        """The logical service name: the DNS/SRV name, the Consul service, the etcd prefix."""
        return self.name

    def __str__(self) -> str:
        if self.scheme == "static":
            return "static://" + ",".join(ep.address for ep in self.endpoints)
        server = ""
        if self.server:
            host, port = self.server
            server = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        name = f"{self.name}:{self.port}" if self.port is not None else self.name
        query = "&".join(
            f"{k}={MASK if is_secret_key(k) else v}" for k, v in self.params.items()
        )
        return redact(f"{self.scheme}://{server}/{name}" + (f"?{query}" if query else ""))

    def __repr__(self) -> str:
        return f"Target({str(self)!r})"


def _fail(target: object, rule: str) -> ConfigError:
    # never echo a secret back: the target is redacted before it is quoted
    return ConfigError(f"{rule} (in {redact_target(target)!r})", field="target")


def _parse_static_list(items: Iterable[str | Endpoint], original: object) -> Target:
    endpoints: list[Endpoint] = []
    seen: set[str] = set()
    for item in items:
        if isinstance(item, Endpoint):
            ep = item
        elif isinstance(item, str):
            if not item.strip():
                raise _fail(original, "empty entry in static target (stray comma?)")
            try:
                ep = Endpoint.parse(item.strip())
            except ConfigError as exc:
                raise _fail(original, str(exc).removeprefix("endpoint: ")) from None
        else:
            raise _fail(original, f"expected 'host:port' or Endpoint, got {item!r}")
        if ep.address in seen:
            raise _fail(original, f"duplicate endpoint {ep.address}")
        seen.add(ep.address)
        endpoints.append(ep)
    if not endpoints:
        raise _fail(original, "a static target needs at least one 'host:port'")
    return Target("static", "static", endpoints=tuple(endpoints))


def _parse_server(authority: str, scheme: str, original: str) -> tuple[str, int] | None:
    if not authority:
        return None
    if "@" in authority:
        raise _fail(original, "credentials in the target are not allowed; use token= or the "
                              "environment")
    if authority.startswith("[") and authority.endswith("]"):
        authority = f"{authority}:{DEFAULT_PORTS[scheme]}"
    if authority.startswith("[") or authority.count(":") == 1:
        try:
            return split_host_port(authority)
        except ConfigError as exc:
            raise _fail(original, f"bad server address: {exc}") from None
    if authority.count(":") > 1:
        raise _fail(original, "IPv6 server addresses must be written in brackets, as '[::1]:53'")
    try:
        return Endpoint(authority, DEFAULT_PORTS[scheme]).host, DEFAULT_PORTS[scheme]
    except ConfigError as exc:
        raise _fail(original, f"bad server address: {exc}") from None


def parse_target(target: object) -> Target:
    """Parse and validate a target string, a list of addresses or a :class:`Target`.

    Raises:
        ConfigError: unknown scheme (the valid ones are listed), empty list,
            stray commas, malformed ``host:port``, IPv6 without brackets,
            missing service name or port.
    """
    if isinstance(target, Target):
        return target
    if isinstance(target, Endpoint):
        return _parse_static_list([target], target)
    if isinstance(target, (list, tuple)):
        return _parse_static_list(target, target)
    if not isinstance(target, str):
        raise ConfigError(
            f"target must be a string, a list of 'host:port' or Endpoints, got {target!r}",
            field="target",
        )
    text = target.strip()
    if not text:
        raise ConfigError("target must not be empty", field="target")
    grpc_short = _GRPC_SHORT.match(text) if "://" not in text else None
    if grpc_short:
        return _parse_grpc_short(grpc_short.group(1).lower(), grpc_short.group(2), target)
    if "://" not in text:
        if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:/", text):
            raise _fail(target, "malformed target; expected 'scheme://...'")
        return _parse_static_list(text.split(","), target)
    scheme, _, rest = text.partition("://")
    scheme = scheme.lower()
    if scheme in _GRPC_ONLY:
        raise _grpc_only(scheme, target)
    if scheme not in SCHEMES:
        raise _fail(target, f"unknown scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    if scheme == "static":
        if not rest:
            raise _fail(target, "a static target needs at least one 'host:port'")
        return _parse_static_list(rest.split(","), target)

    rest, _, query = rest.partition("?")
    authority, slash, path = rest.partition("/")
    if not slash or not path:
        raise _fail(target, f"{scheme}:// needs a name after the server part: "
                            f"{scheme}://[server]/NAME")
    server = _parse_server(authority, scheme, target)
    params: dict[str, str] = {}
    if query:
        try:
            pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
        except ValueError:
            raise _fail(target, "malformed query string") from None
        for key, value in pairs:
            if key in params:
                raise _fail(target, f"query parameter {key!r} given twice")
            params[key] = value
    port: int | None = None
    name = path
    if scheme == "dns":
        if params:
            raise _fail(target, "dns:// takes no query parameters")
        name, sep, port_text = path.rpartition(":")
        if not sep:
            raise _fail(target, f"dns:// needs a port: dns://[server]/NAME:PORT (gRPC's "
                                f"default port {_GRPC_DEFAULT_PORT} is not assumed: write "
                                f"'dns://{authority}/{path}:{_GRPC_DEFAULT_PORT}')")
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise _fail(target, f"port must be 1..65535, got {port_text!r}")
        port = int(port_text)
        _check_dns_name(name, target)
    elif scheme == "srv":
        if params:
            raise _fail(target, "srv:// takes no query parameters")
        _check_dns_name(name, target)
        labels = name.split(".")
        if len(labels) < 3 or not labels[0].startswith("_") or not labels[1].startswith("_"):
            raise _fail(target, "an SRV name has the form _service._proto.name (RFC 2782)")
    elif scheme == "consul":
        unknown = sorted(set(params) - _CONSUL_PARAMS)
        if unknown:
            raise _fail(target, f"unknown consul parameter(s) {unknown}; valid: "
                                f"{', '.join(sorted(_CONSUL_PARAMS))}")
        if "/" in name or not re.match(r"^[A-Za-z0-9_.-]+$", name):
            raise _fail(target, f"invalid consul service name {name!r}")
    elif scheme == "etcd":
        if params:
            raise _fail(target, "etcd:// takes no query parameters")
        name = path.rstrip("/")
        if not name:
            raise _fail(target, "etcd:// needs a key prefix: etcd://[host]/PREFIX")
    return Target(scheme, name, server=server, port=port, params=MappingProxyType(params))


def _grpc_only(scheme: str, original: str) -> ConfigError:
    if scheme.startswith("unix") or scheme == "vsock":
        return _fail(original, f"gRPC's {scheme}: targets are not supported: clientlb "
                               f"balances host:port endpoints (static://HOST:PORT,... or "
                               f"dns:///NAME:PORT)")
    return _fail(original, f"unknown scheme {scheme!r} (a gRPC-only scheme); choose one of "
                           f"{', '.join(SCHEMES)}")


def _parse_grpc_short(scheme: str, rest: str, original: str) -> Target:
    """gRPC's ``dns:name:port``, ``ipv4:a:p,b:p``, ``ipv6:[a]:p`` (grpc/doc/naming.md)."""
    if scheme == "dns":  # dns:name:port is dns:///name:port
        return parse_target(f"dns:///{rest}")
    if scheme != "ipv4" and scheme != "ipv6":
        raise _grpc_only(scheme, original)
    version = 4 if scheme == "ipv4" else 6
    entries = rest.split(",")
    for entry in entries:
        entry = entry.strip()
        if version == 6 and not entry.startswith("["):
            raise _fail(original, f"write IPv6 addresses in brackets with a port: "
                                  f"'static://[{entry}]:{_GRPC_DEFAULT_PORT}'")
        host, sep, _ = entry.rpartition(":")
        if not sep or (version == 6 and not host.endswith("]")):
            raise _fail(original, f"gRPC's default port {_GRPC_DEFAULT_PORT} is not assumed: "
                                  f"write 'static://{entry}:{_GRPC_DEFAULT_PORT}'")
        try:
            ip = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            ip = None
        if ip is None or ip.version != version:
            raise _fail(original, f"{entry!r} is not an IPv{version} address: write "
                                  f"'static://{entry}'")
    return _parse_static_list(entries, original)


def _check_dns_name(name: str, original: str) -> None:
    if not name or len(name) > 253 or not _DNS_NAME.match(name):
        raise _fail(original, f"{name!r} is not a valid DNS name")

"""The logical name of a balanced service: one rule for every integration.

A call through clientlb connects to a picked endpoint's address, but talks to
the *service*: the name is the gRPC ``:authority``, the TLS SNI and the name
the certificate is verified against (RFC 6125), and the ``Host`` that active
HTTP health checks present. It is derived here, once (docs/architecture.md,
"Naming"):

1. ``LoadBalancer(name=...)``, when given, is the name.
2. Otherwise the target's service name, by scheme:

   * ``dns://…/name:port`` → ``name`` (the authority adds ``:port``, as gRPC's
     own ``dns:///name:port`` channels send);
   * ``srv://…/_svc._proto.name`` → ``name``: RFC 2782 labels start with an
     underscore and a certificate is issued for the bare name (RFC 6125's
     DNS-ID);
   * ``consul://…/service`` → ``service``; ``etcd://…/prefix`` → ``prefix``;
   * ``static://`` → no name: a list of addresses names no service, so each
     connection keeps its own address (gRPC's default authority) and TLS
     verification needs ``server_name=``/``server_hostname=`` or ``name=``.

An explicit ``server_name=`` (gRPC) / ``server_hostname=`` (TCP) overrides
both, for that integration only. HTTP takes the name from the request URL's
host, which is the logical name by contract (docs/http.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from .._core.errors import ConfigError

if TYPE_CHECKING:
    from .._core.target import Target

__all__ = ["LogicalName", "logical_name", "override_name"]


@dataclass(frozen=True)
class LogicalName:
    """A service name: ``host`` (SNI, certificate) and ``authority`` (``host[:port]``)."""

    host: str
    port: int | None = None

    @property
    def authority(self) -> str:
        if self.port is None:
            return self.host
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def _strip_srv_labels(name: str) -> str:
    labels = name.split(".")
    while len(labels) > 1 and labels[0].startswith("_"):
        labels.pop(0)
    return ".".join(labels)


class Named(Protocol):
    """What :func:`logical_name` reads of a balancer (``LoadBalancer``, ``BalancerView``)."""

    @property
    def name(self) -> str: ...

    @property
    def target(self) -> Target: ...


def logical_name(lb: Named) -> LogicalName | None:
    """The balancer's logical name (see the module doc), or None for a bare static list."""
    target = lb.target
    if lb.name != target.service:  # name= was given
        return LogicalName(lb.name)
    scheme = target.scheme
    if scheme == "static":
        return None
    if scheme == "srv":
        return LogicalName(_strip_srv_labels(target.service))
    if scheme == "dns":
        return LogicalName(target.service, target.port)
    return LogicalName(target.service)


def override_name(value: object, field: str) -> LogicalName:
    """An explicit ``server_name=``-style override (``host`` or ``host:port``)."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{field} must be a non-empty string, got {value!r}", field=field)
    if value.startswith("["):
        end = value.find("]")
        rest = value[end + 1:]
        if end > 0 and rest.startswith(":") and rest[1:].isdigit():
            return LogicalName(value[1:end], int(rest[1:]))
        return LogicalName(value[1:end] if end > 0 else value)
    if value.count(":") == 1:
        host, _, port = value.partition(":")
        if port.isdigit():
            return LogicalName(host, int(port))
    return LogicalName(value)

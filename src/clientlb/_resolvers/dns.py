"""``dns://[server[:port]]/name:port`` — every A/AAAA record of ``name`` is an endpoint.

Queries go through dnspython's asyncio resolver (``dns.asyncresolver``) on the
resolver's event loop: the application's loop when the balancer was built
inside one, a private loop in a daemon thread otherwise. Without a server in
the target the name is resolved as the system resolver would: the hosts file
first (``hosts_file``, default ``/etc/hosts``; ``localhost`` is loopback, RFC
6761 — see ``hosts``), then DNS with the system configuration
(``/etc/resolv.conf``, with its search list). With a server, queries go to
that server only and the name is taken as absolute, as ``dig @server`` does.
dnspython keeps no cache here, so every answer carries the server's TTL.

Answers (RFC 1035, RFC 2308):

* A and AAAA are asked in parallel (``record_types``, default both) and
  their addresses merged, sorted, each with the target's port;
* NXDOMAIN is authoritative: the name does not exist, the set becomes empty;
  so is "no data" for every record type asked (the name has no address); the
  balancer's ``NoEndpointAvailable`` then says which (``empty_reason``);
* a timeout, SERVFAIL, REFUSED or a network error keeps the last good set, and
  the ``DiscoveryError`` names the response code the server gave;
  when only one record type fails, that type's last good addresses are kept
  beside the fresh answer of the other;
* the next query follows the TTL (see ``_refresh``), and :meth:`refresh`
  asks again early.

Options (``LoadBalancer(..., resolver_options={...})``): ``timeout`` (total
seconds per query, default 5 — dnspython's lifetime default), ``record_types``
(default ``("A", "AAAA")``), ``tcp`` (default False: UDP with TCP fallback on
truncation, RFC 7766), ``hosts_file`` (default the system's; None: DNS only),
plus the TTL and backoff options of ``_refresh`` and ``_base``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rcode
import dns.rdatatype
import dns.resolver
import dns.rrset

from .._core.checks import check_bool
from .._core.endpoint import Endpoint
from .._core.errors import ConfigError, DiscoveryError
from .._core.target import Target
from ._backoff import check_seconds
from ._refresh import TTLResolver
from .hosts import DEFAULT_HOSTS_FILE, HostsFile, check_hosts_file

__all__ = ["DNSQuerier", "DNSResolver", "QueryResult", "check_record_types"]

_ADDRESS_TYPES = ("A", "AAAA")


@dataclass(frozen=True)
class QueryResult:
    """One DNS answer: the records (None for "no data"), the TTL, whether NXDOMAIN."""

    rrset: dns.rrset.RRset | None
    ttl: float
    nxdomain: bool = False
    response: dns.message.Message | None = None

    @property
    def addresses(self) -> list[str]:
        if self.rrset is None:
            return []
        return [rd.address for rd in self.rrset]


def check_record_types(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, (tuple, list)) or not value:
        raise ConfigError(f"must be a non-empty list of 'A'/'AAAA', got {value!r}",
                          field="record_types")
    types = tuple(str(v).upper() for v in value)
    bad = [t for t in types if t not in _ADDRESS_TYPES]
    if bad or len(set(types)) != len(types):
        raise ConfigError(f"must be distinct values among 'A', 'AAAA', got {value!r}",
                          field="record_types")
    return types


class DNSQuerier:
    """Asks one DNS server (or the system's) and maps failures to ``DiscoveryError``."""

    @classmethod
    def for_target(cls, target: Target, timeout: object, tcp: object) -> DNSQuerier:
        """The querier of a ``dns://``/``srv://`` target, its options checked."""
        return cls(target.server, timeout=check_seconds("timeout", timeout, allow_zero=False),
                   tcp=check_bool(tcp, "tcp"), target=str(target))

    def __init__(self, server: tuple[str, int] | None, *, timeout: float, tcp: bool,
                 target: str) -> None:
        self.server = server
        self.timeout = timeout
        self.tcp = tcp
        self.target = target
        self.source = (f"dns server {server[0]}:{server[1]}" if server
                       else "system DNS resolver")
        self._resolver: dns.asyncresolver.Resolver | None = None
        self.queries = 0  # questions asked (the SRV additional section saves some)

    async def _get_resolver(self) -> dns.asyncresolver.Resolver:
        if self._resolver is not None:
            return self._resolver
        if self.server is None:
            try:
                res = dns.asyncresolver.Resolver(configure=True)
            except dns.exception.DNSException as exc:
                raise DiscoveryError(f"no system DNS configuration: {exc}",
                                     target=self.target, source=self.source) from None
        else:
            host, port = self.server
            try:
                ipaddress.ip_address(host)
                address = host
            except ValueError:  # a server given by name: look it up once
                try:
                    infos = await asyncio.get_running_loop().getaddrinfo(
                        host, port, type=socket.SOCK_DGRAM)
                except OSError as exc:
                    raise DiscoveryError(f"cannot resolve the DNS server's name: {exc}",
                                         target=self.target, source=self.source) from None
                address = str(infos[0][4][0])
            res = dns.asyncresolver.Resolver(configure=False)
            res.nameservers = [dns.nameserver.Do53Nameserver(address, port)]
        res.lifetime = self.timeout
        res.timeout = min(self.timeout, 2.0)
        res.cache = None
        self._resolver = res
        return res

    async def query(self, name: str, rdtype: str) -> QueryResult:
        """Ask for ``rdtype`` records of ``name``.

        Raises:
            DiscoveryError: timeout, SERVFAIL/REFUSED, network error.
        """
        res = await self._get_resolver()
        self.queries += 1
        qname: str | dns.name.Name = name
        search = self.server is None
        if not search:
            qname = dns.name.from_text(name)
        try:
            answer = await res.resolve(qname, rdtype, tcp=self.tcp, search=search,
                                       raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN as exc:
            return QueryResult(None, _negative_ttl(exc), nxdomain=True)
        except dns.resolver.LifetimeTimeout:
            raise DiscoveryError(f"{rdtype} query for {name} timed out after "
                                 f"{self.timeout:g}s", target=self.target,
                                 source=self.source) from None
        except dns.resolver.NoNameservers as exc:
            raise DiscoveryError(f"{rdtype} query for {name} failed: {_why_no_answer(exc)}",
                                 target=self.target, source=self.source) from None
        except (dns.exception.DNSException, OSError, ValueError) as exc:
            raise DiscoveryError(f"{rdtype} query for {name} failed: "
                                 f"{type(exc).__name__}: {exc}", target=self.target,
                                 source=self.source) from None
        ttl = float(answer.chaining_result.minimum_ttl)
        return QueryResult(answer.rrset, ttl, response=answer.response)


def _why_no_answer(exc: dns.resolver.NoNameservers) -> str:
    """What the servers said, by response code: "the server answered SERVFAIL"."""
    rcodes: list[str] = []
    others: list[str] = []
    for error in exc.kwargs.get("errors") or ():
        response = error[4] if len(error) > 4 else None
        if isinstance(response, dns.message.Message):
            rcodes.append(dns.rcode.to_text(response.rcode()))
        elif len(error) > 3 and error[3] is not None:
            others.append(f"{type(error[3]).__name__}: {error[3]}")
    if rcodes:
        unique = sorted(set(rcodes))
        return f"the server answered {' / '.join(unique)}" + (
            " (the server failed to resolve the name; not an answer about it)"
            if unique == ["SERVFAIL"] else "")
    return "; ".join(others) or str(exc)


def _negative_ttl(exc: dns.resolver.NXDOMAIN) -> float:
    ttls: list[float] = []
    try:
        for response in exc.responses().values():  # type: ignore[no-untyped-call]
            ttls.append(float(response.resolve_chaining().minimum_ttl))
    except Exception:  # a response we cannot read: fall back to the floor
        return 0.0
    return min(ttls) if ttls else 0.0


class DNSResolver(TTLResolver):
    """``dns://[server[:port]]/name:port``: the A/AAAA records of a name, TTL-refreshed.

    See the module documentation for the rules and the options.
    """

    scheme = "dns"

    def __init__(self, target: Target, *, timeout: float = 5.0,
                 record_types: Sequence[str] = _ADDRESS_TYPES, tcp: bool = False,
                 hosts_file: str | None = DEFAULT_HOSTS_FILE, **options: Any) -> None:
        super().__init__(target, **options)
        path = check_hosts_file(hosts_file)
        #: the hosts file, read first when the target names no DNS server
        self.hosts = HostsFile(path) if path is not None and target.server is None else None
        if target.port is None:
            raise ConfigError("dns:// needs a port: dns://[server]/NAME:PORT", field="target")
        self.port: int = target.port
        self.record_types = check_record_types(record_types)
        self.querier = DNSQuerier.for_target(target, timeout, tcp)
        self._last_by_type: dict[str, list[str]] = {}

    async def resolve_once(self) -> tuple[list[Endpoint], float]:
        name = self.target.name
        pinned = self.hosts.lookup(name) if self.hosts is not None else None
        if pinned is not None:
            return self._from_hosts(name, pinned), self.min_ttl
        results = await asyncio.gather(
            *(self.querier.query(name, t) for t in self.record_types), return_exceptions=True)
        addresses: list[str] = []
        ttls: list[float] = []
        failures: list[DiscoveryError] = []
        for rdtype, result in zip(self.record_types, results, strict=True):
            if isinstance(result, DiscoveryError):
                failures.append(result)
                addresses.extend(self._last_by_type.get(rdtype, ()))
                continue
            if isinstance(result, BaseException):
                raise result
            if result.nxdomain:  # authoritative: the name does not exist at all
                self._last_by_type.clear()
                self.empty_reason = (f"NXDOMAIN: {name} does not exist "
                                     f"({self.querier.source})")
                return [], result.ttl
            ttls.append(result.ttl)
            self._last_by_type[rdtype] = result.addresses
            addresses.extend(result.addresses)
        if len(failures) == len(self.record_types):
            raise failures[0]
        ttl = min(ttls)
        if failures:
            # Keep the fresh half; ask again soon for the half that failed.
            ttl = min(ttl, self.min_ttl)
        self.empty_reason = None if addresses else (
            f"{name} has no {' or '.join(self.record_types)} record (the name exists: an "
            f"empty answer from the {self.querier.source})")
        return self._endpoints(name, addresses), ttl

    def _endpoints(self, name: str, addresses: Sequence[str]) -> list[Endpoint]:
        endpoints = []
        for address in sorted(set(addresses), key=_address_sort_key):
            try:
                endpoints.append(Endpoint(address, self.port))
            except ConfigError as exc:
                self.malformed(f"{name} {address}", str(exc))
        return endpoints

    def _from_hosts(self, name: str, addresses: Sequence[str]) -> list[Endpoint]:
        """A name the hosts file answers: its addresses of the types asked, no DNS."""
        assert self.hosts is not None
        wanted = {"A": 4, "AAAA": 6}
        versions = {wanted[t] for t in self.record_types}
        kept = [a for a in addresses
                if ipaddress.ip_address(a.partition("%")[0]).version in versions]
        self._last_by_type.clear()
        self.empty_reason = None if kept else (
            f"{name} is in {self.hosts.path} with no {' or '.join(self.record_types)} "
            f"address (the hosts file answers before DNS)")
        return self._endpoints(name, kept)

    def describe(self) -> dict[str, Any]:
        source = self.querier.source
        if self.hosts is not None:
            source = f"{self.hosts.path} then {source}"
        return {"server": source, **super().describe()}


def _address_sort_key(address: str) -> tuple[int, bytes]:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return (2, address.encode())
    return (ip.version, ip.packed)

"""``srv://[server[:port]]/_service._proto.name`` — DNS SRV records per RFC 2782.

Every SRV record ``priority weight port target`` becomes one endpoint per
address of ``target``, with the record's own port. How RFC 2782's fields map
onto clientlb:

* **Priority** — "A client MUST attempt to contact the target host with the
  lowest-numbered priority it can reach". The distinct priorities become
  dense levels, the lowest first: priorities 10/20/30 give
  ``Endpoint.priority`` 0/1/2 (the balancer's failover levels). The raw value
  is kept in ``metadata["srv_priority"]``.
* **Weight** — the relative share inside one priority level, used as
  ``Endpoint.weight``. Weight 0: "In the presence of records containing
  weights greater than 0, records with weight 0 should have a very small
  chance of being selected". The RFC's own selection algorithm gives the
  weight-0 records of a level, together, a chance of 1/(T+1) where T is the
  sum of the level's weights; clientlb gives them exactly that share (each of
  ``n`` such records gets weight ``1/n``). When every record of a level has
  weight 0 (the RFC's "no server selection to do") they share it equally.
  A target with several addresses splits its weight among them, so the host's
  share stays what the record says. The raw value is ``metadata["srv_weight"]``.
* **Target "."** — "the service is decidedly not available at this domain":
  authoritative, the set becomes empty. A "." beside other records is
  skipped as malformed, as is a port of 0.
* **Addresses** — the additional section is used when the server sends the
  target's A/AAAA records there (RFC 2782: "it may be used"); otherwise they
  are queried, in parallel. A target that does not exist (NXDOMAIN) is
  skipped as malformed; a target whose lookup fails keeps its last known
  addresses.
* **TTL** — the smallest TTL among the SRV records and the addresses used.

NXDOMAIN or "no data" for the SRV name is authoritative (empty set); errors
and timeouts keep the last good set. Options are those of ``dns://``
(``timeout``, ``record_types``, ``tcp``, TTL and backoff options).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import dns.name
import dns.rdatatype

from .._core.endpoint import Endpoint
from .._core.errors import ConfigError, DiscoveryError
from .._core.target import Target
from ._refresh import TTLResolver
from .dns import DNSQuerier, QueryResult, check_record_types

__all__ = ["SRVResolver", "srv_weights"]

_MAX_PARALLEL_LOOKUPS = 32


def srv_weights(weights: Sequence[int]) -> list[float]:
    """Effective weights of the records of one priority level (RFC 2782, see above).

    >>> srv_weights([60, 40, 0])
    [60.0, 40.0, 1.0]
    >>> srv_weights([0, 0])
    [1.0, 1.0]
    """
    total = sum(weights)
    if total == 0:
        return [1.0] * len(weights)
    zeros = sum(1 for w in weights if w == 0)
    return [float(w) if w > 0 else 1.0 / zeros for w in weights]


class SRVResolver(TTLResolver):
    """``srv://[server[:port]]/_service._proto.name``: RFC 2782 SRV records, TTL-refreshed."""

    scheme = "srv"

    def __init__(self, target: Target, *, timeout: float = 5.0,
                 record_types: Sequence[str] = ("A", "AAAA"), tcp: bool = False,
                 **options: Any) -> None:
        super().__init__(target, **options)
        self.record_types = check_record_types(record_types)
        self.querier = DNSQuerier.for_target(target, timeout, tcp)
        # target host → addresses from its last successful lookup
        self._known: dict[str, list[str]] = {}

    async def resolve_once(self) -> tuple[list[Endpoint], float]:
        name = self.target.name
        answer = await self.querier.query(name, "SRV")
        if answer.nxdomain or answer.rrset is None:
            return [], answer.ttl
        ttl = answer.ttl
        records = []
        for rd in answer.rrset:
            label = f"{name} SRV {rd.priority} {rd.weight} {rd.port} {rd.target}"
            if rd.target == dns.name.root:
                if len(answer.rrset) == 1:  # RFC 2782: decidedly not available
                    return [], ttl
                self.malformed(label, "target '.' beside other records")
                continue
            if rd.port == 0:
                self.malformed(label, "port must be 1..65535, got 0")
                continue
            records.append((int(rd.priority), int(rd.weight), int(rd.port),
                            rd.target.to_text(omit_final_dot=True)))
        if not records:
            return [], ttl

        addresses, address_ttl, lookup_error = await self._addresses(
            {r[3] for r in records}, answer)
        if address_ttl is not None:
            ttl = min(ttl, address_ttl)

        levels = {p: i for i, p in enumerate(sorted({r[0] for r in records}))}
        by_level: dict[int, list[tuple[int, int, int, str]]] = defaultdict(list)
        for rec in records:
            by_level[rec[0]].append(rec)
        endpoints: list[Endpoint] = []
        for prio in sorted(by_level):
            level = by_level[prio]
            for (priority, weight, port, host), eff in zip(
                    level, srv_weights([r[1] for r in level]), strict=True):
                addrs = addresses.get(host)
                if not addrs:
                    continue
                metadata = {"srv_target": host, "srv_priority": priority, "srv_weight": weight}
                for addr in addrs:
                    try:
                        endpoints.append(Endpoint(addr, port, weight=eff / len(addrs),
                                                  priority=levels[priority],
                                                  metadata=metadata))
                    except ConfigError as exc:
                        self.malformed(f"{name} -> {host} {addr}", str(exc))
        if lookup_error is not None:
            if not endpoints:  # nothing resolved because of errors: not authoritative
                raise lookup_error
            ttl = min(ttl, self.min_ttl)  # ask again soon for the targets that failed
        return endpoints, ttl

    async def _addresses(self, hosts: set[str], answer: QueryResult
                         ) -> tuple[dict[str, list[str]], float | None, DiscoveryError | None]:
        """Addresses per target host: additional section first, then lookups."""
        found: dict[str, list[str]] = {}
        ttls: list[float] = []
        first_error: DiscoveryError | None = None
        if answer.response is not None:
            wanted = {dns.rdatatype.from_text(t) for t in self.record_types}
            for rrset in answer.response.additional:
                if rrset.rdtype not in wanted:
                    continue
                host = rrset.name.to_text(omit_final_dot=True)
                if host in hosts:
                    found.setdefault(host, []).extend(rd.address for rd in rrset)
                    ttls.append(float(rrset.ttl))
        missing = sorted(hosts - set(found))
        if missing:
            sem = asyncio.Semaphore(_MAX_PARALLEL_LOOKUPS)

            async def lookup(host: str, rdtype: str) -> QueryResult:
                async with sem:
                    return await self.querier.query(host, rdtype)

            jobs = [(h, t) for h in missing for t in self.record_types]
            results = await asyncio.gather(*(lookup(h, t) for h, t in jobs),
                                           return_exceptions=True)
            per_host: dict[str, list[QueryResult | DiscoveryError]] = defaultdict(list)
            for (host, _), result in zip(jobs, results, strict=True):
                if isinstance(result, (QueryResult, DiscoveryError)):
                    per_host[host].append(result)
                else:
                    raise result
            for host, host_results in per_host.items():
                ok = [r for r in host_results if isinstance(r, QueryResult)]
                errors = [r for r in host_results if isinstance(r, DiscoveryError)]
                if any(r.nxdomain for r in ok):
                    self.malformed(f"{self.target.name} -> {host}", "target does not exist "
                                   "(NXDOMAIN)")
                    continue
                if errors:
                    first_error = first_error or errors[0]
                    # keep what we knew; a new target that fails is left out for now
                    if host in self._known:
                        found[host] = self._known[host]
                    continue
                addrs = [a for r in ok for a in r.addresses]
                ttls.extend(r.ttl for r in ok if r.rrset is not None)
                if not addrs:
                    self.malformed(f"{self.target.name} -> {host}", "target has no address")
                    continue
                found[host] = addrs
        self._known = {h: a for h, a in found.items()}
        return found, (min(ttls) if ttls else None), first_error

    def describe(self) -> dict[str, Any]:
        return {"server": self.querier.source, **super().describe()}

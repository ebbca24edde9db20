"""clientlb — embeddable client-side load balancing for Python.

Point a :class:`LoadBalancer` at a target (a static list, DNS A/AAAA or SRV
records, Consul, etcd) and your own httpx, gRPC and raw TCP calls are spread
over its healthy backends, inside the process: no proxy, no sidecar, no
extra hop.
"""

from __future__ import annotations

import typing as _typing

from ._core.balancer import BalancerSnapshot, EndpointSnapshot, LoadBalancer, Pick
from ._core.endpoint import Endpoint, EndpointSet, EndpointSetDiff
from ._core.errors import (
    CircuitOpen,
    ClientLBError,
    ConfigError,
    ConnectError,
    DiscoveryError,
    NoEndpointAvailable,
)
from ._core.outcome import Outcome
from ._core.state import EndpointState, Health
from ._core.target import Target, parse_target
from ._engine.hedging import Hedging
from ._engine.retry import RetryBudget, RetryPolicy
from ._health import (
    FailurePercentage,
    HealthCheck,
    OutlierDetection,
    SlowStart,
    SuccessRate,
)
from ._strategies import (
    STRATEGIES,
    LeastRequest,
    Maglev,
    PeakEwma,
    Picker,
    Random,
    RingHash,
    RoundRobin,
    Strategy,
    WeightedRoundRobin,
)
from ._subset import Aperture, RandomSubset, SubsetSnapshot

# The integrations (httpx, TCP), discovery (dnspython) and operations (OpenTelemetry,
# configuration files) are imported on first use: ``import clientlb`` stays cheap
# for a program that only picks (tests/test_packaging.py pins what it may import).
_LAZY: dict[str, str] = {
    "AsyncHTTPTransport": "._http.transport",
    "HTTPTransport": "._http.transport",
    "TransportClosed": "._http.transport",
    "CookieAffinity": "._http.affinity",
    "HeaderAffinity": "._http.affinity",
    "hash_by_client_ip": "._http.affinity",
    "hash_by_cookie": "._http.affinity",
    "hash_by_header": "._http.affinity",
    "Registry": "._ops.registry",
    "Telemetry": "._ops.telemetry",
    "instrument": "._ops.telemetry",
    "ResolverStats": "._resolvers",  # importing it registers dns/srv/consul/etcd
    "Resolver": "._resolvers.base",
    "BalancedSocket": "._tcp",
    "BalancedSSLSocket": "._tcp",
    "BalancedStreamWriter": "._tcp",
    "aconnect_with": "._tcp",
    "connect": "._tcp",
    "connect_with": "._tcp",
    "open_connection": "._tcp",
}

if _typing.TYPE_CHECKING:  # what mypy and IDEs see: the same names, imported eagerly
    from ._http.affinity import (
        CookieAffinity,
        HeaderAffinity,
        hash_by_client_ip,
        hash_by_cookie,
        hash_by_header,
    )
    from ._http.transport import AsyncHTTPTransport, HTTPTransport, TransportClosed
    from ._ops.registry import Registry
    from ._ops.telemetry import Telemetry, instrument
    from ._resolvers import ResolverStats
    from ._resolvers.base import Resolver
    from ._tcp import (
        BalancedSocket,
        BalancedSSLSocket,
        BalancedStreamWriter,
        aconnect_with,
        connect,
        connect_with,
        open_connection,
    )


if not _typing.TYPE_CHECKING:  # hidden from mypy, which would then accept any name

    def __getattr__(name: str) -> _typing.Any:
        """Import a lazily loaded public name on first access (PEP 562)."""
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module 'clientlb' has no attribute {name!r}")
        from importlib import import_module

        value = getattr(import_module(module, __name__), name)
        globals()[name] = value  # later accesses are plain module attributes
        return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__version__ = "0.1.0"

__all__ = [
    "STRATEGIES",
    "Aperture",
    "AsyncHTTPTransport",
    "BalancedSSLSocket",
    "BalancedSocket",
    "BalancedStreamWriter",
    "BalancerSnapshot",
    "CircuitOpen",
    "ClientLBError",
    "ConfigError",
    "ConnectError",
    "CookieAffinity",
    "DiscoveryError",
    "Endpoint",
    "EndpointSet",
    "EndpointSetDiff",
    "EndpointSnapshot",
    "EndpointState",
    "FailurePercentage",
    "HTTPTransport",
    "HeaderAffinity",
    "Health",
    "HealthCheck",
    "Hedging",
    "LeastRequest",
    "LoadBalancer",
    "Maglev",
    "NoEndpointAvailable",
    "Outcome",
    "OutlierDetection",
    "PeakEwma",
    "Pick",
    "Picker",
    "Random",
    "RandomSubset",
    "Registry",
    "Resolver",
    "ResolverStats",
    "RetryBudget",
    "RetryPolicy",
    "RingHash",
    "RoundRobin",
    "SlowStart",
    "Strategy",
    "SubsetSnapshot",
    "SuccessRate",
    "Target",
    "Telemetry",
    "TransportClosed",
    "WeightedRoundRobin",
    "__version__",
    "aconnect_with",
    "connect",
    "connect_with",
    "hash_by_client_ip",
    "hash_by_cookie",
    "hash_by_header",
    "instrument",
    "open_connection",
    "parse_target",
]

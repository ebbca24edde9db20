"""clientlb — embeddable client-side load balancing for Python.

Point a :class:`LoadBalancer` at a target (a static list, DNS A/AAAA or SRV
records, Consul, etcd) and your own httpx, gRPC and raw TCP calls are spread
over its healthy backends, inside the process: no proxy, no sidecar, no
extra hop.
"""

from __future__ import annotations

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
from ._engine.retry import RetryBudget, RetryPolicy
from ._health import (
    FailurePercentage,
    HealthCheck,
    OutlierDetection,
    SlowStart,
    SuccessRate,
)
from ._http.affinity import (
    CookieAffinity,
    HeaderAffinity,
    hash_by_client_ip,
    hash_by_cookie,
    hash_by_header,
)
from ._http.transport import AsyncHTTPTransport, HTTPTransport
from ._ops.registry import Registry
from ._ops.telemetry import Telemetry, instrument
from ._resolvers import ResolverStats  # importing registers dns/srv/consul/etcd
from ._resolvers.base import Resolver
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
from ._tcp import (
    BalancedSocket,
    BalancedSSLSocket,
    BalancedStreamWriter,
    aconnect_with,
    connect,
    connect_with,
    open_connection,
)

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

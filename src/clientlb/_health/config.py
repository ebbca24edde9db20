"""Health configuration: what the user writes, validated at construction.

The algorithms live next door (:mod:`.outlier`, :mod:`.checks`,
:mod:`.selection`, :mod:`.slow_start`, :mod:`.circuit`); this module only
holds frozen dataclasses with documented defaults, each with the reason for
it. Every bad value raises :class:`~clientlb.ConfigError` naming the field,
the value and the rule, at construction time, never at the first request.

Names follow Envoy's ``OutlierDetection``/``HealthCheck``/``SlowStartConfig``
protos and gRFC A50 so that a user of either recognises them; durations are
seconds (floats), percentages are 0..100 as in Envoy.
"""

from __future__ import annotations

import math
import ssl
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, fields
from typing import Literal

from .._core.errors import ConfigError, strict_arguments

__all__ = [
    "FailurePercentage",
    "HealthCheck",
    "OutlierDetection",
    "SlowStart",
    "SuccessRate",
]


def _seconds(owner: str, name: str, value: object, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"must be a finite number of seconds, got {value!r}",
                          field=f"{owner}.{name}")
    if value < 0 or (value == 0 and not allow_zero):
        rule = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"must be {rule} seconds, got {value!r}", field=f"{owner}.{name}")
    return float(value)


def _percent(owner: str, name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
        raise ConfigError(f"must be a percentage 0..100, got {value!r}", field=f"{owner}.{name}")
    return float(value)


def _count(owner: str, name: str, value: object, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"must be an integer >= {minimum}, got {value!r}",
                          field=f"{owner}.{name}")
    return value


def _optional_count(owner: str, name: str, value: object) -> int | None:
    return None if value is None else _count(owner, name, value)


def _gates(owner: str, detector: SuccessRate | FailurePercentage) -> None:
    """The gates both statistical detectors have, checked alike: Envoy's
    ``*_minimum_hosts``, ``*_request_volume`` and ``enforcing_*``."""
    _count(owner, "minimum_hosts", detector.minimum_hosts)
    _count(owner, "request_volume", detector.request_volume)
    _percent(owner, "enforcing", detector.enforcing)


@strict_arguments
@dataclass(frozen=True)
class SuccessRate:
    """Success-rate outlier detector (Envoy, gRFC A50 ``success_rate_ejection``).

    At each sweep, among endpoints with at least ``request_volume`` requests in
    the interval — if there are at least ``minimum_hosts`` of them — an
    endpoint whose success rate is below ``mean − stdev_factor × stdev`` *and*
    at least ``minimum_gap`` percentage points below the mean is ejected with
    probability ``enforcing`` %.

    Defaults are Envoy's and gRPC's: ``stdev_factor=1.9`` (Envoy's 1900/1000),
    ``minimum_hosts=5`` (a mean over fewer hosts says nothing), ``request_volume=100``
    (a rate over fewer requests is noise), ``enforcing=100`` — plus
    ``minimum_gap=5`` points, which neither has. Why: when every endpoint is
    healthy, the spread of their success rates is sampling noise, and the
    lowest of six is below ``mean − 1.9 × stdev`` often enough that, with 0.5–1%
    of errors everywhere, Envoy's rule alone ejected a healthy endpoint every
    minute or so in our simulation (tests/test_reliability_gray_failure.py).
    Noise at those rates is a point or two; a backend that is really failing
    (a gray failure at 30%) is tens of points below.
    """

    stdev_factor: float = 1.9
    minimum_hosts: int = 5
    request_volume: int = 100
    enforcing: float = 100.0
    minimum_gap: float = 5.0

    def __post_init__(self) -> None:
        f = self.stdev_factor
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 <= f < math.inf:
            raise ConfigError(f"must be a number >= 0, got {f!r}",
                              field="success_rate.stdev_factor")
        _percent("success_rate", "minimum_gap", self.minimum_gap)
        _gates("success_rate", self)


@strict_arguments
@dataclass(frozen=True)
class FailurePercentage:
    """Failure-percentage outlier detector (Envoy, gRFC A50 ``failure_percentage_ejection``).

    At each sweep, among endpoints with at least ``request_volume`` requests
    in the interval — if there are at least ``minimum_hosts`` of them — an
    endpoint whose failure percentage is above ``threshold`` is ejected with
    probability ``enforcing`` %. Unlike the success-rate detector it does not
    compare endpoints with each other, so it also catches the case where
    *most* endpoints fail in the same way (where a mean hides the outlier).

    Defaults (Envoy/gRPC): ``threshold=85``, ``minimum_hosts=5``,
    ``request_volume=50``, ``enforcing=100``. Off unless you pass one to
    ``OutlierDetection(failure_percentage=FailurePercentage())``, as in both.
    """

    threshold: float = 85.0
    minimum_hosts: int = 5
    request_volume: int = 50
    enforcing: float = 100.0

    def __post_init__(self) -> None:
        _percent("failure_percentage", "threshold", self.threshold)
        _gates("failure_percentage", self)


@strict_arguments
@dataclass(frozen=True)
class OutlierDetection:
    """Passive health checking: eject endpoints that the traffic shows to be failing.

    On by default (``LoadBalancer(outlier_detection=None)`` turns it off). The
    detectors, Envoy's "outlier detection" and gRFC A50:

    * ``consecutive_failures`` (Envoy ``consecutive_5xx``, default 5): that many
      failures in a row (any failing outcome, including connect failures
      unless ``split_local_origin_errors``) eject at once — the fastest reaction
      to a backend that went bad.
    * ``consecutive_gateway_failures`` (default ``None``, off): that many
      502/503/504/connect failures/timeouts in a row. Envoy detects but does not
      enforce it by default; it is useful with ``consecutive_failures=None``
      when your service's 500s are legitimate answers (validation errors).
    * ``consecutive_local_origin_failures`` (default 5): with
      ``split_local_origin_errors=True`` only, connect failures in a row.
    * ``success_rate`` (default :class:`SuccessRate`) and
      ``failure_percentage`` (default ``None``): statistical detectors run at
      each ``interval`` sweep.

    Ejection lasts ``base_ejection_time × multiplier`` capped by
    ``max(base_ejection_time, max_ejection_time)``; the multiplier grows by one
    per ejection and shrinks by one per sweep interval the endpoint spends
    un-ejected (gRFC A50), so a flapping endpoint stays out longer and longer
    while one that recovered is soon forgiven.

    ``max_ejection_percent`` (default 10) caps the share of ejected endpoints,
    counted *after* the ejection (Envoy #27066); with ``always_eject_one``
    (default True, Envoy's historical behaviour and gRPC's) one endpoint may be
    ejected whatever the percentage, so 10 % never makes detection inert on a
    pool of fewer than ten (Envoy #26877); and the *last* non-ejected endpoint of
    a pool is never ejected (Envoy #17504: a 1-host pool gains nothing from it).
    A 2-host pool can lose one host to ejection, a 3-host pool one; the panic
    threshold covers the rest.

    ``uneject_on_health_check`` (default False): with active checks, end an
    ejection after ``healthy_threshold`` passing probes made since. Envoy's
    ``successful_active_health_check_uneject_host`` defaults to true; here it
    is off because a ``/healthz`` that passes while real requests fail (the
    common case: the health endpoint does not touch the broken dependency)
    brings the endpoint back within seconds, again and again — flapping. Turn
    it on when your probe exercises what real traffic does.
    """

    consecutive_failures: int | None = 5
    consecutive_gateway_failures: int | None = None
    consecutive_local_origin_failures: int | None = 5
    split_local_origin_errors: bool = False
    interval: float = 10.0
    base_ejection_time: float = 30.0
    max_ejection_time: float = 300.0
    max_ejection_percent: float = 10.0
    always_eject_one: bool = True
    enforcing_consecutive_failures: float = 100.0
    enforcing_consecutive_gateway_failures: float = 100.0
    enforcing_consecutive_local_origin_failures: float = 100.0
    success_rate: SuccessRate | None = field(default_factory=SuccessRate)
    failure_percentage: FailurePercentage | None = None
    uneject_on_health_check: bool = False

    def __post_init__(self) -> None:
        o = "outlier_detection"
        _optional_count(o, "consecutive_failures", self.consecutive_failures)
        _optional_count(o, "consecutive_gateway_failures", self.consecutive_gateway_failures)
        _optional_count(o, "consecutive_local_origin_failures",
                        self.consecutive_local_origin_failures)
        for switch in ("split_local_origin_errors", "always_eject_one",
                       "uneject_on_health_check"):
            if not isinstance(getattr(self, switch), bool):
                raise ConfigError(f"must be True or False, got {getattr(self, switch)!r}",
                                  field=f"{o}.{switch}")
        _seconds(o, "interval", self.interval)
        _seconds(o, "base_ejection_time", self.base_ejection_time)
        _seconds(o, "max_ejection_time", self.max_ejection_time)
        _percent(o, "max_ejection_percent", self.max_ejection_percent)
        _percent(o, "enforcing_consecutive_failures", self.enforcing_consecutive_failures)
        _percent(o, "enforcing_consecutive_gateway_failures",
                 self.enforcing_consecutive_gateway_failures)
        _percent(o, "enforcing_consecutive_local_origin_failures",
                 self.enforcing_consecutive_local_origin_failures)
        # a table from a configuration file becomes the detector's settings
        for name, cls in (("success_rate", SuccessRate),
                          ("failure_percentage", FailurePercentage)):
            value = getattr(self, name)
            if isinstance(value, bool):
                value = cls() if value else None
            elif isinstance(value, Mapping):
                unknown = sorted(str(k) for k in value if k not in {f.name for f in fields(cls)})
                if unknown:
                    raise ConfigError(f"unknown key {unknown[0]!r}; expected keys among "
                                      f"{', '.join(f.name for f in fields(cls))}",
                                      field=f"{o}.{name}")
                try:
                    value = cls(**value)
                except TypeError as exc:
                    raise ConfigError(f"{exc}; expected keys among "
                                      f"{', '.join(f.name for f in fields(cls))}",
                                      field=f"{o}.{name}") from None
            if value is not None and not isinstance(value, cls):
                raise ConfigError(f"must be a {cls.__name__}, a table of its settings, or "
                                  f"None, got {value!r}", field=f"{o}.{name}")
            object.__setattr__(self, name, value)

    def ejection_time(self, multiplier: int) -> float:
        """How long an ejection lasts for the given multiplier (>= 1)."""
        cap = max(self.base_ejection_time, self.max_ejection_time)
        return min(self.base_ejection_time * multiplier, cap)


HealthCheckKind = Literal["http", "tcp", "grpc"]


@strict_arguments
@dataclass(frozen=True)
class HealthCheck:
    """Active health checks: probe every endpoint in the background.

    ``HealthCheck()`` probes ``GET /healthz`` over HTTP every 5 s;
    ``HealthCheck(kind="tcp")`` only connects; ``HealthCheck(kind="grpc")``
    calls ``grpc.health.v1.Health/Check`` (needs the ``grpc`` extra).

    Args:
        kind: ``"http"``, ``"tcp"`` or ``"grpc"``.
        path: HTTP path (default ``/healthz``).
        expected_statuses: HTTP statuses that pass (default 200–399, as
            Kubernetes ``httpGet`` probes: a redirect still proves the process
            answers).
        host: the HTTP ``Host`` header and TLS server name (default: the
            balancer's ``name``, the logical service name, so virtual-hosted
            and TLS backends answer as they do to real traffic).
        tls: ``True`` (verify with the system CAs), an ``ssl.SSLContext``, or
            ``False`` (default, plain HTTP / plaintext gRPC).
        port: probe this port instead of the endpoint's (an admin port).
        grpc_service: the service name asked for (default ``""``: the server
            as a whole, as grpc.health.v1 specifies).
        interval: seconds between probes of one endpoint (default 5 s: a dead
            backend is out within ``unhealthy_threshold × interval`` = 15 s
            while 100 clients × 1 probe/5 s stay negligible load).
        timeout: a probe slower than this fails (default 1 s; a health
            endpoint that needs longer is not healthy).
        jitter: each wait is spread by ± this fraction (default 0.1) so that
            many clients started together do not probe in lock-step.
        healthy_threshold: successes in a row to become healthy again
            (default 2: one lucky answer does not bring a flapping backend back).
        unhealthy_threshold: failures in a row to become unhealthy (default 3,
            as Kubernetes: one lost packet does not take a backend out).
        no_traffic_interval: the slower interval for a *healthy* endpoint that
            received no request for that long (default 60 s, Envoy's): idle
            endpoints are not hammered; unhealthy and ejected ones keep the
            normal interval so that they come back quickly.
        initial_health: state of a newly discovered endpoint before its first
            probe: ``"healthy"`` (default: healthy until proven otherwise; the
            first probe starts at once) or ``"unhealthy"`` (wait for a passing
            probe, as Envoy and gRPC do; one passing probe is then enough).
        max_concurrency: probes in flight at once per balancer (default 64).
    """

    kind: HealthCheckKind = "http"
    path: str = "/healthz"
    expected_statuses: Collection[int] = range(200, 400)
    host: str | None = None
    tls: bool | ssl.SSLContext = False
    port: int | None = None
    grpc_service: str = ""
    interval: float = 5.0
    timeout: float = 1.0
    jitter: float = 0.1
    healthy_threshold: int = 2
    unhealthy_threshold: int = 3
    no_traffic_interval: float = 60.0
    initial_health: Literal["healthy", "unhealthy"] = "healthy"
    max_concurrency: int = 64

    def __post_init__(self) -> None:
        h = "health_check"
        if self.kind not in ("http", "tcp", "grpc"):
            raise ConfigError(f"must be 'http', 'tcp' or 'grpc', got {self.kind!r}",
                              field=f"{h}.kind")
        if not isinstance(self.path, str) or not self.path.startswith("/"):
            raise ConfigError(f"must be a path starting with '/', got {self.path!r}",
                              field=f"{h}.path")
        statuses = self.expected_statuses
        if (isinstance(statuses, (str, bytes)) or not isinstance(statuses, Collection)
                or not statuses
                or not all(isinstance(s, int) and 100 <= s <= 599 for s in statuses)):
            raise ConfigError(f"must be a non-empty collection of HTTP statuses 100..599, got "
                              f"{statuses!r}", field=f"{h}.expected_statuses")
        if self.host is not None and (not isinstance(self.host, str) or not self.host):
            raise ConfigError(f"must be a non-empty string or None, got {self.host!r}",
                              field=f"{h}.host")
        if not isinstance(self.tls, (bool, ssl.SSLContext)):
            raise ConfigError(f"must be a bool or an ssl.SSLContext, got {self.tls!r}",
                              field=f"{h}.tls")
        if self.port is not None and (isinstance(self.port, bool) or not isinstance(
                self.port, int) or not 1 <= self.port <= 65535):
            raise ConfigError(f"must be 1..65535 or None, got {self.port!r}", field=f"{h}.port")
        if not isinstance(self.grpc_service, str):
            raise ConfigError(f"must be a string, got {self.grpc_service!r}",
                              field=f"{h}.grpc_service")
        _seconds(h, "interval", self.interval)
        _seconds(h, "timeout", self.timeout)
        _seconds(h, "no_traffic_interval", self.no_traffic_interval)
        j = self.jitter
        if isinstance(j, bool) or not isinstance(j, (int, float)) or not 0 <= j < 1:
            raise ConfigError(f"must be a fraction 0 <= jitter < 1, got {j!r}",
                              field=f"{h}.jitter")
        _count(h, "healthy_threshold", self.healthy_threshold)
        _count(h, "unhealthy_threshold", self.unhealthy_threshold)
        _count(h, "max_concurrency", self.max_concurrency)
        if self.initial_health not in ("healthy", "unhealthy"):
            raise ConfigError(f"must be 'healthy' or 'unhealthy', got {self.initial_health!r}",
                              field=f"{h}.initial_health")


@strict_arguments
@dataclass(frozen=True)
class SlowStart:
    """Ramp the weight of new and returning endpoints up over ``window`` seconds.

    A backend that just started (cold caches, JIT, empty connection pools) or
    just came back from an ejection gets its full share only gradually:
    effective weight = ``weight × max(min_weight_percent/100, (t/window)^(1/aggression))``
    (Envoy's ``SlowStartConfig`` formula), for every strategy — the load-aware
    ones included, where the reduced weight scales the candidate's cost.

    Defaults: ``window=30 s`` (long enough for a JVM or a cache to warm, short
    enough not to waste capacity), ``aggression=1.0`` (linear, Envoy's
    default), ``min_weight_percent=10`` (Envoy's: never starve the endpoint of
    the traffic it needs to warm up). Off unless ``slow_start=`` is given, as
    in Envoy: the balancer cannot know whether your backends need it.
    """

    window: float = 30.0
    aggression: float = 1.0
    min_weight_percent: float = 10.0

    def __post_init__(self) -> None:
        _seconds("slow_start", "window", self.window)
        a = self.aggression
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not 0 < a < math.inf:
            raise ConfigError(f"must be a number > 0, got {a!r}", field="slow_start.aggression")
        _percent("slow_start", "min_weight_percent", self.min_weight_percent)
        if self.min_weight_percent == 0:
            raise ConfigError("must be > 0 (a weight of 0 would never let the endpoint warm up)",
                              field="slow_start.min_weight_percent")

"""Health and resilience: which endpoints may take traffic, and how much.

* :mod:`.config` — the user-facing settings (``HealthCheck``,
  ``OutlierDetection``, ``SuccessRate``, ``FailurePercentage``, ``SlowStart``).
* :mod:`.outlier` — passive detection from outcomes (Envoy, gRFC A50).
* :mod:`.checks` — active probes (HTTP, TCP, grpc.health.v1).
* :mod:`.selection` — priorities, panic threshold, zone preference.
* :mod:`.slow_start` — weight ramp for new and returning endpoints.
* :mod:`.circuit` — concurrency caps that fail fast.
* :mod:`.manager` — the glue: ``LoadBalancer._select`` delegates to it.
* :mod:`.view` — ``BalancerView``, all the manager may see and do of its balancer.

``docs/health.md`` documents every option with the incident it prevents.
"""

from __future__ import annotations

from .config import FailurePercentage, HealthCheck, OutlierDetection, SlowStart, SuccessRate
from .manager import HealthManager

__all__ = [
    "FailurePercentage",
    "HealthCheck",
    "HealthManager",
    "OutlierDetection",
    "SlowStart",
    "SuccessRate",
]

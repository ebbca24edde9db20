"""``/metrics``: the OpenTelemetry instruments of clientlb, in the Prometheus text format.

clientlb records its metrics with OpenTelemetry (:mod:`clientlb._ops.telemetry`).
The control room gives them a Prometheus face without touching the
application's own OpenTelemetry set-up: one process-wide
:class:`~clientlb.Telemetry` on a private ``MeterProvider`` whose
``PrometheusMetricReader`` writes into a private ``prometheus_client``
registry (not the global one, so an application that exports its own
metrics sees no duplicate series).

A registry's balancers are instrumented with it when ``/metrics`` is first
scraped (and new ones at each scrape), so a process nobody scrapes pays
nothing; ``clientlb serve`` builds its registry on it from the start.
"""

from __future__ import annotations

import inspect
import threading
from typing import Any

from .._ops.registry import Registry
from .._ops.telemetry import Telemetry

__all__ = ["CONTENT_TYPE", "prometheus_telemetry", "scrape"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_lock = threading.Lock()
_state: tuple[Telemetry, Any] | None = None


def prometheus_telemetry() -> Telemetry:
    """The process-wide :class:`~clientlb.Telemetry` behind ``/metrics`` (created on first use)."""
    return _prometheus()[0]


def _prometheus() -> tuple[Telemetry, Any]:
    global _state
    with _lock:
        if _state is None:
            from opentelemetry.exporter.prometheus import PrometheusMetricReader
            from opentelemetry.sdk.metrics import MeterProvider
            from prometheus_client import CollectorRegistry

            collector_registry: Any = CollectorRegistry(auto_describe=True)
            if "registry" in inspect.signature(PrometheusMetricReader).parameters:
                reader = PrometheusMetricReader(registry=collector_registry)
            else:  # older exporters write into prometheus_client's global registry
                from prometheus_client import REGISTRY

                reader = PrometheusMetricReader()
                collector_registry = REGISTRY
            provider = MeterProvider(metric_readers=[reader])
            # Span events stay with the application's own telemetry (no duplicates).
            _state = (Telemetry(meter_provider=provider, span_events=False), collector_registry)
        return _state


def scrape(registry: Registry) -> bytes:
    """Instrument ``registry``'s balancers (idempotent) and render every metric as text."""
    from prometheus_client import generate_latest

    telemetry, collector_registry = _prometheus()
    for name in registry.names():
        try:
            # beside the application's own reporting (global providers), not instead
            telemetry.instrument(registry.get(name), replace_default=False)
        except KeyError:  # deleted meanwhile
            continue
    text: bytes = generate_latest(collector_registry)
    return text

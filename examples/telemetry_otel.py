"""Metrics and span events with OpenTelemetry (needs opentelemetry-sdk, as any exporter does).

Run: python examples/telemetry_otel.py
"""

from __future__ import annotations

import httpx
from _local_backends import start
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import clientlb

ok, failing = start("orders-1", "orders-2")
failing.status = 503

# --8<-- [start:setup]
# Your application's SDK set-up (here in memory; in production an OTLP or Prometheus reader).
reader = InMemoryMetricReader()
meters = MeterProvider(metric_readers=[reader])
spans = InMemorySpanExporter()
tracers = TracerProvider()
tracers.add_span_processor(SimpleSpanProcessor(spans))

lb = clientlb.LoadBalancer([ok.address, failing.address], strategy="round_robin",
                           name="orders")
clientlb.Telemetry(meter_provider=meters).instrument(lb)
# --8<-- [end:setup]

# --8<-- [start:traffic]
client = httpx.Client(transport=clientlb.HTTPTransport(lb), base_url="http://orders")
tracer = tracers.get_tracer("shop")
for _ in range(10):
    with tracer.start_as_current_span("GET /orders"):
        response = client.get("/")  # a 503 of orders-2 is retried on orders-1
    if "clientlb.tried" in response.extensions:
        traced = spans.get_finished_spans()[-1]  # the span of a request that was retried
# --8<-- [end:traffic]

# --8<-- [start:read]
data = reader.get_metrics_data()
assert data is not None
for metric in data.resource_metrics[0].scope_metrics[0].metrics:
    for point in metric.data.data_points:
        attrs = dict(point.attributes)
        value = getattr(point, "value", None)
        if value is None:
            value = f"count={point.count} sum={point.sum * 1000:.1f}ms"
        print(f"{metric.name:<32} {value!s:<24} {attrs}")
for event in traced.events:
    a = event.attributes or {}
    if event.name == "clientlb.attempt":
        print(f"span event clientlb.attempt: attempt {a['clientlb.attempt']} -> "
              f"{a['network.peer.address']}:{a['network.peer.port']} {a['clientlb.outcome']}")
    else:
        print(f"span event {event.name}: {a.get('clientlb.retry.reason')} on "
              f"{a.get('clientlb.endpoint')}")
# --8<-- [end:read]

client.close()
lb.close()
ok.close()
failing.close()
print("ok")

"""clientlb's metrics scraped the way Prometheus does it (needs opentelemetry-exporter-prometheus).

Run: python examples/telemetry_prometheus.py
"""

from __future__ import annotations

import re

import httpx
from _local_backends import start

import clientlb

web, broken = start("web-1", "web-2")
broken.status = 503

# --8<-- [start:setup]
from opentelemetry import metrics  # noqa: E402 - the application's own set-up
from opentelemetry.exporter.prometheus import PrometheusMetricReader  # noqa: E402
from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from prometheus_client import start_http_server  # noqa: E402

server, _ = start_http_server(port=0, addr="127.0.0.1")  # port 0: any free port
metrics.set_meter_provider(MeterProvider(metric_readers=[PrometheusMetricReader()]))

registry = clientlb.Registry()       # instruments its balancers with the global provider
lb = registry.create("web", [web.address, broken.address], strategy="round_robin")
# --8<-- [end:setup]

with httpx.Client(transport=clientlb.HTTPTransport(lb), base_url="http://web") as client:
    for _ in range(20):
        client.get("/")

# --8<-- [start:scrape]
port = server.server_address[1]
text = httpx.get(f"http://127.0.0.1:{port}/metrics").text   # what Prometheus scrapes
shown = ("clientlb_requests_total", "clientlb_endpoint_count", "clientlb_retries_total",
         "clientlb_request_duration_seconds_count")
for line in text.splitlines():
    if line.startswith(shown):
        print(re.sub(r',?otel_scope_\w+="[^"]*"', "", line))  # scope labels left out
# --8<-- [end:scrape]

registry.close()
server.shutdown()
web.close()
broken.close()
print("ok")

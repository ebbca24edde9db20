"""Every health option of clientlb, each configured and exercised for real.

The sections between ``--8<--`` markers are the code blocks of
``docs/health.md``. Backends are tiny HTTP servers on 127.0.0.1
(``_local_backends.py``); nothing else is contacted.

Run::

    python examples/health_options.py
"""

from __future__ import annotations

import time

import httpx
from _local_backends import start

import clientlb

a, b, c, d = start("a", "b", "c", "d")
A, B, C, D = a.address, b.address, c.address, d.address

# --8<-- [start:outlier]
lb = clientlb.LoadBalancer(
    [A, B, C],
    outlier_detection=clientlb.OutlierDetection(
        consecutive_failures=5,           # 5 failures in a row: ejected at once
        base_ejection_time=30.0,          # 30 s, 60 s, 90 s... for repeat offenders
        max_ejection_time=300.0,
        max_ejection_percent=10.0,        # but one endpoint may always be ejected
        success_rate=clientlb.SuccessRate(stdev_factor=1.9),
        failure_percentage=clientlb.FailurePercentage(threshold=85.0),
    ),
)
for _ in range(5):
    with lb.pick(prefer=A) as p:
        p.done(clientlb.Outcome.FAILURE)  # e.g. an HTTP 500 from p.endpoint
print("outlier:", {"A" if e.address == A else "other": e.state for e in lb.snapshot().endpoints})
# --8<-- [end:outlier]
lb.close()

# --8<-- [start:checks]
lb = clientlb.LoadBalancer(
    [A, B],
    name="users",                          # probes send Host: users
    health_check=clientlb.HealthCheck(
        kind="http", path="/healthz",      # or kind="tcp", kind="grpc"
        interval=5.0, timeout=1.0, jitter=0.1,
        unhealthy_threshold=3, healthy_threshold=2,
        no_traffic_interval=60.0,
        initial_health="healthy",          # or "unhealthy": wait for the first probe
    ),
)
deadline = time.monotonic() + 10
while lb.health_statistics()["probes_passed"] < 2 and time.monotonic() < deadline:
    time.sleep(0.02)
print("checks: probes passed =", lb.health_statistics()["probes_passed"])
# --8<-- [end:checks]
lb.close()

# --8<-- [start:panic]
lb = clientlb.LoadBalancer([A, B, C, D], panic_threshold=50.0,
                           outlier_detection=clientlb.OutlierDetection(max_ejection_percent=100))
for address in (A, B, C):  # three of four endpoints fail: 25 % healthy < 50 %
    for _ in range(5):
        with lb.pick(prefer=address) as p:
            p.done(clientlb.Outcome.FAILURE)
print("panic: mode =", lb.snapshot().mode,
      "picked:", sorted({lb.pick().endpoint.address == D for _ in range(50)}))
# --8<-- [end:panic]
lb.close()

# --8<-- [start:slow_start]
lb = clientlb.LoadBalancer([A, B], strategy="peak_ewma",
                           slow_start=clientlb.SlowStart(window=30.0, aggression=1.0,
                                                         min_weight_percent=10.0))
lb.add(C)  # a new instance: 10 % of its weight now, 100 % after 30 s
print("slow start:", {"new" if e.address == C else "old": round(e.effective_weight, 2)
                      for e in lb.snapshot().endpoints})
# --8<-- [end:slow_start]
lb.close()

# --8<-- [start:priorities]
lb = clientlb.LoadBalancer(
    [clientlb.Endpoint("127.0.0.1", a.server.server_address[1], priority=0),
     clientlb.Endpoint("127.0.0.1", b.server.server_address[1], priority=0),
     clientlb.Endpoint("127.0.0.1", c.server.server_address[1], priority=1)],  # standby
    overprovisioning_factor=1.4,
)
print("priorities:", {e.address: e.effective_weight for e in lb.snapshot().endpoints})
# --8<-- [end:priorities]
lb.close()

# --8<-- [start:zones]
port = {name: s.server.server_address[1] for name, s in zip("abcd", (a, b, c, d), strict=True)}
lb = clientlb.LoadBalancer(
    [clientlb.Endpoint("127.0.0.1", port["a"], zone="eu-west-1a"),
     clientlb.Endpoint("127.0.0.1", port["b"], zone="eu-west-1a"),
     clientlb.Endpoint("127.0.0.1", port["c"], zone="eu-west-1b"),
     clientlb.Endpoint("127.0.0.1", port["d"], zone="eu-west-1b")],
    local_zone="eu-west-1a",
)
print("zones: same-zone share =",
      sum(lb.pick().endpoint.port in (port["a"], port["b"]) for _ in range(100)), "%")
# --8<-- [end:zones]
lb.close()

# --8<-- [start:circuit]
lb = clientlb.LoadBalancer([A, B], max_requests=100, max_requests_per_endpoint=60)
held = [lb.pick() for _ in range(100)]
try:
    lb.pick()
except clientlb.CircuitOpen as exc:  # also a clientlb.NoEndpointAvailable
    print("circuit:", exc.scope, exc.limit, "->", exc)
for p in held:
    p.done()
# --8<-- [end:circuit]
lb.close()

# --8<-- [start:stats]
lb = clientlb.LoadBalancer([A, B], name="users", strategy="round_robin")
with httpx.Client(transport=clientlb.HTTPTransport(lb), base_url="http://users") as client:
    b.status = 500
    for _ in range(20):
        client.get("/")
    b.status = 200
stats = lb.health_statistics()
print("stats: ejections =", stats["ejections_total"], "ejected now =", stats["endpoints_ejected"])
# --8<-- [end:stats]
lb.close()

for s in (a, b, c, d):
    s.close()

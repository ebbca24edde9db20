"""A total deadline and httpx's timeouts: how they combine.

Run: python examples/http_deadline.py

Three backends that answer after 2 s. httpx's ``timeout=`` bounds *each attempt*
(connect, read, write, pool); the transport's ``deadline=`` bounds the *whole request*,
every retry and back-off included, and each attempt's timeouts are cut to the time left.
"""

from __future__ import annotations

import time

import httpx
from _local_backends import start

import clientlb

slow = start("slow-1", "slow-2", "slow-3")
for backend in slow:
    backend.delay = 2.0
addresses = [b.address for b in slow]

# --8<-- [start:without]
lb = clientlb.LoadBalancer(addresses, name="users", strategy="round_robin",
                           outlier_detection=None)
client = httpx.Client(transport=clientlb.HTTPTransport(lb), timeout=0.3)
start_at = time.monotonic()
try:
    client.get("http://users/")           # 3 attempts (the default policy) × 0.3 s each
except httpx.ReadTimeout as exc:
    print(f"timeout only: {type(exc).__name__} after {time.monotonic() - start_at:.1f}s")
client.close()
# --8<-- [end:without]

# --8<-- [start:deadline]
transport = clientlb.HTTPTransport(lb, deadline=0.5)   # or RetryPolicy(deadline=0.5)
client = httpx.Client(transport=transport, timeout=0.3)
start_at = time.monotonic()
try:
    client.get("http://users/")           # attempt 1: 0.3 s; attempt 2: cut to the 0.2 s left
except httpx.TimeoutException as exc:
    print(f"timeout + deadline: {type(exc).__name__} after "
          f"{time.monotonic() - start_at:.1f}s")
    print(exc)
client.close()
# --8<-- [end:deadline]

# --8<-- [start:per_request]
client = httpx.Client(transport=clientlb.HTTPTransport(lb), timeout=5.0)
start_at = time.monotonic()
try:  # one request with a tighter budget than the others
    client.get("http://users/", extensions={"clientlb.deadline": 0.25})
except httpx.TimeoutException as exc:
    print(f"per-request deadline: {type(exc).__name__} after "
          f"{time.monotonic() - start_at:.1f}s")
client.close()
# --8<-- [end:per_request]

lb.close()
for backend in slow:
    backend.close()
print("ok")

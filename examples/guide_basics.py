"""The guide's "basic configuration" chapter, end to end (run: python examples/guide_basics.py).

Starts three local HTTP backends, balances requests over them, adds and removes
one at runtime, and checks where the requests went.
"""

from __future__ import annotations

from collections import Counter

import httpx
from _local_backends import start

import clientlb

backends = start("web-1", "web-2", "web-3")
a, b, c = (x.address for x in backends)

# --8<-- [start:create]
lb = clientlb.LoadBalancer(
    [a, b],                      # the backend pool: "host:port" strings, or a target string
    strategy="round_robin",      # how requests are spread (default: peak_ewma)
    name="shop",                 # the logical service name: Host header, logs, metrics
)
# --8<-- [end:create]

# --8<-- [start:route]
client = httpx.Client(transport=clientlb.HTTPTransport(lb), base_url="http://shop")
served = Counter(client.get("/").headers["X-Backend"] for _ in range(6))
print("spread:", dict(sorted(served.items())))  # {'web-1': 3, 'web-2': 3}
# --8<-- [end:route]
assert served == {"web-1": 3, "web-2": 3}

# --8<-- [start:pick]
with lb.pick() as p:  # any client library: pick an endpoint, use it, report
    response = httpx.get(f"http://{p.endpoint.address}/")
    if response.status_code >= 500:
        p.done(clientlb.Outcome.FAILURE)  # otherwise leaving the block reports success
# --8<-- [end:pick]

# --8<-- [start:add]
lb.add(c)                # a new server joins the pool: it takes traffic at once
lb.remove(a)             # another leaves: its in-flight requests finish first
served = Counter(client.get("/").headers["X-Backend"] for _ in range(6))
print("after add/remove:", dict(sorted(served.items())))  # {'web-2': 3, 'web-3': 3}
# --8<-- [end:add]
assert served == {"web-2": 3, "web-3": 3}

# --8<-- [start:test]
snapshot = lb.snapshot()
for row in snapshot.endpoints:
    print(f"{row.address:<18} {row.state:<8} requests={row.requests} failures={row.failures}")
assert all(row.state == "healthy" for row in snapshot.endpoints)
# --8<-- [end:test]

client.close()
lb.close()
for backend in backends:
    backend.close()
print("ok")

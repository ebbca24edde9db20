"""The control API: create, reconfigure and delete balancers while traffic flows.

Run: python examples/control_api.py
"""

from __future__ import annotations

import threading
from collections import Counter

import httpx
from _local_backends import start

import clientlb

backends = start("api-1", "api-2", "api-3")
a, b, c = (x.address for x in backends)

# --8<-- [start:create]
registry = clientlb.Registry()
api = registry.create("api", [a, b], strategy="round_robin")
client = httpx.Client(transport=clientlb.HTTPTransport(api), base_url="http://api")
print(registry)                                   # <Registry [1 balancers: api]>
# --8<-- [end:create]

# --8<-- [start:update]
backends[0].delay = 0.3                           # a slow request is in flight...
slow = threading.Thread(target=client.get, args=("/",))
slow.start()
registry.update("api", strategy="least_request")  # ...while the strategy changes
slow.join()                                       # it completes normally
print("strategy now:", registry.get("api").strategy.name)
backends[0].delay = 0.0
# --8<-- [end:update]

# --8<-- [start:weights]
registry.update("api", strategy="round_robin", weights={a: 1, b: 3})
print("weights 1:3:", dict(sorted(Counter(
    client.get("/").headers["X-Backend"] for _ in range(40)).items())))  # api-1: 10, api-2: 30
# --8<-- [end:weights]

# --8<-- [start:drain]
api.add(c)                    # scale out: a new server in the pool
api.drain(a)                  # take one out for maintenance; its calls in flight finish
served = Counter(client.get("/").headers["X-Backend"] for _ in range(40))
print("while api-1 drains:", dict(sorted(served.items())))
assert "api-1" not in served
api.undrain(a)                # back in rotation
api.remove(b)                 # scale in
# --8<-- [end:drain]

# --8<-- [start:delete]
client.close()
drained = registry.delete("api", timeout=10)   # no new calls; waits for in-flight ones
print("deleted, drained cleanly:", drained)    # True
# --8<-- [end:delete]

for backend in backends:
    backend.close()
print("ok")

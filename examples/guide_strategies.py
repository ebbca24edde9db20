"""The guide's "strategies" chapter: each strategy shown on real local backends.

Run: python examples/guide_strategies.py
"""

from __future__ import annotations

import collections
import random
from collections import Counter
from collections.abc import Sequence

import httpx
from _local_backends import start

import clientlb
from clientlb import EndpointState  # what pickers return

backends = start("app-1", "app-2", "app-3")
addresses = [x.address for x in backends]


def spread(client: httpx.Client, n: int = 30, headers: dict[str, str] | None = None
           ) -> dict[str, int]:
    """How many of ``n`` requests each backend served."""
    counts = Counter(client.get("/", headers=headers).headers["X-Backend"] for _ in range(n))
    return dict(sorted(counts.items()))


# --8<-- [start:round_robin]
lb = clientlb.LoadBalancer(addresses, strategy="round_robin", name="app")
client = httpx.Client(transport=clientlb.HTTPTransport(lb), base_url="http://app")
print("round robin:", spread(client))  # {'app-1': 10, 'app-2': 10, 'app-3': 10}
# --8<-- [end:round_robin]
assert spread(client) == {"app-1": 10, "app-2": 10, "app-3": 10}
client.close()
lb.close()

# --8<-- [start:weights]
weighted = [clientlb.Endpoint.parse(addresses[0], weight=3),  # a bigger machine
            clientlb.Endpoint.parse(addresses[1], weight=1)]
lb = clientlb.LoadBalancer(weighted, strategy="round_robin", name="app")
client = httpx.Client(transport=clientlb.HTTPTransport(lb), base_url="http://app")
print("weights 3:1:", spread(client, 40))  # {'app-1': 30, 'app-2': 10}
lb.set_weight(addresses[1], 3)             # change a weight at runtime
print("weights 3:3:", spread(client, 40))  # {'app-1': 20, 'app-2': 20}
# --8<-- [end:weights]
client.close()
lb.close()

# --8<-- [start:least_request]
lb = clientlb.LoadBalancer(addresses, strategy="least_request", name="app",
                           rng=random.Random(7))
busy = [lb.pick(prefer=addresses[0]) for _ in range(2)]  # two long calls on app-1...
sent = collections.Counter()
for _ in range(20):                # ...so new calls go to the idle backends
    with lb.pick() as p:
        sent[p.endpoint.address] += 1
print("calls sent to the busy backend:", sent[addresses[0]])  # 0
for call in busy:
    call.done()
# --8<-- [end:least_request]
lb.close()

# --8<-- [start:ip_hash]
lb = clientlb.LoadBalancer(addresses, strategy="ring_hash", name="app")
client = httpx.Client(base_url="http://app", transport=clientlb.HTTPTransport(
    lb, hash_key=clientlb.hash_by_client_ip("X-Forwarded-For")))
for ip in ("203.0.113.7", "198.51.100.23"):
    seen = spread(client, 10, headers={"X-Forwarded-For": ip})
    print(f"client {ip} always reaches", list(seen))  # one backend per client address
    assert len(seen) == 1
# --8<-- [end:ip_hash]
client.close()
lb.close()

# --8<-- [start:sticky]
lb = clientlb.LoadBalancer(addresses, strategy="round_robin", name="app")
client = httpx.Client(base_url="http://app", transport=clientlb.HTTPTransport(
    lb, affinity=clientlb.CookieAffinity()))
first = client.get("/").headers["X-Backend"]   # the response sets an opaque cookie
print("sticky session stays on", first, spread(client, 10))  # {first: 10}
# --8<-- [end:sticky]
assert spread(client, 10) == {first: 10}
client.close()
lb.close()


# --8<-- [start:custom]
class FirstHealthy(clientlb.Strategy):
    """Active/standby: everything to the first endpoint that may take traffic."""

    name = "first_healthy"

    def build(self, endpoints: Sequence[EndpointState],
              weights: Sequence[float], rng: random.Random) -> clientlb.Picker:
        return _Always(endpoints[0])


class _Always(clientlb.Picker):
    def __init__(self, state: EndpointState) -> None:
        self.state = state

    def pick(self, key: object, now: float) -> EndpointState:
        return self.state


lb = clientlb.LoadBalancer(addresses, strategy=FirstHealthy(), name="app")
client = httpx.Client(transport=clientlb.HTTPTransport(lb), base_url="http://app")
print("custom strategy:", spread(client, 5))  # {'app-1': 5}
# --8<-- [end:custom]
assert spread(client, 5) == {"app-1": 5}
client.close()
lb.close()

for backend in backends:
    backend.close()
print("ok")

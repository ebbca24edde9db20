"""The guide's introduction and prerequisites, on real servers.

Starts three local HTTP backends, loses one with a balancer in front (no request
fails), reads a few targets the way a network engineer would, and sees a whole
zone of a two-zone pool fail (the traffic moves to the other zone).
"""

from __future__ import annotations

from collections import Counter

import httpx
from _local_backends import start

import clientlb

backends = start("web-1", "web-2", "web-3")
a, b, c = (x.address for x in backends)


def spread(client: httpx.Client, n: int = 10) -> dict[str, int]:
    """How many of ``n`` requests each backend served."""
    counts = Counter(client.get("/").headers["X-Backend"] for _ in range(n))
    return dict(sorted(counts.items()))


# --8<-- [start:why]
lb = clientlb.LoadBalancer([a, b, c], strategy="round_robin", name="shop")
client = httpx.Client(transport=clientlb.HTTPTransport(lb), base_url="http://shop")
backends[0].close()              # web-1 is lost: a crash, a scale-in, a zone outage
try:
    httpx.get(f"http://{a}/")    # a client that knows only web-1's address fails...
except httpx.ConnectError:
    print("straight to web-1: ConnectError")
statuses = Counter(client.get("/").status_code for _ in range(30))
print("through the balancer:", dict(statuses))  # {200: 30}: ...the balancer's do not
# --8<-- [end:why]
assert statuses == {200: 30}
client.close()
lb.close()

# --8<-- [start:targets]
for text in ("dns:///users.internal:8080", "srv:///_http._tcp.users.internal",
             "consul://127.0.0.1:8500/users?dc=eu1"):
    target = clientlb.parse_target(text)
    print(f"{target.scheme:<6} name={target.name} port={target.port} server={target.server}")
try:
    clientlb.parse_target("dns:///users.internal:80800")
except clientlb.ConfigError as exc:
    print("refused:", exc)
# --8<-- [end:targets]

# --8<-- [start:zones]
pool = [clientlb.Endpoint.parse(b, zone="eu-west-1a"),   # web-2, in the caller's zone
        clientlb.Endpoint.parse(c, zone="eu-west-1b")]   # web-3, in another zone
lb = clientlb.LoadBalancer(pool, name="shop", local_zone="eu-west-1a")
client = httpx.Client(transport=clientlb.HTTPTransport(lb), base_url="http://shop")
print("both zones up:", spread(client))        # {'web-2': 10}: no cross-zone traffic
backends[1].status = 503                       # eu-west-1a fails: web-2 answers 503
print("eu-west-1a down:", spread(client, 20))  # {'web-2': 1, 'web-3': 19}
# --8<-- [end:zones]
client.close()
lb.close()

backends[2].close()
print("ok")

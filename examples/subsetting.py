"""The guide's "subsetting" section: four client pods share six backends, two or three each.

Run: python examples/subsetting.py
"""

from __future__ import annotations

from collections import Counter

import httpx
from _local_backends import start

import clientlb

backends = start(*(f"web-{i}" for i in range(1, 7)))
addresses = [b.address for b in backends]
name_of = {b.address: b.name for b in backends}

# --8<-- [start:aperture]
# Four client pods (in production: four processes, each with its own index).
pods = [clientlb.LoadBalancer(addresses, name="web", strategy="round_robin",
                              subset=clientlb.Aperture(size=2, client_index=i, client_count=4))
        for i in range(4)]
served: Counter[str] = Counter()
for i, lb in enumerate(pods):
    with httpx.Client(transport=clientlb.HTTPTransport(lb), base_url="http://web") as client:
        mine = Counter(client.get("/").headers["X-Backend"] for _ in range(60))
    print(f"pod {i} uses", dict(sorted(mine.items())))
    served += mine
print("each backend served:", dict(sorted(served.items())))  # 40 each
# --8<-- [end:aperture]
assert set(served.values()) == {40}

# --8<-- [start:snapshot]
snap = pods[1].snapshot()
print(snap.subset)
print("in pod 1's subset:", sorted(name_of[e.address] for e in snap.endpoints if e.in_subset))
print("discovered:", len(pods[1].endpoints()))  # still all six
# --8<-- [end:snapshot]

# --8<-- [start:widening]
lb = pods[0]
own = [e.address for e in lb.snapshot().endpoints if e.in_subset]
for address in own[:2]:          # two of its three backends go away for maintenance
    lb.drain(address)
info = lb.snapshot().subset
assert info is not None
print(f"widened by {info.widened}: width {info.base_width:.2f} -> {info.width:.2f}")
for address in own[:2]:
    lb.undrain(address)
print("back to", lb.snapshot().subset.endpoints, "endpoints")  # type: ignore[union-attr]
# --8<-- [end:widening]

# --8<-- [start:peers]
# The clients' own service gives each one its place: here a static list standing for
# consul:///checkout (or dns:///checkout.internal:8080, etcd://...), and this process
# finds itself in it by its own address.
peers = "static://10.1.0.7:8080,10.1.0.3:8080,10.1.0.5:8080"
lb = clientlb.LoadBalancer(addresses, name="web",
                           subset=clientlb.Aperture(peers=peers, client_id="10.1.0.5:8080"))
info = lb.snapshot().subset
assert info is not None
print(f"place {info.client_index} of {info.client_count} ({info.place}), size {info.size}")
# --8<-- [end:peers]

for balancer in [*pods, lb]:
    balancer.close()
for b in backends:
    b.close()
print("ok")

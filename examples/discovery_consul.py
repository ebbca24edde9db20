"""Consul discovery (run: python examples/discovery_consul.py).

Consul is not packaged in any registry this project can install from, so this
example runs against the emulator of Consul's health API that the test suite
uses (tests/consul_emulator.py: blocking queries, ACL tokens, check statuses,
weights). Against a real agent only the address changes — or nothing at all,
since ``CONSUL_HTTP_ADDR`` and ``CONSUL_HTTP_TOKEN`` are read from the
environment as the ``consul`` CLI does.
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
from _local_backends import start

import clientlb

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.consul_emulator import ConsulEmulator  # the emulator, not Consul


def eventually(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit("timed out")
        time.sleep(0.01)


backends = start("web-1", "web-2", "web-3")
agent = ConsulEmulator(tokens={"app-token-123": {"web"}})
weights = {"Passing": 3, "Warning": 1}
for i, backend in enumerate(backends[:2], 1):
    host, port = backend.address.rsplit(":", 1)
    agent.register("web", f"web-{i}", address=host, port=int(port), tags=["v2"],
                   weights=weights)

# --8<-- [start:consul]
os.environ["CONSUL_HTTP_ADDR"] = agent.address    # or consul://host:port/web
os.environ["CONSUL_HTTP_TOKEN"] = "app-token-123"  # sent as X-Consul-Token only
lb = clientlb.LoadBalancer("consul:///web?tag=v2", strategy="round_robin",
                           resolver_options={"min_query_interval": 0.1})
client = httpx.Client(transport=clientlb.HTTPTransport(lb), base_url="http://web")
# --8<-- [end:consul]


def spread() -> dict[str, int]:
    return dict(sorted(Counter(client.get("/").headers["X-Backend"]
                               for _ in range(8)).items()))


print("passing:", spread())  # {'web-1': 4, 'web-2': 4}
agent.set_status("web", "web-1", "passing", "warning")  # Weights.Warning applies
eventually(lambda: {ep.weight for ep in lb.endpoints()} == {1, 3})
print("web-1 warning:", spread())  # {'web-1': 2, 'web-2': 6}
agent.set_status("web", "web-1", "critical")  # left out
eventually(lambda: len(lb.endpoints()) == 1)
print("web-1 critical:", spread())  # {'web-2': 8}
host, port = backends[2].address.rsplit(":", 1)
agent.register("web", "web-3", address=host, port=int(port), tags=["v2"], weights=weights)
eventually(lambda: len(lb.endpoints()) == 2)
print("web-3 registered:", spread())  # {'web-2': 4, 'web-3': 4}
print(lb.resolver)  # the token never shows: token=set

client.close()
lb.close()
agent.close()
for backend in backends:
    backend.close()
print("ok")

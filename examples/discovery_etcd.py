"""Follow auto-scaling through etcd (run: python examples/discovery_etcd.py).

Starts a real etcd (Debian's ``etcd-server``) on loopback in a temp directory
and three local HTTP backends. Backends register the way etcd's naming
package and grpc-go do — key ``services/web/<id>``, value
``{"Addr": "host:port", "Metadata": ...}`` — and the balancer follows every
put and delete through etcd's watch, while requests keep flowing. Then etcd
is stopped: the last good set stays and requests still succeed.
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable

import httpx
from _local_backends import start

import clientlb


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def eventually(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit("timed out")
        time.sleep(0.01)


etcd_bin = shutil.which("etcd")
if etcd_bin is None:
    sys.exit("etcd is not installed (Debian: apt-get install etcd-server)")
data_dir = tempfile.mkdtemp(prefix="clientlb-etcd-")
port, peer = free_port(), free_port()
url, peer_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{peer}"
etcd = subprocess.Popen(
    [etcd_bin, "--name", "demo", "--data-dir", data_dir, "--listen-client-urls", url,
     "--advertise-client-urls", url, "--listen-peer-urls", peer_url,
     "--initial-advertise-peer-urls", peer_url, "--initial-cluster", f"demo={peer_url}",
     "--logger", "zap", "--log-level", "error"],
    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def etcd_up() -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False


eventually(etcd_up, timeout=20)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def register(key: str, address: str) -> None:  # what a backend does when it starts
    value = json.dumps({"Addr": address, "Metadata": {"version": "1"}})
    httpx.post(f"{url}/v3/kv/put", json={"key": b64(key), "value": b64(value)}).raise_for_status()


def deregister(key: str) -> None:  # ...and when it stops
    httpx.post(f"{url}/v3/kv/deleterange", json={"key": b64(key)}).raise_for_status()


backends = start("web-1", "web-2", "web-3")
register("services/web/1", backends[0].address)
register("services/web/2", backends[1].address)

# --8<-- [start:etcd]
lb = clientlb.LoadBalancer(f"etcd://127.0.0.1:{port}/services/web", strategy="round_robin",
                           name="web")
client = httpx.Client(transport=clientlb.HTTPTransport(lb), base_url="http://web")
# --8<-- [end:etcd]


def spread(n: int = 6) -> dict[str, int]:
    return dict(sorted(Counter(client.get("/").headers["X-Backend"]
                               for _ in range(n)).items()))


print("two registered:", spread())  # {'web-1': 3, 'web-2': 3}

register("services/web/3", backends[2].address)  # scale out
eventually(lambda: len(lb.endpoints()) == 3)
print("after scale-out:", spread())  # {'web-1': 2, 'web-2': 2, 'web-3': 2}

deregister("services/web/1")  # scale in
eventually(lambda: len(lb.endpoints()) == 2)
print("after scale-in:", spread())  # {'web-2': 3, 'web-3': 3}

etcd.terminate()  # the registry goes away: the last good set stays
etcd.wait()
eventually(lambda: lb.resolver.statistics().errors > 0)  # type: ignore[attr-defined]
print("etcd stopped:", spread(), "endpoints kept:", len(lb.endpoints()))

client.close()
lb.close()
for backend in backends:
    backend.close()
shutil.rmtree(data_dir, ignore_errors=True)
print("ok")

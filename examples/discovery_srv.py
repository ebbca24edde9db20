"""DNS SRV discovery with a real DNS server (run: python examples/discovery_srv.py).

Starts Knot DNS (Debian's ``knot``) on loopback with a zone ``example.`` and
three local HTTP backends published as SRV records (RFC 2782): two at
priority 10 with weights 3 and 1, one at priority 20 as the failover level.
The balancer follows the records by their TTL; a record added with an RFC
2136 dynamic update is picked up within the TTL, and ``lb.refresh()`` asks
again at once.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.update
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


knotd = shutil.which("knotd") or ("/usr/sbin/knotd" if Path("/usr/sbin/knotd").exists() else None)
if knotd is None:
    sys.exit("knotd is not installed (Debian: apt-get install knot)")
backends = start("web-1", "web-2", "web-3")
p1, p2, p3 = (int(b.address.rsplit(":", 1)[1]) for b in backends)
work = Path(tempfile.mkdtemp(prefix="clientlb-knot-"))
port = free_port()
(work / "knot.conf").write_text(f"""
server:
    rundir: "{work}"
    listen: 127.0.0.1@{port}
database:
    storage: "{work}"
acl:
  - id: local_update
    address: 127.0.0.1
    action: update
template:
  - id: default
    storage: "{work}"
    file: "%s.zone"
zone:
  - domain: example
    acl: local_update
""")
(work / "example.zone").write_text(f"""
$ORIGIN example.
$TTL 1
@    SOA ns.example. admin.example. 1 60 60 3600 1
@    NS  ns.example.
ns   A   127.0.0.1
host A   127.0.0.1
_http._tcp.web SRV 10 3 {p1} host.example.
_http._tcp.web SRV 10 1 {p2} host.example.
_http._tcp.web SRV 20 0 {p3} host.example.
""")
knot = subprocess.Popen([knotd, "-c", str(work / "knot.conf")],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def answers() -> bool:
    try:
        dns.query.udp(dns.message.make_query("example.", "SOA"), "127.0.0.1", port=port,
                      timeout=0.2)
        return True
    except (OSError, dns.exception.Timeout):
        return False


eventually(answers)

# --8<-- [start:srv]
lb = clientlb.LoadBalancer(
    f"srv://127.0.0.1:{port}/_http._tcp.web.example",  # the DNS server is optional
    strategy="round_robin",
    resolver_options={"min_ttl": 0.5},  # follow the 1 s TTL closely (default floor: 5 s)
)
client = httpx.Client(transport=clientlb.HTTPTransport(lb), base_url="http://web.example")
# --8<-- [end:srv]
lb.wait_ready()  # the first answer (picks wait for it; endpoints() does not)
for ep in sorted(lb.endpoints(), key=lambda e: e.port):
    print(f"{ep.address}: priority level {ep.priority}, weight {ep.weight:g}, "
          f"SRV {ep.metadata['srv_priority']} {ep.metadata['srv_weight']}")
served = Counter(client.get("/").headers["X-Backend"] for _ in range(8))
print("spread:", dict(sorted(served.items())))  # {'web-1': 6, 'web-2': 2}: weights 3:1

# A fourth record joins through an RFC 2136 dynamic update.
update = dns.update.UpdateMessage("example.")
update.add("_http._tcp.web", 1, "SRV", f"10 4 {p3} host.example.")
dns.query.tcp(update, "127.0.0.1", port=port, timeout=5)
lb.refresh()  # no need to wait for the TTL
eventually(lambda: any(ep.port == p3 and ep.priority == 0 for ep in lb.endpoints()))
served = Counter(client.get("/").headers["X-Backend"] for _ in range(8))
print("after the update:", dict(sorted(served.items())))  # {'web-1': 3, 'web-2': 1, 'web-3': 4}

client.close()
lb.close()
knot.terminate()
knot.wait()
for backend in backends:
    backend.close()
shutil.rmtree(work, ignore_errors=True)
print("ok")

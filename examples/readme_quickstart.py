"""The README's quick start, exactly as written there (tests/test_readme.py checks that
the README's block is this file's ``quickstart`` section, and runs this file).

Three local HTTP backends listen on the ports the README names, so that the block
runs as a reader would paste it.

Run::

    python examples/readme_quickstart.py
"""

# ruff: noqa: E402 - the README's block starts with its imports, after the backends start

from _local_backends import Backend

backends = [Backend(f"users-{i}", port=18081 + i) for i in range(3)]

# --8<-- [start:quickstart]
import socket

import httpx

import clientlb

lb = clientlb.LoadBalancer(
    "static://127.0.0.1:18081,127.0.0.1:18082,127.0.0.1:18083",  # or dns://, srv://, ...
    name="users",                  # the logical name: Host header and TLS name
    strategy="peak_ewma",          # the default: P2C on latency x in-flight
)
with httpx.Client(transport=clientlb.HTTPTransport(lb)) as client:
    r = client.get("http://users/profile/42")   # goes to a picked backend, retried if refused
    print(r.status_code, r.text.strip())

with lb.pick() as p:               # any other protocol: pick, call, report
    sock = socket.create_connection((p.endpoint.host, p.endpoint.port), timeout=2)
    sock.close()                   # ... your protocol in between
print(lb.snapshot())               # per endpoint: state, weight, in flight, EWMA, ejections
lb.close()
# --8<-- [end:quickstart]

for backend in backends:
    backend.close()
print("ok")

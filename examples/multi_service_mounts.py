"""Several balanced services behind one ``httpx.Client``, with httpx ``mounts=``.

Two logical services, ``users`` and ``orders``, each with two real backends
on loopback. One client routes by URL host: ``http://users/...`` through the
``users`` balancer, ``http://orders/...`` through the ``orders`` balancer
(each with its own strategy, affinity and retry budget), and any other URL
through httpx's ordinary transport. ``users`` uses sticky sessions: the first
response sets a cookie naming its backend by an opaque token, and the client's
cookie jar keeps every later ``users`` request on that backend. ``orders``
hashes the ``X-Customer`` header onto a ``maglev`` table, so each customer
always lands on the same ``orders`` backend.

Run::

    python examples/multi_service_mounts.py
"""

from __future__ import annotations

import collections
import http.server
import threading
from typing import Any

import httpx

import clientlb


def start_backend(name: str) -> str:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            body = f"{name}\n".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"127.0.0.1:{server.server_address[1]}"


def main() -> None:
    users_backends = [start_backend("users-1"), start_backend("users-2")]
    orders_backends = [start_backend("orders-1"), start_backend("orders-2")]
    elsewhere = start_backend("not-balanced")

    # --- the part you would write -----------------------------------------------------------
    # --8<-- [start:mounts]
    users = clientlb.LoadBalancer(users_backends, name="users", strategy="round_robin")
    orders = clientlb.LoadBalancer(orders_backends, name="orders", strategy="maglev")
    mounts = {
        "http://users": clientlb.HTTPTransport(users, affinity=clientlb.CookieAffinity()),
        "http://orders": clientlb.HTTPTransport(
            orders, hash_key=clientlb.hash_by_header("X-Customer")),
    }
    with httpx.Client(mounts=mounts) as client:
        # --8<-- [end:mounts]
        # --8<-- [start:sticky]
        first = client.get("http://users/profile")
        print(f"users: first answer from {first.text.strip()}, "
              f"cookie {first.cookies['clientlb-affinity']!r}")
        sticky = collections.Counter(client.get("http://users/profile").text.strip()
                                     for _ in range(10))
        print(f"users: next 10 requests served by {dict(sticky)}")
        # --8<-- [end:sticky]

        homes = {}
        for customer in ("ann", "bob", "cyd", "dan"):
            seen = {client.get("http://orders/list", headers={"X-Customer": customer}).text.strip()
                    for _ in range(5)}
            homes[customer] = sorted(seen)
        print(f"orders: backends per customer {homes}")
        print(f"plain URL: {client.get(f'http://{elsewhere}/').text.strip()}")
    # -----------------------------------------------------------------------------------------
    users.close()
    orders.close()


if __name__ == "__main__":
    main()

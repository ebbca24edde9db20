"""Balanced httpx in 10 lines: three local backends, one of them down.

Starts two real HTTP servers on 127.0.0.1 and names a third port where nothing
listens, then sends requests of every method through one ``httpx.Client``
whose transport is a :class:`clientlb.HTTPTransport`. The URL names the
logical service (``http://users/``); each request goes to a picked backend,
the ``Host`` header stays ``users``, and a request that meets the dead port
(connection refused: it never reached a backend) is retried on another one —
so not one request fails, whatever its method.

Run::

    python examples/http_quickstart.py
"""

from __future__ import annotations

import collections
import http.server
import logging
import socket
import threading
from typing import Any

import httpx

import clientlb


def start_backend(name: str) -> str:
    """A threaded HTTP/1.1 server on a free loopback port that answers with its name."""

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = f"{name} saw Host: {self.headers['Host']}\n".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_PUT = do_DELETE = do_GET

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"127.0.0.1:{server.server_address[1]}"


def dead_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="log: %(message)s")
    endpoints = [start_backend("alpha"), start_backend("beta"), dead_port()]

    # --- the part you would write -----------------------------------------------------------
    # --8<-- [start:client]
    lb = clientlb.LoadBalancer(endpoints, name="users", strategy="round_robin")
    with httpx.Client(transport=clientlb.HTTPTransport(lb), base_url="http://users") as client:
        answers = collections.Counter()
        failed = 0
        for i in range(30):
            method = ("GET", "POST", "PUT", "DELETE")[i % 4]
            try:
                answers[client.request(method, "/hello", content=b"hi").text.strip()] += 1
            except httpx.HTTPError:
                failed += 1
    # --8<-- [end:client]
    # -----------------------------------------------------------------------------------------

    for text, count in sorted(answers.items()):
        print(f"{count:3d} × {text}")
    print(f"failed requests: {failed}")
    for row in lb.snapshot().endpoints:
        print(f"{row.address:>21}  requests={row.requests:2d} failures={row.failures}")
    lb.close()


if __name__ == "__main__":
    main()

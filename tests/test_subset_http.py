"""Subsetting over real sockets: clients connect only to the backends of their subset.

Ten HTTP/1.1 backends on 127.0.0.1 count the connections they accept; five
clients, each with its own balancer (``Aperture(size=2)``, client ``i`` of 5) and
``clientlb.HTTPTransport``, send their requests one client after the other, so
each backend's new connections can be put down to the client that opened them.
"""

from __future__ import annotations

import http.server
import random
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import clientlb


class CountingBackend:
    """A keep-alive HTTP/1.1 server that counts the connections it accepts and the requests."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests = 0
        self._lock = threading.Lock()
        backend = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                with backend._lock:
                    backend.connections += 1

            def do_GET(self) -> None:
                with backend._lock:
                    backend.requests += 1
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def counts(self) -> tuple[int, int]:
        with self._lock:
            return self.connections, self.requests

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def backends() -> Iterator[list[CountingBackend]]:
    started = [CountingBackend() for _ in range(10)]
    yield started
    for b in started:
        b.close()


@pytest.mark.parametrize("strategy", ["round_robin", "peak_ewma"])
def test_each_client_connects_only_to_its_subset(backends: list[CountingBackend],
                                                 strategy: str) -> None:
    """5 clients × 10 backends: 10 connections instead of 50, each backend used by one
    client, and (round robin) exactly the same number of requests on every backend."""
    by_address = {b.address: b for b in backends}
    for index in range(5):
        before = {a: b.counts() for a, b in by_address.items()}
        lb = clientlb.LoadBalancer(list(by_address), name="svc", strategy=strategy,
                                   rng=random.Random(index),
                                   subset=clientlb.Aperture(size=2, client_index=index,
                                                            client_count=5))
        subset = {e.address for e in lb.snapshot().endpoints if e.in_subset}
        assert len(subset) == 2
        with httpx.Client(transport=clientlb.HTTPTransport(lb), base_url="http://svc") as client:
            for _ in range(40):
                assert client.get("/").status_code == 200
        lb.close()
        opened = {a for a, b in by_address.items() if b.counts()[0] > before[a][0]}
        assert opened == subset, f"client {index} connected outside its subset"
        assert all(by_address[a].counts()[0] - before[a][0] == 1 for a in subset)  # keep-alive
    assert sum(b.counts()[0] for b in backends) == 10  # a full mesh would be 50
    assert all(b.counts()[0] == 1 for b in backends)
    if strategy == "round_robin":
        assert [b.counts()[1] for b in backends] == [20] * 10

"""Health in action: outlier ejection, recovery, a failing /healthz, panic.

Starts three real HTTP servers on 127.0.0.1 (``a``, ``b``, ``c``), each with a
``/healthz`` whose status the script changes, and sends requests through one
``httpx.Client`` on a :class:`clientlb.HTTPTransport`. Then, step by step:

1. all healthy — round robin spreads evenly;
2. ``b`` answers 500 — outlier detection ejects it after 5 failures in a row;
3. ``b`` recovers — it is back once its (shortened) ejection time is over;
4. ``c``'s ``/healthz`` fails — active checks take it out: no traffic at all;
5. every ``/healthz`` fails — panic: traffic spreads over all three rather
   than nowhere, and the balancer's mode says ``panic``.

Run::

    python examples/health_failover.py
"""

from __future__ import annotations

import collections
import http.server
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

import clientlb


class Backend:
    """A threaded HTTP/1.1 server: ``status`` for requests, ``health`` for /healthz."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.status = 200
        self.health = 200
        backend = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                status = backend.health if self.path == "/healthz" else backend.status
                body = backend.name.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("X-Backend", backend.name)
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit("timed out waiting for the balancer")
        time.sleep(0.02)


def main() -> None:
    backends = {name: Backend(name) for name in "abc"}
    by_address = {b.address: name for name, b in backends.items()}
    lb = clientlb.LoadBalancer(
        [b.address for b in backends.values()],
        name="users",
        strategy="round_robin",
        # short times so that the demo takes seconds; the defaults are 5 s / 30 s
        health_check=clientlb.HealthCheck(interval=0.1, unhealthy_threshold=2,
                                          healthy_threshold=2, jitter=0.0),
        outlier_detection=clientlb.OutlierDetection(base_ejection_time=1.0, interval=1.0),
    )
    client = httpx.Client(transport=clientlb.HTTPTransport(lb), base_url="http://users")

    def states() -> str:
        rows = lb.snapshot().endpoints
        return " ".join(f"{by_address[e.address]}={e.state}" for e in rows)

    def state(name: str) -> str:
        return lb.snapshot().by_address()[backends[name].address].state

    def step(title: str, n: int = 30) -> None:
        served: collections.Counter[str] = collections.Counter()
        errors = 0
        for _ in range(n):
            response = client.get("/work")
            served[response.headers["X-Backend"]] += 1
            errors += response.status_code >= 500
        shares = " ".join(f"{name}={served[name]}" for name in "abc")
        print(f"{title:<28} served: {shares}  errors={errors}  mode={lb.mode}  [{states()}]")

    with lb, client:
        step("1 all healthy")
        backends["b"].status = 500
        step("2 b answers 500")
        backends["b"].status = 200
        wait_for(lambda: state("b") == "healthy")
        step("3 b recovered")
        backends["c"].health = 503
        wait_for(lambda: state("c") == "unhealthy")
        step("4 c fails /healthz")
        for b in backends.values():
            b.health = 503
        wait_for(lambda: lb.mode == "panic")
        step("5 every /healthz fails")
        stats = lb.health_statistics()
        print("ejections:", stats["ejections_total"], " panics:", stats["panic_entered"],
              " probes passed/failed:", stats["probes_passed"], "/", stats["probes_failed"])
    for b in backends.values():
        b.close()


if __name__ == "__main__":
    main()

"""Recovery after a total outage: every endpoint down, then one comes back.

Run by hand::

    .venv/bin/python benchmarks/outage.py [--down 1.5] [--after 5] [--smoke]

Three endpoints on 127.0.0.1 with nothing listening. Clients send GETs through clientlb
(sync: one thread in a loop; async: an ``httpx.AsyncClient`` at concurrency 8) with the
default retry policy; after ``--down`` seconds an HTTP server starts on one of the three
ports. Two variants: outlier detection on (Envoy's defaults: the dead endpoints get
ejected during the outage, for 30 s) and off.

Reported per variant: the time from the server's start to the first success, and the
failure rate of the requests sent from 1 s after the start until ``--after`` seconds
after it (the issue 13 target: at least 99 % succeed). Before the engine's connectivity
(issue 12/13), the ejected variant's first success came ~28 s after the start, and 11.5 %
to 61 % of requests failed for the following seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import http.server
import socket
import threading
import time
from dataclasses import dataclass

import httpx

import clientlb


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # headers and body go out in two writes: without this, Nagle's algorithm and
        # the client's delayed ACK add 40 ms to every keep-alive response
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@dataclass
class Result:
    mode: str
    ejection: bool
    first_success: float | None  # seconds after the server started
    sent: int  # requests sent in the measured window
    failed: int

    @property
    def failure_rate(self) -> float:
        return self.failed / self.sent if self.sent else 1.0


def _balancer(ports: list[int], ejection: bool) -> clientlb.LoadBalancer:
    options = {} if ejection else {"outlier_detection": None}
    return clientlb.LoadBalancer([f"127.0.0.1:{p}" for p in ports], name="svc",
                                 **options)  # type: ignore[arg-type]


class _Recorder:
    def __init__(self, down: float, after: float) -> None:
        self.start = time.monotonic()
        self.down = down
        self.after = after
        self.up_at: float | None = None
        self.first_success: float | None = None
        self.sent = 0
        self.failed = 0

    def done(self) -> bool:
        return self.up_at is not None and time.monotonic() > self.up_at + self.after

    def record(self, sent_at: float, ok: bool) -> None:
        up = self.up_at
        if up is None or sent_at < up:
            return
        if ok and self.first_success is None:
            self.first_success = time.monotonic() - up
        if sent_at >= up + 1.0:
            self.sent += 1
            self.failed += not ok


def _serve_later(port: int, rec: _Recorder) -> _Server:
    while time.monotonic() < rec.start + rec.down:
        time.sleep(0.01)
    server = _Server(("127.0.0.1", port), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    rec.up_at = time.monotonic()
    return server


def run_sync(ejection: bool, down: float, after: float) -> Result:
    ports = free_ports(3)
    rec = _Recorder(down, after)
    holder: list[_Server] = []
    starter = threading.Thread(target=lambda: holder.append(_serve_later(ports[1], rec)))
    starter.start()
    with _balancer(ports, ejection) as lb, httpx.Client(
            transport=clientlb.HTTPTransport(lb), timeout=1.0) as client:
        while not rec.done():
            sent_at = time.monotonic()
            try:
                ok = client.get("http://svc/").status_code == 200
            except httpx.HTTPError:
                ok = False
            rec.record(sent_at, ok)
    starter.join()
    for s in holder:
        s.shutdown()
        s.server_close()
    return Result("sync", ejection, rec.first_success, rec.sent, rec.failed)


async def _arun(ejection: bool, down: float, after: float, concurrency: int) -> Result:
    ports = free_ports(3)
    rec = _Recorder(down, after)
    holder: list[_Server] = []
    starter = threading.Thread(target=lambda: holder.append(_serve_later(ports[1], rec)))
    starter.start()
    async with _balancer(ports, ejection) as lb, httpx.AsyncClient(
            transport=clientlb.AsyncHTTPTransport(lb), timeout=1.0) as client:

        async def worker() -> None:
            while not rec.done():
                sent_at = time.monotonic()
                try:
                    ok = (await client.get("http://svc/")).status_code == 200
                except httpx.HTTPError:
                    ok = False
                rec.record(sent_at, ok)
                if not ok:
                    await asyncio.sleep(0)  # let the other workers and the loop run

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    starter.join()
    for s in holder:
        s.shutdown()
        s.server_close()
    return Result("async", ejection, rec.first_success, rec.sent, rec.failed)


def run(down: float = 1.5, after: float = 5.0, concurrency: int = 8) -> list[Result]:
    results = []
    for ejection in (True, False):
        results.append(run_sync(ejection, down, after))
        results.append(asyncio.run(_arun(ejection, down, after, concurrency)))
    return results


def table(results: list[Result]) -> str:
    rows = ["| client | outlier detection | first success after restart | requests "
            "from +1 s | failed | success rate |",
            "|---|---|---|---|---|---|"]
    for r in results:
        first = "never" if r.first_success is None else f"{r.first_success * 1000:.0f} ms"
        rows.append(f"| {r.mode} | {'on' if r.ejection else 'off'} | {first} | {r.sent} | "
                    f"{r.failed} | {100 * (1 - r.failure_rate):.2f} % |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--down", type=float, default=1.5, help="seconds of total outage")
    parser.add_argument("--after", type=float, default=5.0,
                        help="seconds measured after the endpoint is back")
    parser.add_argument("--smoke", action="store_true", help="short run (tests)")
    args = parser.parse_args()
    down, after = (0.5, 2.0) if args.smoke else (args.down, args.after)
    print(table(run(down, after)))


if __name__ == "__main__":
    main()

"""What does balancing inside httpx cost? clientlb against direct calls and two proxies.

Run by hand (it starts Debian's nginx and HAProxy itself, on loopback ports,
with temporary configurations)::

    .venv/bin/python benchmarks/http_overhead.py [--requests 3000] [--rounds 3]
        [--mode both|sync|async] [--instructions] [--smoke]
    .venv/bin/python benchmarks/http_overhead.py --micro     # no servers, a few seconds

Four nginx backends answer ``200 ok`` from memory. In one run, for the
sequential ``httpx.Client`` and for ``httpx.AsyncClient`` at concurrency 32:

(a) direct to one backend — the ceiling;
(b) direct, rotating by hand over the 4 backends — httpx's own cost of
    spreading requests, the limit for any balancer inside httpx;
(c) clientlb's transport over the 4 backends (round_robin, and the default
    peak_ewma; default retry policy and outlier detection on);
(d) through an nginx reverse proxy (round robin, upstream keep-alive);
(e) through HAProxy (roundrobin, keep-alive);
(f) (c) peak_ewma with hedging on but never firing (``Hedging(delay=10)``): what a
    hedgeable request costs the client when no hedge is sent — async, a task and a
    wait per request; sync, the attempt runs in a hedge thread while the caller waits.

Each configuration runs ``--rounds`` times, interleaved; the best
requests/s and the lowest client CPU time per request (``process_time``, all
threads of the client process: on a shared machine it is steadier than wall
time) are reported, with ratios to (b) and (a). The target of issue 3:
(c) ≥ 0.97 × (b), and ahead of (d) and (e).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

import clientlb


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def binary(name: str) -> str:
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.access(f"/usr/sbin/{name}", os.X_OK)
                                  else None)
    if path is None:
        sys.exit(f"{name} is not installed: apt-get install -y nginx-light haproxy")
    return path


@contextmanager
def servers(tmp: Path) -> Iterator[tuple[list[int], int, int]]:
    """4 nginx backends, an nginx proxy and HAProxy in front of them."""
    backends = [free_port() for _ in range(4)]
    nginx_proxy, haproxy_port = free_port(), free_port()
    upstream = "\n".join(f"        server 127.0.0.1:{p};" for p in backends)
    listens = "\n".join(f"        listen 127.0.0.1:{p};" for p in backends)
    (tmp / "nginx.conf").write_text(f"""
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    keepalive_requests 1000000;
    upstream backends {{
{upstream}
        keepalive 64;
    }}
    server {{
{listens}
        location / {{ return 200 "ok\\n"; }}
    }}
    server {{
        listen 127.0.0.1:{nginx_proxy};
        location / {{
            proxy_pass http://backends;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
""")
    servers_lines = "\n".join(f"    server b{i} 127.0.0.1:{p}" for i, p in enumerate(backends))
    (tmp / "haproxy.cfg").write_text(f"""
global
    maxconn 4096
    nbthread 1
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    option http-keep-alive
frontend fe
    bind 127.0.0.1:{haproxy_port}
    default_backend be
backend be
    balance roundrobin
    http-reuse always
{servers_lines}
""")
    nginx = subprocess.Popen([binary("nginx"), "-c", str(tmp / "nginx.conf"), "-p", str(tmp)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    haproxy = subprocess.Popen([binary("haproxy"), "-f", str(tmp / "haproxy.cfg"), "-db"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for port in (*backends, nginx_proxy, haproxy_port):
            wait_port(port)
        yield backends, nginx_proxy, haproxy_port
    finally:
        for proc in (nginx, haproxy):
            proc.terminate()
        for proc in (nginx, haproxy):
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()


Setup = Callable[[], tuple[object, Callable[[int], str]]]


def configs(backends: list[int], nginx: int, haproxy: int, is_async: bool
            ) -> dict[str, tuple[Callable[[], object], Callable[[int], str]]]:
    client_cls = httpx.AsyncClient if is_async else httpx.Client
    transport_cls = clientlb.AsyncHTTPTransport if is_async else clientlb.HTTPTransport
    urls = [f"http://127.0.0.1:{p}/" for p in backends]
    addresses = [f"127.0.0.1:{p}" for p in backends]

    def balanced(strategy: str, hedging: clientlb.Hedging | None = None
                 ) -> Callable[[], object]:
        def make() -> object:
            lb = clientlb.LoadBalancer(addresses, name="svc", strategy=strategy)
            return client_cls(transport=transport_cls(lb, hedging=hedging))  # type: ignore[operator]
        return make

    return {
        "(a) direct, one backend": (client_cls, lambda i: urls[0]),
        "(b) direct, rotating by hand": (client_cls, lambda i: urls[i & 3]),
        "(c) clientlb round_robin": (balanced("round_robin"), lambda i: "http://svc/"),
        "(c) clientlb peak_ewma": (balanced("peak_ewma"), lambda i: "http://svc/"),
        "(d) nginx proxy": (client_cls, lambda i: f"http://127.0.0.1:{nginx}/"),
        "(e) HAProxy": (client_cls, lambda i: f"http://127.0.0.1:{haproxy}/"),
        "(f) clientlb peak_ewma, hedging on, never fires": (
            balanced("peak_ewma", clientlb.Hedging(delay=10.0)), lambda i: "http://svc/"),
    }


def run_sync(make: Callable[[], object], url: Callable[[int], str], n: int
             ) -> tuple[float, float]:
    client = make()
    assert isinstance(client, httpx.Client)
    with client:
        for i in range(min(200, n)):  # warm-up: connections, caches
            client.get(url(i))
        start, cpu = time.perf_counter(), time.process_time()
        for i in range(n):
            client.get(url(i))
        return n / (time.perf_counter() - start), (time.process_time() - cpu) / n


async def run_async(make: Callable[[], object], url: Callable[[int], str], n: int,
                    concurrency: int) -> tuple[float, float]:
    client = make()
    assert isinstance(client, httpx.AsyncClient)
    async with client:
        await asyncio.gather(*(client.get(url(i)) for i in range(concurrency * 4)))
        per_task = n // concurrency

        async def worker(w: int) -> None:
            for i in range(per_task):
                await client.get(url(w + i))

        start, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        done = per_task * concurrency
        return done / (time.perf_counter() - start), (time.process_time() - cpu) / done


def worker(config: str, ports: list[int], n: int) -> None:
    """``--worker``: warm up, then ``n`` sequential requests of one configuration (run under
    callgrind by ``--instructions``)."""
    cfg = configs(ports[:4], ports[4], ports[5], is_async=False)
    make, url = next(v for k, v in cfg.items() if k.startswith(config))
    client = make()
    assert isinstance(client, httpx.Client)
    with client:
        for i in range(50 + n):
            client.get(url(i))


def instructions(ports: list[int], low: int, high: int) -> dict[str, float]:
    """Client instructions per request under callgrind: (I(high) - I(low)) / (high - low),
    so that start-up and imports cancel out. Repeatable whatever the machine's load."""
    out: dict[str, float] = {}
    for config in ("(a)", "(b)", "(c) clientlb round_robin", "(c) clientlb peak_ewma", "(f)"):
        counts = []
        for n in (low, high):
            with tempfile.NamedTemporaryFile(suffix=".callgrind") as f:
                subprocess.run(
                    ["valgrind", "--tool=callgrind", f"--callgrind-out-file={f.name}",
                     sys.executable, __file__, "--worker", config,
                     ",".join(map(str, ports)), str(n)],
                    check=True, capture_output=True)
                summary = next(line for line in Path(f.name).read_text().splitlines()
                               if line.startswith(("summary:", "totals:")))
                counts.append(int(summary.split()[1]))
        out[config] = (counts[1] - counts[0]) / (high - low)
    return out


def micro(n: int = 50000) -> None:
    """``--micro``: the transports' own work per request, against an in-memory pool that
    answers at once (no network): httpx.HTTPTransport against clientlb.HTTPTransport."""
    import httpcore

    class MemoryPool:
        def handle_request(self, request: httpcore.Request) -> httpcore.Response:
            return httpcore.Response(200, headers=[(b"Content-Length", b"3")], content=b"ok\n")

        def close(self) -> None:
            pass

    lb = clientlb.LoadBalancer([f"127.0.0.1:{8000 + i}" for i in range(4)], name="svc",
                               strategy="round_robin")
    balanced = clientlb.HTTPTransport(lb)
    balanced._router._pool_factory = lambda shard: MemoryPool()  # type: ignore[assignment]
    plain = httpx.HTTPTransport()
    plain._pool = MemoryPool()  # type: ignore[assignment]
    cases = [("httpx.HTTPTransport", plain, httpx.Request("GET", "http://127.0.0.1:8000/")),
             ("clientlb.HTTPTransport", balanced, httpx.Request("GET", "http://svc/"))]
    best = {name: float("inf") for name, _, _ in cases}
    for _ in range(3):
        for name, transport, request in cases:
            for _ in range(1000):
                transport.handle_request(request).close()
            start = time.perf_counter()
            for _ in range(n):
                transport.handle_request(request).close()
            best[name] = min(best[name], (time.perf_counter() - start) / n)
    for name, seconds in best.items():
        print(f"{name:>24}: {seconds * 1e6:.2f} µs per request (in-memory pool)")


def table(title: str, results: dict[str, tuple[float, float]]) -> str:
    b, b_cpu = results["(b) direct, rotating by hand"]
    a, _ = results["(a) direct, one backend"]
    lines = [f"### {title}", "",
             "| configuration | requests/s | × (b) | × (a) | client CPU µs/request | "
             "CPU × (b) |", "|---|---:|---:|---:|---:|---:|"]
    for name, (rps, cpu) in results.items():
        lines.append(f"| {name} | {rps:,.0f} | {rps / b:.3f} | {rps / a:.3f} | "
                     f"{cpu * 1e6:,.0f} | {b_cpu / cpu:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--mode", choices=("both", "sync", "async"), default="both")
    parser.add_argument("--smoke", action="store_true",
                        help="a few seconds: 64 requests, one round (CI keeps the script alive)")
    parser.add_argument("--instructions", action="store_true",
                        help="also count client instructions per request under callgrind "
                             "(sequential (a), (b), (c), (f); a few minutes)")
    parser.add_argument("--micro", action="store_true",
                        help="only the transports' own work, against an in-memory pool")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.micro:
        micro()
        return
    if args.worker:
        config, ports, n = args.worker
        worker(config, [int(p) for p in ports.split(",")], int(n))
        return
    if args.smoke:
        args.requests, args.rounds = 64, 1
    with tempfile.TemporaryDirectory() as tmp, servers(Path(tmp)) as (backends, ngx, hap):
        out = []
        for is_async in {"both": (False, True), "sync": (False,), "async": (True,)}[args.mode]:
            cfg = configs(backends, ngx, hap, is_async)
            best: dict[str, tuple[float, float]] = dict.fromkeys(cfg, (0.0, float("inf")))
            for _ in range(args.rounds):
                for name, (make, url) in cfg.items():
                    if is_async:
                        rps, cpu = asyncio.run(run_async(make, url, args.requests,
                                                         args.concurrency))
                    else:
                        rps, cpu = run_sync(make, url, args.requests)
                    best[name] = (max(best[name][0], rps), min(best[name][1], cpu))
            title = (f"httpx.AsyncClient, concurrency {args.concurrency}" if is_async
                     else "httpx.Client, sequential")
            out.append(table(title, best))
            print(out[-1] + "\n", flush=True)
        if args.instructions:
            counts = instructions([*backends, ngx, hap], 100, 400)
            base = counts["(b)"]
            print("### client instructions per request (callgrind, sequential)\n")
            print("| configuration | instructions/request | (b) ÷ this |\n|---|---:|---:|")
            for name, count in counts.items():
                print(f"| {name} | {count:,.0f} | {base / count:.3f} |")
            print()
    print(f"python {platform.python_version()}, httpx {httpx.__version__}, "
          f"{os.cpu_count()} CPUs, {args.requests} requests × best of {args.rounds} rounds")


if __name__ == "__main__":
    main()

"""Shared machinery of the scenario benchmarks (tail_latency.py, failover.py).

* **Backends**: ``python benchmarks/_scenario.py --serve SPEC`` is a child process that
  serves several minimal HTTP/1.1 backends (asyncio, keep-alive) on given loopback ports.
  Each backend has a capacity (``workers`` requests served at once; more wait in line), a
  per-request delay, and faults scheduled relative to the ``go`` line the parent writes on
  its stdin: turning ``slow`` 10× slower, periodic ``stall``s (every request waits until
  the stall ends, like a GC pause), answering 503 to a share of requests, ``hang`` (read
  the request, never answer), ``die`` (close the listener and every connection). On
  ``dump`` it prints every request it received (time since ``go``, backend, status) as
  JSON. Running the backends out of the client's process keeps them off its GIL.
* **Proxies**: nginx (round robin and ``least_conn``) and HAProxy (``leastconn``) in
  front of the same ports, with temporary configurations (as in http_overhead.py).
* **Client**: ``httpx.AsyncClient`` at a fixed concurrency for a fixed duration; each
  request's start, latency and status (or error) are recorded.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# ---------------------------------------------------------------------------- backends


async def _serve(ports: list[int], specs: list[dict[str, Any]]) -> None:
    loop = asyncio.get_running_loop()
    records: list[tuple[float, int, int]] = []
    t0 = [time.monotonic()]
    going = [False]
    sems = [asyncio.Semaphore(s.get("workers", 4)) for s in specs]
    writers: list[set[asyncio.StreamWriter]] = [set() for _ in specs]
    servers: list[asyncio.AbstractServer] = []
    rng = random.Random(7)

    def since_go() -> float:
        return time.monotonic() - t0[0] if going[0] else -1.0

    def active(spec: dict[str, Any], name: str) -> bool:
        start = spec.get(name)
        return start is not None and since_go() >= start

    async def stall_wait(spec: dict[str, Any]) -> None:
        every = spec.get("stall_every")
        if not every:
            return
        t = time.monotonic() - t0[0]
        phase = (t - spec.get("stall_phase", 0.0)) % every
        if phase < spec["stall_for"]:
            await asyncio.sleep(spec["stall_for"] - phase)

    def handler(i: int) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any]:
        spec = specs[i]

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writers[i].add(writer)
            try:
                while True:
                    try:
                        head = await reader.readuntil(b"\r\n\r\n")
                    except (asyncio.IncompleteReadError, ConnectionError):
                        return
                    if not head:
                        return
                    if active(spec, "hang_from"):
                        records.append((since_go(), i, 0))
                        await reader.read()  # until the client gives up and closes
                        return
                    status = 200
                    if active(spec, "fail_from") and rng.random() < spec.get("fail_rate", 0.0):
                        status = 503
                    records.append((since_go(), i, status))
                    delay = spec.get("delay", 0.01)
                    if active(spec, "slow_from"):
                        delay *= spec.get("slow_factor", 10.0)
                    async with sems[i]:
                        await stall_wait(spec)
                        await asyncio.sleep(delay)
                        await stall_wait(spec)
                    reason = b"OK" if status == 200 else b"Service Unavailable"
                    writer.write(b"HTTP/1.1 %d %s\r\nContent-Length: 2\r\nX-Backend: %d\r\n\r\nok"
                                 % (status, reason, i))
                    await writer.drain()
            except ConnectionError:
                pass
            finally:
                writers[i].discard(writer)
                writer.close()

        return handle

    for i, port in enumerate(ports):
        servers.append(await asyncio.start_server(handler(i), "127.0.0.1", port,
                                                  reuse_address=True, backlog=256))
    print("ready", flush=True)

    def die(i: int) -> None:
        servers[i].close()
        for w in list(writers[i]):
            w.transport.abort()

    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := (await reader.readline()).decode().strip():
        if line == "go":
            t0[0], going[0] = time.monotonic(), True
            records.clear()
            for i, spec in enumerate(specs):
                if spec.get("die_at") is not None:
                    loop.call_later(spec["die_at"], die, i)
        elif line == "dump":
            print(json.dumps(records), flush=True)


@contextmanager
def backends(ports: list[int], specs: list[dict[str, Any]]) -> Iterator[Backends]:
    proc = subprocess.Popen([sys.executable, __file__, "--serve", json.dumps([ports, specs])],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    try:
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the backends did not start")
        yield Backends(proc)
    finally:
        proc.kill()
        proc.wait()


class Backends:
    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self._proc = proc

    def _send(self, line: str) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.write(line + "\n")
        self._proc.stdin.flush()

    def go(self) -> None:
        self._send("go")

    def dump(self) -> list[tuple[float, int, int]]:
        self._send("dump")
        assert self._proc.stdout is not None
        return [tuple(r) for r in json.loads(self._proc.stdout.readline())]  # type: ignore[misc]


# ----------------------------------------------------------------------------- proxies

def free_ports(n: int) -> list[int]:
    from http_overhead import free_port

    return [free_port() for _ in range(n)]


@contextmanager
def proxies(tmp: Path, ports: list[int], read_timeout: float = 60.0
            ) -> Iterator[dict[str, str]]:
    """nginx round robin, nginx least_conn and HAProxy leastconn in front of ``ports``;
    yields their URLs by name."""
    from http_overhead import binary, wait_port

    ngx_rr, ngx_lc, hap = free_ports(3)
    rt = f"{int(read_timeout * 1000)}ms"
    upstream = "\n".join(f"        server 127.0.0.1:{p};" for p in ports)
    (tmp / "nginx.conf").write_text(f"""
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log crit;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    keepalive_requests 1000000;
    upstream rr {{
{upstream}
        keepalive 64;
    }}
    upstream lc {{
        least_conn;
{upstream}
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{ngx_rr};
        location / {{ proxy_pass http://rr; proxy_http_version 1.1;
                     proxy_set_header Connection ""; proxy_read_timeout {rt}; }}
    }}
    server {{
        listen 127.0.0.1:{ngx_lc};
        location / {{ proxy_pass http://lc; proxy_http_version 1.1;
                     proxy_set_header Connection ""; proxy_read_timeout {rt}; }}
    }}
}}
""")
    lines = "\n".join(f"    server b{i} 127.0.0.1:{p}" for i, p in enumerate(ports))
    (tmp / "haproxy.cfg").write_text(f"""
global
    maxconn 4096
    nbthread 1
defaults
    mode http
    timeout connect 1s
    timeout client 60s
    timeout server {rt}
    option http-keep-alive
frontend fe
    bind 127.0.0.1:{hap}
    default_backend be
backend be
    balance leastconn
    http-reuse always
{lines}
""")
    nginx = subprocess.Popen([binary("nginx"), "-c", str(tmp / "nginx.conf"), "-p", str(tmp)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    haproxy = subprocess.Popen([binary("haproxy"), "-f", str(tmp / "haproxy.cfg"), "-db"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for port in (ngx_rr, ngx_lc, hap):
            wait_port(port)
        yield {"nginx round robin": f"http://127.0.0.1:{ngx_rr}/",
               "nginx least_conn": f"http://127.0.0.1:{ngx_lc}/",
               "HAProxy leastconn": f"http://127.0.0.1:{hap}/"}
    finally:
        for proc in (nginx, haproxy):
            proc.terminate()
        for proc in (nginx, haproxy):
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()


# ------------------------------------------------------------------------------ client


@dataclass
class Run:
    """One configuration's measured requests: (start since go, latency s, status or 0 for
    an error), the backends' arrival records, and the balancer's hedging counters."""

    name: str
    requests: list[tuple[float, float, int]] = field(default_factory=list)
    arrivals: list[tuple[float, int, int]] = field(default_factory=list)
    hedges: dict[str, int] = field(default_factory=dict)
    #: after :meth:`merge`: each round's (p50, p99, p99.9)
    rounds: list[tuple[float, float, float]] = field(default_factory=list)

    def latencies(self) -> list[float]:
        return [lat for _, lat, _ in self.requests]

    def extra(self) -> float:
        """Requests the backends received per request sent, minus one: what retries and
        hedges added to their load."""
        return len(self.arrivals) / len(self.requests) - 1 if self.requests else 0.0

    def share(self, backend: int = 0) -> float:
        """The share of the backends' arrivals that went to ``backend``."""
        if not self.arrivals:
            return 0.0
        return sum(1 for _, i, _ in self.arrivals if i == backend) / len(self.arrivals)

    def merge(self, other: Run) -> Run:
        """This run and ``other`` (the same configuration, another round): requests,
        arrivals and hedges pooled, each round's percentiles kept."""
        hedges = {k: self.hedges.get(k, 0) + other.hedges.get(k, 0)
                  for k in {*self.hedges, *other.hedges}}
        rounds = (self.rounds or [self.percentiles()]) + (other.rounds or [other.percentiles()])
        return Run(self.name, self.requests + other.requests, self.arrivals + other.arrivals,
                   hedges, rounds)

    def percentiles(self) -> tuple[float, float, float]:
        """p50, p99, p99.9 of the requests; of several rounds, the median of each round's:
        a pause of the shared machine during one round does not decide the figure."""
        import numpy as np

        if len(self.rounds) > 1:
            p50, p99, p999 = np.median(np.array(self.rounds), axis=0)
        else:
            p50, p99, p999 = np.percentile(self.latencies(), [50, 99, 99.9])
        return float(p50), float(p99), float(p999)

    def failed(self) -> int:
        return sum(1 for _, _, status in self.requests if status != 200)


def make_client(kind: str, ports: list[int], timeout: float, hedging: Any = None
                ) -> tuple[Any, Callable[[], str], Any]:
    """(client, url(), balancer or None): ``kind`` is a strategy name or a proxy URL;
    ``hedging`` a ``clientlb.Hedging`` for the balancer (default none)."""
    import httpx

    import clientlb

    t = httpx.Timeout(timeout, connect=1.0)
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    if kind.startswith("http://"):
        return httpx.AsyncClient(timeout=t, limits=limits), (lambda: kind), None
    lb = clientlb.LoadBalancer([f"127.0.0.1:{p}" for p in ports], name="svc", strategy=kind,
                               hedging=hedging)
    transport = clientlb.AsyncHTTPTransport(lb, limits=limits)
    return httpx.AsyncClient(transport=transport, timeout=t), (lambda: "http://svc/"), lb


async def drive(client: Any, url: Callable[[], str], backends: Backends | None,
                duration: float, concurrency: int, warmup: int,
                on_go: Callable[[], None] | None = None) -> list[tuple[float, float, int]]:
    """Warm up with about ``warmup`` requests, tell the backends ``go`` (and call
    ``on_go``), then ``concurrency`` workers send GETs back to back for ``duration``
    seconds."""
    import httpx

    async def one() -> int:
        try:
            response = await client.get(url())
            return int(response.status_code)
        except httpx.HTTPError:
            return 0

    async def warm(n: int) -> None:
        for _ in range(n):
            await one()

    # at the run's own concurrency: a burst of ``warmup`` requests at once would queue at
    # the backends and leave latency estimates of that queueing (seconds), not of a request
    await asyncio.gather(*(warm(warmup // concurrency + 1) for _ in range(concurrency)))
    out: list[tuple[float, float, int]] = []
    # What the process holds by now (modules, the earlier configurations' results, the
    # warm-up's objects) leaves the collector's view, as a latency-sensitive service does
    # with gc.freeze() after its start-up: otherwise a full collection walking all of it
    # pauses the client 30-40 ms once or twice a run, delaying the 8 requests in flight
    # at once — the few slowest of ~2,600, so the p99.9 of whichever configuration it
    # fell on (measured 2026-12-01, gc.callbacks: every cluster of slow requests in
    # three runs coincided with one).
    gc.collect()
    gc.freeze()
    if backends is not None:
        backends.go()
    if on_go is not None:
        on_go()
    t0 = time.perf_counter()
    end = t0 + duration

    async def worker() -> None:
        while (start := time.perf_counter()) < end:
            status = await one()
            out.append((start - t0, time.perf_counter() - start, status))

    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        gc.unfreeze()
    return out


def measure(name: str, kind: str, ports: list[int], specs: list[dict[str, Any]],
            duration: float, concurrency: int, warmup: int, timeout: float = 5.0,
            only: list[int] | None = None, hedging: Any = None) -> Run:
    """Fresh backends on ``ports`` (so scheduled faults start over), then one client run.
    ``only``: the indexes the balancer may use (the oracle); ``hedging``: its policy.
    The hedging counters are those of the measured part (the warm-up's subtracted)."""
    with backends(ports, specs) as b:
        use = ports if only is None else [ports[i] for i in only]
        hedges: dict[str, int] = {}

        async def main() -> list[tuple[float, float, int]]:
            client, url, lb = make_client(kind, use, timeout, hedging)
            async with client:
                before = _hedge_counts(lb)
                result = await drive(client, url, b, duration, concurrency, warmup,
                                     lambda: before.update(_hedge_counts(lb)))
                hedges.update({k: v - before.get(k, 0) for k, v in _hedge_counts(lb).items()})
                return result

        requests = asyncio.run(main())
        return Run(name, requests, b.dump(), hedges)


def _hedge_counts(lb: Any) -> dict[str, int]:
    if lb is None:
        return {}
    return {k: v for k, v in lb.hedging_statistics().items() if k != "adaptive_delay"}


def measure_proxy(name: str, ports: list[int], specs: list[dict[str, Any]], duration: float,
                  concurrency: int, warmup: int, timeout: float = 5.0) -> Run:
    """``measure`` through a freshly started proxy (``name`` as in :func:`proxies`): a
    proxy kept from an earlier run would remember that run's failures (nginx's
    ``max_fails``/``fail_timeout``) and its connections to backends since restarted."""
    with tmpdir() as tmp, proxies(Path(tmp), ports, read_timeout=timeout) as urls:
        return measure(name, urls[name], ports, specs, duration, concurrency, warmup, timeout)


# ------------------------------------------------------------------------------ report


def first_quiet(arrivals: list[tuple[float, int, int]], bad: int, since: float,
                window: float = 1.0, share: float = 0.02) -> float | None:
    """Seconds from ``since`` until the first moment after which backend ``bad`` receives
    at most ``share`` of the arrivals over the next ``window`` seconds; None if never."""
    ts = sorted((t, i) for t, i, _ in arrivals if t >= since)
    if not ts:
        return None
    end = ts[-1][0]
    step = 0.05
    t = since
    while t + window <= end:
        inside = [i for s, i in ts if t <= s < t + window]
        if inside and sum(1 for i in inside if i == bad) <= share * len(inside):
            return t - since
        t += step
    return None


def machine() -> str:
    import httpx

    try:
        model = next(line.split(":", 1)[1].strip() for line in
                     Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{model}, {os.cpu_count()} CPUs (shared), load average {load:.1f} at the start, "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}, "
            f"httpx {httpx.__version__}")


def ms(x: float) -> str:
    return f"{x * 1e3:,.1f}"


def tmpdir() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="clientlb-bench-")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve", required=True)
    ports_, specs_ = json.loads(parser.parse_args().serve)
    asyncio.run(_serve(ports_, specs_))

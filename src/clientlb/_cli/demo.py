"""``clientlb demo``: the strategies side by side, over real local backends.

Four HTTP backends run in a child process on 127.0.0.1 (so that their work
does not share the client's interpreter lock):

* ``fast-1``, ``fast-2`` — about 5 ms per request;
* ``slow`` — about 50 ms: ten times slower, the backend that hurts the tail;
* ``flaky`` — as fast as the fast ones, but it answers ``503`` to everything
  for one second in every three (a crashing pod, a full disk).

Each strategy in turn gets the same closed-loop traffic (a fixed number of
requests in flight) for an equal share of ``--duration``. A live table shows
each endpoint's share of the attempts, latency percentiles as the client sees
them, client-visible errors and outlier ejections; a final table compares the
strategies and ``--plot`` draws the percentiles with matplotlib.

What to expect: ``round_robin`` and ``random`` send a quarter of the traffic
to ``slow`` and pay for it at p99; ``least_request`` avoids it as its queue
builds; ``peak_ewma`` notices the latency itself and sends it almost nothing.
With the HTTP integration (``clientlb.AsyncHTTPTransport``) a ``503`` of
``flaky`` is retried on another backend (``retries``), so errors stay near
zero, and outlier detection ejects ``flaky`` after its first burst of
failures (``ejections``), so its share drops for every strategy.

While it runs, the control room (``clientlb.admin``, when the ``admin`` extra
is installed) shows the balancer of the strategy being raced, live, at the
address printed first (``--no-dashboard`` turns it off); with
``CLIENTLB_ADMIN_TOKEN`` set, its drain and weight buttons work too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._core.balancer import LoadBalancer
from .._core.outcome import Outcome
from .._core.state import EndpointState
from .._ops.registry import Registry
from .._strategies import STRATEGIES

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

__all__ = ["BACKENDS", "run_demo", "serve"]

#: name -> (base latency s, mean extra latency s, seconds of 503s in every 3 s)
BACKENDS: dict[str, tuple[float, float, float]] = {
    "fast-1": (0.004, 0.001, 0.0),
    "fast-2": (0.004, 0.001, 0.0),
    "slow": (0.045, 0.005, 0.0),
    "flaky": (0.004, 0.001, 1.0),
}
FLAKY_PERIOD = 3.0


# -- the backends (child process) ----------------------------------------------------------

async def _backend(name: str, base: float, extra: float, fail: float,
                   rng: random.Random) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in request.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                if length:
                    await reader.readexactly(length)
                if fail and time.monotonic() % FLAKY_PERIOD < fail:
                    status, body = b"503 Service Unavailable", b"overloaded\n"
                    await asyncio.sleep(0.001)
                else:
                    status, body = b"200 OK", name.encode() + b"\n"
                    await asyncio.sleep(base + rng.expovariate(1 / extra))
                writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: "
                             + str(len(body)).encode() + b"\r\nX-Backend: " + name.encode()
                             + b"\r\n\r\n" + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError,
                asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def serve() -> None:
    """Run the demo backends; print their ports as one JSON line; stop when stdin closes."""
    async def main() -> None:
        rng = random.Random(42)
        servers = {name: await _backend(name, *spec, rng) for name, spec in BACKENDS.items()}
        ports = {name: s.sockets[0].getsockname()[1] for name, s in servers.items()}
        print(json.dumps(ports), flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)  # the parent went away
        for s in servers.values():
            s.close()

    asyncio.run(main())


class _Backends:
    """The child process running :func:`serve`; ``ports`` by backend name."""

    def __init__(self) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from clientlb._cli.demo import serve; serve()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.close()
            raise OSError("the demo backends did not start (see the messages above)")
        self.ports: dict[str, int] = json.loads(line)
        self.names = {f"127.0.0.1:{port}": name for name, port in self.ports.items()}

    def close(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


# -- measuring ----------------------------------------------------------------------------

@dataclass
class Run:
    """What one strategy did."""

    strategy: str
    latencies: list[float] = field(default_factory=list)
    attempts: Counter[str] = field(default_factory=Counter)  # by backend name
    errors: int = 0
    retries: int = 0
    ejections: int = 0
    elapsed: float = 0.0

    def percentile(self, q: float) -> float:
        data = sorted(self.latencies)
        if not data:
            return float("nan")
        return data[min(len(data) - 1, int(q * len(data)))]

    @property
    def requests(self) -> int:
        return len(self.latencies) + self.errors


async def _drive(run: Run, lb: LoadBalancer, names: dict[str, str], duration: float,
                 concurrency: int) -> None:
    import httpx

    from .._core.errors import ClientLBError
    from .._http.transport import AsyncHTTPTransport

    def on_outcome(state: EndpointState, outcome: Outcome, latency: float, now: float) -> None:
        run.attempts[names.get(state.address, state.address)] += 1

    lb.add_outcome_listener(on_outcome)
    client = httpx.AsyncClient(transport=AsyncHTTPTransport(lb), base_url="http://demo",
                               timeout=httpx.Timeout(2.0))
    deadline = time.perf_counter() + duration

    async def one_request() -> None:
        start = time.perf_counter()
        try:
            response = await client.get("/")
        except (httpx.HTTPError, ClientLBError):
            run.errors += 1
            return
        if response.status_code >= 500:
            run.errors += 1
        else:
            run.latencies.append(time.perf_counter() - start)

    async def worker() -> None:
        while time.perf_counter() < deadline:
            await one_request()

    start = time.perf_counter()
    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        run.elapsed = time.perf_counter() - start
        run.ejections = sum(row.ejection_count for row in lb.snapshot().endpoints)
        budget = lb.retry_budget
        if budget is not None:
            run.retries = int(budget.statistics()["retries"])
        await client.aclose()


# -- showing ------------------------------------------------------------------------------

def _table(runs: list[Run], backends: list[str], title: str) -> Table:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    # Fits 80 columns: no vertical rules, short headings (the title says the units).
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
                  show_edge=False, collapse_padding=True, padding=(0, 1))
    table.add_column("strategy", no_wrap=True)
    table.add_column("req/s", justify="right")
    for name in backends:
        table.add_column(name, justify="right")
    for column in ("p50", "p99", "err", "retry", "eject"):
        table.add_column(column, justify="right")
    best = min((r.percentile(0.99) for r in runs if r.latencies), default=None)
    for run in runs:
        total = sum(run.attempts.values()) or 1
        p99 = run.percentile(0.99)
        p99_text = Text(f"{p99 * 1000:.1f}" if run.latencies else "-")
        if best is not None and run.latencies and p99 == best and len(runs) > 1:
            p99_text.stylize("bold green")
        table.add_row(
            run.strategy,
            f"{run.requests / run.elapsed:.0f}" if run.elapsed else "-",
            *(f"{100 * run.attempts[name] / total:.0f}" for name in backends),
            f"{run.percentile(0.5) * 1000:.1f}" if run.latencies else "-",
            p99_text, str(run.errors), str(run.retries), str(run.ejections))
    return table


def figure(runs: list[Run], backends: list[str]) -> Any:
    """The demo's chart (a matplotlib ``Figure``): on the left p50/p90/p99 per strategy,
    on the right the share of attempts each backend took under each strategy — the
    latency a strategy buys, and how: by sending less to the slow and flaky backends."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.5))
    latency, share = fig.subplots(1, 2)
    names = [r.strategy for r in runs]
    quantiles = (0.5, 0.9, 0.99)
    width = 0.8 / len(quantiles)
    for i, q in enumerate(quantiles):
        values = [r.percentile(q) * 1000 for r in runs]
        xs = [j + (i - (len(quantiles) - 1) / 2) * width for j in range(len(runs))]
        latency.bar(xs, values, width, label=f"p{int(q * 100)}")
    latency.set_xticks(range(len(runs)), names, rotation=15)
    latency.set_ylabel("latency (ms)")
    latency.set_title("client latency per strategy")
    latency.legend()
    width = 0.8 / max(1, len(backends))
    for i, backend in enumerate(backends):
        values = [100 * r.attempts[backend] / (sum(r.attempts.values()) or 1) for r in runs]
        xs = [j + (i - (len(backends) - 1) / 2) * width for j in range(len(runs))]
        share.bar(xs, values, width, label=backend)
    share.set_xticks(range(len(runs)), names, rotation=15)
    share.set_ylabel("% of attempts")
    share.set_title("each backend's share of the attempts")
    share.legend(fontsize="small")
    fig.suptitle("clientlb demo (2 fast, 1 slow, 1 flaky backend)")
    fig.tight_layout()
    return fig


def plot(runs: list[Run], path: str) -> None:
    """Write :func:`figure` to ``path`` (PNG)."""
    figure(runs, list(BACKENDS)).savefig(path, dpi=120)


def run_demo(args: argparse.Namespace, out: Console) -> int:
    """The ``clientlb demo`` command."""
    from .main import CLIError

    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown or not strategies:
        raise CLIError(f"--strategies: unknown strategy {', '.join(map(repr, unknown))}; "
                       f"choose among {', '.join(STRATEGIES)}")
    if not args.duration > 0:
        raise CLIError(f"--duration must be > 0 seconds, got {args.duration:g}")
    if args.concurrency < 1:
        raise CLIError(f"--concurrency must be >= 1, got {args.concurrency}")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise CLIError("--plot needs matplotlib: pip install 'clientlb[cli]'") from None
        folder = os.path.dirname(os.path.abspath(args.plot))
        if not os.path.isdir(folder):  # say so now, not after the whole run
            raise CLIError(f"--plot: the directory {folder} does not exist")
    _show_warnings(out)
    registry = Registry(telemetry=False)
    dashboard = _dashboard(registry, args, out) if getattr(args, "dashboard", False) else None
    backends = _Backends()
    try:
        out.print("backends on 127.0.0.1: " + ", ".join(
            f"{name} :{port}" for name, port in backends.ports.items()))
        out.print(f"{args.concurrency} requests in flight, {args.duration / len(strategies):.1f}"
                  " s per strategy\n")
        runs = asyncio.run(_race(strategies, backends, args, out, registry))
    finally:
        backends.close()
        if dashboard is not None:
            dashboard.close()
        registry.close()
    out.print(_table(runs, list(BACKENDS), "comparison: % of attempts per backend, client "
                                           "latency in ms"))
    finished = [r for r in runs if r.latencies]
    if len(finished) > 1:
        best = min(finished, key=lambda r: r.percentile(0.99))
        worst = max(finished, key=lambda r: r.percentile(0.99))
        out.print(f"lowest p99: {best.strategy} {best.percentile(0.99) * 1000:.1f} ms "
                  f"({worst.percentile(0.99) / best.percentile(0.99):.1f}x better than "
                  f"{worst.strategy})")
    if args.plot:
        plot(runs, args.plot)
        out.print(f"chart written to {args.plot}")
    return 0


def _dashboard(registry: Registry, args: argparse.Namespace, out: Console) -> Any:
    """Serve the control room over the demo's balancers; None without the admin extra."""
    try:
        from ..admin._serve import TOKEN_ENV, BackgroundServer
    except ImportError:
        out.print("(no dashboard: pip install 'clientlb[admin]' to watch the demo live)")
        return None
    token = os.environ.get(TOKEN_ENV, "").strip() or None
    server = BackgroundServer(registry, port=args.dashboard_port, token=token)
    access = "drain and weights need the token" if token else \
        f"read-only; set {TOKEN_ENV} to act"
    out.print(f"dashboard: {server.url} (live while the demo runs; {access})", soft_wrap=True)
    return server


def _show_warnings(out: Console) -> None:
    """Print clientlb's warnings (ejections, discovery errors) above the live table."""
    import logging

    from rich.logging import RichHandler

    log = logging.getLogger("clientlb")
    if not any(isinstance(h, RichHandler) for h in log.handlers):
        handler = RichHandler(console=out, show_path=False, show_time=False, markup=False)
        handler.setLevel(logging.WARNING)
        log.addHandler(handler)
        log.propagate = False


async def _race(strategies: list[str], backends: _Backends, args: argparse.Namespace,
                out: Console, registry: Registry) -> list[Run]:
    from rich.live import Live

    per = args.duration / len(strategies)
    runs: list[Run] = []
    addresses = list(backends.names)
    names = list(BACKENDS)
    with Live(_table(runs, names, "starting"), console=out, refresh_per_second=4,
              transient=True) as live:
        for strategy in strategies:
            run = Run(strategy)
            runs.append(run)
            lb = registry.create(f"demo-{strategy}", addresses, strategy=strategy)
            await lb.await_ready()
            task = asyncio.create_task(_drive(run, lb, backends.names, per, args.concurrency))
            started = time.perf_counter()
            while not task.done():
                run.elapsed = time.perf_counter() - started
                live.update(_table(runs, names, f"running {strategy}"))
                await asyncio.wait({task}, timeout=0.25)
            await task
            await registry.adelete(f"demo-{strategy}", timeout=0)
    return runs

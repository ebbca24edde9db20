"""Server-reported load: weighted_round_robin against the client-side strategies (issue 16).

Run by hand (a few minutes)::

    .venv/bin/python benchmarks/server_load.py [--chart docs/img/perf_server_load.png]
    .venv/bin/python benchmarks/server_load.py --smoke      # a few seconds (tests)

The setup, side by side in one run:

* **Four backends of unequal capacity** — each a real server process (uvicorn, one
  asyncio loop) with a fixed number of workers: 1, 1, 2 and 4. A request holds a worker
  for ``--service`` seconds (deterministic), more wait in line, and a request that
  waited longer than 1 s is answered 503 (load shedding). Capacity: workers / service
  time; with the default 50 ms, 20, 20, 40 and 80 requests/s — 4× between the smallest
  and the largest (rates kept low so that the eight Python processes fit on a small
  machine).
  Every backend reports its load with ``clientlb.orca.OrcaMiddleware``: its application
  utilization is the requests it holds, served or waiting, per worker (a 1 s moving
  average; ``--utilization busy``: the share of its workers busy, which stops at 1.0), with
  the qps and eps the middleware counts.
* **Traffic no client sees** — a separate process sends Poisson traffic straight to the
  largest backend (``--hidden-share``: a quarter of its capacity), outside every
  balancer.
* **Several clients** — ``--clients`` processes (4), each with its own
  ``clientlb.LoadBalancer`` and ``httpx.AsyncClient``, send open-loop Poisson traffic
  (each request on its own, whatever the others' latency) so that the total load, hidden
  traffic included, is ``--load`` (80 %) of the total capacity. Retries and outlier
  detection are off: the figures measure the strategies alone.

Each strategy runs in turn against the same servers (``--warmup`` s, then ``--measure``
s measured; weighted_round_robin with its defaults, so its 10 s blackout is inside the
warm-up). Reported per strategy: the share of client requests each backend served
against its share of the *spare* capacity (capacity minus the hidden traffic), the mean
utilization each backend reported, p50/p99 latency, and errors (503s and timeouts).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
STRATEGIES = ("weighted_round_robin", "peak_ewma", "least_request", "round_robin")
WORKERS = (1, 1, 2, 4)
MAX_WAIT = 1.0  # seconds in line before a backend sheds a request with 503
TIMEOUT = 2.0  # the clients' timeout per request
TAU = 1.0  # seconds: the backends' utilization moving average


# ------------------------------------------------------------------------ backend process


def serve(name: str, port: int, workers: int, service: float, utilization: str,
          tau: float = TAU) -> None:
    """One backend: ``workers`` requests at a time, each holding a worker ``service`` s.

    Its application utilization (a moving average over ``tau`` s) is, with ``load``, the
    requests it holds — served or waiting — per worker: above 1.0 when requests wait (the
    ORCA message allows it "when the usage exceeds the reporter dependent notion of soft
    limits"); with ``busy``, the share of its workers busy, at most 1.0.
    """
    import uvicorn

    from clientlb import orca

    metrics = orca.ServerMetrics(cpu=False)
    state = {"busy": 0, "held": 0, "ewma": 0.0, "area": 0.0, "last": time.monotonic(),
             "client": 0, "hidden": 0, "shed": 0}
    gauge = "held" if utilization == "load" else "busy"
    sem: list[asyncio.Semaphore] = []

    def advance(now: float) -> None:
        dt = now - state["last"]
        if dt > 0:
            frac = state[gauge] / workers
            state["ewma"] = frac + (state["ewma"] - frac) * math.exp(-dt / tau)
            state["area"] += state["busy"] * dt
            state["last"] = now

    def change(key: str, delta: int) -> None:
        advance(time.monotonic())
        state[key] += delta

    def reported_utilization() -> float:
        advance(time.monotonic())
        return float(state["ewma"])

    metrics.set_application_utilization(reported_utilization)

    async def respond(send: Any, status: int, body: bytes) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def work(scope: Any, receive: Any, send: Any) -> None:
        if not sem:
            sem.append(asyncio.Semaphore(workers))
        hidden = any(k == b"x-hidden" for k, _ in scope["headers"])
        change("held", 1)
        try:
            try:
                await asyncio.wait_for(sem[0].acquire(), MAX_WAIT)
            except asyncio.TimeoutError:
                state["shed"] += 1
                await respond(send, 503, b"busy")
                return
            change("busy", 1)
            try:
                await asyncio.sleep(service)
            finally:
                change("busy", -1)
                sem[0].release()
            state["hidden" if hidden else "client"] += 1
            await respond(send, 200, name.encode())
        finally:
            change("held", -1)

    reported = orca.OrcaMiddleware(work, metrics)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/stats":  # outside the middleware: not counted as load
            advance(time.monotonic())
            stats = {k: state[k] for k in ("client", "hidden", "shed", "area", "busy")}
            stats["waiting"] = state["held"] - state["busy"]
            await respond(send, 200, json.dumps(stats).encode())
            return
        await reported(scope, receive, send)

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="error", access_log=False,
                lifespan="off")


# -------------------------------------------------------------------- hidden traffic process


async def hidden(port: int, rate: float) -> None:
    """Poisson traffic straight to one backend, outside every balancer, until killed."""
    import httpx

    rng = random.Random(99)
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[Any]] = set()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=TIMEOUT,
                                 limits=httpx.Limits(max_connections=200)) as client:

        async def one() -> None:
            with contextlib.suppress(httpx.HTTPError):
                await client.get("/", headers={"x-hidden": "1"})

        t = loop.time()
        while True:
            t += rng.expovariate(rate)
            await asyncio.sleep(max(0.0, t - loop.time()))
            task = asyncio.create_task(one())
            tasks.add(task)
            task.add_done_callback(tasks.discard)


# --------------------------------------------------------------------------- client process


async def client(strategy: str, ports: list[int], rate: float, warmup: float, measure: float,
                 seed: int, smoke: bool) -> dict[str, Any]:
    """Open-loop Poisson requests through one balancer; what happened after the warm-up."""
    import httpx

    import clientlb

    if strategy == "weighted_round_robin" and smoke:  # no time for the 10 s blackout
        chosen: Any = clientlb.WeightedRoundRobin(blackout_period=0, weight_update_period=0.2)
    else:
        chosen = strategy
    lb = clientlb.LoadBalancer([f"127.0.0.1:{p}" for p in ports], name="backend",
                               strategy=chosen, retry=None, outlier_detection=None,
                               rng=random.Random(seed))
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    by_backend: dict[str, list[float]] = {}
    served: dict[str, int] = {}
    errors = {"503": 0, "timeout": 0, "other": 0}
    weights: dict[str, list[float]] = {}
    tasks: set[asyncio.Task[Any]] = set()
    transport = clientlb.AsyncHTTPTransport(lb)
    async with lb, httpx.AsyncClient(transport=transport, timeout=TIMEOUT) as http:
        await lb.await_ready()
        start = loop.time()
        measured_from = start + warmup
        end = measured_from + measure

        async def one(sent: float) -> None:
            counted = sent >= measured_from
            try:
                response = await http.get("http://backend/")
            except httpx.TimeoutException:
                if counted:
                    errors["timeout"] += 1
                return
            except httpx.HTTPError:
                if counted:
                    errors["other"] += 1
                return
            if not counted:
                return
            if response.status_code != 200:
                errors["503" if response.status_code == 503 else "other"] += 1
                return
            latencies.append(loop.time() - sent)
            address = response.extensions["clientlb.endpoint"]
            by_backend.setdefault(address, []).append(latencies[-1])
            served[address] = served.get(address, 0) + 1

        async def sample_weights() -> None:
            while True:
                await asyncio.sleep(1.0)
                if loop.time() >= measured_from:
                    for row in lb.snapshot().endpoints:
                        if row.load_weight is not None:
                            weights.setdefault(row.address, []).append(row.load_weight)

        sampler = asyncio.create_task(sample_weights())
        t = start
        while True:
            t += rng.expovariate(rate)
            if t >= end:
                break
            await asyncio.sleep(max(0.0, t - loop.time()))
            task = asyncio.create_task(one(loop.time()))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks)
        sampler.cancel()
    return {"latencies": latencies, "served": served, "errors": errors, "by_backend": by_backend,
            "weights": {a: sum(w) / len(w) for a, w in weights.items() if w}}


# ----------------------------------------------------------------------------------- parent


@dataclass
class Backend:
    name: str
    workers: int
    port: int
    capacity: float
    hidden: float
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def spare(self) -> float:
        return self.capacity - self.hidden


@dataclass
class Result:
    strategy: str
    served: dict[str, int]
    latencies: list[float]
    errors: dict[str, int]
    utilization: dict[str, float]
    weights: dict[str, float] = field(default_factory=dict)
    by_backend: dict[str, list[float]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.served.values())

    def share(self, address: str) -> float:
        return self.served.get(address, 0) / self.total if self.total else 0.0

    def percentile(self, q: float) -> float:
        values = sorted(self.latencies)
        if not values:
            return float("nan")
        return values[min(len(values) - 1, int(q * len(values)))]

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stats(port: int) -> dict[str, Any]:
    import httpx

    return dict(httpx.get(f"http://127.0.0.1:{port}/stats", timeout=5).json())


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except Exception:  # not up yet
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _spawn(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def run(*, service: float = 0.05, load: float = 0.8, hidden_share: float = 0.25,
        utilization: str = "load", tau: float = TAU,
        clients: int = 4, warmup: float = 15.0, measure: float = 30.0, rounds: int = 1,
        strategies: tuple[str, ...] = STRATEGIES, smoke: bool = False) -> tuple[
        list[Backend], list[Result]]:
    backends = [Backend(f"b{i + 1} ({w} worker{'s' if w > 1 else ''})", w, _free_port(),
                        w / service, 0.0) for i, w in enumerate(WORKERS)]
    hidden_rate = backends[-1].hidden = hidden_share * backends[-1].capacity
    total_capacity = sum(b.capacity for b in backends)
    client_rate = load * total_capacity - hidden_rate
    hidden_proc = None
    results: list[Result] = []
    try:
        for b in backends:
            b.process = _spawn("--serve", b.name, str(b.port), str(b.workers), str(service),
                               utilization, str(tau))
        for b in backends:
            _wait(lambda b=b: _stats(b.port), 20, f"backend {b.name}")
        hidden_proc = _spawn("--hidden", str(backends[-1].port), str(hidden_rate))
        order = [s for r in range(rounds) for s in (strategies if r % 2 == 0
                                                    else tuple(reversed(strategies)))]
        for n, strategy in enumerate(order):
            for b in backends:  # the previous phase's queues are gone
                _wait(lambda b=b: _stats(b.port)["waiting"] == 0, 30, "queues to drain")
            procs = [_spawn("--client", strategy, ",".join(str(b.port) for b in backends),
                            str(client_rate / clients), str(warmup), str(measure),
                            str(1000 * n + i), *(["--smoke"] if smoke else []))
                     for i in range(clients)]
            time.sleep(warmup)  # the clients measure from their own start + warmup
            before = {b.port: _stats(b.port) for b in backends}
            t0 = time.monotonic()
            outs = []
            for p in procs:
                out, err = p.communicate(timeout=warmup + measure + 60)
                if p.returncode != 0:
                    raise RuntimeError(f"client failed: {err.decode()[-2000:]}")
                outs.append(json.loads(out))
            after = {b.port: _stats(b.port) for b in backends}
            elapsed = time.monotonic() - t0
            served: dict[str, int] = {}
            errors: dict[str, int] = {}
            latencies: list[float] = []
            weights: dict[str, list[float]] = {}
            by_backend: dict[str, list[float]] = {}
            for o in outs:
                latencies += o["latencies"]
                for k, v in o["by_backend"].items():
                    by_backend.setdefault(k, []).extend(v)
                for k, v in o["served"].items():
                    served[k] = served.get(k, 0) + v
                for k, v in o["errors"].items():
                    errors[k] = errors.get(k, 0) + v
                for k, v in o["weights"].items():
                    weights.setdefault(k, []).append(v)
            utilization = {b.address: (after[b.port]["area"] - before[b.port]["area"])
                           / elapsed / b.workers for b in backends}
            results.append(Result(strategy, served, latencies, errors, utilization,
                                  {k: sum(v) / len(v) for k, v in weights.items()},
                                  by_backend))
            print(f"  {strategy}: {sum(served.values())} requests, "
                  f"p99 {results[-1].percentile(0.99) * 1000:.0f} ms", file=sys.stderr)
    finally:
        for proc in [hidden_proc, *(b.process for b in backends)]:
            if proc is not None:
                proc.kill()
                proc.wait()
    return backends, _merge(results)


def _merge(results: list[Result]) -> list[Result]:
    """Rounds of the same strategy, pooled."""
    merged: dict[str, Result] = {}
    for r in results:
        m = merged.get(r.strategy)
        if m is None:
            merged[r.strategy] = r
            continue
        for k, v in r.served.items():
            m.served[k] = m.served.get(k, 0) + v
        for k, v in r.errors.items():
            m.errors[k] = m.errors.get(k, 0) + v
        m.latencies += r.latencies
        for k, v in r.by_backend.items():
            m.by_backend.setdefault(k, []).extend(v)
        m.utilization = {k: (v + r.utilization[k]) / 2 for k, v in m.utilization.items()}
    return list(merged.values())


def tables(backends: list[Backend], results: list[Result]) -> str:
    spare_total = sum(b.spare for b in backends)
    lines = ["| backend | workers | capacity (req/s) | hidden (req/s) | spare share | "
             + " | ".join(f"`{r.strategy}`" for r in results) + " |",
             "|---|---:|---:|---:|---:|" + "---:|" * len(results)]
    for b in backends:
        target = b.spare / spare_total
        cells = []
        for r in results:
            share = r.share(b.address)
            cells.append(f"{share:.1%} ({(share - target) / target:+.0%}), "
                         f"util {r.utilization[b.address]:.0%}")
        lines.append(f"| {b.name.split()[0]} | {b.workers} | {b.capacity:.0f} | "
                     f"{b.hidden:.0f} | {target:.1%} | " + " | ".join(cells) + " |")
    lines += ["", "| strategy | requests | p50 | p99 | errors | largest gap to spare share |",
              "|---|---:|---:|---:|---:|---:|"]
    for r in results:
        worst = max(abs(r.share(b.address) - b.spare / spare_total) / (b.spare / spare_total)
                    for b in backends)
        lines.append(f"| `{r.strategy}` | {r.total} | {r.percentile(0.5) * 1000:.0f} ms | "
                     f"{r.percentile(0.99) * 1000:.0f} ms | {r.error_count} "
                     f"({r.error_count / max(1, r.total + r.error_count):.1%}) | "
                     f"{worst:.0%} |")
    lines += ["", "p99 by backend: | strategy | " + " | ".join(
        b.name.split()[0] for b in backends) + " |", "|---|" + "---:|" * len(backends)]
    for r in results:
        cells = []
        for b in backends:
            values = sorted(r.by_backend.get(b.address, []))
            cells.append(f"{values[int(0.99 * len(values))] * 1000:.0f} ms" if values else "-")
        lines.append(f"| `{r.strategy}` | " + " | ".join(cells) + " |")
    wrr = next((r for r in results if r.weights), None)
    if wrr is not None:
        lines += ["", "Mean `weighted_round_robin` weights (qps / utilization, per client): "
                  + ", ".join(f"{b.name.split()[0]} {wrr.weights.get(b.address, 0):.0f}"
                              for b in backends)]
    return "\n".join(lines)


def chart(backends: list[Backend], results: list[Result], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spare_total = sum(b.spare for b in backends)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2),
                                      gridspec_kw={"width_ratios": [3, 2]})
    width = 0.8 / len(results)
    xs = range(len(backends))
    for i, r in enumerate(results):
        left.bar([x + (i - (len(results) - 1) / 2) * width for x in xs],
                 [100 * r.share(b.address) for b in backends], width, label=r.strategy)
    for x, b in zip(xs, backends, strict=True):
        target = 100 * b.spare / spare_total
        left.plot([x - 0.45, x + 0.45], [target, target], color="black", lw=2)
    left.plot([], [], color="black", lw=2, label="share of spare capacity")
    left.set_xticks(list(xs), [f"{b.name.split()[0]}\n{b.workers} worker(s)"
                               + (f"\n+{b.hidden:.0f} req/s hidden" if b.hidden else "")
                               for b in backends])
    left.set_ylabel("% of client requests")
    left.set_title("Requests per backend vs spare capacity")
    left.legend(fontsize=8)
    names = [r.strategy.replace("_", "_\n", 1) for r in results]
    p50 = [1000 * r.percentile(0.5) for r in results]
    p99 = [1000 * r.percentile(0.99) for r in results]
    right.bar([x - 0.2 for x in range(len(results))], p50, 0.4, label="p50")
    right.bar([x + 0.2 for x in range(len(results))], p99, 0.4, label="p99")
    for x, r in enumerate(results):
        errors = r.error_count / max(1, r.total + r.error_count)
        right.annotate(f"{p99[x]:.0f}\n{errors:.1%} err.", (x + 0.2, p99[x]), ha="center",
                       va="bottom", fontsize=7)
        right.annotate(f"{p50[x]:.0f}", (x - 0.2, p50[x]), ha="center", va="bottom",
                       fontsize=7)
    right.set_xticks(range(len(results)), names, fontsize=8)
    right.set_ylim(0, max(p99) * 1.25)
    right.set_ylabel("latency (ms)")
    right.set_title("Latency of client requests")
    right.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", nargs=6, help=argparse.SUPPRESS)
    parser.add_argument("--hidden", nargs=2, metavar=("PORT", "RATE"), help=argparse.SUPPRESS)
    parser.add_argument("--client", nargs=6, help=argparse.SUPPRESS)
    parser.add_argument("--service", type=float, default=0.05,
                        help="seconds a request holds a worker (default 0.05)")
    parser.add_argument("--load", type=float, default=0.8,
                        help="total load, hidden traffic included, as a share of the total "
                             "capacity (default 0.8)")
    parser.add_argument("--hidden-share", type=float, default=0.25,
                        help="traffic sent straight to the largest backend, as a share of "
                             "its capacity (default 0.25)")
    parser.add_argument("--clients", type=int, default=4, help="client processes (default 4)")
    parser.add_argument("--utilization", choices=("load", "busy"), default="load",
                        help="what the backends report as application utilization: requests "
                             "held (served or waiting) per worker (default), or the share "
                             "of workers busy")
    parser.add_argument("--warmup", type=float, default=15.0)
    parser.add_argument("--measure", type=float, default=30.0)
    parser.add_argument("--tau", type=float, default=TAU,
                        help="seconds of the backends' utilization moving average (default 1)")
    parser.add_argument("--strategies", default=",".join(STRATEGIES),
                        help="comma-separated strategies to run (default: all four)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run the strategies this many times, alternating the order")
    parser.add_argument("--chart", type=Path, help="write the chart (PNG) there")
    parser.add_argument("--smoke", action="store_true", help="a few seconds (tests)")
    args = parser.parse_args()
    if args.serve:
        name, port, workers, service, utilization, tau = args.serve
        serve(name, int(port), int(workers), float(service), utilization, float(tau))
        return
    if args.hidden:
        asyncio.run(hidden(int(args.hidden[0]), float(args.hidden[1])))
        return
    if args.client:
        strategy, ports, rate, warmup, measure, seed = args.client
        out = asyncio.run(client(strategy, [int(p) for p in ports.split(",")], float(rate),
                                 float(warmup), float(measure), int(seed), args.smoke))
        print(json.dumps(out))
        return
    if args.smoke:
        args.warmup, args.measure, args.clients, args.load = 0.6, 0.6, 1, 0.3
        args.service = 0.02
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    backends, results = run(service=args.service, load=args.load, hidden_share=args.hidden_share,
                            utilization=args.utilization, tau=args.tau,
                            strategies=tuple(args.strategies.split(",")),
                            clients=args.clients, warmup=args.warmup, measure=args.measure,
                            rounds=args.rounds, smoke=args.smoke)
    total_capacity = sum(b.capacity for b in backends)
    print(f"server_load: {len(backends)} backends (capacity {total_capacity:.0f} req/s, "
          f"{args.service * 1000:g} ms per request, utilization reported: "
          f"{args.utilization}), {backends[-1].hidden:.0f} req/s hidden "
          f"on {backends[-1].name.split()[0]}, {args.clients} client processes, total load "
          f"{args.load:.0%} of capacity; {args.warmup:g} s warm-up + {args.measure:g} s "
          f"measured per strategy, {args.rounds} round(s); {os.cpu_count()} CPUs, load "
          f"average {load_before:.1f} before and {os.getloadavg()[0]:.1f} after; "
          f"{time.monotonic() - started:.0f} s in all\n")
    print(tables(backends, results))
    if args.chart:
        chart(backends, results, args.chart)
        print(f"\nchart: {args.chart}")


if __name__ == "__main__":
    main()

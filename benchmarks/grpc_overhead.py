"""gRPC overhead: a clientlb channel against grpcio's own round_robin, same servers, one run.

Four grpc.aio echo servers run in a child process on 127.0.0.1. The client
makes unary calls through

(a) grpcio's native channel: ``ipv4:127.0.0.1:p1,...`` with ``round_robin``;
(b) ``clientlb.grpc.insecure_channel`` over the same four addresses
    (``round_robin`` for a like-for-like comparison, then ``peak_ewma``, the
    default strategy);

sequentially from one thread (sync grpcio), then with 32 concurrent calls
(grpc.aio). The variants alternate in short slices (0.25 s) so that load
from elsewhere on a shared machine hits them alike; each rate is its calls
over its own measured time. Target: (b) >= 0.9 x (a).

Last, clientlb's own cost per call is measured without I/O: the channel's
sub-channels are replaced by fakes that answer at once, so what remains is
the pick, the outcome, the retry-budget deposit and the bookkeeping.

Run by hand: ``.venv/bin/python benchmarks/grpc_overhead.py [--seconds 6] [--slice 0.25]``;
``--smoke`` runs it for a few seconds only, to check that it works.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import grpc
import grpc.aio

import clientlb.grpc
import clientlb.grpc.aio

METHOD = "/bench.Echo/Unary"


async def _serve(count: int) -> None:
    async def unary(request: bytes, context: Any) -> bytes:
        return request

    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Unary": grpc.unary_unary_rpc_method_handler(unary)})
    servers = []
    ports = []
    for _ in range(count):
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((handler,))
        ports.append(server.add_insecure_port("127.0.0.1:0"))
        await server.start()
        servers.append(server)
    print(" ".join(map(str, ports)), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until EOF
    for server in servers:
        await server.stop(None)


def start_servers(count: int) -> tuple[subprocess.Popen[str], list[str]]:
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(count)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    ports = proc.stdout.readline().split()
    return proc, [f"127.0.0.1:{p}" for p in ports]


def native_channel(addresses: list[str]) -> grpc.Channel:
    return grpc.insecure_channel("ipv4:" + ",".join(addresses),
                                 options=[("grpc.lb_policy_name", "round_robin")])


def native_aio_channel(addresses: list[str]) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel("ipv4:" + ",".join(addresses),
                                     options=[("grpc.lb_policy_name", "round_robin")])


def sync_slice(call: Any, seconds: float) -> tuple[int, float]:
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(50):
            call(b"x")
        n += 50
        now = time.perf_counter()
        if now >= deadline:
            return n, now - start


async def aio_slice(call: Any, seconds: float, concurrency: int) -> tuple[int, float]:
    count = 0
    start = time.perf_counter()
    deadline = start + seconds

    async def worker() -> None:
        nonlocal count
        while time.perf_counter() < deadline:
            await call(b"x")
            count += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return count, time.perf_counter() - start


class _FakeCall:
    """An already-answered grpc.aio call: awaiting it returns at once."""

    def __await__(self) -> Any:
        return b"x"
        yield  # pragma: no cover - makes this a generator


class _FakeChannel:
    """Stands in for one endpoint's grpcio channel: calls answer at once, no I/O."""

    def unary_unary(self, *args: Any, **kwargs: Any) -> Any:
        return lambda request, **kw: b"x"

    def close(self) -> None:
        pass


class _FakeAioChannel(_FakeChannel):
    def unary_unary(self, *args: Any, **kwargs: Any) -> Any:
        return lambda request, **kw: _FakeCall()

    async def close(self, grace: float | None = None) -> None:  # type: ignore[override]
        pass


def own_cost(strategy: str, n: int) -> tuple[float, float]:
    """µs per call spent in clientlb itself (pick, outcome, budget, sub-channel
    bookkeeping), with sub-channels replaced by fakes that answer at once."""
    addresses = [f"127.0.0.1:{port}" for port in (1, 2, 3, 4)]
    channel = clientlb.grpc.insecure_channel(addresses, strategy=strategy)
    channel._factory = lambda endpoint: _FakeChannel()  # benchmark only
    call = channel.unary_unary(METHOD)
    for _ in range(1000):
        call(b"x")
    start = time.perf_counter()
    for _ in range(n):
        call(b"x")
    sync_us = (time.perf_counter() - start) / n * 1e6
    channel.close()

    async def run() -> float:
        aio_channel = clientlb.grpc.aio.insecure_channel(addresses, strategy=strategy)
        await aio_channel.lb.await_ready()
        aio_channel._factory = lambda endpoint: _FakeAioChannel()
        aio_call = aio_channel.unary_unary(METHOD)
        for _ in range(1000):
            await aio_call(b"x")
        start = time.perf_counter()
        for _ in range(n):
            await aio_call(b"x")
        elapsed = (time.perf_counter() - start) / n * 1e6
        await aio_channel.close()
        return elapsed

    return sync_us, asyncio.run(run())


def interleave(slices: dict[str, Callable[[], tuple[int, float]]], total: float,
               slice_seconds: float) -> dict[str, float]:
    """Run the variants in alternating short slices; calls/s of each over all its slices."""
    calls = dict.fromkeys(slices, 0)
    spent = dict.fromkeys(slices, 0.0)
    for _ in range(max(1, round(total / slice_seconds))):
        for name, run in slices.items():
            n, t = run()
            calls[name] += n
            spent[name] += t
    return {name: calls[name] / spent[name] for name in slices}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0,
                        help="measured time per variant (default 6)")
    parser.add_argument("--slice", type=float, default=0.25,
                        help="variants alternate every SLICE seconds (default 0.25)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--smoke", action="store_true",
                        help="a run of a few seconds that only checks the script works")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve(args.serve))
        return
    if args.smoke:
        args.seconds, args.slice = 0.5, 0.25
    proc, addresses = start_servers(4)
    try:
        channels = {
            "grpcio round_robin": native_channel(addresses),
            "clientlb round_robin": clientlb.grpc.insecure_channel(addresses,
                                                                   strategy="round_robin"),
            "clientlb peak_ewma": clientlb.grpc.insecure_channel(addresses,
                                                                 strategy="peak_ewma"),
        }
        calls = {name: ch.unary_unary(METHOD) for name, ch in channels.items()}
        for call in calls.values():  # warm up: connect to every server
            for _ in range(200):
                call(b"x")
        sync = interleave({name: (lambda c=c: sync_slice(c, args.slice))  # type: ignore[misc]
                           for name, c in calls.items()}, args.seconds, args.slice)
        for ch in channels.values():
            ch.close()

        async def run_aio() -> dict[str, float]:
            aio_channels = {
                "grpcio round_robin": native_aio_channel(addresses),
                "clientlb round_robin": clientlb.grpc.aio.insecure_channel(
                    addresses, strategy="round_robin"),
                "clientlb peak_ewma": clientlb.grpc.aio.insecure_channel(
                    addresses, strategy="peak_ewma"),
            }
            aio_calls = {name: ch.unary_unary(METHOD) for name, ch in aio_channels.items()}
            for call in aio_calls.values():
                await asyncio.gather(*(call(b"x") for _ in range(200)))
            rates: dict[str, list[tuple[int, float]]] = {name: [] for name in aio_calls}
            for _ in range(max(1, round(args.seconds / args.slice))):
                for name, call in aio_calls.items():
                    rates[name].append(await aio_slice(call, args.slice, args.concurrency))
            for ch in aio_channels.values():
                await ch.close()
            return {name: sum(n for n, _ in r) / sum(t for _, t in r)
                    for name, r in rates.items()}

        aio = asyncio.run(run_aio())
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(10)

    print(f"gRPC unary calls/s, 4 local grpc.aio servers in a child process, "
          f"{args.seconds:g}s per variant in alternating {args.slice:g}s slices; "
          f"{os.cpu_count()} CPUs, Python "
          f"{sys.version.split()[0]}, grpcio {grpc.__version__}")
    print()
    print("| client | channel | calls/s | vs grpcio |")
    print("|---|---|---:|---:|")
    for title, table in (("sync, sequential", sync),
                         (f"grpc.aio, concurrency {args.concurrency}", aio)):
        base = table["grpcio round_robin"]
        for name, rate in table.items():
            print(f"| {title} | {name} | {rate:,.0f} | {rate / base:.2f} |")
    n = 2000 if args.smoke else 50000
    print()
    print("clientlb's own cost per unary call, sub-channels replaced by fakes that answer "
          "at once (no I/O):")
    print()
    print("| strategy | sync µs/call | grpc.aio µs/call |")
    print("|---|---:|---:|")
    for strategy in ("round_robin", "peak_ewma"):
        sync_us, aio_us = own_cost(strategy, n)
        print(f"| {strategy} | {sync_us:.1f} | {aio_us:.1f} |")


if __name__ == "__main__":
    main()

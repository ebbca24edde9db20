"""gRPC overhead: a clientlb channel against grpcio's own round_robin, same servers, one run.

Four grpc.aio echo servers run in a child process on 127.0.0.1. The client
makes unary calls through

(a) grpcio's native channel: ``ipv4:127.0.0.1:p1,...`` with ``round_robin``;
(b) ``clientlb.grpc.insecure_channel`` over the same four addresses
    (``round_robin`` for a like-for-like comparison, then ``peak_ewma``, the
    default strategy);

sequentially from one thread (sync grpcio), then with 32 concurrent calls
(grpc.aio). Each variant runs in alternating rounds so that drift on a
shared machine hits both; the median of the rounds is reported. Target:
(b) >= 0.9 x (a).

Run by hand: ``.venv/bin/python benchmarks/grpc_overhead.py [--seconds 2] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
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


def sync_rate(channel: grpc.Channel, seconds: float) -> float:
    call = channel.unary_unary(METHOD)
    for _ in range(200):  # warm up every connection
        call(b"x")
    n = 0
    deadline = time.perf_counter() + seconds
    start = time.perf_counter()
    while True:
        for _ in range(100):
            call(b"x")
        n += 100
        if time.perf_counter() >= deadline:
            break
    return n / (time.perf_counter() - start)


async def aio_rate(channel: grpc.aio.Channel, seconds: float, concurrency: int) -> float:
    call = channel.unary_unary(METHOD)
    await asyncio.gather(*(call(b"x") for _ in range(200)))
    count = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal count
        while time.perf_counter() < deadline:
            await call(b"x")
            count += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return count / (time.perf_counter() - start)


def rounds(variants: dict[str, Callable[[], float]], n: int) -> dict[str, float]:
    results: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(n):
        for name, run in variants.items():
            results[name].append(run())
    return {k: statistics.median(v) for k, v in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per variant and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve(args.serve))
        return
    proc, addresses = start_servers(4)
    try:
        def sync_variant(make: Callable[[], grpc.Channel]) -> Callable[[], float]:
            def run() -> float:
                with make() as channel:
                    return sync_rate(channel, args.seconds)
            return run

        sync = rounds({
            "grpcio round_robin": sync_variant(lambda: native_channel(addresses)),
            "clientlb round_robin": sync_variant(
                lambda: clientlb.grpc.insecure_channel(addresses, strategy="round_robin")),
            "clientlb peak_ewma": sync_variant(
                lambda: clientlb.grpc.insecure_channel(addresses, strategy="peak_ewma")),
        }, args.rounds)

        def aio_variant(make: Callable[[], grpc.aio.Channel]) -> Callable[[], float]:
            async def go() -> float:
                async with make() as channel:
                    return await aio_rate(channel, args.seconds, args.concurrency)
            return lambda: asyncio.run(go())

        aio = rounds({
            "grpcio round_robin": aio_variant(lambda: native_aio_channel(addresses)),
            "clientlb round_robin": aio_variant(
                lambda: clientlb.grpc.aio.insecure_channel(addresses, strategy="round_robin")),
            "clientlb peak_ewma": aio_variant(
                lambda: clientlb.grpc.aio.insecure_channel(addresses, strategy="peak_ewma")),
        }, args.rounds)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(10)

    print(f"gRPC unary calls/s, 4 local grpc.aio servers, {args.rounds} rounds x "
          f"{args.seconds:g}s, median; {os.cpu_count()} CPUs, Python "
          f"{sys.version.split()[0]}, grpcio {grpc.__version__}")
    print()
    print("| client | channel | calls/s | vs grpcio |")
    print("|---|---|---:|---:|")
    for title, table in (("sync, sequential", sync),
                         (f"grpc.aio, concurrency {args.concurrency}", aio)):
        base = table["grpcio round_robin"]
        for name, rate in table.items():
            print(f"| {title} | {name} | {rate:,.0f} | {rate / base:.2f} |")


if __name__ == "__main__":
    main()

"""TCP connect overhead: clientlb.connect / open_connection against the stdlib, one run.

Four asyncio servers that hold each connection until the client closes it run
in a child process on 127.0.0.1 (so they do not share the client's GIL). The client opens and closes
connections, one at a time, with

(a) ``socket.create_connection`` cycling over the four ports by hand (the
    same spread, no balancer), and ``clientlb.connect`` over the four
    (``round_robin``, then ``least_request``);
(b) ``asyncio.open_connection`` and ``clientlb.open_connection`` likewise;
(c) with TLS (a ``trustme`` certificate): ``ssl_context.wrap_socket`` after
    ``create_connection`` against ``clientlb.connect(ssl_context=...)``.

Variants alternate in blocks of 300 connects, ``--rounds`` times, so that
load from elsewhere on a shared machine hits them alike; each figure is the
median block's time per connect. The
difference is clientlb's cost per connection: a pick, the socket re-wrap
(``detach`` into a :class:`~clientlb.BalancedSocket`) and the outcome at
close.

Run by hand: ``.venv/bin/python benchmarks/tcp_connect_overhead.py [--rounds 9]``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable

import trustme

import clientlb

SERVER = r"""
import asyncio, ssl, sys
cert, key = sys.argv[1], sys.argv[2]
ctx = None
if cert != "-":
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)

async def hold(reader, writer):
    try:
        while await reader.read(1024):
            pass
    except OSError:
        pass
    writer.close()

async def main():
    servers = [await asyncio.start_server(hold, "127.0.0.1", 0, ssl=ctx, backlog=512)
               for _ in range(4)]
    print(" ".join(str(s.sockets[0].getsockname()[1]) for s in servers), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

asyncio.run(main())
"""


def start_servers(cert: str = "-", key: str = "-") -> tuple[subprocess.Popen[str], list[int]]:
    proc = subprocess.Popen([sys.executable, "-c", SERVER, cert, key], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    ports = [int(p) for p in proc.stdout.readline().split()]
    return proc, ports


def measure(variants: dict[str, Callable[[], None]], rounds: int,
            block: int = 300) -> dict[str, float]:
    """Median µs per connect over ``rounds`` blocks of ``block`` connects per variant."""
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            start = time.perf_counter()
            for _ in range(block):
                fn()
            samples[name].append((time.perf_counter() - start) / block * 1e6)
    return {name: statistics.median(values) for name, values in samples.items()}


async def ameasure(variants: dict[str, Callable[[], Awaitable[None]]], rounds: int,
                   block: int = 300) -> dict[str, float]:
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            start = time.perf_counter()
            for _ in range(block):
                await fn()
            samples[name].append((time.perf_counter() - start) / block * 1e6)
    return {name: statistics.median(values) for name, values in samples.items()}


def report(title: str, results: dict[str, float], baseline: str) -> None:
    print(title)
    base = results[baseline]
    for name, us in results.items():
        extra = "" if name == baseline else f"  ({us - base:+.1f} µs, {us / base:.2f}x)"
        print(f"  {name:<44} {us:8.1f} µs/connect{extra}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9,
                        help="blocks of 300 connects per variant (the median is shown)")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; sequential connect + "
          "close to 127.0.0.1")

    proc, ports = start_servers()
    try:
        addrs = [f"127.0.0.1:{p}" for p in ports]
        rr = clientlb.LoadBalancer(addrs, strategy="round_robin")
        lr = clientlb.LoadBalancer(addrs, strategy="least_request")

        cycle = itertools.cycle(ports)

        def stdlib() -> None:
            socket.create_connection(("127.0.0.1", next(cycle)), 2).close()

        def balanced_rr() -> None:
            clientlb.connect(rr, timeout=2).close()

        def balanced_lr() -> None:
            clientlb.connect(lr, timeout=2).close()

        report("sync sockets", measure({
            "socket.create_connection, ports in turn": stdlib,
            "clientlb.connect round_robin": balanced_rr,
            "clientlb.connect least_request": balanced_lr,
        }, args.rounds), "socket.create_connection, ports in turn")

        async def run_async() -> dict[str, float]:
            async def stdlib_async() -> None:
                _, w = await asyncio.open_connection("127.0.0.1", next(cycle))
                w.close()
                await w.wait_closed()

            async def balanced_async() -> None:
                _, w = await clientlb.open_connection(rr, timeout=2)
                w.close()
                await w.wait_closed()

            return await ameasure({
                "asyncio.open_connection, ports in turn": stdlib_async,
                "clientlb.open_connection round_robin": balanced_async,
            }, args.rounds)

        report("asyncio streams", asyncio.run(run_async()),
               "asyncio.open_connection, ports in turn")
        rr.close()
        lr.close()
    finally:
        proc.kill()
        proc.wait()

    ca = trustme.CA()
    leaf = ca.issue_cert("bench.internal")
    with tempfile.TemporaryDirectory() as tmp:
        cert = os.path.join(tmp, "cert.pem")
        key = os.path.join(tmp, "key.pem")
        leaf.cert_chain_pems[0].write_to_path(cert)
        for extra in leaf.cert_chain_pems[1:]:
            with open(cert, "ab") as f:
                f.write(extra.bytes())
        leaf.private_key_pem.write_to_path(key)
        proc, ports = start_servers(cert, key)
    try:
        ctx = ssl.create_default_context()
        ca.configure_trust(ctx)
        tls_lb = clientlb.LoadBalancer([f"127.0.0.1:{p}" for p in ports],
                                       strategy="round_robin", name="bench.internal")

        tls_cycle = itertools.cycle(ports)

        def stdlib_tls() -> None:
            raw = socket.create_connection(("127.0.0.1", next(tls_cycle)), 2)
            ctx.wrap_socket(raw, server_hostname="bench.internal").close()

        def balanced_tls() -> None:
            clientlb.connect(tls_lb, timeout=2, ssl_context=ctx).close()

        report("TLS (ECDSA certificate from trustme)", measure({
            "create_connection + wrap_socket, in turn": stdlib_tls,
            "clientlb.connect(ssl_context=...)": balanced_tls,
        }, args.rounds), "create_connection + wrap_socket, in turn")
        tls_lb.close()
    finally:
        proc.kill()
        proc.wait()


if __name__ == "__main__":
    main()

"""Discovery at scale: how fast a 10,000-endpoint update is applied, and what updates
cost the picks that run meanwhile.

1. **Update applied** — a balancer holding 10,000 endpoints receives a new
   snapshot from its resolver (10% of the endpoints replaced, the rest kept
   with one weight changed each tenth), through the resolver sink
   ``LoadBalancer.publish``; the time until the new picker is in place is
   measured for every built-in strategy. The resolver-side work is measured
   too: turning 10,000 Consul health entries into an ``EndpointSet``
   (``consul.endpoint_from_entry``) and 10,000 etcd values (``etcd.endpoint_from_value``).
   Target: ≤ 50 ms for the default strategy (peak_ewma).
2. **Picks during updates** — pick + done latency (p50/p99) on one thread,
   first idle, then while another thread publishes 10,000-endpoint updates
   back to back. Target: p99 during updates ≤ 5 × idle p99.
3. **End to end** (informative) — from a registry change to the balancer
   showing it, with 10,000 registered instances: one more instance registered
   in the Consul emulator of the test suite (blocking query, 10,000-entry JSON
   answer), and one key put into a real etcd (watch event) when ``etcd`` is
   installed.

Run by hand: ``.venv/bin/python benchmarks/discovery.py [--endpoints 10000]
[--repeat 15] [--picks 200000]``; ``--smoke`` runs a few-second version.
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

import clientlb
from clientlb import Endpoint, EndpointSet
from clientlb._resolvers.consul import endpoint_from_entry
from clientlb._resolvers.etcd import endpoint_from_value

STRATEGIES = ("peak_ewma", "round_robin", "random", "least_request", "ring_hash", "maglev")


def endpoint_sets(n: int) -> tuple[EndpointSet, EndpointSet]:
    """Two snapshots of n endpoints: B replaces 10% of A and reweights another 10%."""
    a = [Endpoint(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 8080) for i in range(n)]
    b = list(a)
    for i in range(0, n, 10):  # 10% replaced
        j = i + n
        b[i] = Endpoint(f"10.{j >> 16 & 255}.{j >> 8 & 255}.{j & 255}", 8080)
    for i in range(5, n, 10):  # 10% reweighted
        b[i] = Endpoint(b[i].host, b[i].port, weight=2)
    return EndpointSet(a, version=1), EndpointSet(b, version=2)


def timed(fn: Callable[[], object], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def update_cost(n: int, repeat: int) -> dict[str, dict[str, float]]:
    a, b = endpoint_sets(n)
    results = {}
    for strategy in STRATEGIES:
        lb = clientlb.LoadBalancer([Endpoint("127.0.0.1", 1)], strategy=strategy,
                                   outlier_detection=None)
        lb.publish(a)
        sets = iter([b, a] * repeat)
        ms = timed(lambda lb=lb, sets=sets: lb.publish(next(sets)), repeat)
        lb.close()
        results[strategy] = {"median_ms": statistics.median(ms), "max_ms": max(ms)}
    return results


def resolver_side_cost(n: int, repeat: int) -> dict[str, float]:
    entries = [{"Node": {"Node": f"n{i}", "Address": f"10.0.{i >> 8 & 255}.{i & 255}",
                         "Datacenter": "dc1"},
                "Service": {"ID": f"web-{i}", "Service": "web", "Address": "", "Port": 8080,
                            "Tags": ["v1"], "Meta": {"version": "1"},
                            "Weights": {"Passing": 1, "Warning": 1}},
                "Checks": [{"Status": "passing"}]} for i in range(n)]
    body = json.dumps(entries).encode()
    values = [(f"svc/{i}", json.dumps({"Addr": f"10.1.{i >> 8 & 255}.{i & 255}:8080",
                                       "Metadata": {"zone": "a"}}).encode()) for i in range(n)]

    def consul() -> None:
        EndpointSet.from_iterable((e for x in json.loads(body)
                                   if (e := endpoint_from_entry(x)) is not None), dedupe=True)

    def etcd() -> None:
        EndpointSet.from_iterable((e for k, v in values
                                   if (e := endpoint_from_value(k, v)) is not None), dedupe=True)

    return {"consul_json_to_set_ms": statistics.median(timed(consul, max(3, repeat // 3))),
            "etcd_values_to_set_ms": statistics.median(timed(etcd, max(3, repeat // 3)))}


def pick_latencies(lb: clientlb.LoadBalancer, picks: int) -> list[int]:
    out = [0] * picks
    clock = time.perf_counter_ns
    pick = lb.pick
    for i in range(picks):
        t0 = clock()
        p = pick()
        p.done()
        out[i] = clock() - t0
    return out


def pct(values: list[int], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] / 1000  # µs


def picks_during_updates(n: int, picks: int) -> dict[str, float]:
    a, b = endpoint_sets(n)
    lb = clientlb.LoadBalancer([Endpoint("127.0.0.1", 1)], outlier_detection=None)
    lb.publish(a)
    pick_latencies(lb, picks // 10)  # warm up
    idle = pick_latencies(lb, picks)
    stop = threading.Event()
    updates = {"n": 0}

    def updater() -> None:
        sets = [b, a]
        while not stop.is_set():
            lb.publish(sets[updates["n"] % 2])
            updates["n"] += 1

    t = threading.Thread(target=updater, daemon=True)
    t.start()
    t0 = time.perf_counter()
    busy = pick_latencies(lb, picks)
    elapsed = time.perf_counter() - t0
    stop.set()
    t.join()
    lb.close()
    return {"idle_p50_us": pct(idle, 0.5), "idle_p99_us": pct(idle, 0.99),
            "updating_p50_us": pct(busy, 0.5), "updating_p99_us": pct(busy, 0.99),
            "updates_during_run": updates["n"], "updates_per_s": updates["n"] / elapsed,
            "ratio_p99": pct(busy, 0.99) / pct(idle, 0.99)}


def _wait(predicate: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit("timed out")
        time.sleep(0.0005)


def end_to_end_consul(n: int, rounds: int) -> list[float]:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.consul_emulator import ConsulEmulator

    agent = ConsulEmulator()
    for i in range(n):
        agent.register("web", f"web-{i}", address=f"10.0.{i >> 8 & 255}.{i & 255}", port=8080)
    lb = clientlb.LoadBalancer(f"consul://{agent.address}/web", outlier_detection=None,
                               resolver_options={"min_query_interval": 0.0, "env": {}})
    lb.wait_ready(30)
    out = []
    for r in range(rounds):
        t0 = time.perf_counter()
        agent.register("web", f"extra-{r}", address="10.9.9.9", port=9000 + r)
        _wait(lambda r=r: len(lb.endpoints()) == n + r + 1)
        out.append((time.perf_counter() - t0) * 1000)
    lb.close()
    agent.close()
    return out


def end_to_end_etcd(n: int, rounds: int) -> tuple[list[float], list[float]] | None:
    etcd = shutil.which("etcd")
    if etcd is None:
        return None

    def free_port() -> int:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])

    data = tempfile.mkdtemp()
    port, peer = free_port(), free_port()
    url, purl = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{peer}"
    proc = subprocess.Popen([etcd, "--name", "b", "--data-dir", data, "--listen-client-urls", url,
                             "--advertise-client-urls", url, "--listen-peer-urls", purl,
                             "--initial-advertise-peer-urls", purl, "--initial-cluster",
                             f"b={purl}", "--logger", "zap", "--log-level", "error"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def up() -> bool:
            try:
                return httpx.get(url + "/health", timeout=0.5).status_code == 200
            except httpx.HTTPError:
                return False

        _wait(up, 30)
        b64 = lambda t: base64.b64encode(t.encode()).decode()  # noqa: E731
        with httpx.Client(base_url=url) as http:
            for i in range(n):
                addr = f"10.0.{i >> 8 & 255}.{i & 255}:8080"
                http.post("/v3/kv/put", json={"key": b64(f"svc/{i}"),
                                              "value": b64(json.dumps({"Addr": addr}))})
            lb = clientlb.LoadBalancer(f"etcd://127.0.0.1:{port}/svc", outlier_detection=None)
            lb.wait_ready(30)
            out, after_ack = [], []
            for r in range(rounds):
                value = json.dumps({"Addr": f"10.9.9.9:{9000 + r}"})
                t0 = time.perf_counter()
                http.post("/v3/kv/put", json={"key": b64(f"svc/extra-{r}"), "value": b64(value)})
                t1 = time.perf_counter()  # etcd committed (fsync included)
                _wait(lambda r=r: len(lb.endpoints()) == n + r + 1)
                t2 = time.perf_counter()
                out.append((t2 - t0) * 1000)
                after_ack.append((t2 - t1) * 1000)
            lb.close()
        return out, after_ack
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(data, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoints", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--picks", type=int, default=200_000)
    parser.add_argument("--smoke", action="store_true", help="a few seconds, no targets")
    args = parser.parse_args()
    if args.smoke:
        args.endpoints, args.repeat, args.picks = 1000, 3, 5000
    n = args.endpoints
    print(f"discovery benchmark: {n} endpoints")
    print("1. update applied (LoadBalancer.publish of a 10%-changed snapshot)")
    updates = update_cost(n, args.repeat)
    for strategy, r in updates.items():
        print(f"   {strategy:14s} median {r['median_ms']:7.2f} ms   max {r['max_ms']:7.2f} ms")
    for name, value in resolver_side_cost(n, args.repeat).items():
        print(f"   resolver side: {name:28s} {value:7.2f} ms")
    print("2. pick + done latency, idle vs. during back-to-back updates")
    r = picks_during_updates(n, args.picks)
    print(f"   idle     p50 {r['idle_p50_us']:6.2f} µs   p99 {r['idle_p99_us']:6.2f} µs")
    print(f"   updating p50 {r['updating_p50_us']:6.2f} µs   p99 {r['updating_p99_us']:6.2f} µs"
          f"   ({r['updates_during_run']} updates, {r['updates_per_s']:.0f}/s)")
    print(f"   p99 ratio {r['ratio_p99']:.2f}x")
    rounds, n_e2e = (2, 200) if args.smoke else (7, n)
    print(f"3. end to end with {n_e2e} registered: registry change -> balancer shows it")
    consul = end_to_end_consul(n_e2e, rounds)
    print(f"   consul emulator, blocking query: median {statistics.median(consul):7.1f} ms"
          f"   max {max(consul):7.1f} ms")
    etcd = end_to_end_etcd(n_e2e, rounds)
    if etcd is None:
        print("   etcd: not installed, skipped")
    else:
        total, after_ack = etcd
        print(f"   etcd put -> watch event:         median {statistics.median(total):7.1f} ms"
              f"   max {max(total):7.1f} ms")
        print(f"     of which after etcd's ack:     median {statistics.median(after_ack):7.1f} ms"
              f"   max {max(after_ack):7.1f} ms")
    if not args.smoke:
        ok1 = updates["peak_ewma"]["median_ms"] <= 50
        ok2 = r["ratio_p99"] <= 5
        print(f"targets: update ≤ 50 ms: {'met' if ok1 else 'MISSED'}; "
              f"p99 during updates ≤ 5x idle: {'met' if ok2 else 'MISSED'}")


if __name__ == "__main__":
    main()

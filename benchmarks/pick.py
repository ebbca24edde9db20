"""Cost of pick + done per strategy, and of publishing a 10,000-endpoint snapshot.

Run by hand (not a timed test):  .venv/bin/python benchmarks/pick.py [--quick]

Every figure is measured in the same run as ``random.choice`` on a list of the
same size, and reported as a ratio to it as well, because these machines are
shared and noisy: ratios compare, absolute microseconds only indicate.
Targets (issue #2): pick+done <= 2 us at 1,000 endpoints and <= 3 us at 10,000
for every strategy; a 10,000-endpoint update <= 50 ms without blocking picks.
"""

from __future__ import annotations

import argparse
import gc
import platform
import random
import statistics
import threading
import time

from clientlb import STRATEGIES, Endpoint, EndpointSet, LoadBalancer

SIZES = (10, 1_000, 10_000)


def endpoints(n: int, offset: int = 0) -> list[Endpoint]:
    return [Endpoint(f"10.{(i + offset) // 65536 % 256}.{(i + offset) // 256 % 256}."
                     f"{(i + offset) % 256}", 8000 + (i + offset) % 1000) for i in range(n)]


def best_of(fn, repeat: int, number: int) -> float:  # type: ignore[no-untyped-def]
    """Best per-call time in microseconds over ``repeat`` runs of ``number`` calls."""
    times = []
    for _ in range(repeat):
        gc.disable()
        t0 = time.perf_counter()
        fn(number)
        times.append((time.perf_counter() - t0) / number * 1e6)
        gc.enable()
    return min(times)


def bench_pick(strategy: str, n: int, number: int, repeat: int) -> float:
    lb = LoadBalancer(endpoints(n), strategy=strategy, rng=random.Random(1))
    pick = lb.pick
    keyed = STRATEGIES[strategy].uses_key
    keys = [f"user-{i}" for i in range(1024)]

    def run(count: int) -> None:
        if keyed:
            for i in range(count):
                pick(keys[i & 1023]).done()
        else:
            for _ in range(count):
                pick().done()

    return best_of(run, repeat, number)


def bench_baseline(n: int, number: int, repeat: int) -> float:
    items = endpoints(n)
    choice = random.Random(1).choice

    def run(count: int) -> None:
        for _ in range(count):
            choice(items)

    return best_of(run, repeat, number)


def bench_publish(strategy: str, n: int = 10_000) -> tuple[float, float, float]:
    """(ms to publish a new n-endpoint set, idle pick p99 us, pick p99 us during publishes)."""
    lb = LoadBalancer(endpoints(n), strategy=strategy, rng=random.Random(1))
    sets = [EndpointSet(endpoints(n, offset=k * 997), version=k + 2) for k in range(4)]

    def pick_latencies(stop: threading.Event | None, count: int) -> list[float]:
        out = []
        clock = time.perf_counter
        i = 0
        while (stop is None and i < count) or (stop is not None and not stop.is_set()):
            t0 = clock()
            lb.pick(f"k{i & 1023}").done()
            out.append(clock() - t0)
            i += 1
        return out

    idle = pick_latencies(None, 20000)
    durations = []
    stop = threading.Event()
    during: list[float] = []
    picker = threading.Thread(target=lambda: during.extend(pick_latencies(stop, 0)))
    picker.start()
    for s in sets:
        t0 = time.perf_counter()
        lb.publish(s)
        durations.append((time.perf_counter() - t0) * 1000)
    stop.set()
    picker.join()

    def p99(xs: list[float]) -> float:
        return statistics.quantiles(xs, n=100)[98] * 1e6

    return min(durations), p99(idle), p99(during)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations (smoke run)")
    args = parser.parse_args()
    number, repeat = (2000, 2) if args.quick else (20000, 5)
    print(f"# pick + done, Python {platform.python_version()} on {platform.machine()}, "
          f"{time.strftime('%Y-%m-%d')}")
    print()
    header = "| strategy | " + " | ".join(f"{n:,} endpoints" for n in SIZES) + " |"
    print(header)
    print("|---|" + "---|" * len(SIZES))
    baselines = {n: bench_baseline(n, number, repeat) for n in SIZES}
    print("| `random.choice` (baseline) | "
          + " | ".join(f"{baselines[n]:.2f} µs" for n in SIZES) + " |")
    for strategy in STRATEGIES:
        cells = []
        for n in SIZES:
            us = bench_pick(strategy, n, number, repeat)
            cells.append(f"{us:.2f} µs ({us / baselines[n]:.1f}×)")
        print(f"| `{strategy}` | " + " | ".join(cells) + " |")
    print()
    print("| strategy | publish 10,000 new endpoints | pick p99 idle | pick p99 during publishes |")
    print("|---|---|---|---|")
    for strategy in STRATEGIES:
        ms, idle, during = bench_publish(strategy, 1_000 if args.quick else 10_000)
        print(f"| `{strategy}` | {ms:.1f} ms | {idle:.1f} µs | {during:.1f} µs |")


if __name__ == "__main__":
    main()

"""Scale: 10,000 endpoints — pick cost, update cost and memory per endpoint.

Run by hand::

    .venv/bin/python benchmarks/scale.py [--endpoints 10000] [--smoke]

For every strategy, on one balancer of ``--endpoints`` static endpoints (defaults, so
outlier detection is on):

* **pick** — ``lb.pick().done()`` per call (best of 3 runs of 20,000 calls), with
  ``random.choice`` on a list of the same size as the baseline (benchmarks/pick.py's
  functions);
* **update** — publishing a new set of as many endpoints (all different) while a thread
  keeps picking, and the pick p99 during those publishes (benchmarks/pick.py);
* **memory** — ``tracemalloc``: bytes allocated by building the balancer and its first
  pick, divided by the endpoint count, with the ``Endpoint`` objects themselves built
  beforehand (they are the caller's), and the same including them. Target (issue 9):
  ≤ 2 KiB per endpoint.
"""

from __future__ import annotations

import argparse
import gc
import random
import tracemalloc
from typing import Any

from pick import bench_baseline, bench_pick, bench_publish, endpoints

from clientlb import STRATEGIES, LoadBalancer


def memory(strategy: str, n: int) -> tuple[float, float]:
    """(bytes per endpoint for the balancer, bytes per endpoint including the Endpoints)."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        eps = endpoints(n)
        built = tracemalloc.get_traced_memory()[0]
        lb = LoadBalancer(eps, strategy=strategy, rng=random.Random(1))
        lb.pick("k").done()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
        lb.close()
    finally:
        tracemalloc.stop()
    return (after - built) / n, (after - before) / n


def run(n: int = 10_000, number: int = 20_000, repeat: int = 3) -> dict[str, Any]:
    base = bench_baseline(n, number, repeat)
    rows = []
    for strategy in STRATEGIES:
        pick_us = bench_pick(strategy, n, number, repeat)
        publish_ms, _idle, during = bench_publish(strategy, n)
        own, total = memory(strategy, n)
        rows.append((strategy, pick_us, publish_ms, during, own, total))
    lines = [f"| strategy ({n:,} endpoints) | pick+done µs | × `random.choice` | "
             "publish a new set, ms | pick p99 during publishes, µs | memory per endpoint | "
             "including the `Endpoint` |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for strategy, pick_us, publish_ms, during, own, total in rows:
        lines.append(f"| `{strategy}` | {pick_us:.2f} | {pick_us / base:.1f} | "
                     f"{publish_ms:,.1f} | {during:.1f} | {own / 1024:.2f} KiB | "
                     f"{total / 1024:.2f} KiB |")
    lines.append(f"| `random.choice` (baseline) | {base:.2f} | 1.0 | | | | |")
    markdown = "\n".join(lines)
    print(markdown + "\n", flush=True)
    return {"markdown": markdown, "rows": rows, "baseline": base}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoints", type=int, default=10_000)
    parser.add_argument("--smoke", action="store_true", help="a few seconds, for CI")
    args = parser.parse_args()
    if args.smoke:
        run(n=500, number=500, repeat=1)
    else:
        run(n=args.endpoints)


if __name__ == "__main__":
    main()

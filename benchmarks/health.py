"""What health costs: pick + done with each health feature, and rebuilds at scale.

1. **Hot path** — pick + done on one thread over 10 static endpoints
   (``peak_ewma``), best of several rounds, for: no health at all
   (``outlier_detection=None``), the default (outlier detection on), circuit
   breakers (``max_requests`` and ``max_requests_per_endpoint``), and slow start
   with a ramp in progress (picks rebuild the picker 20 times per window).
   Target: the default within 0.3 µs of no health.
2. **Rebuild at scale** — the time to republish the picker (``lb.rebuild()``:
   health update, priority/zone selection, strategy build) for 1,000 and 10,000
   endpoints, and the share of it spent in the health selection. A rebuild
   happens on every ejection, probe transition and slow-start step.
3. **Reaction** (informative) — with a fake clock, how many failed calls an
   endpoint that starts failing receives before it is ejected (round robin,
   10 endpoints, default settings): by construction ``consecutive_failures``.

Run by hand: ``.venv/bin/python benchmarks/health.py [--picks 100000]``;
``--smoke`` runs a sub-second version (no timing assertions anywhere).
"""

from __future__ import annotations

import argparse
import random
import time
from typing import Any

import clientlb
from clientlb import Endpoint, Outcome
from clientlb._health.selection import select


def pick_done(lb: clientlb.LoadBalancer, picks: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(picks):
            p = lb.pick()
            p.done()
        best = min(best, (time.perf_counter() - start) / picks)
    return best * 1e6


def hot_path(picks: int, rounds: int) -> None:
    eps = [f"127.0.0.1:{9000 + i}" for i in range(10)]
    cases: list[tuple[str, dict[str, Any]]] = [
        ("no health (outlier_detection=None)", {"outlier_detection": None}),
        ("default (outlier detection on)", {}),
        ("+ max_requests, max_requests_per_endpoint",
         {"max_requests": 10_000, "max_requests_per_endpoint": 1_000}),
        ("+ slow start, ramp in progress", {"slow_start": clientlb.SlowStart(window=1.0)}),
    ]
    print(f"pick + done, 10 endpoints, peak_ewma, best of {rounds} x {picks}:")
    for label, options in cases:
        lb = clientlb.LoadBalancer(eps, **options)
        if "slow_start" in options:
            for i in range(10):  # make them all "new" so that they ramp
                lb.add(Endpoint("127.0.0.2", 9100 + i))
        print(f"  {label:<45} {pick_done(lb, picks, rounds):6.3f} µs")
        lb.close()


def rebuilds(sizes: list[int], rounds: int) -> None:
    print("rebuild (health update + selection + strategy build), best of", rounds)
    for n in sizes:
        eps = [Endpoint(f"10.{i // 65536}.{(i // 256) % 256}.{i % 256}", 80,
                        priority=i % 2, zone="a" if i % 3 else "b") for i in range(n)]
        for strategy in ("peak_ewma", "round_robin"):
            lb = clientlb.LoadBalancer(eps, strategy=strategy, local_zone="a")
            best = float("inf")
            for _ in range(rounds):
                start = time.perf_counter()
                lb.rebuild()
                best = min(best, time.perf_counter() - start)
            states = [lb._states[e.address] for e in lb._endpoint_set]
            sel = float("inf")
            for _ in range(rounds):
                start = time.perf_counter()
                select(states, 0.0, panic_threshold=0.5, overprovisioning_factor=1.4,
                       local_zone="a", ramp=None)
                sel = min(sel, time.perf_counter() - start)
            print(f"  {n:>6} endpoints {strategy:<12} rebuild {best * 1000:7.2f} ms "
                  f"(selection {sel * 1000:6.2f} ms)")
            lb.close()


def reaction() -> None:
    now = [0.0]
    lb = clientlb.LoadBalancer([f"10.0.0.{i}:80" for i in range(1, 11)],
                               strategy="round_robin", clock=lambda: now[0],
                               rng=random.Random(1))
    bad = "10.0.0.1:80"
    sent_to_bad = 0
    for _ in range(1000):
        p = lb.pick()
        failed = p.endpoint.address == bad
        sent_to_bad += failed
        p.done(Outcome.FAILURE if failed else Outcome.SUCCESS, latency=0.01)
        now[0] += 0.001
    print(f"reaction: a failing endpoint received {sent_to_bad} of 1000 calls "
          f"(state {lb.snapshot().by_address()[bad].state})")
    lb.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--picks", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--smoke", action="store_true", help="a sub-second run")
    args = parser.parse_args()
    if args.smoke:
        hot_path(2_000, 1)
        rebuilds([1_000], 1)
    else:
        hot_path(args.picks, args.rounds)
        rebuilds([1_000, 10_000], 5)
    reaction()


if __name__ == "__main__":
    main()

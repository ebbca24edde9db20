"""Compare every strategy on one simulated pool: who gets the traffic, and the latency.

Four backends answer in ~10 ms, one of them (10.0.0.4) in ~100 ms. A
discrete-event simulation keeps 16 requests in flight and drives them through
each strategy with clientlb's injectable clock, so the run is instant and
repeatable (same seed, same numbers). Run:  python examples/strategies_demo.py
"""

from __future__ import annotations

import heapq
import random
import statistics

import clientlb

BACKENDS = {"10.0.0.1:8080": 0.010, "10.0.0.2:8080": 0.010, "10.0.0.3:8080": 0.010,
            "10.0.0.4:8080": 0.100}
CONCURRENCY = 16
REQUESTS = 20_000


class SimClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def simulate(strategy: str, seed: int = 1) -> tuple[dict[str, float], list[float]]:
    clock = SimClock()
    rng = random.Random(seed)
    lb = clientlb.LoadBalancer(list(BACKENDS), strategy=strategy, clock=clock,
                               rng=random.Random(seed))
    in_flight: list[tuple[float, int, clientlb.Pick]] = []
    counts = dict.fromkeys(BACKENDS, 0)
    latencies: list[float] = []
    seq = 0

    def start() -> None:
        nonlocal seq
        p = lb.pick(key=f"user-{rng.randrange(1000)}")  # the key matters to hashing only
        counts[p.endpoint.address] += 1
        service = BACKENDS[p.endpoint.address] * rng.uniform(0.8, 1.2)
        heapq.heappush(in_flight, (clock.now + service, seq, p))
        seq += 1

    for _ in range(CONCURRENCY):
        start()
    for _ in range(REQUESTS):
        finish, _, p = heapq.heappop(in_flight)
        clock.now = finish
        latencies.append(clock.now - p.started_at)
        p.done()
        start()
    lb.close()
    total = sum(counts.values())
    return {a: c / total for a, c in counts.items()}, latencies


def main() -> None:
    print(f"{REQUESTS} requests, {CONCURRENCY} in flight; 10.0.0.4 is 10x slower\n")
    head = "strategy".ljust(15) + "".join(a.split(":")[0].rjust(10) for a in BACKENDS)
    print(head + "p50 ms".rjust(9) + "p99 ms".rjust(9))
    for strategy in clientlb.STRATEGIES:
        share, lat = simulate(strategy)
        q = statistics.quantiles(lat, n=100)
        print(strategy.ljust(15) + "".join(f"{share[a]:10.1%}" for a in BACKENDS)
              + f"{q[49] * 1000:9.1f}{q[98] * 1000:9.1f}")
    print("\npeak_ewma (the default) and least_request steer away from the slow backend;")
    print("round_robin, random and the hashing strategies cannot, by design.")


if __name__ == "__main__":
    main()

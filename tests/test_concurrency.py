"""Thread safety: many threads picking while the endpoint set changes."""

from __future__ import annotations

import random
import threading

import pytest

from clientlb import STRATEGIES, Endpoint, EndpointSet, LoadBalancer, Maglev, Outcome

from ._helpers import closing


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_eight_threads_pick_while_endpoints_change(strategy: str) -> None:
    base = [Endpoint(f"10.0.0.{i}", 80, weight=1 + i % 3) for i in range(1, 21)]
    # a small Maglev table keeps the 40 rebuilds cheap; the algorithm is the same
    lb = closing(LoadBalancer(base, strategy=Maglev(table_size=4099) if strategy == "maglev"
                              else strategy))
    errors: list[BaseException] = []
    stop = threading.Event()
    picks = [0] * 8

    def worker(n: int) -> None:
        r = random.Random(n)
        try:
            while not stop.is_set():
                p = lb.pick(key=str(r.random()))
                p.done(Outcome.FAILURE if r.random() < 0.1 else Outcome.SUCCESS,
                       latency=r.random() / 100)
                picks[n] += 1
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    r = random.Random(0)
    for version in range(2, 40):
        subset = r.sample(base, r.randint(1, len(base)))
        lb.publish(EndpointSet(subset, version=version))
    lb.publish(EndpointSet(base, version=99))
    stop.set()
    for t in threads:
        t.join(10)
    assert not errors
    assert all(n > 0 for n in picks)
    snap = lb.snapshot()
    assert all(row.in_flight == 0 for row in snap.endpoints)
    assert sum(row.requests for row in snap.endpoints) <= sum(picks)


def test_in_flight_counts_are_exact_under_contention() -> None:
    lb = closing(LoadBalancer(["a:1", "b:1"], strategy="least_request"))
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        for _ in range(5000):
            lb.pick().done()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows = lb.snapshot().endpoints
    assert sum(r.requests for r in rows) == 40000
    assert all(r.in_flight == 0 for r in rows)

"""Subsetting over real sockets: clients connect only to the backends of their subset.

Ten HTTP/1.1 backends on 127.0.0.1 count the connections they accept; five
clients, each with its own balancer (``Aperture(size=2)``, client ``i`` of 5) and
``clientlb.HTTPTransport``, send their requests one client after the other, so
each backend's new connections can be put down to the client that opened them.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import httpx
import pytest

import clientlb

from ._http_backend import Backend


def counts(backend: Backend) -> tuple[int, int]:
    """(connections accepted, requests served) so far."""
    return backend.connections, backend.served()


@pytest.fixture
def backends() -> Iterator[list[Backend]]:
    started = [Backend(f"b{i}") for i in range(10)]
    yield started
    for b in started:
        b.close()


@pytest.mark.parametrize("strategy", ["round_robin", "peak_ewma"])
def test_each_client_connects_only_to_its_subset(backends: list[Backend],
                                                 strategy: str) -> None:
    """5 clients × 10 backends: 10 connections instead of 50, each backend used by one
    client, and (round robin) exactly the same number of requests on every backend."""
    by_address = {b.address: b for b in backends}
    for index in range(5):
        before = {a: counts(b) for a, b in by_address.items()}
        lb = clientlb.LoadBalancer(list(by_address), name="svc", strategy=strategy,
                                   rng=random.Random(index),
                                   subset=clientlb.Aperture(size=2, client_index=index,
                                                            client_count=5))
        subset = {e.address for e in lb.snapshot().endpoints if e.in_subset}
        assert len(subset) == 2
        with httpx.Client(transport=clientlb.HTTPTransport(lb), base_url="http://svc") as client:
            for _ in range(40):
                assert client.get("/").status_code == 200
        lb.close()
        opened = {a for a, b in by_address.items() if counts(b)[0] > before[a][0]}
        assert opened == subset, f"client {index} connected outside its subset"
        assert all(counts(by_address[a])[0] - before[a][0] == 1 for a in subset)  # keep-alive
    assert sum(counts(b)[0] for b in backends) == 10  # a full mesh would be 50
    assert all(counts(b)[0] == 1 for b in backends)
    if strategy == "round_robin":
        assert [counts(b)[1] for b in backends] == [20] * 10

"""Runtime control on a balancer: strategy switch, weights, drain, static add/remove."""

from __future__ import annotations

import random
from collections import Counter

import pytest

import clientlb
from clientlb import ConfigError, Endpoint, LoadBalancer

from ._helpers import FakeClock, closing


def _share(lb: LoadBalancer, n: int = 400) -> Counter[str]:
    counts: Counter[str] = Counter()
    for _ in range(n):
        with lb.pick() as p:
            counts[p.endpoint.address] += 1
    return counts


def _lb(clock: FakeClock, *addresses: str, strategy: str = "round_robin") -> LoadBalancer:
    return closing(LoadBalancer(list(addresses), strategy=strategy, clock=clock,
                                rng=random.Random(7)))


def test_set_strategy_keeps_in_flight_calls_and_their_load(clock: FakeClock) -> None:
    """A live switch keeps the in-flight count, which the new strategy then uses."""
    lb = _lb(clock, "127.0.0.1:1", "127.0.0.1:2")
    held = [lb.pick() for _ in range(4)]  # round robin: 2 on each
    busy = held[0].endpoint.address
    for p in held[1:]:
        if p.endpoint.address != busy:
            p.done()
    assert lb.in_flight() == 2
    lb.set_strategy("least_request")
    assert lb.strategy.name == "least_request"
    assert lb.in_flight() == 2
    for _ in range(20):
        with lb.pick() as p:
            assert p.endpoint.address != busy
    held[0].done()
    assert lb.state_of(busy).load.in_flight == 1  # type: ignore[union-attr]


def test_set_strategy_rejects_an_unknown_name_and_keeps_the_old_one(clock: FakeClock) -> None:
    lb = _lb(clock, "127.0.0.1:1")
    with pytest.raises(ConfigError, match="unknown strategy 'nope'"):
        lb.set_strategy("nope")
    assert lb.strategy.name == "round_robin"


def test_set_weight_changes_the_share_and_survives_a_discovery_update(clock: FakeClock) -> None:
    lb = _lb(clock, "127.0.0.1:1", "127.0.0.1:2")
    lb.set_weight("127.0.0.1:1", 3)
    assert _share(lb) == {"127.0.0.1:1": 300, "127.0.0.1:2": 100}
    lb.publish(clientlb.EndpointSet([Endpoint("127.0.0.1", 1, weight=5),
                                     Endpoint("127.0.0.1", 2)], version=2))
    assert lb.snapshot().by_address()["127.0.0.1:1"].effective_weight == 3
    lb.set_weight("127.0.0.1:1", None)
    assert lb.snapshot().by_address()["127.0.0.1:1"].effective_weight == 5


def test_set_weight_rejects_a_negative_weight(clock: FakeClock) -> None:
    lb = _lb(clock, "127.0.0.1:1")
    with pytest.raises(ConfigError, match=r"weight must be a finite number >= 0 or None, got -1"):
        lb.set_weight("127.0.0.1:1", -1)


def test_drain_stops_new_picks_and_lets_in_flight_finish(clock: FakeClock) -> None:
    lb = _lb(clock, "127.0.0.1:1", "127.0.0.1:2")
    in_flight = [lb.pick(), lb.pick()]
    assert lb.drain("127.0.0.1:1")
    assert lb.snapshot().by_address()["127.0.0.1:1"].state == "draining"
    assert _share(lb, 50) == {"127.0.0.1:2": 50}
    for p in in_flight:
        p.done()
    assert lb.in_flight() == 0
    assert lb.undrain("127.0.0.1:1")
    assert set(_share(lb, 10)) == {"127.0.0.1:1", "127.0.0.1:2"}
    assert not lb.drain("127.0.0.1:9")


def test_add_and_remove_edit_a_static_target(clock: FakeClock) -> None:
    lb = _lb(clock, "127.0.0.1:1")
    lb.add("127.0.0.1:2")
    lb.add(Endpoint("127.0.0.1", 3, weight=2))
    assert [e.address for e in lb.endpoints()] == ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]
    assert _share(lb, 400)["127.0.0.1:3"] == 200
    held = lb.pick(prefer="127.0.0.1:1")
    assert lb.remove("127.0.0.1:1")
    assert not lb.remove("127.0.0.1:1")
    assert "127.0.0.1:1" not in _share(lb, 30)
    assert lb.snapshot().by_address()["127.0.0.1:1"].state == "draining"
    held.done()
    assert "127.0.0.1:1" not in lb.snapshot().by_address()


def test_add_refuses_a_target_managed_by_discovery() -> None:
    lb = LoadBalancer.__new__(LoadBalancer)
    lb._target = clientlb.parse_target("dns:///example.com:80")
    with pytest.raises(ConfigError, match=r"add\(\) only edits static targets; dns://"):
        lb.add("127.0.0.1:1")


def test_add_inside_an_event_loop_waits_for_the_first_set() -> None:
    """Before the static list is published (by a task), an edit would be lost: refused."""
    import asyncio

    async def scenario() -> list[str]:
        lb = LoadBalancer(["127.0.0.1:1"])
        with pytest.raises(clientlb.ClientLBError, match=r"await lb\.await_ready\(\)"):
            lb.add("127.0.0.1:2")
        assert await lb.await_ready()
        lb.add("127.0.0.1:2")
        addresses = [e.address for e in lb.endpoints()]
        await lb.aclose()
        return addresses

    assert asyncio.run(scenario()) == ["127.0.0.1:1", "127.0.0.1:2"]

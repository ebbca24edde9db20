"""Behaviour of every strategy: proportions, smoothness, load awareness, hashing."""

from __future__ import annotations

import itertools
import random
from collections import Counter

import pytest

from clientlb import STRATEGIES, Endpoint, LoadBalancer, Maglev, Outcome, RingHash

from ._helpers import FakeClock, closing


def eps(*weights: float) -> list[Endpoint]:
    return [Endpoint(f"10.0.0.{i + 1}", 80, weight=w) for i, w in enumerate(weights)]


def lb_for(strategy: object, endpoints: list[Endpoint], seed: int = 7,
           clock: FakeClock | None = None) -> LoadBalancer:
    return closing(LoadBalancer(endpoints, strategy=strategy,  # type: ignore[arg-type]
                                rng=random.Random(seed), clock=clock or FakeClock()))


def shares(lb: LoadBalancer, n: int, key_fn=None) -> Counter[str]:  # type: ignore[no-untyped-def]
    c: Counter[str] = Counter()
    for i in range(n):
        with lb.pick(key=key_fn(i) if key_fn else None) as p:
            c[p.endpoint.host] += 1
    return c


def max_run(seq: list[str]) -> int:
    return max(len(list(g)) for _, g in itertools.groupby(seq))


# -- round robin -------------------------------------------------------------------------


def test_round_robin_equal_weights_rotates_exactly() -> None:
    lb = lb_for("round_robin", eps(1, 1, 1, 1))
    seq = [lb.pick().endpoint.host for _ in range(400)]
    assert Counter(seq) == {f"10.0.0.{i}": 100 for i in range(1, 5)}
    assert max_run(seq) == 1


@pytest.mark.parametrize("weights", [(5, 3, 1), (8, 1, 1, 1), (2, 3, 7, 1, 1), (100, 1, 1, 1)])
def test_round_robin_weighted_proportions_are_exact_per_cycle(weights: tuple[int, ...]) -> None:
    lb = lb_for("round_robin", eps(*weights), seed=3)
    total = sum(weights)
    for _ in range(3):  # every window of sum(weights) picks is exact
        c = Counter(lb.pick().endpoint.host for _ in range(total))
        assert [c[f"10.0.0.{i + 1}"] for i in range(len(weights))] == list(weights)


def _nginx_smooth_wrr(weights: list[int], n: int) -> list[int]:
    current = [0] * len(weights)
    out = []
    for _ in range(n):
        for i, w in enumerate(weights):
            current[i] += w
        best = max(range(len(weights)), key=current.__getitem__)
        current[best] -= sum(weights)
        out.append(best)
    return out


@pytest.mark.parametrize("weights", [[5, 1, 1], [8, 1, 1, 1], [20] + [1] * 10, [3, 2, 1]])
def test_round_robin_runs_are_no_longer_than_nginx_smooth_wrr(weights: list[int]) -> None:
    lb = lb_for("round_robin", eps(*weights), seed=11)
    seq = [lb.pick().endpoint.host for _ in range(sum(weights) * 30)]
    nginx = _nginx_smooth_wrr(weights, sum(weights) * 30)
    assert max_run(seq) <= max_run([str(x) for x in nginx])
    # and light endpoints are spread out rather than bunched together
    light_runs = [len(list(g)) for k, g in itertools.groupby(x != "10.0.0.1" for x in seq) if k]
    nginx_light = [len(list(g)) for k, g in itertools.groupby(x != 0 for x in nginx) if k]
    assert max(light_runs) <= max(nginx_light)


def test_round_robin_start_is_randomized_across_balancers() -> None:
    firsts = {lb_for("round_robin", eps(1, 1, 1, 1, 1, 1, 1, 1), seed=s).pick().endpoint.host
              for s in range(20)}
    assert len(firsts) > 3


# -- random ---------------------------------------------------------------------------


def test_random_follows_weights() -> None:
    lb = lb_for("random", eps(1, 2, 7))
    c = shares(lb, 20000)
    for host, w in (("10.0.0.1", 0.1), ("10.0.0.2", 0.2), ("10.0.0.3", 0.7)):
        assert abs(c[host] / 20000 - w) < 0.015


# -- least request / P2C ------------------------------------------------------------------


def test_least_request_avoids_the_loaded_endpoint() -> None:
    lb = lb_for("least_request", eps(1, 1, 1, 1, 1))
    held = [lb.pick(prefer="10.0.0.1:80") for _ in range(20)]  # 20 in flight on 10.0.0.1
    assert {p.endpoint.host for p in held} == {"10.0.0.1"}
    c = shares(lb, 2000)
    assert c["10.0.0.1"] == 0
    for p in held:
        p.done()
    c = shares(lb, 2000)
    assert c["10.0.0.1"] > 300


def test_least_request_of_two_always_takes_the_less_loaded() -> None:
    lb = lb_for("least_request", eps(1, 1))
    first = lb.pick()
    for _ in range(50):
        p = lb.pick()
        assert p.endpoint != first.endpoint
        p.done()


def test_least_request_idle_pool_follows_weights() -> None:
    lb = lb_for("least_request", eps(3, 1))
    c = shares(lb, 20000)
    assert abs(c["10.0.0.1"] / 20000 - 0.75) < 0.02


def test_least_request_weights_scale_the_load() -> None:
    # weight 4 vs 1 with steady concurrency: the heavy endpoint carries more in flight
    lb = lb_for("least_request", eps(4, 1))
    in_flight = [lb.pick() for _ in range(50)]
    c = Counter(p.endpoint.host for p in in_flight)
    assert c["10.0.0.1"] >= 35
    for p in in_flight:
        p.done()


# -- peak EWMA ----------------------------------------------------------------------------


def drive(lb: LoadBalancer, clock: FakeClock, latency: dict[str, float], n: int) -> Counter[str]:
    c: Counter[str] = Counter()
    for _ in range(n):
        p = lb.pick()
        c[p.endpoint.host] += 1
        clock.advance(0.001)
        p.done(latency=latency[p.endpoint.host])
    return c


def test_peak_ewma_moves_traffic_away_from_a_slow_endpoint() -> None:
    clock = FakeClock()
    lb = lb_for("peak_ewma", eps(1, 1, 1, 1), clock=clock)
    latency = {f"10.0.0.{i}": 0.010 for i in range(1, 5)}
    latency["10.0.0.2"] = 0.200
    drive(lb, clock, latency, 200)  # warm up
    c = drive(lb, clock, latency, 2000)
    assert c["10.0.0.2"] < 0.05 * 2000
    assert min(c[h] for h in ("10.0.0.1", "10.0.0.3", "10.0.0.4")) > 500


def test_peak_ewma_reacts_within_a_few_requests_and_forgives_with_decay() -> None:
    clock = FakeClock()
    lb = lb_for("peak_ewma", eps(1, 1), clock=clock)
    latency = {"10.0.0.1": 0.010, "10.0.0.2": 0.010}
    drive(lb, clock, latency, 100)
    latency["10.0.0.2"] = 0.5  # turns slow
    c = drive(lb, clock, latency, 200)
    assert c["10.0.0.2"] <= 3  # one slow answer is enough to move away
    latency["10.0.0.2"] = 0.010  # recovers; after ~decay its estimate is forgiven
    clock.advance(60)
    c = drive(lb, clock, latency, 400)
    assert c["10.0.0.2"] > 100


def test_peak_ewma_counts_in_flight_work() -> None:
    clock = FakeClock()
    lb = lb_for("peak_ewma", eps(1, 1), clock=clock)
    held = [lb.pick() for _ in range(10)]
    c = Counter(p.endpoint.host for p in held)
    assert abs(c["10.0.0.1"] - c["10.0.0.2"]) <= 1  # equal latency → balance in flight
    for p in held:
        p.done()


def test_fast_failures_do_not_make_an_endpoint_look_fast() -> None:
    clock = FakeClock()
    lb = lb_for("peak_ewma", eps(1, 1), clock=clock)
    latency = {"10.0.0.1": 0.050, "10.0.0.2": 0.050}
    drive(lb, clock, latency, 100)
    ewma_before = lb.state_of("10.0.0.2:80").load.latency(clock())  # type: ignore[union-attr]
    for _ in range(20):
        p = lb.pick(prefer="10.0.0.2:80")
        p.done(Outcome.GATEWAY_FAILURE, latency=0.0001)
    ewma_after = lb.state_of("10.0.0.2:80").load.latency(clock())  # type: ignore[union-attr]
    assert ewma_after >= ewma_before * 0.99


# -- consistent hashing -----------------------------------------------------------------


def keys(n: int) -> list[str]:
    return [f"user-{i}" for i in range(n)]


def mapping(lb: LoadBalancer, ks: list[str]) -> dict[str, str]:
    out = {}
    for k in ks:
        with lb.pick(key=k) as p:
            out[k] = p.endpoint.address
    return out


@pytest.mark.parametrize("strategy", ["ring_hash", "maglev"])
def test_hashing_is_stable_across_balancers_and_processes(strategy: str) -> None:
    ks = keys(500)
    a = mapping(lb_for(strategy, eps(*[1] * 8), seed=1), ks)
    b = mapping(lb_for(strategy, list(reversed(eps(*[1] * 8))), seed=99), ks)
    assert a == b


@pytest.mark.parametrize("strategy", ["ring_hash", "maglev"])
def test_hashing_spreads_keys_evenly(strategy: str) -> None:
    lb = lb_for(strategy, eps(*[1] * 10))
    c = Counter(mapping(lb, keys(20000)).values())
    mean = 2000
    limit = 1.35 if strategy == "ring_hash" else 1.1
    assert max(c.values()) < limit * mean and min(c.values()) > (2 - limit) * mean


@pytest.mark.parametrize("strategy", ["ring_hash", "maglev"])
@pytest.mark.parametrize("n", [5, 10, 50])
def test_removing_one_of_n_moves_about_one_nth_of_keys(strategy: str, n: int) -> None:
    ks = keys(20000)
    endpoints = eps(*[1] * n)
    before = mapping(lb_for(strategy, endpoints), ks)
    removed = endpoints[n // 2].address
    after = mapping(lb_for(strategy, endpoints[: n // 2] + endpoints[n // 2 + 1:]), ks)
    moved = sum(1 for k in ks if before[k] != after[k])
    assert moved / len(ks) < 1.25 / n + 0.01
    # keys that were not on the removed endpoint stay where they were (ring);
    # Maglev allows a small extra fraction
    stayed_wrongly = sum(1 for k in ks if before[k] != removed and before[k] != after[k])
    assert stayed_wrongly / len(ks) < (0.001 if strategy == "ring_hash" else 0.25 / n + 0.01)


@pytest.mark.parametrize("strategy", ["ring_hash", "maglev"])
def test_adding_one_moves_about_one_nth_of_keys(strategy: str) -> None:
    ks = keys(20000)
    endpoints = eps(*[1] * 11)
    before = mapping(lb_for(strategy, endpoints[:10]), ks)
    after = mapping(lb_for(strategy, endpoints), ks)
    moved = sum(1 for k in ks if before[k] != after[k])
    assert moved / len(ks) < 1.25 / 11 + 0.01
    assert all(after[k] == endpoints[10].address for k in ks if before[k] != after[k]) or \
        strategy == "maglev"


@pytest.mark.parametrize("strategy", ["ring_hash", "maglev"])
def test_hashing_is_weight_aware(strategy: str) -> None:
    lb = lb_for(strategy, eps(3, 1))
    c = Counter(mapping(lb, keys(20000)).values())
    # 300 vs 100 ring points leave a few percent of noise; Maglev's table is exact
    assert abs(c["10.0.0.1:80"] / 20000 - 0.75) < (0.06 if strategy == "ring_hash" else 0.01)


def test_hash_keys_of_every_type_work_and_bool_is_rejected() -> None:
    lb = lb_for("maglev", eps(1, 1, 1))
    assert lb.pick(key=b"bytes").endpoint == lb.pick(key=b"bytes").endpoint
    assert lb.pick(key=12345).endpoint == lb.pick(key=12345).endpoint
    with pytest.raises(TypeError):
        lb.pick(key=[1])  # type: ignore[arg-type]


def test_ring_and_table_sizes_follow_documented_rules() -> None:
    assert RingHash().point_counts([0.5, 0.25]) == [200, 100]  # lightest gets 100
    assert RingHash().point_counts([1.0] * 50) == [100] * 50
    assert RingHash().point_counts([1.0, 3.0] * 10) == [100, 300] * 10
    assert sum(RingHash().point_counts([1.0] * 10_000)) == 130000  # 13 each, under the cap
    assert Maglev().size_for(100) == 65537
    assert Maglev().size_for(10_000) == 131071


def test_strategy_options_are_validated() -> None:
    from clientlb import ConfigError, PeakEwma

    with pytest.raises(ConfigError, match="table_size must be a prime"):
        Maglev(table_size=65536)
    with pytest.raises(ConfigError, match="max_ring_size must be an integer >= 1"):
        RingHash(max_ring_size=0)
    with pytest.raises(ConfigError, match="decay must be a finite number > 0"):
        PeakEwma(decay=0)


# -- every strategy --------------------------------------------------------------------


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_key_is_ignored_or_used_consistently(strategy: str) -> None:
    lb = lb_for(strategy, eps(1, 1, 1))
    if STRATEGIES[strategy].uses_key:
        assert len({lb.pick(key="k").endpoint for _ in range(20)}) == 1
    else:
        assert len({lb.pick(key="k").endpoint for _ in range(60)}) > 1


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_zero_weight_endpoints_are_not_picked_while_others_exist(strategy: str) -> None:
    lb = lb_for(strategy, eps(1, 0, 1))
    assert "10.0.0.2" not in shares(lb, 500, key_fn=str)
    lb_all_zero = lb_for(strategy, eps(0, 0))
    assert set(shares(lb_all_zero, 200, key_fn=str)) == {"10.0.0.1", "10.0.0.2"}


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_a_single_endpoint_is_always_picked(strategy: str) -> None:
    lb = lb_for(strategy, eps(1))
    assert set(shares(lb, 50, key_fn=str)) == {"10.0.0.1"}


def test_lowest_priority_level_takes_the_traffic() -> None:
    endpoints = [Endpoint("a", 1, priority=1), Endpoint("b", 1, priority=0),
                 Endpoint("c", 1, priority=0)]
    lb = lb_for("round_robin", endpoints)
    assert set(shares(lb, 100)) == {"b", "c"}

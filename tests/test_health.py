"""Health logic with a fake clock and seeded randomness: no sleeping, no I/O.

Outlier detection (each detector's maths, ejection time growth and decay,
max_ejection_percent on small pools), panic, active-check thresholds (the
state machine, fed by hand), slow start, priority spill-over, zone
preference and circuit breaking.
"""

from __future__ import annotations

import collections
import logging
import math
import random
from collections.abc import Iterator

import pytest

import clientlb
from clientlb import (
    CircuitOpen,
    ConfigError,
    Endpoint,
    FailurePercentage,
    HealthCheck,
    LoadBalancer,
    NoEndpointAvailable,
    Outcome,
    OutlierDetection,
    SlowStart,
    SuccessRate,
)
from clientlb._core.balancer import Pick
from clientlb._engine.connectivity import Connectivity
from clientlb._health.checks import HealthChecker

from ._helpers import FakeClock


@pytest.fixture(autouse=True)
def _no_probe_io(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit tests feed probe results by hand: the checker never starts."""
    monkeypatch.setattr(HealthChecker, "start", lambda self: None)


def addr(i: int) -> str:
    return f"10.0.0.{i}:80"


def make_lb(clock: FakeClock, n: int = 3, *, endpoints: list[Endpoint] | None = None,
            strategy: str = "round_robin", **options: object) -> LoadBalancer:
    eps = endpoints or [Endpoint(f"10.0.0.{i}", 80) for i in range(1, n + 1)]
    return LoadBalancer(eps, strategy=strategy, clock=clock, rng=random.Random(7),
                        **options)  # type: ignore[arg-type]


def report(lb: LoadBalancer, address: str, outcome: Outcome, times: int = 1) -> None:
    """Send ``times`` calls to ``address`` (it must be eligible) ending with ``outcome``."""
    for _ in range(times):
        p = lb.pick(prefer=address)
        state = lb.state_of(address)
        if p.endpoint.address != address and state is not None \
                and state.connectivity is Connectivity.TRANSIENT_FAILURE:
            # picks avoid an endpoint that could not be connected to; these tests
            # feed outlier detection, so the call goes to it all the same
            p.done(Outcome.CANCELLED)
            p = Pick(lb, state, lb.clock())
        assert p.endpoint.address == address
        p.done(outcome, latency=0.01)


def state_of(lb: LoadBalancer, address: str) -> str:
    return lb.snapshot().by_address()[address].state


def picked(lb: LoadBalancer, n: int = 300) -> collections.Counter[str]:
    counts: collections.Counter[str] = collections.Counter()
    for _ in range(n):
        p = lb.pick()
        counts[p.endpoint.address] += 1
        p.done(Outcome.CANCELLED)
    return counts


def weights(lb: LoadBalancer) -> dict[str, float]:
    return {e.address: e.effective_weight for e in lb.snapshot().endpoints}


@pytest.fixture
def lb3(clock: FakeClock) -> Iterator[LoadBalancer]:
    with make_lb(clock) as lb:
        yield lb


# -- consecutive failures ------------------------------------------------------------------


def test_five_consecutive_failures_eject_and_four_do_not(clock: FakeClock,
                                                        lb3: LoadBalancer) -> None:
    report(lb3, addr(1), Outcome.FAILURE, 4)
    assert state_of(lb3, addr(1)) == "healthy"
    report(lb3, addr(1), Outcome.FAILURE)
    assert state_of(lb3, addr(1)) == "ejected"
    assert addr(1) not in picked(lb3)
    stats = lb3.health_statistics()
    assert stats["ejections_consecutive_failures"] == 1
    assert stats["endpoints_ejected"] == 1


def test_a_success_resets_the_consecutive_failure_count(lb3: LoadBalancer) -> None:
    for _ in range(3):
        report(lb3, addr(1), Outcome.FAILURE, 4)
        report(lb3, addr(1), Outcome.SUCCESS)
    assert state_of(lb3, addr(1)) == "healthy"


def test_cancelled_calls_neither_count_nor_reset(lb3: LoadBalancer) -> None:
    report(lb3, addr(1), Outcome.FAILURE, 4)
    report(lb3, addr(1), Outcome.CANCELLED, 3)
    report(lb3, addr(1), Outcome.TIMEOUT)
    assert state_of(lb3, addr(1)) == "ejected"


def test_ejected_endpoint_returns_after_base_ejection_time_without_traffic(
        clock: FakeClock, lb3: LoadBalancer) -> None:
    report(lb3, addr(1), Outcome.FAILURE, 5)
    clock.advance(29.9)
    assert addr(1) not in picked(lb3, 60)
    clock.advance(0.1)
    # no outcome arrived since: the pick itself notices the deadline
    counts = picked(lb3, 60)
    assert counts[addr(1)] == 20
    assert state_of(lb3, addr(1)) == "healthy"
    assert lb3.health_statistics()["unejections_expired"] == 1


def test_ejection_time_grows_with_each_ejection_and_is_capped(clock: FakeClock) -> None:
    od = OutlierDetection(base_ejection_time=30, max_ejection_time=70, interval=1000)
    with make_lb(clock, outlier_detection=od) as lb:
        durations = []
        for _ in range(4):
            report(lb, addr(1), Outcome.FAILURE, 5)
            st = lb.state_of(addr(1))
            assert st is not None and st.ejected_until is not None
            durations.append(st.ejected_until - clock.now)
            clock.advance(durations[-1])
            picked(lb, 3)
        assert durations == [30, 60, 70, 70]


def test_ejection_multiplier_decays_while_the_endpoint_stays_healthy(clock: FakeClock) -> None:
    od = OutlierDetection(base_ejection_time=30, interval=10)
    with make_lb(clock, outlier_detection=od) as lb:
        for _ in range(3):  # ejected 3 times in a row: multiplier 3
            report(lb, addr(1), Outcome.FAILURE, 5)
            st = lb.state_of(addr(1))
            assert st is not None and st.ejected_until is not None
            clock.advance(st.ejected_until - clock.now)
            picked(lb, 3)
        assert st.ejection_multiplier == 3
        clock.advance(10)  # one sweep interval healthy: forgiven one step
        report(lb, addr(1), Outcome.SUCCESS)
        assert st.ejection_multiplier == 2
        clock.advance(25)  # two more intervals, swept lazily at once
        report(lb, addr(1), Outcome.SUCCESS)
        assert st.ejection_multiplier == 0
        assert lb.snapshot().by_address()[addr(1)].ejection_count == 3  # monotonic
        report(lb, addr(1), Outcome.FAILURE, 5)
        assert st.ejected_until == clock.now + 30  # back to the base time


def test_transition_is_logged_once_under_clientlb_health(
        clock: FakeClock, lb3: LoadBalancer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="clientlb.health")
    report(lb3, addr(1), Outcome.FAILURE, 5)
    for _ in range(3):  # late outcomes of calls that were in flight
        lb3._health.on_outcome(lb3.state_of(addr(1)), Outcome.FAILURE, 0.01,  # type: ignore[arg-type]
                               clock.now)
    lines = [r.getMessage() for r in caplog.records if r.name == "clientlb.health"]
    ejected = [m for m in lines if "-> ejected" in m]
    assert len(ejected) == 1
    assert "consecutive_failures: 5 in a row; ejected for 30s" in ejected[0]
    clock.advance(30)
    picked(lb3, 3)
    lines = [r.getMessage() for r in caplog.records if r.name == "clientlb.health"]
    assert sum("ejected -> healthy" in m for m in lines) == 1
    assert lb3.health_statistics()["became_ejected"] == 1
    assert lb3.health_statistics()["became_healthy"] == 1


def test_gateway_detector_ignores_plain_500s(clock: FakeClock) -> None:
    od = OutlierDetection(consecutive_failures=None, consecutive_gateway_failures=3)
    with make_lb(clock, outlier_detection=od) as lb:
        for _ in range(4):
            report(lb, addr(1), Outcome.GATEWAY_FAILURE, 2)
            report(lb, addr(1), Outcome.FAILURE)  # a 500 resets the gateway count
        assert state_of(lb, addr(1)) == "healthy"
        report(lb, addr(1), Outcome.GATEWAY_FAILURE, 2)
        report(lb, addr(1), Outcome.CONNECT_FAILURE)
        assert state_of(lb, addr(1)) == "ejected"
        assert lb.health_statistics()["ejections_consecutive_gateway_failures"] == 1


def test_split_local_origin_errors_counts_connect_failures_apart(clock: FakeClock) -> None:
    od = OutlierDetection(split_local_origin_errors=True, consecutive_failures=5,
                          consecutive_local_origin_failures=3)
    with make_lb(clock, outlier_detection=od) as lb:
        # connect failures never count as the backend's own failures...
        report(lb, addr(1), Outcome.FAILURE, 4)
        report(lb, addr(1), Outcome.CONNECT_FAILURE, 2)
        report(lb, addr(1), Outcome.FAILURE)  # ...so this is the 5th in a row
        assert state_of(lb, addr(1)) == "ejected"
        assert lb.health_statistics()["ejections_consecutive_failures"] == 1
        # a failure answered by the backend proves the connection works
        report(lb, addr(2), Outcome.CONNECT_FAILURE, 2)
        report(lb, addr(2), Outcome.FAILURE)
        report(lb, addr(2), Outcome.CONNECT_FAILURE, 2)
        assert state_of(lb, addr(2)) == "healthy"


def test_without_split_connect_failures_feed_consecutive_failures(lb3: LoadBalancer) -> None:
    report(lb3, addr(2), Outcome.CONNECT_FAILURE, 5)
    assert state_of(lb3, addr(2)) == "ejected"


def test_enforcing_zero_detects_without_ejecting(clock: FakeClock) -> None:
    with make_lb(clock, outlier_detection=OutlierDetection(
            enforcing_consecutive_failures=0)) as lb:
        report(lb, addr(1), Outcome.FAILURE, 10)
        assert state_of(lb, addr(1)) == "healthy"
        assert lb.health_statistics()["ejections_not_enforced"] == 2


def test_outlier_detection_none_never_ejects(clock: FakeClock) -> None:
    with make_lb(clock, outlier_detection=None) as lb:
        report(lb, addr(1), Outcome.FAILURE, 50)
        assert state_of(lb, addr(1)) == "healthy"


# -- max_ejection_percent and small pools ------------------------------------------------------


def test_max_ejection_percent_caps_ejections_on_a_large_pool(clock: FakeClock) -> None:
    with make_lb(clock, n=20) as lb:  # 10 % of 20 = 2
        for i in (1, 2, 3):
            report(lb, addr(i), Outcome.FAILURE, 5)
        states = [state_of(lb, addr(i)) for i in (1, 2, 3)]
        assert states == ["ejected", "ejected", "healthy"]
        assert lb.health_statistics()["ejections_overflow"] == 1


def test_two_host_pool_ejects_one_and_keeps_the_other(clock: FakeClock) -> None:
    with make_lb(clock, n=2) as lb:
        report(lb, addr(1), Outcome.FAILURE, 5)
        report(lb, addr(2), Outcome.FAILURE, 5)
        assert [state_of(lb, addr(i)) for i in (1, 2)] == ["ejected", "healthy"]
        assert picked(lb, 20) == {addr(2): 20}
        assert lb.mode == "normal"


def test_three_host_pool_ejects_only_one_with_the_default_percent(clock: FakeClock) -> None:
    with make_lb(clock, n=3) as lb:
        for i in (1, 2, 3):
            report(lb, addr(i), Outcome.FAILURE, 5)
        assert [state_of(lb, addr(i)) for i in (1, 2, 3)] == ["ejected", "healthy", "healthy"]


def test_single_host_pool_is_never_ejected(clock: FakeClock) -> None:
    with make_lb(clock, n=1) as lb:
        report(lb, addr(1), Outcome.FAILURE, 20)
        assert state_of(lb, addr(1)) == "healthy"


def test_without_always_eject_one_ten_percent_is_inert_below_ten_hosts(clock: FakeClock) -> None:
    with make_lb(clock, n=5, outlier_detection=OutlierDetection(always_eject_one=False)) as lb:
        report(lb, addr(1), Outcome.FAILURE, 5)
        assert state_of(lb, addr(1)) == "healthy"


def test_max_ejection_percent_is_counted_after_the_ejection(clock: FakeClock) -> None:
    # 3 hosts, 67 %: a third ejection would make 100 % > 67 % (Envoy #27066)
    od = OutlierDetection(max_ejection_percent=67)
    with make_lb(clock, n=4, outlier_detection=od) as lb:
        for i in (1, 2, 3, 4):
            report(lb, addr(i), Outcome.FAILURE, 5)
        assert sum(state_of(lb, addr(i)) == "ejected" for i in (1, 2, 3, 4)) == 2


# -- statistical detectors ------------------------------------------------------------------------


def _traffic(lb: LoadBalancer, address: str, ok: int, bad: int) -> None:
    """Interleave successes and failures so no consecutive detector fires."""
    for i in range(ok + bad):
        fail = i % max(1, (ok + bad) // max(1, bad)) == 0 and bad > 0
        if fail:
            bad -= 1
        else:
            ok -= 1
        report(lb, address, Outcome.FAILURE if fail else Outcome.SUCCESS)


def test_success_rate_ejects_the_endpoint_below_mean_minus_stdevs(clock: FakeClock) -> None:
    od = OutlierDetection(consecutive_failures=None, interval=10)
    with make_lb(clock, n=6, outlier_detection=od) as lb:
        for i in range(1, 6):
            _traffic(lb, addr(i), 100, 0)
        _traffic(lb, addr(6), 50, 50)
        # rates [1,1,1,1,1,.5]: mean .917, pstdev .186, threshold .917-1.9*.186 = .563
        assert state_of(lb, addr(6)) == "healthy"  # only at the sweep
        clock.advance(10)
        picked(lb, 1)
        assert state_of(lb, addr(6)) == "ejected"
        assert lb.health_statistics()["ejections_success_rate"] == 1
        st = lb.state_of(addr(6))
        assert st is not None and "success rate 50.0% < 56.3%" in st.note


def test_success_rate_spares_an_endpoint_above_the_threshold(clock: FakeClock) -> None:
    od = OutlierDetection(consecutive_failures=None, interval=10)
    with make_lb(clock, n=6, outlier_detection=od) as lb:
        for i, ok in enumerate((100, 98, 96, 94, 92, 88), start=1):
            _traffic(lb, addr(i), ok, 100 - ok)
        # mean .947, pstdev .039: threshold .872 < .88 (a lone outlier among six
        # *identical* peers is always below mean − 1.9 stdev: z = 5/√6 = 2.04)
        clock.advance(10)
        picked(lb, 1)
        assert state_of(lb, addr(6)) == "healthy"


@pytest.mark.parametrize(("hosts", "volume"), [(4, 100), (6, 99)])
def test_success_rate_needs_minimum_hosts_and_request_volume(
        clock: FakeClock, hosts: int, volume: int) -> None:
    od = OutlierDetection(consecutive_failures=None, interval=10)
    with make_lb(clock, n=hosts, outlier_detection=od) as lb:
        for i in range(1, hosts):
            _traffic(lb, addr(i), volume, 0)
        _traffic(lb, addr(hosts), volume // 10, volume - volume // 10)
        clock.advance(10)
        picked(lb, 1)
        assert state_of(lb, addr(hosts)) == "healthy"


def test_failure_percentage_ejects_above_the_threshold(clock: FakeClock) -> None:
    od = OutlierDetection(consecutive_failures=None, success_rate=None, interval=10,
                          max_ejection_percent=50,
                          failure_percentage=FailurePercentage(threshold=85))
    with make_lb(clock, n=5, outlier_detection=od) as lb:
        for i in (1, 2, 3):
            _traffic(lb, addr(i), 50, 0)
        _traffic(lb, addr(4), 5, 45)  # 90 % > 85 %
        _traffic(lb, addr(5), 10, 40)  # 80 %: spared
        clock.advance(10)
        picked(lb, 1)
        assert state_of(lb, addr(4)) == "ejected"
        assert state_of(lb, addr(5)) == "healthy"
        assert lb.health_statistics()["ejections_failure_percentage"] == 1


def test_sweep_counts_only_the_last_interval(clock: FakeClock) -> None:
    od = OutlierDetection(consecutive_failures=None, interval=10,
                          success_rate=SuccessRate(request_volume=20, minimum_hosts=3))
    with make_lb(clock, n=3, outlier_detection=od) as lb:
        _traffic(lb, addr(1), 0, 30)  # bad, but in the first interval only
        clock.advance(10)
        picked(lb, 1)  # sweep 1: too few hosts with volume; counts reset
        assert state_of(lb, addr(1)) == "healthy"
        for i in (1, 2, 3):
            _traffic(lb, addr(i), 20, 0)
        clock.advance(10)
        picked(lb, 1)
        assert state_of(lb, addr(1)) == "healthy"


# -- panic --------------------------------------------------------------------------------------


def _mark(lb: LoadBalancer, address: str, healthy: bool) -> None:
    st = lb.state_of(address)
    assert st is not None
    st.probe_healthy = healthy
    lb.rebuild()


def test_panic_spreads_over_all_endpoints_and_ends_when_health_returns(
        clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="clientlb.health")
    with make_lb(clock, n=4) as lb:
        _mark(lb, addr(1), False)
        _mark(lb, addr(2), False)  # 50 % healthy: not below the threshold
        assert lb.mode == "normal"
        assert set(picked(lb, 40)) == {addr(3), addr(4)}
        _mark(lb, addr(3), False)  # 25 %
        assert lb.mode == "panic" and lb.snapshot().mode == "panic"
        assert set(picked(lb, 40)) == {addr(i) for i in (1, 2, 3, 4)}
        _mark(lb, addr(3), True)
        assert lb.mode == "normal"
        stats = lb.health_statistics()
        assert (stats["panic_entered"], stats["panic_exited"]) == (1, 1)
    assert sum("PANIC" in r.getMessage() for r in caplog.records) == 1


def test_nothing_healthy_panics_and_asks_discovery_to_re_resolve(clock: FakeClock) -> None:
    with make_lb(clock, n=2) as lb:
        calls = []
        lb._resolver.refresh = lambda: calls.append(clock.now)  # type: ignore[method-assign]
        _mark(lb, addr(1), False)
        _mark(lb, addr(2), False)
        assert lb.mode == "panic"
        assert set(picked(lb, 20)) == {addr(1), addr(2)}
        assert len(calls) == 1
        lb.rebuild()
        assert len(calls) == 1  # rate limited
        clock.advance(5)
        lb.rebuild()
        assert len(calls) == 2
        assert lb.health_statistics()["refresh_requested"] == 2


def test_more_outliers_than_may_be_ejected_ask_discovery_to_re_resolve(
        clock: FakeClock) -> None:
    with make_lb(clock, n=2) as lb:  # e.g. every address moved after a redeploy
        calls = []
        lb._resolver.refresh = lambda: calls.append(clock.now)  # type: ignore[method-assign]
        report(lb, addr(1), Outcome.CONNECT_FAILURE, 5)
        assert calls == []
        report(lb, addr(2), Outcome.CONNECT_FAILURE, 5)  # cannot be ejected: the last one
        assert calls == [clock.now]


def test_panic_threshold_zero_fails_fast_when_nothing_is_healthy(clock: FakeClock) -> None:
    with make_lb(clock, n=2, panic_threshold=0) as lb:
        _mark(lb, addr(1), False)
        assert set(picked(lb, 10)) == {addr(2)}
        _mark(lb, addr(2), False)
        with pytest.raises(NoEndpointAvailable, match="no endpoint may take traffic"):
            lb.pick()


# -- active check state machine --------------------------------------------------------------------


def _probe(lb: LoadBalancer, address: str, ok: bool, times: int = 1) -> None:
    st = lb.state_of(address)
    assert st is not None
    for _ in range(times):
        lb._health.on_probe(st, ok, "HTTP 200" if ok else "HTTP 503")


def test_probe_thresholds_take_an_endpoint_out_and_bring_it_back(clock: FakeClock) -> None:
    with make_lb(clock, health_check=HealthCheck()) as lb:  # unhealthy 3, healthy 2
        _probe(lb, addr(1), False, 2)
        assert state_of(lb, addr(1)) == "healthy"
        _probe(lb, addr(1), False)
        assert state_of(lb, addr(1)) == "unhealthy"
        assert addr(1) not in picked(lb, 30)
        _probe(lb, addr(1), True)
        assert state_of(lb, addr(1)) == "unhealthy"
        _probe(lb, addr(1), False)  # breaks the run of successes
        _probe(lb, addr(1), True, 2)
        assert state_of(lb, addr(1)) == "healthy"
        stats = lb.health_statistics()
        assert (stats["became_unhealthy"], stats["became_healthy"]) == (1, 1)
        assert (stats["probes_passed"], stats["probes_failed"]) == (3, 4)


def test_new_endpoints_can_wait_for_their_first_passing_probe(clock: FakeClock) -> None:
    hc = HealthCheck(initial_health="unhealthy")
    with make_lb(clock, health_check=hc) as lb:
        assert {e.state for e in lb.snapshot().endpoints} == {"unhealthy"}
        assert lb.health_statistics()["refresh_requested"] == 0  # only waiting
        _probe(lb, addr(1), True)  # one pass is enough for a new endpoint
        assert state_of(lb, addr(1)) == "healthy"
        _probe(lb, addr(2), True)
        assert lb.mode == "normal"
        assert set(picked(lb, 20)) == {addr(1), addr(2)}


def test_new_endpoints_are_healthy_until_proven_otherwise_by_default(clock: FakeClock) -> None:
    with make_lb(clock, health_check=HealthCheck()) as lb:
        assert {e.state for e in lb.snapshot().endpoints} == {"healthy"}
        lb.add(Endpoint("10.0.0.9", 80))
        assert state_of(lb, "10.0.0.9:80") == "healthy"


def test_passing_probes_end_an_ejection_early_when_asked_to(clock: FakeClock) -> None:
    with make_lb(clock, health_check=HealthCheck(healthy_threshold=2),
                 outlier_detection=OutlierDetection(uneject_on_health_check=True)) as lb:
        report(lb, addr(1), Outcome.FAILURE, 5)
        assert state_of(lb, addr(1)) == "ejected"
        _probe(lb, addr(1), True)
        assert state_of(lb, addr(1)) == "ejected"
        _probe(lb, addr(1), True)
        assert state_of(lb, addr(1)) == "healthy"
        assert lb.health_statistics()["unejections_health_check"] == 1


def test_probes_do_not_end_an_ejection_by_default(clock: FakeClock) -> None:
    with make_lb(clock, health_check=HealthCheck()) as lb:
        report(lb, addr(1), Outcome.FAILURE, 5)
        _probe(lb, addr(1), True, 5)
        assert state_of(lb, addr(1)) == "ejected"


def test_idle_healthy_endpoints_are_probed_at_the_no_traffic_interval(clock: FakeClock) -> None:
    with make_lb(clock, health_check=HealthCheck(interval=5, no_traffic_interval=60)) as lb:
        checker = lb._health.checker
        assert checker is not None
        st = lb.state_of(addr(1))
        assert st is not None
        ps = st.probe
        assert checker.interval_for(st, ps, 100.0) == 5  # first look: counts as traffic
        assert checker.interval_for(st, ps, 159.0) == 5
        assert checker.interval_for(st, ps, 160.0) == 60  # no request for 60 s
        report(lb, addr(1), Outcome.SUCCESS)
        assert checker.interval_for(st, ps, 161.0) == 5
        st.probe_healthy = False  # an unhealthy endpoint keeps the fast interval
        assert checker.interval_for(st, ps, 500.0) == 5


# -- slow start -------------------------------------------------------------------------------


def test_slow_start_ramps_a_new_endpoint_linearly(clock: FakeClock) -> None:
    with make_lb(clock, n=2, slow_start=SlowStart(window=10, min_weight_percent=10)) as lb:
        assert weights(lb) == {addr(1): 1.0, addr(2): 1.0}  # the first set does not ramp
        lb.add(Endpoint("10.0.0.3", 80))
        assert weights(lb)[addr(3)] == pytest.approx(0.1)
        clock.advance(5)
        lb.pick().done()  # the pick notices the ramp step and rebuilds
        assert weights(lb)[addr(3)] == pytest.approx(0.5)
        clock.advance(5)
        lb.pick().done()
        assert weights(lb)[addr(3)] == 1.0
        assert lb._health._ramp_due == math.inf  # ramp over: no more rebuilds


def test_slow_start_aggression_bends_the_curve(clock: FakeClock) -> None:
    with make_lb(clock, n=1, slow_start=SlowStart(window=100, aggression=2.0)) as lb:
        lb.add(Endpoint("10.0.0.2", 80))
        clock.advance(25)
        lb.pick().done()
        assert weights(lb)[addr(2)] == pytest.approx(0.5)  # (25/100) ** (1/2)


def test_slow_start_applies_to_an_endpoint_returning_from_ejection(clock: FakeClock) -> None:
    with make_lb(clock, slow_start=SlowStart(window=20)) as lb:
        report(lb, addr(1), Outcome.FAILURE, 5)
        clock.advance(30)
        lb.pick().done()
        assert weights(lb)[addr(1)] == pytest.approx(0.1)
        clock.advance(10)
        lb.pick().done()
        assert weights(lb)[addr(1)] == pytest.approx(0.5)


@pytest.mark.parametrize("strategy", sorted(clientlb.STRATEGIES))
def test_slow_start_reduces_a_new_endpoints_share_with_every_strategy(
        clock: FakeClock, strategy: str) -> None:
    with make_lb(clock, n=4, strategy=strategy, slow_start=SlowStart(window=60)) as lb:
        lb.add(Endpoint("10.0.0.5", 80))
        counts: collections.Counter[str] = collections.Counter()
        for i in range(2000):
            p = lb.pick(key=f"user-{i}")
            counts[p.endpoint.address] += 1
            p.done(latency=0.01)
        fair = 2000 / 5
        assert counts[addr(5)] < fair / 3, counts


# -- priorities and zones ------------------------------------------------------------------------


def _eps(spec: list[tuple[int, str | None]]) -> list[Endpoint]:
    return [Endpoint(f"10.0.0.{i}", 80, priority=p, zone=z)
            for i, (p, z) in enumerate(spec, start=1)]


def _share(lb: LoadBalancer, addresses: set[str]) -> float:
    ws = weights(lb)
    return sum(w for a, w in ws.items() if a in addresses) / sum(ws.values())


def test_traffic_stays_on_priority_zero_while_it_has_enough_healthy_capacity(
        clock: FakeClock) -> None:
    with make_lb(clock, endpoints=_eps([(0, None)] * 10 + [(1, None)] * 10),
                 outlier_detection=None) as lb:
        p0 = {addr(i) for i in range(1, 11)}
        assert _share(lb, p0) == 1.0
        _mark(lb, addr(1), False)
        _mark(lb, addr(2), False)  # 80 % × 1.4 = 112 %: still all on P0
        assert _share(lb, p0) == 1.0
        for i in range(3, 6):
            _mark(lb, addr(i), False)  # 50 % × 1.4 = 70 % on P0, 30 % spills to P1
        assert _share(lb, p0) == pytest.approx(0.7)
        assert lb.mode == "normal"
        counts = picked(lb, 2000)
        assert sum(counts[a] for a in p0) / 2000 == pytest.approx(0.7, abs=0.01)
        for i in range(6, 11):
            _mark(lb, addr(i), False)  # P0 all down: P1 takes everything
        assert _share(lb, p0) == 0.0
        assert lb.mode == "normal"


def test_degraded_priorities_share_in_proportion_to_health_and_panic(clock: FakeClock) -> None:
    with make_lb(clock, endpoints=_eps([(0, None)] * 5 + [(1, None)] * 5),
                 outlier_detection=None) as lb:
        for i in (1, 2, 3, 4, 6, 7, 8, 9):
            _mark(lb, addr(i), False)  # 20 % each: 28 % + 28 % < 100 %
        assert lb.mode == "panic"
        ws = weights(lb)
        assert all(w > 0 for w in ws.values())  # every host of both levels
        assert _share(lb, {addr(i) for i in range(1, 6)}) == pytest.approx(0.5)


def test_local_zone_takes_all_traffic_while_healthy(clock: FakeClock) -> None:
    spec: list[tuple[int, str | None]] = [(0, "a")] * 3 + [(0, "b")] * 3
    with make_lb(clock, endpoints=_eps(spec), local_zone="a") as lb:
        zone_a = {addr(i) for i in (1, 2, 3)}
        assert _share(lb, zone_a) == 1.0
        assert set(picked(lb, 60)) == zone_a


def test_local_zone_falls_back_proportionally(clock: FakeClock) -> None:
    spec: list[tuple[int, str | None]] = [(0, "a")] * 3 + [(0, "b")] * 3
    with make_lb(clock, endpoints=_eps(spec), local_zone="a", outlier_detection=None) as lb:
        zone_a = {addr(i) for i in (1, 2, 3)}
        _mark(lb, addr(1), False)  # 2/3 × 1.4 = 93.3 % stays local
        assert _share(lb, zone_a) == pytest.approx(1.4 * 2 / 3)
        _mark(lb, addr(2), False)  # 1/3 × 1.4 = 46.7 %
        assert _share(lb, zone_a) == pytest.approx(1.4 / 3)
        _mark(lb, addr(3), False)
        assert _share(lb, zone_a) == 0.0
        assert set(picked(lb, 60)) == {addr(4), addr(5), addr(6)}


def test_local_zone_without_local_endpoints_changes_nothing(clock: FakeClock) -> None:
    with make_lb(clock, endpoints=_eps([(0, "b")] * 3), local_zone="a") as lb:
        assert weights(lb) == {addr(i): 1.0 for i in (1, 2, 3)}


# -- circuit breaking ----------------------------------------------------------------------------


def test_max_requests_fails_fast_over_the_cap(clock: FakeClock) -> None:
    with make_lb(clock, max_requests=2) as lb:
        a, b = lb.pick(), lb.pick()
        with pytest.raises(CircuitOpen, match="max_requests=2") as info:
            lb.pick()
        assert isinstance(info.value, NoEndpointAvailable)
        assert info.value.scope == "balancer" and info.value.limit == 2
        a.done()
        c = lb.pick()
        b.done()
        c.done()
        assert lb.health_statistics()["circuit_open_balancer"] == 1


def test_max_requests_per_endpoint_moves_to_an_endpoint_with_room(clock: FakeClock) -> None:
    with make_lb(clock, n=2, max_requests_per_endpoint=1) as lb:
        a = lb.pick()
        b = lb.pick(prefer=a.endpoint.address)  # full: goes elsewhere
        assert {a.endpoint.address, b.endpoint.address} == {addr(1), addr(2)}
        with pytest.raises(CircuitOpen, match="max_requests_per_endpoint=1") as info:
            lb.pick()
        assert info.value.scope == "endpoint"
        a.done()
        lb.pick().done()


# -- configuration errors -----------------------------------------------------------------------


def test_detector_settings_can_be_tables_as_in_a_config_file() -> None:
    od = OutlierDetection(success_rate={"stdev_factor": 2.5},  # type: ignore[arg-type]
                          failure_percentage=True)  # type: ignore[arg-type]
    assert od.success_rate == SuccessRate(stdev_factor=2.5)
    assert od.failure_percentage == FailurePercentage()
    with pytest.raises(ConfigError, match=r"outlier_detection\.success_rate: .*'factor'"):
        OutlierDetection(success_rate={"factor": 2})  # type: ignore[arg-type]


@pytest.mark.parametrize(("build", "message"), [
    (lambda: OutlierDetection(interval=0), "outlier_detection.interval: must be > 0 seconds"),
    (lambda: OutlierDetection(max_ejection_percent=120),
     "outlier_detection.max_ejection_percent: must be a percentage 0..100, got 120"),
    (lambda: OutlierDetection(consecutive_failures=0),
     "outlier_detection.consecutive_failures: must be an integer >= 1, got 0"),
    (lambda: SuccessRate(minimum_hosts=0), "success_rate.minimum_hosts: must be an integer >= 1"),
    (lambda: HealthCheck(kind="udp"),  # type: ignore[arg-type]
     "health_check.kind: must be 'http', 'tcp' or 'grpc', got 'udp'"),
    (lambda: HealthCheck(path="healthz"), "health_check.path: must be a path starting with '/'"),
    (lambda: HealthCheck(jitter=1.5), "health_check.jitter: must be a fraction 0 <= jitter < 1"),
    (lambda: SlowStart(window=-1), "slow_start.window: must be > 0 seconds, got -1"),
    (lambda: LoadBalancer(["10.0.0.1:80"], panic_threshold=150),
     "panic_threshold: must be a number 0..100, got 150"),
    (lambda: LoadBalancer(["10.0.0.1:80"], overprovisioning_factor=0.5),
     "overprovisioning_factor: must be a number 1..100, got 0.5"),
    (lambda: LoadBalancer(["10.0.0.1:80"], max_requests=0),
     "max_requests: must be an integer >= 1 or None, got 0"),
    (lambda: LoadBalancer(["10.0.0.1:80"], health_check="http"),  # type: ignore[arg-type]
     "health_check: must be a clientlb.HealthCheck or None"),
])
def test_bad_health_settings_raise_config_error_naming_the_field(build: object,
                                                                 message: str) -> None:
    with pytest.raises(ConfigError) as info:
        build()  # type: ignore[operator]
    assert str(info.value).startswith(message), str(info.value)


# -- live reconfiguration ------------------------------------------------------------------------


def test_outlier_detection_can_be_turned_off_live_ending_ejections(clock: FakeClock) -> None:
    with make_lb(clock) as lb:
        report(lb, addr(1), Outcome.FAILURE, 5)
        assert state_of(lb, addr(1)) == "ejected"
        lb.set_outlier_detection(None)
        assert state_of(lb, addr(1)) == "healthy"
        report(lb, addr(1), Outcome.FAILURE, 10)
        assert state_of(lb, addr(1)) == "healthy"
        lb.set_outlier_detection(OutlierDetection(consecutive_failures=2))
        report(lb, addr(1), Outcome.FAILURE, 2)
        assert state_of(lb, addr(1)) == "ejected"


def test_health_check_set_live_replaces_the_checker(clock: FakeClock) -> None:
    with make_lb(clock) as lb:
        assert lb._health.checker is None
        lb.set_health_check(HealthCheck(unhealthy_threshold=1))
        old = lb._health.checker
        assert old is not None
        _probe(lb, addr(1), False)
        assert state_of(lb, addr(1)) == "unhealthy"
        lb.set_health_check(HealthCheck())
        assert state_of(lb, addr(1)) == "healthy"  # a new checker starts from healthy
        st = lb.state_of(addr(1))
        assert st is not None
        lb._health.on_probe(st, False, "late", old)  # a late result of the old checker
        assert lb.health_statistics()["probes_failed"] == 1


def test_panic_threshold_slow_start_and_zone_change_live(clock: FakeClock) -> None:
    spec: list[tuple[int, str | None]] = [(0, "a"), (0, "b"), (0, "b")]
    with make_lb(clock, endpoints=_eps(spec), outlier_detection=None) as lb:
        _mark(lb, addr(2), False)
        _mark(lb, addr(3), False)
        assert lb.mode == "panic"
        lb.set_panic_threshold(0)
        assert lb.mode == "normal" and set(picked(lb, 10)) == {addr(1)}
        _mark(lb, addr(2), True)
        _mark(lb, addr(3), True)
        lb.set_local_zone("b")
        assert set(picked(lb, 20)) == {addr(2), addr(3)}
        lb.set_slow_start(SlowStart(window=10))
        lb.add(Endpoint("10.0.0.4", 80, zone="b"))
        assert weights(lb)[addr(4)] == pytest.approx(0.1)
        with pytest.raises(ConfigError, match=r"panic_threshold: must be a number 0\.\.100"):
            lb.set_panic_threshold(-1)


def test_registry_update_changes_health_options_live() -> None:
    with clientlb.Registry(telemetry=False) as reg:  # type: ignore[call-arg]
        lb = reg.create("users", ["10.0.0.1:80", "10.0.0.2:80"])
        reg.update("users", outlier_detection={"consecutive_failures": 2},
                   panic_threshold=10)
        assert lb._health.outlier_detection == OutlierDetection(consecutive_failures=2)
        assert lb._health.panic_threshold == 10.0
        reg.update("users", outlier_detection=False)
        assert lb._health.outlier is None


def test_drained_then_undrained_endpoint_is_logged_back_in_rotation(
        lb3: LoadBalancer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="clientlb.health")
    lb3.drain(addr(2))
    assert addr(2) not in picked(lb3, 30)
    lb3.undrain(addr(2))
    assert any("draining -> healthy (back in rotation)" in r.getMessage()
               for r in caplog.records if r.name == "clientlb.health")


def test_three_host_pool_with_67_percent_ejects_two_and_never_the_third(
        clock: FakeClock) -> None:
    with make_lb(clock, n=3, outlier_detection=OutlierDetection(max_ejection_percent=67)) as lb:
        for i in (1, 2, 3):
            report(lb, addr(i), Outcome.FAILURE, 5)
        assert [state_of(lb, addr(i)) for i in (1, 2, 3)] == ["ejected", "ejected", "healthy"]
        assert lb.mode == "panic"  # 1 of 3 healthy: spread over all three meanwhile


def test_a_refused_ejection_is_logged_once_per_interval_not_per_failure(
        clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="clientlb.health")
    with make_lb(clock, n=2) as lb:
        report(lb, addr(1), Outcome.FAILURE, 5)
        report(lb, addr(2), Outcome.FAILURE, 50)  # ten refused ejections
        assert lb.health_statistics()["ejections_overflow"] == 10
        refused = [r for r in caplog.records if "but not ejected" in r.getMessage()]
        assert len(refused) == 1

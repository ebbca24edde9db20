"""Hedged requests (issue 19): the engine's rules with a fake clock, then real gRPC
servers on loopback — the hedge winning, probes of a slow endpoint hedged at once."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import grpc
import pytest

import clientlb
import clientlb.grpc
import clientlb.grpc.aio
from clientlb import ConfigError, Hedging, Outcome
from clientlb._engine import hedging as engine
from clientlb._engine.call import LogicalCall

from ._grpc_servers import UNARY, GrpcBackend, outcomes_of
from ._helpers import FakeClock

HEDGE = Hedging(delay=0.05)


def seed_latency(lb: clientlb.LoadBalancer, address: str, seconds: float) -> None:
    """Make ``address``'s latency estimate ``seconds``, as a finished slow call would."""
    pick = lb.pick(prefer=address)
    assert pick.address == address
    pick.done(Outcome.SUCCESS, seconds)


class _first_on:
    """Every first attempt of ``lb`` goes to ``address`` (the strategy is asked only for
    hedges and retries, which avoid it), restored on exit."""

    def __init__(self, lb: clientlb.LoadBalancer, address: str) -> None:
        self.lb = lb
        self.address = address
        self.original = lb.pick

    def __enter__(self) -> None:
        original = self.original

        def pick(key: Any = None, *, exclude: Any = None, prefer: Any = None) -> clientlb.Pick:
            return original(key, exclude=exclude, prefer=prefer if exclude else self.address)

        self.lb.pick = pick  # type: ignore[method-assign]

    def __exit__(self, *exc_info: object) -> None:
        del self.lb.pick


# -- the policy ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"delay": -0.1}, r"hedging\.delay: delay must be a number of seconds >= 0 or None "
                      r"\(adaptive\), got -0\.1"),
    ({"delay": "50ms"}, r"hedging\.delay: .* got '50ms'"),
    ({"max_attempts": 1}, r"hedging\.max_attempts: max_attempts must be an integer 2\.\.5 "
                          r"\(gRFC A6 caps it at 5\), got 1"),
    ({"max_attempts": True}, r"hedging\.max_attempts: .* got True"),
    ({"max_extra_load": 0}, r"hedging\.max_extra_load: max_extra_load must be a fraction of "
                            r"the requests, 0 < x <= 1, got 0"),
    ({"max_extra_load": 2.0}, r"hedging\.max_extra_load: .* got 2\.0"),
    ({"methods": "GET"}, r"hedging\.methods: .* got 'GET'"),
    ({"methods": {"GET", "pkg.Svc/Get"}}, r"hedging\.methods: .* got 'pkg\.Svc/Get'"),
    ({"non_fatal_codes": {"OK"}}, r"hedging\.non_fatal_codes: .* other than OK, got 'OK'"),
    ({"non_fatal_codes": {"NOPE"}}, r"hedging\.non_fatal_codes: .* got 'NOPE'"),
])
def test_every_field_is_checked_and_the_error_names_field_value_and_rule(
        kwargs: dict[str, Any], message: str) -> None:
    """A bad Hedging field is a ConfigError at construction naming the field, value and rule."""
    with pytest.raises(ConfigError, match=message):
        Hedging(**kwargs)


def test_one_type_for_http_and_grpc() -> None:
    """clientlb.grpc.Hedging is clientlb.Hedging; gRPC status codes are kept by name."""
    assert clientlb.grpc.Hedging is clientlb.Hedging
    assert clientlb.grpc.aio.Hedging is clientlb.Hedging
    h = clientlb.grpc.Hedging(max_attempts=3, delay=0.01,
                              non_fatal_codes={grpc.StatusCode.UNAVAILABLE, "aborted"},
                              methods={"/pkg.Svc/Get", "get"})
    assert h.non_fatal_codes == {"UNAVAILABLE", "ABORTED"}
    assert h.methods == {"/pkg.Svc/Get", "GET"}
    assert (Hedging().delay, Hedging().max_attempts, Hedging().max_extra_load) == (None, 2, 0.05)


def test_idempotent_http_methods_are_hedged_by_default_and_grpc_methods_by_name() -> None:
    """methods=None: GET, HEAD, OPTIONS (not PUT, DELETE, POST); gRPC names when listed."""
    default = Hedging()
    assert [m for m in ("GET", "HEAD", "OPTIONS", "PUT", "DELETE", "POST", "PATCH")
            if default.applies_to(m)] == ["GET", "HEAD", "OPTIONS"]
    assert default.applies_to("/pkg.Svc/Any") and not default.names_grpc_methods()
    listed = Hedging(methods={"PUT", "/pkg.Svc/Get"})
    assert listed.applies_to("PUT") and not listed.applies_to("GET")
    assert listed.applies_to("/pkg.Svc/Get") and not listed.applies_to("/pkg.Svc/Put")
    assert listed.names_grpc_methods()


def test_adaptive_delay_is_the_p95_of_recent_latencies_recomputed_in_batches() -> None:
    """No delay before 32 samples; then the 95th percentile, refreshed every 64 samples only."""
    window = engine.LatencyWindow()
    for ms in range(1, engine.MIN_SAMPLES):
        window.add(ms / 1000)
    assert window.value is None
    window.add(0.5)  # the 32nd: first computation
    assert window.value == 0.031  # nearest rank: the 31st of 32 (ceil(0.95 × 32))
    for _ in range(engine.REFRESH_EVERY - engine.MIN_SAMPLES - 1):
        window.add(0.001)
    assert window.value == 0.031  # not recomputed yet: no work per sample
    window.add(0.001)  # the 64th
    assert window.value is not None and window.value < 0.031
    for _ in range(engine.WINDOW):
        window.add(0.020)
    assert window.value == 0.020  # the ring keeps only the last WINDOW samples


def test_extra_load_budget_caps_hedges_at_the_ratio_with_a_floor_for_quiet_clients(
        clock: FakeClock) -> None:
    """Hedges ≤ max(ratio × requests, 10) over the last 10 s; the window slides."""
    budget = engine.ExtraLoadBudget(0.05, clock)
    for _ in range(5):
        budget.deposit()
    assert sum(budget.try_take() for _ in range(20)) == engine.BUDGET_FLOOR  # a quiet client
    clock.advance(10.0)
    for _ in range(1000):
        budget.deposit()
    assert sum(budget.try_take() for _ in range(100)) == 50  # exactly 5%, no floor added
    assert budget.window() == (1000, 50)
    assert not budget.try_take(also=lambda: True)
    clock.advance(10.0)
    for _ in range(1000):
        budget.deposit()
    assert not budget.try_take(also=lambda: False)  # the retry budget said no: nothing taken
    assert budget.window() == (1000, 0)


def test_the_probe_rule_hedges_at_once_a_pick_of_an_endpoint_estimated_slow(
        clock: FakeClock) -> None:
    """An endpoint whose estimate is ≥ 1.5 × the delay is a probe: hedge at once; it is kept
    when it loses, while any other loser raises its endpoint's estimate to what it waited."""
    lb = clientlb.LoadBalancer(["127.0.0.1:8001", "127.0.0.1:8002"], clock=clock,
                               rng=random.Random(1), outlier_detection=None)
    seed_latency(lb, "127.0.0.1:8001", 0.2)
    slow = LogicalCall(lb, prefer="127.0.0.1:8001", hedging=HEDGE)
    pick = slow.pick()
    assert pick.address == "127.0.0.1:8001"
    assert slow.hedge_delay(pick) == 0.0
    assert slow.take_hedge(2, pick.address)
    assert lb.hedging_statistics()["probes"] == 1
    assert slow.lost(pick) is True  # a probe runs on
    fast = LogicalCall(lb, prefer="127.0.0.1:8002", hedging=HEDGE)
    other = fast.pick()
    assert fast.hedge_delay(other) == 0.05
    clock.advance(0.3)
    assert fast.lost(other) is False  # cancelled: its estimate rises to the 0.3 s it waited
    assert other.latency_estimate() == pytest.approx(0.3)
    pick.done(Outcome.SUCCESS)
    other.done(Outcome.CANCELLED)
    clock.advance(0.001)
    lower = LogicalCall(lb, prefer="127.0.0.1:8002", hedging=HEDGE).pick()
    lower.outlasted()  # a shorter wait never lowers the estimate
    assert lower.latency_estimate() == pytest.approx(0.3, rel=1e-3)
    lower.done(Outcome.CANCELLED)


def test_no_more_hedges_than_max_attempts_and_none_past_the_deadline(clock: FakeClock) -> None:
    """max_attempts=3 allows two hedges; a deadline shorter than the delay allows none."""
    lb = clientlb.LoadBalancer(["127.0.0.1:8001", "127.0.0.1:8002", "127.0.0.1:8003"],
                               clock=clock, outlier_detection=None)
    call = LogicalCall(lb, hedging=Hedging(delay=0.01, max_attempts=3))
    assert call.hedge_delay() == 0.01 and call.take_hedge(2)
    assert call.hedge_delay() == 0.01 and call.take_hedge(3)
    assert call.hedge_delay() is None
    assert LogicalCall(lb, hedging=HEDGE, deadline=0.01).hedge_delay() is None
    assert LogicalCall(lb).hedge_delay() is None  # a call without a policy


# -- gRPC ---------------------------------------------------------------------------------------


def test_grpc_channels_hedge_with_the_same_class_and_the_balancers_named_methods(
        backends: list[GrpcBackend]) -> None:
    """A channel given clientlb.Hedging hedges a slow call; the balancer's policy reaches a
    channel only for the gRPC methods it names; the counters are the balancer's."""
    backends[0].delay = 1.0
    addresses = [backends[0].address, backends[1].address]
    with clientlb.grpc.insecure_channel(addresses, strategy="round_robin",
                                        hedging=clientlb.Hedging(delay=0.05)) as channel:
        seen = outcomes_of(channel.lb)
        answers = {channel.unary_unary(UNARY)(b"x", timeout=5) for _ in range(4)}
        stats = channel.lb.hedging_statistics()
    assert answers == {b"b1"} and stats["sent"] == stats["won"] >= 1
    assert Outcome.CANCELLED in {o for a, o in seen if a == backends[0].address}
    for methods, hedged in ((None, False), ({UNARY}, True)):
        lb = clientlb.LoadBalancer(addresses, strategy="round_robin",
                                   hedging=clientlb.Hedging(delay=0.05, methods=methods))
        with clientlb.grpc.insecure_channel(lb) as channel:
            started = time.monotonic()
            for _ in range(2):
                channel.unary_unary(UNARY)(b"x", timeout=5)
            assert (time.monotonic() - started < 1.0) is hedged
            assert (lb.hedging_statistics()["sent"] >= 1) is hedged
        lb.close()


def test_grpc_aio_probe_of_a_slow_endpoint_is_hedged_at_once(
        backends: list[GrpcBackend]) -> None:
    """grpc.aio: the probe rule applies (hedged at once) and the probe reports its outcome
    when it ends instead of being cancelled."""
    backends[0].delay = 0.3

    async def main() -> tuple[bytes, float, dict[str, Any], list[Any]]:
        lb = clientlb.LoadBalancer([backends[0].address, backends[1].address],
                                   strategy="round_robin", outlier_detection=None)
        await lb.wait_ready_async()
        seed_latency(lb, backends[0].address, 0.3)
        seen = outcomes_of(lb)
        with _first_on(lb, backends[0].address):
            async with clientlb.grpc.aio.insecure_channel(
                    lb, hedging=clientlb.Hedging(delay=0.15)) as channel:
                started = time.monotonic()
                answer = await channel.unary_unary(UNARY)(b"x", timeout=5)
                elapsed = time.monotonic() - started
                for _ in range(300):
                    if lb.in_flight() == 0:
                        break
                    await asyncio.sleep(0.01)
        stats = lb.hedging_statistics()
        await lb.aclose()
        return answer, elapsed, stats, seen

    answer, elapsed, stats, seen = asyncio.run(main())
    assert answer == b"b1" and elapsed < 0.15
    assert stats["probes"] == 1
    assert [o for a, o in seen if a == backends[0].address] == [Outcome.SUCCESS]

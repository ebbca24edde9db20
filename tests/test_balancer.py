"""LoadBalancer and Pick: outcomes, snapshots, updates, first resolution, lifecycle."""

from __future__ import annotations

import asyncio
import gc
import random
import threading

import pytest

import clientlb
from clientlb import (
    ConfigError,
    Endpoint,
    EndpointSet,
    LoadBalancer,
    NoEndpointAvailable,
    Outcome,
    Resolver,
)
from clientlb._resolvers.base import RESOLVERS

from ._helpers import FakeClock, closing


def make(targets: object = ("a:1", "b:1"), **kw: object) -> LoadBalancer:
    kw.setdefault("clock", FakeClock())
    kw.setdefault("rng", random.Random(5))
    return closing(LoadBalancer(targets, **kw))  # type: ignore[arg-type]


def test_with_block_reports_success_and_latency() -> None:
    clock = FakeClock()
    lb = make(["a:1"], clock=clock, strategy="round_robin")
    with lb.pick() as p:
        assert lb.snapshot().endpoints[0].in_flight == 1
        clock.advance(0.25)
    row = lb.snapshot().endpoints[0]
    assert (row.in_flight, row.requests, row.failures) == (0, 1, 0)
    assert p.finished


@pytest.mark.parametrize(
    ("exc", "outcome"),
    [
        (ConnectionRefusedError(), Outcome.CONNECT_FAILURE),
        (TimeoutError(), Outcome.TIMEOUT),
        # Not a TimeoutError on 3.10 (an alias of it from 3.11): a timeout on every version.
        (asyncio.TimeoutError(), Outcome.TIMEOUT),
        (RuntimeError(), Outcome.FAILURE),
        (asyncio.CancelledError(), Outcome.CANCELLED),
        (KeyboardInterrupt(), Outcome.CANCELLED),
    ],
)
def test_with_block_classifies_the_exception(exc: BaseException, outcome: Outcome) -> None:
    lb = make(["a:1"])
    seen: list[Outcome] = []
    lb.add_outcome_listener(lambda state, o, latency, now: seen.append(o))
    with pytest.raises(type(exc)), lb.pick():
        raise exc
    assert seen == [outcome]
    assert lb.snapshot().endpoints[0].failures == (1 if outcome.is_failure else 0)


def test_explicit_done_wins_and_is_idempotent() -> None:
    lb = make(["a:1"])
    seen: list[tuple[Outcome, float]] = []
    lb.add_outcome_listener(lambda state, o, latency, now: seen.append((o, latency)))
    with pytest.raises(ValueError), lb.pick() as p:
        p.done("gateway_failure", latency=0.5)
        p.done(Outcome.SUCCESS)
        raise ValueError
    assert seen == [(Outcome.GATEWAY_FAILURE, 0.5)]
    assert repr(p) == "<Pick a:1 done>"


def test_unknown_outcome_string_is_rejected() -> None:
    lb = make(["a:1"])
    p = lb.pick()
    with pytest.raises(ValueError):
        p.done("exploded")
    assert not p.finished  # still in flight: a correct report can follow
    p.done("failure")
    assert lb.snapshot().endpoints[0].failures == 1


def test_dropped_pick_is_counted_as_cancelled() -> None:
    lb = make(["a:1"])
    seen: list[Outcome] = []
    lb.add_outcome_listener(lambda state, o, latency, now: seen.append(o))
    lb.pick()  # never done
    gc.collect()
    assert seen == [Outcome.CANCELLED]
    assert lb.snapshot().endpoints[0].in_flight == 0


def test_snapshot_and_repr_tell_the_state() -> None:
    lb = make(["a:1", Endpoint("b", 1, weight=3)], strategy="least_request", name="users")
    held = lb.pick()
    snap = lb.snapshot()
    assert snap.name == "users" and snap.strategy == "least_request" and snap.mode == "normal"
    rows = snap.by_address()
    assert rows["b:1"].effective_weight == 3.0 and rows["a:1"].state == "healthy"
    assert sum(r.in_flight for r in snap.endpoints) == 1
    assert repr(lb) == ("<LoadBalancer 'users' static least_request [2 endpoints: 2 healthy] "
                        "in_flight=1 mode=normal>")
    held.done()


def test_endpoints_lists_everything_discovered() -> None:
    lb = make(["a:1", Endpoint("b", 1, priority=2)])
    assert [e.address for e in lb.endpoints()] == ["a:1", "b:1"]


def test_publish_keeps_state_of_surviving_endpoints_and_drains_removed_ones() -> None:
    lb = make(["a:1", "b:1"], strategy="round_robin")
    held = lb.pick(prefer="b:1")
    state_a = lb.state_of("a:1")
    diffs: list[clientlb.EndpointSetDiff] = []
    lb.add_diff_listener(diffs.append)
    lb.publish(EndpointSet([Endpoint("a", 1, weight=2), Endpoint("c", 1)], version=2))
    assert lb.state_of("a:1") is state_a
    assert [e.address for e in diffs[0].removed] == ["b:1"]
    assert {p.endpoint.host for p in (lb.pick() for _ in range(30))} == {"a", "c"}
    rows = lb.snapshot().by_address()
    assert rows["b:1"].state == "draining" and rows["b:1"].in_flight == 1
    held.done()
    assert "b:1" not in lb.snapshot().by_address()


def test_empty_set_means_no_endpoint_available_with_reason() -> None:
    lb = make(["a:1"])
    lb.publish(EndpointSet([], version=2))
    with pytest.raises(NoEndpointAvailable, match="resolved to no endpoint") as info:
        lb.pick()
    assert info.value.service == "static"
    assert lb.snapshot().mode == "empty"


def test_closed_balancer_refuses_picks_but_in_flight_finish() -> None:
    with make(["a:1"]) as lb:
        p = lb.pick()
    with pytest.raises(NoEndpointAvailable, match="closed"):
        lb.pick()
    p.done()
    assert lb.mode == "closed" and lb.closed


def test_bad_options_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="first_resolution_timeout"):
        make(first_resolution_timeout=-1)
    with pytest.raises(ConfigError, match=r"rng must be a random\.Random"):
        make(rng=42)
    with pytest.raises(ConfigError, match="name must be a non-empty string"):
        make(name="")


def test_a_scheme_without_resolver_says_it_is_not_available(monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    monkeypatch.delitem(RESOLVERS, "etcd", raising=False)
    with pytest.raises(ConfigError, match="etcd:// scheme is not available"):
        LoadBalancer("etcd:///services/users")


class GatedResolver(Resolver):
    """Publishes only when the test opens the gate (a slow first resolution)."""

    gate = threading.Event()
    fail: BaseException | None = None

    def start(self, sink) -> None:  # type: ignore[no-untyped-def]
        def run() -> None:
            self.gate.wait(10)
            if self.fail is not None:
                sink.error(self.fail)
            else:
                sink.publish(EndpointSet([Endpoint("late", 1)], version=1))
        threading.Thread(target=run, daemon=True).start()


@pytest.fixture
def gated(monkeypatch: pytest.MonkeyPatch) -> type[GatedResolver]:
    class R(GatedResolver):
        gate = threading.Event()
        fail = None

    monkeypatch.setitem(RESOLVERS, "etcd", R)
    return R


def test_first_pick_waits_for_the_first_resolution(gated: type[GatedResolver]) -> None:
    lb = closing(LoadBalancer("etcd:///svc", first_resolution_timeout=10))
    assert lb.mode == "waiting"
    threading.Timer(0.05, gated.gate.set).start()
    assert lb.pick().endpoint.host == "late"


def test_first_pick_times_out_with_the_discovery_error_as_cause(gated: type[GatedResolver]
                                                                ) -> None:
    gated.fail = clientlb.DiscoveryError("server refused", source="127.0.0.1:2379")
    lb = closing(LoadBalancer("etcd:///svc", first_resolution_timeout=0.5))
    gated.gate.set()
    with pytest.raises(NoEndpointAvailable, match=r"did not finish in 0\.5s") as info:
        lb.pick()
    assert isinstance(info.value.__cause__, clientlb.DiscoveryError)


def test_await_ready_does_not_block_the_loop(gated: type[GatedResolver]) -> None:
    async def main() -> str:
        lb = closing(LoadBalancer("etcd:///svc", first_resolution_timeout=10))
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.001)

        t = asyncio.create_task(ticker())
        asyncio.get_running_loop().call_later(0.05, gated.gate.set)
        assert await lb.await_ready()
        t.cancel()
        assert ticks > 5  # the loop kept running while we waited
        with lb.pick() as p:
            return p.endpoint.host

    assert asyncio.run(main()) == "late"


def test_pick_inside_a_loop_before_resolution_fails_fast(gated: type[GatedResolver]) -> None:
    async def main() -> None:
        lb = LoadBalancer("etcd:///svc", first_resolution_timeout=30)
        with pytest.raises(NoEndpointAvailable, match="did not finish"):
            lb.pick()  # never blocks the event loop
        gated.gate.set()
        await lb.aclose()

    asyncio.run(main())


def test_async_context_manager_and_picks_from_coroutines() -> None:
    async def main() -> set[str]:
        async with LoadBalancer(["a:1", "b:1", "c:1"], strategy="round_robin") as lb:
            async def call() -> str:
                with lb.pick() as p:
                    await asyncio.sleep(0)
                    return p.endpoint.host
            hosts = await asyncio.gather(*(call() for _ in range(30)))
            assert sum(r.in_flight for r in lb.snapshot().endpoints) == 0
        assert lb.closed
        return set(hosts)

    assert asyncio.run(main()) == {"a", "b", "c"}


def test_exclude_avoids_tried_endpoints_until_none_is_left() -> None:
    lb = make(["a:1", "b:1", "c:1"], strategy="ring_hash")
    first = lb.pick(key="k").endpoint.address
    second = lb.pick(key="k", exclude={first}).endpoint.address
    third = lb.pick(key="k", exclude={first, second}).endpoint.address
    assert len({first, second, third}) == 3
    assert lb.pick(key="k", exclude={"a:1", "b:1", "c:1"}).endpoint.address in {"a:1", "b:1",
                                                                                 "c:1"}


def test_prefer_is_used_only_when_it_may_take_traffic() -> None:
    lb = make(["a:1", "b:1"], strategy="round_robin")
    assert all(lb.pick(prefer="b:1").endpoint.host == "b" for _ in range(5))
    assert lb.pick(prefer="zzz:1").endpoint.host in {"a", "b"}

"""Hedged requests (issue 19): the engine's rules with a fake clock, then real servers on
loopback — HTTP sync and asyncio, gRPC — the hedge winning, the loser cancelled without
breaking its pool, the caps holding under an outage, non-idempotent requests never
hedged, probes of a slow endpoint hedged at once."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import httpx
import pytest
import tenacity
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import clientlb
import clientlb.grpc
import clientlb.grpc.aio
from clientlb import ConfigError, Hedging, Outcome, RetryBudget, RetryPolicy
from clientlb._engine import hedging as engine
from clientlb._engine.call import LogicalCall
from clientlb._http.workers import WorkerPool

from ._grpc_servers import UNARY, GrpcBackend, outcomes_of
from ._helpers import FakeClock, closing, wait_until
from ._http_backend import Backend, make_lb

HEDGE = Hedging(delay=0.05)


@pytest.fixture
def servers() -> Iterator[list[Backend]]:
    """b0 (made slow or hung by the tests) and b1, quiet HTTP servers on loopback."""
    started = [Backend(f"b{i}") for i in range(2)]
    yield started
    for b in started:
        b.close()


def outcomes(lb: clientlb.LoadBalancer) -> list[tuple[str, Outcome, float]]:
    seen: list[tuple[str, Outcome, float]] = []
    lb.add_outcome_listener(lambda state, outcome, latency, now: seen.append(
        (state.address, outcome, latency)))
    return seen


async def settled(lb: clientlb.LoadBalancer) -> int:
    """Poll (on the event loop) until nothing is in flight on ``lb``, for up to 3 s."""
    for _ in range(300):
        if lb.in_flight() == 0:
            break
        await asyncio.sleep(0.01)
    return lb.in_flight()


def get_once(lb: clientlb.LoadBalancer, hedging: Hedging, is_async: bool,
             while_running: Callable[[], None] | None = None) -> tuple[str, float]:
    """One GET through a new transport of ``lb``: (the answer's text, seconds to it); then
    waits until every attempt ended (sync: ``while_running()`` first, when the caller has
    its answer and the attempt it beat may still run)."""
    async def main() -> tuple[str, float]:
        transport = clientlb.AsyncHTTPTransport(lb, hedging=hedging)
        async with httpx.AsyncClient(transport=transport) as client:
            started = time.monotonic()
            text = (await client.get("http://users/")).text
            elapsed = time.monotonic() - started
            assert await settled(lb) == 0
            return text, elapsed

    if is_async:
        return asyncio.run(main())
    with httpx.Client(transport=clientlb.HTTPTransport(lb, hedging=hedging)) as client:
        started = time.monotonic()
        text = client.get("http://users/").text
        elapsed = time.monotonic() - started
        if while_running is not None:
            while_running()
        wait_until(lambda: lb.in_flight() == 0, message="every attempt ended")
    return text, elapsed


def seed_latency(lb: clientlb.LoadBalancer, address: str, seconds: float) -> None:
    """Make ``address``'s latency estimate ``seconds``, as a finished slow call would."""
    pick = lb.pick(prefer=address)
    assert pick.address == address
    pick.done(Outcome.SUCCESS, seconds)


def make_slow(lb: clientlb.LoadBalancer, slow: str, fast: str, seconds: float) -> None:
    """``slow``'s estimate is ``seconds``, ``fast``'s is a typical one's: as ``peak_ewma``
    sees a slow endpoint among fast ones (the probe rule compares the two)."""
    lb.hedge_state()  # from now on, outcomes feed the typical estimate
    seed_latency(lb, fast, 0.01)
    seed_latency(lb, slow, seconds)


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
    """An endpoint whose estimate is ≥ 2 × the typical endpoint's (and above the delay) is
    a probe: hedged at once. When a race is lost, the strategy's pick runs on; a hedge is
    cancelled and its endpoint's estimate rises to what it waited (never falls)."""
    lb = closing(clientlb.LoadBalancer(["127.0.0.1:8001", "127.0.0.1:8002"], clock=clock,
                                       rng=random.Random(1), outlier_detection=None))
    make_slow(lb, "127.0.0.1:8001", "127.0.0.1:8002", 0.2)
    slow = LogicalCall(lb, prefer="127.0.0.1:8001", hedging=HEDGE)
    pick = slow.pick()
    assert pick.address == "127.0.0.1:8001"
    assert slow.hedge_delay(pick) == 0.0
    assert slow.take_hedge(2, pick.address)
    assert lb.hedging_statistics()["probes"] == 1
    hedge = slow.pick(busy={pick.address})
    assert hedge.address == "127.0.0.1:8002"
    assert slow.lost(pick, hedge=False) is True  # the strategy's pick runs on
    fast = LogicalCall(lb, prefer="127.0.0.1:8002", hedging=HEDGE)
    assert fast.hedge_delay(fast.pick()) == 0.05  # 0.03 s default estimate: no probe
    clock.advance(0.3)
    assert slow.lost(hedge, hedge=True) is False  # a hedge is cancelled...
    assert hedge.latency_estimate() == pytest.approx(0.3)  # ...its wait a lower bound
    hedge.done(Outcome.CANCELLED)
    clock.advance(0.001)
    again = LogicalCall(lb, prefer="127.0.0.1:8002", hedging=HEDGE).pick()
    again.outlasted()  # a shorter wait never lowers the estimate
    assert again.latency_estimate() == pytest.approx(0.3, rel=1e-3)
    for p in (pick, again):
        p.done(Outcome.CANCELLED)


def test_after_a_pause_of_the_whole_client_no_endpoint_is_a_probe(clock: FakeClock) -> None:
    """Every estimate high at once (a client pause, a GC) says nothing about one endpoint:
    only one slower than its peers is a probe, however the estimates compare to the delay."""
    addresses = ["127.0.0.1:8001", "127.0.0.1:8002", "127.0.0.1:8003"]
    lb = closing(clientlb.LoadBalancer(addresses, clock=clock, outlier_detection=None))
    lb.hedge_state()
    for address in addresses:
        seed_latency(lb, address, 0.2)  # 4 × the delay, everywhere
    probes = []
    for address in addresses:
        call = LogicalCall(lb, prefer=address, hedging=HEDGE)
        pick = call.pick()
        probes.append(call.hedge_delay(pick) == 0.0)
        pick.done(Outcome.CANCELLED)
    assert probes == [False, False, False]
    seed_latency(lb, addresses[0], 0.6)  # now one is 3 × slower than the others
    call = LogicalCall(lb, prefer=addresses[0], hedging=HEDGE)
    assert call.hedge_delay(call.pick()) == 0.0


def test_an_endpoint_holding_an_attempt_past_its_hedge_delay_is_hedged_at_once(
        clock: FakeClock) -> None:
    """The lagging rule: a stall shows in no estimate until an answer comes, but an attempt
    still unanswered when its hedge is due says the endpoint is slow now. Its estimate
    rises to the wait at once, and requests sent there are hedged at once until it ends
    — unless half the endpoints lag (a pause of the client, an overload)."""
    addresses = ["127.0.0.1:8001", "127.0.0.1:8002", "127.0.0.1:8003", "127.0.0.1:8004"]
    lb = closing(clientlb.LoadBalancer(addresses, clock=clock, outlier_detection=None))
    hedging = Hedging(delay=0.05)

    def probe(address: str) -> bool:
        call = LogicalCall(lb, prefer=address, hedging=hedging)
        pick = call.pick()
        assert pick.address == address
        try:
            return call.hedge_delay(pick) == 0.0
        finally:
            pick.done(Outcome.CANCELLED)

    stalled = LogicalCall(lb, prefer=addresses[0], hedging=hedging)
    first = stalled.pick()
    assert stalled.hedge_delay(first) == 0.05 and not probe(addresses[0])
    clock.advance(0.2)  # 4 × the delay: the hedge is late, the attempt later still
    assert stalled.take_hedge(2, first.address, [first])
    assert first.latency_estimate() == pytest.approx(0.2)  # at least what it waited
    assert probe(addresses[0]) and not probe(addresses[1])
    assert lb.hedging_statistics()["probes"] == 0  # counted when such a hedge is sent
    other = LogicalCall(lb, prefer=addresses[1], hedging=hedging)
    second = other.pick()
    assert other.take_hedge(2, second.address, [second])  # now 2 of 4 endpoints lag
    assert not probe(addresses[0]) and not probe(addresses[1])
    first.done(Outcome.CANCELLED)  # its lag is over: 1 of 4 again
    assert probe(addresses[1])
    second.done(Outcome.CANCELLED)  # nothing lags (and no outcome moved an estimate)
    assert not probe(addresses[1])


def test_no_more_hedges_than_max_attempts_and_none_past_the_deadline(clock: FakeClock) -> None:
    """max_attempts=3 allows two hedges; a deadline shorter than the delay allows none."""
    lb = closing(clientlb.LoadBalancer(["127.0.0.1:8001", "127.0.0.1:8002", "127.0.0.1:8003"],
                                       clock=clock, outlier_detection=None))
    call = LogicalCall(lb, hedging=Hedging(delay=0.01, max_attempts=3))
    assert call.hedge_delay() == 0.01 and call.take_hedge(2)
    assert call.hedge_delay() == 0.01 and call.take_hedge(3)
    assert call.hedge_delay() is None
    assert LogicalCall(lb, hedging=HEDGE, deadline=0.01).hedge_delay() is None
    assert LogicalCall(lb).hedge_delay() is None  # a call without a policy


# -- HTTP on real servers -----------------------------------------------------------------------


def test_the_hedge_threads_are_few_and_refuse_work_rather_than_queue_it() -> None:
    """A full pool refuses a job (the request then runs unhedged); threads are reused."""
    pool = WorkerPool(size=1, idle=5.0, name="clientlb-test-pool")
    gate = threading.Event()
    ran: list[str] = []
    assert pool.has_room() and pool.try_submit(lambda: (gate.wait(5), ran.append("a")))
    assert not pool.has_room() and not pool.try_submit(lambda: ran.append("b"))
    gate.set()
    wait_until(lambda: ran == ["a"] and pool.has_room(), message="the job done")
    assert pool.try_submit(lambda: ran.append("c"))
    wait_until(lambda: ran == ["a", "c"], message="the second job, on the same thread")
    assert sum(t.name == "clientlb-test-pool" for t in threading.enumerate()) == 1


@pytest.mark.parametrize("is_async", [False, True])
def test_a_hedge_on_the_fast_endpoint_wins_and_the_slow_pick_still_reports_its_latency(
        servers: list[Backend], is_async: bool) -> None:
    """b0 takes 0.3 s: a request that starts there is answered by b1 soon after the hedge
    delay; b0's attempt (the strategy's pick) is not cancelled: it ends, and reports its
    real outcome and latency, so the balancer still learns that b0 is slow."""
    servers[0].delay = 0.3
    lb = make_lb([s.address for s in servers])
    seen = outcomes(lb)

    def still_running() -> None:
        assert lb.in_flight() == 1  # b0's attempt (sync: the caller is back before it ends)

    with _first_on(lb, servers[0].address):
        text, elapsed = get_once(lb, HEDGE, is_async, while_running=still_running)
    assert text == "b1\n" and elapsed < 0.3
    stats = lb.hedging_statistics()
    assert (stats["requests"], stats["sent"], stats["won"], stats["probes"]) == (1, 1, 1, 0)
    assert [(a, o) for a, o, _ in seen] == [(servers[1].address, Outcome.SUCCESS),
                                            (servers[0].address, Outcome.SUCCESS)]
    assert seen[1][2] >= 0.3  # b0's real latency, learned
    assert lb.state_of(servers[0].address).load.latency(lb.clock()) >= 0.29  # type: ignore[union-attr]


def test_sync_a_losing_hedge_is_drained_and_closed_when_it_answers(
        servers: list[Backend]) -> None:
    """Sync: b0 answers in 0.2 s, the hedge went to b1, which hangs; b0's answer wins; the
    hedge cannot be interrupted, so its thread waits, then drains and closes its response
    (reported CANCELLED) and its connection goes back to the pool, reused next time."""
    servers[0].delay = 0.2
    servers[1].hang = threading.Event()
    lb = make_lb([s.address for s in servers])
    seen = outcomes(lb)
    with httpx.Client(transport=clientlb.HTTPTransport(lb, hedging=HEDGE)) as client:
        with _first_on(lb, servers[0].address):
            assert client.get("http://users/").text == "b0\n"
        stats = lb.hedging_statistics()
        assert (stats["sent"], stats["won"]) == (1, 0)
        assert lb.in_flight() == 1  # the hedge, blocked in its thread
        servers[1].hang.set()
        wait_until(lambda: lb.in_flight() == 0, message="the hedge settled")
        assert [(a, o) for a, o, _ in seen] == [(servers[0].address, Outcome.SUCCESS),
                                                (servers[1].address, Outcome.CANCELLED)]
        servers[1].hang = None
        connections = servers[1].connections
        later = [client.get("http://users/").text for _ in range(4)]
        assert later.count("b1\n") >= 1 and servers[1].connections == connections  # reused
    assert "hedging=50ms" in repr(clientlb.HTTPTransport(lb, hedging=HEDGE))


def test_async_a_losing_hedge_is_cancelled_at_once_without_breaking_its_pool(
        servers: list[Backend]) -> None:
    """asyncio: the hedge on the hung b1 is cancelled as soon as b0 answers (CANCELLED while
    b1 still hangs); httpcore closes that connection, none is left broken in the pool, and
    later requests on b1 succeed on a new connection."""
    servers[0].delay = 0.2
    servers[1].hang = threading.Event()

    async def main() -> None:
        lb = make_lb([s.address for s in servers])
        seen = outcomes(lb)
        transport = clientlb.AsyncHTTPTransport(lb, hedging=HEDGE)
        async with httpx.AsyncClient(transport=transport) as client:
            with _first_on(lb, servers[0].address):
                answers = await asyncio.gather(*(client.get("http://users/") for _ in range(3)))
            assert {r.text for r in answers} == {"b0\n"}
            stats = lb.hedging_statistics()
            assert stats["sent"] >= 1 and stats["won"] == 0
            assert await settled(lb) == 0  # cancelled, not waited for: b1 still hangs
            assert [o for a, o, _ in seen if a == servers[1].address] \
                == [Outcome.CANCELLED] * stats["sent"]
            route = next(r for r in transport._router.routes() if r.address == servers[1].address)
            assert [c for c in route.pool.connections if not c.is_idle()] == []  # none broken
            connections = servers[1].connections
            assert servers[1].hang is not None
            servers[1].hang.set()
            servers[1].hang = None
            servers[0].delay = 0.0
            later = await asyncio.gather(*(client.get("http://users/") for _ in range(6)))
            assert {r.status_code for r in later} == {200}
            assert "b1\n" in {r.text for r in later}
            assert servers[1].connections > connections  # the cancelled ones were closed
            assert await settled(lb) == 0

    asyncio.run(main())


@pytest.mark.parametrize("is_async", [False, True])
def test_non_idempotent_requests_are_never_hedged_unless_they_opt_in(
        servers: list[Backend], is_async: bool) -> None:
    """POST (and a GET that opts out) waits for the slow endpoint; a POST that opts in is
    hedged; a streamed body never is, even opted in."""
    servers[0].delay = 0.3
    lb = make_lb([servers[0].address, servers[1].address])

    def body() -> Iterator[bytes]:
        yield b"streamed"

    async def abody() -> Any:
        yield b"streamed"

    def send(client: Any, method: str, **kwargs: Any) -> Any:
        return client.request(method, "http://users/", **kwargs)

    cases = [("POST", {"content": b"x"}, False),
             ("GET", {"extensions": {"clientlb.hedge": False}}, False),
             ("POST", {"content": b"x", "extensions": {"clientlb.hedge": True}}, True),
             ("POST", {"extensions": {"clientlb.hedge": True}}, False)]

    def check(texts: list[tuple[str, bool, str]]) -> None:
        for method, hedged, text in texts:
            assert text == "b1\n" if hedged else text == "b0\n", (method, hedged)

    def cases_for(streamed: Any) -> list[tuple[str, dict[str, Any], bool]]:
        out = [(m, dict(kw), h) for m, kw, h in cases]
        out[-1][1]["content"] = streamed()
        return out

    results: list[tuple[str, bool, str]] = []
    if is_async:
        async def main() -> None:
            transport = clientlb.AsyncHTTPTransport(lb, hedging=HEDGE)
            async with httpx.AsyncClient(transport=transport) as client:
                for method, kwargs, hedged in cases_for(abody):
                    response = await send(client, method, **kwargs)
                    results.append((method, hedged, response.text))

        with _first_on(lb, servers[0].address):
            asyncio.run(main())
    else:
        with _first_on(lb, servers[0].address), \
                httpx.Client(transport=clientlb.HTTPTransport(lb, hedging=HEDGE)) as client:
            for method, kwargs, hedged in cases_for(body):
                results.append((method, hedged, send(client, method, **kwargs).text))
    check(results)
    stats = lb.hedging_statistics()
    assert stats["requests"] == 1 and stats["sent"] == 1  # only the POST that opted in
    assert sum(1 for m, _, _, _ in servers[1].requests if m == "POST") == 1


def test_under_an_outage_hedges_stay_within_the_extra_load_and_retry_budgets(
        servers: list[Backend]) -> None:
    """Every backend slower than the delay: hedges ≤ max(5% of requests, 10); with a tight
    retry budget, ≤ what it allows — each hedge is withdrawn from both."""
    for s in servers:
        s.delay = 0.03

    async def run(lb: clientlb.LoadBalancer, n: int) -> None:
        transport = clientlb.AsyncHTTPTransport(lb, hedging=Hedging(delay=0.005,
                                                                    max_extra_load=0.05))
        async with httpx.AsyncClient(transport=transport) as client:
            sem = asyncio.Semaphore(25)

            async def one() -> int:
                async with sem:
                    return (await client.get("http://users/")).status_code

            assert set(await asyncio.gather(*(one() for _ in range(n)))) == {200}

    lb = make_lb([s.address for s in servers])
    asyncio.run(run(lb, 300))
    stats = lb.hedging_statistics()
    assert stats["requests"] == 300
    assert stats["sent"] <= max(0.05 * 300, engine.BUDGET_FLOOR) and stats["refused"] >= 250
    assert lb.retry_budget is not None
    assert lb.retry_budget.statistics()["retries"] == stats["sent"]
    served = sum(s.served() for s in servers)
    assert served <= 300 + stats["sent"]

    tight = RetryPolicy(backoff=tenacity.wait_none(),
                        budget=RetryBudget(ratio=0.01, min_retries_per_second=0))
    lb = make_lb([s.address for s in servers], retry=tight)
    asyncio.run(run(lb, 200))
    assert lb.hedging_statistics()["sent"] <= 2  # the retry budget: 1% of 200


@pytest.mark.parametrize("is_async", [False, True])
def test_a_probe_of_a_slow_endpoint_is_hedged_at_once_and_still_teaches_its_latency(
        servers: list[Backend], is_async: bool) -> None:
    """peak_ewma-style probe: b0's estimate is 0.3 s, b1's 30 ms; a request sent to b0 is
    hedged at once (answered by b1, counted as a probe), and b0's attempt runs to its end,
    reporting its real outcome and latency instead of CANCELLED."""
    servers[0].delay = 0.3
    lb = make_lb([s.address for s in servers])
    make_slow(lb, servers[0].address, servers[1].address, 0.3)
    seen = outcomes(lb)
    hedging = Hedging(delay=0.12)  # b0's 0.3 s: > the delay, ≥ 2 × b1's: a probe

    with _first_on(lb, servers[0].address):
        text, elapsed = get_once(lb, hedging, is_async)
    assert text == "b1\n" and elapsed < 0.3  # not b0's answer
    stats = lb.hedging_statistics()
    assert (stats["probes"], stats["sent"], stats["won"]) == (1, 1, 1)  # hedged at once
    probe = [(o, latency) for a, o, latency in seen if a == servers[0].address]
    assert len(probe) == 1 and probe[0][0] is Outcome.SUCCESS and probe[0][1] >= 0.3
    lb.close()


def test_the_adaptive_delay_learns_the_latencies_then_hedges_a_slow_answer(
        servers: list[Backend]) -> None:
    """delay=None: no hedge before 32 latencies; then the p95 of what was seen (a few ms on
    loopback), so a request stuck on a hung backend is answered by the other one."""
    lb = make_lb([s.address for s in servers])
    with httpx.Client(transport=clientlb.HTTPTransport(lb, hedging=Hedging())) as client:
        for _ in range(engine.MIN_SAMPLES):
            client.get("http://users/")
        delay = lb.hedging_statistics()["adaptive_delay"]
        assert delay is not None and delay < 0.5
        assert lb.hedging_statistics()["sent"] == 0
        servers[0].hang = threading.Event()
        try:
            with _first_on(lb, servers[0].address):
                assert client.get("http://users/").text == "b1\n"
        finally:
            servers[0].hang.set()
    assert lb.hedging_statistics()["won"] == 1
    wait_until(lambda: lb.in_flight() == 0, message="the loser settled")


def test_the_adaptive_delay_counts_the_answers_not_the_attempts_a_hedge_beat(
        servers: list[Backend]) -> None:
    """40 requests sent to a 0.3 s backend are answered by hedges; their first attempts run
    on and end at 0.3 s, but callers never waited for them: the delay stays that of the
    answers (a few ms), so a stalled backend does not push the hedges late."""
    lb = make_lb([s.address for s in servers])

    async def main() -> None:
        transport = clientlb.AsyncHTTPTransport(lb, hedging=Hedging(max_extra_load=1.0))
        async with httpx.AsyncClient(transport=transport) as client:
            for _ in range(engine.MIN_SAMPLES):
                await client.get("http://users/")
            assert lb.hedging_statistics()["adaptive_delay"] is not None
            servers[0].delay = 0.3
            with _first_on(lb, servers[0].address):
                for _ in range(40):
                    assert (await client.get("http://users/")).text == "b1\n"
            assert await settled(lb) == 0  # every first attempt on b0 ended, at 0.3 s
            servers[0].delay = 0.0
            for _ in range(24):  # past the next recomputation (every 64 samples)
                await client.get("http://users/")

    asyncio.run(main())
    stats = lb.hedging_statistics()
    assert stats["adaptive_delay"] < 0.1
    assert stats["won"] >= 40


def test_the_balancers_policy_is_live_and_comes_from_config_files_and_the_registry(
        servers: list[Backend]) -> None:
    """[services.X.hedging] builds a Hedging; Registry.update(hedging=...) reaches a transport
    built before it; False turns it off; bad values name their dotted path."""
    config = {"services": {"users": {
        "target": [s.address for s in servers], "strategy": "round_robin",
        "hedging": {"delay": 0.05, "methods": ["GET", "/pkg.Users/Get"]}}}}
    with clientlb.Registry.from_config(config, telemetry=False) as registry:
        lb = registry.get("users")
        assert lb.hedging == Hedging(delay=0.05, methods=frozenset({"GET", "/pkg.Users/Get"}))
        transport = clientlb.HTTPTransport(lb)
        assert "hedging=50ms" in repr(transport)
        registry.update("users", hedging=False)
        assert lb.hedging is None and "hedging" not in repr(transport)
        registry.update("users", hedging={"max_extra_load": 0.1})
        assert lb.hedging == Hedging(max_extra_load=0.1) and "hedging=adaptive" in repr(transport)
        assert "hedging" not in repr(clientlb.HTTPTransport(lb, hedging=False))
        with pytest.raises(ConfigError, match=r"^hedging: hedging must be a clientlb\.Hedging"):
            registry.update("users", strategy="random", hedging=0.05)  # checked first:
        assert lb.strategy.name == "round_robin"  # nothing applied
    bad = {"services": {"users": {"target": "127.0.0.1:1", "hedging": {"delay": -1}}}}
    with pytest.raises(ConfigError, match=r"^services\.users\.hedging\.delay: delay must be"):
        clientlb.Registry.from_config(bad, telemetry=False)
    with pytest.raises(ConfigError, match=r"^hedging: "):
        clientlb.HTTPTransport(make_lb([servers[0].address]), hedging=0.05)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^hedging: hedging must be a clientlb\.Hedging"):
        clientlb.LoadBalancer(["127.0.0.1:1"], hedging=True)  # type: ignore[arg-type]


def test_hedges_are_counted_in_metrics_and_shown_on_the_callers_span(
        servers: list[Backend]) -> None:
    """clientlb.hedges counts sent and won; the span gets a clientlb.hedge event and the
    winning attempt's clientlb.attempt event."""
    reader = InMemoryMetricReader()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    lb = make_lb([s.address for s in servers])
    clientlb.Telemetry(meter_provider=MeterProvider(metric_readers=[reader])).instrument(lb)
    servers[0].hang = threading.Event()
    try:
        with _first_on(lb, servers[0].address), \
                httpx.Client(transport=clientlb.HTTPTransport(lb, hedging=HEDGE)) as client, \
                provider.get_tracer("test").start_as_current_span("request"):
            assert trace.get_current_span().is_recording()
            assert client.get("http://users/").text == "b1\n"
    finally:
        servers[0].hang.set()
    wait_until(lambda: lb.in_flight() == 0, message="the loser settled")
    data = reader.get_metrics_data()
    assert data is not None
    hedges = {dict(p.attributes)["clientlb.hedge"]: p.value
              for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
              if m.name == "clientlb.hedges" for p in m.data.data_points}
    assert hedges == {"sent": 1, "won": 1, "refused": 0, "probes": 0}
    (span,) = exporter.get_finished_spans()
    events = {e.name: dict(e.attributes or {}) for e in span.events}
    assert events["clientlb.hedge"]["clientlb.hedge.reason"] == "delay"
    assert events["clientlb.hedge"]["clientlb.endpoint"] == servers[0].address
    assert events["clientlb.attempt"]["clientlb.outcome"] == "success"


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
        wait_until(lambda: Outcome.SUCCESS in {o for a, o in seen if a == backends[0].address},
                   message="b0's first attempts ending, not cancelled")
    assert answers == {b"b1"} and stats["sent"] >= stats["won"] >= 1  # b1 may lose a hedge
    for methods, hedged in ((None, False), ({UNARY}, True)):
        lb = closing(clientlb.LoadBalancer(addresses, strategy="round_robin",
                                           hedging=clientlb.Hedging(delay=0.05, methods=methods)))
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
        lb = closing(clientlb.LoadBalancer([backends[0].address, backends[1].address],
                                           strategy="round_robin", outlier_detection=None))
        await lb.await_ready()
        make_slow(lb, backends[0].address, backends[1].address, 0.3)
        seen = outcomes_of(lb)
        with _first_on(lb, backends[0].address):
            async with clientlb.grpc.aio.insecure_channel(
                    lb, hedging=clientlb.Hedging(delay=0.12)) as channel:
                started = time.monotonic()
                answer = await channel.unary_unary(UNARY)(b"x", timeout=5)
                elapsed = time.monotonic() - started
                await settled(lb)
        stats = lb.hedging_statistics()
        await lb.aclose()
        return answer, elapsed, stats, seen

    answer, elapsed, stats, seen = asyncio.run(main())
    assert answer == b"b1" and elapsed < 0.3
    assert stats["probes"] == 1  # hedged at once
    assert [o for a, o in seen if a == backends[0].address] == [Outcome.SUCCESS]

"""dns:// and srv:// against a real Knot DNS server on loopback (tests/dns_server.py)."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import clientlb
from clientlb._core.target import parse_target
from clientlb._resolvers import DNSResolver, SRVResolver
from clientlb._resolvers._backoff import Backoff, BackoffPolicy, ttl_delay
from clientlb._resolvers.srv import srv_weights

from ._discovery_helpers import addresses, picks_nothing
from ._helpers import FakeClock, HTTPBackend, free_port, wait_until
from .conftest import require_binary
from .dns_server import KnotServer

pytestmark = pytest.mark.servers

FAST = {"min_ttl": 0.05, "ttl_jitter": 0.0, "backoff_initial": 0.05, "backoff_maximum": 0.2,
        "timeout": 1.0, "min_refresh_interval": 0.05}


@pytest.fixture
def knot(tmp_path: Path) -> Iterator[KnotServer]:
    server = KnotServer(require_binary("knotd", "/usr/sbin/knotd"), tmp_path / "knot", records="""
web   A     127.0.0.1
web   AAAA  ::1
two   A     127.0.0.1
""")
    try:
        yield server
    finally:
        server.close()


def get(endpoint: clientlb.Endpoint) -> str:
    return httpx.get(f"http://{endpoint.address}/", timeout=5).text.strip()


# -- timing rules (pure) -------------------------------------------------------------------


def test_ttl_delay_clamps_to_floor_and_ceiling_and_only_shortens_with_jitter() -> None:
    rng = random.Random(7)
    assert ttl_delay(0, floor=5, ceiling=300, jitter=0, rng=rng) == 5
    assert ttl_delay(86400, floor=5, ceiling=300, jitter=0, rng=rng) == 300
    delays = [ttl_delay(60, floor=5, ceiling=300, jitter=0.1, rng=rng) for _ in range(200)]
    assert all(54 <= d <= 60 for d in delays)
    assert max(delays) - min(delays) > 3  # actually spread


def test_backoff_grows_exponentially_with_jitter_up_to_the_cap_and_resets() -> None:
    backoff = Backoff(BackoffPolicy(initial=1, multiplier=2, maximum=8, jitter=0.0),
                      random.Random(1))
    assert [backoff.next_delay() for _ in range(5)] == [1, 2, 4, 8, 8]
    backoff.reset()
    assert backoff.next_delay() == 1
    jittered = Backoff(BackoffPolicy(jitter=0.2), random.Random(3))
    first = jittered.next_delay()
    assert 0.8 <= first <= 1.2


def test_bad_resolver_options_are_config_errors_naming_the_field() -> None:
    with pytest.raises(clientlb.ConfigError, match="min_ttl"):
        clientlb.LoadBalancer("dns://127.0.0.1:1/x.test:80", resolver_options={"min_ttl": -1})
    with pytest.raises(clientlb.ConfigError, match="max_ttl"):
        clientlb.LoadBalancer("dns://127.0.0.1:1/x.test:80",
                              resolver_options={"min_ttl": 10, "max_ttl": 5})
    with pytest.raises(clientlb.ConfigError, match="record_types"):
        clientlb.LoadBalancer("dns://127.0.0.1:1/x.test:80",
                              resolver_options={"record_types": ["MX"]})
    with pytest.raises(clientlb.ConfigError, match=r"unknown option\(s\) \['min_tll'\].*min_ttl"):
        clientlb.LoadBalancer("dns://127.0.0.1:1/x.test:80", resolver_options={"min_tll": 1})
    with pytest.raises(clientlb.ConfigError, match="backoff_jitter"):
        clientlb.LoadBalancer("srv://127.0.0.1:1/_a._tcp.x.test",
                              resolver_options={"backoff_jitter": 2})


def test_srv_weight_zero_gets_the_rfc_2782_share() -> None:
    """Weight-0 records share 1/(T+1) of their level, as RFC 2782's selection does."""
    assert srv_weights([60, 40, 0]) == [60, 40, 1]
    assert srv_weights([10, 0, 0]) == [10, 0.5, 0.5]
    assert srv_weights([0, 0, 0]) == [1, 1, 1]


def test_refresh_is_rate_limited_by_min_refresh_interval() -> None:
    """With the clock frozen a refresh is not honoured; once time passes it is, at once."""
    clock = FakeClock()
    resolver = DNSResolver(parse_target("dns://127.0.0.1:1/x.test:80"), clock=clock,
                           min_refresh_interval=10)

    async def scenario() -> tuple[bool, bool, float]:
        resolver._wake = asyncio.Event()
        resolver._loop = asyncio.get_running_loop()
        resolver.mark_attempt()
        resolver.refresh()
        too_soon = await resolver.sleep(0.2)
        clock.advance(10)
        resolver.refresh()
        start = time.monotonic()
        honoured = await resolver.sleep(30)
        return too_soon, honoured, time.monotonic() - start

    too_soon, honoured, took = asyncio.run(scenario())
    assert too_soon is False
    assert honoured is True and took < 1
    assert resolver.statistics().refreshes == 2


# -- dns:// ---------------------------------------------------------------------------------


def test_dns_target_just_works_and_publishes_every_a_and_aaaa_record(knot: KnotServer) -> None:
    with clientlb.LoadBalancer(f"dns://{knot.server}/web.test:8080") as lb:
        assert lb.wait_ready()
        assert addresses(lb) == {"127.0.0.1:8080", "[::1]:8080"}
        assert isinstance(lb.resolver, DNSResolver)
        assert "endpoints=2" in repr(lb.resolver)


def test_dns_follows_records_added_and_removed_within_the_ttl(knot: KnotServer) -> None:
    ttl = 1.0
    with clientlb.LoadBalancer(f"dns://{knot.server}/scale.test:8080",
                               resolver_options=FAST) as lb:
        knot.update(add=[("scale", 1, "A", "127.0.0.1")])
        wait_until(lambda: addresses(lb) == {"127.0.0.1:8080"}, timeout=5)
        start = time.monotonic()
        knot.update(add=[("scale", 1, "A", "127.0.0.2"), ("scale", 1, "A", "127.0.0.3")])
        wait_until(lambda: len(lb.endpoints()) == 3, timeout=5, message="records added")
        assert time.monotonic() - start <= ttl + 0.5
        start = time.monotonic()
        knot.update(delete=[("scale", "A", "127.0.0.1")])
        wait_until(lambda: addresses(lb) == {"127.0.0.2:8080", "127.0.0.3:8080"}, timeout=5,
                   message="record removed")
        assert time.monotonic() - start <= ttl + 0.5


def test_dns_server_stopped_keeps_the_last_good_set_and_requests_still_succeed(
        knot: KnotServer, caplog: pytest.LogCaptureFixture) -> None:
    backend = HTTPBackend("only")
    try:
        knot.update(add=[("app", 1, "A", "127.0.0.1")])
        with clientlb.LoadBalancer(f"dns://{knot.server}/app.test:{backend.port}",
                                   resolver_options={**FAST, "timeout": 0.3}) as lb:
            assert lb.wait_ready()
            before = lb.endpoints()
            knot.stop()
            wait_until(lambda: lb.resolver.statistics().errors >= 2, message="errors seen")
            assert lb.endpoints() == before
            for _ in range(5):
                with lb.pick() as p:
                    assert get(p.endpoint) == "only"
            assert "keeping the last good set" in caplog.text
            knot.start()  # back: followed again
            knot.update(add=[("app", 1, "A", "127.0.0.2")])
            wait_until(lambda: len(lb.endpoints()) == 2, timeout=5)
    finally:
        backend.close()


def test_dns_nxdomain_is_authoritative_and_empties_the_set(knot: KnotServer) -> None:
    knot.update(add=[("gone", 1, "A", "127.0.0.1")])
    with clientlb.LoadBalancer(f"dns://{knot.server}/gone.test:80",
                               resolver_options=FAST) as lb:
        wait_until(lambda: len(lb.endpoints()) == 1)
        knot.update(delete=[("gone",)])
        wait_until(lambda: lb.endpoints() == (), timeout=5, message="NXDOMAIN applied")
        wait_until(lambda: picks_nothing(lb))
        with pytest.raises(clientlb.NoEndpointAvailable, match="no endpoint"):
            lb.pick()


def test_dns_unreachable_server_fails_the_first_pick_with_the_discovery_error() -> None:
    port = free_port()  # nothing listens there
    with clientlb.LoadBalancer(f"dns://127.0.0.1:{port}/web.test:80",
                               first_resolution_timeout=0.2,
                               resolver_options={**FAST, "timeout": 0.3}) as lb:
        wait_until(lambda: lb.resolver.statistics().errors >= 1)  # type: ignore[attr-defined]
        with pytest.raises(clientlb.NoEndpointAvailable) as info:
            lb.pick()
        assert isinstance(info.value.__cause__, clientlb.DiscoveryError)
        assert f"127.0.0.1:{port}" in str(info.value.__cause__)


def test_refresh_re_resolves_long_before_the_ttl(knot: KnotServer) -> None:
    knot.update(add=[("slow", 3600, "A", "127.0.0.1")])
    with clientlb.LoadBalancer(f"dns://{knot.server}/slow.test:80",
                               resolver_options={**FAST, "max_ttl": 3600}) as lb:
        wait_until(lambda: len(lb.endpoints()) == 1)
        knot.update(add=[("slow", 3600, "A", "127.0.0.9")])
        lb.refresh()
        wait_until(lambda: len(lb.endpoints()) == 2, timeout=3, message="early refresh")
        assert lb.resolver.statistics().refreshes == 1


def test_dns_under_asyncio_runs_on_the_applications_event_loop(knot: KnotServer) -> None:
    async def scenario() -> set[str]:
        async with clientlb.LoadBalancer(f"dns://{knot.server}/web.test:80") as lb:
            assert await lb.await_ready()
            resolver = lb.resolver
            assert isinstance(resolver, DNSResolver)
            assert resolver._thread is None
            assert resolver._task is not None
            assert resolver._task.get_loop() is asyncio.get_running_loop()
            return addresses(lb)

    assert asyncio.run(scenario()) == {"127.0.0.1:80", "[::1]:80"}


def test_dns_ipv4_only_when_record_types_says_so(knot: KnotServer) -> None:
    with clientlb.LoadBalancer(f"dns://{knot.server}/web.test:80",
                               resolver_options={"record_types": ["A"]}) as lb:
        assert lb.wait_ready()
        assert addresses(lb) == {"127.0.0.1:80"}


# -- srv:// ---------------------------------------------------------------------------------


def test_srv_priority_becomes_levels_and_weight_becomes_endpoint_weight(
        knot: KnotServer) -> None:
    knot.update(add=[
        ("_http._tcp.w", 1, "SRV", "10 60 8001 two.test."),
        ("_http._tcp.w", 1, "SRV", "10 40 8002 two.test."),
        ("_http._tcp.w", 1, "SRV", "10 0 8003 two.test."),
        ("_http._tcp.w", 1, "SRV", "20 5 8004 two.test."),
    ])
    with clientlb.LoadBalancer(f"srv://{knot.server}/_http._tcp.w.test",
                               strategy="random", rng=random.Random(5)) as lb:
        assert lb.wait_ready()
        by_port = {ep.port: ep for ep in lb.endpoints()}
        assert {p: (e.priority, e.weight) for p, e in by_port.items()} == {
            8001: (0, 60), 8002: (0, 40), 8003: (0, 1), 8004: (1, 5)}
        assert by_port[8004].metadata["srv_priority"] == 20
        assert by_port[8003].metadata["srv_weight"] == 0
        counts = {p: 0 for p in by_port}
        for _ in range(3000):
            with lb.pick() as p:
                counts[p.endpoint.port] += 1
        assert counts[8004] == 0  # failover level: unused while level 0 is healthy
        assert 0 < counts[8003] < 100  # weight 0: a very small chance (1/101)
        assert 1.2 < counts[8001] / counts[8002] < 1.8


def test_srv_uses_the_additional_section_and_queries_other_targets(knot: KnotServer) -> None:
    knot.update(add=[("_h._tcp.in", 1, "SRV", "0 0 80 web.test.")])
    knot.update(add=[("_h._tcp.out", 1, "SRV", "0 0 80 web.alt.")])
    with clientlb.LoadBalancer(f"srv://{knot.server}/_h._tcp.in.test") as inside, \
            clientlb.LoadBalancer(f"srv://{knot.server}/_h._tcp.out.test") as outside:
        assert inside.wait_ready() and outside.wait_ready()
        assert addresses(inside) == {"127.0.0.1:80", "[::1]:80"}
        assert addresses(outside) == {"127.0.0.1:80"}
        assert isinstance(inside.resolver, SRVResolver)
        assert isinstance(outside.resolver, SRVResolver)
        assert inside.resolver.querier.queries == 1  # SRV only: addresses came along
        assert outside.resolver.querier.queries == 3  # SRV, then A and AAAA of web.alt
        # a dual-stack target splits its weight: the host keeps its share
        assert sum(ep.weight for ep in inside.endpoints()) == 1


def test_srv_target_dot_means_decidedly_unavailable(knot: KnotServer) -> None:
    knot.update(add=[("_x._tcp.none", 1, "SRV", "0 0 0 .")])
    with clientlb.LoadBalancer(f"srv://{knot.server}/_x._tcp.none.test") as lb:
        assert lb.wait_ready()
        assert lb.endpoints() == ()
        with pytest.raises(clientlb.NoEndpointAvailable, match="resolved to no endpoint"):
            lb.pick()


def test_srv_malformed_records_are_skipped_logged_and_counted(
        knot: KnotServer, caplog: pytest.LogCaptureFixture) -> None:
    knot.update(add=[
        ("_y._tcp.bad", 1, "SRV", "0 1 0 web.test."),  # port 0
        ("_y._tcp.bad", 1, "SRV", "0 1 81 nosuch.test."),  # target does not exist
        ("_y._tcp.bad", 1, "SRV", "0 1 82 two.test."),
    ])
    caplog.set_level(logging.WARNING, "clientlb.discovery")
    with clientlb.LoadBalancer(f"srv://{knot.server}/_y._tcp.bad.test") as lb:
        assert lb.wait_ready()
        assert addresses(lb) == {"127.0.0.1:82"}
        assert lb.resolver.statistics().malformed == 2  # type: ignore[attr-defined]
    assert "port must be 1..65535, got 0" in caplog.text
    assert "nosuch.test" in caplog.text


def test_srv_server_stopped_keeps_the_set_and_requests_still_succeed(knot: KnotServer) -> None:
    backends = [HTTPBackend(f"b{i}") for i in range(3)]
    try:
        knot.update(add=[("_http._tcp.api", 1, "SRV", f"0 1 {b.port} two.test.")
                         for b in backends])
        with clientlb.LoadBalancer(f"srv://{knot.server}/_http._tcp.api.test",
                                   strategy="round_robin",
                                   resolver_options={**FAST, "timeout": 0.3}) as lb:
            wait_until(lambda: len(lb.endpoints()) == 3)
            knot.stop()
            wait_until(lambda: lb.resolver.statistics().errors >= 2)
            assert len(lb.endpoints()) == 3
            seen = set()
            for _ in range(9):
                with lb.pick() as p:
                    seen.add(get(p.endpoint))
            assert seen == {"b0", "b1", "b2"}
    finally:
        for b in backends:
            b.close()


def test_srv_follows_a_removed_record_within_the_ttl(knot: KnotServer) -> None:
    knot.update(add=[("_h._tcp.sc", 1, "SRV", "0 1 9001 two.test."),
                     ("_h._tcp.sc", 1, "SRV", "0 1 9002 two.test.")])
    with clientlb.LoadBalancer(f"srv://{knot.server}/_h._tcp.sc.test",
                               resolver_options=FAST) as lb:
        wait_until(lambda: len(lb.endpoints()) == 2)
        start = time.monotonic()
        knot.update(delete=[("_h._tcp.sc", "SRV", "0 1 9001 two.test.")])
        wait_until(lambda: addresses(lb) == {"127.0.0.1:9002"}, timeout=5)
        assert time.monotonic() - start <= 1.5


class FakeQuerier:
    """Answers from a table: rdtype -> QueryResult or DiscoveryError."""

    def __init__(self) -> None:
        self.answers: dict[str, object] = {}
        self.source = "fake"

    async def query(self, name: str, rdtype: str) -> object:
        answer = self.answers[rdtype]
        if isinstance(answer, Exception):
            raise answer
        return answer


def _rrset(rdtype: str, *addresses: str, ttl: int = 30) -> object:
    import dns.rrset

    return dns.rrset.from_text("x.test.", ttl, "IN", rdtype, *addresses)


def test_a_failing_record_type_keeps_its_last_addresses_beside_the_fresh_other() -> None:
    from clientlb._resolvers.dns import QueryResult

    resolver = DNSResolver(parse_target("dns://127.0.0.1:1/x.test:80"))
    fake = FakeQuerier()
    resolver.querier = fake  # type: ignore[assignment]
    fake.answers = {"A": QueryResult(_rrset("A", "10.0.0.1"), 30),  # type: ignore[arg-type]
                    "AAAA": QueryResult(_rrset("AAAA", "2001:db8::1"), 20)}  # type: ignore[arg-type]
    endpoints, ttl = asyncio.run(resolver.resolve_once())
    assert [ep.address for ep in endpoints] == ["10.0.0.1:80", "[2001:db8::1]:80"]
    assert ttl == 20
    error = clientlb.DiscoveryError("AAAA timed out")
    fake.answers["AAAA"] = error
    fake.answers["A"] = QueryResult(_rrset("A", "10.0.0.2"), 30)  # type: ignore[arg-type]
    endpoints, ttl = asyncio.run(resolver.resolve_once())
    assert [ep.address for ep in endpoints] == ["10.0.0.2:80", "[2001:db8::1]:80"]
    assert ttl == resolver.min_ttl  # ask again soon for the type that failed
    fake.answers["A"] = error
    with pytest.raises(clientlb.DiscoveryError):  # nothing fresh: keep the last good set
        asyncio.run(resolver.resolve_once())
    fake.answers = {"A": QueryResult(None, 7), "AAAA": QueryResult(None, 7)}
    assert asyncio.run(resolver.resolve_once()) == ([], 7)  # no data for every type


def test_every_endpoint_failing_re_resolves_before_the_ttl(knot: KnotServer) -> None:
    """The grpc/grpc#12295 case: the service moved, the TTL is an hour, every call fails;
    the health layer asks discovery to re-resolve and the new address is used at once."""
    backend = HTTPBackend("moved")
    dead = free_port()  # nothing listens there any more
    try:
        knot.update(add=[("_http._tcp.moved", 3600, "SRV", f"0 1 {dead} host.moved.test."),
                         ("host.moved", 3600, "A", "127.0.0.1")])
        with clientlb.LoadBalancer(
                f"srv://{knot.server}/_http._tcp.moved.test",
                health_check=clientlb.HealthCheck(kind="tcp", interval=0.05, timeout=0.5,
                                                  unhealthy_threshold=1,
                                                  no_traffic_interval=0.05),
                resolver_options={**FAST, "max_ttl": 3600}) as lb:
            assert lb.wait_ready()
            knot.update(delete=[("_http._tcp.moved", "SRV")],
                        add=[("_http._tcp.moved", 3600, "SRV",
                              f"0 1 {backend.port} host.moved.test.")])

            # The active check finds the only endpoint dead: nothing is healthy, so the
            # health layer calls lb.refresh() long before the hour-long TTL ends.
            # (If the first probe fails before the update lands, the refresh reads the old
            # record and the health layer asks again after its 5 s minimum interval.)
            wait_until(lambda: addresses(lb) == {backend.address}, timeout=15,
                       message="re-resolved to the moved service")
            wait_until(lambda: lb.pick().endpoint.address == backend.address,
                       message="the new picker")  # endpoints() may lead the picker swap
            with lb.pick() as p:
                assert get(p.endpoint) == "moved"
            assert lb.resolver.statistics().refreshes >= 1  # type: ignore[attr-defined]
    finally:
        backend.close()

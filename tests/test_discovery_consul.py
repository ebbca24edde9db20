"""consul:// against tests/consul_emulator.py, a faithful emulator of Consul's health API.

Consul has no package in any registry we reach; the emulator is a real HTTP
server on loopback that implements blocking queries, ACL 403s, check statuses,
weights and the dc/tag/filter/near/ns parameters (see its docstring).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme

import clientlb
from clientlb._core.target import parse_target
from clientlb._resolvers import ConsulResolver
from clientlb._resolvers.consul import endpoint_from_entry

from ._discovery_helpers import addresses, picks_nothing
from ._helpers import HTTPBackend, wait_until
from .consul_emulator import ConsulEmulator

FAST = {"min_query_interval": 0.0, "backoff_initial": 0.05, "backoff_maximum": 0.2,
        "timeout": 2.0, "wait": 5.0, "env": {}}


@pytest.fixture
def consul() -> Iterator[ConsulEmulator]:
    emulator = ConsulEmulator()
    try:
        yield emulator
    finally:
        emulator.close()


def consul_lb(consul: ConsulEmulator, query: str = "web", **options: object
              ) -> clientlb.LoadBalancer:
    return clientlb.LoadBalancer(f"consul://{consul.address}/{query}",
                                 resolver_options={**FAST, **options})


def test_blocking_queries_follow_registrations_and_deregistrations(
        consul: ConsulEmulator) -> None:
    consul.register("web", "web-1", address="10.0.0.1", port=8080)
    with consul_lb(consul) as lb:
        assert lb.wait_ready()
        assert addresses(lb) == {"10.0.0.1:8080"}
        start = time.monotonic()
        consul.register("web", "web-2", address="10.0.0.2", port=8080)
        wait_until(lambda: len(lb.endpoints()) == 2, timeout=5, message="registration")
        consul.deregister("web", "web-1")
        wait_until(lambda: addresses(lb) == {"10.0.0.2:8080"}, timeout=5)
        assert time.monotonic() - start < 1.0  # pushed by the blocking query, no polling
        blocking = [dict(r["query"]) for r in consul.requests if "index" in dict(r["query"])]
        assert blocking and all(q["wait"] == "5000ms" for q in blocking)
        assert [int(q["index"]) for q in blocking] == sorted(int(q["index"]) for q in blocking)
        assert isinstance(lb.resolver, ConsulResolver)
        assert f"index={consul.index_of('web')}" in repr(lb.resolver)


def test_check_status_selects_weights_and_critical_is_left_out(consul: ConsulEmulator) -> None:
    weights = {"Passing": 10, "Warning": 2}
    consul.register("web", "ok", address="10.0.0.1", weights=weights, checks=["passing"])
    consul.register("web", "warn", address="10.0.0.2", weights=weights,
                    checks=["passing", "warning"])
    consul.register("web", "down", address="10.0.0.3", weights=weights,
                    checks=["passing", "critical"])
    with consul_lb(consul) as lb:
        assert lb.wait_ready()
        got = {ep.host: (ep.weight, ep.metadata["health"]) for ep in lb.endpoints()}
        assert got == {"10.0.0.1": (10, "passing"), "10.0.0.2": (2, "warning")}
        consul.set_status("web", "down", "passing")
        wait_until(lambda: len(lb.endpoints()) == 3, timeout=5)
        consul.set_status("web", "ok", "critical")  # e.g. maintenance mode
        wait_until(lambda: "10.0.0.1:80" not in addresses(lb), timeout=5)


def test_entry_mapping_address_fallback_tags_meta_and_zone() -> None:
    entry = {"Node": {"Node": "n1", "Address": "10.1.1.1", "Datacenter": "dc1",
                      "Meta": {"rack": "r1"}, "Locality": {"Region": "eu", "Zone": "eu-1a"}},
             "Service": {"ID": "api-1", "Service": "api", "Address": "", "Port": 9000,
                         "Tags": ["v2", "canary"], "Meta": {"version": "2"}},
             "Checks": []}
    ep = endpoint_from_entry(entry)
    assert ep is not None
    assert ep.address == "10.1.1.1:9000"  # Service.Address empty: the node's address
    assert ep.zone == "eu-1a" and ep.weight == 1
    assert ep.metadata["tags"] == ("v2", "canary")
    assert ep.metadata["meta"] == {"version": "2"}
    assert ep.metadata["node"] == "n1" and ep.metadata["node_meta"] == {"rack": "r1"}
    entry["Service"]["Address"] = "10.2.2.2"
    assert endpoint_from_entry(entry).address == "10.2.2.2:9000"  # type: ignore[union-attr]


def test_index_going_backwards_is_reset_and_an_index_of_zero_becomes_one(
        consul: ConsulEmulator, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "clientlb.discovery")
    consul.register("web", "web-1", address="10.0.0.1")
    with consul_lb(consul) as lb:
        assert lb.wait_ready()
        resolver = lb.resolver
        assert isinstance(resolver, ConsulResolver)
        high = consul.index_of("web")
        wait_until(lambda: resolver.index == high)
        seen = len(consul.requests)
        consul.set_index("web", 3)  # a snapshot restore: the index goes backwards
        wait_until(lambda: any("index" not in dict(r["query"]) for r in consul.requests[seen:]),
                   timeout=5, message="a non-blocking query after the reset")
        assert "went backwards" in caplog.text
        wait_until(lambda: resolver.index == 3, timeout=5)
        # a buggy answer without a usable index: never block on 0, use 1
        consul.force_index_header = "0"
        seen = len(consul.requests)
        consul.register("web", "web-2", address="10.0.0.2")
        wait_until(lambda: len(lb.endpoints()) == 2, timeout=5)
        wait_until(lambda: resolver.index == 1, timeout=5)
        wait_until(lambda: any(dict(r["query"]).get("index") == "1"
                               for r in consul.requests[seen:]), timeout=5)


def test_an_index_change_without_a_result_change_publishes_nothing(
        consul: ConsulEmulator) -> None:
    consul.register("web", "web-1", address="10.0.0.1")
    with consul_lb(consul) as lb:
        assert lb.wait_ready()
        resolver = lb.resolver
        assert isinstance(resolver, ConsulResolver)
        for _ in range(3):
            consul.touch("web")
            wait_until(lambda: resolver.index == consul.index_of("web"), timeout=5)
        stats = resolver.statistics()
        assert stats.updates == 1 and stats.resolutions >= 4


def test_the_loop_is_rate_limited(consul: ConsulEmulator) -> None:
    consul.register("web", "web-1", address="10.0.0.1")
    consul.force_index_header = None  # every answer says "index 1": it would spin
    interval = 0.1
    with consul_lb(consul, min_query_interval=interval) as lb:
        assert lb.wait_ready()
        start = time.monotonic()
        first = len(consul.requests)
        wait_until(lambda: len(consul.requests) >= first + 5, timeout=5)
        assert time.monotonic() - start >= 4 * interval * 0.9


def test_acl_token_goes_in_the_header_only_and_never_shows(
        consul: ConsulEmulator, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "b1gs3cr3t-0000-token"
    consul.tokens = {secret: {"web"}, "other-token": {"db"}}
    consul.register("web", "web-1", address="10.0.0.1")
    env = {"CONSUL_HTTP_TOKEN": secret}
    with consul_lb(consul, env=env) as lb:
        assert lb.wait_ready()
        assert addresses(lb) == {"10.0.0.1:80"}
        shown = repr(lb) + repr(lb.resolver) + str(lb.resolver.statistics())  # type: ignore[attr-defined]
        shown += str(lb.snapshot())
    assert consul.tokens_in_url == []
    assert {r["token"] for r in consul.requests} == {secret}
    # a token in the target is used the same way, and masked
    target = f"consul://{consul.address}/web?token={secret}"
    with clientlb.LoadBalancer(target, resolver_options=FAST) as lb2:
        assert lb2.wait_ready() and len(lb2.endpoints()) == 1
        shown += repr(lb2) + repr(lb2.resolver) + str(lb2.target)
    assert consul.tokens_in_url == []
    # without permission: 403, a DiscoveryError that says why, without the token
    for options in ({"env": {}}, {"token": "other-token"}):
        with consul_lb(consul, **options) as denied:  # type: ignore[arg-type]
            denied._first_resolution_timeout = 0.5
            with pytest.raises(clientlb.NoEndpointAvailable) as info:
                denied.pick()
            cause = info.value.__cause__
            assert isinstance(cause, clientlb.DiscoveryError)
            assert "403" in str(cause)
            shown += str(cause) + str(info.value) + repr(denied.resolver)
    assert "no token was given" in shown and "lacks service:read" in shown
    for text in (shown, caplog.text):
        assert secret not in text and "other-token" not in text


def test_dc_tag_filter_near_and_ns_are_honoured(consul: ConsulEmulator) -> None:
    consul.datacenters.add("dc2")
    consul.coordinates.update({"n-near": 1.0, "n-far": 50.0})
    consul.register("api", "a1", address="10.0.0.1", tags=["v2", "blue"],
                    meta={"version": "2"}, node="n-far")
    consul.register("api", "a2", address="10.0.0.2", tags=["v2"], meta={"version": "2"},
                    node="n-near")
    consul.register("api", "a3", address="10.0.0.3", tags=["v1"], meta={"version": "1"})
    consul.register("api", "a4", address="10.0.0.4", datacenter="dc2")
    consul.register("api", "a5", address="10.0.0.5", namespace="team-a")
    cases = {
        "api": {"10.0.0.1", "10.0.0.2", "10.0.0.3"},
        "api?tag=v2": {"10.0.0.1", "10.0.0.2"},
        "api?tag=v2,blue": {"10.0.0.1"},
        'api?filter=Service.Meta.version == "1"': {"10.0.0.3"},
        "api?dc=dc2": {"10.0.0.4"},
        "api?ns=team-a": {"10.0.0.5"},
    }
    for query, expected in cases.items():
        with consul_lb(consul, query) as lb:
            assert lb.wait_ready(), query
            assert {ep.host for ep in lb.endpoints()} == expected, query
    with consul_lb(consul, "api?tag=v2&near=_agent") as lb:
        assert lb.wait_ready()
        assert [ep.host for ep in lb.endpoints()] == ["10.0.0.2", "10.0.0.1"]
    last = dict(consul.requests[-1]["query"])
    assert last["near"] == "_agent" and last["tag"] == "v2"


def test_an_empty_answer_is_authoritative(consul: ConsulEmulator) -> None:
    consul.register("web", "web-1", address="10.0.0.1")
    with consul_lb(consul) as lb:
        assert lb.wait_ready() and len(lb.endpoints()) == 1
        consul.deregister("web", "web-1")
        wait_until(lambda: lb.endpoints() == (), timeout=5)
        wait_until(lambda: picks_nothing(lb))
        with pytest.raises(clientlb.NoEndpointAvailable):
            lb.pick()


def test_errors_and_malformed_data_keep_the_last_good_set(
        consul: ConsulEmulator, caplog: pytest.LogCaptureFixture) -> None:
    backend = HTTPBackend("ok")
    try:
        consul.register("web", "good", address="127.0.0.1", port=backend.port)
        consul.register("web", "no-port", address="10.0.0.9", port=0)
        consul.register("web", "broken", raw={"Node": {}, "Checks": []})
        with consul_lb(consul) as lb:
            assert lb.wait_ready()
            assert addresses(lb) == {backend.address}
            resolver = lb.resolver
            assert isinstance(resolver, ConsulResolver)
            assert resolver.statistics().malformed == 2
            assert "port must be 1..65535, got 0" in caplog.text
            expected = {"500": "HTTP 500", "json": "the answer is not JSON",
                        "down": "request failed"}
            for failure, text in expected.items():
                if failure == "500":
                    consul.fail_with = 500
                elif failure == "json":
                    consul.fail_with = None
                    consul.body_override = b"{not json"
                else:
                    consul.body_override = None
                    consul.close()
                consul.touch("web")
                wait_until(lambda t=text: t in (resolver.statistics().last_error or ""),  # type: ignore[misc]
                           timeout=5, message=f"error on {failure}")
                assert addresses(lb) == {backend.address}
                with lb.pick() as p:
                    assert httpx.get(f"http://{p.endpoint.address}/").text.strip() == "ok"
    finally:
        backend.close()


def test_consul_http_addr_ssl_and_cacert_from_the_environment(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    consul = ConsulEmulator(ssl_context=server_ctx)
    try:
        consul.register("web", "web-1", address="10.0.0.1")
        env = {"CONSUL_HTTP_ADDR": consul.address, "CONSUL_HTTP_SSL": "true",
               "CONSUL_CACERT": str(ca_file)}
        with clientlb.LoadBalancer("consul:///web",
                                   resolver_options={**FAST, "env": env}) as lb:
            assert lb.wait_ready()
            assert addresses(lb) == {"10.0.0.1:80"}
            assert "https://127.0.0.1" in repr(lb.resolver)
        # without the CA the certificate is refused: a discovery error, nothing published
        env.pop("CONSUL_CACERT")
        with clientlb.LoadBalancer("consul:///web", first_resolution_timeout=1,
                                   resolver_options={**FAST, "env": env}) as bad:
            with pytest.raises(clientlb.NoEndpointAvailable) as info:
                bad.pick()
            assert "CERTIFICATE_VERIFY_FAILED" in str(info.value.__cause__)
    finally:
        consul.close()


def test_agent_address_defaults_and_bad_values() -> None:
    resolver = ConsulResolver(parse_target("consul:///web"), env={})
    assert resolver.base_url == "http://127.0.0.1:8500"
    resolver = ConsulResolver(parse_target("consul:///web"),
                              env={"CONSUL_HTTP_ADDR": "https://consul.internal:8501"})
    assert resolver.base_url == "https://consul.internal:8501"
    resolver = ConsulResolver(parse_target("consul://10.0.0.5/web"), env={})
    assert resolver.base_url == "http://10.0.0.5:8500"
    with pytest.raises(clientlb.ConfigError, match="CONSUL_HTTP_ADDR"):
        ConsulResolver(parse_target("consul:///web"), env={"CONSUL_HTTP_ADDR": "a:b:c"})
    with pytest.raises(clientlb.ConfigError, match="wait"):
        ConsulResolver(parse_target("consul:///web?wait=forever"), env={})
    with pytest.raises(clientlb.ConfigError, match="consistency"):
        ConsulResolver(parse_target("consul:///web"), env={}, consistency="eventual")


def test_refresh_interrupts_a_blocking_query(consul: ConsulEmulator) -> None:
    consul.register("web", "web-1", address="10.0.0.1")
    with consul_lb(consul, wait=60.0, min_refresh_interval=0.0) as lb:
        assert lb.wait_ready()
        wait_until(lambda: any("index" in dict(r["query"]) for r in consul.requests))
        seen = len(consul.requests)
        lb.refresh()
        wait_until(lambda: len(consul.requests) > seen, timeout=5,
                   message="a new query right after refresh()")
        assert "index" not in dict(consul.requests[seen]["query"])


def test_consul_under_asyncio_runs_on_the_applications_event_loop(
        consul: ConsulEmulator) -> None:
    consul.register("web", "web-1", address="10.0.0.1")

    async def scenario() -> set[str]:
        async with consul_lb(consul) as lb:
            assert await lb.await_ready()
            resolver = lb.resolver
            assert isinstance(resolver, ConsulResolver) and resolver._thread is None
            consul.register("web", "web-2", address="10.0.0.2")
            for _ in range(500):
                if len(lb.endpoints()) == 2:
                    break
                await asyncio.sleep(0.01)
            return addresses(lb)

    assert asyncio.run(scenario()) == {"10.0.0.1:80", "10.0.0.2:80"}


def test_unchanged_instances_reuse_their_endpoint_and_changed_ones_are_rebuilt(
        consul: ConsulEmulator) -> None:
    consul.register("web", "web-1", address="10.0.0.1")
    consul.register("web", "web-2", address="10.0.0.2")
    with consul_lb(consul) as lb:
        assert lb.wait_ready()
        before = {ep.address: ep for ep in lb.endpoints()}
        consul.register("web", "web-3", address="10.0.0.3")
        consul.register("web", "web-2", address="10.0.0.2", port=81)  # re-registered
        wait_until(lambda: "10.0.0.2:81" in addresses(lb), timeout=5)
        after = {ep.address: ep for ep in lb.endpoints()}
        assert after["10.0.0.1:80"] is before["10.0.0.1:80"]
        assert set(after) == {"10.0.0.1:80", "10.0.0.2:81", "10.0.0.3:80"}


def test_a_sync_close_inside_the_event_loop_stops_the_resolver_task_cleanly(
        consul: ConsulEmulator) -> None:
    consul.register("web", "web-1", address="10.0.0.1")

    async def scenario() -> bool:
        with consul_lb(consul) as lb:
            assert await lb.await_ready()
            resolver = lb.resolver
            assert isinstance(resolver, ConsulResolver)
        task = resolver._task
        assert task is not None
        await asyncio.gather(task, return_exceptions=True)
        return task.cancelled() and resolver.closed

    assert asyncio.run(scenario())


def test_agent_on_a_unix_socket_and_token_from_a_file(tmp_path: Path) -> None:
    socket_path = str(tmp_path / "consul.sock")
    agent = ConsulEmulator(uds=socket_path, tokens={"from-file-token": {"*"}})
    try:
        agent.register("web", "web-1", address="10.0.0.1")
        token_file = tmp_path / "token"
        token_file.write_text("from-file-token\n")
        env = {"CONSUL_HTTP_ADDR": f"unix://{socket_path}",
               "CONSUL_HTTP_TOKEN_FILE": str(token_file)}
        with clientlb.LoadBalancer("consul:///web", resolver_options={**FAST, "env": env}) as lb:
            assert lb.wait_ready()
            assert addresses(lb) == {"10.0.0.1:80"}
            assert socket_path in repr(lb.resolver) and "token=set" in repr(lb.resolver)
        assert {r["token"] for r in agent.requests} == {"from-file-token"}
    finally:
        agent.close()


def test_balancers_built_outside_asyncio_share_one_discovery_thread(
        consul: ConsulEmulator) -> None:
    consul.register("web", "web-1", address="10.0.0.1")
    consul.register("api", "api-1", address="10.0.0.2")
    with consul_lb(consul, "web") as web, consul_lb(consul, "api") as api:
        assert web.wait_ready() and api.wait_ready()
        threads = {web.resolver._thread, api.resolver._thread}  # type: ignore[attr-defined]
        assert len(threads) == 1
        (thread,) = threads
        assert thread is not None and thread.name == "clientlb-discovery"
    assert thread.is_alive()  # shared: closing one balancer leaves the others' discovery
    assert web.resolver.closed and api.resolver.closed  # type: ignore[attr-defined]

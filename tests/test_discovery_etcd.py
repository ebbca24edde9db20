"""etcd:// against a real etcd (Debian etcd-server) on loopback (tests/etcd_server.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import clientlb
from clientlb._resolvers import EtcdResolver
from clientlb._resolvers.etcd import endpoint_from_value, prefix_range

from ._discovery_helpers import addresses, picks_nothing
from ._helpers import HTTPBackend, wait_until
from .conftest import require_binary
from .etcd_server import EtcdServer

pytestmark = pytest.mark.servers

FAST = {"backoff_initial": 0.05, "backoff_maximum": 0.2, "timeout": 1.0,
        "min_refresh_interval": 0.05}


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    server = EtcdServer(require_binary("etcd"), tmp_path_factory.mktemp("etcd"))
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def own_etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    """An etcd for one test (stopped, or with auth turned on)."""
    server = EtcdServer(require_binary("etcd"), tmp_path / "etcd")
    try:
        yield server
    finally:
        server.close()


def test_prefix_range_covers_exactly_the_keys_under_the_prefix() -> None:
    key, end = prefix_range("services/users")
    assert key == b"services/users/"
    assert end == b"services/users0"
    assert key <= b"services/users/x" < end
    assert not key <= b"services/users-x" < end  # a sibling prefix is not included


def test_values_in_the_etcd_and_grpc_go_naming_format_are_read() -> None:
    ep = endpoint_from_value("s/1", b'{"Addr": "10.0.0.1:80", "Metadata": {"weight": 3, '
                                    b'"zone": "a", "v": 2}}')
    assert ep is not None
    assert (ep.address, ep.weight, ep.zone) == ("10.0.0.1:80", 3, "a")
    assert ep.metadata["metadata"]["v"] == 2 and ep.metadata["key"] == "s/1"
    old = endpoint_from_value("s/2", b'{"Op": 0, "Addr": "[::1]:81", "Metadata": null}')
    assert old is not None and old.address == "[::1]:81"
    assert endpoint_from_value("s/3", b'{"Op": 1, "Addr": "10.0.0.1:80"}') is None
    for bad in (b"not json", b"[1]", b'{"Addr": ""}', b'{"Addr": "10.0.0.1:0"}',
                b'{"Addr": "10.0.0.1:80", "Metadata": {"weight": -1}}'):
        with pytest.raises((ValueError, clientlb.ConfigError)):
            endpoint_from_value("s/x", bad)


def test_etcd_lists_registered_endpoints(etcd: EtcdServer) -> None:
    etcd.put("list/a", {"Addr": "127.0.0.1:8001", "Metadata": {"version": "1"}})
    etcd.put("list/b", {"Addr": "127.0.0.1:8002"})
    etcd.put("listing/c", {"Addr": "127.0.0.1:8003"})  # another prefix
    with clientlb.LoadBalancer(f"etcd://{etcd.server}/list") as lb:
        assert lb.wait_ready()
        assert addresses(lb) == {"127.0.0.1:8001", "127.0.0.1:8002"}
        assert isinstance(lb.resolver, EtcdResolver)
        assert "revision=" in repr(lb.resolver)


def test_etcd_put_and_delete_are_followed_within_a_second(etcd: EtcdServer) -> None:
    etcd.put("follow/a", {"Addr": "127.0.0.1:8001"})
    with clientlb.LoadBalancer(f"etcd://{etcd.server}/follow") as lb:
        assert lb.wait_ready()
        start = time.monotonic()
        etcd.put("follow/b", {"Addr": "127.0.0.1:8002"})
        wait_until(lambda: len(lb.endpoints()) == 2, timeout=5, message="put followed")
        assert time.monotonic() - start < 1.0
        start = time.monotonic()
        etcd.delete("follow/a")
        wait_until(lambda: addresses(lb) == {"127.0.0.1:8002"}, timeout=5,
                   message="delete followed")
        assert time.monotonic() - start < 1.0
        etcd.put("follow/b", {"Addr": "127.0.0.1:8002", "Metadata": {"weight": 5}})
        wait_until(lambda: lb.endpoints()[0].weight == 5, timeout=5, message="weight change")
        etcd.delete("follow/b")
        wait_until(lambda: lb.endpoints() == (), timeout=5, message="empty")
        wait_until(lambda: picks_nothing(lb))
        with pytest.raises(clientlb.NoEndpointAvailable):
            lb.pick()


class GatedTransport(httpx.AsyncBaseTransport):
    """Holds every /v3/watch request until the test opens the gate."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.gate_open = False
        self.watch_requests = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v3/watch":
            self.watch_requests += 1
            while not self.gate_open:
                await asyncio.sleep(0.01)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def test_etcd_lists_again_when_the_watch_revision_was_compacted(
        etcd: EtcdServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "clientlb.discovery")
    etcd.put("compact/a", {"Addr": "127.0.0.1:8001"})
    transport = GatedTransport()
    with clientlb.LoadBalancer(f"etcd://{etcd.server}/compact",
                               resolver_options={"transport": transport}) as lb:
        assert lb.wait_ready()
        resolver = lb.resolver
        assert isinstance(resolver, EtcdResolver)
        wait_until(lambda: transport.watch_requests == 1, message="watch requested")
        # While the watch is held back, the store moves on and is compacted past the
        # revision the watch will ask for.
        etcd.put("compact/b", {"Addr": "127.0.0.1:8002"})
        revision = etcd.put("compact/c", {"Addr": "127.0.0.1:8003"})
        etcd.compact(revision)
        transport.gate_open = True
        wait_until(lambda: len(lb.endpoints()) == 3, timeout=5, message="re-list")
        assert resolver.relists == 2
        assert "compacted" in caplog.text
        etcd.delete("compact/a")  # and the new watch follows
        wait_until(lambda: len(lb.endpoints()) == 2, timeout=5)


def test_etcd_malformed_values_are_skipped_and_a_good_value_is_kept(
        etcd: EtcdServer, caplog: pytest.LogCaptureFixture) -> None:
    etcd.put("mal/a", {"Addr": "127.0.0.1:8001"})
    etcd.put("mal/junk", "definitely not json")
    with clientlb.LoadBalancer(f"etcd://{etcd.server}/mal") as lb:
        assert lb.wait_ready()
        assert addresses(lb) == {"127.0.0.1:8001"}
        stats = lb.resolver.statistics()  # type: ignore[attr-defined]
        assert stats.malformed == 1
        etcd.put("mal/a", {"Addr": "127.0.0.1:0"})  # a bad overwrite...
        etcd.put("mal/b", {"Addr": "127.0.0.1:8002"})
        wait_until(lambda: len(lb.endpoints()) == 2, timeout=5)
        assert addresses(lb) == {"127.0.0.1:8001", "127.0.0.1:8002"}  # ...keeps the good one
        assert lb.resolver.statistics().malformed == 2  # type: ignore[attr-defined]
    assert "port must be 1..65535" in caplog.text


def test_etcd_stopped_keeps_the_last_good_set_and_requests_still_succeed(
        own_etcd: EtcdServer) -> None:
    backends = [HTTPBackend(f"b{i}") for i in range(2)]
    try:
        for i, b in enumerate(backends):
            own_etcd.put(f"app/{i}", {"Addr": b.address})
        with clientlb.LoadBalancer(f"etcd://{own_etcd.server}/app", strategy="round_robin",
                                   resolver_options=FAST) as lb:
            assert lb.wait_ready()
            own_etcd.stop()
            wait_until(lambda: lb.resolver.statistics().errors >= 2,  # type: ignore[attr-defined]
                       message="errors while etcd is down")
            assert len(lb.endpoints()) == 2
            seen = set()
            for _ in range(4):
                with lb.pick() as p:
                    seen.add(httpx.get(f"http://{p.endpoint.address}/").text.strip())
            assert seen == {"b0", "b1"}
            own_etcd.start()
            own_etcd.delete("app/0")
            wait_until(lambda: len(lb.endpoints()) == 1, timeout=10, message="after restart")
    finally:
        for b in backends:
            b.close()


def test_etcd_auth_token_is_used_and_never_shown(own_etcd: EtcdServer,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    own_etcd.enable_auth("root", "s3cret-pw")
    own_etcd.put("sec/a", {"Addr": "127.0.0.1:8001"})
    with clientlb.LoadBalancer(f"etcd://{own_etcd.server}/sec",
                               resolver_options={"username": "root",
                                                 "password": "s3cret-pw"}) as lb:
        assert lb.wait_ready()
        assert addresses(lb) == {"127.0.0.1:8001"}
        own_etcd.put("sec/b", {"Addr": "127.0.0.1:8002"})
        wait_until(lambda: len(lb.endpoints()) == 2, timeout=5)
        resolver = lb.resolver
        assert isinstance(resolver, EtcdResolver) and resolver._token is not None
        token = resolver._token.reveal()
        shown = repr(resolver) + repr(lb) + str(resolver.statistics()) + str(vars(resolver))
    with clientlb.LoadBalancer(f"etcd://{own_etcd.server}/sec", first_resolution_timeout=1,
                               resolver_options={**FAST, "username": "root",
                                                 "password": "wrong-pw"}) as bad:
        with pytest.raises(clientlb.NoEndpointAvailable) as info:
            bad.pick()
        cause = info.value.__cause__
        assert isinstance(cause, clientlb.DiscoveryError)
        assert "authenticate" in str(cause)
        shown += str(cause) + str(info.value) + repr(bad.resolver)
    for secret in ("s3cret-pw", "wrong-pw", token):
        assert secret not in shown
        assert secret not in caplog.text


def test_etcd_under_asyncio_runs_on_the_applications_event_loop(etcd: EtcdServer) -> None:
    etcd.put("aio/a", {"Addr": "127.0.0.1:8001"})

    async def scenario() -> set[str]:
        async with clientlb.LoadBalancer(f"etcd://{etcd.server}/aio") as lb:
            assert await lb.await_ready()
            resolver = lb.resolver
            assert isinstance(resolver, EtcdResolver) and resolver._thread is None
            await asyncio.to_thread(etcd.put, "aio/b", json.dumps({"Addr": "127.0.0.1:8002"}))
            for _ in range(500):
                if len(lb.endpoints()) == 2:
                    break
                await asyncio.sleep(0.01)
            return addresses(lb)

    assert asyncio.run(scenario()) == {"127.0.0.1:8001", "127.0.0.1:8002"}


def test_refresh_lists_again(etcd: EtcdServer) -> None:
    etcd.put("ref/a", {"Addr": "127.0.0.1:8001"})
    with clientlb.LoadBalancer(f"etcd://{etcd.server}/ref",
                               resolver_options={"min_refresh_interval": 0}) as lb:
        assert lb.wait_ready()
        resolver = lb.resolver
        assert isinstance(resolver, EtcdResolver)
        lb.refresh()
        wait_until(lambda: resolver.relists == 2, message="re-list after refresh")
        assert addresses(lb) == {"127.0.0.1:8001"}


def test_etcd_over_tls_verifies_the_servers_certificate(tmp_path: Path) -> None:
    import ssl

    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file = tmp_path / "etcd.pem", tmp_path / "etcd.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    server = EtcdServer(require_binary("etcd"), tmp_path / "etcd",
                        tls=(str(cert_file), str(key_file), trusting))
    try:
        server.put("tls/a", {"Addr": "127.0.0.1:8001"})
        with clientlb.LoadBalancer(f"etcd://{server.server}/tls",
                                   resolver_options={"ssl_context": trusting}) as lb:
            assert lb.wait_ready()
            assert addresses(lb) == {"127.0.0.1:8001"}
            assert "https://127.0.0.1" in repr(lb.resolver)
        with clientlb.LoadBalancer(f"etcd://{server.server}/tls", first_resolution_timeout=1,
                                   resolver_options={**FAST, "tls": True}) as untrusted:
            with pytest.raises(clientlb.NoEndpointAvailable) as info:
                untrusted.pick()
            assert "CERTIFICATE_VERIFY_FAILED" in str(info.value.__cause__)
    finally:
        server.close()

"""A malformed discovery answer is never an authoritative empty set (issue 13).

docs/discovery.md and DESIGN.md: bad data from discovery is skipped with a log
line and a metric, and never takes the last good set down. Before, an answer
made *only* of malformed records (SRV records that all have port 0, Consul
entries with no address or port 0) published an empty set. Now the last good
set stays, the records are counted (``malformed``), the answer too
(``malformed_answers``), and it is logged as a warning once per episode.
Real servers: Knot DNS, the Consul emulator, etcd, HTTP backends.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import clientlb

from ._discovery_helpers import addresses
from ._helpers import HTTPBackend, wait_until
from .conftest import require_binary
from .consul_emulator import ConsulEmulator
from .dns_server import KnotServer
from .etcd_server import EtcdServer

pytestmark = pytest.mark.servers

DNS_FAST = {"min_ttl": 0.05, "ttl_jitter": 0.0, "backoff_initial": 0.05,
            "backoff_maximum": 0.2, "timeout": 1.0, "min_refresh_interval": 0.05}
CONSUL_FAST = {"min_query_interval": 0.0, "backoff_initial": 0.05, "backoff_maximum": 0.2,
               "timeout": 2.0, "wait": 5.0, "env": {}}
MALFORMED = "every record of the answer was malformed"


@pytest.fixture
def knot(tmp_path: Path) -> Iterator[KnotServer]:
    server = KnotServer(require_binary("knotd", "/usr/sbin/knotd"), tmp_path / "knot",
                        records="web A 127.0.0.1\n")
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def backend() -> Iterator[HTTPBackend]:
    b = HTTPBackend("good")
    try:
        yield b
    finally:
        b.close()


def _served_by(lb: clientlb.LoadBalancer) -> str:
    with lb.pick() as p:
        return httpx.get(f"http://{p.endpoint.address}/", timeout=5).text.strip()


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.WARNING and MALFORMED in r.getMessage()]


def test_srv_records_that_all_have_port_0_keep_the_last_good_set(
        knot: KnotServer, backend: HTTPBackend, caplog: pytest.LogCaptureFixture) -> None:
    """Port 0 everywhere: the set stays, requests still succeed, one warning per episode."""
    knot.update(add=[("_http._tcp.api", 1, "SRV", f"0 1 {backend.port} web.test.")])
    with clientlb.LoadBalancer(f"srv://{knot.server}/_http._tcp.api.test",
                               resolver_options=DNS_FAST) as lb:
        assert lb.wait_ready()
        assert addresses(lb) == {backend.address}
        caplog.set_level(logging.DEBUG, "clientlb")
        knot.update(delete=[("_http._tcp.api", "SRV")],
                    add=[("_http._tcp.api", 1, "SRV", "0 1 0 web.test."),
                         ("_http._tcp.api", 1, "SRV", "0 5 0 web.test.")])
        stats = lb.resolver.statistics  # type: ignore[attr-defined]
        wait_until(lambda: stats().malformed_answers >= 3, timeout=10,
                   message="three malformed answers")
        assert addresses(lb) == {backend.address}
        assert _served_by(lb) == "good"
        assert stats().malformed >= 6 and stats().last_error is not None
        assert MALFORMED in stats().last_error
        assert len(_warnings(caplog)) == 1  # once per episode, by the resolver (issue 14)
        # a good answer again: published, and the episode is over
        knot.update(delete=[("_http._tcp.api", "SRV")],
                    add=[("_http._tcp.api", 1, "SRV", f"0 1 {backend.port} web.test."),
                         ("_http._tcp.api", 1, "SRV", "0 1 9 web.test.")])
        wait_until(lambda: len(lb.endpoints()) == 2, timeout=10, message="the new set")
        assert stats().consecutive_errors == 0


def test_an_srv_first_answer_made_only_of_port_0_is_an_error_not_an_empty_set(
        knot: KnotServer) -> None:
    """No good set yet: the first pick fails and says why, instead of 'no endpoint'."""
    knot.update(add=[("_bad._tcp.api", 1, "SRV", "0 1 0 web.test.")])
    with clientlb.LoadBalancer(f"srv://{knot.server}/_bad._tcp.api.test",
                               resolver_options=DNS_FAST, first_resolution_timeout=0.3) as lb:
        wait_until(lambda: lb.resolver.statistics().malformed_answers >= 1,  # type: ignore[attr-defined]
                   timeout=10)
        assert lb.mode == "waiting"
        with pytest.raises(clientlb.NoEndpointAvailable, match=MALFORMED):
            lb.pick()


def test_a_consul_answer_made_only_of_malformed_entries_keeps_the_last_good_set(
        backend: HTTPBackend, caplog: pytest.LogCaptureFixture) -> None:
    """Entries with port 0 or no address at all: skipped, counted, the good set stays."""
    consul = ConsulEmulator()
    try:
        consul.register("web", "good", address="127.0.0.1", port=backend.port)
        with clientlb.LoadBalancer(f"consul://{consul.address}/web",
                                   resolver_options=CONSUL_FAST) as lb:
            assert lb.wait_ready()
            assert addresses(lb) == {backend.address}
            caplog.set_level(logging.DEBUG, "clientlb")
            consul.deregister("web", "good")
            consul.register("web", "no-port", address="10.0.0.9", port=0)
            consul.register("web", "no-address", raw={"Node": {}, "Service": {"ID": "x"},
                                                      "Checks": []})
            stats = lb.resolver.statistics  # type: ignore[attr-defined]
            wait_until(lambda: stats().malformed_answers >= 1, timeout=10)
            consul.touch("web")  # another answer, as malformed: no second warning
            wait_until(lambda: stats().malformed_answers >= 2, timeout=10)
            assert addresses(lb) == {backend.address}
            assert _served_by(lb) == "good"
            assert stats().malformed >= 4
            assert len(_warnings(caplog)) == 1  # once per episode, by the resolver
            # instances that are all critical are authoritative: the set empties
            consul.deregister("web", "no-port")
            consul.deregister("web", "no-address")
            consul.register("web", "down", address="127.0.0.1", port=backend.port,
                            checks=["critical"])
            wait_until(lambda: lb.endpoints() == (), timeout=10, message="an empty set")
    finally:
        consul.close()


def test_an_etcd_listing_whose_keys_are_all_malformed_is_not_an_empty_set(
        tmp_path: Path) -> None:
    """etcd: a prefix holding only bad values is reported, never published empty."""
    etcd = EtcdServer(require_binary("etcd"), tmp_path / "etcd")
    try:
        etcd.put("junk/a", "not json")
        etcd.put("junk/b", {"Addr": "127.0.0.1:0"})
        with clientlb.LoadBalancer(f"etcd://{etcd.server}/junk", first_resolution_timeout=0.3,
                                   resolver_options={"backoff_initial": 0.05,
                                                     "backoff_maximum": 0.2}) as lb:
            stats = lb.resolver.statistics  # type: ignore[attr-defined]
            wait_until(lambda: stats().malformed_answers >= 1, timeout=10)
            with pytest.raises(clientlb.NoEndpointAvailable, match=MALFORMED):
                lb.pick()
            etcd.put("junk/c", {"Addr": "127.0.0.1:8003"})
            wait_until(lambda: addresses(lb) == {"127.0.0.1:8003"}, timeout=10)
    finally:
        etcd.close()

"""dns:// resolves as the system resolver would (the hosts file first, localhost is
loopback), says NXDOMAIN, SERVFAIL and an empty answer for what they are, and logs one
WARNING per failure episode (issue 14). DNS servers here are real UDP servers on
127.0.0.1 (tests/dns_server.py); the system's own DNS server is never asked."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import clientlb
from clientlb._resolvers import DNSResolver
from clientlb._resolvers.hosts import HostsFile, parse_hosts

from ._discovery_helpers import addresses
from ._helpers import wait_until
from .dns_server import ScriptedDNSServer

FAST = {"min_ttl": 0.05, "ttl_jitter": 0.0, "backoff_initial": 0.05, "backoff_maximum": 0.1,
        "timeout": 0.5, "min_refresh_interval": 0.05}


@pytest.fixture
def scripted() -> Iterator[ScriptedDNSServer]:
    server = ScriptedDNSServer()
    yield server
    server.close()


@pytest.fixture
def no_system_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if a question would go to the system's DNS server."""
    async def refuse(self: object, name: str, rdtype: str) -> object:
        raise AssertionError(f"asked DNS for {name} {rdtype}; the hosts file answers it")

    from clientlb._resolvers.dns import DNSQuerier

    monkeypatch.setattr(DNSQuerier, "query", refuse)


def write_hosts(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


# -- the hosts file ------------------------------------------------------------------------


def test_hosts_file_parsing_follows_hosts_5() -> None:
    """Comments, blanks, aliases, case, trailing dots, IPv6 with a zone; junk lines skipped."""
    table = parse_hosts("""
# a comment line
127.0.0.1   localhost
::1         localhost ip6-localhost   # aliases, then a comment
10.1.2.3    Web.Internal. web   other
10.1.2.4    web.internal
fe80::1%eth0 link.local
not-an-ip   bogus.name
300.1.2.3   bad.octet
10.1.2.3    web.internal
10.9.9.9
""".splitlines())
    assert table["localhost"] == ("127.0.0.1", "::1")
    assert table["ip6-localhost"] == ("::1",)
    assert table["web.internal"] == ("10.1.2.3", "10.1.2.4")  # listed twice, counted once
    assert table["web"] == table["other"] == ("10.1.2.3",)
    assert table["link.local"] == ("fe80::1%eth0",)
    assert "bogus.name" not in table and "bad.octet" not in table


def test_hosts_file_lookup_rereads_an_edited_file_and_localhost_is_loopback(
        tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    hosts = HostsFile(write_hosts(path, "127.0.0.5 app.internal\n"))
    assert hosts.lookup("APP.internal.") == ("127.0.0.5",)
    assert hosts.lookup("other.internal") is None  # the system resolver goes on to DNS
    assert hosts.lookup("localhost") == ("127.0.0.1", "::1")  # RFC 6761, not in the file
    assert hosts.lookup("api.localhost") == ("127.0.0.1", "::1")
    write_hosts(path, "127.0.0.6 app.internal\n127.0.0.7 app.internal\n")
    os.utime(path, ns=(1, 1))  # a new modification time, whatever the clock's resolution
    assert hosts.lookup("app.internal") == ("127.0.0.6", "127.0.0.7")
    assert HostsFile(str(tmp_path / "missing")).lookup("app.internal") is None


def test_dns_target_resolves_a_name_of_the_hosts_file_without_asking_dns(
        tmp_path: Path, no_system_dns: None) -> None:
    """``dns:///app.internal:8080`` with app.internal in /etc/hosts: its addresses, as
    ``getent hosts`` would say, and no DNS question (a DNS server would not know it)."""
    path = write_hosts(tmp_path / "hosts", "127.0.0.5 app.internal\n::1 app.internal\n"
                                           "127.0.0.1 localhost\n")
    with clientlb.LoadBalancer("dns:///app.internal:8080",
                               resolver_options={**FAST, "hosts_file": path}) as lb:
        assert lb.wait_ready(5)
        assert addresses(lb) == {"127.0.0.5:8080", "[::1]:8080"}
    with clientlb.LoadBalancer("dns:///localhost:8080",
                               resolver_options={**FAST, "hosts_file": path}) as lb:
        assert lb.wait_ready(5)
        assert addresses(lb) == {"127.0.0.1:8080"}
    with clientlb.LoadBalancer("dns:///app.internal:8080", resolver_options={
            **FAST, "hosts_file": path, "record_types": ["A"]}) as lb:
        assert lb.wait_ready(5)
        assert addresses(lb) == {"127.0.0.5:8080"}


def test_localhost_resolves_as_loopback_even_without_a_hosts_entry(
        tmp_path: Path, no_system_dns: None) -> None:
    path = write_hosts(tmp_path / "hosts", "# nothing here\n")
    with clientlb.LoadBalancer("dns:///localhost:8080",
                               resolver_options={**FAST, "hosts_file": path}) as lb:
        assert lb.wait_ready(5)
        assert addresses(lb) == {"127.0.0.1:8080", "[::1]:8080"}


def test_hosts_file_edits_are_followed(tmp_path: Path, no_system_dns: None) -> None:
    path = tmp_path / "hosts"
    write_hosts(path, "127.0.0.5 app.internal\n")
    with clientlb.LoadBalancer("dns:///app.internal:80",
                               resolver_options={**FAST, "hosts_file": str(path)}) as lb:
        assert lb.wait_ready(5)
        write_hosts(path, "127.0.0.5 app.internal\n127.0.0.6 app.internal\n")
        os.utime(path, ns=(2, 2))
        wait_until(lambda: addresses(lb) == {"127.0.0.5:80", "127.0.0.6:80"}, timeout=5,
                   message="the edited hosts file followed")


def test_a_dns_server_in_the_target_is_asked_even_for_a_hosts_name(
        tmp_path: Path, scripted: ScriptedDNSServer) -> None:
    """``dns://server/name`` asks that server only, as ``dig @server`` does."""
    path = write_hosts(tmp_path / "hosts", "127.0.0.5 app.test\n")
    scripted.addresses = ["127.0.0.9"]
    with clientlb.LoadBalancer(f"dns://{scripted.server}/app.test:80",
                               resolver_options={**FAST, "hosts_file": path}) as lb:
        assert lb.wait_ready(5)
        assert addresses(lb) == {"127.0.0.9:80"}


def test_a_bad_hosts_file_option_is_a_config_error() -> None:
    with pytest.raises(clientlb.ConfigError, match="hosts_file"):
        clientlb.LoadBalancer("dns:///app.internal:80", resolver_options={"hosts_file": 42})


# -- NXDOMAIN, SERVFAIL, an empty answer ----------------------------------------------------


def test_nxdomain_and_an_empty_answer_are_told_apart_in_the_pick_error(
        scripted: ScriptedDNSServer) -> None:
    scripted.mode = "nxdomain"
    with clientlb.LoadBalancer(f"dns://{scripted.server}/gone.test:80",
                               resolver_options=FAST) as lb:
        assert lb.wait_ready(5)
        with pytest.raises(clientlb.NoEndpointAvailable,
                           match=r"NXDOMAIN: gone\.test does not exist"):
            lb.pick()
    scripted.mode = "nodata"
    with clientlb.LoadBalancer(f"dns://{scripted.server}/txt-only.test:80",
                               resolver_options=FAST) as lb:
        assert lb.wait_ready(5)
        with pytest.raises(clientlb.NoEndpointAvailable) as info:
            lb.pick()
        assert "txt-only.test has no A or AAAA record (the name exists: an empty answer" \
            in str(info.value)


def test_servfail_is_named_in_the_discovery_error(scripted: ScriptedDNSServer) -> None:
    scripted.mode = "servfail"
    with clientlb.LoadBalancer(f"dns://{scripted.server}/web.test:80",
                               first_resolution_timeout=0.5, resolver_options=FAST) as lb:
        wait_until(lambda: lb.discovery_error is not None, timeout=5)
        error = str(lb.discovery_error)
        assert "the server answered SERVFAIL" in error, error
        assert f"dns server {scripted.server}" in error


# -- one warning per episode ----------------------------------------------------------------


def test_a_discovery_failure_warns_once_per_episode_then_logs_debug_until_it_recovers(
        scripted: ScriptedDNSServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="clientlb")

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]

    scripted.mode = "servfail"
    with clientlb.LoadBalancer(f"dns://{scripted.server}/web.test:80",
                               first_resolution_timeout=0.2, resolver_options=FAST) as lb:
        resolver = lb.resolver
        assert isinstance(resolver, DNSResolver)
        wait_until(lambda: resolver.statistics().errors >= 4, timeout=5)
        (first,) = warnings()
        assert "no endpoint set yet" in first and "keeping" not in first
        scripted.mode = "answer"  # recovers
        wait_until(lambda: addresses(lb) == {"127.0.0.1:80"}, timeout=5)
        assert any("discovery recovered after" in r.getMessage() for r in caplog.records)
        scripted.mode = "refused"  # a second episode: one more warning
        before = resolver.statistics().errors
        wait_until(lambda: resolver.statistics().errors >= before + 4, timeout=5)
        assert len(warnings()) == 2
        assert "keeping the last good set (1 endpoint) until it recovers" in warnings()[1]
        assert "the server answered REFUSED" in warnings()[1]
    assert not any("1 endpoints" in r.getMessage() for r in caplog.records)

"""The target parser: every scheme of DESIGN.md, and clear errors for bad input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clientlb import ConfigError, Endpoint, LoadBalancer, parse_target


def test_static_target_string_and_list_are_equivalent() -> None:
    a = parse_target("static://10.0.0.1:8080,[::1]:80, host.example:9")
    b = parse_target(["10.0.0.1:8080", "[::1]:80", Endpoint("host.example", 9)])
    assert a.endpoints == b.endpoints
    assert [e.address for e in a.endpoints] == ["10.0.0.1:8080", "[::1]:80", "host.example:9"]
    assert str(a) == "static://10.0.0.1:8080,[::1]:80,host.example:9"


def test_bare_list_without_scheme_is_static() -> None:
    assert parse_target("a:1,b:2").scheme == "static"


@pytest.mark.parametrize(
    ("target", "scheme", "name", "server", "port"),
    [
        ("dns:///api.internal:8080", "dns", "api.internal", None, 8080),
        ("dns://127.0.0.1:5353/api.internal:8080", "dns", "api.internal", ("127.0.0.1", 5353),
         8080),
        ("dns://[::1]/api:80", "dns", "api", ("::1", 53), 80),
        ("srv:///_http._tcp.api.internal", "srv", "_http._tcp.api.internal", None, None),
        ("consul:///users?dc=eu&tag=v2", "consul", "users", None, None),
        ("consul://agent:8501/users", "consul", "users", ("agent", 8501), None),
        ("etcd://127.0.0.1:2379/services/users/", "etcd", "services/users",
         ("127.0.0.1", 2379), None),
        ("etcd:///svc", "etcd", "svc", None, None),
    ],
)
def test_discovery_targets_parse(target: str, scheme: str, name: str,
                                 server: tuple[str, int] | None, port: int | None) -> None:
    t = parse_target(target)
    assert (t.scheme, t.name, t.server, t.port) == (scheme, name, server, port)


def test_consul_token_is_never_shown() -> None:
    t = parse_target("consul:///users?token=s3cr3t")
    assert t.params["token"] == "s3cr3t"
    assert "s3cr3t" not in str(t) and "s3cr3t" not in repr(t)
    with pytest.raises(ConfigError) as info:
        parse_target("consul:///users?token=s3cr3t&bogus=1")
    assert "s3cr3t" not in str(info.value)


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("static://", "needs at least one 'host:port'"),
        ("static://a:b", "port must be a number"),
        ("static://a:1,,b:2", "stray comma"),
        ("static://a:1,", "stray comma"),
        ("static://::1:80", "IPv6 addresses must be written in brackets"),
        ("static://a:0", "port must be 1..65535, got 0"),
        ("static://a:99999", "port must be 1..65535, got 99999"),
        ("static://:80", "host must not be empty"),
        ("static://a", "missing ':port'"),
        ("static://a:1,a:1", "duplicate endpoint a:1"),
        ("ftp://a:1", "unknown scheme 'ftp'; choose one of static, dns, srv, consul, etcd"),
        ("dns:///name", "dns:// needs a port"),
        ("dns://", "needs a name"),
        ("srv:///api.internal", "_service._proto.name"),
        ("consul:///users?bogus=1", "unknown consul parameter"),
        ("etcd://host/", "needs a name"),
        ("", "target must not be empty"),
        ([], "at least one"),
    ],
)
def test_malformed_targets_raise_config_error(target: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_target(target)
    assert info.value.field == "target"


def test_unknown_strategy_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown strategy 'fastest'; choose one of "
                                          r"round_robin, random, least_request, peak_ewma, "
                                          r"ring_hash, maglev"):
        LoadBalancer("static://a:1", strategy="fastest")


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=60) | st.text(alphabet="static:/[]0123456789,.abc-", max_size=40))
def test_parser_never_raises_anything_but_config_error(text: str) -> None:
    try:
        t = parse_target(text)
    except ConfigError:
        return
    assert t.scheme in {"static", "dns", "srv", "consul", "etcd"}
    # what parses, round-trips
    assert parse_target(str(t)).scheme == t.scheme


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.from_regex(r"[a-z]([a-z0-9-]{0,9}[a-z0-9])?", fullmatch=True),
                          st.integers(1, 65535)), min_size=1, max_size=8, unique_by=lambda x: x))
def test_static_round_trip(pairs: list[tuple[str, int]]) -> None:
    text = "static://" + ",".join(f"{h}:{p}" for h, p in pairs)
    t = parse_target(text)
    assert [(e.host, e.port) for e in t.endpoints] == pairs
    assert str(t) == text

"""Endpoint validation and EndpointSet snapshots."""

from __future__ import annotations

import pytest

from clientlb import ConfigError, Endpoint, EndpointSet


def test_endpoint_is_frozen_and_hashable() -> None:
    ep = Endpoint("10.0.0.1", 80, weight=2, zone="a", metadata={"k": "v"})
    with pytest.raises(AttributeError):
        ep.port = 81  # type: ignore[misc]
    assert {ep: 1}[Endpoint("10.0.0.1", 80, weight=2, zone="a", metadata={"k": "v"})] == 1
    assert ep.metadata["k"] == "v"
    with pytest.raises(TypeError):
        ep.metadata["k"] = "w"  # type: ignore[index]


def test_metadata_is_copied_not_shared() -> None:
    md = {"k": "v"}
    ep = Endpoint("h", 1, metadata=md)
    md["k"] = "changed"
    assert ep.metadata["k"] == "v"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"host": "h", "port": 0}, "port must be 1..65535, got 0"),
        ({"host": "h", "port": 99999}, "port must be 1..65535, got 99999"),
        ({"host": "h", "port": True}, "port must be an integer"),
        ({"host": "", "port": 80}, "host must not be empty"),
        ({"host": "bad host", "port": 80}, "not a valid host name"),
        ({"host": "h", "port": 80, "weight": -1}, "weight must be a finite number >= 0, got -1"),
        ({"host": "h", "port": 80, "weight": float("nan")}, "weight must be a finite number"),
        ({"host": "h", "port": 80, "priority": -1}, "priority must be an integer >= 0"),
        ({"host": "::g", "port": 80}, "not a valid IPv6 address"),
    ],
)
def test_invalid_endpoints_name_field_value_and_rule(kwargs: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError, match=message) as info:
        Endpoint(**kwargs)
    assert isinstance(info.value, ValueError)
    assert info.value.field in {"host", "port", "weight", "priority"}


def test_ipv6_address_is_bracketed() -> None:
    assert Endpoint("::1", 8080).address == "[::1]:8080"
    assert Endpoint.parse("[fe80::1]:443").host == "fe80::1"
    assert Endpoint.parse("example.com:443").address == "example.com:443"


def test_zero_weight_is_allowed() -> None:
    assert Endpoint("h", 1, weight=0).weight == 0


def test_repr_shows_non_default_attributes() -> None:
    assert repr(Endpoint("h", 1)) == "<Endpoint h:1>"
    assert repr(Endpoint("h", 1, weight=3, zone="z")) == "<Endpoint h:1 weight=3 zone='z'>"


def test_endpoint_set_rejects_duplicates_and_dedupes_on_request() -> None:
    a, a2 = Endpoint("h", 1), Endpoint("h", 1, weight=5)
    with pytest.raises(ConfigError, match="duplicate endpoint h:1"):
        EndpointSet([a, a2])
    s = EndpointSet.from_iterable([a, a2], dedupe=True)
    assert list(s) == [a]


def test_diff_reports_added_removed_and_changed_by_address() -> None:
    old = EndpointSet([Endpoint("a", 1), Endpoint("b", 1), Endpoint("c", 1)])
    new = EndpointSet([Endpoint("a", 1), Endpoint("b", 1, weight=2), Endpoint("d", 1)])
    diff = old.diff(new)
    assert [e.address for e in diff.added] == ["d:1"]
    assert [e.address for e in diff.removed] == ["c:1"]
    assert diff.changed == ((Endpoint("b", 1), Endpoint("b", 1, weight=2)),)
    assert diff
    assert not new.diff(new)


def test_endpoint_set_is_read_only_snapshot() -> None:
    s = EndpointSet([Endpoint("a", 1)], version=3)
    assert "a:1" in s and Endpoint("a", 1) in s and Endpoint("a", 1, weight=2) not in s
    assert s.get("a:1") == Endpoint("a", 1)
    assert len(s) == 1 and s.version == 3
    assert repr(s) == "<EndpointSet v3 [a:1]>"
    assert not hasattr(s, "__dict__")

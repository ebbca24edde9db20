"""A fuzz of the control API: random and malformed bodies, wrong types, huge values, unknown
fields and path tricks never get a 500, and a refused request never changes anything."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import clientlb
from clientlb.admin import create_app

from ._admin_server import AdminServer
from ._http_backend import Backend

SETTINGS = settings(max_examples=100, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])

KEYS = ["name", "target", "strategy", "weights", "retry", "health_check", "outlier_detection",
        "panic_threshold", "slow_start", "local_zone", "first_resolution_timeout",
        "max_requests", "resolver_options", "points_per_weight", "attempts", "budget", "kind",
        "interval", "consecutive_failures", "window", "__class__", "set_weight", "weight"]
TRICKY = ["web", "..", "%2e%2e", "web%2F..%2Fweb", "%00", "web%00", "a" * 3000, "%ff%fe",
          "%C3%A9", "web;drop", "web?x=1", "web#x", "*", "%20", "web/endpoints"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**15), max_value=10**15),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=30),
    st.sampled_from(["round_robin", "ring_hash", "maglev", "static://127.0.0.1:1",
                     "dns:///x:1", "127.0.0.1:1", "tcp", "http", "", "-1", "1e308"]),
    st.sampled_from([10**15, -(10**15), 1e308, -1e308, 5e-324, 0, -0.0]))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=10)), inner,
                    max_size=4)), max_leaves=12)
bodies = st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=12)), values,
                         max_size=5)
names = st.one_of(st.sampled_from(TRICKY), st.text(min_size=1, max_size=20))

# Bodies shaped like the real thing, so that the fuzz reaches the deep validation too.
FIELDS = ["kind", "path", "interval", "timeout", "healthy_threshold", "unhealthy_threshold",
          "consecutive_failures", "base_ejection_time", "max_ejection_percent", "success_rate",
          "attempts", "backoff", "budget", "window", "aggression", "min_weight_percent",
          "name", "points_per_weight", "table_size", "ratio"]
LIVE = ["strategy", "weights", "retry", "health_check", "outlier_detection",
        "panic_threshold", "slow_start", "local_zone"]
tables = st.dictionaries(st.sampled_from(FIELDS), values, max_size=3)
strategy_tables = st.fixed_dictionaries(
    {"name": st.sampled_from(["round_robin", "ring_hash", "maglev", "peak_ewma", "x"])},
    optional={"points_per_weight": values, "table_size": values, "max_ring_size": values})
live_changes = st.dictionaries(st.sampled_from(LIVE), st.one_of(
    values, tables, strategy_tables,
    st.dictionaries(st.sampled_from(["127.0.0.1:1", "127.0.0.1:2", "[::1]:80", "x:0"]), values,
                    min_size=1, max_size=2)), min_size=1, max_size=3)
service_tables = st.builds(
    lambda name, target, extra: {"name": name, "target": target, **extra},
    st.sampled_from(["new", "new-2", "web", "a.b_c"]),
    st.one_of(values, st.sampled_from(["static://127.0.0.1:1", "static://127.0.0.1:1,127.0.0.1:1",
                                       "127.0.0.1:1,", ["127.0.0.1:1", {"host": "h", "port": 0}],
                                       [{"host": "127.0.0.1", "port": 1, "weight": 1e308}]])),
    live_changes)


@pytest.fixture(scope="module")
def setup() -> Iterator[tuple[AdminServer, clientlb.Registry, list[Backend]]]:
    backends = [Backend(f"f{i}") for i in range(2)]
    registry = clientlb.Registry(telemetry=False)
    registry.create("web", [b.address for b in backends], strategy="round_robin")
    server = AdminServer(create_app(registry, token="fuzz-token-0123456789abcdef"))
    server.client.headers.update({"Authorization": "Bearer fuzz-token-0123456789abcdef"})
    yield server, registry, backends
    server.close()
    registry.close()
    for b in backends:
        b.close()


def fingerprint(registry: clientlb.Registry) -> dict[str, Any]:
    """Everything a change could touch, per service."""
    out = {}
    for name in registry.names():
        lb = registry.get(name)
        health = lb._health
        snap = lb.snapshot()
        out[name] = (
            id(lb), snap.strategy, repr(vars(lb.strategy)) if hasattr(lb.strategy, "__dict__")
            else repr(lb.strategy),
            tuple(sorted((e.address, e.state, e.endpoint.weight) for e in snap.endpoints)),
            dict(lb._weight_overrides), health.panic_threshold, health.local_zone,
            health.slow_start, health.health_check, health.outlier_detection,
            lb.retry_policy)
    return out


def check(server: AdminServer, registry: clientlb.Registry, request: httpx.Request) -> None:
    before = fingerprint(registry)
    response = server.client.send(request)
    assert response.status_code < 500, (request.method, request.url, response.text)
    if response.status_code >= 300:
        assert fingerprint(registry) == before, (request.method, request.url, response.text)
        error = response.json()
        assert isinstance(error["error"], str) and error["error"]
    for name in registry.names():  # undo what a successful request created
        if name != "web":
            registry.delete(name, timeout=0)
    if "web" not in registry:
        registry.create("web", [b.address for b in _backends(server)], strategy="round_robin")


_BACKENDS: dict[int, list[Backend]] = {}


def _backends(server: AdminServer) -> list[Backend]:
    return _BACKENDS[id(server)]


@pytest.fixture(scope="module")
def fuzz(setup: tuple[AdminServer, clientlb.Registry, list[Backend]]
         ) -> tuple[AdminServer, clientlb.Registry]:
    server, registry, backends = setup
    _BACKENDS[id(server)] = backends
    return server, registry


@SETTINGS
@given(body=st.one_of(bodies, service_tables))
def test_random_service_tables_never_fail_the_server(
        fuzz: tuple[AdminServer, clientlb.Registry], body: dict[str, Any]) -> None:
    server, registry = fuzz
    check(server, registry, server.client.build_request("POST", "/api/services", json=body))


@SETTINGS
@given(body=st.one_of(bodies, live_changes, live_changes),
       name=st.one_of(st.just("web"), st.just("web"), names))
def test_random_changes_never_fail_the_server_nor_half_apply(
        fuzz: tuple[AdminServer, clientlb.Registry], body: dict[str, Any], name: str) -> None:
    server, registry = fuzz
    check(server, registry, server.client.build_request(
        "PATCH", f"/api/services/{quote(name, safe='%')}", json=body))


@SETTINGS
@given(raw=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode),
                     values.map(lambda v: json.dumps(v).encode())),
       method=st.sampled_from(["POST", "PATCH"]),
       content_type=st.sampled_from(["application/json", "application/json; charset=utf-8",
                                     "text/plain", "application/x-www-form-urlencoded", ""]))
def test_malformed_bodies_never_fail_the_server(
        fuzz: tuple[AdminServer, clientlb.Registry], raw: bytes, method: str,
        content_type: str) -> None:
    server, registry = fuzz
    path = "/api/services" if method == "POST" else "/api/services/web"
    headers = {"Content-Type": content_type} if content_type else {}
    check(server, registry, server.client.build_request(method, path, content=raw,
                                                         headers=headers))


@SETTINGS
@given(name=names, address=st.one_of(st.sampled_from(["127.0.0.1:1", "[::1]:80", "%2e%2e",
                                                      "x", ":", "%00", "a" * 2000]),
                                     st.text(min_size=1, max_size=30)),
       action=st.sampled_from(["drain", "undrain", "DRAIN", "delete", "x"]),
       method=st.sampled_from(["POST", "GET", "DELETE", "PUT"]),
       token=st.booleans())
def test_path_tricks_never_fail_the_server(
        fuzz: tuple[AdminServer, clientlb.Registry], name: str, address: str, action: str,
        method: str, token: bool) -> None:
    server, registry = fuzz
    path = (f"/api/services/{quote(name, safe='%')}/endpoints/"
            f"{quote(address, safe='%:[]')}/{action}")
    request = server.client.build_request(method, path)
    if not token:
        del request.headers["Authorization"]
    check(server, registry, request)


@SETTINGS
@given(name=names, timeout=st.one_of(st.none(), st.text(max_size=10),
                                     st.sampled_from(["-1", "nan", "inf", "1e309", "301", "0"])))
def test_deletes_with_odd_names_and_timeouts_never_fail_the_server(
        fuzz: tuple[AdminServer, clientlb.Registry], name: str, timeout: str | None) -> None:
    server, registry = fuzz
    params = {} if timeout is None else {"timeout": timeout}
    check(server, registry, server.client.build_request(
        "DELETE", f"/api/services/{quote(name, safe='%')}", params=params))


def test_a_valid_change_still_works_after_the_fuzz(
        fuzz: tuple[AdminServer, clientlb.Registry]) -> None:
    server, registry = fuzz
    r = server.client.patch("/api/services/web", json={"strategy": "least_request"})
    assert r.status_code == 200 and registry["web"].strategy.name == "least_request"

"""The control room's JSON API, page and security, over a real uvicorn and real backends."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

import clientlb
from clientlb.admin import create_app
from clientlb.admin._app import CSP
from clientlb.admin._openapi import openapi
from clientlb.admin._page import render

from ._admin_server import AUTH, TOKEN, AdminServer
from ._helpers import wait_until
from ._http_backend import Backend

CONSUL_SECRET = "consul-acl-0f3e9a77"  # also the etcd password below


@pytest.fixture(scope="module")
def backends() -> Iterator[list[Backend]]:
    backends = [Backend(f"b{i}") for i in range(3)]
    yield backends
    for b in backends:
        b.close()


@pytest.fixture
def registry(backends: list[Backend]) -> Iterator[clientlb.Registry]:
    registry = clientlb.Registry(telemetry=False)
    registry.create("web", [b.address for b in backends], strategy="round_robin")
    yield registry
    registry.close()


@pytest.fixture
def admin(registry: clientlb.Registry) -> Iterator[AdminServer]:
    server = AdminServer(create_app(registry, token=TOKEN))
    yield server
    server.close()


def send(lb: clientlb.LoadBalancer, n: int) -> None:
    with httpx.Client(transport=clientlb.HTTPTransport(lb), base_url="http://web") as client:
        for _ in range(n):
            client.get("/")


# -- reading ------------------------------------------------------------------------------

def test_the_api_lists_every_service_with_its_endpoints(admin: AdminServer,
                                                        backends: list[Backend]) -> None:
    services = admin.client.get("/api/services").json()["services"]
    assert [s["name"] for s in services] == ["web"]
    web = services[0]
    assert web["strategy"] == "round_robin" and web["mode"] == "normal"
    assert web["discovery"]["kind"] == "static"
    assert sorted(e["address"] for e in web["endpoints"]) == sorted(b.address for b in backends)
    for e in web["endpoints"]:
        assert e["state"] == "healthy" and e["weight"] == 1 and e["in_flight"] == 0
    one = admin.client.get("/api/services/web").json()
    assert one["name"] == "web" and len(one["endpoints"]) == 3


def test_requests_show_as_counts_share_and_success_rate(
        admin: AdminServer, registry: clientlb.Registry) -> None:
    """The monitor samples once a second; the share and success columns follow traffic."""
    send(registry["web"], 30)

    def sampled() -> list[dict[str, object]] | None:
        eps = admin.client.get("/api/services/web").json()["endpoints"]
        return eps if sum(e["requests"] for e in eps) == 30 and all(
            e["share"] is not None for e in eps) else None

    endpoints = wait_until(sampled, timeout=5, message="a sample with the 30 requests")
    assert [e["share"] for e in endpoints] == [33.3, 33.3, 33.3]
    assert all(e["success_rate"] == 100.0 for e in endpoints)
    assert all(e["latency_ms"] > 0 for e in endpoints)


def test_an_unknown_service_is_404_listing_the_known_ones(admin: AdminServer) -> None:
    response = admin.client.get("/api/services/nope")
    assert response.status_code == 404
    assert response.json()["error"] == "no service named 'nope' (services: web)"


def test_healthz_and_the_openapi_document(admin: AdminServer) -> None:
    assert admin.client.get("/healthz").text == "ok\n"
    doc = admin.client.get("/api/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    assert set(doc["paths"]) == {
        "/api/services", "/api/services/{name}",
        "/api/services/{name}/endpoints/{address}/{action}", "/api/events",
        "/api/openapi.json", "/metrics", "/healthz"}
    assert set(doc["paths"]["/api/services/{name}"]) == {"parameters", "get", "patch", "delete"}


def test_the_openapi_document_names_every_route_of_the_app(registry: clientlb.Registry) -> None:
    app = create_app(registry)
    routes = {(r.path, m) for r in app.routes for m in (r.methods or ())  # type: ignore[attr-defined]
              if m != "HEAD"}
    documented = {(path, method.upper()) for path, item in openapi()["paths"].items()
                  for method in item if method != "parameters"}
    assert {r for r in routes if r[0].startswith(("/api", "/metrics", "/healthz"))} == documented


def test_the_event_stream_sends_every_service_once_a_second(admin: AdminServer) -> None:
    events = []
    with admin.client.stream("GET", "/api/events") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
                if len(events) == 2:
                    break
    assert [s["name"] for s in events[1]["services"]] == ["web"]
    assert 0.5 <= events[1]["time"] - events[0]["time"] <= 1.5
    chart = events[1]["services"][0]["endpoints"][0]["chart"]
    assert set(chart) == {"share", "latency_ms"} and len(chart["share"]) >= 2


def test_metrics_are_the_opentelemetry_instruments_in_prometheus_text(
        admin: AdminServer, registry: clientlb.Registry) -> None:
    assert admin.client.get("/metrics").status_code == 200  # instruments from now on
    send(registry["web"], 6)
    text = admin.client.get("/metrics").text
    lines = [line for line in text.splitlines()
             if line.startswith("clientlb_requests_total{") and 'clientlb_service="web"' in line]
    assert len(lines) == 3 and sum(float(line.rsplit(" ", 1)[1]) for line in lines) == 6
    assert "clientlb_endpoint_count{" in text


# -- changing -----------------------------------------------------------------------------

def test_drain_and_undrain_an_endpoint(admin: AdminServer, registry: clientlb.Registry,
                                       backends: list[Backend]) -> None:
    address = backends[0].address
    r = admin.client.post(f"/api/services/web/endpoints/{address}/drain", headers=AUTH)
    assert r.status_code == 200 and r.json() == {"service": "web", "address": address,
                                                 "state": "draining"}
    before = backends[0].served()
    send(registry["web"], 10)
    assert backends[0].served() == before  # no new call reaches a drained endpoint
    r = admin.client.post(f"/api/services/web/endpoints/{address}/undrain", headers=AUTH)
    assert r.json()["state"] == "healthy"
    missing = admin.client.post("/api/services/web/endpoints/10.9.9.9:1/drain", headers=AUTH)
    assert missing.status_code == 404 and "no endpoint '10.9.9.9:1'" in missing.json()["error"]


def test_patch_switches_the_strategy_and_sets_weights(admin: AdminServer,
                                                      registry: clientlb.Registry,
                                                      backends: list[Backend]) -> None:
    address = backends[1].address
    r = admin.client.patch("/api/services/web", headers=AUTH,
                           json={"strategy": "least_request", "weights": {address: 3}})
    assert r.status_code == 200, r.text
    assert r.json()["strategy"] == "least_request"
    assert registry["web"].snapshot().by_address()[address].endpoint.weight == 3
    r = admin.client.patch("/api/services/web", headers=AUTH, json={"weights": {address: None}})
    assert registry["web"].snapshot().by_address()[address].endpoint.weight == 1


def test_patch_turns_hedging_on_and_off_and_the_service_shows_its_counters(
        admin: AdminServer, registry: clientlb.Registry) -> None:
    """PATCH {"hedging": {...}} reaches a transport built before it (it reads the balancer's
    policy at each request); the service's JSON and lb.snapshot() show the hedges; false
    turns hedging off; a bad field is a 400 naming its path, and changes nothing."""
    lb = registry["web"]
    assert admin.client.get("/api/services/web").json()["hedging"] is None
    r = admin.client.patch("/api/services/web", headers=AUTH,
                           json={"hedging": {"delay": 0.5, "methods": ["GET"]}})
    assert r.status_code == 200, r.text
    assert lb.hedging == clientlb.Hedging(delay=0.5, methods=frozenset({"GET"}))
    send(lb, 4)  # answered well within 0.5 s: hedgeable, never hedged
    shown = admin.client.get("/api/services/web").json()["hedging"]
    assert shown == {"requests": 4, "sent": 0, "won": 0, "refused": 0, "probes": 0,
                     "adaptive_delay_ms": None}
    snapshot = lb.snapshot().hedging
    assert snapshot is not None and snapshot["requests"] == 4
    r = admin.client.patch("/api/services/web", headers=AUTH,
                           json={"strategy": "random", "hedging": {"max_extra_load": 2}})
    assert r.status_code == 400
    assert r.json()["error"].startswith("services.web.hedging.max_extra_load: "), r.json()
    assert lb.strategy.name == "round_robin" and lb.hedging is not None
    r = admin.client.patch("/api/services/web", headers=AUTH, json={"hedging": False})
    assert r.status_code == 200, r.text
    assert lb.hedging is None


def test_create_then_delete_a_service(admin: AdminServer, registry: clientlb.Registry,
                                      backends: list[Backend]) -> None:
    body = {"name": "api", "target": f"static://{backends[0].address}",
            "strategy": {"name": "ring_hash", "points_per_weight": 10},
            "outlier_detection": {"consecutive_failures": 3}}
    r = admin.client.post("/api/services", headers=AUTH, json=body)
    assert r.status_code == 201, r.text
    assert r.json()["strategy"] == "ring_hash" and "api" in registry
    again = admin.client.post("/api/services", headers=AUTH, json=body)
    assert again.status_code == 409 and "already exists" in again.json()["error"]
    r = admin.client.delete("/api/services/api?timeout=1", headers=AUTH)
    assert r.json() == {"deleted": "api", "drained": True} and "api" not in registry
    assert admin.client.delete("/api/services/api", headers=AUTH).status_code == 404


@pytest.mark.parametrize(("body", "status", "message"), [
    ({"strategy": "fastest"}, 400,
     "services.web.strategy: unknown strategy 'fastest'; choose one of round_robin, random, "
     "least_request, peak_ewma, ring_hash, maglev"),
    ({"weights": {"127.0.0.1:1": -1}}, 400,
     "services.web.weights.127.0.0.1:1: weight must be a number 0..1e9, or null to restore "
     "discovery's weight, got int -1"),
    ({"weights": {"nohost": 1}}, 400, "services.web.weights.'nohost': not a 'host:port'"),
    ({"health_check": {"interval": -1}}, 400,
     "services.web.health_check.interval: must be > 0 seconds, got -1"),
    ({"target": "static://127.0.0.1:9"}, 400,
     "services.web.target: cannot be changed on a live balancer"),
    ({"stratgy": "random"}, 400, "services.web.stratgy: unknown key 'stratgy'; expected one of"),
    ({"panic_threshold": 500}, 400, "services.web.panic_threshold: must be a number 0..100"),
])
def test_invalid_changes_are_400_with_the_config_file_path(
        admin: AdminServer, body: dict[str, object], status: int, message: str) -> None:
    r = admin.client.patch("/api/services/web", headers=AUTH, json=body)
    assert r.status_code == status
    assert r.json()["error"].startswith(message), r.json()
    assert r.json()["field"] and r.json()["error"].startswith(r.json()["field"] + ": ")


def test_a_rejected_change_applies_nothing(admin: AdminServer,
                                           registry: clientlb.Registry) -> None:
    """A valid strategy next to an invalid threshold: the strategy stays what it was."""
    r = admin.client.patch("/api/services/web", headers=AUTH,
                           json={"strategy": "random", "panic_threshold": 101})
    assert r.status_code == 400
    assert registry["web"].strategy.name == "round_robin"


def test_create_reports_errors_as_a_config_file_would(admin: AdminServer) -> None:
    cases = [
        ({"name": "x", "target": "static://127.0.0.1:0"},
         "services.x.target: '127.0.0.1:0': port must be 1..65535, got 0"),
        ({"name": "x", "target": "static://127.0.0.1:80", "healthcheck": True},
         "services.x.healthcheck: unknown key 'healthcheck'"),
        ({"name": "x"}, "services.x.target: missing"),
        ({"target": "static://127.0.0.1:80"}, "name: missing"),
        ({"name": "../etc", "target": "static://127.0.0.1:80"}, "name: must be 1..64 letters"),
    ]
    for body, message in cases:
        r = admin.client.post("/api/services", headers=AUTH, json=body)
        assert r.status_code == 400 and r.json()["error"].startswith(message), (body, r.text)


def test_malformed_bodies_are_refused_cleanly(admin: AdminServer) -> None:
    post = admin.client.post
    headers = {**AUTH, "Content-Type": "application/json"}
    assert post("/api/services", headers=headers, content=b"{").status_code == 400
    assert post("/api/services", headers=headers, content=b"[1]").json()["error"] == \
        "the request body must be a JSON object, got list"
    assert post("/api/services", headers=headers, content=b'{"a": NaN}').status_code == 400
    assert post("/api/services", headers=headers, content=b'{"a": 1e999}').status_code == 400
    assert post("/api/services", headers=headers,
                content=b'{"a": ' + b"9" * 5000 + b"}").status_code == 400
    assert post("/api/services", headers=headers, content=b"[" * 100000).status_code in (400,
                                                                                         413)
    assert post("/api/services", headers={**AUTH, "Content-Type": "text/plain"},
                content=b"{}").status_code == 415
    assert post("/api/services", headers=headers,
                content=b" " * 70000).status_code == 413


# -- security -----------------------------------------------------------------------------

def test_changes_need_the_token(admin: AdminServer, registry: clientlb.Registry,
                                backends: list[Backend]) -> None:
    address = backends[0].address
    for headers in ({}, {"Authorization": "Bearer wrong-token-wrong-token"},
                    {"Authorization": f"Basic {TOKEN}"}, {"Authorization": TOKEN}):
        r = admin.client.post(f"/api/services/web/endpoints/{address}/drain", headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert registry["web"].snapshot().by_address()[address].state == "healthy"


def test_without_a_token_the_control_room_is_read_only(registry: clientlb.Registry) -> None:
    server = AdminServer(create_app(registry))
    try:
        assert server.client.get("/api/services").status_code == 200
        r = server.client.patch("/api/services/web", json={"strategy": "random"},
                                headers={"Authorization": "Bearer anything-at-all-here"})
        assert r.status_code == 403 and "no admin token is configured" in r.json()["error"]
        assert "Read-only" in server.client.get("/").text
    finally:
        server.close()


def test_read_requires_token_guards_the_api_the_stream_and_metrics(
        registry: clientlb.Registry) -> None:
    server = AdminServer(create_app(registry, token=TOKEN, read_requires_token=True))
    try:
        for path in ("/api/services", "/api/services/web", "/api/events", "/metrics"):
            assert server.client.get(path).status_code == 401, path
        assert server.client.get("/api/services", headers=AUTH).status_code == 200
        page = server.client.get("/").text
        assert "needs the admin token to show its services" in page and "web" not in page
        assert server.client.get("/healthz").status_code == 200
    finally:
        server.close()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"token": "short"}, "token: must be at least 16 characters, got 5"),
    ({"token": "has a space in the middle"}, "token: must not contain whitespace"),
    ({"read_requires_token": True}, "read_requires_token: needs a token"),
])
def test_create_app_refuses_a_weak_configuration(registry: clientlb.Registry,
                                                 kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(clientlb.ConfigError, match="^" + message):
        create_app(registry, **kwargs)  # type: ignore[arg-type]


def test_every_response_has_a_strict_content_security_policy(admin: AdminServer) -> None:
    for path in ("/", "/api/services", "/static/dashboard.js", "/nope"):
        headers = admin.client.get(path).headers
        assert headers["content-security-policy"] == CSP, path
        assert headers["x-content-type-options"] == "nosniff"
        assert "set-cookie" not in headers
    assert "'unsafe-inline'" not in CSP and "default-src 'none'" in CSP
    page = admin.client.get("/").text
    assert "<script>" not in page and " style=" not in page and " on" + "click=" not in page


def test_the_page_escapes_every_value() -> None:
    evil = "<script>alert(1)</script>"
    service = {"name": "svc", "target": evil, "strategy": "random", "mode": "normal",
               "discovery": {"kind": "dns", "last_update_age": 1.0, "last_error": evil},
               "in_flight": 0, "endpoints": [{
                   "address": "127.0.0.1:80", "state": "ejected", "ejected_for": 3.0,
                   "slow_start": False, "weight": 1, "effective_weight": 1.0, "in_flight": 0,
                   "latency_ms": 1.0, "success_rate": None, "share": None, "ejections": 1,
                   "note": evil}]}
    page = render([service], base='"><x', changes_enabled=True, read_requires_token=False)
    assert evil not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert '"><x' not in page


def test_no_secret_reaches_a_page_an_answer_an_error_or_a_log(
        admin: AdminServer, registry: clientlb.Registry, caplog: pytest.LogCaptureFixture,
        backends: list[Backend]) -> None:
    caplog.set_level(logging.DEBUG, logger="clientlb")
    target = f"consul://127.0.0.1:1/users?token={CONSUL_SECRET}"
    r = admin.client.post("/api/services", headers=AUTH,
                          json={"name": "users", "target": target, "strategy": "random",
                                "first_resolution_timeout": 0.1})
    assert r.status_code == 201
    bad = admin.client.post("/api/services", headers=AUTH, json={
        "name": "users2", "target": target, "strategy": "nope",
        "resolver_options": {"password": CONSUL_SECRET}})
    assert bad.status_code == 400
    etcd = admin.client.post("/api/services", headers=AUTH, json={
        "name": "cfg", "target": "etcd://127.0.0.1:1/services/cfg",
        "resolver_options": {"username": "lb", "password": CONSUL_SECRET},
        "first_resolution_timeout": 0.1})
    assert etcd.status_code == 201, etcd.text
    wait_until(lambda: admin.client.get("/api/services/users").json()["discovery"]["errors"],
               timeout=10, message="a discovery error")
    admin.client.post("/api/services", headers={"Authorization": "Bearer " + TOKEN + "x"},
                      json={"name": "z", "target": target})
    wait_until(lambda: admin.client.get("/api/services/cfg").json()["discovery"]["errors"],
               timeout=10, message="an etcd error")
    texts = [admin.client.get(p).text for p in ("/", "/api/services", "/api/services/users",
                                                 "/api/services/cfg", "/metrics")]
    texts.append(bad.text)
    texts.append(caplog.text)
    for text in texts:
        assert CONSUL_SECRET not in text and TOKEN not in text
    assert "token=***" in admin.client.get("/api/services/users").json()["target"]
    registry.delete("users", timeout=0)
    registry.delete("cfg", timeout=0)


def test_each_change_writes_one_audit_line(admin: AdminServer, backends: list[Backend],
                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="clientlb.admin.audit")
    address = backends[0].address
    admin.client.post(f"/api/services/web/endpoints/{address}/drain", headers=AUTH)
    admin.client.post(f"/api/services/web/endpoints/{address}/undrain")
    admin.client.patch("/api/services/web", headers=AUTH, json={"weights": {address: 2}})
    lines = [r.getMessage() for r in caplog.records if r.name == "clientlb.admin.audit"]
    assert len(lines) == 3
    assert lines[0].startswith("client=127.0.0.1:") and lines[0].endswith(
        f"action='drain web {address}' result=ok")
    assert lines[1].endswith(f"action='undrain web {address}' result=refused 401")
    assert lines[2].endswith("action='update service web (weights)' result=ok")


def test_clientlb_admin_exports_create_app_only() -> None:
    import clientlb.admin

    assert clientlb.admin.__all__ == ["create_app"]
    public = sorted(n for n in vars(clientlb.admin) if not n.startswith("_"))
    assert public == ["annotations", "create_app"]  # "annotations": the __future__ import


def test_the_core_library_does_not_import_starlette() -> None:
    code = "import sys, clientlb; sys.exit('starlette' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_a_missing_extra_names_the_pip_command() -> None:
    code = ("import sys; sys.modules['starlette'] = None\n"
            "try:\n    import clientlb.admin\nexcept ImportError as e:\n    print(e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert "pip install 'clientlb[admin]'" in out

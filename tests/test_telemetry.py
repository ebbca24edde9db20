"""OpenTelemetry metrics and span events, read back with the SDK's in-memory reader/exporter."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import clientlb
from clientlb import EndpointSet, LoadBalancer, Outcome
from clientlb._ops.telemetry import record_budget_exhausted, record_retry

from ._helpers import FakeClock


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def telemetry(reader: InMemoryMetricReader) -> clientlb.Telemetry:
    return clientlb.Telemetry(meter_provider=MeterProvider(metric_readers=[reader]))


@pytest.fixture
def lb(clock: FakeClock, telemetry: clientlb.Telemetry) -> Iterator[LoadBalancer]:
    balancer = LoadBalancer(["127.0.0.1:8001", "127.0.0.1:8002"], strategy="round_robin",
                            name="users", clock=clock, rng=random.Random(1))
    telemetry.instrument(balancer)
    yield balancer
    balancer.close()


def points(reader: InMemoryMetricReader, name: str) -> list[Any]:
    data = reader.get_metrics_data()
    assert data is not None
    found = []
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == name:
                    found.extend(metric.data.data_points)
    return found


def by_attrs(reader: InMemoryMetricReader, name: str) -> dict[tuple[tuple[str, Any], ...], Any]:
    return {tuple(sorted(p.attributes.items())): p for p in points(reader, name)}


def test_outcomes_are_counted_by_service_endpoint_and_outcome(
        lb: LoadBalancer, reader: InMemoryMetricReader, clock: FakeClock) -> None:
    for outcome in (Outcome.SUCCESS, Outcome.SUCCESS, Outcome.GATEWAY_FAILURE, Outcome.SUCCESS):
        p = lb.pick()
        clock.advance(0.02)
        p.done(outcome)
    requests = by_attrs(reader, "clientlb.requests")
    # the service (its logical name "users", no port) and the endpoint (network.peer.*)
    ok_1 = (("clientlb.outcome", "success"), ("clientlb.service", "users"),
            ("network.peer.address", "127.0.0.1"), ("network.peer.port", 8001),
            ("server.address", "users"))
    bad_1 = (("clientlb.outcome", "gateway_failure"), ("clientlb.service", "users"),
             ("error.type", "gateway_failure"), ("network.peer.address", "127.0.0.1"),
             ("network.peer.port", 8001), ("server.address", "users"))
    assert requests[ok_1].value == 1
    assert requests[bad_1].value == 1
    assert sum(p.value for p in requests.values()) == 4
    durations = by_attrs(reader, "clientlb.request.duration")
    assert durations[ok_1].count == 1
    assert durations[ok_1].sum == pytest.approx(0.02)
    assert durations[ok_1].explicit_bounds[:3] == (0.005, 0.01, 0.025)


def test_endpoints_are_reported_by_state(lb: LoadBalancer,
                                         reader: InMemoryMetricReader) -> None:
    lb.drain("127.0.0.1:8002")
    states = {p.attributes["clientlb.endpoint.state"]: p.value
              for p in points(reader, "clientlb.endpoint.count")}
    assert states == {"healthy": 1, "draining": 1, "ejected": 0, "unhealthy": 0}
    assert [p.value for p in points(reader, "clientlb.panic")] == [0]


def test_ejections_are_observed_per_endpoint(lb: LoadBalancer, reader: InMemoryMetricReader,
                                             clock: FakeClock) -> None:
    state = lb.state_of("127.0.0.1:8001")
    assert state is not None
    state.ejection_count = 2
    ejections = {p.attributes["network.peer.port"]: p.value
                 for p in points(reader, "clientlb.ejections")}
    assert ejections == {8001: 2, 8002: 0}


def test_health_events_are_counted_by_kind(reader: InMemoryMetricReader,
                                           telemetry: clientlb.Telemetry,
                                           clock: FakeClock) -> None:
    lb = LoadBalancer(["127.0.0.1:8001", "127.0.0.1:8002", "127.0.0.1:8003"], name="users",
                      strategy="round_robin", clock=clock, rng=random.Random(1),
                      outlier_detection=clientlb.OutlierDetection(consecutive_failures=2))
    telemetry.instrument(lb)
    for _ in range(2):
        lb.pick(prefer="127.0.0.1:8001").done(Outcome.FAILURE)
    events = {p.attributes["clientlb.event"]: p.value
              for p in points(reader, "clientlb.health.events")}
    assert events["ejections_total"] == 1
    assert events["ejections_consecutive_failures"] == 1
    assert events["panic_entered"] == 0
    assert not [e for e in events if e.startswith("endpoints_")]  # gauges, not counters
    lb.close()


def test_malformed_discovery_records_are_counted(lb: LoadBalancer,
                                                 reader: InMemoryMetricReader) -> None:
    class Stats:
        malformed = 3

    lb.resolver.statistics = lambda: Stats()  # type: ignore[attr-defined]
    assert [p.value for p in points(reader, "clientlb.discovery.malformed")] == [3]


def test_discovery_updates_and_errors_are_counted(lb: LoadBalancer,
                                                  reader: InMemoryMetricReader) -> None:
    lb.publish(EndpointSet([clientlb.Endpoint("127.0.0.1", 8003)], version=2))
    lb.error(clientlb.DiscoveryError("registry down"))
    assert [p.value for p in points(reader, "clientlb.discovery.updates")] == [1]
    errors = points(reader, "clientlb.discovery.errors")
    assert [(p.attributes["error.type"], p.value) for p in errors] == [("DiscoveryError", 1)]


@pytest.mark.skipif(not hasattr(clientlb, "RetryPolicy"), reason="needs the retry layer")
def test_retries_and_budget_exhaustion_are_read_from_the_budget(
        lb: LoadBalancer, reader: InMemoryMetricReader) -> None:
    budget = lb.retry_budget
    assert budget is not None
    allowed = 0
    while budget.try_withdraw():
        allowed += 1
    assert not budget.try_withdraw()
    assert [p.value for p in points(reader, "clientlb.retries")] == [allowed]
    assert [p.value for p in points(reader, "clientlb.retry.budget_exhausted")] == [2]


def test_budget_exhaustion_is_noted_on_the_span(lb: LoadBalancer) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with provider.get_tracer("test").start_as_current_span("call"):
        record_budget_exhausted(lb)
    (span,) = exporter.get_finished_spans()
    assert [e.name for e in span.events] == ["clientlb.retry.budget_exhausted"]


def test_each_attempt_adds_an_event_to_the_callers_span(lb: LoadBalancer) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("GET /users"):
        lb.pick().done(Outcome.CONNECT_FAILURE)
        record_retry(lb, attempt=2, reason="connect_failure", endpoint="127.0.0.1:8001")
        lb.pick().done()
    (span,) = exporter.get_finished_spans()
    events = [(e.name, dict(e.attributes or {})) for e in span.events]
    assert [name for name, _ in events] == ["clientlb.attempt", "clientlb.retry",
                                            "clientlb.attempt"]
    first, retry, second = (attrs for _, attrs in events)
    assert (first["clientlb.attempt"], first["network.peer.port"],
            first["clientlb.outcome"]) == (
        1, 8001, "connect_failure")
    assert retry["clientlb.retry.reason"] == "connect_failure"
    assert (second["clientlb.attempt"], second["network.peer.port"],
            second["clientlb.outcome"]) == (
        2, 8002, "success")


def test_no_span_event_without_a_recording_span(lb: LoadBalancer,
                                                reader: InMemoryMetricReader) -> None:
    lb.pick().done()  # no current span: only metrics, and no error
    assert sum(p.value for p in points(reader, "clientlb.requests")) == 1


def test_uninstrument_stops_recording(lb: LoadBalancer, telemetry: clientlb.Telemetry,
                                      reader: InMemoryMetricReader) -> None:
    lb.pick().done()
    telemetry.uninstrument(lb)
    lb.pick().done()
    assert sum(p.count for p in points(reader, "clientlb.request.duration")) == 1
    assert points(reader, "clientlb.requests") == []


def test_instrument_twice_counts_once(lb: LoadBalancer, telemetry: clientlb.Telemetry,
                                      reader: InMemoryMetricReader) -> None:
    telemetry.instrument(lb)
    lb.pick().done()
    assert sum(p.value for p in points(reader, "clientlb.requests")) == 1


def test_attributes_and_logs_never_carry_a_secret(
        telemetry: clientlb.Telemetry, reader: InMemoryMetricReader,
        caplog: pytest.LogCaptureFixture) -> None:
    """A token in the target appears in no metric attribute and no log line."""
    caplog.set_level(logging.DEBUG, logger="clientlb")
    lb = LoadBalancer(["127.0.0.1:8001"], name="users")
    lb._target = clientlb.parse_target("consul://127.0.0.1:8500/users?token=s3cr3t")
    telemetry.instrument(lb)
    lb.pick().done(Outcome.FAILURE)
    lb.error(clientlb.DiscoveryError("consul down", target=str(lb.target)))
    lb.set_weight("127.0.0.1:8001", 2)
    data = reader.get_metrics_data()
    assert data is not None
    assert "s3cr3t" not in data.to_json()
    assert "s3cr3t" not in caplog.text
    lb.close()


def test_an_http_retry_shows_on_the_callers_span_as_attempts_and_a_retry() -> None:
    """Through clientlb.HTTPTransport: 503 on one endpoint, retried on the other."""
    import httpx

    from ._helpers import HTTPBackend

    failing, ok = HTTPBackend("failing", status=503), HTTPBackend("ok")
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    lb = LoadBalancer([failing.address, ok.address], strategy="round_robin", name="users",
                      rng=random.Random(1))
    clientlb.Telemetry(meter_provider=MeterProvider()).instrument(lb)
    try:
        with httpx.Client(transport=clientlb.HTTPTransport(lb), base_url="http://users") as c, \
                provider.get_tracer("test").start_as_current_span("GET /"):
            while True:  # round robin: start on the failing endpoint
                response = c.get("/")
                if response.extensions.get("clientlb.tried"):
                    break
    finally:
        lb.close()
        failing.close()
        ok.close()
    assert response.status_code == 200
    (span,) = exporter.get_finished_spans()
    # The last request: the retry is decided when the 503's headers arrive, the failed
    # attempt ends when its body is drained, then the second attempt succeeds.
    tail = [(e.name, dict(e.attributes or {})) for e in span.events][-3:]
    assert [name for name, _ in tail] == ["clientlb.retry", "clientlb.attempt",
                                          "clientlb.attempt"]
    retry, failed, succeeded = (attrs for _, attrs in tail)
    assert (retry["clientlb.retry.reason"], retry["clientlb.endpoint"]) == (
        "http_503", failing.address)
    assert (failed["network.peer.port"], failed["clientlb.outcome"]) == (failing.port,
                                                                         "gateway_failure")
    assert (succeeded["network.peer.port"], succeeded["clientlb.outcome"]) == (ok.port,
                                                                               "success")
    assert succeeded["server.address"] == "users"


def test_a_grpc_retry_shows_on_the_callers_span() -> None:
    """Through clientlb.grpc: UNAVAILABLE from one server, retried (retryable_codes)."""
    grpc = pytest.importorskip("grpc")
    import clientlb.grpc

    from ._grpc_servers import UNARY, GrpcBackend

    failing, ok = GrpcBackend("failing"), GrpcBackend("ok")
    failing.status = grpc.StatusCode.UNAVAILABLE
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    lb = LoadBalancer([failing.address, ok.address], strategy="round_robin", name="echo",
                      outlier_detection=None)
    clientlb.Telemetry(meter_provider=MeterProvider()).instrument(lb)
    channel = clientlb.grpc.insecure_channel(lb, retryable_codes=[grpc.StatusCode.UNAVAILABLE])
    try:
        with provider.get_tracer("test").start_as_current_span("rpc"):
            for _ in range(2):  # round robin: one of the two calls starts on "failing"
                assert channel.unary_unary(UNARY)(b"x", timeout=5) == b"ok"
    finally:
        channel.close()
        lb.close()
        failing.server.stop(None)
        ok.server.stop(None)
    (span,) = exporter.get_finished_spans()
    retries = [dict(e.attributes or {}) for e in span.events if e.name == "clientlb.retry"]
    assert retries  # each call that started on "failing" was retried once, as attempt 2
    assert {(r["clientlb.retry.reason"], r["clientlb.attempt"]) for r in retries} == {
        ("unavailable", 2)}


def test_a_transparent_grpc_retry_shows_on_the_callers_span() -> None:
    """A call to a dead port never reached a server: retried at once elsewhere."""
    pytest.importorskip("grpc")
    import clientlb.grpc

    from ._grpc_servers import UNARY, GrpcBackend
    from ._helpers import free_port

    ok = GrpcBackend("ok")
    dead = f"127.0.0.1:{free_port()}"
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    lb = LoadBalancer([dead, ok.address], strategy="round_robin", name="echo",
                      outlier_detection=None)
    clientlb.Telemetry(meter_provider=MeterProvider()).instrument(lb)
    channel = clientlb.grpc.insecure_channel(lb)
    try:
        with provider.get_tracer("test").start_as_current_span("rpc"):
            for _ in range(2):  # round robin: one of the two calls starts on the dead port
                assert channel.unary_unary(UNARY)(b"x", timeout=5) == b"ok"
    finally:
        channel.close()
        lb.close()
        ok.server.stop(None)
    (span,) = exporter.get_finished_spans()
    retries = [dict(e.attributes or {}) for e in span.events if e.name == "clientlb.retry"]
    assert retries
    assert {(r["clientlb.retry.reason"], r["clientlb.attempt"]) for r in retries} == {
        ("transparent_unavailable", 2)}


def test_span_events_can_be_turned_off(clock: FakeClock) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    lb = LoadBalancer(["127.0.0.1:8001"], clock=clock)
    clientlb.Telemetry(meter_provider=MeterProvider(), span_events=False).instrument(lb)
    with provider.get_tracer("test").start_as_current_span("call"):
        lb.pick().done()
        record_retry(lb, attempt=2, reason="connect_failure")
    (span,) = exporter.get_finished_spans()
    assert span.events == ()
    lb.close()


def test_durations_can_be_turned_off_and_requests_are_still_counted(
        clock: FakeClock) -> None:
    reader = InMemoryMetricReader()
    lb = LoadBalancer(["127.0.0.1:8001"], clock=clock)
    clientlb.Telemetry(meter_provider=MeterProvider(metric_readers=[reader]),
                       durations=False).instrument(lb)
    lb.pick().done()
    assert points(reader, "clientlb.request.duration") == []
    assert [p.value for p in points(reader, "clientlb.requests")] == [1]
    lb.close()


# -- on by default, semantic conventions, and the docs (issue 14) ---------------------------


def test_every_balancer_reports_through_the_global_providers_unless_telemetry_false() -> None:
    """A fresh interpreter with an SDK set as the global meter provider: a balancer made
    with no telemetry argument is counted; one made with telemetry=False is not."""
    import subprocess
    import sys

    code = """
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
import clientlb

reader = InMemoryMetricReader()
metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
on = clientlb.LoadBalancer(["127.0.0.1:8001"], name="on")
off = clientlb.LoadBalancer(["127.0.0.1:8002"], name="off", telemetry=False)
for lb in (on, on, off):
    lb.pick().done()
seen = {}
for rm in reader.get_metrics_data().resource_metrics:
    for sm in rm.scope_metrics:
        for m in sm.metrics:
            if m.name == "clientlb.requests":
                for p in m.data.data_points:
                    seen[p.attributes["clientlb.service"]] = p.value
print(seen)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert out.strip() == "{'on': 2}"


def test_telemetry_must_be_a_bool() -> None:
    with pytest.raises(clientlb.ConfigError, match="telemetry must be True or False"):
        LoadBalancer(["127.0.0.1:8001"], telemetry="yes")  # type: ignore[arg-type]


def test_a_specific_provider_replaces_the_global_one_and_registry_false_opts_out() -> None:
    """instrument(lb, meter_provider=...) moves a balancer off the process-wide
    instruments (nothing counted twice); Registry(telemetry=False) reports nothing."""
    from clientlb._ops.telemetry import default_telemetry

    lb = LoadBalancer(["127.0.0.1:8001"])
    assert lb in default_telemetry()._bound
    own = clientlb.instrument(lb, meter_provider=MeterProvider())
    assert lb not in default_telemetry()._bound and lb in own._bound
    lb.close()
    registry = clientlb.Registry(telemetry=False)
    quiet = registry.create("quiet", ["127.0.0.1:8001"])
    assert quiet not in default_telemetry()._bound
    registry.close()


@pytest.mark.parametrize(("target", "name", "server"), [
    (["127.0.0.1:8001"], "users", {"server.address": "users"}),
    ("dns://127.0.0.1:1/users.test:8080", None,
     {"server.address": "users.test", "server.port": 8080}),
    (["127.0.0.1:8001"], None, {"server.address": "127.0.0.1", "server.port": 8001}),
])
def test_server_is_the_logical_service_and_network_peer_the_endpoint(
        target: Any, name: str | None, server: dict[str, Any],
        reader: InMemoryMetricReader, telemetry: clientlb.Telemetry) -> None:
    """OpenTelemetry's HTTP client conventions: server.address/port is what the client
    asked for (the logical name; a bare static list names none, so the endpoint), and
    network.peer.address/port the endpoint the connection went to."""
    lb = LoadBalancer(target, name=name, first_resolution_timeout=0)
    telemetry.instrument(lb)
    state = lb.state_of("127.0.0.1:8001")
    if state is None:  # the dns:// target: one endpoint, as if resolved
        lb.publish(EndpointSet([clientlb.Endpoint("127.0.0.1", 8001)], version=1))
    lb.pick().done()
    (point,) = points(reader, "clientlb.requests")
    lb.close()
    attrs = dict(point.attributes)
    assert {k: v for k, v in attrs.items() if k.startswith("server.")} == server
    assert (attrs["network.peer.address"], attrs["network.peer.port"]) == ("127.0.0.1", 8001)


def _recorded_attributes(reader: InMemoryMetricReader, telemetry: clientlb.Telemetry
                         ) -> dict[str, set[str]]:
    """Every instrument, and the attribute names of its points, after a run that makes
    each one report (a named service with a port, failures, an ejection, discovery)."""
    lb = LoadBalancer("dns://127.0.0.1:1/users.test:8080", first_resolution_timeout=0,
                      outlier_detection=clientlb.OutlierDetection(consecutive_failures=1))
    telemetry.instrument(lb)
    lb.publish(EndpointSet([clientlb.Endpoint("127.0.0.1", 8001),
                            clientlb.Endpoint("127.0.0.1", 8002)], version=1))
    lb.pick().done()
    lb.pick(prefer="127.0.0.1:8001").done(Outcome.FAILURE)
    lb.error(clientlb.DiscoveryError("registry down"))

    class Stats:
        malformed = 1

    lb.resolver.statistics = lambda: Stats()  # type: ignore[attr-defined]
    # a call that may be hedged: the balancer counts hedges from then on (clientlb.hedges)
    from clientlb._engine.call import LogicalCall

    LogicalCall(lb, hedging=clientlb.Hedging())
    # weighted_round_robin reports its weights and the load reports it read
    from clientlb._engine.call import Completion
    from clientlb._engine.orca import record_headers

    wrr = LoadBalancer("dns://127.0.0.1:1/users.test:8080", first_resolution_timeout=0,
                       strategy=clientlb.WeightedRoundRobin(blackout_period=0.0))
    telemetry.instrument(wrr)
    wrr.publish(EndpointSet([clientlb.Endpoint("127.0.0.1", 8001)], version=1))
    record_headers(Completion(wrr.pick()),
                   [(b"endpoint-load-metrics", b"TEXT cpu_utilization=0.5,rps_fractional=10")])
    data = reader.get_metrics_data()
    lb.close()
    wrr.close()
    assert data is not None
    found: dict[str, set[str]] = {}
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                keys = found.setdefault(metric.name, set())
                for p in metric.data.data_points:
                    keys.update(p.attributes)
    return found


def test_the_docs_table_names_every_instrument_and_its_attributes(
        reader: InMemoryMetricReader, telemetry: clientlb.Telemetry) -> None:
    """docs/telemetry.md's table of metrics is what the code records: the same
    instruments, and for each the same attribute names."""
    import re
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "telemetry.md").read_text()
    documented: dict[str, set[str]] = {}
    previous: set[str] = set()
    for row in re.finditer(r"^\| `(clientlb\.[a-z_.]+)` \|[^|]*\|[^|]*\|(.*)\|$", page, re.M):
        text = row.group(2).strip()
        previous = documented[row.group(1)] = previous if text.startswith("the same") else set(
            re.findall(r"`([a-z_]+(?:\.[a-z_]+)+)`", text))
    recorded = _recorded_attributes(reader, telemetry)
    assert sorted(documented) == sorted(recorded)
    assert {n: sorted(a) for n, a in documented.items()} == {
        n: sorted(a) for n, a in recorded.items()}


def test_queries_in_the_docs_use_recorded_instruments_and_attributes(
        reader: InMemoryMetricReader, telemetry: clientlb.Telemetry) -> None:
    """Every ``clientlb.<instrument>{<attribute>=...}`` written in the docs (guide
    included, both editions) names an instrument and attributes that the code records."""
    import re
    from pathlib import Path

    recorded = _recorded_attributes(reader, telemetry)
    wrong = []
    for page in sorted((Path(__file__).resolve().parents[1] / "docs").rglob("*.md")):
        for m in re.finditer(r"`(clientlb\.[a-z_.]+)\{([^}`]*)\}", page.read_text()):
            name, keys = m.group(1), re.findall(r"([\w.]+)\s*=", m.group(2))
            if name not in recorded or not set(keys) <= recorded[name]:
                wrong.append(f"{page.name}: {m.group(0)}")
    assert wrong == []

"""ORCA load reports and weighted_round_robin (gRFC A58): formats, weights, real HTTP servers.

The gRPC side (trailers from a real grpcio server through the interceptors) is in
tests/test_orca_grpc.py.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import clientlb
from clientlb import orca
from clientlb._engine.call import Completion
from clientlb._engine.orca import (
    LoadReport,
    MalformedLoadReport,
    format_header,
    parse_binary,
    parse_header,
    record_headers,
    record_trailers,
    to_binary,
)

from ._helpers import FakeClock, closing, wait_until

# -- formats ---------------------------------------------------------------------------

FULL = LoadReport(cpu_utilization=0.3, mem_utilization=0.8, application_utilization=0.5,
                  rps_fractional=10.0, eps=1.0, utilization={"disk": 0.2},
                  request_cost={"db": 3.0}, named_metrics={"queue": 4.0, "skew": -1.5})


@pytest.mark.parametrize("fmt", ["TEXT", "JSON", "BIN"])
def test_every_format_round_trips_a_full_report(fmt: str) -> None:
    """format_header then parse_header gives the same report, in each of Envoy's formats."""
    value = format_header(FULL, fmt)
    assert value.startswith(fmt + " ")
    assert parse_header(value) == FULL
    assert parse_header(value.encode()) == FULL


def test_text_format_reads_the_orca_proposal_example() -> None:
    """The ORCA-over-HTTP proposal's example, spaces after commas included."""
    report = parse_header("TEXT cpu_utilization=0.3, mem_utilization=0.8, rps_fractional=10.0, "
                          "eps=1, named_metrics.custom_metric_util=0.4")
    assert report == LoadReport(cpu_utilization=0.3, mem_utilization=0.8, rps_fractional=10.0,
                                eps=1.0, named_metrics={"custom_metric_util": 0.4})


def test_text_format_accepts_envoys_colon_separator_and_ignores_unknown_keys() -> None:
    """Envoy's parser splits on ':'; a key a newer server adds does not void the report."""
    report = parse_header("TEXT application_utilization:0.7,rps_fractional:5,future_field=3,"
                          "future_map.x=1")
    assert report.application_utilization == 0.7 and report.qps == 5.0


def test_json_format_reads_snake_and_camel_case_and_number_strings() -> None:
    """The protobuf JSON mapping: lowerCamelCase names and numbers as strings are valid."""
    report = parse_header('JSON {"cpuUtilization": 0.25, "rps_fractional": "12.5", '
                          '"namedMetrics": {"q": 2}, "requestCost": {"db": 1}}')
    assert report == LoadReport(cpu_utilization=0.25, rps_fractional=12.5,
                                named_metrics={"q": 2.0}, request_cost={"db": 1.0})


def test_bin_format_reads_the_envoy_documentation_example() -> None:
    """The base64 example of Envoy's docs, with and without its padding and in url-safe form."""
    value = "CZqZmZmZmbk/MQAAAAAAAABAQg4KA2ZvbxGamZmZmZm5P0IOCgNiYXIRmpmZmZmZyT8="
    expected = LoadReport(cpu_utilization=0.1, rps_fractional=2.0,
                          named_metrics={"foo": 0.1, "bar": 0.2})
    assert parse_header("BIN " + value) == expected
    assert parse_header("BIN " + value.rstrip("=")) == expected
    assert parse_binary(base64.b64decode(value)) == expected


def test_empty_text_report_is_an_empty_report() -> None:
    assert parse_header("TEXT ") == LoadReport()


@pytest.mark.parametrize(("value", "why"), [
    ("cpu_utilization=0.3", "unsupported format"),
    ("XML <report/>", "unsupported format 'XML'"),
    ("TEXT cpu_utilization=high", "cpu_utilization: expected a number, got 'high'"),
    ("TEXT cpu_utilization=0.1,cpu_utilization=0.2", "duplicate metric 'cpu_utilization'"),
    ("TEXT cpu_utilization=nan", "cpu_utilization: must be finite"),
    ("TEXT rps_fractional=inf", "rps_fractional: must be finite"),
    ("TEXT eps=-1", "eps: must be >= 0, got '-1'"),
    ("TEXT utilization.disk=-0.5", "utilization.disk: must be >= 0"),
    ("TEXT named_metrics.=1", "empty metric name"),
    ("TEXT cpu_utilization", "is not key=value"),
    ("TEXT =0.3", "is not key=value"),
    ("JSON {", "JSON:"),
    ("JSON [0.3]", "expected an object, got list"),
    ('JSON {"cpu_utilization": true}', "expected a number, got True"),
    ('JSON {"named_metrics": 3}', "named_metrics must be an object"),
    ('JSON {"eps": "NaN"}', "eps: must be finite"),
    ("BIN", "BIN: empty value"),
    ("BIN ***", "BIN: not base64"),
    ("BIN AAAA", "binary report:"),
])
def test_malformed_reports_say_why(value: str, why: str) -> None:
    """Each malformed value raises MalformedLoadReport naming the field and the rule."""
    with pytest.raises(MalformedLoadReport, match=None) as info:
        parse_header(value)
    assert why in str(info.value)


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    st.text(),
    st.builds(lambda p, t: p + t, st.sampled_from(["TEXT ", "JSON ", "BIN "]), st.text()),
    st.builds(lambda t: "BIN " + base64.b64encode(t).decode(), st.binary()),
    st.builds(lambda d: "JSON " + json.dumps(d), st.dictionaries(
        st.sampled_from(["cpu_utilization", "eps", "named_metrics", "rpsFractional", "x"]),
        st.one_of(st.floats(allow_nan=True), st.text(), st.none(), st.booleans(),
                  st.dictionaries(st.text(), st.floats()))))))
def test_parsing_any_header_value_returns_a_report_or_raises_malformed(value: str) -> None:
    """Whatever a backend sends, parsing ends in a report or MalformedLoadReport — nothing else."""
    try:
        report = parse_header(value)
    except MalformedLoadReport:
        return
    assert isinstance(report, LoadReport)


@settings(max_examples=200, deadline=None)
@given(st.binary())
def test_parsing_any_trailer_bytes_returns_a_report_or_raises_malformed(data: bytes) -> None:
    """Whatever bytes a trailer holds, parsing ends in a report or MalformedLoadReport."""
    with contextlib.suppress(MalformedLoadReport):
        assert isinstance(parse_binary(data), LoadReport)


def test_text_encoding_refuses_names_that_break_its_syntax() -> None:
    with pytest.raises(ValueError, match="cannot be sent in TEXT format"):
        format_header(LoadReport(named_metrics={"a,b": 1.0}))
    assert parse_header(format_header(LoadReport(named_metrics={"a,b": 1.0}), "JSON")) \
        .named_metrics == {"a,b": 1.0}


def test_importing_clientlb_does_not_import_protobuf() -> None:
    """xds-protos (and protobuf) load only when a binary report is first read or written."""
    code = ("import sys, clientlb, clientlb.orca; "
            "print('xds' in sys.modules, 'google.protobuf' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.split() == ["False", "False"]


def test_without_xds_protos_text_still_works_and_binary_reports_are_counted_unsupported(
) -> None:
    """xds-protos missing: TEXT/JSON reports feed weights, BIN ones are counted, one log line."""
    code = r"""
import logging, sys
sys.modules["xds"] = None  # as if xds-protos were not installed
logging.basicConfig(level=logging.WARNING, format="%(name)s %(message)s")
import clientlb
from clientlb import orca
from clientlb._engine.call import Completion
from clientlb._engine.orca import record_headers, record_trailers
lb = clientlb.LoadBalancer(["127.0.0.1:1"], strategy="weighted_round_robin")
for value in ("TEXT cpu_utilization=0.5,rps_fractional=10", "BIN CZqZmZmZmbk/", "BIN AAAA"):
    record_headers(Completion(lb.pick()), [(b"endpoint-load-metrics", value.encode())])
record_trailers(Completion(lb.pick()), (("endpoint-load-metrics-bin", b"\x09"),))
print(orca.statistics(lb))
lb.close()
try:
    orca.OrcaMiddleware(lambda *a: None, format="BIN")
except clientlb.ConfigError as exc:
    print("config:", exc)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert "{'reports': 1, 'malformed': 0, 'unsupported': 3}" in result.stdout
    assert "config: format: format BIN needs the xds-protos package" in result.stdout
    assert result.stderr.count("need the xds-protos package") == 1, result.stderr


# -- the hook ------------------------------------------------------------------------------


def _wrr(**options: Any) -> clientlb.WeightedRoundRobin:
    return clientlb.WeightedRoundRobin(**options)


def report_to(lb: clientlb.LoadBalancer, address: str, value: str) -> None:
    """Send one HTTP-style report for ``address`` through the shells' hook."""
    pick = lb.pick(prefer=address)
    assert pick.address == address
    completion = Completion(pick)
    record_headers(completion, [(b"content-type", b"text/plain"),
                                (b"Endpoint-Load-Metrics", value.encode())])
    completion.finish()


def test_the_hook_counts_malformed_reports_and_never_raises(caplog: pytest.LogCaptureFixture
                                                            ) -> None:
    """A malformed report is ignored, counted, and logged once per endpoint at WARNING."""
    lb = closing(clientlb.LoadBalancer(["127.0.0.1:1"], strategy="weighted_round_robin"))
    with caplog.at_level("DEBUG", logger="clientlb.orca"):
        for value in ("TEXT cpu_utilization=oops", "nonsense", "TEXT eps=-3",
                      "TEXT application_utilization=0.5,rps_fractional=3"):
            report_to(lb, "127.0.0.1:1", value)
        record_trailers(Completion(lb.pick()), [("endpoint-load-metrics-bin", b"\xff\xff")])
        record_trailers(Completion(lb.pick()), object())  # not even a sequence
    assert orca.statistics(lb) == {"reports": 1, "malformed": 4, "unsupported": 0}
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert "malformed load report from 127.0.0.1:1 ignored (cpu_utilization: expected a " \
           "number, got 'oops')" in warnings[0].getMessage()
    state = lb.state_of("127.0.0.1:1")
    assert state is not None and state.load_report.latest.application_utilization == 0.5


def test_the_hook_reads_the_legacy_bin_header() -> None:
    lb = closing(clientlb.LoadBalancer(["127.0.0.1:1"], strategy="weighted_round_robin"))
    completion = Completion(lb.pick())
    value = base64.b64encode(to_binary(LoadReport(cpu_utilization=0.4))).decode()
    record_headers(completion, [("endpoint-load-metrics-bin", value)])
    state = lb.state_of("127.0.0.1:1")
    assert state is not None and state.load_report.latest.cpu_utilization == 0.4


def test_reports_are_not_parsed_for_strategies_that_do_not_read_them() -> None:
    lb = closing(clientlb.LoadBalancer(["127.0.0.1:1"], strategy="round_robin"))
    report_to(lb, "127.0.0.1:1", "TEXT cpu_utilization=0.5,rps_fractional=10")
    assert orca.statistics(lb) == {"reports": 0, "malformed": 0, "unsupported": 0}


# -- the weight ------------------------------------------------------------------------------


@pytest.mark.parametrize(("report", "weight"), [
    (LoadReport(cpu_utilization=0.5, rps_fractional=100), 200.0),
    # application utilization first, CPU only when it is unset
    (LoadReport(cpu_utilization=0.9, application_utilization=0.25, rps_fractional=100), 400.0),
    # errors: 10 eps at 100 qps adds 0.1 × penalty to the utilization
    (LoadReport(cpu_utilization=0.4, rps_fractional=100, eps=10), 200.0),
    # no utilization or no qps: no weight (A58's "empty" report)
    (LoadReport(rps_fractional=100), 0.0),
    (LoadReport(cpu_utilization=0.5), 0.0),
])
def test_weight_is_qps_over_utilization_plus_error_penalty(report: LoadReport,
                                                           weight: float) -> None:
    """gRFC A58: weight = qps / (utilization + eps/qps × error_utilization_penalty)."""
    assert _wrr().weight(report) == pytest.approx(weight)


def test_error_utilization_penalty_scales_the_error_term() -> None:
    report = LoadReport(cpu_utilization=0.4, rps_fractional=100, eps=10)
    assert _wrr(error_utilization_penalty=0).weight(report) == pytest.approx(250.0)
    assert _wrr(error_utilization_penalty=6).weight(report) == pytest.approx(100.0)


def test_defaults_are_the_grfcs() -> None:
    wrr = clientlb.WeightedRoundRobin()
    assert (wrr.blackout_period, wrr.weight_expiration_period, wrr.weight_update_period,
            wrr.error_utilization_penalty) == (10.0, 180.0, 1.0, 1.0)
    assert repr(wrr) == ("WeightedRoundRobin(blackout_period=10, weight_expiration_period=180, "
                         "weight_update_period=1, error_utilization_penalty=1)")
    assert clientlb.STRATEGIES["weighted_round_robin"] is clientlb.WeightedRoundRobin
    assert _wrr(weight_update_period=0.01).weight_update_period == 0.1  # A58's floor


@pytest.mark.parametrize(("option", "value", "message"), [
    ("blackout_period", -1, "blackout_period: blackout_period must be a finite number >= 0"),
    ("weight_expiration_period", 0, "must be a finite number > 0, got 0"),
    ("weight_update_period", float("nan"), "must be a finite number > 0, got nan"),
    ("error_utilization_penalty", "1", "must be a finite number >= 0, got '1'"),
    ("blackout_period", True, "got True"),
])
def test_bad_options_are_config_errors(option: str, value: Any, message: str) -> None:
    with pytest.raises(clientlb.ConfigError, match=None) as info:
        clientlb.WeightedRoundRobin(**{option: value})
    assert message in str(info.value) and info.value.field == option


def test_the_strategy_comes_from_a_config_table() -> None:
    registry = clientlb.Registry.from_config({"services": {"api": {
        "target": "static://127.0.0.1:1,127.0.0.1:2",
        "strategy": {"name": "weighted_round_robin", "blackout_period": 2}}}})
    try:
        assert registry.get("api").strategy == clientlb.WeightedRoundRobin(blackout_period=2)
    finally:
        registry.close()


# -- weights over time, on a fake clock ----------------------------------------------------

ADDRS = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def balancer(clock: FakeClock, addrs: list[str] = ADDRS, **options: Any) -> clientlb.LoadBalancer:
    return closing(clientlb.LoadBalancer(addrs, strategy=_wrr(**options), clock=clock,
                                         outlier_detection=None,
                                         rng=__import__("random").Random(7)))


def load(lb: clientlb.LoadBalancer, qps_by_address: dict[str, float],
         utilization: float = 0.5) -> None:
    for address, qps in qps_by_address.items():
        report_to(lb, address, f"TEXT application_utilization={utilization},"
                               f"rps_fractional={qps}")


def shares(lb: clientlb.LoadBalancer, n: int) -> dict[str, int]:
    counts: collections.Counter[str] = collections.Counter()
    for _ in range(n):
        pick = lb.pick()
        counts[pick.address] += 1
        pick.done()
    return dict(counts)


def weights(lb: clientlb.LoadBalancer) -> dict[str, float | None]:
    return {e.address: e.load_weight for e in lb.snapshot().endpoints}


def test_weights_wait_for_the_blackout_period(clock: FakeClock) -> None:
    """Reports count only after an endpoint has reported for blackout_period (A58)."""
    lb = balancer(clock)
    load(lb, {ADDRS[0]: 100, ADDRS[1]: 200, ADDRS[2]: 400})
    clock.advance(9.0)
    load(lb, {ADDRS[0]: 100, ADDRS[1]: 200, ADDRS[2]: 400})
    assert set(weights(lb).values()) == {1.0}  # still in blackout: round robin
    assert shares(lb, 30) == {a: 10 for a in ADDRS}
    clock.advance(1.0)
    assert weights(lb) == {ADDRS[0]: 200.0, ADDRS[1]: 400.0, ADDRS[2]: 800.0}


def test_picks_follow_the_weights_smoothly(clock: FakeClock) -> None:
    """Weights 1:2:4 give exactly 1:2:4 of the picks, interleaved (no run longer than 3)."""
    lb = balancer(clock, blackout_period=0)
    load(lb, {ADDRS[0]: 100, ADDRS[1]: 200, ADDRS[2]: 400})
    clock.advance(1.0)
    order = []
    for _ in range(700):
        pick = lb.pick()
        order.append(pick.address)
        pick.done()
    assert collections.Counter(order) == {ADDRS[0]: 100, ADDRS[1]: 200, ADDRS[2]: 400}
    longest = max(len(list(run)) for _, run in __import__("itertools").groupby(order))
    assert longest <= 3


def test_an_endpoint_without_reports_gets_the_mean_weight(clock: FakeClock) -> None:
    lb = balancer(clock, blackout_period=0)
    load(lb, {ADDRS[0]: 100, ADDRS[1]: 300})
    clock.advance(1.0)
    assert weights(lb) == {ADDRS[0]: 200.0, ADDRS[1]: 600.0, ADDRS[2]: 400.0}
    assert shares(lb, 1200) == {ADDRS[0]: 200, ADDRS[1]: 600, ADDRS[2]: 400}


def test_with_one_weight_known_every_endpoint_is_equal(clock: FakeClock) -> None:
    """Fewer than two endpoints with a weight: plain round robin (A58)."""
    lb = balancer(clock, blackout_period=0)
    load(lb, {ADDRS[0]: 1000})
    clock.advance(1.0)
    assert set(weights(lb).values()) == {1.0}


def test_weights_are_clamped_within_one_percent_and_ten_times_the_mean(clock: FakeClock
                                                                         ) -> None:
    """One wild report cannot take all the traffic (gRPC's static-stride bounds)."""
    addrs = [f"10.0.1.{i}:80" for i in range(1, 21)]
    lb = balancer(clock, addrs, blackout_period=0)
    load(lb, {**dict.fromkeys(addrs[1:], 1.0), addrs[0]: 1_000_000})
    clock.advance(1.0)
    w = weights(lb)
    mean = (19 * 2 + 2_000_000) / 20
    assert w[addrs[0]] == pytest.approx(10 * mean)
    assert w[addrs[1]] == pytest.approx(0.01 * mean)


def test_weights_are_recomputed_once_per_update_period(clock: FakeClock) -> None:
    lb = balancer(clock, blackout_period=0, weight_update_period=5.0)
    load(lb, {ADDRS[0]: 100, ADDRS[1]: 100, ADDRS[2]: 100})
    clock.advance(1.0)
    assert weights(lb)[ADDRS[0]] == 200.0
    load(lb, {ADDRS[0]: 300})
    clock.advance(4.0)
    assert weights(lb)[ADDRS[0]] == 200.0  # the next update is due at +5 s
    clock.advance(1.0)
    assert weights(lb)[ADDRS[0]] == 600.0


def test_a_weight_expires_and_the_blackout_starts_again(clock: FakeClock) -> None:
    """No report for weight_expiration_period: the weight is dropped; when reports come
    back, the endpoint waits a blackout period again before its new weight counts."""
    lb = balancer(clock, blackout_period=10, weight_expiration_period=60)
    load(lb, {ADDRS[0]: 100, ADDRS[1]: 200, ADDRS[2]: 400})
    clock.advance(10.0)
    assert weights(lb)[ADDRS[2]] == 800.0
    clock.advance(30.0)
    load(lb, {ADDRS[0]: 100, ADDRS[1]: 200})  # ADDRS[2] stops reporting
    clock.advance(30.0)
    w = weights(lb)  # 60 s since ADDRS[2]'s last report
    assert w == {ADDRS[0]: 200.0, ADDRS[1]: 400.0, ADDRS[2]: 300.0}  # the mean
    load(lb, {ADDRS[2]: 400})
    clock.advance(5.0)
    assert weights(lb)[ADDRS[2]] == 300.0  # back, but in blackout
    load(lb, {ADDRS[0]: 100, ADDRS[1]: 200, ADDRS[2]: 400})
    clock.advance(5.0)
    assert weights(lb)[ADDRS[2]] == 800.0


def test_an_endpoint_back_in_rotation_earns_its_weight_again(clock: FakeClock) -> None:
    """Drained then put back (as after a connection failure): blackout again (A58)."""
    lb = balancer(clock, blackout_period=10)
    load(lb, {ADDRS[0]: 100, ADDRS[1]: 200, ADDRS[2]: 400})
    clock.advance(10.0)
    assert weights(lb)[ADDRS[2]] == 800.0
    lb.drain(ADDRS[2])
    assert weights(lb)[ADDRS[2]] is None  # draining: not in the picker
    lb.undrain(ADDRS[2])
    load(lb, {ADDRS[2]: 400})
    assert weights(lb)[ADDRS[2]] == 300.0
    clock.advance(10.0)
    load(lb, {ADDRS[2]: 400})
    assert weights(lb)[ADDRS[2]] == 800.0


def test_static_weights_multiply_the_reported_ones(clock: FakeClock) -> None:
    """A canary weight (set_weight) or a slow-start ramp still scales an endpoint's share:
    every clientlb strategy honours static weights, this one on top of the reports."""
    lb = balancer(clock, blackout_period=0)
    load(lb, {ADDRS[0]: 100, ADDRS[1]: 100, ADDRS[2]: 200})
    clock.advance(1.0)
    lb.set_weight(ADDRS[2], 0.5)
    assert weights(lb)[ADDRS[2]] == 400.0  # the reported weight, as snapshot() shows it
    assert shares(lb, 900) == {a: 300 for a in ADDRS}  # 400 × 0.5 against 200 × 1


def test_other_strategies_show_no_load_weight(clock: FakeClock) -> None:
    lb = closing(clientlb.LoadBalancer(ADDRS, strategy="least_request", clock=clock))
    assert set(weights(lb).values()) == {None}
    lb.set_strategy("weighted_round_robin")
    assert set(weights(lb).values()) == {1.0}


def test_concurrent_picks_during_weight_updates_never_fail(clock: FakeClock) -> None:
    """Threads picking while the clock crosses update periods: every pick succeeds."""
    lb = balancer(clock, blackout_period=0, weight_update_period=0.1)
    load(lb, {ADDRS[0]: 100, ADDRS[1]: 200, ADDRS[2]: 400})
    errors: list[BaseException] = []
    counts: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()

    def worker() -> None:
        try:
            for i in range(2000):
                if i % 50 == 0:
                    clock.advance(0.05)
                pick = lb.pick()
                pick.done()
                with lock:
                    counts[pick.address] += 1
        except BaseException as exc:  # pragma: no cover - the failure we look for
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and sum(counts.values()) == 8000
    assert counts[ADDRS[2]] > counts[ADDRS[1]] > counts[ADDRS[0]]


def test_weights_are_a_telemetry_gauge(clock: FakeClock) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    lb = balancer(clock, blackout_period=0)
    clientlb.Telemetry(meter_provider=MeterProvider(metric_readers=[reader])).instrument(lb)
    load(lb, {ADDRS[0]: 100, ADDRS[1]: 200, ADDRS[2]: 400})
    report_to(lb, ADDRS[0], "TEXT eps=")
    clock.advance(1.0)
    data = reader.get_metrics_data()
    assert data is not None
    found: dict[str, list[Any]] = collections.defaultdict(list)
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                found[metric.name].extend(metric.data.data_points)
    gauge = {p.attributes["server.address"]: p.value for p in found["clientlb.endpoint.weight"]}
    assert gauge == {"10.0.0.1": 200.0, "10.0.0.2": 400.0, "10.0.0.3": 800.0}
    results = {p.attributes["clientlb.load_report.result"]: p.value
               for p in found["clientlb.load_reports"]}
    assert results == {"read": 3, "malformed": 1, "unsupported": 0}


# -- the server side's metrics -------------------------------------------------------------


def test_server_metrics_count_qps_and_eps_over_the_window() -> None:
    clock = FakeClock(100.0)
    metrics = orca.ServerMetrics(cpu=False, window=1.0, clock=clock)
    for i in range(50):
        metrics.record_request(error=i % 10 == 0)
        clock.advance(0.02)
    report = metrics.report()
    assert report.rps_fractional == pytest.approx(50.0)
    assert report.eps == pytest.approx(5.0)
    clock.advance(2.0)
    assert metrics.report().rps_fractional == 0.0


def test_server_metrics_measure_the_process_cpu() -> None:
    clock = FakeClock(0.0)
    cpu = FakeClock(0.0)
    metrics = orca.ServerMetrics(window=1.0, clock=clock, cpu_time=cpu)
    import os

    cpus = len(os.sched_getaffinity(0))
    clock.advance(2.0)
    cpu.advance(1.0)
    assert metrics.report().cpu_utilization == pytest.approx(0.5 / cpus)
    metrics.set_cpu_utilization(0.9)
    assert metrics.report().cpu_utilization == 0.9


def test_application_values_and_call_values_make_the_report() -> None:
    """Values or callables from the application; a handler's call metrics override them."""
    metrics = orca.ServerMetrics(cpu=False)
    busy = [3]
    metrics.set_application_utilization(lambda: busy[0] / 4)
    metrics.set_mem_utilization(0.5)
    metrics.set_utilization("disk", 0.1)
    metrics.set_named_metric("queue", lambda: 7)
    busy[0] = 2
    call = orca.CallMetrics()
    call.set_named_metric("queue", 9)
    call.set_request_cost("db_ms", 12)
    call.set_utilization("gpu", 0.8)
    report = metrics.report(call)
    assert (report.application_utilization, report.mem_utilization) == (0.5, 0.5)
    assert report.named_metrics == {"queue": 9.0}
    assert report.utilization == {"disk": 0.1, "gpu": 0.8}
    assert report.request_cost == {"db_ms": 12.0}
    metrics.set_named_metric("queue", None)
    assert metrics.report().named_metrics == {}


@pytest.mark.parametrize(("setter", "args", "message"), [
    ("set_application_utilization", (-0.1,), "application_utilization must be a finite number "
                                              ">= 0, got -0.1"),
    ("set_named_metric", ("a b", 1), "metric name must be a non-empty string without"),
    ("set_utilization", ("disk", float("inf")), "utilization['disk'] must be a finite number"),
])
def test_bad_metric_values_say_which_and_why(setter: str, args: tuple[Any, ...],
                                             message: str) -> None:
    with pytest.raises(ValueError, match=None) as info:
        getattr(orca.ServerMetrics(cpu=False), setter)(*args)
    assert message in str(info.value)


def test_call_metrics_outside_a_call_go_nowhere() -> None:
    orca.call_metrics().set_named_metric("x", 1)
    assert orca.call_metrics().named_metrics == {}


# -- real HTTP servers: uvicorn + OrcaMiddleware, balanced by httpx through clientlb ---------


class UvicornBackend:
    """A uvicorn server on 127.0.0.1 whose ASGI app reports a utilization that grows with
    the requests it serves: ``cost`` (utilization per request per second) sets its capacity."""

    def __init__(self, name: str, cost: float, fmt: str = "TEXT") -> None:
        import uvicorn

        self.name = name
        self.cost = cost
        self.metrics = orca.ServerMetrics(cpu=False)
        self.metrics.set_application_utilization(lambda: self.cost * self.metrics.qps())
        self.hits = 0

        async def app(scope: Any, receive: Any, send: Any) -> None:
            assert scope["type"] == "http"
            self.hits += 1
            orca.call_metrics().set_request_cost("work", 1.0)
            body = self.name.encode()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})

        self.app = orca.OrcaMiddleware(app, self.metrics, format=fmt)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{sock.getsockname()[1]}"
        config = uvicorn.Config(self.app, log_level="warning", lifespan="off",
                                access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]},
                                       daemon=True)
        self.thread.start()
        wait_until(lambda: self.server.started, message=f"{name} to listen")
        self._sock = sock

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self._sock.close()


@pytest.fixture
def backends() -> Iterator[list[UvicornBackend]]:
    # "small" costs 4× more utilization per request than "large": a quarter of its capacity
    started = [UvicornBackend("small", 0.004, "TEXT"), UvicornBackend("large", 0.001, "JSON")]
    yield started
    for b in started:
        b.stop()


def wrr_lb(backends: list[UvicornBackend]) -> clientlb.LoadBalancer:
    return clientlb.LoadBalancer(
        [b.address for b in backends], name="api", outlier_detection=None,
        strategy=clientlb.WeightedRoundRobin(blackout_period=0, weight_update_period=0.1))


def test_the_middleware_adds_a_report_in_the_format_asked(backends: list[UvicornBackend]
                                                         ) -> None:
    small = backends[0]
    with httpx.Client(base_url=f"http://{small.address}") as client:
        plain = client.get("/")
        asked = client.get("/", headers={"endpoint-load-metrics-format": "json"})
    text = plain.headers["endpoint-load-metrics"]
    assert text.startswith("TEXT ") and "application_utilization=" in text
    assert "request_cost.work=1.0" in text
    report = parse_header(asked.headers["endpoint-load-metrics"])
    assert asked.headers["endpoint-load-metrics"].startswith("JSON ")
    assert report.rps_fractional > 0 and report.request_cost == {"work": 1.0}
    assert report.application_utilization == pytest.approx(0.004 * report.rps_fractional,
                                                           rel=0.2)


def test_sync_httpx_shifts_traffic_to_the_backend_with_spare_capacity(
        backends: list[UvicornBackend]) -> None:
    """Two backends, one with 4× the capacity of the other (the utilization each reports per
    request served): once their reports are read, the large one takes about 4 calls in 5."""
    small, large = backends
    with wrr_lb(backends) as lb, httpx.Client(transport=clientlb.HTTPTransport(lb)) as client:

        def shifted() -> bool:
            small.hits = large.hits = 0
            for _ in range(40):
                assert client.get("http://api/").status_code == 200
            return large.hits >= 28

        wait_until(shifted, timeout=30, interval=0.1, message="traffic to shift")
        w = {e.address: e.load_weight for e in lb.snapshot().endpoints}
        assert w[large.address] is not None and w[small.address] is not None
        assert w[large.address] == pytest.approx(4 * w[small.address], rel=0.3)
        assert orca.statistics(lb)["malformed"] == 0


def test_async_httpx_follows_the_capacity_the_backends_report(
        backends: list[UvicornBackend]) -> None:
    """Through the async transport: 4:1 capacity gives about 4:1 of the calls; when the
    small backend reports as much capacity as the large one, traffic evens out."""
    small, large = backends

    async def until(condition: Any, client: httpx.AsyncClient, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        while True:
            small.hits = large.hits = 0
            for _ in range(40):
                assert (await client.get("http://api/")).status_code == 200
            if condition():
                return
            assert loop.time() < deadline, (small.hits, large.hits)
            await asyncio.sleep(0.1)

    async def main() -> None:
        lb = wrr_lb(backends)
        deadline = asyncio.get_running_loop().time() + 30
        async with lb, httpx.AsyncClient(transport=clientlb.AsyncHTTPTransport(lb)) as client:
            await until(lambda: large.hits >= 28, client, deadline)
            small.cost = large.cost  # the small backend was upgraded
            await until(lambda: 14 <= small.hits <= 26, client, deadline)

    asyncio.run(main())

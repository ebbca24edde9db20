"""The clientlb command line: resolve, check and demo, with clean errors and exit codes."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import pytest

import clientlb
from clientlb._cli.main import main

from ._helpers import HTTPBackend, free_port, wait_until

CLIENTLB = str(Path(sys.executable).parent / "clientlb")
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The installed console script, as a user runs it."""
    return subprocess.run([CLIENTLB, *args], capture_output=True, text=True, timeout=timeout,
                          env={"PATH": "/usr/bin:/bin", "COLUMNS": "120"})


@pytest.fixture
def backends() -> Iterator[list[HTTPBackend]]:
    ok, broken = HTTPBackend("ok"), HTTPBackend("broken", status=500)
    broken.health_status = 500
    yield [ok, broken]
    ok.close()
    broken.close()


def test_resolve_prints_every_endpoint_with_its_attributes(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["resolve", "static://127.0.0.1:8001,[::1]:8002"]) == 0
    out = capsys.readouterr().out
    assert "127.0.0.1:8001" in out and "[::1]:8002" in out
    assert "healthy" in out and "(2 endpoints)" in out


def test_resolve_and_check_print_json_for_scripts(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    assert main(["resolve", "static://127.0.0.1:8001,[::1]:8002", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [(e["host"], e["port"], e["state"]) for e in data["endpoints"]] == [
        ("127.0.0.1", 8001, "healthy"), ("::1", 8002, "healthy")]
    dead = free_port()
    assert main(["check", f"127.0.0.1:{dead}", "--tcp", "--json"]) == 1
    (result,) = json.loads(capsys.readouterr().out)["results"]
    assert (result["address"], result["passed"], result["detail"]) == (
        f"127.0.0.1:{dead}", False, "connection refused")


def test_resolve_watch_stops_after_its_duration(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["resolve", "127.0.0.1:8001", "--watch", "--duration", "0.3"]) == 0
    assert "127.0.0.1:8001" in capsys.readouterr().out


def test_resolve_watch_shows_endpoints_discovery_adds(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A record added to a real DNS server while watching shows in the live table."""
    from clientlb._cli import main as _cli

    from .conftest import require_binary
    from .dns_server import KnotServer

    created: list[clientlb.LoadBalancer] = []

    def balancer(*args: Any, **kwargs: Any) -> clientlb.LoadBalancer:
        # Re-resolve every 50 ms instead of the 5 s floor, so that the test is short.
        lb = clientlb.LoadBalancer(*args, resolver_options={"min_ttl": 0.05,
                                                            "ttl_jitter": 0.0}, **kwargs)
        created.append(lb)
        return lb

    monkeypatch.setattr(_cli, "LoadBalancer", balancer)

    knot = KnotServer(require_binary("knotd", "/usr/sbin/knotd"), tmp_path / "knot",
                      records="web 1 A 127.0.0.2")
    try:
        result: list[int] = []
        watcher = threading.Thread(target=lambda: result.append(main(
            ["resolve", f"dns://{knot.server}/web.test:8080", "--watch", "--duration", "2"])))
        watcher.start()
        wait_until(lambda: created and created[0].endpoints(), message="the first answer")
        knot.update(add=[("web", 1, "A", "127.0.0.3")])
        watcher.join(20)
    finally:
        knot.close()
    assert result == [0]
    out = capsys.readouterr().out
    assert "127.0.0.2:8080" in out and "127.0.0.3:8080" in out
    assert "(2 endpoints)" in out


@pytest.mark.parametrize(("args", "message"), [
    (["resolve", "static://127.0.0.1:0"], "port must be 1..65535, got 0"),
    (["resolve", "gopher://x"], "gopher"),
    (["check", "127.0.0.1:1"], "one of the arguments --http --tcp --grpc is required"),
    (["check", "127.0.0.1:1", "--http", "healthz"], "must be a path starting with '/'"),
    (["demo", "--strategies", "fastest"], "--strategies: unknown strategy 'fastest'"),
    (["demo", "--duration", "0"], "--duration must be > 0 seconds"),
])
def test_bad_input_is_one_clean_line_and_exit_status_2(
        args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_the_console_script_reports_a_bad_target_without_a_traceback() -> None:
    result = run("resolve", "static://127.0.0.1:0")
    assert result.returncode == 2, result
    assert result.stderr.startswith("error: ")
    assert "port must be 1..65535, got 0" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_a_dns_server_that_never_answers_is_exit_status_1() -> None:
    port = free_port()  # nothing listens there: every query times out
    result = run("resolve", f"dns://127.0.0.1:{port}/users.test:80", "--timeout", "0.5")
    assert result.returncode == 1, result
    assert "no answer from discovery" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_http_reports_each_endpoint_and_passes_when_one_is_healthy(
        backends: list[HTTPBackend], capsys: pytest.CaptureFixture[str]) -> None:
    ok, broken = backends
    dead = f"127.0.0.1:{free_port()}"
    assert main(["check", f"{ok.address},{broken.address},{dead}", "--http", "/healthz"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[1]: line for line in out.splitlines() if "127.0.0.1:" in line
             and len(line.split()) > 2}
    assert "pass" in lines[ok.address] and "HTTP 200" in lines[ok.address]
    assert "FAIL" in lines[broken.address] and "HTTP 500" in lines[broken.address]
    assert "FAIL" in lines[dead] and "refused" in lines[dead].lower()
    assert "1/3 endpoints passed" in out
    assert ok.requests[-1] == ("GET", "/healthz", ok.address)


def test_check_fails_with_status_1_when_nothing_is_healthy(backends: list[HTTPBackend]) -> None:
    result = run("check", f"{backends[1].address},127.0.0.1:{free_port()}", "--http", "/healthz")
    assert result.returncode == 1
    assert "0/2 endpoints passed" in result.stdout


def test_check_tcp_connects_to_each_endpoint(backends: list[HTTPBackend],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    dead = f"127.0.0.1:{free_port()}"
    assert main(["check", f"{backends[0].address},{dead}", "--tcp"]) == 0
    assert "1/2 endpoints passed" in capsys.readouterr().out


def test_check_grpc_asks_the_standard_health_service(capsys: pytest.CaptureFixture[str]) -> None:
    grpc = pytest.importorskip("grpc")
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    server = grpc.server(futures.ThreadPoolExecutor(2))
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    servicer.set("users", health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        assert main(["check", f"127.0.0.1:{port}", "--grpc"]) == 0
        assert "gRPC SERVING" in capsys.readouterr().out
        assert main(["check", f"127.0.0.1:{port}", "--grpc", "users"]) == 1
        assert "gRPC NOT_SERVING" in capsys.readouterr().out
    finally:
        server.stop(None)


def test_config_validates_a_file_without_starting_anything(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", str(EXAMPLES / "clientlb.toml")]) == 0
    out = capsys.readouterr().out
    assert "2 services, telemetry on" in out and "configuration OK" in out
    assert "ring_hash" in out and "health_check" in out


def test_config_reports_the_dotted_path_of_a_mistake(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[services.users]\ntarget = "static://127.0.0.1:0"\n')
    assert main(["config", str(bad)]) == 2
    assert capsys.readouterr().err.startswith(
        "error: services.users.target: '127.0.0.1:0': port must be 1..65535, got 0")


def test_demo_reports_an_unwritable_chart_without_a_traceback(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    chart = tmp_path / "missing-directory" / "demo.png"
    assert main(["demo", "--duration", "0.4", "--strategies", "random",
                 "--plot", str(chart)]) == 2  # refused before the run, not after
    err = capsys.readouterr().err
    assert err.startswith("error: --plot: the directory ") and "missing-directory" in err
    assert "Traceback" not in err


def test_demo_compares_strategies_and_writes_a_chart(tmp_path: Path) -> None:
    chart = tmp_path / "demo.png"
    result = run("demo", "--duration", "3", "--strategies", "round_robin,peak_ewma",
                 "--plot", str(chart))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "comparison" in out and "lowest p99:" in out
    rows = [line for line in out.splitlines() if "round_robin" in line or "peak_ewma" in line]
    assert len(rows) >= 2
    for header in ("fast-1", "slow", "flaky", "p50", "p99", "err", "retry", "eject"):
        assert header in out
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_default_demo_fits_in_30_seconds() -> None:
    """24 s of traffic plus about 2 s to start the backends and print the comparison."""
    from clientlb._cli.main import build_parser

    args = build_parser().parse_args(["demo"])
    assert args.duration <= 25
    assert args.strategies.split(",") == ["round_robin", "random", "least_request", "peak_ewma"]

"""``clientlb serve`` and ``clientlb demo``'s dashboard, as a user runs them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from clientlb._cli.main import build_parser, main
from clientlb.admin._serve import read_token

from ._helpers import wait_until

CLIENTLB = str(Path(sys.executable).parent / "clientlb")


def test_serve_refuses_a_bad_configuration_in_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[services.users]\ntarget = "static://127.0.0.1:80"\nstratgy = "x"\n')
    assert main(["serve", str(bad), "--port", "0"]) == 2
    assert capsys.readouterr().err.startswith(
        "error: services.users.stratgy: unknown key 'stratgy'")


def test_serve_reads_the_token_from_a_file_or_the_environment(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-the-file-0123456789\n")
    token_file.chmod(0o600)
    env = {"CLIENTLB_ADMIN_TOKEN": "from-the-environment-0123"}
    assert read_token(str(token_file), env) == ("from-the-file-0123456789",
                                                f"--token-file {token_file}")
    assert read_token(None, env) == ("from-the-environment-0123", "CLIENTLB_ADMIN_TOKEN")
    assert read_token(None, {}) == (None, "none")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ValueError, match=r"^--token-file: .*empty is empty$"):
        read_token(str(empty), {})


def test_serve_has_no_token_option_so_it_never_shows_in_ps() -> None:
    options = {a for action in build_parser()._subparsers._group_actions  # type: ignore[union-attr]
               for name, sub in action.choices.items() if name == "serve"
               for a in sub._option_string_actions}
    assert "--token-file" in options and not any(o.startswith("--token") and o != "--token-file"
                                                  for o in options)


def test_serve_says_when_the_port_is_taken(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[services.web]\ntarget = "static://127.0.0.1:80"\n')
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", str(config), "--port", str(port)]) == 1
    assert f"error: cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_the_demo_serves_its_balancers_on_the_dashboard_while_it_runs() -> None:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "COLUMNS": "120",
           "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([CLIENTLB, "demo", "--duration", "2", "--strategies",
                             "round_robin,peak_ewma", "--dashboard-port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        line = wait_until(lambda: next((x for x in lines if x.startswith("dashboard: ")), None),
                          timeout=20, message="the dashboard's address")
        url = line.split()[1]

        def demo_service() -> dict[str, object] | None:
            services = httpx.get(url + "api/services").json()["services"]
            # a balancer made on the demo's event loop publishes its endpoints from a
            # task: it may be listed an instant before they are
            return next((s for s in services if str(s["name"]).startswith("demo-")
                         and s["endpoints"]), None)

        service = wait_until(demo_service, timeout=20, message="a demo balancer")
        assert len(service["endpoints"]) == 4  # type: ignore[arg-type]
        assert "read-only" in line
    finally:
        # only the reader thread reads stdout (communicate() would race it for lines)
        proc.wait(timeout=60)
        reader.join(5)
        assert proc.stderr is not None and proc.stdout is not None
        err = proc.stderr.read()
        proc.stderr.close()
        proc.stdout.close()
    assert proc.returncode == 0, err
    assert any("comparison" in x for x in lines), "".join(lines)


def test_the_dashboard_of_the_demo_can_be_turned_off() -> None:
    args = build_parser().parse_args(["demo", "--no-dashboard"])
    assert args.dashboard is False
    assert build_parser().parse_args(["demo"]).dashboard is True


def test_the_overhead_benchmark_runs_in_smoke_mode() -> None:
    bench = Path(__file__).resolve().parents[1] / "benchmarks" / "admin_overhead.py"
    result = subprocess.run([sys.executable, str(bench), "--smoke"], capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    for case in ("no control room", "served, nobody watching", "1 live client (SSE)",
                 "5 live clients (SSE)"):
        assert f"| {case} |" in result.stdout
    assert "ms per tick" in result.stdout

"""examples/orca_weighted_round_robin.py and benchmarks/server_load.py run for real.

The example starts its own uvicorn and grpcio servers on 127.0.0.1; the benchmark's smoke
mode starts real backend, hidden-traffic and client processes for a few seconds (no figure
is asserted, only that every strategy ran and the table and chart came out).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_orca_example_balances_by_the_reported_capacity() -> None:
    """Servers report 100 and 400 req/s of capacity: weights 1:4, about 4 calls in 5 to the
    large one, over HTTP (httpx) and gRPC (a balanced channel); the gRPC interceptor's
    trailer carries the server's named metric."""
    result = subprocess.run([sys.executable, str(ROOT / "examples" /
                                                 "orca_weighted_round_robin.py")],
                            cwd=ROOT / "examples", capture_output=True, text=True, timeout=90)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "report: TEXT [('db_queries', 2.0)]" in out
    assert "weights: large/small = 4" in out
    assert "large served about 4 requests in 5" in out
    assert "grpc: large served about 4 calls in 5" in out
    assert "grpc report: queue_length = 3.0" in out
    assert out.rstrip().endswith("ok")


def test_server_load_benchmark_runs_in_smoke_mode(tmp_path: Path) -> None:
    """benchmarks/server_load.py --smoke: four backends, hidden traffic, a client
    process, every strategy in turn, in about 10 s on an idle machine."""
    chart = tmp_path / "server_load.png"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "server_load.py"),
                             "--smoke", "--chart", str(chart)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for strategy in ("weighted_round_robin", "peak_ewma", "least_request", "round_robin"):
        assert f"| `{strategy}` |" in out, out
    for backend in ("| b1 | 1 | 50 |", "| b4 | 4 | 200 | 50 |"):
        assert backend in out, out
    assert "Mean `weighted_round_robin` weights" in out
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

"""examples/grpc_quickstart.py runs for real against the local gRPC servers it starts."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_grpc_quickstart_spreads_calls_and_survives_a_stopped_server() -> None:
    """The quick start balances sync and aio calls and loses none when a server stops."""
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "grpc_quickstart.py")],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "sync: 9 calls -> {'backend-0': 3, 'backend-1': 3, 'backend-2': 3}" in out
    assert "health stub: SERVING" in out
    assert "after stopping backend-0: 12 calls, 0 failed" in out
    assert "aio: 30 concurrent calls -> {'backend-1': " in out
    assert "backend-0" not in out.split("aio:", 1)[1]


def test_grpc_features_example_retries_tls_interceptors_and_by_hand() -> None:
    """The features example: retries skip the overloaded backend, TLS to the logical name,
    interceptors on top, sync and aio, balancing by hand."""
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "grpc_features.py")],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "retries: 6 calls, 6 answered, overloaded backend skipped (" in out
    assert "0 retries from the budget" not in out
    assert "tls: hello tls from tls-" in out
    assert "interceptor: x-team=payments" in out
    assert "aio interceptor: x-team=search" in out
    assert "by hand: 4 calls -> {'ok-0': 2, 'ok-1': 2}" in out


def test_every_python_block_of_the_grpc_chapter_is_a_snippet_of_a_tested_example() -> None:
    """docs/grpc.md shows only code that the examples above run."""
    text = (ROOT / "docs" / "grpc.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 6
    for block in blocks:
        for line in block.strip().splitlines():
            assert re.fullmatch(r'--8<-- "examples/grpc_\w+\.py(:\w+)?"', line.strip()), line
            path, _, section = line.strip().split('"')[1].partition(":")
            source = (ROOT / path).read_text()
            assert f"# --8<-- [start:{section}]" in source, line
            assert f"# --8<-- [end:{section}]" in source, line


def test_grpc_overhead_benchmark_runs_in_smoke_mode() -> None:
    """benchmarks/grpc_overhead.py --smoke prints its table (no timing is asserted)."""
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "grpc_overhead.py"),
                             "--smoke"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert len(rows) == 7 + 3  # header + 3 sync + 3 aio variants; header + 2 strategies
    assert "| grpc.aio, concurrency 32 | clientlb round_robin |" in result.stdout
    assert "| strategy | sync µs/call | grpc.aio µs/call |" in result.stdout

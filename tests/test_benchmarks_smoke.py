"""The scenario benchmarks (issue 9) keep working: each runs in its smoke mode.

No timing is asserted — only that every scenario runs to the end, produces its tables and
charts, and that run_all.py rewrites only its own section of the document.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import require_binary

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"


def run(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_scale_benchmark_reports_every_strategy_in_smoke_mode() -> None:
    out = run(str(BENCH / "scale.py"), "--smoke").stdout
    for strategy in ("round_robin", "random", "least_request", "peak_ewma", "ring_hash",
                     "maglev"):
        assert f"| `{strategy}` |" in out
    assert "KiB" in out


@pytest.mark.servers
def test_run_all_smoke_rewrites_only_its_section_and_draws_the_charts(tmp_path: Path) -> None:
    """Runs tail_latency, failover and scale (smoke) against nginx and HAProxy."""
    require_binary("nginx", "/usr/sbin/nginx")
    require_binary("haproxy", "/usr/sbin/haproxy")
    doc = tmp_path / "performance.md"
    doc.write_text("# Performance\n\nhand-written intro\n\n<!-- run_all:start -->\nold\n"
                   "<!-- run_all:end -->\n\n## Hand-written after\n")
    img = tmp_path / "img"
    run(str(BENCH / "run_all.py"), "--smoke", "--no-overhead", "--output", str(doc),
        "--img", str(img))
    text = doc.read_text()
    assert text.startswith("# Performance\n\nhand-written intro\n\n<!-- run_all:start -->")
    assert text.rstrip().endswith("## Hand-written after")
    assert "\nold\n" not in text and text.count("<!-- run_all:start -->") == 1
    for row in ("oracle (4 fast backends)", "clientlb peak_ewma", "nginx round robin",
                "nginx least_conn", "HAProxy leastconn", "backend 0 hangs", "memory per endpoint"):
        assert row in text, row
    for name in ("perf_tail_latency.png", "perf_reaction.png", "perf_failover.png"):
        assert (img / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f"(img/{name})" in text

"""The subsetting example of the guide and the subsetting benchmark (smoke mode) run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str, cwd: Path = ROOT, timeout: float = 120) -> str:
    result = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                            timeout=timeout, env={**os.environ, "PYTHONWARNINGS": "error"})
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_guide_example_balances_four_pods_over_six_backends() -> None:
    out = run(str(ROOT / "examples" / "subsetting.py"), cwd=ROOT / "examples")
    assert "each backend served: {'web-1': 40, 'web-2': 40, 'web-3': 40, 'web-4': 40, " \
           "'web-5': 40, 'web-6': 40}" in out
    assert len(re.findall(r"^pod \d uses \{", out, flags=re.M)) == 4
    assert "client_index=1, client_count=4, place='config'" in out
    assert "discovered: 6" in out
    assert "widened by 1: width 0.50 -> 0.67" in out
    assert "back to 3 endpoints" in out
    assert "place 1 of 3 (peers), size 6" in out
    assert out.rstrip().endswith("ok")


def test_subsetting_benchmark_smoke_reports_every_mode_and_draws_the_charts(
        tmp_path: Path) -> None:
    out = run(str(ROOT / "benchmarks" / "subsetting.py"), "--smoke", "--img", str(tmp_path))
    for fleet in ("100 × 30", "300 × 90"):
        for mode in ("full mesh", "random subset", "aperture"):
            assert f"| {fleet} | {mode} |" in out, (fleet, mode)
    # the aperture's expected load is exactly even, whatever the sampling noise
    assert re.search(r"\| 300 × 90 \| aperture \| .* \| 1\.000 \| \d\.\d+ \(1\.000\) \|", out)
    for name in ("perf_subsetting.png", "perf_subsetting_load.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name

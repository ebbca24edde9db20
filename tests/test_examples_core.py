"""The core examples run and say what they claim."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_example(name: str, timeout: float = 60) -> str:
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / name)], capture_output=True,
                          text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_strategies_demo_shows_peak_ewma_avoiding_the_slow_backend() -> None:
    out = run_example("strategies_demo.py")
    rows = {line.split()[0]: line.split() for line in out.splitlines()
            if len(line.split()) == 7 and line.split()[0] in {"round_robin", "peak_ewma"}}
    slow_share_rr = float(rows["round_robin"][4].rstrip("%"))
    slow_share_ewma = float(rows["peak_ewma"][4].rstrip("%"))
    assert slow_share_rr == 25.0
    assert slow_share_ewma < 5.0
    assert float(rows["peak_ewma"][6]) < float(rows["round_robin"][6]) / 3  # p99


def test_control_room_example_mounts_in_starlette_fastapi_and_litestar() -> None:
    out = run_example("control_room.py")
    for framework in ("starlette", "fastapi", "litestar"):
        line = next(x for x in out.splitlines() if x.startswith(framework))
        assert "200 home, dashboard 200, drain -> draining (draining)" in line
        assert line.endswith("without the token -> 401")
    assert out.rstrip().endswith("ok")

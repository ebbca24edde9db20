"""The health example runs against the servers it starts and shows what it claims."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_health_failover_example_ejects_recovers_skips_unhealthy_and_panics() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "health_failover.py")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    rows = {}
    for line in proc.stdout.splitlines():
        m = re.match(r"(\d) .*served: a=(\d+) b=(\d+) c=(\d+)\s+errors=(\d+)\s+mode=(\w+)", line)
        if m:
            rows[int(m[1])] = ([int(m[i]) for i in (2, 3, 4)], int(m[5]), m[6], line)
    assert sorted(rows) == [1, 2, 3, 4, 5], proc.stdout
    assert rows[1][:3] == ([10, 10, 10], 0, "normal")
    assert rows[2][0][1] == 5 and rows[2][1] == 5 and "b=ejected" in rows[2][3]
    assert rows[3][0][1] > 0 and rows[3][1] == 0
    assert rows[4][0][2] == 0 and "c=unhealthy" in rows[4][3]
    assert rows[5][2] == "panic" and all(n > 0 for n in rows[5][0])
    assert "-> ejected (consecutive_failures: 5 in a row" in proc.stderr


def test_health_options_example_runs_every_documented_block() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "health_options.py")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "outlier: {'A': 'ejected', 'other': 'healthy'}" in out
    assert "checks: probes passed = 2" in out
    assert "panic: mode = panic picked: [False, True]" in out
    assert "slow start: {'old': 1.0, 'new': 0.1}" in out
    assert re.search(r"priorities: \{'[^']+': 1\.0, '[^']+': 1\.0, '[^']+': 0\.0\}", out)
    assert "zones: same-zone share = 100 %" in out
    assert "circuit: balancer 100 -> " in out and "max_requests=100" in out
    assert "stats: ejections = 1 ejected now = 1" in out


def test_health_benchmark_runs_in_smoke_mode() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "health.py"), "--smoke"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "default (outlier detection on)" in proc.stdout
    assert "reaction: a failing endpoint received 5 of 1000 calls (state ejected)" in proc.stdout

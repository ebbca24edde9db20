"""Recovery after a total outage (issue 13): every endpoint down, then one comes back.

Runs benchmarks/outage.py in its smoke mode (0.5 s of outage, 2 s measured after the
return) on real HTTP servers: sync and async clients, with outlier detection on (the
dead endpoints get ejected during the outage) and off. At least 99 % of the requests
sent from 1 s after the endpoint is back must succeed, and the first success must come
within 1.5 s (the reconnect probe's backoff is capped at 1 s).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_one_endpoint_back_after_a_total_outage_serves_at_once_ejected_or_not() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "outage.py"), "--smoke"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = re.findall(r"^\| (sync|async) \| (on|off) \| (\d+) ms \| (\d+) \| (\d+) \| ",
                      result.stdout, re.M)
    assert len(rows) == 4, result.stdout
    for mode, ejection, first_ms, sent, failed in rows:
        assert int(first_ms) < 1500, (mode, ejection, first_ms)
        assert int(sent) > 0
        assert int(failed) <= 0.01 * int(sent), (mode, ejection, sent, failed)

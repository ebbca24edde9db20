"""examples/grpc_quickstart.py runs for real against the local gRPC servers it starts."""

from __future__ import annotations

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

"""The database examples run for real: PostgreSQL streaming replicas and Redis replicas
on loopback, one replica stopped mid-run, every read still succeeds."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import require_binary

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

pytestmark = pytest.mark.servers


def run_example(name: str, *args: str, env: dict[str, str] | None = None,
                timeout: float = 150) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True,
        timeout=timeout, cwd=ROOT, env={**os.environ, **(env or {})})


def test_postgres_reads_survive_a_replica_stop() -> None:
    """Reads over two streaming replicas go on when one is stopped; writes reach them."""
    initdb = require_binary("initdb", *sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb")))
    result = run_example("postgres_replicas.py", "--reads", "160",
                         env={"PG_BINDIR": str(Path(initdb).resolve().parent)})
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "(streaming, hot standby)" in out
    assert "stopped replica1" in out
    assert "reads: 160 ok, 0 failed" in out
    assert "after the stop: {'replica2':" in out
    assert "OK: every read succeeded through the replica stop" in out


def test_redis_reads_survive_a_replica_kill() -> None:
    """GETs over two Redis replicas go on when one is killed, with the right values."""
    require_binary("redis-server")
    result = run_example("redis_replicas.py", "--reads", "300")
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "killed replica1" in out
    assert "reads: 300 ok, 0 failed, 0 wrong values" in out
    assert "after the kill: {'replica2':" in out
    assert "OK: every read succeeded through the replica kill" in out

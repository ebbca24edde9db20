"""The TCP examples run for real: the quick start, and PostgreSQL streaming replicas
and Redis replicas on loopback with one replica stopped mid-run, every read succeeding."""

from __future__ import annotations

import ast
import glob
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import require_binary

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

def run_example(name: str, *args: str, env: dict[str, str] | None = None,
                timeout: float = 150) -> subprocess.CompletedProcess[str]:
    """Run an example; on timeout stop it with SIGTERM so it can stop its servers."""
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLES / name), *args], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ, **(env or {})})
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()  # the examples turn SIGTERM into a clean shutdown
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        pytest.fail(f"{name} did not finish in {timeout}s:\n{out}{err}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.servers
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


@pytest.mark.servers
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


def test_tcp_quickstart_runs() -> None:
    """The quick start of docs/tcp.md: spread, least_request, TLS, asyncio."""
    result = run_example("tcp_quickstart.py", timeout=60)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    # every server serves; the dead port leaves the rotation after its one failure, and the
    # round-robin picker rebuilt without it restarts its cycle, so shares are 1 to 3
    counts = ast.literal_eval(re.search(r"six connections: (\{.*?\})", out).group(1))
    assert sorted(counts) == [f"hello from echo{i}" for i in range(3)]
    assert sum(counts.values()) == 6
    assert "no error surfaced" in out
    assert "the next two went to ['echo0', 'echo0']; open now: {" in out
    assert "verified as 'echo.internal'" in out
    assert "wrong name refused: SSLCertVerificationError" in out
    assert "echoed 'async ping'" in out
    assert re.search(r"5\. generic pattern: 'hello from echo\d'", out)
    assert "6. connect(target): 'hello from echo0'" in out

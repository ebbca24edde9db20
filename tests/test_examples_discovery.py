"""The discovery examples run for real against the servers they start (etcd, Knot DNS),
and the discovery benchmark runs in its smoke mode (no timing assertions)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import require_binary

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.servers


def run(*args: str) -> str:
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True,
                            timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_etcd_example_follows_scale_out_scale_in_and_survives_etcd_stopping() -> None:
    require_binary("etcd")
    out = run(str(ROOT / "examples" / "discovery_etcd.py"))
    assert "two registered: {'web-1': 3, 'web-2': 3}" in out
    assert "after scale-out: {'web-1': 2, 'web-2': 2, 'web-3': 2}" in out
    assert "after scale-in: {'web-2': 3, 'web-3': 3}" in out
    assert "etcd stopped: {'web-2': 3, 'web-3': 3} endpoints kept: 2" in out
    assert out.rstrip().endswith("ok")


def test_srv_example_maps_priorities_and_weights_and_follows_an_update() -> None:
    require_binary("knotd", "/usr/sbin/knotd")
    out = run(str(ROOT / "examples" / "discovery_srv.py"))
    assert "priority level 0, weight 3, SRV 10 3" in out
    assert "priority level 1, weight 1, SRV 20 0" in out
    assert "spread: {'web-1': 6, 'web-2': 2}" in out
    assert "after the update: {'web-1': 3, 'web-2': 1, 'web-3': 4}" in out
    assert out.rstrip().endswith("ok")


def test_discovery_benchmark_smoke_mode_runs() -> None:
    out = run(str(ROOT / "benchmarks" / "discovery.py"), "--smoke")
    assert "update applied" in out and "p99 ratio" in out


def test_consul_example_follows_health_and_registrations_without_showing_the_token() -> None:
    out = run(str(ROOT / "examples" / "discovery_consul.py"))
    assert "passing: {'web-1': 4, 'web-2': 4}" in out
    assert "web-1 warning: {'web-1': 2, 'web-2': 6}" in out
    assert "web-1 critical: {'web-2': 8}" in out
    assert "web-3 registered: {'web-2': 4, 'web-3': 4}" in out
    assert "token=set" in out and "app-token-123" not in out
    assert out.rstrip().endswith("ok")

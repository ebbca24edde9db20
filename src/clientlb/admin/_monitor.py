"""What the control room shows: each service as plain data, and the history behind its charts.

:class:`Monitor` turns a :class:`~clientlb.Registry` into JSON-ready
dictionaries (one per service, one per endpoint) and keeps, per endpoint, a
short history of its share of the requests and of its latency estimate —
the charts of the dashboard and the "success rate" and "share" columns.

Why sampled, and not counted on the request path: the balancer already
keeps cumulative request and failure counts per endpoint
(``lb.snapshot()``); the monitor reads them once a second (``tick()``) and
keeps the differences. Watching the dashboard therefore costs the request
path nothing but one ``snapshot()`` per balancer per second, however many
browsers watch (benchmarks/admin_overhead.py measures it).

Defaults: one sample a second (``INTERVAL``), 180 samples of history (the
last three minutes, ``HISTORY``), success rate and share over the last 10
samples (``WINDOW``).

Nothing secret leaves this module: targets are shown as ``str(target)``,
which masks ``token=`` and ``password=``, discovery errors are the
resolver's secret-free text with any ``token=``/``password=`` masked again,
and neither endpoint metadata nor ``resolver_options`` is shown.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .._core.balancer import BalancerSnapshot, LoadBalancer
from .._ops.registry import Registry

__all__ = ["HISTORY", "INTERVAL", "WINDOW", "Monitor", "mask_secrets"]

INTERVAL = 1.0
HISTORY = 180
WINDOW = 10

_SECRET_PARAM = re.compile(r"(?i)\b(token|password|passwd|secret)=([^&\s'\"]*)")


def mask_secrets(text: str) -> str:
    """``text`` with the value of any ``token=``/``password=``-like parameter masked."""
    return _SECRET_PARAM.sub(r"\1=***", text)


@dataclass
class _History:
    """One balancer's samples: per tick, per address, (requests, failures, latency ms)."""

    lb: LoadBalancer
    last: dict[str, tuple[int, int]] = field(default_factory=dict)
    times: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY))
    samples: deque[dict[str, tuple[int, int, float]]] = field(
        default_factory=lambda: deque(maxlen=HISTORY))

    def add(self, when: float, snap: BalancerSnapshot) -> None:
        sample: dict[str, tuple[int, int, float]] = {}
        last: dict[str, tuple[int, int]] = {}
        for row in snap.endpoints:
            before = self.last.get(row.address)
            # a counter that went down is a new endpoint state (it left and came back)
            requests = row.requests - before[0] if before and row.requests >= before[0] \
                else (row.requests if before else 0)
            failures = row.failures - before[1] if before and row.failures >= before[1] \
                else (row.failures if before else 0)
            sample[row.address] = (requests, failures, row.ewma_latency * 1000.0)
            last[row.address] = (row.requests, row.failures)
        self.last = last
        self.times.append(when)
        self.samples.append(sample)

    def window(self, address: str) -> tuple[int, int, int]:
        """(requests of ``address``, its failures, requests of all) over the last WINDOW."""
        mine = fails = total = 0
        for sample in list(self.samples)[-WINDOW:]:
            for addr, (requests, failures, _) in sample.items():
                total += requests
                if addr == address:
                    mine += requests
                    fails += failures
        return mine, fails, total

    def series(self, address: str) -> tuple[list[float | None], list[float | None]]:
        """Per sample: the share of requests (%) and the latency estimate (ms) of ``address``."""
        shares: list[float | None] = []
        latencies: list[float | None] = []
        for sample in self.samples:
            row = sample.get(address)
            total = sum(r for r, _, _ in sample.values())
            if row is None:
                shares.append(None)
                latencies.append(None)
                continue
            shares.append(round(100.0 * row[0] / total, 1) if total else 0.0)
            latencies.append(round(row[2], 2))
        return shares, latencies


class Monitor:
    """Samples a registry's balancers and renders them as JSON-ready data (thread-safe).

    ``tick()`` takes one sample of every balancer (the sampler task calls it
    every ``INTERVAL``); ``services()`` and ``service(name)`` build the data
    the API answers and the dashboard shows; ``latest`` is the JSON text of
    the last tick, shared by every live watcher.
    """

    def __init__(self, registry: Registry, *, clock: Any = time.time) -> None:
        self.registry = registry
        self._clock = clock
        self._lock = threading.Lock()
        self._history: dict[str, _History] = {}
        self.latest = ""
        self.ticks = 0

    def tick(self) -> str:
        """Sample every balancer once; returns (and keeps as ``latest``) the JSON of the view."""
        now = self._clock()
        snapshots = self._snapshots()
        with self._lock:
            for name in [n for n in self._history if n not in snapshots]:
                del self._history[name]
            for name, (lb, snap) in snapshots.items():
                history = self._history.get(name)
                if history is None or history.lb is not lb:  # new, or deleted and re-created
                    history = self._history[name] = _History(lb)
                history.add(now, snap)
            self.ticks += 1
        return self._publish(now, snapshots)

    def publish(self) -> str:
        """Render ``latest`` again without taking a sample (after a change: show it now)."""
        return self._publish(self._clock(), self._snapshots())

    def _publish(self, now: float,
                 snapshots: dict[str, tuple[LoadBalancer, BalancerSnapshot]]) -> str:
        data = self._render(snapshots, charts=True)
        text = json.dumps({"time": now, "services": data}, separators=(",", ":"),
                          allow_nan=False)
        self.latest = text
        return text

    def services(self, *, charts: bool = False) -> list[dict[str, Any]]:
        """Every service, sorted by name."""
        return self._render(self._snapshots(), charts=charts)

    def service(self, name: str, *, charts: bool = False) -> dict[str, Any] | None:
        """One service, or None when there is no such service."""
        try:
            lb = self.registry.get(name)
        except KeyError:
            return None
        return self._render({name: (lb, lb.snapshot())}, charts=charts)[0]

    # -- rendering ------------------------------------------------------------------------

    def _snapshots(self) -> dict[str, tuple[LoadBalancer, BalancerSnapshot]]:
        out: dict[str, tuple[LoadBalancer, BalancerSnapshot]] = {}
        for name in self.registry.names():
            try:
                lb = self.registry.get(name)
            except KeyError:  # deleted meanwhile
                continue
            out[name] = (lb, lb.snapshot())
        return out

    def _render(self, snapshots: dict[str, tuple[LoadBalancer, BalancerSnapshot]], *,
                charts: bool) -> list[dict[str, Any]]:
        with self._lock:
            histories = {name: self._history.get(name) for name in snapshots}
            return [_service(name, lb, snap, histories[name] if histories[name] is not None
                             and histories[name].lb is lb else None, charts)  # type: ignore[union-attr]
                    for name, (lb, snap) in sorted(snapshots.items())]


def _service(name: str, lb: LoadBalancer, snap: BalancerSnapshot, history: _History | None,
             charts: bool) -> dict[str, Any]:
    now = lb.clock()
    endpoints = []
    for row in sorted(snap.endpoints, key=lambda r: (r.endpoint.priority, r.address)):
        ep = row.endpoint
        state = lb.state_of(row.address)
        ejected_for = None
        if row.state == "ejected" and state is not None and state.ejected_until is not None:
            ejected_for = round(max(0.0, state.ejected_until - now), 1)
        # the health layer sets ramp_start while slow start ramps the weight up, and
        # clears it at the first rebuild after the ramp (so: at the next pick)
        slow_start = bool(row.state == "healthy" and state is not None
                          and state.ramp_start is not None)
        item: dict[str, Any] = {
            "address": row.address,
            "host": ep.host,
            "port": ep.port,
            "zone": ep.zone,
            "priority": ep.priority,
            "weight": _number(ep.weight),
            "effective_weight": _number(round(row.effective_weight, 4)),
            "state": row.state,
            "connectivity": str(getattr(row, "connectivity", "idle")),
            "ejected_for": ejected_for,
            "slow_start": slow_start,
            "in_flight": row.in_flight,
            "latency_ms": _number(round(row.ewma_latency * 1000.0, 3)),
            "requests": row.requests,
            "failures": row.failures,
            "ejections": row.ejection_count,
            "success_rate": None,
            "share": None,
            "note": mask_secrets(state.note) if state is not None and state.note else "",
        }
        if history is not None:
            mine, fails, total = history.window(row.address)
            item["success_rate"] = round(100.0 * (mine - fails) / mine, 1) if mine else None
            item["share"] = round(100.0 * mine / total, 1) if total else None
            if charts:
                shares, latencies = history.series(row.address)
                item["chart"] = {"share": shares, "latency_ms": latencies}
        endpoints.append(item)
    return {
        "name": name,
        "target": mask_secrets(snap.target),
        "scheme": lb.target.scheme,
        "strategy": snap.strategy,
        "mode": snap.mode,
        "discovery": _discovery(lb),
        "in_flight": sum(e["in_flight"] for e in endpoints),
        "hedging": _hedging(snap.hedging),
        "endpoints": endpoints,
    }


def _hedging(statistics: dict[str, Any] | None) -> dict[str, Any] | None:
    """``snapshot().hedging`` for JSON: the counters, and the adaptive delay in ms."""
    if statistics is None:
        return None
    out = {k: v for k, v in statistics.items() if k != "adaptive_delay"}
    delay = statistics.get("adaptive_delay")
    out["adaptive_delay_ms"] = None if delay is None else _number(round(delay * 1000.0, 3))
    return out


def _discovery(lb: LoadBalancer) -> dict[str, Any]:
    """Discovery status: when the set last changed or was confirmed, and the last error."""
    statistics = getattr(lb.resolver, "statistics", None)  # static targets have none
    if statistics is None:
        return {"kind": "static", "last_update_age": None, "last_error": None, "updates": None,
                "errors": None, "consecutive_errors": None}
    stats = statistics()
    age = None
    if stats.last_success is not None:  # the resolver's clock: time.monotonic by default
        age = round(max(0.0, time.monotonic() - stats.last_success), 1)
    return {
        "kind": lb.target.scheme,
        "last_update_age": age,
        "last_error": mask_secrets(stats.last_error) if stats.last_error else None,
        "updates": stats.updates,
        "errors": stats.errors,
        "consecutive_errors": stats.consecutive_errors,
    }


def _number(value: float) -> float | None:
    """JSON has no NaN or infinity: those become null."""
    return value if math.isfinite(value) else None

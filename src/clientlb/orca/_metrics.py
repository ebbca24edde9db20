"""What a server reports: process-wide metrics and per-call ones (gRFC A51's recorders).

:class:`ServerMetrics` holds the values every response reports: the process
CPU utilization (measured), the rate of requests and errors (counted by the
middleware and interceptors), and what the application supplies —
``application_utilization`` (what ``weighted_round_robin`` weighs by, when
set), memory utilization, named utilizations and named metrics, as values or
as callables read at report time. :class:`CallMetrics` holds what one handler
adds for its own response (:func:`call_metrics`); its values override the
server's for that response.

CPU utilization is the process's CPU time (``time.process_time``: every thread,
user and system) over wall time and the CPUs it may run on
(``os.sched_getaffinity``), measured over ``window`` seconds: 1.0 means every
available CPU busy with this process. qps and eps are counted over the last
``window`` seconds (ten sliding buckets).
"""

from __future__ import annotations

import contextvars
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Union

from .._engine.orca import LoadReport

__all__ = ["CallMetrics", "ServerMetrics", "call_metrics", "server_metrics"]

Value = Union[float, Callable[[], float]]  # noqa: UP007 - a runtime alias, valid on 3.10
_BUCKETS = 10


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not name or any(c in name for c in ",=: \t\r\n"):
        raise ValueError(f"metric name must be a non-empty string without ',', '=', ':' or "
                         f"spaces, got {name!r}")
    return name


def _check_value(what: str, value: object, *, signed: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or (value < 0 and not signed):
        rule = "a finite number" if signed else "a finite number >= 0"
        raise ValueError(f"{what} must be {rule}, got {value!r}")
    return float(value)


def _read(what: str, value: Value, *, signed: bool = False) -> float:
    return _check_value(what, value() if callable(value) else value, signed=signed)


class _Rate:
    """Events per second over the last ``window`` seconds (thread-safe)."""

    __slots__ = ("_counts", "_keys", "_lock", "_start", "_width", "window")

    def __init__(self, window: float, now: float) -> None:
        self.window = window
        self._width = window / _BUCKETS
        self._counts = [0] * _BUCKETS
        self._keys = [-1] * _BUCKETS
        self._start = now
        self._lock = threading.Lock()

    def add(self, now: float) -> None:
        key = int(now / self._width)
        i = key % _BUCKETS
        with self._lock:
            if self._keys[i] != key:
                self._keys[i] = key
                self._counts[i] = 0
            self._counts[i] += 1

    def rate(self, now: float) -> float:
        width = self._width
        key = int(now / width)
        with self._lock:
            total = sum(c for k, c in zip(self._keys, self._counts, strict=True)
                        if key - _BUCKETS < k <= key)
        span = (_BUCKETS - 1 + (now / width - key)) * width  # 9 full buckets + this one
        # a younger process: since it started, but at least one bucket's width
        return total / max(width, min(span, now - self._start))


class _CPU:
    """This process's CPU utilization, sampled at most once per ``window``."""

    __slots__ = ("_cpu_time", "_cpus", "_lock", "_t0", "_value", "_wall0", "window")

    def __init__(self, window: float, now: float, cpu_time: Callable[[], float]) -> None:
        self.window = window
        self._cpu_time = cpu_time
        try:
            cpus = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):  # not on Linux
            cpus = os.cpu_count() or 1
        self._cpus = max(1, cpus)
        self._wall0 = now
        self._t0 = cpu_time()
        self._value = 0.0
        self._lock = threading.Lock()

    def utilization(self, now: float) -> float:
        if now - self._wall0 >= self.window and self._lock.acquire(blocking=False):
            try:
                t = self._cpu_time()
                elapsed = now - self._wall0
                if elapsed > 0:
                    self._value = max(0.0, (t - self._t0) / elapsed / self._cpus)
                self._wall0, self._t0 = now, t
            finally:
                self._lock.release()
        return self._value


class CallMetrics:
    """Metrics one handler reports with its own response (see :func:`call_metrics`).

    Set inside a request handler; the middleware or interceptor adds them to
    the response's report, over the server's values of the same names.
    """

    __slots__ = ("application_utilization", "cpu_utilization", "mem_utilization",
                 "named_metrics", "request_cost", "utilization")

    def __init__(self) -> None:
        self.application_utilization: float | None = None
        self.cpu_utilization: float | None = None
        self.mem_utilization: float | None = None
        self.utilization: dict[str, float] = {}
        self.request_cost: dict[str, float] = {}
        self.named_metrics: dict[str, float] = {}

    def set_application_utilization(self, value: float) -> None:
        self.application_utilization = _check_value("application_utilization", value)

    def set_cpu_utilization(self, value: float) -> None:
        self.cpu_utilization = _check_value("cpu_utilization", value)

    def set_mem_utilization(self, value: float) -> None:
        self.mem_utilization = _check_value("mem_utilization", value)

    def set_utilization(self, name: str, value: float) -> None:
        self.utilization[_check_name(name)] = _check_value(f"utilization[{name!r}]", value)

    def set_request_cost(self, name: str, value: float) -> None:
        self.request_cost[_check_name(name)] = _check_value(f"request_cost[{name!r}]", value)

    def set_named_metric(self, name: str, value: float) -> None:
        self.named_metrics[_check_name(name)] = _check_value(
            f"named_metrics[{name!r}]", value, signed=True)


_current: contextvars.ContextVar[CallMetrics | None] = contextvars.ContextVar(
    "clientlb_orca_call", default=None)


def call_metrics() -> CallMetrics:
    """The current call's :class:`CallMetrics`, inside a handler served through
    :class:`OrcaMiddleware` or an ORCA server interceptor.

    Outside such a call it returns a new recorder whose values go nowhere.
    """
    call = _current.get()
    return call if call is not None else CallMetrics()


class ServerMetrics:
    """The load a server process reports on every response (an ORCA load report).

    ::

        metrics = clientlb.orca.server_metrics()        # the process-wide one
        metrics.set_application_utilization(lambda: busy_workers / workers)
        metrics.set_named_metric("queue", lambda: len(queue))

    Args:
        cpu: measure the process's CPU utilization and report it as
            ``cpu_utilization`` (default True).
        window: seconds over which CPU, qps and eps are measured (default 1.0).
        clock: a monotonic clock (default ``time.monotonic``).
        cpu_time: the process CPU time in seconds (default ``time.process_time``).
    """

    def __init__(self, *, cpu: bool = True, window: float = 1.0,
                 clock: Callable[[], float] = time.monotonic,
                 cpu_time: Callable[[], float] = time.process_time) -> None:
        if isinstance(window, bool) or not isinstance(window, (int, float)) \
                or not math.isfinite(window) or window <= 0:
            raise ValueError(f"window must be a finite number > 0 seconds, got {window!r}")
        self._clock = clock
        now = clock()
        self._cpu = _CPU(float(window), now, cpu_time) if cpu else None
        self._requests = _Rate(float(window), now)
        self._errors = _Rate(float(window), now)
        self._lock = threading.Lock()
        self._scalars: dict[str, Value] = {}
        self._utilization: dict[str, Value] = {}
        self._named: dict[str, Value] = {}

    # -- what the application supplies (a value, a callable, or None to remove) -------------

    def _set(self, table: dict[str, Value], name: str, value: Value | None, what: str,
             signed: bool = False) -> None:
        if value is not None and not callable(value):
            _check_value(what, value, signed=signed)
        with self._lock:
            if value is None:
                table.pop(name, None)
            else:
                table[name] = value

    def set_application_utilization(self, value: Value | None) -> None:
        """The utilization the application defines (``weighted_round_robin`` uses it
        rather than the CPU's when set): a fraction, or a callable returning one."""
        self._set(self._scalars, "application_utilization", value, "application_utilization")

    def set_cpu_utilization(self, value: Value | None) -> None:
        """Report this instead of the measured CPU utilization (None: measure again)."""
        self._set(self._scalars, "cpu_utilization", value, "cpu_utilization")

    def set_mem_utilization(self, value: Value | None) -> None:
        self._set(self._scalars, "mem_utilization", value, "mem_utilization")

    def set_utilization(self, name: str, value: Value | None) -> None:
        """A named utilization (the report's ``utilization`` map)."""
        self._set(self._utilization, _check_name(name), value, f"utilization[{name!r}]")

    def set_named_metric(self, name: str, value: Value | None) -> None:
        """A named metric (the report's ``named_metrics`` map; any finite number)."""
        self._set(self._named, _check_name(name), value, f"named_metrics[{name!r}]",
                  signed=True)

    # -- what the helpers count -------------------------------------------------------------

    def record_request(self, *, error: bool = False) -> None:
        """Count one request served (``error``: it failed), for qps and eps."""
        now = self._clock()
        self._requests.add(now)
        if error:
            self._errors.add(now)

    def qps(self) -> float:
        """Requests per second counted over the last ``window`` (e.g. for an
        application utilization such as ``qps() / capacity``)."""
        return self._requests.rate(self._clock())

    def eps(self) -> float:
        """Failed requests per second over the last ``window``."""
        return self._errors.rate(self._clock())

    def report(self, call: CallMetrics | None = None) -> LoadReport:
        """The load report now: the server's values, overridden by ``call``'s."""
        now = self._clock()
        with self._lock:
            scalars = dict(self._scalars)
            utilization = dict(self._utilization)
            named = dict(self._named)
        values = {k: _read(k, v) for k, v in scalars.items()}
        if "cpu_utilization" not in values and self._cpu is not None:
            values["cpu_utilization"] = self._cpu.utilization(now)
        util = {k: _read(k, v) for k, v in utilization.items()}
        metrics = {k: _read(k, v, signed=True) for k, v in named.items()}
        cost: Mapping[str, float] = {}
        if call is not None:
            for name in ("application_utilization", "cpu_utilization", "mem_utilization"):
                value = getattr(call, name)
                if value is not None:
                    values[name] = value
            util.update(call.utilization)
            metrics.update(call.named_metrics)
            cost = dict(call.request_cost)
        return LoadReport(
            cpu_utilization=values.get("cpu_utilization", 0.0),
            mem_utilization=values.get("mem_utilization", 0.0),
            application_utilization=values.get("application_utilization", 0.0),
            rps_fractional=self._requests.rate(now), eps=self._errors.rate(now),
            utilization=util, request_cost=cost, named_metrics=metrics)

    def __repr__(self) -> str:
        now = self._clock()
        return (f"<ServerMetrics qps={self._requests.rate(now):.1f} "
                f"eps={self._errors.rate(now):.1f}>")


_default: ServerMetrics | None = None
_default_lock = threading.Lock()


def server_metrics() -> ServerMetrics:
    """The process-wide :class:`ServerMetrics` (created on first use), which the
    middleware and interceptors use unless given another."""
    global _default
    with _default_lock:
        if _default is None:
            _default = ServerMetrics()
        return _default

"""ORCA load reports: parsing them, and the hook that feeds them to the balancer.

ORCA (Open Request Cost Aggregation, gRFC A51 and the xDS ``OrcaLoadReport``
message) lets a backend tell its clients how loaded it is, on every response:
its CPU and memory utilization, an application-defined utilization, the
queries and errors per second it serves, and named metrics. clientlb's
``weighted_round_robin`` strategy (gRFC A58, ``_strategies/weighted_round_robin.py``)
turns them into endpoint weights.

Where a report travels (what the integrations read):

* **gRPC** — the trailer ``endpoint-load-metrics-bin``: a serialized
  ``xds.data.orca.v3.OrcaLoadReport``. grpcio's C core consumes that trailer
  for its own policies and does not pass it to Python (grpcio 1.85, sync and
  aio): a Python client reads the trailer ``endpoint-load-metrics`` instead, the
  report in the HTTP form below, which clientlb's server interceptors send too;
* **HTTP** — the response header ``endpoint-load-metrics``, in one of the three
  formats of the ORCA-over-HTTP proposal, as Envoy's parser reads them
  (``source/common/orca/orca_parser.cc``):

  - ``TEXT cpu_utilization=0.3, mem_utilization=0.8, rps_fractional=10, eps=1,
    named_metrics.queue=4`` — comma-separated ``key=value`` (``key:value`` is
    accepted too, as Envoy splits on ``:``); map fields are flattened as
    ``named_metrics.<name>``, ``utilization.<name>``, ``request_cost.<name>``;
  - ``JSON {"cpu_utilization": 0.3, "named_metrics": {"queue": 4}}`` — the
    protobuf JSON mapping (snake_case or lowerCamelCase names);
  - ``BIN <base64 of the serialized OrcaLoadReport>`` — and the legacy header
    ``endpoint-load-metrics-bin`` (the same, without the prefix).

Rules (Envoy's, except where noted): a duplicated key, a value that is not a
finite number, a negative utilization or rate, an unknown format prefix make
the whole report malformed. Unknown keys are *ignored* (Envoy rejects them):
a backend that adds a field must not switch its clients' weights off.

Malformed reports are never raised into the caller: :func:`record_headers` and
:func:`record_trailers` (the shells' hooks) count them on the endpoint
(:class:`EndpointLoadReports`, ``state.load_report``) and log the first one per
endpoint at WARNING. The binary forms need ``xds-protos`` (``pip install
clientlb[orca]``, part of ``clientlb[grpc]``), imported on first use so that
``import clientlb`` stays light; without it, TEXT and JSON reports still work
and binary ones are counted as *unsupported*, with one log line per process.

Reports are parsed only for balancers whose strategy reads them
(``Strategy.uses_load_reports``): other balancers pay one attribute look-up per
response.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import logging
import math
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .._core.state import EndpointState
    from .call import Completion

__all__ = [
    "HEADER",
    "TRAILER",
    "EndpointLoadReports",
    "LoadReport",
    "MalformedLoadReport",
    "UnsupportedLoadReport",
    "format_header",
    "load_reports_of",
    "parse_binary",
    "parse_header",
    "record_headers",
    "record_report",
    "record_trailers",
    "to_binary",
]

logger = logging.getLogger("clientlb.orca")

#: The HTTP response header, and the gRPC trailer (also accepted as an HTTP header).
HEADER = "endpoint-load-metrics"
TRAILER = "endpoint-load-metrics-bin"
_HEADER_B = HEADER.encode()
_TRAILER_B = TRAILER.encode()

#: The scalar fields of OrcaLoadReport, by their TEXT/JSON names (snake and camel case).
_SCALARS = {
    "cpu_utilization": "cpu_utilization", "cpuUtilization": "cpu_utilization",
    "mem_utilization": "mem_utilization", "memUtilization": "mem_utilization",
    "application_utilization": "application_utilization",
    "applicationUtilization": "application_utilization",
    "rps_fractional": "rps_fractional", "rpsFractional": "rps_fractional",
    "eps": "eps",
}
_MAPS = {
    "named_metrics": "named_metrics", "namedMetrics": "named_metrics",
    "utilization": "utilization",
    "request_cost": "request_cost", "requestCost": "request_cost",
}
#: Map fields whose values may be negative (a named metric is any number).
_SIGNED_MAPS = frozenset({"named_metrics"})


class MalformedLoadReport(ValueError):
    """A load report that cannot be read (the message says which part and why)."""


class UnsupportedLoadReport(MalformedLoadReport):
    """A binary load report, and ``xds-protos`` is not installed."""


@dataclass(frozen=True)
class LoadReport:
    """One ORCA load report (the fields of ``xds.data.orca.v3.OrcaLoadReport``).

    Utilizations are fractions (``cpu_utilization`` may exceed 1 on some
    platforms: it is relative to the CPUs the process may use), rates are per
    second; every field defaults to 0 (unset, as in proto3).
    """

    cpu_utilization: float = 0.0
    mem_utilization: float = 0.0
    application_utilization: float = 0.0
    rps_fractional: float = 0.0
    eps: float = 0.0
    utilization: Mapping[str, float] = field(default_factory=dict)
    request_cost: Mapping[str, float] = field(default_factory=dict)
    named_metrics: Mapping[str, float] = field(default_factory=dict)

    @property
    def qps(self) -> float:
        """Queries per second (``rps_fractional``)."""
        return self.rps_fractional

    @property
    def load_utilization(self) -> float:
        """The utilization that weights use (gRFC A58): ``application_utilization``
        when set (> 0), else ``cpu_utilization``."""
        app = self.application_utilization
        return app if app > 0.0 else self.cpu_utilization


# -- parsing --------------------------------------------------------------------------


def _number(key: str, value: Any, *, signed: bool = False) -> float:
    """A finite float from a TEXT token or a JSON value (proto JSON also allows strings)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise MalformedLoadReport(f"{key}: expected a number, got {value!r}")
    try:
        number = float(value)
    except (ValueError, OverflowError):
        raise MalformedLoadReport(f"{key}: expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise MalformedLoadReport(f"{key}: must be finite, got {value!r}")
    if number < 0.0 and not signed:
        raise MalformedLoadReport(f"{key}: must be >= 0, got {value!r}")
    return number


def _build(scalars: dict[str, float], maps: dict[str, dict[str, float]]) -> LoadReport:
    return LoadReport(**scalars, **maps)  # type: ignore[arg-type]


def _parse_text(payload: str) -> LoadReport:
    scalars: dict[str, float] = {}
    maps: dict[str, dict[str, float]] = {}
    seen: set[str] = set()
    for token in payload.split(","):
        key, sep, value = token.partition("=")
        if not sep or ":" in key:  # Envoy's key:value (and "a:b=c", cut at the first ':')
            key, sep, value = token.partition(":")
        key = key.strip()
        if not sep or not key:
            if not key and not value.strip():
                continue  # an empty token: "a=1,,b=2", or an empty report
            raise MalformedLoadReport(f"TEXT: {token.strip()[:40]!r} is not key=value")
        if key in seen:
            raise MalformedLoadReport(f"TEXT: duplicate metric {key!r}")
        seen.add(key)
        target = _SCALARS.get(key)
        if target is not None:
            scalars[target] = _number(key, value)
            continue
        prefix, dot, name = key.partition(".")
        if dot:
            target = _MAPS.get(prefix)
            if target is None:
                continue  # an unknown map: ignored
            if not name:
                raise MalformedLoadReport(f"TEXT: empty metric name in {key!r}")
            maps.setdefault(target, {})[name] = _number(
                key, value, signed=target in _SIGNED_MAPS)
    return _build(scalars, maps)


def _parse_json(payload: str) -> LoadReport:
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError) as exc:
        raise MalformedLoadReport(f"JSON: {exc}") from None
    if not isinstance(data, dict):
        raise MalformedLoadReport(f"JSON: expected an object, got {type(data).__name__}")
    scalars: dict[str, float] = {}
    maps: dict[str, dict[str, float]] = {}
    for key, value in data.items():
        if (target := _SCALARS.get(key)) is not None:
            if target in scalars:
                raise MalformedLoadReport(f"JSON: duplicate field {key!r}")
            scalars[target] = _number(key, value)
        elif (target := _MAPS.get(key)) is not None:
            if not isinstance(value, dict):
                raise MalformedLoadReport(f"JSON: {key} must be an object")
            if target in maps:
                raise MalformedLoadReport(f"JSON: duplicate field {key!r}")
            maps[target] = {str(name): _number(f"{key}.{name}", v,
                                               signed=target in _SIGNED_MAPS)
                            for name, v in value.items()}
    return _build(scalars, maps)


@functools.cache
def _message_class() -> Any:
    """``OrcaLoadReport`` from xds-protos, or None (logged once) when it is missing."""
    try:
        from xds.data.orca.v3 import orca_load_report_pb2
    except ImportError:
        logger.warning("binary ORCA load reports (gRPC trailers, HTTP 'BIN' headers) need the "
                       "xds-protos package: pip install 'clientlb[orca]'; they are ignored "
                       "(TEXT and JSON headers still work)")
        return None
    return orca_load_report_pb2.OrcaLoadReport


def parse_binary(data: bytes) -> LoadReport:
    """A report from a serialized ``OrcaLoadReport`` (the gRPC trailer's value).

    Raises:
        MalformedLoadReport: not a valid message, or a field out of range.
        UnsupportedLoadReport: ``xds-protos`` is not installed.
    """
    cls = _message_class()
    if cls is None:
        raise UnsupportedLoadReport("binary report: xds-protos is not installed")
    from google.protobuf.message import DecodeError

    try:
        msg = cls.FromString(bytes(data))
    except (DecodeError, ValueError, TypeError, RecursionError) as exc:
        raise MalformedLoadReport(f"binary report: {exc}") from None
    scalars = {name: _number(name, getattr(msg, name))
               for name in ("cpu_utilization", "mem_utilization", "application_utilization",
                            "rps_fractional", "eps")}
    if not scalars["rps_fractional"] and msg.rps:  # the deprecated integer field
        scalars["rps_fractional"] = float(msg.rps)
    maps = {name: {str(k): _number(f"{name}.{k}", v, signed=name in _SIGNED_MAPS)
                   for k, v in getattr(msg, name).items()}
            for name in ("utilization", "request_cost", "named_metrics")}
    return _build(scalars, maps)


def _b64decode(text: str) -> bytes:
    text = text.strip()
    if not text:
        raise MalformedLoadReport("BIN: empty value")
    try:
        data = text.encode("ascii")
        if b"-" in data or b"_" in data:
            data = data.replace(b"-", b"+").replace(b"_", b"/")
        return base64.b64decode(data + b"=" * (-len(data) % 4), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise MalformedLoadReport(f"BIN: not base64: {text[:40]!r}") from None


def parse_header(value: str | bytes) -> LoadReport:
    """A report from an ``endpoint-load-metrics`` header value (``TEXT``, ``JSON`` or ``BIN``).

    Raises:
        MalformedLoadReport: the value cannot be read (the message says why).
        UnsupportedLoadReport: a ``BIN`` value and ``xds-protos`` is not installed.
    """
    if isinstance(value, bytes):
        try:
            value = value.decode("latin-1")
        except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
            raise MalformedLoadReport("not text") from None
    text = value.lstrip()
    fmt, _, payload = text.partition(" ")
    if fmt == "TEXT":
        return _parse_text(payload)
    if fmt == "JSON":
        return _parse_json(payload)
    if fmt == "BIN":
        return parse_binary(_b64decode(payload))
    raise MalformedLoadReport(f"unsupported format {fmt[:8]!r} (TEXT, JSON or BIN)")


# -- encoding (the server side) -------------------------------------------------------


def _text_value(number: float) -> str:
    return repr(float(number))


def format_header(report: LoadReport, fmt: str = "TEXT") -> str:
    """The ``endpoint-load-metrics`` header value of ``report`` in ``fmt`` (TEXT, JSON, BIN).

    Fields at 0 are left out (unset in proto3). Metric names that would break
    the TEXT syntax (``,``, ``=``, ``:`` or spaces) raise ValueError: use JSON
    or BIN for those.
    """
    fmt = fmt.upper()
    if fmt == "BIN":
        return "BIN " + base64.b64encode(to_binary(report)).decode("ascii")
    scalars = {name: getattr(report, name)
               for name in ("cpu_utilization", "mem_utilization", "application_utilization",
                            "rps_fractional", "eps") if getattr(report, name)}
    maps = {name: dict(getattr(report, name))
            for name in ("utilization", "request_cost", "named_metrics")
            if getattr(report, name)}
    if fmt == "JSON":
        return "JSON " + json.dumps({**scalars, **maps}, separators=(",", ":"))
    if fmt != "TEXT":
        raise ValueError(f"format must be TEXT, JSON or BIN, got {fmt!r}")
    parts = [f"{k}={_text_value(v)}" for k, v in scalars.items()]
    for name, values in maps.items():
        for key, v in values.items():
            if not key or any(c in key for c in ",=: \t"):
                raise ValueError(f"metric name {key!r} cannot be sent in TEXT format "
                                 "(use JSON or BIN)")
            parts.append(f"{name}.{key}={_text_value(v)}")
    return "TEXT " + ",".join(parts)


def to_binary(report: LoadReport) -> bytes:
    """``report`` as a serialized ``OrcaLoadReport`` (needs ``xds-protos``).

    Raises:
        UnsupportedLoadReport: ``xds-protos`` is not installed.
    """
    cls = _message_class()
    if cls is None:
        raise UnsupportedLoadReport("binary report: xds-protos is not installed")
    msg = cls(cpu_utilization=report.cpu_utilization, mem_utilization=report.mem_utilization,
              application_utilization=report.application_utilization,
              rps_fractional=report.rps_fractional, eps=report.eps,
              utilization=dict(report.utilization), request_cost=dict(report.request_cost),
              named_metrics=dict(report.named_metrics))
    return bytes(msg.SerializeToString())


# -- the per-endpoint record and the shells' hooks --------------------------------------


class EndpointLoadReports:
    """What the balancer keeps of one endpoint's reports (``EndpointState.load_report``).

    ``latest`` is the last report read; ``weighted`` the last one a weight can
    be computed from (utilization > 0 and qps > 0, gRFC A58's "non-empty"
    report), received at ``last_updated``; ``non_empty_since`` is when the
    current run of such reports began (None: not yet, or reset by the strategy
    after an expiry or a return to rotation). Counters: ``reports`` read,
    ``malformed`` and ``unsupported`` ignored. Written by the reporting threads
    without a lock (single attribute stores; a report racing another may be
    lost, which only delays a weight by one report).
    """

    __slots__ = ("built", "last_updated", "latest", "malformed", "non_empty_since", "reports",
                 "unsupported", "weighted")

    def __init__(self) -> None:
        self.latest: LoadReport | None = None
        self.weighted: LoadReport | None = None
        self.last_updated = -math.inf
        self.non_empty_since: float | None = None
        self.reports = 0
        self.malformed = 0
        self.unsupported = 0
        #: Owned by the weighted_round_robin strategy: the sequence number of the
        #: last picker built with this endpoint.
        self.built = 0

    def record(self, report: LoadReport, now: float) -> None:
        self.latest = report
        self.reports += 1
        if report.load_utilization > 0.0 and report.rps_fractional > 0.0:
            if self.non_empty_since is None:
                self.non_empty_since = now
            self.weighted = report
            self.last_updated = now

    def __repr__(self) -> str:
        return (f"<EndpointLoadReports reports={self.reports} malformed={self.malformed} "
                f"unsupported={self.unsupported}>")


_create_lock = threading.Lock()


def load_reports_of(state: EndpointState) -> EndpointLoadReports:
    """The endpoint's report record, created on first use."""
    slot = state.load_report
    if slot is None:
        with _create_lock:
            slot = state.load_report
            if slot is None:
                slot = state.load_report = EndpointLoadReports()
    return slot  # type: ignore[no-any-return]


def _reads_reports(completion: Completion) -> bool:
    return bool(completion.pick.balancer.strategy.uses_load_reports)


def record_report(completion: Completion, report: LoadReport) -> None:
    """Record an already parsed ``report`` for the endpoint of ``completion``'s attempt."""
    pick = completion.pick
    load_reports_of(pick.state).record(report, pick.balancer.clock())


def _record_raw(completion: Completion, parse: Callable[[Any], LoadReport],
                value: str | bytes) -> None:
    pick = completion.pick
    state = pick.state
    slot = load_reports_of(state)
    try:
        report = parse(value)
    except UnsupportedLoadReport:
        slot.unsupported += 1
        return
    except MalformedLoadReport as exc:
        slot.malformed += 1
        level = logging.WARNING if slot.malformed == 1 else logging.DEBUG
        logger.log(level, "%s: malformed load report from %s ignored (%s)",
                   pick.balancer.name, state.address, exc)
        return
    slot.record(report, pick.balancer.clock())


def record_headers(completion: Completion,
                   headers: Iterable[tuple[bytes | str, bytes | str]]) -> None:
    """The HTTP shells' hook: read the ``endpoint-load-metrics`` response header (or the
    legacy ``endpoint-load-metrics-bin``) of the attempt's response. Never raises."""
    try:
        if not _reads_reports(completion):
            return
        for key, value in headers:
            name = key.lower() if isinstance(key, bytes) else key.lower().encode("latin-1")
            if name == _HEADER_B:
                _record_raw(completion, parse_header, value)
                return
            if name == _TRAILER_B:
                text = value.decode("latin-1") if isinstance(value, bytes) else value
                _record_raw(completion, parse_header, "BIN " + text)
                return
    except Exception:  # a hook must never fail the call it observes
        logger.debug("load report hook failed", exc_info=True)


def record_trailers(completion: Completion, trailing_metadata: Any) -> None:
    """The gRPC shells' hook: read the load report in an attempt's trailing metadata
    (sync: ``call.trailing_metadata()``; aio: ``await call.trailing_metadata()``), a
    sequence of ``(key, value)`` pairs or None. Never raises.

    The standard trailer ``endpoint-load-metrics-bin`` is read when present, but
    grpcio's C core keeps it for its own policies and does not pass it to Python
    (grpcio 1.85): what a Python client sees is ``endpoint-load-metrics``, the
    report in Envoy's HTTP form, which clientlb's server interceptors also send.
    """
    try:
        if not trailing_metadata or not _reads_reports(completion):
            return
        text: str | bytes | None = None
        for key, value in trailing_metadata:
            if key == TRAILER:
                if isinstance(value, str):  # not base64-decoded by grpcio: take it as BIN
                    _record_raw(completion, parse_header, "BIN " + value)
                else:
                    _record_raw(completion, parse_binary, value)
                return
            if key == HEADER:
                text = value
        if text is not None:
            _record_raw(completion, parse_header, text)
    except Exception:  # a hook must never fail the call it observes
        logger.debug("load report hook failed", exc_info=True)


def statistics(states: Iterable[EndpointState]) -> dict[str, int]:
    """Reports read, malformed and unsupported, summed over ``states``."""
    totals = {"reports": 0, "malformed": 0, "unsupported": 0}
    for state in states:
        slot = state.load_report
        if slot is not None:
            totals["reports"] += slot.reports
            totals["malformed"] += slot.malformed
            totals["unsupported"] += slot.unsupported
    return totals

"""An ASGI middleware that adds an ORCA load report to every HTTP response."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .._core.errors import ConfigError
from .._engine.orca import HEADER, UnsupportedLoadReport, format_header, to_binary
from .._engine.orca import LoadReport as _LoadReport
from ._metrics import CallMetrics, ServerMetrics, _current, server_metrics

__all__ = ["OrcaMiddleware"]

logger = logging.getLogger("clientlb.orca")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_FORMATS = ("TEXT", "JSON", "BIN")
_HEADER = HEADER.encode()
#: The request header a client may send to ask for a format (the ORCA-over-HTTP proposal).
_FORMAT_REQUEST = b"endpoint-load-metrics-format"


class OrcaMiddleware:
    """Adds the ``endpoint-load-metrics`` header to every HTTP response of ``app``.

    ::

        app = clientlb.orca.OrcaMiddleware(app)              # FastAPI, Starlette, any ASGI app

    The report is :meth:`ServerMetrics.report` at the moment the response
    starts — the process's CPU utilization, the qps and eps this middleware
    counted, the application's values — plus what the handler set with
    :func:`clientlb.orca.call_metrics` before it started the response. A client
    may ask for another format with the request header
    ``endpoint-load-metrics-format: text|json|bin``.

    Args:
        app: the ASGI application.
        metrics: the :class:`ServerMetrics` to report (default: the process-wide
            :func:`clientlb.orca.server_metrics`).
        format: ``"TEXT"`` (default; what Envoy and clientlb read without
            extra packages), ``"JSON"`` or ``"BIN"`` (needs ``xds-protos``).

    Responses with a status of 500 or more count as errors (``eps``), and so
    does an exception that escapes ``app`` before it started a response.

    Raises:
        ConfigError: an unknown format, or BIN without ``xds-protos``.
    """

    def __init__(self, app: ASGIApp, metrics: ServerMetrics | None = None, *,
                 format: str = "TEXT") -> None:
        fmt = format.upper() if isinstance(format, str) else format
        if fmt not in _FORMATS:
            raise ConfigError(f"format must be TEXT, JSON or BIN, got {format!r}",
                              field="format")
        if fmt == "BIN":
            try:
                to_binary(_LoadReport())
            except UnsupportedLoadReport:
                raise ConfigError("format BIN needs the xds-protos package: "
                                  "pip install 'clientlb[orca]'", field="format") from None
        self.app = app
        self.metrics = metrics if metrics is not None else server_metrics()
        self.format: str = fmt

    def _format_for(self, scope: Scope) -> str:
        for key, value in scope.get("headers") or ():
            if key == _FORMAT_REQUEST:
                asked = value.decode("latin-1").strip().upper()
                if asked in _FORMATS:
                    return str(asked)
        return self.format

    def _header(self, fmt: str, call: CallMetrics) -> bytes | None:
        try:
            report = self.metrics.report(call)
            try:
                value = format_header(report, fmt)
            except UnsupportedLoadReport:
                value = format_header(report, self.format)
            return value.encode("latin-1")
        except Exception:  # a report must never break the response
            logger.warning("load report not attached", exc_info=True)
            return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        call = CallMetrics()
        token = _current.set(call)
        metrics = self.metrics
        started = False

        async def send_with_report(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start" and not started:
                started = True
                metrics.record_request(error=int(message.get("status", 200)) >= 500)
                header = self._header(self._format_for(scope), call)
                if header is not None:
                    headers = [(k, v) for k, v in message.get("headers") or () if
                               k.lower() != _HEADER]
                    headers.append((_HEADER, header))
                    message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_report)
        except BaseException:
            if not started:
                metrics.record_request(error=True)
            raise
        finally:
            _current.reset(token)

    def __repr__(self) -> str:
        return f"<OrcaMiddleware format={self.format} {self.metrics!r}>"

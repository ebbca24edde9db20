"""gRPC server interceptors (grpcio and grpc.aio) that attach an ORCA report to every call.

The report goes in two trailers:

* ``endpoint-load-metrics-bin`` — the standard (gRFC A51): a serialized
  ``xds.data.orca.v3.OrcaLoadReport``, what gRPC's own ``weighted_round_robin``
  clients (C++, Java, Go) read;
* ``endpoint-load-metrics`` — the same report in Envoy's HTTP form (``TEXT``
  by default). grpcio's C core consumes ``endpoint-load-metrics-bin`` for its
  own load-balancing policies and never hands it to Python (sync or aio
  clients, checked with grpcio 1.85): this second trailer is the one a Python
  client — clientlb's balanced channels — can read.

The report is set when the handler returns (for a streaming response, after
its last message), merged with the trailing metadata the handler set. A call
counts as an error (``eps``) when its handler raised or set a status other
than OK.

With grpc.aio, ``await context.abort(...)`` sends the status at once: that
call carries no report (it is still counted in ``eps``, which the next
responses report).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc
import grpc.aio

from .._core.errors import ConfigError
from .._engine.orca import HEADER, TRAILER, UnsupportedLoadReport, format_header, to_binary
from .._engine.orca import LoadReport as _LoadReport
from ._metrics import CallMetrics, ServerMetrics, _current, server_metrics

__all__ = ["AioOrcaServerInterceptor", "OrcaServerInterceptor"]

logger = logging.getLogger("clientlb.orca")

_OK = grpc.StatusCode.OK
_KINDS = (("unary_unary", grpc.unary_unary_rpc_method_handler),
          ("unary_stream", grpc.unary_stream_rpc_method_handler),
          ("stream_unary", grpc.stream_unary_rpc_method_handler),
          ("stream_stream", grpc.stream_stream_rpc_method_handler))


_FORMATS = ("TEXT", "JSON", "BIN")


def _check(metrics: ServerMetrics | None, fmt: str | None) -> tuple[ServerMetrics, str | None]:
    try:
        to_binary(_LoadReport())
    except UnsupportedLoadReport:
        raise ConfigError("ORCA gRPC trailers need the xds-protos package: "
                          "pip install 'clientlb[grpc]'", field="interceptors") from None
    upper = fmt.upper() if isinstance(fmt, str) else fmt
    if upper is not None and upper not in _FORMATS:
        raise ConfigError(f"format must be TEXT, JSON, BIN or None, got {fmt!r}", field="format")
    return (metrics if metrics is not None else server_metrics()), upper


def _failed(context: Any) -> bool:
    try:
        code = context.code()
    except Exception:  # pragma: no cover - a context without code()
        return False
    return code is not None and code != _OK and code != 0


def _attach(context: Any, metrics: ServerMetrics, fmt: str | None, call: CallMetrics,
            error: bool) -> None:
    metrics.record_request(error=error)
    try:
        report = metrics.report(call)
        ours: tuple[tuple[str, Any], ...] = ((TRAILER, to_binary(report)),)
        if fmt is not None:
            ours += ((HEADER, format_header(report, fmt)),)
        existing = tuple((k, v) for k, v in (context.trailing_metadata() or ())
                         if k != TRAILER and k != HEADER)
        context.set_trailing_metadata((*existing, *ours))
    except Exception:  # a report must never break the call
        logger.warning("load report not attached", exc_info=True)


class _Report:
    """One call's report, for the sync and aio interceptors alike: its
    :class:`CallMetrics` are current while the handler runs, and the report is
    attached to the trailers when it ends — as an error unless :meth:`answered`."""

    __slots__ = ("call", "context", "error", "fmt", "metrics", "token")

    def __init__(self, context: Any, metrics: ServerMetrics, fmt: str | None) -> None:
        self.context = context
        self.metrics = metrics
        self.fmt = fmt
        self.error = True

    def __enter__(self) -> _Report:
        self.call = CallMetrics()
        self.token = _current.set(self.call)
        return self

    def answered(self) -> None:
        """The handler returned: an error only if it set a failing status."""
        self.error = _failed(self.context)

    def __exit__(self, *exc_info: object) -> None:
        with contextlib.suppress(ValueError):  # a stream closed from another context
            _current.reset(self.token)
        _attach(self.context, self.metrics, self.fmt, self.call, self.error)


def _rebuild(handler: Any, wrap: Callable[[str, Callable[..., Any]], Callable[..., Any]]) -> Any:
    for kind, factory in _KINDS:
        behavior = getattr(handler, kind, None)
        if behavior is not None:
            return factory(wrap(kind, behavior),
                           request_deserializer=handler.request_deserializer,
                           response_serializer=handler.response_serializer)
    return handler


class OrcaServerInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """A grpcio server interceptor attaching an ORCA report to every call's trailers.

    ::

        server = grpc.server(pool, interceptors=[clientlb.orca.OrcaServerInterceptor()])

    Args:
        metrics: the :class:`ServerMetrics` to report (default: the process-wide
            :func:`clientlb.orca.server_metrics`).
        format: the format of the ``endpoint-load-metrics`` trailer that Python
            clients read (``"TEXT"``, the default, ``"JSON"`` or ``"BIN"``); None
            sends only the standard ``endpoint-load-metrics-bin``.

    Raises:
        ConfigError: ``xds-protos`` is not installed, or an unknown format.
    """

    def __init__(self, metrics: ServerMetrics | None = None, *,
                 format: str | None = "TEXT") -> None:
        self.metrics, self.format = _check(metrics, format)

    def intercept_service(self, continuation: Callable[[Any], Any],
                          handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        return _rebuild(handler, self._wrap)

    def _wrap(self, kind: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
        metrics, fmt = self.metrics, self.format
        if kind.endswith("_stream"):
            def streaming(request: Any, context: Any) -> Iterator[Any]:
                with _Report(context, metrics, fmt) as report:
                    yield from behavior(request, context)
                    report.answered()
            return streaming

        def unary(request: Any, context: Any) -> Any:
            with _Report(context, metrics, fmt) as report:
                response = behavior(request, context)
                report.answered()
                return response
        return unary

    def __repr__(self) -> str:
        return f"<OrcaServerInterceptor {self.metrics!r}>"


class AioOrcaServerInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """The grpc.aio twin of :class:`OrcaServerInterceptor`.

    ::

        server = grpc.aio.server(interceptors=[clientlb.orca.AioOrcaServerInterceptor()])
    """

    def __init__(self, metrics: ServerMetrics | None = None, *,
                 format: str | None = "TEXT") -> None:
        self.metrics, self.format = _check(metrics, format)

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]],
                                handler_call_details: Any) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        return _rebuild(handler, self._wrap)

    def _wrap(self, kind: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
        metrics, fmt = self.metrics, self.format
        if inspect.isasyncgenfunction(behavior):
            async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
                with _Report(context, metrics, fmt) as report:
                    async for response in behavior(request, context):
                        yield response
                    report.answered()
            return streaming

        async def coroutine(request: Any, context: Any) -> Any:
            with _Report(context, metrics, fmt) as report:
                result = behavior(request, context)
                if inspect.isawaitable(result):
                    result = await result
                report.answered()
                return result
        return coroutine

    def __repr__(self) -> str:
        return f"<AioOrcaServerInterceptor {self.metrics!r}>"

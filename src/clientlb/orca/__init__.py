"""ORCA load reports: the server side, and the client side's parsers.

A backend that reports its load lets ``weighted_round_robin`` clients send it
traffic in proportion to its capacity (gRFC A58). This package gives servers
what they need to report:

* :class:`OrcaMiddleware` — an ASGI middleware adding the
  ``endpoint-load-metrics`` header to every HTTP response;
* :class:`OrcaServerInterceptor` and :class:`AioOrcaServerInterceptor` — grpcio
  and grpc.aio server interceptors adding the ``endpoint-load-metrics-bin``
  trailer to every call (they need ``xds-protos``, in ``clientlb[grpc]``);
* :class:`ServerMetrics` (:func:`server_metrics`, the process-wide one) — what
  is reported: the process CPU utilization, qps and eps, and the values the
  application supplies; :func:`call_metrics` — what one handler adds for its
  own response.

And the format itself: :class:`LoadReport`, :func:`parse_header`,
:func:`parse_binary`, :func:`format_header`, :func:`to_binary`, and
:func:`statistics` for a client balancer's counts of reports read and ignored.
See docs/strategies.md, "Weighted round robin (ORCA)".
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._engine.orca import (
    HEADER,
    TRAILER,
    LoadReport,
    MalformedLoadReport,
    UnsupportedLoadReport,
    format_header,
    parse_binary,
    parse_header,
    to_binary,
)
from .._engine.orca import statistics as _statistics
from ._asgi import OrcaMiddleware
from ._metrics import CallMetrics, ServerMetrics, call_metrics, server_metrics

if TYPE_CHECKING:
    from .._core.balancer import LoadBalancer
    from ._grpc import AioOrcaServerInterceptor, OrcaServerInterceptor

__all__ = [
    "HEADER",
    "TRAILER",
    "AioOrcaServerInterceptor",
    "CallMetrics",
    "LoadReport",
    "MalformedLoadReport",
    "OrcaMiddleware",
    "OrcaServerInterceptor",
    "ServerMetrics",
    "UnsupportedLoadReport",
    "call_metrics",
    "format_header",
    "parse_binary",
    "parse_header",
    "server_metrics",
    "statistics",
    "to_binary",
]


def statistics(lb: LoadBalancer) -> dict[str, int]:
    """A balancer's load reports: ``reports`` read, ``malformed`` and ``unsupported``
    ones ignored (binary reports without ``xds-protos``), over its current endpoints."""
    states = (lb.state_of(ep.address) for ep in lb.endpoints())
    return _statistics(s for s in states if s is not None)


def __getattr__(name: str) -> Any:
    # The interceptors import grpcio: only when asked for, so that HTTP-only
    # servers need neither grpcio nor protobuf.
    if name in ("OrcaServerInterceptor", "AioOrcaServerInterceptor"):
        from . import _grpc

        return getattr(_grpc, name)
    raise AttributeError(f"module 'clientlb.orca' has no attribute {name!r}")

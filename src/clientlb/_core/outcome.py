"""Outcomes: how a call through an endpoint ended.

Every pick ends with exactly one outcome. Integrations (httpx, gRPC, TCP)
classify their own errors into these kinds; load metrics, outlier detection
and telemetry consume them. The kinds follow Envoy's outlier detection
vocabulary so that its detectors can be implemented faithfully:

* ``SUCCESS`` — the endpoint answered and the answer is not its fault.
* ``FAILURE`` — the endpoint answered with an error of its own (an HTTP 500,
  a gRPC INTERNAL): counts for "consecutive 5xx", not for gateway failures.
* ``GATEWAY_FAILURE`` — 502/503/504 or gRPC UNAVAILABLE answered by the
  endpoint: counts for both "consecutive 5xx" and "consecutive gateway".
* ``CONNECT_FAILURE`` — *local origin*: the connection could not be made
  (refused, no route, connect timeout, TLS handshake failure). The request
  never reached a backend, so it is always safe to retry elsewhere.
* ``TIMEOUT`` — the endpoint accepted the request and did not answer in time.
* ``CANCELLED`` — the caller gave up (or the call ended for a reason that says
  nothing about the endpoint): frees the in-flight slot, feeds no detector.
"""

from __future__ import annotations

import enum

__all__ = ["Outcome"]


class Outcome(enum.Enum):
    """How a call ended; see the module documentation for each kind."""

    SUCCESS = "success"
    FAILURE = "failure"
    GATEWAY_FAILURE = "gateway_failure"
    CONNECT_FAILURE = "connect_failure"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"

    @property
    def is_failure(self) -> bool:
        """True for every kind that is the endpoint's fault."""
        return self in _FAILURES

    @property
    def is_gateway_failure(self) -> bool:
        """True for Envoy's "gateway failure" family: 502/503/504, connect errors, timeouts."""
        return self in _GATEWAY

    @property
    def is_local_origin(self) -> bool:
        """True when the failure happened before the endpoint saw the request."""
        return self is Outcome.CONNECT_FAILURE


_FAILURES = frozenset(
    {Outcome.FAILURE, Outcome.GATEWAY_FAILURE, Outcome.CONNECT_FAILURE, Outcome.TIMEOUT}
)
_GATEWAY = frozenset({Outcome.GATEWAY_FAILURE, Outcome.CONNECT_FAILURE, Outcome.TIMEOUT})

"""Transparent retry for server-streaming calls (sync grpcio).

A unary-stream call has a single request, so it can be replayed as long as
nothing has come back yet. When reading its first message fails because the
endpoint could not be reached (a connect failure: the server never saw the
call), the call is sent again to an endpoint not yet tried, as gRPC's
transparent retry does (gRFC A6). Once a message has arrived, errors go to
the caller. The retry happens while the caller iterates; the object is the
current attempt's ``grpc.Call``/``grpc.Future`` otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc

from ._common import is_local_origin, take_retry

if TYPE_CHECKING:
    from ._channel import BalancedChannel, _Key

__all__ = ["RetryingUnaryStream"]


class RetryingUnaryStream(grpc.Call, grpc.Future):  # type: ignore[misc]
    """The iterator of a balanced server-streaming call; see the module doc."""

    def __init__(self, channel: BalancedChannel, key: _Key, request: Any,
                 timeout: float | None, kwargs: dict[str, Any]) -> None:
        self._ch = channel
        self._key = key
        self._request = request
        self._timeout = timeout
        self._start = time.monotonic()
        self._kwargs = kwargs
        self._received = False
        self._tried: set[str] = set()
        self._transparent = 0
        self._hkey = channel._hash(key[1], request, kwargs["metadata"])
        self._call, self._address = channel._open_stream(key, request, timeout, kwargs, None,
                                                         self._hkey)

    def __iter__(self) -> RetryingUnaryStream:
        return self

    def __next__(self) -> Any:
        while True:
            try:
                item = next(self._call)
            except grpc.RpcError as exc:
                if self._received or not self._may_retry(exc):
                    raise
                continue
            self._received = True
            return item

    def _may_retry(self, exc: grpc.RpcError) -> bool:
        plan = self._ch._config.retry
        code, details = exc.code(), exc.details()
        if not is_local_origin(code, details) or self._transparent >= plan.transparent_retries \
                or len(self._ch.lb.endpoints()) <= 1:
            return False
        timeout = self._timeout
        if timeout is not None:
            timeout = self._start + timeout - time.monotonic()
            if timeout <= 0:
                return False
        if not take_retry(self._ch.lb, plan.budget, attempt=self._transparent + 2,
                          reason="transparent_unavailable"):
            return False
        self._transparent += 1
        self._tried.add(self._address)
        self._call, self._address = self._ch._open_stream(self._key, self._request, timeout,
                                                          self._kwargs, self._tried, self._hkey)
        return True

    # -- grpc.Call / grpc.Future of the current attempt ----------------------------------

    def initial_metadata(self) -> Any:
        return self._call.initial_metadata()

    def trailing_metadata(self) -> Any:
        return self._call.trailing_metadata()

    def code(self) -> grpc.StatusCode:
        code: grpc.StatusCode = self._call.code()
        return code

    def details(self) -> str | None:
        details: str | None = self._call.details()
        return details

    def debug_error_string(self) -> str:
        text: str = self._call.debug_error_string()
        return text

    def is_active(self) -> bool:
        active: bool = self._call.is_active()
        return active

    def time_remaining(self) -> float | None:
        remaining: float | None = self._call.time_remaining()
        return remaining

    def cancel(self) -> bool:
        cancelled: bool = self._call.cancel()
        return cancelled

    def add_callback(self, callback: Callable[[], None]) -> bool:
        added: bool = self._call.add_callback(callback)
        return added

    def cancelled(self) -> bool:
        result: bool = self._call.cancelled()
        return result

    def running(self) -> bool:
        result: bool = self._call.running()
        return result

    def done(self) -> bool:
        result: bool = self._call.done()
        return result

    def result(self, timeout: float | None = None) -> Any:
        return self._call.result(timeout)

    def exception(self, timeout: float | None = None) -> Any:
        return self._call.exception(timeout)

    def traceback(self, timeout: float | None = None) -> Any:
        return self._call.traceback(timeout)

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        self._call.add_done_callback(lambda _call: fn(self))

    def __repr__(self) -> str:
        return f"<RetryingUnaryStream {self._key[1]} on {self._address}>"

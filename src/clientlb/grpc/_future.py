"""``future()`` of a balanced unary-unary call: a ``grpc.Future`` across attempts.

Each attempt is an ordinary grpcio future on one endpoint's sub-channel; when
it ends, its outcome is reported and, if the retry rules of
:class:`~clientlb.grpc._channel.BalancedChannel` allow, the next attempt
starts (transparent retries at once, policy retries after their backoff on a
timer). The caller sees one future that ends with the last attempt; as a
``grpc.Call`` it reports that attempt's metadata, code and details.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc

from .._core.outcome import Outcome
from .._engine.retry import RetryState
from ._common import NoEndpointRpcError, attempt_wait_for_ready, classify, retry_decision

if TYPE_CHECKING:
    from ._channel import BalancedChannel, _Key

__all__ = ["RetryingFuture"]


class RetryingFuture(grpc.Call, grpc.Future):  # type: ignore[misc]
    """One balanced unary-unary call in the background; see the module doc."""

    def __init__(self, channel: BalancedChannel, key: _Key, request: Any,
                 timeout: float | None, metadata: Any, credentials: Any,
                 wait_for_ready: bool | None, compression: Any) -> None:
        self._ch = channel
        self._key = key
        self._request = request
        self._timeout = timeout
        self._start = time.monotonic()
        self._kwargs = {"metadata": metadata, "credentials": credentials,
                        "wait_for_ready": wait_for_ready, "compression": compression}
        self._cond = threading.Condition()
        self._attempt_call: Any = None
        self._final: Any = None  # the last attempt's grpc future, once final
        self._error: BaseException | None = None
        self._cancelled = False
        self._callbacks: list[Callable[[Any], None]] = []
        self._tried: set[str] = set()
        self._rstate: RetryState | None = None
        self._transparent = 0
        budget = channel._config.retry.budget
        if budget is not None:
            budget.deposit()
        self._hkey = channel._hash(key[1], request, metadata)

    def start(self) -> None:
        try:
            pick, sub = self._ch._acquire(self._tried or None, self._hkey)
        except (NoEndpointRpcError, ValueError) as exc:
            self._finish(None, exc)
            return
        try:
            kwargs = self._kwargs
            if kwargs["wait_for_ready"]:
                kwargs = {**kwargs, "wait_for_ready": attempt_wait_for_ready(
                    kwargs["wait_for_ready"], self._ch._config.retry, self._ch._lb,
                    self._tried, self._transparent)}
            call = sub.callable(self._key).future(
                self._request, timeout=self._remaining(), **kwargs)
        except BaseException as exc:
            pick.done(Outcome.CANCELLED)
            sub.release()
            self._finish(None, exc)
            return
        with self._cond:
            self._attempt_call = call
            cancelled = self._cancelled
        if cancelled:
            call.cancel()

        def attempt_done(c: Any) -> None:
            code, details = c.code(), c.details()
            outcome = classify(code, details, self._ch._failure_codes)
            if outcome is Outcome.CONNECT_FAILURE:
                sub.failed_at = time.monotonic()
            pick.done(outcome)
            sub.release()
            if code is grpc.StatusCode.OK or self._cancelled:
                self._finish(c, None)
                return
            delay, self._rstate = retry_decision(self._ch._config.retry, self._ch._lb, code,
                                                 details, self._transparent, self._rstate)
            remaining = self._remaining()
            if delay is None or (remaining is not None and remaining <= max(delay, 0)):
                self._finish(c, None)
                return
            self._tried.add(pick.endpoint.address)
            if delay < 0:
                self._transparent += 1
                self.start()
            else:
                timer = threading.Timer(delay, self.start)
                timer.daemon = True
                timer.start()

        call.add_done_callback(attempt_done)

    def _remaining(self) -> float | None:
        if self._timeout is None:
            return None
        return self._start + self._timeout - time.monotonic()

    def _finish(self, call: Any, error: BaseException | None) -> None:
        with self._cond:
            if self._final is not None or self._error is not None:
                return
            self._final = call
            self._error = error
            callbacks, self._callbacks = self._callbacks, []
            self._cond.notify_all()
        for cb in callbacks:
            cb(self)

    def _wait(self, timeout: float | None) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self._final is not None or
                                       self._error is not None, timeout):
                raise grpc.FutureTimeoutError()

    # -- grpc.Future ------------------------------------------------------------------------

    def cancel(self) -> bool:
        with self._cond:
            if self._final is not None or self._error is not None:
                return False
            self._cancelled = True
            call = self._attempt_call
        if call is not None:
            call.cancel()
        return True

    def cancelled(self) -> bool:
        with self._cond:
            return self._final is not None and self._final.cancelled()

    def running(self) -> bool:
        return not self.done()

    def done(self) -> bool:
        with self._cond:
            return self._final is not None or self._error is not None

    def result(self, timeout: float | None = None) -> Any:
        self._wait(timeout)
        if self._error is not None:
            raise self._error
        return self._final.result()

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._wait(timeout)
        if self._error is not None:
            return self._error
        exc: BaseException | None = self._final.exception()
        return exc

    def traceback(self, timeout: float | None = None) -> Any:
        self._wait(timeout)
        if self._error is not None:
            return self._error.__traceback__
        return self._final.traceback()

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        with self._cond:
            if self._final is None and self._error is None:
                self._callbacks.append(fn)
                return
        fn(self)

    # -- grpc.Call (of the last attempt) -----------------------------------------------------

    def _call(self) -> Any:
        with self._cond:
            return self._final or self._attempt_call

    def is_active(self) -> bool:
        return not self.done()

    def time_remaining(self) -> float | None:
        return self._remaining()

    def add_callback(self, callback: Callable[[], None]) -> bool:
        self.add_done_callback(lambda _f: callback())
        return True

    def initial_metadata(self) -> Any:
        self._wait(None)
        return self._final.initial_metadata() if self._final is not None else ()

    def trailing_metadata(self) -> Any:
        self._wait(None)
        return self._final.trailing_metadata() if self._final is not None else ()

    def code(self) -> grpc.StatusCode:
        self._wait(None)
        if self._error is not None:
            code = getattr(self._error, "code", None)
            return code() if callable(code) else grpc.StatusCode.UNKNOWN
        result: grpc.StatusCode = self._final.code()
        return result

    def details(self) -> str | None:
        self._wait(None)
        if self._error is not None:
            return str(self._error)
        details: str | None = self._final.details()
        return details

    def __repr__(self) -> str:
        state = "done" if self.done() else "running"
        return f"<RetryingFuture {self._key[1]} {state} transparent_retries={self._transparent}>"

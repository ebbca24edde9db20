"""A ``grpc.Channel`` that picks an endpoint per call (sync grpcio): the I/O shell.

Every call is one :class:`~._policy.RpcCall` (the policy, shared with grpc.aio)
over the sub-channels of :class:`~._pool.ChannelBase`; this module only starts
grpcio calls, waits and sleeps as the policy says (docs/architecture.md,
"Integrations"; retries, hedging and transparent retry as gRFC A6):

* a blocking unary call makes its first attempt inline — the fast path, no
  thread, no future; if the policy wants another attempt, the call goes on as a
  :class:`_UnaryFuture` and the caller waits for it;
* ``future()`` and hedged calls are :class:`_UnaryFuture`: each attempt is a
  grpcio future whose end is handed to the policy; backoffs and hedge delays
  run on the engine's shared timer thread;
* a server-streaming call (:class:`_ServerStream`) is sent again as the policy
  allows while nothing has come back; client- and bidi-streaming calls are
  never replayed (their requests are an iterator).

Streams count as in flight (``least_request``, ``peak_ewma``) until they end.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from .._core.balancer import LoadBalancer
from .._core.endpoint import Endpoint, EndpointSetDiff
from .._core.outcome import Outcome
from .._engine import connectivity
from .._engine.orca import record_trailers
from ._common import ChannelConfig
from ._policy import WAIT, Attempt, RpcCall, connect_verdict
from ._pool import ChannelBase, Key, SubChannel, aggregate, multicallable

__all__ = ["BalancedChannel"]

# grpcio's connectivity poller wakes up every 0.2 s; a little more than that.
_POLL_TICK = 0.3
_SUCCESS = Outcome.SUCCESS
_CANCELLED = Outcome.CANCELLED


def _later(delay: float, fn: Callable[[], None]) -> None:
    """Run ``fn`` in ``delay`` seconds on the engine's timer thread (no thread per call)."""
    connectivity.call_later(delay, fn)


def _connected(sub: SubChannel, timeout: float, early: bool) -> bool:
    """Wait (at most ``timeout``) for ``sub`` to be READY; see ``connect_verdict``."""
    verdicts: list[bool] = []
    ended = threading.Event()

    def on_state(state: grpc.ChannelConnectivity) -> None:
        verdict = connect_verdict(state, early)
        if verdict is not None and not verdicts:
            verdicts.append(verdict)
            ended.set()

    sub.watched = True
    sub.channel.subscribe(on_state, try_to_connect=True)
    try:
        ended.wait(timeout)
    finally:
        sub.channel.unsubscribe(on_state)
    return verdicts == [True]


def _trailers(rpc: RpcCall, call: Any) -> Any:
    """An ended attempt's trailing metadata when the strategy reads load reports."""
    if not rpc.reads_reports:
        return None
    try:
        return call.trailing_metadata()
    except Exception:  # not a grpc.Call: nothing to read
        return None


def _report(rpc: RpcCall, attempt: Attempt, call: Any) -> None:
    """grpcio's done callback of a stream attempt: its one outcome report."""
    rpc.report(attempt, call.code(), call.details(), _trailers(rpc, call))


class BalancedChannel(ChannelBase, grpc.Channel):  # type: ignore[misc]
    """A ``grpc.Channel`` over every endpoint of a :class:`~clientlb.LoadBalancer`.

    Build it with :func:`clientlb.grpc.insecure_channel` or
    :func:`clientlb.grpc.secure_channel`; generated stubs and
    ``grpc.intercept_channel`` take it like any other channel.
    """

    def __init__(self, lb: LoadBalancer, *, owns_lb: bool,
                 factory: Callable[[Endpoint], grpc.Channel], config: ChannelConfig) -> None:
        super().__init__(lb, owns_lb, factory, config)
        self._subscribers: list[Callable[[grpc.ChannelConnectivity], None]] = []
        self._state: grpc.ChannelConnectivity = grpc.ChannelConnectivity.IDLE

    # -- sub-channels ---------------------------------------------------------------------

    def sub_channel(self, endpoint: Endpoint) -> SubChannel:
        sub = super().sub_channel(endpoint)
        if self._subscribers and sub.watcher is None:
            self._watch(sub, False)
        return sub

    def _close_sub(self, sub: SubChannel) -> None:
        # Never inside one of the channel's own callbacks (release() runs there): from
        # the timer's thread. grpcio polls a watched channel's connectivity in a thread
        # that only notices an unsubscribe at its next 0.2 s tick, and closing the
        # channel under it raises "Channel closed!" there: wait for that tick.
        watcher, sub.watcher = sub.watcher, None
        if watcher is not None:
            sub.channel.unsubscribe(watcher)
        timer = threading.Timer(_POLL_TICK if sub.watched else 0.0, sub.channel.close)
        timer.daemon = True
        timer.start()

    def _probe(self, endpoint: Endpoint, timeout: float) -> bool:
        """The balancer's connect probe: True once the endpoint's sub-channel is READY."""
        sub = self._probe_sub(endpoint)
        if sub is None:
            return connectivity.tcp_probe(endpoint, timeout)
        try:
            return _connected(sub, timeout, False)
        finally:
            if sub.draining:  # left the target meanwhile: close it if nothing runs on it
                sub.drain()

    def _on_diff(self, diff: EndpointSetDiff) -> None:
        if diff.added and self._connect_all:  # someone asked to connect everything
            for ep in diff.added:
                try:
                    self._watch(self.sub_channel(ep), True)
                except ValueError:  # closed meanwhile
                    return
        if self._drain_removed(diff):
            self._update_state()

    # -- calls ------------------------------------------------------------------------------

    def _blocking(self, key: Key, request: Any, timeout: float | None, metadata: Any,
                  credentials: Any, wait_for_ready: bool | None, compression: Any,
                  with_call: bool) -> Any:
        rpc = RpcCall(self, key[1], request, metadata, timeout, wait_for_ready, hedge=True)
        kwargs = {"metadata": metadata, "credentials": credentials, "compression": compression}
        if rpc.hedging is not None:
            return _UnaryFuture(self, rpc, key, request, kwargs).outcome(with_call)
        attempt = rpc.next()
        reports = rpc.reads_reports  # the trailers, hence with_call, are needed
        try:
            c = attempt.sub.callable(key)
            result = (c.with_call if with_call or reports else c)(
                request, timeout=None if rpc.logical.deadline_at is None else rpc.timeout(),
                metadata=metadata,
                credentials=credentials, wait_for_ready=wait_for_ready and rpc.wait_for_ready(),
                compression=compression)
        except grpc.RpcError as exc:
            delay = rpc.ended(attempt, exc.code(), exc.details(), _trailers(rpc, exc))
            if delay is None:
                raise
            return _UnaryFuture(self, rpc, key, request, kwargs, delay).outcome(with_call)
        except BaseException:
            attempt.finish(_CANCELLED)
            raise
        if reports:
            record_trailers(attempt, _trailers(rpc, result[1]))
            if not with_call:
                result = result[0]
        attempt.finish(_SUCCESS)
        return result

    def _stream(self, key: Key, requests: Iterator[Any], timeout: float | None,
                metadata: Any, credentials: Any, wait_for_ready: bool | None,
                compression: Any, how: str = "") -> Any:
        """A client- or bidi-streaming call: one attempt (its requests cannot be replayed)."""
        rpc = RpcCall(self, key[1], None, metadata, timeout, wait_for_ready, replayable=False)
        attempt = rpc.next()
        # each endpoint at most once: the last candidate is sent as it is (grpcio says why)
        while rpc.must_connect_first(attempt) and rpc.logical.can_fail_over(attempt.address) \
                and not _connected(attempt.sub, rpc.connect_timeout(), True):
            rpc.unready(attempt)
            attempt = rpc.next()
        attempt = self.start_attempt(rpc, key, requests, {
            "metadata": metadata, "credentials": credentials, "compression": compression},
            how, attempt)
        attempt.call.add_done_callback(functools.partial(_report, rpc, attempt))
        return attempt.call

    # -- grpc.Channel -----------------------------------------------------------------------

    def _multicallable(self, key: Key) -> Any:
        return _CALLABLES[key[0]](self, key)

    unary_unary = multicallable("unary_unary")
    unary_stream = multicallable("unary_stream")
    stream_unary = multicallable("stream_unary")
    stream_stream = multicallable("stream_stream")

    # -- connectivity -------------------------------------------------------------------------

    def subscribe(self, callback: Callable[[grpc.ChannelConnectivity], None],
                  try_to_connect: bool = False) -> None:
        """Connectivity of the whole channel: READY when any sub-channel is READY,
        else CONNECTING, IDLE, TRANSIENT_FAILURE in that order. ``try_to_connect``
        opens a sub-channel to every endpoint and connects it."""
        with self._lock:
            first = not self._subscribers
            self._subscribers.append(callback)
            state = self._state
        if try_to_connect:
            self._connect_all = True  # endpoints discovered later are connected too
            try:
                for ep in self.lb.endpoints():
                    self.sub_channel(ep)
            except ValueError:
                pass
        if first or try_to_connect:
            with self._lock:
                subs = list(self._subs.values())
            for sub in subs:
                self._watch(sub, try_to_connect)
        callback(state)

    def _watch(self, sub: SubChannel, try_to_connect: bool) -> None:
        watcher = sub.watcher
        if watcher is not None:
            if try_to_connect:  # subscribe again, this time asking to connect
                sub.channel.unsubscribe(watcher)
                sub.channel.subscribe(watcher, try_to_connect=True)
            return

        def on_state(state: grpc.ChannelConnectivity) -> None:
            sub.state = state
            self._update_state()

        sub.watcher = on_state
        sub.watched = True
        sub.channel.subscribe(on_state, try_to_connect=try_to_connect)

    def _update_state(self) -> None:
        with self._lock:
            if self.closed:
                return
            new = aggregate({s.state for s in self._subs.values() if s.state is not None})
            if new is self._state:
                return
            self._state = new
            subscribers = list(self._subscribers)
        for cb in subscribers:
            cb(new)

    def unsubscribe(self, callback: Callable[[grpc.ChannelConnectivity], None]) -> None:
        with self._lock:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

    # -- lifecycle ------------------------------------------------------------------------------

    def close(self) -> None:
        """Close every sub-channel now (in-flight calls are cancelled, as grpcio does)
        and the balancer when the channel created it."""
        subs = self._take_all()
        if subs is None:
            return
        for sub in subs:
            if sub.watched:
                self._close_sub(sub)
            else:
                sub.channel.close()
        if self._owns_lb:
            self.lb.close()

    def __enter__(self) -> BalancedChannel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return self._describe("BalancedChannel", self._state.name)


class _UnaryFuture(grpc.Call, grpc.Future):  # type: ignore[misc]
    """A unary-unary call across its attempts, as a ``grpc.Future`` and ``grpc.Call``.

    Each attempt is a grpcio future on one sub-channel; when it ends the policy
    says what follows (another attempt now or after a backoff, nothing while
    hedges are in flight, or this attempt's answer is the call's). As a
    ``grpc.Call`` it reports the answering attempt's metadata, code and details.
    """

    def __init__(self, channel: BalancedChannel, rpc: RpcCall, key: Key, request: Any,
                 kwargs: dict[str, Any], delay: float = 0.0) -> None:
        self._ch = channel
        self._rpc = rpc
        self._key = key
        self._request = request
        self._kwargs = kwargs
        self._cond = threading.Condition()
        self._live: list[Attempt] = []
        self._final: Any = None  # the grpcio call whose answer is the call's
        self._error: BaseException | None = None
        self._cancelled = False
        self._callbacks: list[Callable[[Any], None]] = []
        if delay:
            _later(delay, self._start)
        else:
            self._start()

    def _start(self) -> None:
        with self._cond:
            if self._final is not None or self._error is not None:
                return
            try:
                attempt = self._ch.start_attempt(self._rpc, self._key, self._request, self._kwargs,
                                          "future")
            except BaseException as exc:
                error: BaseException | None = exc
            else:
                self._live.append(attempt)
                hedge = self._rpc.hedge_delay()
                error = None
        if error is not None:
            self._finish(None, error)
            return
        attempt.call.add_done_callback(functools.partial(self._ended, attempt))
        if hedge is not None:
            _later(hedge, self._hedge)

    def _hedge(self) -> None:
        with self._cond:
            go = self._rpc.hedge()
        if go:
            self._start()

    def _ended(self, attempt: Attempt, call: Any) -> None:
        with self._cond:
            delay = self._rpc.ended(attempt, call.code(), call.details(),
                                    _trailers(self._rpc, call))
            self._live.remove(attempt)
        if delay is None:
            self._finish(call, None, attempt)
        elif delay == 0:
            self._start()
        elif delay != WAIT:
            _later(delay, self._start)

    def _finish(self, call: Any, error: BaseException | None,
                winner: Attempt | None = None) -> None:
        with self._cond:
            if self._final is not None or self._error is not None:
                return
            self._final = call
            self._error = error
            losers = [a.call for a in self._rpc.losers(winner, self._live)]
            callbacks, self._callbacks = self._callbacks, []
            self._cond.notify_all()
        for loser in losers:  # hedges that lost: their ends report CANCELLED
            loser.cancel()
        for cb in callbacks:
            cb(self)

    def _wait(self, timeout: float | None) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self._final is not None or
                                       self._error is not None, timeout):
                raise grpc.FutureTimeoutError()

    def outcome(self, with_call: bool) -> Any:
        """What a blocking call returns: the response (and this call, for ``with_call``)."""
        result = self.result()
        return (result, self) if with_call else result

    # -- grpc.Future ------------------------------------------------------------------------

    def cancel(self) -> bool:
        """Cancel the call: done and cancelled at once, as grpcio's own futures; the
        attempts in flight are cancelled and report CANCELLED when grpcio ends them."""
        with self._cond:
            if self._final is not None or self._error is not None:
                return False
            self._cancelled = True
        self._finish(None, grpc.FutureCancelledError())
        return True

    def cancelled(self) -> bool:
        with self._cond:
            return self._cancelled

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
        if self._cancelled:
            raise grpc.FutureCancelledError()
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

    # -- grpc.Call (of the answering attempt) ------------------------------------------------

    def is_active(self) -> bool:
        return not self.done()

    def time_remaining(self) -> float | None:
        return self._rpc.timeout()

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
        if self._cancelled:
            return grpc.StatusCode.CANCELLED
        if self._error is not None:
            code = getattr(self._error, "code", None)
            return code() if callable(code) else grpc.StatusCode.UNKNOWN
        result: grpc.StatusCode = self._final.code()
        return result

    def details(self) -> str | None:
        self._wait(None)
        if self._cancelled:
            return "Locally cancelled by application!"
        if self._error is not None:
            return str(self._error)
        details: str | None = self._final.details()
        return details

    def __repr__(self) -> str:
        return f"<UnaryFuture {self._key[1]} {'done' if self.done() else 'running'} {self._rpc}>"


class _ServerStream:
    """The iterator of a server-streaming call; otherwise its current attempt's
    ``grpc.Call``/``grpc.Future``. Before its first message, an attempt that failed
    is replaced as the policy allows (the single request can be replayed)."""

    def __init__(self, channel: BalancedChannel, key: Key, request: Any, timeout: float | None,
                 kwargs: dict[str, Any], wait_for_ready: bool | None) -> None:
        self._rpc = RpcCall(channel, key[1], request, kwargs["metadata"], timeout,
                            wait_for_ready)
        self._ch = channel
        self._key = key
        self._request = request
        self._kwargs = kwargs
        self._attempt = self._open()

    def _open(self) -> Attempt:
        attempt = self._ch.start_attempt(self._rpc, self._key, self._request, self._kwargs)
        attempt.call.add_done_callback(functools.partial(_report, self._rpc, attempt))
        return attempt

    def __iter__(self) -> _ServerStream:
        return self

    def __next__(self) -> Any:
        while True:
            attempt = self._attempt
            try:
                item = next(attempt.call)
            except grpc.RpcError as exc:
                delay = self._rpc.failed(attempt, exc.code(), exc.details())
                if delay is None:
                    raise
                if delay:
                    time.sleep(delay)
                self._attempt = self._open()
                continue
            self._rpc.replay = False  # a message came back: the call is committed
            return item

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        self._attempt.call.add_done_callback(lambda _call: fn(self))

    def __getattr__(self, name: str) -> Any:  # grpc.Call / grpc.Future of the attempt
        return getattr(self._attempt.call, name)

    def __repr__(self) -> str:
        return f"<UnaryStream {self._key[1]} on {self._attempt.address}>"


grpc.Call.register(_ServerStream)
grpc.Future.register(_ServerStream)


class _MultiCallable:
    __slots__ = ("_ch", "_key")

    def __init__(self, channel: BalancedChannel, key: Key) -> None:
        self._ch = channel
        self._key = key

    def __repr__(self) -> str:
        return f"<{type(self).__name__.lstrip('_')} {self._key[1]} on {self._ch!r}>"


class _UnaryUnary(_MultiCallable, grpc.UnaryUnaryMultiCallable):  # type: ignore[misc]
    __slots__ = ()

    def __call__(self, request: Any, timeout: float | None = None, metadata: Any = None,
                 credentials: Any = None, wait_for_ready: bool | None = None,
                 compression: Any = None) -> Any:
        return self._ch._blocking(self._key, request, timeout, metadata, credentials,
                                  wait_for_ready, compression, False)

    def with_call(self, request: Any, timeout: float | None = None, metadata: Any = None,
                  credentials: Any = None, wait_for_ready: bool | None = None,
                  compression: Any = None) -> tuple[Any, grpc.Call]:
        result: tuple[Any, grpc.Call] = self._ch._blocking(
            self._key, request, timeout, metadata, credentials, wait_for_ready, compression,
            True)
        return result

    def future(self, request: Any, timeout: float | None = None, metadata: Any = None,
               credentials: Any = None, wait_for_ready: bool | None = None,
               compression: Any = None) -> Any:
        rpc = RpcCall(self._ch, self._key[1], request, metadata, timeout, wait_for_ready,
                      hedge=True)
        return _UnaryFuture(self._ch, rpc, self._key, request, {
            "metadata": metadata, "credentials": credentials, "compression": compression})


class _UnaryStream(_MultiCallable, grpc.UnaryStreamMultiCallable):  # type: ignore[misc]
    __slots__ = ()

    def __call__(self, request: Any, timeout: float | None = None, metadata: Any = None,
                 credentials: Any = None, wait_for_ready: bool | None = None,
                 compression: Any = None) -> Any:
        return _ServerStream(self._ch, self._key, request, timeout, {
            "metadata": metadata, "credentials": credentials, "compression": compression},
            wait_for_ready)


class _StreamUnary(_MultiCallable, grpc.StreamUnaryMultiCallable):  # type: ignore[misc]
    __slots__ = ()

    def __call__(self, request_iterator: Iterator[Any], timeout: float | None = None,
                 metadata: Any = None, credentials: Any = None,
                 wait_for_ready: bool | None = None, compression: Any = None) -> Any:
        response, _call = self.with_call(request_iterator, timeout, metadata, credentials,
                                         wait_for_ready, compression)
        return response

    def with_call(self, request_iterator: Iterator[Any], timeout: float | None = None,
                  metadata: Any = None, credentials: Any = None,
                  wait_for_ready: bool | None = None,
                  compression: Any = None) -> tuple[Any, grpc.Call]:
        call = self.future(request_iterator, timeout, metadata, credentials, wait_for_ready,
                           compression)
        return call.result(), call

    def future(self, request_iterator: Iterator[Any], timeout: float | None = None,
               metadata: Any = None, credentials: Any = None,
               wait_for_ready: bool | None = None, compression: Any = None) -> Any:
        return self._ch._stream(self._key, request_iterator, timeout, metadata, credentials,
                                wait_for_ready, compression, "future")


class _StreamStream(_MultiCallable, grpc.StreamStreamMultiCallable):  # type: ignore[misc]
    __slots__ = ()

    def __call__(self, request_iterator: Iterator[Any], timeout: float | None = None,
                 metadata: Any = None, credentials: Any = None,
                 wait_for_ready: bool | None = None, compression: Any = None) -> Any:
        return self._ch._stream(self._key, request_iterator, timeout, metadata, credentials,
                                wait_for_ready, compression)


_CALLABLES: dict[str, type[_MultiCallable]] = {
    "unary_unary": _UnaryUnary, "unary_stream": _UnaryStream,
    "stream_unary": _StreamUnary, "stream_stream": _StreamStream}

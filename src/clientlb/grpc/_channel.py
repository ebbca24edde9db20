"""A ``grpc.Channel`` that picks an endpoint per call (sync grpcio).

grpcio cannot load a custom resolver or balancing policy (grpc/grpc#11685),
so the balancing happens one level up: :class:`BalancedChannel` keeps one
ordinary grpcio channel (a *sub-channel*, ``pick_first`` to one address) per
endpoint, created on first use, and every call asks the
:class:`~clientlb.LoadBalancer` for an endpoint, sends the call on that
endpoint's sub-channel and reports the outcome (see ``_common``) on the
``Pick``. Streaming calls stay in flight (for ``least_request`` and
``peak_ewma``) until they end.

When discovery drops an endpoint its sub-channel stops taking new calls and
is closed once its in-flight calls have ended (drained), never under them.

Retries (gRFC A6): a unary-unary call that failed before any server saw it
(connect failure) is sent again at once to an endpoint not yet tried
(*transparent retry*); so is a server-streaming call whose first message
could not be read for that reason (``_streams``). With ``retryable_codes=`` a
unary-unary call that failed with one of those codes is retried after a
jittered exponential backoff, up to ``max_attempts``, while the balancer's
retry budget allows. Client-streaming calls are not retried: their request
messages cannot be replayed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from .._core.balancer import LoadBalancer, Pick
from .._core.endpoint import Endpoint, EndpointSetDiff
from .._core.errors import NoEndpointAvailable
from .._core.outcome import Outcome
from .._engine.retry import RetryState
from ._common import (
    ChannelConfig,
    NoEndpointRpcError,
    attempt_wait_for_ready,
    classify,
    retry_decision,
)
from ._future import RetryingFuture
from ._hedging import hedged_call
from ._streams import RetryingUnaryStream

__all__ = ["BalancedChannel"]

_CONNECTIVITY_ORDER = (
    grpc.ChannelConnectivity.READY,
    grpc.ChannelConnectivity.CONNECTING,
    grpc.ChannelConnectivity.IDLE,
    grpc.ChannelConnectivity.TRANSIENT_FAILURE,
    grpc.ChannelConnectivity.SHUTDOWN,
)

# grpcio's connectivity poller wakes up every 0.2 s; a little more than that.
_POLL_TICK = 0.3
# gRPC's initial reconnect backoff (connection-backoff.md): an endpoint that failed to
# connect less than this ago is still failing; client-streaming calls skip it.
_RECONNECT_BACKOFF = 1.0

# (kind, method, request_serializer, response_deserializer, registered)
_Key = tuple[str, str, Any, Any, bool]


class _SubChannel:
    """One endpoint's grpcio channel, its cached multicallables and in-flight count."""

    __slots__ = ("_lock", "address", "callables", "channel", "closed", "draining",
                 "failed_at", "in_flight", "state", "watcher")

    def __init__(self, address: str, channel: grpc.Channel) -> None:
        self.address = address
        self.channel = channel
        self.callables: dict[_Key, Any] = {}
        self.in_flight = 0
        self.draining = False
        self.closed = False
        self.state: grpc.ChannelConnectivity | None = None
        #: when a call last failed to connect through it (monotonic), or None
        self.failed_at: float | None = None
        self.watcher: Callable[[grpc.ChannelConnectivity], None] | None = None
        self._lock = threading.Lock()

    def callable(self, key: _Key) -> Any:
        c = self.callables.get(key)
        if c is None:
            kind, method, ser, deser, registered = key
            c = getattr(self.channel, kind)(method, request_serializer=ser,
                                           response_deserializer=deser,
                                           _registered_method=registered)
            self.callables[key] = c
        return c

    def acquire(self) -> bool:
        """Count one more call; False when the sub-channel was closed meanwhile."""
        with self._lock:
            if self.closed:
                return False
            self.in_flight += 1
            return True

    def release(self) -> None:
        with self._lock:
            self.in_flight -= 1
            if not (self.draining and self.in_flight <= 0 and not self.closed):
                return
            self.closed = True
        # release() may run in a grpcio callback thread of this very channel, where
        # closing it would deadlock: close it from a short-lived thread instead.
        threading.Thread(target=self._close, name=f"clientlb-grpc-close-{self.address}",
                         daemon=True).start()

    def drain(self) -> None:
        """Take no new calls; close as soon as the in-flight ones have ended."""
        with self._lock:
            self.draining = True
            if self.in_flight > 0 or self.closed:
                return
            self.closed = True
        self._close()

    def close_now(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
        self._close()

    def _close(self) -> None:
        watcher, self.watcher = self.watcher, None
        if watcher is None:
            self.channel.close()
            return
        # grpcio polls a watched channel's connectivity in a thread that only
        # notices an unsubscribe at its next 0.2 s tick; closing the channel under
        # it raises "Channel closed!" in that thread. Unsubscribe, then close
        # once the poller has stopped.
        self.channel.unsubscribe(watcher)
        timer = threading.Timer(_POLL_TICK, self.channel.close)
        timer.daemon = True
        timer.start()

    def __repr__(self) -> str:
        status = "closed" if self.closed else "draining" if self.draining else "open"
        return f"<SubChannel {self.address} {status} in_flight={self.in_flight}>"


class BalancedChannel(grpc.Channel):  # type: ignore[misc]
    """A ``grpc.Channel`` over every endpoint of a :class:`~clientlb.LoadBalancer`.

    Build it with :func:`clientlb.grpc.insecure_channel` or
    :func:`clientlb.grpc.secure_channel`; generated stubs and
    ``grpc.intercept_channel`` take it like any other channel.
    """

    def __init__(self, lb: LoadBalancer, *, owns_lb: bool,
                 factory: Callable[[Endpoint], grpc.Channel], config: ChannelConfig) -> None:
        self._lb = lb
        self._owns_lb = owns_lb
        self._factory = factory
        self._config = config
        self._failure_codes = config.failure_codes
        self._subs: dict[str, _SubChannel] = {}
        self._draining: list[_SubChannel] = []
        self._connect_all = False
        self._lock = threading.Lock()
        self._closed = False
        self._subscribers: list[Callable[[grpc.ChannelConnectivity], None]] = []
        self._state: grpc.ChannelConnectivity = grpc.ChannelConnectivity.IDLE
        self._rng = lb.rng
        lb.add_diff_listener(self._on_diff)

    # -- sub-channels ---------------------------------------------------------------------

    @property
    def lb(self) -> LoadBalancer:
        """The balancer that picks an endpoint for every call."""
        return self._lb

    def _sub(self, endpoint: Endpoint) -> _SubChannel:
        sub = self._subs.get(endpoint.address)
        if sub is not None and not sub.draining:
            return sub
        with self._lock:
            if self._closed:
                raise ValueError("Cannot invoke RPC on closed channel!")
            sub = self._subs.get(endpoint.address)
            if sub is not None and not sub.draining:
                return sub
            sub = _SubChannel(endpoint.address, self._factory(endpoint))
            current = self._lb.state_of(endpoint.address)
            if current is None or current.draining:
                # Picked just before it left the target: serve this call, then close.
                sub.draining = True
                return sub
            self._subs[endpoint.address] = sub
            watch = bool(self._subscribers)
        if watch:
            self._watch(sub, False)
        return sub

    def _on_diff(self, diff: EndpointSetDiff) -> None:
        if diff.added and self._connect_all:  # someone asked to connect everything
            for ep in diff.added:
                try:
                    self._watch(self._sub(ep), True)
                except ValueError:  # closed meanwhile
                    return
        if not diff.removed:
            return
        with self._lock:
            gone = [self._subs.pop(ep.address) for ep in diff.removed
                    if ep.address in self._subs]
            self._draining = [s for s in self._draining if not s.closed] + gone
        for sub in gone:
            sub.drain()
        if gone:
            self._update_state()

    def sub_channels(self) -> dict[str, str]:
        """``{address: "open" | "draining"}`` of the sub-channels not closed yet.

        A removed endpoint's sub-channel shows as ``"draining"`` while calls it
        carries are in flight, and disappears once it is closed.
        """
        with self._lock:
            self._draining = [s for s in self._draining if not s.closed]
            live = {s.address: "draining" for s in self._draining}
            live.update((a, "open") for a in self._subs)
            return live

    # -- calls ------------------------------------------------------------------------------

    def _hash(self, method: str, request: Any, metadata: Any) -> Any:
        hash_key = self._config.hash_key
        return None if hash_key is None else hash_key(method, request, metadata)

    def _pick(self, exclude: set[str] | None, hkey: Any = None) -> Pick:
        if self._closed:  # checked before the pick, so that no pick is left in flight
            raise ValueError("Cannot invoke RPC on closed channel!")
        try:
            return self._lb.pick(hkey, exclude=exclude)
        except NoEndpointAvailable as exc:
            raise NoEndpointRpcError(exc) from exc

    def _acquire(self, exclude: set[str] | None, hkey: Any) -> tuple[Pick, _SubChannel]:
        """Pick an endpoint and count the call on its sub-channel.

        An endpoint that leaves between the pick and the call may have its
        sub-channel closed in that instant: then pick again (a new pick never
        gets that sub-channel back).
        """
        while True:
            pick = self._pick(exclude, hkey)
            sub = self._sub(pick.endpoint)
            if sub.acquire():
                return pick, sub
            pick.done(Outcome.CANCELLED)

    def _blocking(self, key: _Key, request: Any, timeout: float | None, metadata: Any,
                  credentials: Any, wait_for_ready: bool | None, compression: Any,
                  with_call: bool) -> Any:
        hedging = self._config.hedging
        if hedging is not None and hedging.applies_to(key[1]):
            return hedged_call(self, key, request, timeout, metadata, credentials,
                               wait_for_ready, compression, with_call)
        start = time.monotonic() if timeout is not None else 0.0
        plan = self._config.retry
        if plan.budget is not None:
            plan.budget.deposit()
        tried: set[str] | None = None
        rstate: RetryState | None = None
        transparent = 0
        call_timeout = timeout
        hkey = None if self._config.hash_key is None else self._hash(key[1], request, metadata)
        while True:
            pick, sub = self._acquire(tried, hkey)
            wfr = wait_for_ready and attempt_wait_for_ready(wait_for_ready, plan, self._lb,
                                                            tried, transparent)
            try:
                c = sub.callable(key)
                if with_call:
                    result = c.with_call(request, timeout=call_timeout, metadata=metadata,
                                         credentials=credentials, wait_for_ready=wfr,
                                         compression=compression)
                else:
                    result = c(request, timeout=call_timeout, metadata=metadata,
                               credentials=credentials, wait_for_ready=wfr,
                               compression=compression)
            except grpc.RpcError as exc:
                code, details = exc.code(), exc.details()
                outcome = classify(code, details, self._failure_codes)
                if outcome is Outcome.CONNECT_FAILURE:
                    sub.failed_at = time.monotonic()
                pick.done(outcome)
                sub.release()
                delay, rstate = retry_decision(plan, self._lb, code, details, transparent,
                                               rstate)
                if delay is None:
                    raise
                if delay < 0:
                    transparent += 1
                elif delay:
                    if timeout is not None and time.monotonic() + delay >= start + timeout:
                        raise
                    time.sleep(delay)
                if timeout is not None:
                    call_timeout = start + timeout - time.monotonic()
                    if call_timeout <= 0:
                        raise
                if tried is None:
                    tried = set()
                tried.add(pick.endpoint.address)
                continue
            except BaseException:
                pick.done(Outcome.CANCELLED)
                sub.release()
                raise
            pick.done(Outcome.SUCCESS)
            sub.release()
            return result

    def _future(self, key: _Key, request: Any, timeout: float | None, metadata: Any,
                credentials: Any, wait_for_ready: bool | None, compression: Any) -> Any:
        fut = RetryingFuture(self, key, request, timeout, metadata, credentials,
                             wait_for_ready, compression)
        fut.start()
        return fut

    def _open_stream(self, key: _Key, request: Any, timeout: float | None,
                     kwargs: dict[str, Any], exclude: set[str] | None,
                     hkey: Any = None) -> tuple[Any, str]:
        """Start one attempt of a server-streaming call: ``(grpc call, address)``."""
        pick, sub = self._acquire(exclude or None, hkey)
        if kwargs["wait_for_ready"]:
            kwargs = {**kwargs, "wait_for_ready": attempt_wait_for_ready(
                kwargs["wait_for_ready"], self._config.retry, self._lb, exclude,
                len(exclude or ()))}
        try:
            call = sub.callable(key)(request, timeout=timeout, **kwargs)
        except BaseException:
            pick.done(Outcome.CANCELLED)
            sub.release()
            raise
        failure_codes = self._failure_codes

        def finished(c: Any) -> None:
            outcome = classify(c.code(), c.details(), failure_codes)
            if outcome is Outcome.CONNECT_FAILURE:
                sub.failed_at = time.monotonic()
            pick.done(outcome)
            sub.release()

        call.add_done_callback(finished)
        return call, pick.endpoint.address

    def _stream(self, key: _Key, request: Any, timeout: float | None, metadata: Any,
                credentials: Any, wait_for_ready: bool | None, compression: Any,
                method: str = "__call__") -> Any:
        hkey = self._hash(key[1], None, metadata)
        pick, sub = self._acquire(None, hkey)
        # Requests from an iterator cannot be replayed, so a client-streaming call is
        # never retried; but an endpoint that just failed to connect is skipped first.
        tried: set[str] | None = None
        for _ in range(self._config.retry.transparent_retries):
            failed_at = sub.failed_at
            if failed_at is None or time.monotonic() - failed_at > _RECONNECT_BACKOFF:
                break
            pick.done(Outcome.CANCELLED)
            sub.release()
            tried = (tried or set()) | {pick.endpoint.address}
            pick, sub = self._acquire(tried, hkey)
        try:
            call = getattr(sub.callable(key), method)(
                request, timeout=timeout, metadata=metadata, credentials=credentials,
                wait_for_ready=wait_for_ready, compression=compression)
        except grpc.RpcError as exc:  # with_call of a stream-unary call
            pick.done(classify(exc.code(), exc.details(), self._failure_codes))
            sub.release()
            raise
        except BaseException:
            pick.done(Outcome.CANCELLED)
            sub.release()
            raise
        if method == "with_call":
            pick.done(Outcome.SUCCESS)
            sub.release()
            return call
        failure_codes = self._failure_codes

        def finished(c: Any) -> None:
            outcome = classify(c.code(), c.details(), failure_codes)
            if outcome is Outcome.CONNECT_FAILURE:
                sub.failed_at = time.monotonic()
            pick.done(outcome)
            sub.release()

        call.add_done_callback(finished)
        return call

    # -- grpc.Channel -----------------------------------------------------------------------

    def unary_unary(self, method: str, request_serializer: Any = None,
                    response_deserializer: Any = None,
                    _registered_method: bool = False) -> grpc.UnaryUnaryMultiCallable:
        return _UnaryUnary(self, ("unary_unary", method, request_serializer,
                                  response_deserializer, _registered_method))

    def unary_stream(self, method: str, request_serializer: Any = None,
                     response_deserializer: Any = None,
                     _registered_method: bool = False) -> grpc.UnaryStreamMultiCallable:
        return _UnaryStream(self, ("unary_stream", method, request_serializer,
                                   response_deserializer, _registered_method))

    def stream_unary(self, method: str, request_serializer: Any = None,
                     response_deserializer: Any = None,
                     _registered_method: bool = False) -> grpc.StreamUnaryMultiCallable:
        return _StreamUnary(self, ("stream_unary", method, request_serializer,
                                   response_deserializer, _registered_method))

    def stream_stream(self, method: str, request_serializer: Any = None,
                      response_deserializer: Any = None,
                      _registered_method: bool = False) -> grpc.StreamStreamMultiCallable:
        return _StreamStream(self, ("stream_stream", method, request_serializer,
                                    response_deserializer, _registered_method))

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
                for ep in self._lb.endpoints():
                    self._sub(ep)
            except ValueError:
                pass
        if first or try_to_connect:
            with self._lock:
                subs = list(self._subs.values())
            for sub in subs:
                self._watch(sub, try_to_connect)
        callback(state)

    def _watch(self, sub: _SubChannel, try_to_connect: bool) -> None:
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
        sub.channel.subscribe(on_state, try_to_connect=try_to_connect)

    def _update_state(self) -> None:
        with self._lock:
            if self._closed:
                return
            states = {s.state for s in self._subs.values() if s.state is not None}
            new = next((s for s in _CONNECTIVITY_ORDER if s in states),
                       grpc.ChannelConnectivity.IDLE)
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
        with self._lock:
            if self._closed:
                return
            self._closed = True
            subs = [*self._subs.values(), *self._draining]
            self._subs.clear()
            self._draining.clear()
        self._lb.remove_listener(self._on_diff)
        for sub in subs:
            sub.close_now()
        if self._owns_lb:
            self._lb.close()

    def __enter__(self) -> BalancedChannel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        subs = self.sub_channels()
        draining = sum(1 for v in subs.values() if v == "draining")
        status = "closed" if self._closed else self._state.name
        return (f"<BalancedChannel {self._lb.name!r} [{len(subs)} sub-channels, "
                f"{draining} draining] {status}>")


class _MultiCallable:
    __slots__ = ("_ch", "_key")

    def __init__(self, channel: BalancedChannel, key: _Key) -> None:
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
        return self._ch._future(self._key, request, timeout, metadata, credentials,
                                wait_for_ready, compression)


class _UnaryStream(_MultiCallable, grpc.UnaryStreamMultiCallable):  # type: ignore[misc]
    __slots__ = ()

    def __call__(self, request: Any, timeout: float | None = None, metadata: Any = None,
                 credentials: Any = None, wait_for_ready: bool | None = None,
                 compression: Any = None) -> Any:
        return RetryingUnaryStream(self._ch, self._key, request, timeout, {
            "metadata": metadata, "credentials": credentials,
            "wait_for_ready": wait_for_ready, "compression": compression})


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
        result: tuple[Any, grpc.Call] = self._ch._stream(
            self._key, request_iterator, timeout, metadata, credentials, wait_for_ready,
            compression, "with_call")
        return result

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

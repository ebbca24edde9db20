"""Balanced ``grpc.aio`` channels: one grpc.aio channel per endpoint, a pick per call.

::

    import clientlb.grpc.aio

    async with clientlb.grpc.aio.insecure_channel("dns:///users.internal:50051") as channel:
        stub = users_pb2_grpc.UsersStub(channel)
        await stub.Get(users_pb2.GetRequest(id=7))

The same rules as the sync channel (:mod:`clientlb.grpc`): status codes become
outcomes, a unary-unary call that never reached a server is retried at once
on another endpoint (transparent retry; a server-streaming call likewise
until its first message), ``retryable_codes=`` adds gRFC A6 policy retries of
unary-unary calls with jittered backoff within the balancer's retry budget,
streaming calls are in flight until they end, client-streaming calls are
never replayed, and a removed endpoint's sub-channel is closed once its
calls have ended.

``interceptors=`` (grpc.aio has no ``intercept_channel``) run once per
call, on top of the balancing: unary-unary interceptors wrap the balanced
call and its retries (see ``_aio_intercept``), stream interceptors run on
the sub-channel that carries the stream (again if a server-streaming call is
retried transparently).
Everything runs on the event loop that created the channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable, Collection, Generator, Sequence
from typing import Any

import grpc
import grpc.aio

from .._core.balancer import LoadBalancer, Pick
from .._core.endpoint import Endpoint, EndpointSetDiff
from .._core.errors import ConfigError, NoEndpointAvailable, strict_arguments
from .._core.outcome import Outcome
from .._engine.retry import RetryState
from ._aio_intercept import InterceptedUnaryUnaryCall, split_interceptors
from ._common import (
    DEFAULT_FAILURE_CODES,
    ChannelConfig,
    HashKey,
    Hedging,
    NoEndpointRpcError,
    attempt_wait_for_ready,
    classify,
    close_on_error,
    endpoint_target,
    is_local_origin,
    prepare_channel,
    retry_decision,
    take_retry,
)

__all__ = ["BalancedChannel", "Hedging", "insecure_channel", "secure_channel"]

_Key = tuple[str, str, Any, Any, bool]
_READY = grpc.ChannelConnectivity.READY
_FAILING = grpc.ChannelConnectivity.TRANSIENT_FAILURE
_ORDER = (
    grpc.ChannelConnectivity.READY,
    grpc.ChannelConnectivity.CONNECTING,
    grpc.ChannelConnectivity.IDLE,
    grpc.ChannelConnectivity.TRANSIENT_FAILURE,
    grpc.ChannelConnectivity.SHUTDOWN,
)


class _SubChannel:
    """One endpoint's grpc.aio channel (used from the event loop only)."""

    __slots__ = ("address", "callables", "channel", "closed", "draining", "in_flight")

    def __init__(self, address: str, channel: grpc.aio.Channel) -> None:
        self.address = address
        self.channel = channel
        self.callables: dict[_Key, Any] = {}
        self.in_flight = 0
        self.draining = False
        self.closed = False

    def callable(self, key: _Key) -> Any:
        c = self.callables.get(key)
        if c is None:
            kind, method, ser, deser, registered = key
            c = getattr(self.channel, kind)(method, request_serializer=ser,
                                           response_deserializer=deser,
                                           _registered_method=registered)
            self.callables[key] = c
        return c

    def release(self) -> None:
        self.in_flight -= 1
        if self.draining and self.in_flight <= 0:
            self.close_soon()

    def drain(self) -> None:
        self.draining = True
        if self.in_flight <= 0:
            self.close_soon()

    def close_soon(self) -> None:
        if not self.closed:
            self.closed = True
            task = asyncio.get_running_loop().create_task(self.channel.close())
            _BACKGROUND.add(task)
            task.add_done_callback(_BACKGROUND.discard)

    def __repr__(self) -> str:
        status = "closed" if self.closed else "draining" if self.draining else "open"
        return f"<SubChannel {self.address} {status} in_flight={self.in_flight}>"


_BACKGROUND: set[asyncio.Task[Any]] = set()


class BalancedChannel(grpc.aio.Channel):  # type: ignore[misc]
    """A ``grpc.aio.Channel`` over every endpoint of a :class:`~clientlb.LoadBalancer`."""

    def __init__(self, lb: LoadBalancer, *, owns_lb: bool,
                 factory: Callable[[Endpoint], grpc.aio.Channel],
                 config: ChannelConfig, interceptors: Sequence[Any] = ()) -> None:
        self._lb = lb
        self._interceptors = tuple(interceptors)
        self._owns_lb = owns_lb
        self._factory = factory
        self._config = config
        self._failure_codes = config.failure_codes
        self._subs: dict[str, _SubChannel] = {}
        self._draining: list[_SubChannel] = []
        self._changed: asyncio.Event | None = None
        self._connect_all = False
        self._ready = False
        self._closed = False
        self._rng = lb.rng
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        lb.add_diff_listener(self._on_diff)

    @property
    def lb(self) -> LoadBalancer:
        return self._lb

    def _check_ready(self) -> bool:
        """Whether the balancer's first resolution finished (remembered once true)."""
        self._ready = self._lb.wait_ready(0)
        return self._ready

    # -- sub-channels ---------------------------------------------------------------------

    def _sub(self, endpoint: Endpoint) -> _SubChannel:
        sub = self._subs.get(endpoint.address)
        if sub is not None:
            return sub
        if self._closed:
            raise grpc.aio.UsageError("Cannot invoke RPC on closed channel!")
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        sub = _SubChannel(endpoint.address, self._factory(endpoint))
        current = self._lb.state_of(endpoint.address)
        if current is None or current.draining:
            sub.draining = True  # picked just before it left: serve this call, then close
        else:
            self._subs[endpoint.address] = sub
        return sub

    def _on_diff(self, diff: EndpointSetDiff) -> None:
        loop = self._loop
        if loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._apply_diff(diff)
        elif not loop.is_closed():  # another thread, or this one outside the loop
            loop.call_soon_threadsafe(self._apply_diff, diff)

    def _apply_diff(self, diff: EndpointSetDiff) -> None:
        self._draining = [s for s in self._draining if not s.closed]
        for ep in diff.removed:
            sub = self._subs.pop(ep.address, None)
            if sub is not None:
                self._draining.append(sub)
                sub.drain()
        if diff.added and self._connect_all and not self._closed:
            for ep in diff.added:  # someone asked to connect everything: these too
                self._sub(ep).channel.get_state(try_to_connect=True)
        if self._changed is not None:
            self._changed.set()  # wake wait_for_state_change: the set of endpoints moved

    def sub_channels(self) -> dict[str, str]:
        """``{address: "open" | "draining"}`` of the sub-channels not closed yet."""
        self._draining = [s for s in self._draining if not s.closed]
        live = {s.address: "draining" for s in self._draining}
        live.update((a, "open") for a in self._subs)
        return live

    def _hash(self, method: str, request: Any, metadata: Any) -> Any:
        hash_key = self._config.hash_key
        return None if hash_key is None else hash_key(method, request, metadata)

    def _pick(self, exclude: set[str] | None, hkey: Any = None) -> Pick:
        if self._closed:  # checked before the pick, so that no pick is left in flight
            raise grpc.aio.UsageError("Cannot invoke RPC on closed channel!")
        try:
            return self._lb.pick(hkey, exclude=exclude)
        except NoEndpointAvailable as exc:
            raise NoEndpointRpcError(exc) from exc

    def _stream(self, key: _Key, request: Any, kwargs: dict[str, Any],
                exclude: set[str] | None = None, hkey: Any = None) -> tuple[Any, str]:
        """Start one streaming attempt: ``(grpc.aio call, address)``."""
        pick = self._pick(exclude or None, hkey)
        sub = self._sub(pick.endpoint)
        # An endpoint whose sub-channel is known to be unable to connect is skipped
        # before anything is sent (client-streaming calls cannot be replayed later).
        tried = exclude
        for _ in range(self._config.retry.transparent_retries):
            if sub.channel.get_state() is not _FAILING:
                break
            pick.done(Outcome.CONNECT_FAILURE)
            tried = (tried or set()) | {pick.endpoint.address}
            pick = self._pick(tried, hkey)
            sub = self._sub(pick.endpoint)
        sub.in_flight += 1
        try:
            call = sub.callable(key)(request, **kwargs)
        except BaseException:
            pick.done(Outcome.CANCELLED)
            sub.release()
            raise
        failure_codes = self._failure_codes

        def finished(c: Any) -> None:
            if c.cancelled():
                pick.done(Outcome.CANCELLED)
                sub.release()
                return
            # The call is done, so its code is already known: read it without waiting.
            task = asyncio.get_running_loop().create_task(_report(c, pick, sub, failure_codes))
            _BACKGROUND.add(task)
            task.add_done_callback(_BACKGROUND.discard)

        call.add_done_callback(finished)
        return call, pick.endpoint.address

    # -- grpc.aio.Channel -------------------------------------------------------------------

    def unary_unary(self, method: str, request_serializer: Any = None,
                    response_deserializer: Any = None,
                    _registered_method: bool | None = False) -> Any:
        return _UnaryUnary(self, ("unary_unary", method, request_serializer,
                                  response_deserializer, bool(_registered_method)))

    def unary_stream(self, method: str, request_serializer: Any = None,
                     response_deserializer: Any = None,
                     _registered_method: bool | None = False) -> Any:
        return _Streaming(self, ("unary_stream", method, request_serializer,
                                 response_deserializer, bool(_registered_method)))

    def stream_unary(self, method: str, request_serializer: Any = None,
                     response_deserializer: Any = None,
                     _registered_method: bool | None = False) -> Any:
        return _Streaming(self, ("stream_unary", method, request_serializer,
                                 response_deserializer, bool(_registered_method)))

    def stream_stream(self, method: str, request_serializer: Any = None,
                      response_deserializer: Any = None,
                      _registered_method: bool | None = False) -> Any:
        return _Streaming(self, ("stream_stream", method, request_serializer,
                                 response_deserializer, bool(_registered_method)))

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        """READY when any sub-channel is READY, else CONNECTING, IDLE, TRANSIENT_FAILURE.

        ``try_to_connect`` opens and connects a sub-channel to every endpoint.
        """
        if try_to_connect and not self._closed:
            self._connect_all = True  # endpoints discovered later are connected too
            for ep in self._lb.endpoints():
                self._sub(ep)
        if self._closed:
            return grpc.ChannelConnectivity.SHUTDOWN
        states = {s.channel.get_state(try_to_connect) for s in self._subs.values()}
        return next((s for s in _ORDER if s in states), grpc.ChannelConnectivity.IDLE)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        """Wait until the aggregate state differs from ``last_observed_state``.

        Wakes up on any sub-channel's change and on any change of the endpoint
        set (so a target that resolved to nothing yet is waited for, not spun on).
        """
        if self._changed is None:
            self._changed = asyncio.Event()
        while self.get_state() is last_observed_state:
            if self._closed:
                return
            if not self._subs:
                for ep in self._lb.endpoints():
                    self._sub(ep)
            changed = self._changed
            changed.clear()
            waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(changed.wait())]
            waits += [asyncio.ensure_future(s.channel.wait_for_state_change(
                s.channel.get_state())) for s in self._subs.values()]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()

    async def channel_ready(self) -> None:
        state = self.get_state(try_to_connect=True)
        while state is not _READY:
            await self.wait_for_state_change(state)
            state = self.get_state(try_to_connect=True)

    async def close(self, grace: float | None = None) -> None:
        """Close every sub-channel (in-flight calls get ``grace`` seconds, then are
        cancelled) and the balancer when the channel created it."""
        if self._closed:
            return
        self._closed = True
        self._lb.remove_listener(self._on_diff)
        if self._changed is not None:
            self._changed.set()
        subs = [*self._subs.values(), *self._draining]
        self._subs.clear()
        self._draining.clear()
        closing = [s.channel.close(grace) for s in subs if not s.closed]
        for s in subs:
            s.closed = True
        if closing:
            await asyncio.gather(*closing)
        if self._owns_lb:
            await self._lb.aclose()

    async def __aenter__(self) -> BalancedChannel:
        """Enter, after the balancer's first resolution (or its timeout)."""
        await self._lb.wait_ready_async()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        subs = self.sub_channels()
        draining = sum(1 for v in subs.values() if v == "draining")
        status = "closed" if self._closed else "open"
        return (f"<aio.BalancedChannel {self._lb.name!r} [{len(subs)} sub-channels, "
                f"{draining} draining] {status}>")


async def _report(call: Any, pick: Pick, sub: _SubChannel,
                  failure_codes: Collection[grpc.StatusCode]) -> None:
    try:
        code = await call.code()
        details = await call.details()
        pick.done(classify(code, details, failure_codes))
    except BaseException:
        pick.done(Outcome.CANCELLED)
        raise
    finally:
        sub.release()


class _UnaryUnary(grpc.aio.UnaryUnaryMultiCallable):  # type: ignore[misc]
    __slots__ = ("_ch", "_key")

    def __init__(self, channel: BalancedChannel, key: _Key) -> None:
        self._ch = channel
        self._key = key

    def __call__(self, request: Any, *, timeout: float | None = None, metadata: Any = None,
                 credentials: Any = None, wait_for_ready: bool | None = None,
                 compression: Any = None) -> Any:
        interceptors = self._ch._interceptors
        if not interceptors:
            return _UnaryUnaryCall(self._ch, self._key, request, timeout, {
                "metadata": metadata, "credentials": credentials,
                "wait_for_ready": wait_for_ready, "compression": compression})
        if not isinstance(metadata, grpc.aio.Metadata):
            metadata = grpc.aio.Metadata(*(metadata or ()))
        details = grpc.aio.ClientCallDetails(self._key[1].encode(), timeout, metadata,
                                             credentials, wait_for_ready)
        return InterceptedUnaryUnaryCall(
            interceptors, details, request,
            functools.partial(self._from_details, compression=compression))

    def _from_details(self, details: Any, request: Any, *, compression: Any) -> Any:
        """The end of the interceptor chain: a balanced call with the (new) details."""
        method = details.method
        if isinstance(method, bytes):
            method = method.decode()
        key = self._key
        if method != key[1]:
            key = (key[0], method, key[2], key[3], False)
        return _UnaryUnaryCall(self._ch, key, request, details.timeout, {
            "metadata": details.metadata, "credentials": details.credentials,
            "wait_for_ready": details.wait_for_ready, "compression": compression})


class _Streaming:
    __slots__ = ("_ch", "_key")

    def __init__(self, channel: BalancedChannel, key: _Key) -> None:
        self._ch = channel
        self._key = key

    def __call__(self, request: Any = None, *, timeout: float | None = None,
                 metadata: Any = None, credentials: Any = None,
                 wait_for_ready: bool | None = None, compression: Any = None) -> Any:
        kwargs = {"timeout": timeout, "metadata": metadata, "credentials": credentials,
                  "wait_for_ready": wait_for_ready, "compression": compression}
        if self._key[0] == "unary_stream":
            return _RetryingUnaryStreamCall(self._ch, self._key, request, kwargs)
        return self._ch._stream(self._key, request, kwargs, None,
                                self._ch._hash(self._key[1], None, metadata))[0]


class _RetryingUnaryStreamCall(grpc.aio.UnaryStreamCall):  # type: ignore[misc]
    """A server-streaming call, sent again to another endpoint when its first
    message cannot be read because the endpoint could not be reached
    (transparent retry: the single request can be replayed while nothing has
    come back). Otherwise it is the current attempt's call."""

    def __init__(self, channel: BalancedChannel, key: _Key, request: Any,
                 kwargs: dict[str, Any]) -> None:
        self._ch = channel
        self._key = key
        self._request = request
        self._kwargs = kwargs
        self._start = time.monotonic()
        self._received = False
        self._tried: set[str] = set()
        self._transparent = 0
        self._hkey = channel._hash(key[1], request, kwargs["metadata"])
        self._call, self._address = channel._stream(key, request, kwargs, None, self._hkey)

    def _may_retry(self, exc: grpc.aio.AioRpcError) -> bool:
        plan = self._ch._config.retry
        if self._received or not is_local_origin(exc.code(), exc.details()) \
                or self._transparent >= plan.transparent_retries \
                or len(self._ch.lb.endpoints()) <= 1:
            return False
        kwargs = self._kwargs
        if kwargs["timeout"] is not None:
            remaining = self._start + kwargs["timeout"] - time.monotonic()
            if remaining <= 0:
                return False
            kwargs = {**kwargs, "timeout": remaining}
        if not take_retry(self._ch.lb, plan.budget, attempt=self._transparent + 2,
                          reason="transparent_unavailable"):
            return False
        self._transparent += 1
        self._tried.add(self._address)
        self._call, self._address = self._ch._stream(self._key, self._request, kwargs,
                                                     self._tried, self._hkey)
        return True

    def __aiter__(self) -> Any:
        return self._iterate()

    async def _iterate(self) -> Any:
        while True:
            try:
                async for item in self._call:
                    self._received = True
                    yield item
                return
            except grpc.aio.AioRpcError as exc:
                if not self._may_retry(exc):
                    raise

    async def read(self) -> Any:
        while True:
            try:
                item = await self._call.read()
            except grpc.aio.AioRpcError as exc:
                if not self._may_retry(exc):
                    raise
                continue
            if item is not grpc.aio.EOF:
                self._received = True
            return item

    def cancelled(self) -> bool:
        result: bool = self._call.cancelled()
        return result

    def done(self) -> bool:
        result: bool = self._call.done()
        return result

    def time_remaining(self) -> float | None:
        result: float | None = self._call.time_remaining()
        return result

    def cancel(self) -> bool:
        result: bool = self._call.cancel()
        return result

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        self._call.add_done_callback(lambda _call: callback(self))

    async def initial_metadata(self) -> Any:
        return await self._call.initial_metadata()

    async def trailing_metadata(self) -> Any:
        return await self._call.trailing_metadata()

    async def code(self) -> grpc.StatusCode:
        code: grpc.StatusCode = await self._call.code()
        return code

    async def details(self) -> str:
        details: str = await self._call.details()
        return details

    async def wait_for_connection(self) -> None:
        await self._call.wait_for_connection()

    def __repr__(self) -> str:
        return f"<aio.UnaryStreamCall {self._key[1]} on {self._address}>"


grpc.aio.UnaryStreamMultiCallable.register(_Streaming)
grpc.aio.StreamUnaryMultiCallable.register(_Streaming)
grpc.aio.StreamStreamMultiCallable.register(_Streaming)


class _UnaryUnaryCall(grpc.aio.UnaryUnaryCall):  # type: ignore[misc]
    """A unary-unary call across attempts; awaits like grpc.aio's own call.

    The first attempt starts at once. ``await call`` drives the attempts in
    the awaiting task (no extra task on the fast path); anything else that
    needs the outcome (``code()``, ``add_done_callback``...) starts a task.
    """

    def __init__(self, channel: BalancedChannel, key: _Key, request: Any,
                 timeout: float | None, kwargs: dict[str, Any]) -> None:
        self._ch = channel
        self._key = key
        self._request = request
        self._timeout = timeout
        self._kwargs = kwargs
        self._start = time.monotonic() if timeout is not None else 0.0
        self._driver: Any = None  # None, "inline" or a Task
        self._finished = False
        self._response: Any = None
        self._error: BaseException | None = None
        self._callbacks: list[Callable[[Any], None]] = []
        self._waiter: asyncio.Future[None] | None = None
        self._user_cancelled = False
        self._pick: Pick | None = None
        self._sub: _SubChannel | None = None
        self._call: Any = None
        self._hedging: Hedging | None = None
        self._hkey = channel._hash(key[1], request, kwargs["metadata"])
        hedging = channel._config.hedging
        if hedging is not None and hedging.applies_to(key[1]):
            self._hedging = hedging
            self._ensure_driver()
        elif not (channel._ready or channel._check_ready()):
            self._ensure_driver()  # the first resolution is still running: await it first
        else:
            try:
                self._launch(None)
            except NoEndpointRpcError as exc:  # surfaces when awaited, as grpc.aio errors do
                self._driver = "done"
                self._finish(None, exc)

    def _remaining(self) -> float | None:
        if self._timeout is None:
            return None
        return self._start + self._timeout - time.monotonic()

    def _launch(self, tried: set[str] | None, transparent: int = 0) -> None:
        pick = self._ch._pick(tried, self._hkey)
        sub = self._ch._sub(pick.endpoint)
        sub.in_flight += 1
        kwargs = self._kwargs
        if kwargs["wait_for_ready"]:
            kwargs = {**kwargs, "wait_for_ready": attempt_wait_for_ready(
                kwargs["wait_for_ready"], self._ch._config.retry, self._ch._lb, tried,
                transparent)}
        try:
            call = sub.callable(self._key)(self._request, timeout=self._remaining(), **kwargs)
        except BaseException:
            pick.done(Outcome.CANCELLED)
            sub.release()
            raise
        self._pick, self._sub, self._call = pick, sub, call

    async def _drive(self) -> Any:
        if self._hedging is not None:
            return await self._drive_hedged(self._hedging)
        if self._pick is None:
            await self._ch._lb.wait_ready_async()
            self._launch(None)
        plan = self._ch._config.retry
        if plan.budget is not None:
            plan.budget.deposit()
        tried: set[str] | None = None
        rstate: RetryState | None = None
        transparent = 0
        while True:
            pick, sub, call = self._pick, self._sub, self._call
            assert pick is not None and sub is not None
            try:
                response = await call
            except grpc.aio.AioRpcError as exc:
                code, details = exc.code(), exc.details()
                pick.done(classify(code, details, self._ch._failure_codes))
                sub.release()
                delay, rstate = retry_decision(plan, self._ch._lb, code, details, transparent,
                                               rstate)
                remaining = self._remaining()
                if delay is None or self._user_cancelled or \
                        (remaining is not None and remaining <= max(delay, 0.0)):
                    raise
                if delay < 0:
                    transparent += 1
                elif delay:
                    await asyncio.sleep(delay)
                if tried is None:
                    tried = set()
                tried.add(pick.endpoint.address)
                self._launch(tried, transparent)
                continue
            except BaseException:
                pick.done(Outcome.CANCELLED)
                sub.release()
                raise
            pick.done(Outcome.SUCCESS)
            sub.release()
            return response

    async def _drive_hedged(self, hedging: Hedging) -> Any:
        await self._ch._lb.wait_ready_async()
        tried: set[str] = set()
        attempts: dict[asyncio.Future[Any], tuple[Pick, _SubChannel, Any]] = {}

        def launch() -> None:
            self._launch(tried or None)
            assert self._pick is not None and self._sub is not None
            tried.add(self._pick.endpoint.address)
            attempts[asyncio.ensure_future(_await(self._call))] = (
                self._pick, self._sub, self._call)

        non_fatal = hedging.non_fatal_codes | self._ch._config.retry.retryable_codes
        last_details: dict[asyncio.Future[Any], str | None] = {}

        def settle(fut: asyncio.Future[Any]) -> grpc.StatusCode:
            pick, sub, _call = attempts[fut]
            exc = fut.exception() if not fut.cancelled() else None
            if fut.cancelled():
                code, details = grpc.StatusCode.CANCELLED, None
            elif isinstance(exc, grpc.aio.AioRpcError):
                code, details = exc.code(), exc.details()
            elif exc is not None:
                code, details = grpc.StatusCode.UNKNOWN, str(exc)
            else:
                code, details = grpc.StatusCode.OK, None
            pick.done(classify(code, details, self._ch._failure_codes))
            sub.release()
            last_details[fut] = details
            return code

        budget = self._ch._config.retry.budget
        if budget is not None:
            budget.deposit()
        allowed = True

        def may_hedge() -> bool:
            # Every hedge is a retry for the balancer's budget (gRFC A6 throttling).
            nonlocal allowed
            if allowed and len(attempts) < hedging.max_attempts:
                allowed = take_retry(self._ch._lb, budget, attempt=len(attempts) + 1,
                                     reason="hedge")
                return allowed
            return False

        launch()
        pending: set[asyncio.Future[Any]] = set(attempts)
        winner: asyncio.Future[Any] | None = None
        try:
            while winner is None:
                hedge_left = allowed and len(attempts) < hedging.max_attempts
                done, pending = await asyncio.wait(
                    pending, timeout=hedging.delay if hedge_left else None,
                    return_when=asyncio.FIRST_COMPLETED)
                if not done:
                    if may_hedge():
                        launch()
                    pending = {f for f in attempts if not f.done()}
                    continue
                for fut in done:
                    code = settle(fut)
                    if winner is None and (code is grpc.StatusCode.OK or not (
                            code in non_fatal or is_local_origin(code, last_details[fut]))):
                        winner = fut
                if winner is None:
                    if may_hedge():
                        launch()
                        pending = {f for f in attempts if not f.done()}
                    elif not pending:
                        winner = next(iter(done))
        finally:
            for fut, (_pick, _sub, call) in attempts.items():
                if fut is not winner and not fut.done():
                    call.cancel()
                    fut.add_done_callback(settle)
        self._call = attempts[winner][2]
        return winner.result()

    def _finish(self, response: Any, error: BaseException | None) -> None:
        self._finished = True
        self._response = response
        self._error = error
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self._callbacks:
            callbacks, self._callbacks = self._callbacks, []
            for cb in callbacks:
                cb(self)

    async def _run(self) -> Any:
        try:
            response = await self._drive()
        except BaseException as exc:
            self._finish(None, exc)
            raise
        self._finish(response, None)
        return response

    def _ensure_driver(self) -> None:
        if self._driver is None:
            task = asyncio.get_running_loop().create_task(self._run())
            task.add_done_callback(_consume)
            self._driver = task

    async def _wait_finished(self) -> None:
        if self._finished:
            return
        self._ensure_driver()
        if self._waiter is None:
            self._waiter = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._waiter)

    def __await__(self) -> Generator[Any, None, Any]:
        if self._finished:
            if self._error is not None:
                raise self._error
            return self._response
        if self._driver is None:
            self._driver = "inline"  # drive the attempts in the awaiting task itself
            try:
                response = yield from self._drive().__await__()
            except BaseException as exc:
                self._finish(None, exc)
                raise
            self._finish(response, None)
            return response
        yield from self._wait_finished().__await__()
        if self._error is not None:
            raise self._error
        return self._response

    # -- grpc.aio.Call ---------------------------------------------------------------------

    def cancelled(self) -> bool:
        return self._finished and isinstance(self._error, asyncio.CancelledError)

    def done(self) -> bool:
        return self._finished

    def time_remaining(self) -> float | None:
        return self._remaining()

    def cancel(self) -> bool:
        if self._finished:
            return False
        self._user_cancelled = True
        if self._call is not None:
            self._call.cancel()
        if isinstance(self._driver, asyncio.Task):
            self._driver.cancel()
        return True

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        if self._finished:
            callback(self)
            return
        self._ensure_driver()
        self._callbacks.append(callback)

    async def initial_metadata(self) -> Any:
        await self._wait_finished()
        return await self._call.initial_metadata()

    async def trailing_metadata(self) -> Any:
        await self._wait_finished()
        return await self._call.trailing_metadata()

    async def code(self) -> grpc.StatusCode:
        await self._wait_finished()
        if isinstance(self._error, NoEndpointRpcError):
            return grpc.StatusCode.UNAVAILABLE
        code: grpc.StatusCode = await self._call.code()
        return code

    async def details(self) -> str:
        await self._wait_finished()
        if isinstance(self._error, NoEndpointRpcError):
            return str(self._error)
        details: str = await self._call.details()
        return details

    async def wait_for_connection(self) -> None:
        await self._wait_finished()

    def __del__(self) -> None:
        # A call that was never awaited nor observed still ran on grpc's side; give its
        # endpoint's in-flight slot back (the Pick reports itself cancelled when freed).
        if self._driver is None and not self._finished and self._sub is not None:
            sub, self._sub = self._sub, None
            with contextlib.suppress(Exception):  # no running loop at interpreter exit
                sub.release()

    def __repr__(self) -> str:
        state = "done" if self._finished else "running"
        return f"<aio.UnaryUnaryCall {self._key[1]} {state}>"


async def _await(call: Any) -> Any:
    return await call


def _consume(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()  # the error is the caller's, through the call object


@strict_arguments
def insecure_channel(
    lb_or_target: LoadBalancer | str | Sequence[str | Endpoint],
    options: Sequence[tuple[str, Any]] | None = None,
    compression: grpc.Compression | None = None,
    interceptors: Sequence[grpc.aio.ClientInterceptor] | None = None,
    *,
    server_name: str | None = None,
    failure_codes: Collection[grpc.StatusCode] = DEFAULT_FAILURE_CODES,
    retryable_codes: Collection[grpc.StatusCode] = (),
    max_attempts: int | None = None,
    transparent_retries: int | None = None,
    hedging: Hedging | None = None,
    hash_key: str | HashKey | None = None,
    **lb_options: Any,
) -> BalancedChannel:
    """A plaintext ``grpc.aio.Channel`` picking an endpoint per call.

    Arguments as :func:`clientlb.grpc.insecure_channel`, plus ``interceptors``
    (grpc.aio client interceptors, run once per call, above the retries).
    """
    lb, owns, config, opts = prepare_channel(
        lb_or_target, lb_options, options, server_name, failure_codes=failure_codes,
        retryable_codes=retryable_codes, max_attempts=max_attempts,
        transparent_retries=transparent_retries, hedging=hedging, hash_key=hash_key)
    with close_on_error(lb, owns):
        unary_chain, stream_chain = split_interceptors(interceptors)

    def factory(endpoint: Endpoint) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(endpoint_target(endpoint), options=opts,
                                         compression=compression, interceptors=stream_chain)

    return BalancedChannel(lb, owns_lb=owns, factory=factory, config=config,
                           interceptors=unary_chain)


@strict_arguments
def secure_channel(
    lb_or_target: LoadBalancer | str | Sequence[str | Endpoint],
    credentials: grpc.ChannelCredentials,
    options: Sequence[tuple[str, Any]] | None = None,
    server_name: str | None = None,
    *,
    compression: grpc.Compression | None = None,
    interceptors: Sequence[grpc.aio.ClientInterceptor] | None = None,
    failure_codes: Collection[grpc.StatusCode] = DEFAULT_FAILURE_CODES,
    retryable_codes: Collection[grpc.StatusCode] = (),
    max_attempts: int | None = None,
    transparent_retries: int | None = None,
    hedging: Hedging | None = None,
    hash_key: str | HashKey | None = None,
    **lb_options: Any,
) -> BalancedChannel:
    """A TLS ``grpc.aio.Channel``: connects to endpoint IPs, verifies the logical name.

    Arguments as :func:`clientlb.grpc.secure_channel` and :func:`insecure_channel`.
    """
    if not isinstance(credentials, grpc.ChannelCredentials):
        raise ConfigError(f"credentials must be grpc.ChannelCredentials, got {credentials!r}",
                          field="credentials")
    lb, owns, config, opts = prepare_channel(
        lb_or_target, lb_options, options, server_name, failure_codes=failure_codes,
        retryable_codes=retryable_codes, max_attempts=max_attempts,
        transparent_retries=transparent_retries, hedging=hedging, hash_key=hash_key)
    with close_on_error(lb, owns):
        unary_chain, stream_chain = split_interceptors(interceptors)

    def factory(endpoint: Endpoint) -> grpc.aio.Channel:
        return grpc.aio.secure_channel(endpoint_target(endpoint), credentials, options=opts,
                                       compression=compression, interceptors=stream_chain)

    return BalancedChannel(lb, owns_lb=owns, factory=factory, config=config,
                           interceptors=unary_chain)


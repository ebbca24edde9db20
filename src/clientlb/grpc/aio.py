"""Balanced ``grpc.aio`` channels: one grpc.aio channel per endpoint, a pick per call.

::

    import clientlb.grpc.aio

    async with clientlb.grpc.aio.insecure_channel("dns:///users.internal:50051") as channel:
        stub = users_pb2_grpc.UsersStub(channel)
        await stub.Get(users_pb2.GetRequest(id=7))

The asyncio I/O shell of the same per-call policy as the sync channel
(``_policy.RpcCall``; docs/architecture.md, "Integrations"; retries, hedging and
transparent retry as gRFC A6): this module only starts grpc.aio calls and
awaits them. ``await call`` drives a unary call's attempts in the awaiting task
itself (no extra task on the fast path); anything else that needs the outcome
first (``code()``, ``add_done_callback``, hedging) starts a task. Streams are
:class:`_StreamCall`: the current attempt's call, replaced as the policy allows
while nothing has come back (server streams only).

``interceptors=`` (grpc.aio has no ``intercept_channel``) run once per
call, on top of the balancing: unary-unary interceptors wrap the balanced
call and its retries (see ``_aio_intercept``), stream interceptors run on
the sub-channel that carries the stream (again if a server-streaming call is
retried). Everything runs on the event loop that created the channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
from collections.abc import Callable, Generator, Sequence
from typing import Any, TypeVar

import grpc
import grpc.aio

from .._core.balancer import LoadBalancer
from .._core.endpoint import Endpoint, EndpointSetDiff
from .._core.errors import strict_arguments
from .._core.outcome import Outcome
from .._engine import connectivity
from .._engine.orca import record_trailers
from . import insecure_channel as _sync_insecure_channel
from . import secure_channel as _sync_secure_channel
from ._aio_intercept import Answers, InterceptedUnaryUnaryCall, split_interceptors
from ._common import (
    ChannelConfig,
    Hedging,
    NoEndpointRpcError,
    check_compression,
    close_on_error,
    endpoint_target,
    prepare_channel,
    server_name_fourth,
)
from ._policy import Attempt, RpcCall, connect_verdict
from ._pool import ChannelBase, Key, SubChannel, aggregate, multicallable

__all__ = ["BalancedChannel", "Hedging", "insecure_channel", "secure_channel"]

_READY = grpc.ChannelConnectivity.READY
_OK = grpc.StatusCode.OK
_SUCCESS = Outcome.SUCCESS
_CANCELLED = Outcome.CANCELLED
_BACKGROUND: set[asyncio.Future[Any]] = set()


def _background(aw: Any) -> None:
    """Run ``aw`` as a task of the running loop, kept until it ends."""
    task = asyncio.ensure_future(aw)
    _BACKGROUND.add(task)
    task.add_done_callback(_BACKGROUND.discard)


class BalancedChannel(ChannelBase, grpc.aio.Channel):  # type: ignore[misc]
    """A ``grpc.aio.Channel`` over every endpoint of a :class:`~clientlb.LoadBalancer`."""

    closed_error = grpc.aio.UsageError

    def __init__(self, lb: LoadBalancer, *, owns_lb: bool,
                 factory: Callable[[Endpoint], grpc.aio.Channel],
                 config: ChannelConfig, interceptors: Sequence[Any] = ()) -> None:
        super().__init__(lb, owns_lb, factory, config)
        self._interceptors = tuple(interceptors)
        self._changed: asyncio.Event | None = None
        self._ready = False
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None

    def _check_ready(self) -> bool:
        """Whether the balancer's first resolution finished (remembered once true)."""
        self._ready = self.lb.wait_ready(0)
        return self._ready

    # -- sub-channels ---------------------------------------------------------------------

    def _new_sub(self, endpoint: Endpoint) -> SubChannel:
        if self._loop is None:  # grpc.aio channels belong to the loop that makes them
            self._loop = asyncio.get_running_loop()
        return super()._new_sub(endpoint)

    def _close_sub(self, sub: SubChannel) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():  # from any thread, on the loop
            loop.call_soon_threadsafe(_background, sub.channel.close())

    def _probe(self, endpoint: Endpoint, timeout: float) -> bool:
        """The balancer's connect probe (from its probe thread): True once the endpoint's
        sub-channel, which lives on the channel's loop, is READY."""
        loop = self._loop
        if loop is None or not loop.is_running():
            return connectivity.tcp_probe(endpoint, timeout)
        probe = asyncio.run_coroutine_threadsafe(self._aprobe(endpoint, timeout), loop)
        try:
            return probe.result(timeout + 1.0)
        except Exception:  # the loop stopped meanwhile
            probe.cancel()
            return False

    async def _aprobe(self, endpoint: Endpoint, timeout: float) -> bool:
        sub = self._probe_sub(endpoint)
        if sub is None:
            return False
        try:
            return await _connected(sub.channel, timeout, False)
        finally:
            if sub.draining:  # left the target meanwhile: close it if nothing runs on it
                sub.drain()

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
        self._drain_removed(diff)
        if diff.added and self._connect_all and not self.closed:
            for ep in diff.added:  # someone asked to connect everything: these too
                self.sub_channel(ep).channel.get_state(try_to_connect=True)
        if self._changed is not None:
            self._changed.set()  # wake wait_for_state_change: the set of endpoints moved

    # -- grpc.aio.Channel -------------------------------------------------------------------

    def _multicallable(self, key: Key) -> Any:
        return (_UnaryUnary if key[0] == "unary_unary" else _Streaming)(self, key)

    unary_unary = multicallable("unary_unary")
    unary_stream = multicallable("unary_stream")
    stream_unary = multicallable("stream_unary")
    stream_stream = multicallable("stream_stream")

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        """READY when any sub-channel is READY, else CONNECTING, IDLE, TRANSIENT_FAILURE.

        ``try_to_connect`` opens and connects a sub-channel to every endpoint.
        """
        if try_to_connect and not self.closed:
            self._connect_all = True  # endpoints discovered later are connected too
            for ep in self.lb.endpoints():
                self.sub_channel(ep)
        if self.closed:
            return grpc.ChannelConnectivity.SHUTDOWN
        return aggregate({s.channel.get_state(try_to_connect) for s in self._subs.values()})

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        """Wait until the aggregate state differs from ``last_observed_state``.

        Wakes up on any sub-channel's change and on any change of the endpoint
        set (so a target that resolved to nothing yet is waited for, not spun on).
        """
        if self._changed is None:
            self._changed = asyncio.Event()
        while self.get_state() is last_observed_state:
            if self.closed:
                return
            if not self._subs:
                for ep in self.lb.endpoints():
                    self.sub_channel(ep)
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
        subs = self._take_all()
        if subs is None:
            return
        if self._changed is not None:
            self._changed.set()
        if subs:
            await asyncio.gather(*(s.channel.close(grace) for s in subs))
        if self._owns_lb:
            await self.lb.aclose()

    async def __aenter__(self) -> BalancedChannel:
        """Enter, after the balancer's first resolution (or its timeout)."""
        await self.lb.await_ready()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return self._describe("aio.BalancedChannel", "open")


def _report_when_done(rpc: RpcCall, attempt: Attempt, call: Any) -> None:
    """grpc.aio's done callback of a stream attempt: its one outcome report."""
    if call.cancelled():
        attempt.finish(_CANCELLED)
    else:  # the call is done: its code is known, reading it does not wait
        _background(_report(rpc, attempt, call))


async def _report(rpc: RpcCall, attempt: Attempt, call: Any) -> None:
    try:
        trailers = await call.trailing_metadata() if rpc.reads_reports else None
        rpc.report(attempt, await call.code(), await call.details(), trailers)
    finally:
        attempt.finish(_CANCELLED)  # nothing when reported above


def _report_later(rpc: RpcCall, attempt: Attempt, task: asyncio.Future[Any]) -> None:
    """A hedged call's first attempt, beaten by a hedge, ended (``_status``): its one
    outcome report."""
    _BACKGROUND.discard(task)
    if task.cancelled() or task.exception() is not None:
        attempt.finish(_CANCELLED)
    else:
        rpc.report(attempt, *task.result())


async def _connected(channel: grpc.aio.Channel, timeout: float, early: bool) -> bool:
    """Wait (at most ``timeout``) for ``channel`` to be READY; see ``connect_verdict``."""
    async def verdict() -> bool:
        state = channel.get_state(try_to_connect=True)
        while (ready := connect_verdict(state, early)) is None:
            await channel.wait_for_state_change(state)
            state = channel.get_state(try_to_connect=True)
        return ready

    try:
        return await asyncio.wait_for(verdict(), timeout)
    except asyncio.TimeoutError:
        return False


async def _status(call: Any, reports: bool) -> tuple[grpc.StatusCode, str | None, Any]:
    """How an attempt ended: ``(code, details, trailing metadata when reports)``."""
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details(), exc.trailing_metadata() if reports else None
    return _OK, None, await call.trailing_metadata() if reports else None


class _UnaryUnary(grpc.aio.UnaryUnaryMultiCallable):  # type: ignore[misc]
    __slots__ = ("_ch", "_key")

    def __init__(self, channel: BalancedChannel, key: Key) -> None:
        self._ch = channel
        self._key = key

    def __call__(self, request: Any, *, timeout: float | None = None, metadata: Any = None,
                 credentials: Any = None, wait_for_ready: bool | None = None,
                 compression: Any = None) -> Any:
        interceptors = self._ch._interceptors
        if not interceptors:
            return _UnaryUnaryCall(self._ch, self._key, request, timeout, wait_for_ready, {
                "metadata": metadata, "credentials": credentials, "compression": compression})
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
        return _UnaryUnaryCall(self._ch, key, request, details.timeout, details.wait_for_ready,
                               {"metadata": details.metadata, "credentials": details.credentials,
                                "compression": compression})


class _Streaming:
    __slots__ = ("_ch", "_key")

    def __init__(self, channel: BalancedChannel, key: Key) -> None:
        self._ch = channel
        self._key = key

    def __call__(self, request: Any = None, *, timeout: float | None = None,
                 metadata: Any = None, credentials: Any = None,
                 wait_for_ready: bool | None = None, compression: Any = None) -> Any:
        key = self._key
        unary = key[0] == "unary_stream"
        rpc = RpcCall(self._ch, key[1], request if unary else None, metadata, timeout,
                      wait_for_ready, replayable=unary)
        return _StreamCall(self._ch, rpc, key, request, {
            "metadata": metadata, "credentials": credentials, "compression": compression})


grpc.aio.UnaryStreamMultiCallable.register(_Streaming)
grpc.aio.StreamUnaryMultiCallable.register(_Streaming)
grpc.aio.StreamStreamMultiCallable.register(_Streaming)


class _StreamCall:
    """A streaming call of any shape: its current attempt's grpc.aio call.

    A server-streaming call whose attempt fails before any message came back is
    sent again as the policy allows (``async for`` and ``read()`` carry on with
    the new attempt). A client- or bidi-streaming call has one attempt, sent once
    its sub-channel is READY (``RpcCall.must_connect_first``); until then the
    call's methods wait for it.
    """

    def __init__(self, channel: BalancedChannel, rpc: RpcCall, key: Key, request: Any,
                 kwargs: dict[str, Any]) -> None:
        self._ch = channel
        self._rpc = rpc
        self._key = key
        self._request = request
        self._kwargs = kwargs
        self._opening: asyncio.Future[None] | None = None
        attempt = self._attempt = rpc.next()
        if rpc.must_connect_first(attempt, attempt.sub.channel.get_state(True)):
            self._opening = asyncio.ensure_future(self._connect_first(attempt))
        else:
            self._send(attempt)

    def _send(self, attempt: Attempt | None = None) -> None:
        attempt = self._ch.start_attempt(self._rpc, self._key, self._request, self._kwargs, "",
                                  attempt)
        attempt.call.add_done_callback(functools.partial(_report_when_done, self._rpc,
                                                         attempt))
        self._attempt = attempt

    async def _connect_first(self, attempt: Attempt) -> None:
        rpc = self._rpc
        try:
            # each endpoint at most once: the last candidate is sent as it is
            while rpc.logical.can_fail_over(attempt.address) and not await _connected(
                    attempt.sub.channel, rpc.connect_timeout(), True):
                rpc.unready(attempt)
                attempt = self._attempt = rpc.next()
        except BaseException:
            attempt.finish(_CANCELLED)  # cancelled before anything was sent
            raise
        self._send(attempt)

    def _pending(self) -> asyncio.Future[None] | None:
        opening = self._opening
        return None if opening is None or opening.done() else opening

    async def _call(self) -> Any:
        """The current attempt's call, once sent."""
        if self._opening is not None:
            await asyncio.shield(self._opening)
        return self._attempt.call

    async def _failed(self, exc: grpc.aio.AioRpcError) -> bool:
        """The attempt failed: True when another one was started in its place."""
        delay = self._rpc.failed(self._attempt, exc.code(), exc.details())
        if delay is None:
            return False
        if delay:
            await asyncio.sleep(delay)
        self._send()
        return True

    def __aiter__(self) -> Any:
        return self._iterate()

    async def _iterate(self) -> Any:
        await self._call()
        while True:
            try:
                async for item in self._attempt.call:
                    self._rpc.replay = False  # a message came back: the call is committed
                    yield item
                return
            except grpc.aio.AioRpcError as exc:
                if not await self._failed(exc):
                    raise

    async def read(self) -> Any:
        while True:
            try:
                item = await (await self._call()).read()
            except grpc.aio.AioRpcError as exc:
                if await self._failed(exc):
                    continue
                raise
            if item is not grpc.aio.EOF:
                self._rpc.replay = False
            return item

    async def _response(self) -> Any:
        return await (await self._call())

    def __await__(self) -> Generator[Any, None, Any]:  # stream-unary: the response
        return self._response().__await__()

    def cancel(self) -> bool:
        opening = self._pending()
        if opening is None:
            return bool(self._attempt.call.cancel())
        return opening.cancel()

    def cancelled(self) -> bool:
        opening = self._opening
        if opening is not None and opening.done() and opening.cancelled():
            return True
        return self._pending() is None and bool(self._attempt.call.cancelled())

    def done(self) -> bool:
        opening = self._opening
        if opening is not None and opening.done() and self._attempt.call is None:
            return True  # cancelled, or no endpoint, before it was sent
        return self._pending() is None and bool(self._attempt.call.done())

    def time_remaining(self) -> float | None:
        return self._rpc.timeout()

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        opening = self._pending()
        if opening is not None:
            opening.add_done_callback(lambda _f: self.add_done_callback(callback))
        elif self._attempt.call is None:
            callback(self)
        else:
            self._attempt.call.add_done_callback(lambda _call: callback(self))

    def __getattr__(self, name: str) -> Any:  # the rest of grpc.aio.Call: the attempt's
        if self._pending() is None:
            return getattr(self._attempt.call, name)

        async def when_sent(*args: Any) -> Any:
            return await getattr(await self._call(), name)(*args)

        return when_sent

    def __repr__(self) -> str:
        return f"<aio.StreamCall {self._key[1]} on {self._attempt.address}>"


grpc.aio.UnaryStreamCall.register(_StreamCall)
grpc.aio.StreamUnaryCall.register(_StreamCall)
grpc.aio.StreamStreamCall.register(_StreamCall)


class _UnaryUnaryCall(Answers, grpc.aio.UnaryUnaryCall):  # type: ignore[misc]
    """A unary-unary call across attempts; awaits like grpc.aio's own call.

    The first attempt starts at once. ``await call`` drives the attempts in
    the awaiting task (no extra task on the fast path); anything else that
    needs the outcome (``code()``, ``add_done_callback``...) starts a task.
    """

    def __init__(self, channel: BalancedChannel, key: Key, request: Any,
                 timeout: float | None, wait_for_ready: bool | None,
                 kwargs: dict[str, Any]) -> None:
        self._ch = channel
        self._key = key
        self._request = request
        self._kwargs = kwargs
        self._rpc = rpc = RpcCall(channel, key[1], request, kwargs["metadata"], timeout,
                                  wait_for_ready, hedge=True)
        self._driver: Any = None  # None, "inline" or a Task
        self._finished = False
        self._response: Any = None
        self._error: BaseException | None = None
        self._callbacks: list[Callable[[Any], None]] = []
        self._waiter: asyncio.Future[None] | None = None
        self._user_cancelled = False
        self._attempt: Attempt | None = None
        if rpc.hedging is not None or not (channel._ready or channel._check_ready()):
            self._ensure_driver()  # hedges, or the first resolution must be awaited first
        else:
            try:
                self._attempt = channel.start_attempt(rpc, key, request, kwargs)
            except NoEndpointRpcError as exc:  # surfaces when awaited, as grpc.aio errors do
                self._driver = "done"
                self._finish(None, exc)

    def _launch(self) -> Attempt:
        self._attempt = self._ch.start_attempt(self._rpc, self._key, self._request, self._kwargs)
        return self._attempt

    async def _drive(self) -> Any:
        rpc = self._rpc
        if self._attempt is None:
            await self._ch.lb.await_ready()
            if rpc.hedging is not None:
                return await self._hedged(rpc)
            self._launch()
        while True:
            attempt = self._attempt
            assert attempt is not None
            trailers = None
            try:
                response = await attempt.call
                if rpc.reads_reports:
                    trailers = await attempt.call.trailing_metadata()
            except grpc.aio.AioRpcError as exc:
                delay = rpc.ended(attempt, exc.code(), exc.details(),
                                  exc.trailing_metadata() if rpc.reads_reports else None)
                if delay is None or self._user_cancelled:
                    raise
                if delay:
                    await asyncio.sleep(delay)
                self._launch()
                continue
            except BaseException:
                attempt.finish(_CANCELLED)
                raise
            if trailers:
                record_trailers(attempt, trailers)
            attempt.finish(_SUCCESS)
            return response

    async def _hedged(self, rpc: RpcCall) -> Any:
        """Hedged attempts in flight together; the first final answer wins."""
        tasks: dict[asyncio.Future[Any], Attempt] = {}

        def launch() -> None:
            attempt = self._launch()
            tasks[asyncio.ensure_future(_status(attempt.call, rpc.reads_reports))] = attempt

        launch()
        winner: Attempt | None = None
        try:
            while winner is None:
                done, _ = await asyncio.wait([t for t in tasks if not t.done()],
                                             timeout=rpc.hedge_delay(),
                                             return_when=asyncio.FIRST_COMPLETED)
                if not done and rpc.hedge():
                    launch()
                for task in done:
                    attempt = tasks.pop(task)
                    delay = rpc.ended(attempt, *task.result())
                    if delay is None and winner is None:
                        winner = attempt
                    elif delay == 0:
                        launch()
        finally:
            cancel = rpc.losers(winner, list(tasks.values()))
            for task, attempt in tasks.items():  # the losers: cancelled, not blamed
                if attempt in cancel:
                    attempt.call.cancel()
                    task.cancel()
                    attempt.finish(_CANCELLED)
                else:  # the first attempt, the strategy's pick: reported when it ends
                    _BACKGROUND.add(task)
                    task.add_done_callback(functools.partial(_report_later, rpc, attempt))
        self._attempt = winner
        return await winner.call

    def _finish(self, response: Any, error: BaseException | None) -> None:
        if self._finished:  # cancel() came first
            return
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
        return self._rpc.timeout()

    def cancel(self) -> bool:
        """Cancel the call: done and cancelled at once, as grpc.aio's own calls."""
        if self._finished:
            return False
        self._user_cancelled = True
        attempt = self._attempt
        if attempt is not None:
            attempt.call.cancel()
            attempt.finish(_CANCELLED)  # nothing when the driver reported it already
        if isinstance(self._driver, asyncio.Task):
            self._driver.cancel()
        self._finish(None, asyncio.CancelledError())
        return True

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        if self._finished:
            callback(self)
            return
        self._ensure_driver()
        self._callbacks.append(callback)

    async def _answer(self, name: str) -> Any:
        """``name()`` of the answering attempt's call (for no endpoint: of the error)."""
        await self._wait_finished()
        if isinstance(self._error, NoEndpointRpcError):
            return getattr(self._error, name)()
        assert self._attempt is not None
        return await getattr(self._attempt.call, name)()

    async def wait_for_connection(self) -> None:
        await self._wait_finished()

    def __del__(self) -> None:
        # A call that was never awaited nor observed still ran on grpc's side; give its
        # endpoint's in-flight slot back and report it cancelled.
        attempt = self._attempt
        if self._driver is None and not self._finished and attempt is not None:
            with contextlib.suppress(Exception):  # no running loop at interpreter exit
                attempt.finish(_CANCELLED)

    def __repr__(self) -> str:
        state = "done" if self._finished else "running"
        return f"<aio.UnaryUnaryCall {self._key[1]} {state}>"


def _consume(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()  # the error is the caller's, through the call object



_F = TypeVar("_F", bound=Callable[..., Any])


def _twin_of(sync: Callable[..., Any]) -> Callable[[_F], _F]:
    """Make a channel constructor of this module the twin of the sync one ``sync``.

    The twin takes ``sync``'s keyword-only arguments through ``**kwargs`` and gets the
    same argument handling: :func:`strict_arguments`, and ``server_name_fourth`` when
    it takes ``credentials``. Its signature (``help()``, ``inspect.signature``) lists
    its own positional parameters, then ``sync``'s keyword-only ones.
    """
    def twin(function: _F) -> _F:
        own = inspect.signature(function)
        positional = [p for p in own.parameters.values() if p.kind is not p.VAR_KEYWORD]
        keywords = [p for p in inspect.signature(sync).parameters.values()
                    if p.kind in (p.KEYWORD_ONLY, p.VAR_KEYWORD)]
        checked = strict_arguments(server_name_fourth(function) if "credentials" in own.parameters
                                   else function)
        checked.__signature__ = own.replace(  # type: ignore[attr-defined]
            parameters=[*positional, *keywords])
        return checked

    return twin


@_twin_of(_sync_insecure_channel)
def insecure_channel(
    lb_or_target: LoadBalancer | str | Sequence[str | Endpoint],
    options: Sequence[tuple[str, Any]] | None = None,
    compression: grpc.Compression | None = None,
    interceptors: Sequence[grpc.aio.ClientInterceptor] | None = None,
    **kwargs: Any,
) -> BalancedChannel:
    """A plaintext ``grpc.aio.Channel`` picking an endpoint per call.

    Arguments as :func:`clientlb.grpc.insecure_channel` (``server_name=``,
    ``failure_codes=``, ``retryable_codes=``, ``max_attempts=``,
    ``transparent_retries=``, ``hedging=``, ``hash_key=`` and the balancer's
    options), plus ``interceptors`` (grpc.aio client interceptors, run once per
    call, above the retries).
    """
    return _open(lb_or_target, None, options, compression, interceptors, kwargs)


@_twin_of(_sync_secure_channel)
def secure_channel(
    lb_or_target: LoadBalancer | str | Sequence[str | Endpoint],
    credentials: grpc.ChannelCredentials,
    options: Sequence[tuple[str, Any]] | None = None,
    compression: grpc.Compression | None = None,
    interceptors: Sequence[grpc.aio.ClientInterceptor] | None = None,
    **kwargs: Any,
) -> BalancedChannel:
    """A TLS ``grpc.aio.Channel``: connects to endpoint IPs, verifies the logical name.

    The positional arguments are ``grpc.aio.secure_channel``'s (``target,
    credentials, options, compression, interceptors``); the others are
    keyword-only, as :func:`clientlb.grpc.secure_channel` and
    :func:`insecure_channel`. A server name in the fourth place (where clientlb
    used to take it) still works, with a ``DeprecationWarning``.
    """
    return _open(lb_or_target, credentials, options, compression, interceptors, kwargs)


def _open(lb_or_target: Any, credentials: grpc.ChannelCredentials | None,
          options: Sequence[tuple[str, Any]] | None, compression: grpc.Compression | None,
          interceptors: object, kwargs: dict[str, Any]) -> BalancedChannel:
    compression = check_compression(compression)
    lb, owns, config, opts = prepare_channel(lb_or_target, options, credentials=credentials,
                                             **kwargs)
    with close_on_error(lb, owns):
        unary_chain, stream_chain = split_interceptors(interceptors)

    def factory(endpoint: Endpoint) -> grpc.aio.Channel:
        target = endpoint_target(endpoint)
        if credentials is None:
            return grpc.aio.insecure_channel(target, options=opts, compression=compression,
                                             interceptors=stream_chain)
        return grpc.aio.secure_channel(target, credentials, options=opts,
                                       compression=compression, interceptors=stream_chain)

    return BalancedChannel(lb, owns_lb=owns, factory=factory, config=config,
                           interceptors=unary_chain)

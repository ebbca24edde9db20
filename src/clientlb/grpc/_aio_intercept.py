"""grpc.aio interceptors on top of a balanced channel: once per call, not per attempt.

grpc.aio has no ``intercept_channel``; a channel takes ``interceptors=`` and
runs them around each call. A balanced channel does the same:

* unary-unary interceptors run once per call, *above* the balancing, as
  with ``grpc.intercept_channel`` in the sync world: their continuation
  returns the balanced call, whose transparent and policy retries happen
  beneath them. This module implements that chain with grpc.aio's public
  contract (``intercept_unary_unary(continuation, client_call_details,
  request)`` returning a call or a response).
* stream interceptors are installed on each endpoint's sub-channel: once
  per call, except that a server-streaming call sent again (gRFC A6 retry
  before its first message) passes through them again.

See docs/architecture.md, "Integrations", for the shells around the calls.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Generator, Sequence
from typing import Any

import grpc
import grpc.aio

from .._core.errors import ConfigError

__all__ = ["Answers", "InterceptedUnaryUnaryCall", "split_interceptors"]


def _only(kind: str, base: type) -> type:
    """An interceptor of one call kind forwarding to ``inner`` (grpc.aio dispatches an
    interceptor by the base classes it has, so one that implements several kinds is
    split into one forwarder per kind)."""
    method = f"intercept_{kind}"

    def __init__(self: Any, inner: Any) -> None:
        self._inner = inner

    async def forward(self: Any, continuation: Any, details: Any, request: Any) -> Any:
        return await getattr(self._inner, method)(continuation, details, request)

    return type(f"_{kind.title().replace('_', '')}Only", (base,),
                {"__init__": __init__, method: forward})


_UnaryStreamOnly = _only("unary_stream", grpc.aio.UnaryStreamClientInterceptor)
_StreamUnaryOnly = _only("stream_unary", grpc.aio.StreamUnaryClientInterceptor)
_StreamStreamOnly = _only("stream_stream", grpc.aio.StreamStreamClientInterceptor)


def split_interceptors(interceptors: object) -> tuple[tuple[Any, ...], list[Any] | None]:
    """``(unary-unary interceptors for the channel, stream ones for sub-channels)``.

    An object that is several kinds of interceptor is split, so that the
    sub-channels never run its unary-unary part a second time.
    """
    if interceptors is None:
        return (), None
    if isinstance(interceptors, (str, bytes)) or not isinstance(interceptors, (list, tuple)):
        raise ConfigError(f"must be a list of grpc.aio client interceptors, got "
                          f"{interceptors!r}", field="interceptors")
    unary: list[Any] = []
    streams: list[Any] = []
    for item in interceptors:
        if not isinstance(item, grpc.aio.ClientInterceptor):
            raise ConfigError(f"must be grpc.aio client interceptors, got {item!r}",
                              field="interceptors")
        if isinstance(item, grpc.aio.UnaryUnaryClientInterceptor):
            unary.append(item)
        if isinstance(item, grpc.aio.UnaryStreamClientInterceptor):
            streams.append(_UnaryStreamOnly(item))
        if isinstance(item, grpc.aio.StreamUnaryClientInterceptor):
            streams.append(_StreamUnaryOnly(item))
        if isinstance(item, grpc.aio.StreamStreamClientInterceptor):
            streams.append(_StreamStreamOnly(item))
    return tuple(unary), (streams or None)


class _ResponseCall(grpc.aio.UnaryUnaryCall):  # type: ignore[misc]
    """What an interceptor that returned a response (not a call) gives the caller."""

    def __init__(self, response: Any) -> None:
        self._response = response

    def __await__(self) -> Generator[Any, None, Any]:
        return self._response
        yield  # pragma: no cover - makes this a generator

    def cancelled(self) -> bool:
        return False

    def done(self) -> bool:
        return True

    def time_remaining(self) -> float | None:
        return None

    def cancel(self) -> bool:
        return False

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        callback(self)

    async def initial_metadata(self) -> Any:
        return grpc.aio.Metadata()

    async def trailing_metadata(self) -> Any:
        return grpc.aio.Metadata()

    async def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.OK

    async def details(self) -> str:
        return ""

    async def wait_for_connection(self) -> None:
        return None


class Answers:
    """``initial_metadata()``, ``trailing_metadata()``, ``code()`` and ``details()`` of a
    call object, read from the call that answered (``_answer(name)``)."""

    async def _answer(self, name: str) -> Any:
        raise NotImplementedError

    async def initial_metadata(self) -> Any:
        return await self._answer("initial_metadata")

    async def trailing_metadata(self) -> Any:
        return await self._answer("trailing_metadata")

    async def code(self) -> grpc.StatusCode:
        code: grpc.StatusCode = await self._answer("code")
        return code

    async def details(self) -> str:
        details: str = await self._answer("details")
        return details


class InterceptedUnaryUnaryCall(Answers, grpc.aio.UnaryUnaryCall):  # type: ignore[misc]
    """A balanced unary-unary call behind a chain of grpc.aio interceptors."""

    def __init__(self, interceptors: Sequence[Any], details: grpc.aio.ClientCallDetails,
                 request: Any, final: Callable[[Any, Any], Any]) -> None:
        self._task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(
            self._run(list(interceptors), final, details, request))

    async def _run(self, interceptors: list[Any], final: Callable[[Any, Any], Any],
                   details: Any, request: Any) -> Any:
        if not interceptors:
            return final(details, request)
        continuation = functools.partial(self._run, interceptors[1:], final)
        result = await interceptors[0].intercept_unary_unary(continuation, details, request)
        if isinstance(result, grpc.aio.UnaryUnaryCall):
            return result
        return _ResponseCall(result)

    def __await__(self) -> Generator[Any, None, Any]:
        call = yield from self._task.__await__()
        response = yield from call.__await__()
        return response

    async def _call(self) -> Any:
        return await asyncio.shield(self._task)

    def cancelled(self) -> bool:
        if not self._task.done():
            return False
        if self._task.cancelled():
            return True
        if self._task.exception() is not None:
            return False
        result: bool = self._task.result().cancelled()
        return result

    def done(self) -> bool:
        if not self._task.done():
            return False
        if self._task.cancelled() or self._task.exception() is not None:
            return True
        result: bool = self._task.result().done()
        return result

    def time_remaining(self) -> float | None:
        if self._task.done() and not self._task.cancelled() and not self._task.exception():
            result: float | None = self._task.result().time_remaining()
            return result
        return None

    def cancel(self) -> bool:
        if not self._task.done():
            return self._task.cancel()
        if self._task.cancelled() or self._task.exception() is not None:
            return False
        result: bool = self._task.result().cancel()
        return result

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        def chained(task: asyncio.Task[Any]) -> None:
            if task.cancelled() or task.exception() is not None:
                callback(self)
            else:
                task.result().add_done_callback(lambda _call: callback(self))

        self._task.add_done_callback(chained)

    async def _answer(self, name: str) -> Any:
        try:
            call = await self._call()
        except grpc.aio.AioRpcError as exc:
            return getattr(exc, name)()
        return await getattr(call, name)()

    async def wait_for_connection(self) -> None:
        call = await self._call()
        await call.wait_for_connection()

    def __repr__(self) -> str:
        return f"<aio.InterceptedUnaryUnaryCall {'done' if self.done() else 'running'}>"

"""One call engine, one behaviour: the conformance matrix of every integration.

Every integration drives the same engine (``clientlb._engine.call``:
``LogicalCall`` decides, ``Completion`` reports; docs/architecture.md, "The
call engine"), so every integration must behave the same way in the same
situation. This file states that once, as a table: rows are scenarios, columns
are integrations, and each cell runs one scenario through one integration
against real servers on 127.0.0.1, checking three things the caller and the
operator can see:

* the outcomes reported to the balancer, in order (an outcome listener);
* the retry budget: ``requests`` +1 per logical call, ``retries`` +1 per
  retry of an attempt that may have reached a backend, never for one that did
  not (a connect failure), ``refused`` +1 when the budget said no;
* the family of result the caller gets: ``"ok"``, ``"connect"``,
  ``"deadline"``, ``"unavailable"``, ``"status 503"``, ``"reset"``,
  ``"cancelled"``...

and, after every cell, that no pick leaked (``lb.in_flight() == 0``).

The rule (the same for every integration):

* an attempt that never reached a backend (connection refused, a connect that
  hangs) is reported ``connect_failure``, retried at once on another endpoint,
  each endpoint at most once per call, free of the retry budget, and the
  endpoint is skipped by later picks (connectivity ``transient_failure``);
* an attempt that may have reached one (a reset after the request was sent, a
  503 or UNAVAILABLE from the server, a response timeout) is retried only when
  retryable and replayable, paying one budget token per retry; with the
  budget spent the caller gets the failure;
* ``deadline=`` (or the integration's equivalent, or ``RetryPolicy(deadline=)``)
  bounds the whole logical call;
* ``Registry.update(name, retry=...)`` reaches live transports and channels at
  their next call;
* a call in flight on an endpoint that is removed completes, and its outcome is
  reported;
* a cancelled call reports ``cancelled``, never the endpoint's failure.

Cells where a scenario cannot happen are ``N/A`` with the reason (skipped, so
that they show in the report); cells where an integration disagrees with the
rule are strict ``xfail`` with the reason. Each integration is an adapter with
the same methods (``open``, ``call``, ``start``, ``close``); each scenario is a
function of a :class:`Cell`. Deterministic routing comes from :class:`InOrder`
(the first usable endpoint, in the order listed), speed from short timeouts,
``tenacity.wait_none()`` backoff and servers shared by the module.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from typing import Any, ClassVar

import grpc
import h2.config
import h2.connection
import h2.events
import h2.exceptions
import httpx
import pytest
import tenacity

import clientlb
import clientlb.grpc
import clientlb.grpc.aio
from clientlb import Outcome, RetryBudget, RetryPolicy

from ._grpc_servers import SUNARY, UNARY, USTREAM, GrpcBackend
from ._helpers import wait_until
from ._http_backend import Backend, dead_address

SUCCESS = Outcome.SUCCESS
CONNECT_FAILURE = Outcome.CONNECT_FAILURE
FAILURE = Outcome.FAILURE
GATEWAY_FAILURE = Outcome.GATEWAY_FAILURE
TIMEOUT = Outcome.TIMEOUT
CANCELLED = Outcome.CANCELLED

#: A connect to an endpoint that does not answer gives up after this (httpx's
#: ``connect`` timeout, TCP's ``timeout=``, grpcio's minimum connect timeout).
CONNECT_TIMEOUT = 0.25
#: The response timeout of the "timeout" scenario (httpx's read timeout, gRPC's ``timeout=``).
RESPONSE_TIMEOUT = 0.25
#: The whole-call deadline of the "deadline" scenario: more than one attempt's
#: timeout, less than two.
DEADLINE = 0.4
#: How long a call may take past its deadline on this (shared, 2-core) machine.
SLACK = 0.35
#: Bounds every call that should not time out (a broken cell fails, it does not hang).
CALL_TIMEOUT = 5.0

FAST = RetryPolicy(backoff=tenacity.wait_none())
#: No reserve and 20% per request: spent from the first call (a retry costs 5 requests).
EMPTY_BUDGET = RetryPolicy(backoff=tenacity.wait_none(),
                           budget=RetryBudget(ratio=0.2, min_retries_per_second=0))


# -- deterministic routing ------------------------------------------------------------------


class _First(clientlb.Picker):
    __slots__ = ("_state",)

    def __init__(self, state: Any) -> None:
        self._state = state

    def pick(self, key: Any, now: float) -> Any:
        return self._state


class InOrder(clientlb.Strategy):
    """The first usable endpoint in the order listed: a scenario says where each
    attempt goes (a retry excludes those tried; endpoints that cannot connect are
    left out of the picker by the balancer)."""

    name: ClassVar[str] = "in_order"

    def build(self, endpoints: Sequence[Any], weights: Sequence[float],
              rng: random.Random) -> clientlb.Picker:
        return _First(endpoints[0])


# -- servers ----------------------------------------------------------------------------------


class LineServer:
    """A TCP server on 127.0.0.1 that answers each line: ``echo`` sends it back,
    ``reset`` aborts the connection with an RST instead, ``hold`` echoes once
    ``gate`` is set. ``lines`` counts the lines received."""

    def __init__(self, mode: str = "echo") -> None:
        self.mode = mode
        self.gate = threading.Event()
        self.lines = 0
        self._sock = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.address = f"127.0.0.1:{self._sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            buffer = b""
            try:
                while True:
                    data = conn.recv(4096)
                    if not data:
                        return
                    buffer += data
                    while b"\n" in buffer:
                        line, _, buffer = buffer.partition(b"\n")
                        self.lines += 1
                        if self.mode == "reset":
                            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                            struct.pack("ii", 1, 0))
                            return
                        if self.mode == "hold":
                            self.gate.wait(10)
                        conn.sendall(line + b"\n")
            except OSError:
                return

    def close(self) -> None:
        self.gate.set()
        self._sock.close()


class Unanswered:
    """A loopback port whose accept queue is full: a connect to it hangs (its SYNs
    are dropped), the purest "never reached" that is not a refusal."""

    def __init__(self) -> None:
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(0)
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._fillers: list[socket.socket] = []
        wait_until(self._queue_is_full, timeout=5, interval=0, message="a full accept queue")

    def _queue_is_full(self) -> bool:
        probe = socket.socket()
        probe.settimeout(0.05)
        try:
            probe.connect(self._listener.getsockname())
        except TimeoutError:
            probe.close()
            return True
        self._fillers.append(probe)  # it took a place in the queue
        return False

    def close(self) -> None:
        for conn in self._fillers:
            conn.close()
        self._listener.close()


class H2ResetServer:
    """Speaks HTTP/2 just far enough for a gRPC client to send its call (SETTINGS
    exchanged, so the client's connection is READY), then aborts the connection
    with an RST when the request's headers arrive: an UNAVAILABLE that reached
    the server."""

    def __init__(self) -> None:
        self.requests = 0
        self._sock = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.address = f"127.0.0.1:{self._sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        h2conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        h2conn.initiate_connection()
        with conn:
            try:
                conn.sendall(h2conn.data_to_send())
                while True:
                    data = conn.recv(65536)
                    if not data:
                        return
                    events = h2conn.receive_data(data)
                    conn.sendall(h2conn.data_to_send())
                    if any(isinstance(e, h2.events.RequestReceived) for e in events):
                        self.requests += 1
                        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                        struct.pack("ii", 1, 0))
                        return
            except (OSError, h2.exceptions.ProtocolError):
                return

    def close(self) -> None:
        self._sock.close()


class HeldGrpcBackend(GrpcBackend):
    """A gRPC backend whose every call waits for ``gate`` before it is answered."""

    def __init__(self, name: str) -> None:
        self.gate = threading.Event()
        super().__init__(name)

    def _enter(self, method: str, context: grpc.ServicerContext) -> None:
        super()._enter(method, context)
        self.gate.wait(10)

    def stop(self) -> None:
        self.gate.set()
        super().stop()


class Held:
    """A server of one cell that holds every call until :meth:`release`."""

    def __init__(self, address: str, arrived: Callable[[], bool], release: Callable[[], None],
                 close: Callable[[], None]) -> None:
        self.address = address
        self.arrived = arrived
        self.release = release
        self.close = close


class Fleet:
    """The servers shared by the module, started on first use (``-k http`` starts no
    gRPC server), by protocol and role."""

    def __init__(self) -> None:
        self._servers: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    def address(self, protocol: str, role: str) -> str:
        with self._lock:
            server = self._servers.get((protocol, role))
            if server is None:
                server = self._servers[(protocol, role)] = self._start(protocol, role)
        return str(server.address)

    @staticmethod
    def _start(protocol: str, role: str) -> Any:
        if role.startswith("hang"):  # the same for every protocol: the connect hangs
            return Unanswered()
        if protocol == "http":
            backend = Backend(role)
            if role == "unavailable":
                backend.status = 503
            elif role == "reset":
                backend.reset = True
            elif role.startswith("slow"):
                backend.hang = threading.Event()  # never set before close
            return backend
        if protocol == "grpc":
            if role == "reset":
                return H2ResetServer()
            backend = GrpcBackend(role, workers=16)
            if role == "unavailable":
                backend.status = grpc.StatusCode.UNAVAILABLE
            elif role.startswith("slow"):
                backend.delay = 2.0
            return backend
        return LineServer("reset" if role == "reset" else "echo")

    def close(self) -> None:
        for server in self._servers.values():
            stop = getattr(server, "stop", None) or server.close
            stop()


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    servers = Fleet()
    yield servers
    servers.close()


# -- running calls in the background ----------------------------------------------------------


class Running:
    """A call started in the background: ``result()`` is what the caller got."""

    def __init__(self, future: concurrent.futures.Future[str],
                 cancel: Callable[[], Any] | None = None) -> None:
        self._future = future
        self._cancel = cancel or future.cancel

    def cancel(self) -> None:
        self._cancel()

    def result(self) -> str:
        try:
            return self._future.result(timeout=CALL_TIMEOUT)
        except concurrent.futures.CancelledError:
            return "cancelled"


def in_thread(fn: Callable[[], str]) -> concurrent.futures.Future[str]:
    future: concurrent.futures.Future[str] = concurrent.futures.Future()

    def run() -> None:
        try:
            future.set_result(fn())
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=run, daemon=True).start()
    return future


class LoopThread:
    """An asyncio loop in a thread of its own, so that the scenarios, written once,
    drive async integrations from the test's thread (as a control plane would)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def submit(self, coro: Coroutine[Any, Any, str]) -> concurrent.futures.Future[str]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(CALL_TIMEOUT)

    def close(self) -> None:
        async def shutdown() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.loop.shutdown_asyncgens()

        self.run(shutdown())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


# -- the integrations -------------------------------------------------------------------------


class Adapter:
    """One integration, seen through the same four methods.

    ``open(lb, deadline)`` builds the client on ``lb`` (``deadline``: the
    integration's whole-call deadline, None for its default); ``call(timeout)``
    makes one logical call and says what the caller got (``timeout``: the
    response timeout, None for the default); ``start()`` starts one in the
    background; ``close()`` closes the client (not the balancer).

    Class attributes describe what the rule means for this integration:
    ``replayable`` — may an attempt that reached a backend be sent again;
    ``reset`` and ``reset_kind`` — the outcome of a reset after the request was
    sent, and what the caller gets when it is not retried; ``refused_kind`` —
    what the caller gets when a 503/UNAVAILABLE is not retried.
    """

    protocol: ClassVar[str]
    replayable: ClassVar[bool] = True
    reset: ClassVar[Outcome] = FAILURE
    reset_kind: ClassVar[str] = "unavailable"
    refused_kind: ClassVar[str] = "unavailable"
    #: May one attempt time out while the call goes on to another endpoint?
    attempt_timeout: ClassVar[bool] = True

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet

    def server(self, role: str) -> str:
        return self.fleet.address(self.protocol, role)

    def held(self) -> Held:
        raise NotImplementedError

    def open(self, lb: clientlb.LoadBalancer, deadline: float | None = None) -> None:
        raise NotImplementedError

    def call(self, timeout: float | None = None) -> str:
        raise NotImplementedError

    def start(self, timeout: float | None = None) -> Running:
        return Running(in_thread(lambda: self.call(timeout)))

    def close(self) -> None:
        raise NotImplementedError

    def shutdown(self) -> None:
        """After the cell: release what the adapter itself runs (an event loop)."""


def http_kind(exc: httpx.TransportError) -> str:
    if isinstance(exc, httpx.TimeoutException) and "deadline exceeded" in str(exc):
        return "deadline"
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        return "connect"
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    return "transport"


def http_result(response: httpx.Response) -> str:
    return "ok" if response.status_code == 200 else f"status {response.status_code}"


def http_timeout(timeout: float | None) -> httpx.Timeout:
    return httpx.Timeout(CALL_TIMEOUT if timeout is None else timeout, connect=CONNECT_TIMEOUT)


class HTTPBase(Adapter):
    protocol = "http"
    reset_kind = "transport"
    refused_kind = "status 503"  # the last response is returned

    def held(self) -> Held:
        backend = Backend("held")
        backend.hang = threading.Event()
        return Held(backend.address, lambda: backend.served() >= 1, backend.hang.set,
                    backend.close)


class HTTPSync(HTTPBase):
    """``httpx.Client(transport=clientlb.HTTPTransport(lb))``, GET requests."""

    def open(self, lb: clientlb.LoadBalancer, deadline: float | None = None) -> None:
        self.client = httpx.Client(transport=clientlb.HTTPTransport(lb, deadline=deadline))

    def call(self, timeout: float | None = None) -> str:
        try:
            return http_result(self.client.get("http://svc/", timeout=http_timeout(timeout)))
        except httpx.TransportError as exc:
            return http_kind(exc)

    def close(self) -> None:
        self.client.close()


class AsyncAdapter(Adapter):
    """An async integration driven on a :class:`LoopThread`."""

    def __init__(self, fleet: Fleet) -> None:
        super().__init__(fleet)
        self.loop = LoopThread()

    def call(self, timeout: float | None = None) -> str:
        return self.loop.run(self.acall(timeout))  # type: ignore[no-any-return]

    async def acall(self, timeout: float | None = None) -> str:
        raise NotImplementedError

    def start(self, timeout: float | None = None) -> Running:
        return Running(self.loop.submit(self.acall(timeout)))

    def shutdown(self) -> None:
        self.loop.close()


class HTTPAsync(HTTPBase, AsyncAdapter):
    """``httpx.AsyncClient(transport=clientlb.AsyncHTTPTransport(lb))``, GET requests."""

    def open(self, lb: clientlb.LoadBalancer, deadline: float | None = None) -> None:
        async def client() -> httpx.AsyncClient:
            return httpx.AsyncClient(
                transport=clientlb.AsyncHTTPTransport(lb, deadline=deadline))

        self.client = self.loop.run(client())

    async def acall(self, timeout: float | None = None) -> str:
        try:
            return http_result(await self.client.get("http://svc/",
                                                     timeout=http_timeout(timeout)))
        except httpx.TransportError as exc:
            return http_kind(exc)

    def close(self) -> None:
        self.loop.run(self.client.aclose())


def grpc_kind(exc: BaseException) -> str:
    if isinstance(exc, (grpc.FutureCancelledError, asyncio.CancelledError)):
        return "cancelled"
    assert isinstance(exc, grpc.RpcError), exc
    code, details = exc.code(), exc.details() or ""
    if code is grpc.StatusCode.UNAVAILABLE:
        return "connect" if "failed to connect" in details else "unavailable"
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return "deadline"
    return str(code.name).lower()


#: The gRPC form of a 0.25 s connect timeout (grpcio gives up a connect after
#: max(min_reconnect_backoff, current backoff)): a connect that hangs becomes a
#: connect failure, as with httpx's connect timeout and TCP's timeout=.
GRPC_OPTIONS = [("grpc.min_reconnect_backoff_ms", int(CONNECT_TIMEOUT * 1000)),
                ("grpc.initial_reconnect_backoff_ms", int(CONNECT_TIMEOUT * 1000))]


class GrpcBase(Adapter):
    """A sync ``clientlb.grpc.insecure_channel(lb, retryable_codes=[UNAVAILABLE])``:
    ``deadline`` is gRPC's ``timeout=`` (which bounds the whole call: there is no
    per-attempt timeout in gRPC, gRFC A6)."""

    protocol = "grpc"
    reset = GATEWAY_FAILURE  # an UNAVAILABLE the server's side caused
    attempt_timeout = False

    def held(self) -> Held:
        backend = HeldGrpcBackend("held")
        return Held(backend.address, lambda: len(backend.calls) >= 1, backend.gate.set,
                    backend.stop)

    def open(self, lb: clientlb.LoadBalancer, deadline: float | None = None) -> None:
        self.deadline = deadline
        self.channel = clientlb.grpc.insecure_channel(
            lb, options=GRPC_OPTIONS, retryable_codes=[grpc.StatusCode.UNAVAILABLE])

    def timeout(self, timeout: float | None) -> float | None:
        return timeout if timeout is not None else self.deadline

    def call(self, timeout: float | None = None) -> str:
        try:
            return self.invoke(self.timeout(timeout))
        except (grpc.RpcError, grpc.FutureCancelledError) as exc:
            return grpc_kind(exc)

    def invoke(self, timeout: float | None) -> str:
        raise NotImplementedError

    def close(self) -> None:
        self.channel.close()


def named(answer: bytes) -> str:
    return "ok" if answer.startswith(b"ok") or answer.startswith(b"held") else repr(answer)


class GrpcUnary(GrpcBase):
    """A blocking unary-unary call."""

    def invoke(self, timeout: float | None) -> str:
        return named(self.channel.unary_unary(UNARY)(b"x", timeout=timeout))


class GrpcFuture(GrpcBase):
    """``unary_unary(...).future(...)``; cancelled with ``future.cancel()``."""

    def invoke(self, timeout: float | None) -> str:
        return named(self.channel.unary_unary(UNARY).future(b"x", timeout=timeout).result())

    def start(self, timeout: float | None = None) -> Running:
        future = self.channel.unary_unary(UNARY).future(b"x", timeout=self.timeout(timeout))

        def result() -> str:
            try:
                return named(future.result())
            except (grpc.RpcError, grpc.FutureCancelledError) as exc:
                return grpc_kind(exc)

        return Running(in_thread(result), future.cancel)


class GrpcServerStream(GrpcBase):
    """A unary-stream call read to its end; cancelled with ``call.cancel()``."""

    def invoke(self, timeout: float | None) -> str:
        parts = list(self.channel.unary_stream(USTREAM)(b"x", timeout=timeout))
        return "ok" if len(parts) == 3 else repr(parts)

    def start(self, timeout: float | None = None) -> Running:
        call = self.channel.unary_stream(USTREAM)(b"x", timeout=self.timeout(timeout))

        def result() -> str:
            try:
                parts = list(call)
            except grpc.RpcError as exc:
                return grpc_kind(exc)
            return "ok" if len(parts) == 3 else repr(parts)

        return Running(in_thread(result), call.cancel)


class GrpcClientStream(GrpcBase):
    """A blocking stream-unary call (two request messages, not replayable);
    started in the background with ``.future()``, the form that can be cancelled."""

    replayable = False

    def invoke(self, timeout: float | None) -> str:
        answer = self.channel.stream_unary(SUNARY)(iter([b"a", b"b"]), timeout=timeout)
        return "ok" if answer.endswith(b":2") else repr(answer)

    def start(self, timeout: float | None = None) -> Running:
        future = self.channel.stream_unary(SUNARY).future(iter([b"a", b"b"]),
                                                          timeout=self.timeout(timeout))

        def result() -> str:
            try:
                answer = future.result()
            except (grpc.RpcError, grpc.FutureCancelledError) as exc:
                return grpc_kind(exc)
            return "ok" if answer.endswith(b":2") else repr(answer)

        return Running(in_thread(result), future.cancel)


class GrpcAioUnary(AsyncAdapter):
    """``await`` a unary-unary call on ``clientlb.grpc.aio.insecure_channel``; cancelled
    by cancelling the task that awaits it."""

    protocol = "grpc"
    reset = GATEWAY_FAILURE
    attempt_timeout = False
    held = GrpcBase.held

    def open(self, lb: clientlb.LoadBalancer, deadline: float | None = None) -> None:
        self.deadline = deadline

        async def channel() -> Any:
            return clientlb.grpc.aio.insecure_channel(
                lb, options=GRPC_OPTIONS, retryable_codes=[grpc.StatusCode.UNAVAILABLE])

        self.channel = self.loop.run(channel())

    async def acall(self, timeout: float | None = None) -> str:
        try:
            answer = await self.channel.unary_unary(UNARY)(
                b"x", timeout=timeout if timeout is not None else self.deadline)
        except grpc.RpcError as exc:
            return grpc_kind(exc)
        return named(answer)

    def close(self) -> None:
        self.loop.run(self.channel.close())


def tcp_kind(exc: BaseException) -> str:
    if isinstance(exc, clientlb.ConnectError):
        return "deadline" if "deadline" in str(exc) else "connect"
    if isinstance(exc, clientlb.NoEndpointAvailable):
        return "no endpoint"
    if isinstance(exc, ConnectionResetError):
        return "reset"
    if isinstance(exc, TimeoutError):
        return "timeout"
    raise exc


class TCPBase(Adapter):
    """A connection is one logical call: the connect is where the engine decides
    (no request is ever replayed), and the pick stays in flight until it closes.
    A call here connects, exchanges one line and closes; ``timeout`` is TCP's own,
    the connect timeout of each attempt."""

    protocol = "tcp"
    replayable = False
    reset_kind = "reset"

    def held(self) -> Held:
        server = LineServer("hold")
        return Held(server.address, lambda: server.lines >= 1, server.gate.set, server.close)

    def open(self, lb: clientlb.LoadBalancer, deadline: float | None = None) -> None:
        self.lb = lb
        self.deadline = deadline

    def close(self) -> None:
        pass


class TCPSync(TCPBase):
    """``clientlb.connect(lb, timeout=, deadline=)``."""

    def call(self, timeout: float | None = None) -> str:
        try:
            with clientlb.connect(self.lb, timeout=timeout or CONNECT_TIMEOUT,
                                  deadline=self.deadline) as sock:
                sock.settimeout(CALL_TIMEOUT)
                sock.sendall(b"ping\n")
                answer = sock.recv(64)
        except OSError as exc:
            return tcp_kind(exc)
        return "ok" if answer == b"ping\n" else repr(answer)


class TCPAsync(TCPBase, AsyncAdapter):
    """``await clientlb.open_connection(lb, timeout=, deadline=)``; cancelled by
    cancelling the task (while it connects: afterwards the call is over)."""

    async def acall(self, timeout: float | None = None) -> str:
        try:
            reader, writer = await clientlb.open_connection(
                self.lb, timeout=timeout or CONNECT_TIMEOUT, deadline=self.deadline)
        except OSError as exc:
            return tcp_kind(exc)
        try:
            writer.write(b"ping\n")
            answer = await asyncio.wait_for(reader.readline(), CALL_TIMEOUT)
        except OSError as exc:
            return tcp_kind(exc)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        return "ok" if answer == b"ping\n" else repr(answer)


ADAPTERS: dict[str, type[Adapter]] = {
    "http": HTTPSync,
    "http_async": HTTPAsync,
    "grpc_unary": GrpcUnary,
    "grpc_future": GrpcFuture,
    "grpc_server_stream": GrpcServerStream,
    "grpc_client_stream": GrpcClientStream,
    "grpc_aio_unary": GrpcAioUnary,
    "tcp": TCPSync,
    "tcp_async": TCPAsync,
}


# -- one cell ---------------------------------------------------------------------------------


class Cell:
    """One scenario on one integration: the balancers it built, what they saw, and
    the check of one logical call."""

    def __init__(self, adapter: Adapter) -> None:
        self.adapter = adapter
        self.lbs: list[clientlb.LoadBalancer] = []
        self.seen: list[tuple[str, str]] = []
        self.names: dict[str, str] = {}
        self.opened = False
        self.registry: clientlb.Registry | None = None
        self._mark = 0  # outcomes before this index belong to earlier calls

    def balancer(self, roles: dict[str, str], *, retry: RetryPolicy | None = FAST,
                 registry: clientlb.Registry | None = None,
                 deadline: float | None = None) -> clientlb.LoadBalancer:
        """A balancer over ``roles`` (name → address, in pick order), watched, with
        the adapter opened on it."""
        addresses = list(roles.values())
        options: dict[str, Any] = {"strategy": InOrder(), "outlier_detection": None,
                                   "rng": random.Random(7), "retry": retry}
        if registry is not None:
            lb = registry.create("svc", addresses, **options)
            self.registry = registry
        else:
            lb = clientlb.LoadBalancer(addresses, name="svc", **options)
        self.lbs.append(lb)
        self.names.update({address: role for role, address in roles.items()})
        lb.add_outcome_listener(lambda state, outcome, latency, now: self.seen.append(
            (self.names.get(state.address, state.address), outcome.value)))
        if self.opened:
            self.adapter.close()
        self.adapter.open(lb, deadline)
        self.opened = True
        return lb

    def settle(self, lb: clientlb.LoadBalancer, reports: int) -> None:
        """Wait until every pick is done (a leak fails here) and, briefly, for
        ``reports`` outcomes (a listener runs right after the pick's release)."""
        wait_until(lambda: lb.in_flight() == 0, timeout=3,
                   message=f"no call in flight (outcomes seen: {self.seen})")
        with contextlib.suppress(AssertionError):  # the check says what is missing
            wait_until(lambda: len(self.seen) >= reports, timeout=0.2, interval=0.005)

    def check(self, lb: clientlb.LoadBalancer, kind: str, outcomes: list[tuple[str, Outcome]],
              *, retries: int = 0, refused: int = 0, timeout: float | None = None,
              running: Running | None = None) -> float:
        """One logical call (or the end of ``running``): what the caller got, the
        outcomes reported, the budget's ``(requests, retries, refused)`` deltas;
        returns the seconds it took."""
        budget = lb.retry_budget
        before = budget.statistics() if budget is not None else None
        start = time.monotonic()
        got = running.result() if running is not None else self.adapter.call(timeout)
        elapsed = time.monotonic() - start
        first = self._mark
        self.settle(lb, first + len(outcomes))
        reported = self.seen[first:]
        self._mark = len(self.seen)
        expected_budget: tuple[int, int, int] | None = None
        deltas: tuple[int, int, int] | None = None
        if before is not None:
            after = lb.retry_budget.statistics()  # type: ignore[union-attr]
            deltas = (after["requests"] - before["requests"],
                      after["retries"] - before["retries"], after["refused"] - before["refused"])
            expected_budget = (0 if running is not None else 1, retries, refused)
        actual = (got, reported, deltas)
        expected = (kind, [(role, o.value) for role, o in outcomes], expected_budget)
        assert actual == expected, (f"\n(result, outcomes, budget (requests, retries, refused))"
                                    f"\n  got      {actual}\n  expected {expected}")
        return elapsed

    def close(self) -> None:
        try:
            for lb in self.lbs:
                self.settle(lb, 0)
        finally:
            if self.opened:
                self.adapter.close()
            self.adapter.shutdown()
            if self.registry is not None:
                self.registry.delete("svc")
            for lb in self.lbs:
                lb.close()


# -- the scenarios ----------------------------------------------------------------------------


def never_reached(cell: Cell, unreachable: str) -> None:
    """``unreachable`` never takes the call: a connect failure, retried at once on
    the next endpoint, free of the budget; later calls skip it."""
    a = cell.adapter
    address = dead_address() if unreachable == "dead" else a.server(unreachable)
    lb = cell.balancer({unreachable: address, "ok": a.server("ok")})
    cell.check(lb, "ok", [(unreachable, CONNECT_FAILURE), ("ok", SUCCESS)])
    # "connecting" only while a background probe runs: both are skipped by picks
    assert lb.snapshot().by_address()[address].connectivity in (
        "transient_failure", "connecting")
    cell.check(lb, "ok", [("ok", SUCCESS)])


def connection_refused(cell: Cell) -> None:
    never_reached(cell, "dead")


def hang(cell: Cell) -> None:
    """The connect hangs (SYN unanswered) past the connect timeout: never reached."""
    never_reached(cell, "hang")


def reset_after_send(cell: Cell) -> None:
    """The server aborts the connection after the request was sent: it may have
    run it, so only a replayable call is retried, for one budget token."""
    a = cell.adapter
    lb = cell.balancer({"reset": a.server("reset"), "ok": a.server("ok")})
    if a.replayable:
        cell.check(lb, "ok", [("reset", a.reset), ("ok", SUCCESS)], retries=1)
    else:
        cell.check(lb, a.reset_kind, [("reset", a.reset)])


def unavailable(cell: Cell) -> None:
    """The server answers 503 / UNAVAILABLE: retried when replayable, one token."""
    a = cell.adapter
    lb = cell.balancer({"unavailable": a.server("unavailable"), "ok": a.server("ok")})
    if a.replayable:
        cell.check(lb, "ok", [("unavailable", GATEWAY_FAILURE), ("ok", SUCCESS)], retries=1)
    else:
        cell.check(lb, a.refused_kind, [("unavailable", GATEWAY_FAILURE)])


def timeout(cell: Cell) -> None:
    """The server takes longer than the response timeout."""
    a = cell.adapter
    lb = cell.balancer({"slow": a.server("slow"), "ok": a.server("ok")})
    if a.attempt_timeout:  # the attempt times out, the call goes on (idempotent: 1 token)
        cell.check(lb, "ok", [("slow", TIMEOUT), ("ok", SUCCESS)], retries=1,
                   timeout=RESPONSE_TIMEOUT)
    else:  # gRPC's timeout= is the whole call's: nothing is left for a retry
        cell.check(lb, "deadline", [("slow", TIMEOUT)], timeout=RESPONSE_TIMEOUT)


def budget_exhausted(cell: Cell) -> None:
    """With the budget spent, a connect failure still fails over (it is free) and a
    retryable failure from the server goes to the caller (``refused`` +1)."""
    a = cell.adapter
    if a.protocol == "tcp":  # TCP never retries a reached attempt: only the free failover
        lb = cell.balancer({"dead": dead_address(), "ok": a.server("ok")}, retry=EMPTY_BUDGET)
        cell.check(lb, "ok", [("dead", CONNECT_FAILURE), ("ok", SUCCESS)])
        return
    lb = cell.balancer({"dead": dead_address(), "unavailable": a.server("unavailable"),
                        "ok": a.server("ok")}, retry=EMPTY_BUDGET)
    cell.check(lb, a.refused_kind, [("dead", CONNECT_FAILURE), ("unavailable", GATEWAY_FAILURE)],
               refused=1 if a.replayable else 0)


def deadline_exceeded(cell: Cell) -> None:
    """The deadline bounds the whole call, across a free failover and attempts that
    time out: given to the integration (``deadline=``, gRPC ``timeout=``), then as
    ``RetryPolicy(deadline=)``."""
    a = cell.adapter
    roles = {"dead": "", "slow": a.server("hang" if a.protocol == "tcp" else "slow"),
             "slow2": a.server("hang2" if a.protocol == "tcp" else "slow2")}
    if a.protocol == "tcp":  # a TCP endpoint is slow at connect: a connect failure
        outcomes = [("dead", CONNECT_FAILURE), ("slow", CONNECT_FAILURE),
                    ("slow2", CONNECT_FAILURE)]
        retries = 0
    elif a.attempt_timeout:  # HTTP: the read timeout, then the time left
        outcomes = [("dead", CONNECT_FAILURE), ("slow", TIMEOUT), ("slow2", TIMEOUT)]
        retries = 1
    else:  # gRPC: one attempt after the failover, cut by the deadline
        outcomes = [("dead", CONNECT_FAILURE), ("slow", TIMEOUT)]
        retries = 0
    response = RESPONSE_TIMEOUT if a.protocol == "http" else None
    for policy_deadline in (False, True):
        roles["dead"] = dead_address()
        if policy_deadline:
            retry = RetryPolicy(backoff=tenacity.wait_none(), deadline=DEADLINE)
            lb = cell.balancer(roles, retry=retry)
        else:
            lb = cell.balancer(roles, deadline=DEADLINE)
        elapsed = cell.check(lb, "deadline", outcomes, retries=retries, timeout=response)
        assert DEADLINE - 0.05 < elapsed < DEADLINE + SLACK, (policy_deadline, elapsed)


def endpoint_removed(cell: Cell) -> None:
    """The endpoint of a call in flight leaves the target: the call completes and its
    outcome is reported; the next call goes elsewhere."""
    a = cell.adapter
    held = a.held()
    try:
        lb = cell.balancer({"held": held.address, "ok": a.server("ok")})
        running = a.start()
        wait_until(lambda: held.arrived() and lb.in_flight() == 1, timeout=5,
                   message="the call on the held endpoint")
        assert lb.remove(held.address)
        assert lb.snapshot().by_address()[held.address].in_flight == 1
        held.release()
        cell.check(lb, "ok", [("held", SUCCESS)], running=running)
        assert held.address not in lb.snapshot().by_address()
        cell.check(lb, "ok", [("ok", SUCCESS)])
    finally:
        held.close()


def live_retry_change(cell: Cell) -> None:
    """``Registry.update(name, retry=...)`` reaches the live client at its next call:
    two dead endpoints take two attempts, one with ``retry=None``, two again after."""
    registry = clientlb.Registry(telemetry=False)
    lb = cell.balancer({"dead": dead_address(), "dead2": dead_address()}, registry=registry)
    cell.check(lb, "connect", [("dead", CONNECT_FAILURE), ("dead2", CONNECT_FAILURE)])
    registry.update("svc", retry=None)
    assert lb.retry_budget is None
    cell.check(lb, "connect", [("dead", CONNECT_FAILURE)])
    registry.update("svc", retry=FAST)
    cell.check(lb, "connect", [("dead", CONNECT_FAILURE), ("dead2", CONNECT_FAILURE)])


def cancel(cell: Cell) -> None:
    """The caller cancels a call in flight: ``cancelled``, not the endpoint's failure,
    and no other attempt."""
    a = cell.adapter
    held = a.held() if a.protocol != "tcp" else None
    try:
        address = held.address if held is not None else a.server("hang")
        lb = cell.balancer({"held": address, "ok": a.server("ok")})
        running = a.start(CALL_TIMEOUT)  # a TCP connect that hangs until cancelled
        wait_until(lambda: (held is None or held.arrived()) and lb.in_flight() == 1, timeout=5,
                   message="the call in flight")
        running.cancel()
        cell.check(lb, "cancelled", [("held", CANCELLED)], running=running)
        row = lb.snapshot().by_address()[address]
        assert row.failures == 0 and row.connectivity != "transient_failure", row
    finally:
        if held is not None:
            held.close()


SCENARIOS: dict[str, Callable[[Cell], None]] = {
    "connection_refused": connection_refused,
    "reset_after_send": reset_after_send,
    "timeout": timeout,
    "hang": hang,
    "unavailable": unavailable,
    "budget_exhausted": budget_exhausted,
    "deadline_exceeded": deadline_exceeded,
    "endpoint_removed": endpoint_removed,
    "live_retry_change": live_retry_change,
    "cancel": cancel,
}


# -- the matrix -------------------------------------------------------------------------------

RUN = "run"


def na(reason: str) -> tuple[str, str]:
    return ("N/A", reason)


def xfail(reason: str) -> tuple[str, str]:
    return ("xfail", reason)


NO_STATUS = na("raw TCP has no status: the server cannot answer 503/UNAVAILABLE")
TCP_NO_RESPONSE = na("a TCP call ends at connect: there is no response to time out (a "
                     "connect timeout is the 'hang' row; reads belong to the application)")
BLOCKING = na("a blocking call has no cancel API (the future column cancels)")
BLOCKING_HTTP = na("a sync httpx request has no cancel API")
BLOCKING_CONNECT = na("socket.create_connection has no cancel API")
#: Rows: scenarios. Columns: INTEGRATIONS, in order.
INTEGRATIONS = tuple(ADAPTERS)
MATRIX: dict[str, tuple[Any, ...]] = {
    #                     http  http_async unary future sstream cstream aio  tcp  tcp_async
    "connection_refused": (RUN, RUN, RUN, RUN, RUN, RUN, RUN, RUN, RUN),
    "reset_after_send":   (RUN, RUN, RUN, RUN, RUN, RUN, RUN, RUN, RUN),
    "timeout":            (RUN, RUN, RUN, RUN, RUN, RUN, RUN, TCP_NO_RESPONSE, TCP_NO_RESPONSE),
    "hang":               (RUN, RUN, RUN, RUN, RUN, RUN, RUN, RUN, RUN),
    "unavailable":        (RUN, RUN, RUN, RUN, RUN, RUN, RUN, NO_STATUS, NO_STATUS),
    "budget_exhausted":   (RUN, RUN, RUN, RUN, RUN, RUN, RUN, RUN, RUN),
    "deadline_exceeded":  (RUN, RUN, RUN, RUN, RUN, RUN, RUN, RUN, RUN),
    "endpoint_removed":   (RUN, RUN, RUN, RUN, RUN, RUN, RUN, RUN, RUN),
    "live_retry_change":  (RUN, RUN, RUN, RUN, RUN, RUN, RUN, RUN, RUN),
    "cancel":             (BLOCKING_HTTP, RUN, BLOCKING, RUN, RUN, RUN, RUN, BLOCKING_CONNECT,
                           RUN),
}


def cells() -> Iterator[Any]:
    for scenario, row in MATRIX.items():
        assert len(row) == len(INTEGRATIONS), scenario
        for integration, spec in zip(INTEGRATIONS, row, strict=True):
            marks: list[Any] = []
            if spec != RUN:
                kind, reason = spec
                marks.append(pytest.mark.skip(reason=f"N/A: {reason}") if kind == "N/A"
                             else pytest.mark.xfail(strict=True, reason=reason))
            yield pytest.param(scenario, integration, marks=marks,
                               id=f"{scenario}-{integration}")


def test_the_matrix_has_a_cell_for_every_scenario_and_integration() -> None:
    """No scenario or integration is silently missing: N/A is said, with a reason."""
    assert set(MATRIX) == set(SCENARIOS)
    assert all(len(row) == len(INTEGRATIONS) for row in MATRIX.values())


@pytest.mark.parametrize(("scenario", "integration"), list(cells()))
def test_conformance(fleet: Fleet, scenario: str, integration: str) -> None:
    """The engine's rule holds for this scenario on this integration."""
    cell = Cell(ADAPTERS[integration](fleet))
    try:
        SCENARIOS[scenario](cell)
    finally:
        cell.close()


# -- outside the matrix: what a cell cannot show ----------------------------------------------


@pytest.mark.parametrize("integration", ["http", "http_async"])
def test_a_deadline_spent_before_an_attempt_leaves_no_pick_in_flight(
        fleet: Fleet, integration: str) -> None:
    """When the deadline is spent as an attempt would start (here at once, as it can
    be between attempts), no attempt is made: nothing stays in flight while the caller
    holds the error, nothing is reported for an endpoint that was never tried."""
    lb = clientlb.LoadBalancer([fleet.address("http", "ok")], name="svc", strategy=InOrder(),
                               outlier_detection=None, retry=FAST)
    seen: list[Outcome] = []
    lb.add_outcome_listener(lambda state, outcome, latency, now: seen.append(outcome))
    spent = {"clientlb.deadline": 1e-9}
    try:
        if integration == "http":
            with httpx.Client(transport=clientlb.HTTPTransport(lb)) as client, \
                    pytest.raises(httpx.TimeoutException, match="deadline exceeded") as info:
                client.get("http://svc/", extensions=spent)
        else:
            async def main() -> pytest.ExceptionInfo[httpx.TimeoutException]:
                async with httpx.AsyncClient(transport=clientlb.AsyncHTTPTransport(lb)) as client:
                    with pytest.raises(httpx.TimeoutException, match="deadline exceeded") as info:
                        await client.get("http://svc/", extensions=spent)
                return info

            info = asyncio.run(main())
        assert (lb.in_flight(), seen) == (0, []), info.value
    finally:
        lb.close()

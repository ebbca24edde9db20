"""Balanced raw TCP connections, with or without TLS, from threads and asyncio.

Databases, caches and queues do not speak HTTP: their drivers open TCP
connections. :func:`connect` and :func:`open_connection` are the balanced
twins of :func:`socket.create_connection` and :func:`asyncio.open_connection`:

::

    lb = clientlb.LoadBalancer(["10.0.0.1:6379", "10.0.0.2:6379"], name="cache",
                               strategy="least_request")
    with clientlb.connect(lb, timeout=2.0) as sock:      # a socket.socket
        sock.sendall(b"PING\\r\\n")

    reader, writer = await clientlb.open_connection(lb)   # asyncio streams

**Failover.** A connect that is refused, unreachable, times out or fails its
TLS handshake never reached the backend's application: it is reported as
``Outcome.CONNECT_FAILURE`` (local origin in Envoy's outlier detection; a
connect timeout is not ``TIMEOUT``, which means "accepted and did not answer")
and tried again elsewhere under the call engine's rule for attempts that never
reached a backend (clientlb._engine.call; docs/architecture.md, "The call engine"):
each endpoint at most once per connect, free of the retry budget, within
``attempts`` when given (``retry=None``: one attempt unless ``attempts=`` says
otherwise) and the total ``deadline``; the endpoint then stays out of picks until
a background probe connects to it (clientlb._engine.connectivity), so a dead
endpoint costs one failed attempt, not one per connect. When every attempt failed,
:class:`ConnectError` names each endpoint tried and why; it is a
:class:`ConnectionError` (an ``except OSError`` or ``except ConnectionError``
written for the stdlib keeps working) and a :class:`~clientlb.ClientLBError`.

**TLS.** The connection goes to the endpoint's address while the certificate
is verified against ``server_hostname``, which is also the SNI. Its default is
the balancer's logical name ``lb.name`` (a DNS/SRV name, a Consul service, or
``LoadBalancer(name=...)``), the same rule as the HTTP transports: the
replicas of one service share its certificate. A static target has no logical
name (its ``lb.name`` is ``"static"``), so TLS over a static target without
``server_hostname=`` or ``name=`` is a :class:`~clientlb.ConfigError` rather
than a silent verification against the word "static" (unless the context
does not check host names: then there is no SNI either). For an ``srv://``
target the ``_service._proto.`` labels are dropped: the certificate of
``_pg._tcp.db.example`` is for ``db.example`` (RFC 6125). ``server_hostname``
may also be a callable of the :class:`~clientlb.Endpoint` for backends that
each carry their own certificate (``server_hostname=lambda ep: ep.host``).

**In flight until closed.** A connection is one long call: its
:class:`~clientlb.Pick` stays in flight, so ``least_request`` counts open
connections (the "least connections" of hardware balancers) and ``peak_ewma``
multiplies its latency estimate by them, until the connection is closed:

* sync: :func:`connect` returns a :class:`BalancedSocket` (or, with TLS, a
  :class:`BalancedSSLSocket`), a real ``socket.socket`` subclass whose
  ``close()`` — and so ``with`` — completes the pick. A socket dropped without
  ``close()`` completes it as ``CANCELLED`` when it is garbage-collected (the
  pick's own finalizer), after Python's usual ``ResourceWarning``.
* asyncio: the streams are built the way :func:`asyncio.open_connection`
  builds them, on a :class:`asyncio.StreamReaderProtocol` subclass whose
  ``connection_lost`` completes the pick. That is called however the
  connection ends — ``writer.close()``, ``writer.transport.abort()``, a reset
  by the peer — which is more faithful than wrapping ``StreamWriter.close``
  alone. (A peer that only half-closes, sending EOF, leaves the connection
  open for writing, as asyncio does, until the writer is closed.) The writer
  is a :class:`BalancedStreamWriter`.

**Latency.** A connection's lifetime says nothing about the backend (a pooled
connection lives for hours), so the latency recorded is the *connect time*:
TCP handshake plus TLS handshake, the closest thing a raw connection has to a
round trip, and what a slow or overloaded host stretches first. It is
reported when the connection closes (one pick, one ``done``). The outcome is
success unless the application said otherwise with ``set_outcome()`` (a
protocol error it saw on the connection), a read or write on the socket failed
(a reset or a broken pipe is a ``FAILURE``, a socket timeout a ``TIMEOUT``) or,
for asyncio, the transport was lost with an error (a reset), a ``FAILURE`` —
the same outcomes for both, as the conformance matrix checks.

Socket timeout: like :func:`socket.create_connection`, the returned socket
keeps ``timeout`` as its timeout for later reads and writes; call
``sock.settimeout(None)`` for a blocking socket.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import math
import socket
import ssl as _ssl
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, NoReturn, TypeVar

from ._core.balancer import LoadBalancer, Pick
from ._core.endpoint import Endpoint
from ._core.errors import ConfigError, ConnectError, NoEndpointAvailable, strict_arguments
from ._core.outcome import Outcome
from ._core.text import plural
from ._engine.call import LIVE_POLICY, Completion, LogicalCall
from ._engine.naming import logical_name
from ._engine.retry import DEFAULT_RETRY_POLICY
from ._strategies import Key

__all__ = [
    "BalancedSSLSocket",
    "BalancedSocket",
    "BalancedStreamWriter",
    "aconnect_with",
    "connect",
    "connect_with",
    "open_connection",
]

ServerHostname = str | Callable[[Endpoint], str] | None
T = TypeVar("T")
ErrorTypes = type[BaseException] | tuple[type[BaseException], ...]

DEFAULT_TIMEOUT = 5.0


def _lease(pick: Pick) -> Completion:
    """An open connection's completion handle: reports when it is closed, with the
    connect time as its latency."""
    lease = Completion(pick)
    lease.mark_first_byte()
    return lease


def _set_outcome(lease: Completion | None, outcome: Outcome | str) -> None:
    if lease is None:
        raise RuntimeError("this connection is not tracked by a balancer")
    lease.outcome = outcome if isinstance(outcome, Outcome) else Outcome(outcome)


def _lease_of(sock: object) -> Completion | None:
    # dup() and accept() build instances of the same class without a lease.
    lease: Completion | None = getattr(sock, "_clientlb_lease", None)
    return lease


def _tracked(sock: object) -> Completion:
    lease = _lease_of(sock)
    if lease is None:
        raise RuntimeError("this connection is not tracked by a balancer")
    return lease


def _io_failed(sock: object, exc: OSError) -> None:
    lease = _lease_of(sock)
    if lease is not None and lease.outcome is Outcome.SUCCESS:
        lease.outcome = (Outcome.TIMEOUT if isinstance(exc, TimeoutError)
                         else Outcome.FAILURE)


def _watched(name: str) -> Callable[..., Any]:
    """A socket method that records a failed read or write as the connection's outcome."""

    def method(self: _TrackedMixin, *args: Any) -> Any:
        try:
            return getattr(super(_TrackedMixin, self), name)(*args)
        except OSError as exc:
            _io_failed(self, exc)
            raise

    method.__name__ = method.__qualname__ = name
    return method


class _TrackedMixin:
    """What both balanced socket classes add to theirs: see :class:`BalancedSocket`."""

    __slots__ = ()

    @property
    def endpoint(self) -> Endpoint:
        return _tracked(self).pick.endpoint

    @property
    def connect_latency(self) -> float:
        return _tracked(self).first_byte or 0.0

    def set_outcome(self, outcome: Outcome | str) -> None:
        """The outcome reported when the connection closes (default: success)."""
        _set_outcome(_lease_of(self), outcome)

    # Reads and writes that fail tell the balancer the connection failed (a reset, a
    # broken pipe, a timeout): the outcome reported when the socket closes. The methods
    # of the socket class after this one do the I/O.
    recv = _watched("recv")
    recv_into = _watched("recv_into")
    send = _watched("send")
    sendall = _watched("sendall")

    def close(self) -> None:
        try:
            super().close()  # type: ignore[misc]  # the socket class after this one
        finally:
            lease = _lease_of(self)
            if lease is not None:
                lease.finish()


class BalancedSocket(_TrackedMixin, socket.socket):
    """A connected ``socket.socket`` whose ``close()`` completes its balancer pick.

    ``endpoint`` is the backend it is connected to, ``connect_latency`` the
    seconds the connect took; :meth:`set_outcome` records a failure the
    application saw on the connection, reported when it closes. ``close()``
    completes the pick even when ``makefile()`` objects keep the descriptor
    open a little longer; a ``dup()`` of the socket is not tracked.
    """

    __slots__ = ("_clientlb_lease",)

    _clientlb_lease: Completion | None


class BalancedSSLSocket(_TrackedMixin, _ssl.SSLSocket):
    """A TLS ``ssl.SSLSocket`` whose ``close()`` completes its balancer pick.

    Same attributes as :class:`BalancedSocket`.
    """

    _clientlb_lease: Completion | None = None


_ssl_classes: dict[type[_ssl.SSLSocket], type[BalancedSSLSocket]] = {}


def _balanced_ssl_class(cls: type[_ssl.SSLSocket]) -> type[BalancedSSLSocket]:
    # A context may carry its own ``sslsocket_class``; keep its behaviour.
    if cls is _ssl.SSLSocket:
        return BalancedSSLSocket
    sub = _ssl_classes.get(cls)
    if sub is None:
        sub = type(f"Balanced{cls.__name__}", (BalancedSSLSocket, cls), {})
        _ssl_classes[cls] = sub
    return sub


class BalancedStreamWriter(asyncio.StreamWriter):
    """An ``asyncio.StreamWriter`` that knows its endpoint (see :func:`open_connection`)."""

    def __init__(self, transport: asyncio.WriteTransport, protocol: _BalancedProtocol,
                 reader: asyncio.StreamReader | None, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(transport, protocol, reader, loop)
        self._clientlb_lease = protocol.lease

    @property
    def endpoint(self) -> Endpoint:
        return self._clientlb_lease.pick.endpoint

    @property
    def connect_latency(self) -> float:
        return self._clientlb_lease.first_byte or 0.0

    def set_outcome(self, outcome: Outcome | str) -> None:
        """The outcome reported when the connection closes (default: success)."""
        _set_outcome(self._clientlb_lease, outcome)


class _BalancedProtocol(asyncio.StreamReaderProtocol):
    """Completes the pick in ``connection_lost``, however the connection ends."""

    _clientlb_lease: Completion | None = None
    _clientlb_lost: tuple[Exception | None] | None = None

    @property
    def lease(self) -> Completion:
        assert self._clientlb_lease is not None
        return self._clientlb_lease

    def arm(self, lease: Completion) -> None:
        """Hand the connected pick over; release at once if already lost."""
        self._clientlb_lease = lease
        if self._clientlb_lost is not None:
            self._release(self._clientlb_lost[0])

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            super().connection_lost(exc)
        finally:
            self._clientlb_lost = (exc,)
            if self._clientlb_lease is not None:
                self._release(exc)

    def _release(self, exc: Exception | None) -> None:
        lease = self._clientlb_lease
        assert lease is not None
        failed = exc is not None and lease.outcome is Outcome.SUCCESS
        lease.finish(Outcome.FAILURE if failed else None)


# -- shared helpers ---------------------------------------------------------------------


def _check_options(timeout: float, attempts: int | None, deadline: float | None) -> None:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ConfigError(f"timeout must be a number of seconds > 0, got {timeout!r}",
                          field="timeout")
    if attempts is not None and (isinstance(attempts, bool) or not isinstance(attempts, int)
                                 or attempts < 1):
        raise ConfigError(f"attempts must be an integer >= 1, got {attempts!r}",
                          field="attempts")
    if deadline is not None and (isinstance(deadline, bool)
                                 or not isinstance(deadline, (int, float))
                                 or not deadline > 0):
        raise ConfigError(f"deadline must be a number of seconds > 0 or None, got "
                          f"{deadline!r}", field="deadline")


def _tls_name(lb: LoadBalancer, server_hostname: ServerHostname,
              context: _ssl.SSLContext) -> Callable[[Endpoint], str | None]:
    """The name certificates are verified against (and the SNI), per endpoint."""
    if callable(server_hostname):
        return server_hostname
    name: str | None
    if server_hostname is not None:
        if not isinstance(server_hostname, str) or not server_hostname:
            raise ConfigError(f"server_hostname must be a non-empty string or a callable of "
                              f"the endpoint, got {server_hostname!r}", field="server_hostname")
        name = server_hostname
    else:
        logical = logical_name(lb)
        name = None if logical is None else logical.host
        if name is None and context.check_hostname:
            raise ConfigError(
                "a static target has no logical name to verify TLS certificates "
                "against; pass server_hostname= or LoadBalancer(..., "
                "name='service.example')", field="server_hostname")
    return lambda endpoint: name


def _describe(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, (TimeoutError, socket.timeout, asyncio.TimeoutError)):
        return f"timed out after {timeout:g}s" if timeout != math.inf else "timed out"
    if isinstance(exc, _ssl.SSLCertVerificationError):
        return f"TLS certificate rejected: {exc.verify_message or exc}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


class _Connect(LogicalCall):
    """One balanced connect on the call engine: every failure is a connect failure
    (it never reached the backend's application), so each endpoint is tried at
    most once, free of the retry budget, within ``attempts`` and ``deadline``."""

    __slots__ = ("attempt_timeout", "errors")

    def __init__(self, lb: LoadBalancer, timeout: float, attempts: int | None,
                 deadline: float | None, key: Key | None) -> None:
        # An explicit attempts= fails over even under retry=None (one attempt by default).
        policy = LIVE_POLICY if attempts is None else (lb.retry_policy or DEFAULT_RETRY_POLICY)
        super().__init__(lb, key=key, deadline=deadline, policy=policy,
                         max_unreached=None if attempts is None else attempts - 1)
        self.attempt_timeout = float(timeout)
        self.errors: list[tuple[Endpoint, BaseException]] = []

    def next_pick(self) -> tuple[Pick, float]:
        """The next endpoint and the seconds its attempt may take."""
        left = self.timeout(self.attempt_timeout)
        assert left is not None
        if left <= 0:
            self.note = "deadline exceeded"
            self.raise_error()
        try:
            pick = self.pick()
        except NoEndpointAvailable as exc:
            if not self.errors:
                raise _NoEndpointConnectError(exc.reason, service=exc.service) from exc
            raise self.error() from exc
        if self.tried and pick.address in self.tried_addresses():
            # Every endpoint that may take traffic failed already (the others
            # are ejected or unhealthy): going round again would only hammer them.
            pick.done(Outcome.CANCELLED)
            self.note = "every endpoint tried"
            self.raise_error()
        return pick, left

    def failed(self, pick: Pick, exc: BaseException, seconds: float) -> None:
        """Report the failed attempt; raise the final error when no other may follow."""
        pick.done(Outcome.CONNECT_FAILURE)
        self.errors.append((pick.endpoint, exc))
        if self.after_failure(pick.address, Outcome.CONNECT_FAILURE, reached=False,
                              retryable=True, detail=_describe(exc, seconds)) is None:
            self.raise_error()

    def error(self) -> ConnectError:
        n = len(self.errors)
        tries = plural(n, "attempt")
        if self.note == "every endpoint tried":
            why = f"on any endpoint ({tries}, every endpoint tried)"
        elif self.note == "deadline exceeded":
            why = f"within the deadline ({tries})"
        else:
            why = f"after {tries}"
        return ConnectError(f"could not connect to {self.lb.name!r} {why}",
                            service=self.lb.name, errors=self.errors,
                            reasons=[detail.partition(": ")[2] for _, detail in self.tried])

    def raise_error(self) -> NoReturn:
        last = self.errors[-1][1] if self.errors else None
        raise self.error() from last


def _connect_loop(call: _Connect, attempt: Callable[[Pick, float], T],
                  errors: tuple[type[BaseException], ...]) -> tuple[T, Pick]:
    """Drive ``attempt(pick, seconds)`` until one connects (the sync shell)."""
    while True:
        pick, seconds = call.next_pick()
        try:
            return attempt(pick, seconds), pick
        except errors as exc:
            call.failed(pick, exc, seconds)
        except BaseException as exc:
            pick.__exit__(type(exc), exc, exc.__traceback__)
            raise


async def _aconnect_loop(call: _Connect, attempt: Callable[[Pick, float], Awaitable[T]],
                         errors: tuple[type[BaseException], ...]) -> tuple[T, Pick]:
    """Await ``attempt(pick, seconds)`` until one connects (the asyncio shell)."""
    while True:
        pick, seconds = call.next_pick()
        try:
            return await attempt(pick, seconds), pick
        except errors as exc:
            call.failed(pick, exc, seconds)
        except BaseException as exc:
            pick.__exit__(type(exc), exc, exc.__traceback__)
            raise


class _Owned:
    """The balancer of one connect: ``lb`` itself, or one built from a target.

    A balancer built here belongs to the connection: closed at once when no
    connection comes of it, else when the connection's pick is done (the socket
    or the writer closed, the ``connect_with`` pick finished). Used as ``with
    _Owned(lb) as balancer:`` around everything that may fail. See docs/tcp.md,
    "A target instead of a balancer".
    """

    __slots__ = ("lb", "owned")

    def __init__(self, lb: LoadBalancer | str | Sequence[str | Endpoint]) -> None:
        self.owned = not isinstance(lb, LoadBalancer)
        self.lb = LoadBalancer(lb) if not isinstance(lb, LoadBalancer) else lb

    def __enter__(self) -> LoadBalancer:
        return self.lb

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if not self.owned:
            return
        lb = self.lb
        if exc_type is not None:
            lb.close()
        else:  # the connection's pick is the only one still in flight
            lb.add_outcome_listener(lambda *_: lb.close())


class _NoEndpointConnectError(NoEndpointAvailable, ConnectionError):
    """``NoEndpointAvailable`` that is also a ``ConnectionError`` for socket code."""


# -- sync ------------------------------------------------------------------------------


@strict_arguments
def connect(
    lb: LoadBalancer | str | Sequence[str | Endpoint],
    timeout: float = DEFAULT_TIMEOUT,
    ssl_context: _ssl.SSLContext | None = None,
    server_hostname: ServerHostname = None,
    *,
    attempts: int | None = None,
    deadline: float | None = None,
    key: Key | None = None,
    source_address: tuple[str, int] | None = None,
) -> BalancedSocket | BalancedSSLSocket:
    """Open a TCP (or TLS) connection to an endpoint picked by ``lb``.

    Args:
        lb: the balancer to pick from, or a target (``"static://a:5432,b:5432"``,
            ``"dns:///db.internal:5432"``, a list of ``"host:port"``), as the HTTP
            and gRPC integrations take: the balancer built from it belongs to the
            connection and is closed with it.
        timeout: seconds for each attempt's TCP connect plus TLS handshake
            (default 5 s, a LAN-scale bound that still fails over in time);
            also the returned socket's timeout, as with
            :func:`socket.create_connection`.
        ssl_context: wrap the connection in TLS with this context
            (e.g. ``ssl.create_default_context(cafile=...)``).
        server_hostname: the TLS name (SNI and certificate verification):
            a string, a callable of the endpoint, or None for the balancer's
            logical name ``lb.name``.
        attempts: endpoints tried at most, each a different one (when every
            endpoint that may take traffic has failed, the connect fails
            without going round again). Default: every endpoint once, or 1
            with ``retry=None``.
        deadline: seconds for all attempts together (default None: the
            balancer's ``RetryPolicy.deadline``, else bounded by the
            endpoints × ``timeout``).
        key: the pick key for ``ring_hash``/``maglev`` (shard by key).
        source_address: passed to :func:`socket.create_connection`.

    Returns:
        A :class:`BalancedSocket`, or a :class:`BalancedSSLSocket` with TLS;
        closing it completes the pick.

    Raises:
        ConnectError: every attempt failed (``.errors`` says where and why).
        NoEndpointAvailable: nothing to pick (also a ``ConnectionError``).
        ConfigError: an invalid option, or TLS over a static target without a name.
    """
    _check_options(timeout, attempts, deadline)
    if timeout > threading.TIMEOUT_MAX:  # what a socket timeout can hold
        raise ConfigError(f"timeout must be <= {threading.TIMEOUT_MAX:g} seconds, got "
                          f"{timeout!r}", field="timeout")
    if ssl_context is not None and not isinstance(ssl_context, _ssl.SSLContext):
        raise ConfigError(f"ssl_context must be an ssl.SSLContext or None, got "
                          f"{ssl_context!r}", field="ssl_context")
    if source_address is not None and not (
            isinstance(source_address, tuple) and len(source_address) == 2
            and isinstance(source_address[0], str) and isinstance(source_address[1], int)
            and not isinstance(source_address[1], bool) and 0 <= source_address[1] <= 65535):
        raise ConfigError(f"source_address must be a (host, port) tuple or None, got "
                          f"{source_address!r}", field="source_address")
    with _Owned(lb) as balancer:
        tls_name = (_tls_name(balancer, server_hostname, ssl_context)
                    if ssl_context is not None else None)
        call = _Connect(balancer, timeout, attempts, deadline, key)
        sock, pick = _connect_loop(call, functools.partial(
            _socket_attempt, ssl_context, tls_name, source_address), (OSError,))
        return _adopt(sock, _lease(pick), timeout)


def _socket_attempt(ssl_context: _ssl.SSLContext | None,
                    tls_name: Callable[[Endpoint], str | None] | None,
                    source_address: tuple[str, int] | None,
                    pick: Pick, seconds: float) -> socket.socket:
    """One attempt of :func:`connect`: TCP, then TLS within the same time."""
    endpoint = pick.endpoint
    raw = socket.create_connection((endpoint.host, endpoint.port), seconds, source_address)
    if ssl_context is None or tls_name is None:
        return raw
    try:  # the handshake shares the attempt's time (raw's timeout)
        return ssl_context.wrap_socket(raw, server_hostname=tls_name(endpoint))
    except BaseException:
        raw.close()
        raise


def _adopt(sock: socket.socket, lease: Completion,
           timeout: float) -> BalancedSocket | BalancedSSLSocket:
    """Turn a connected socket into its balanced class, without a second connect."""
    if isinstance(sock, _ssl.SSLSocket):
        try:
            sock.__class__ = _balanced_ssl_class(type(sock))
        except TypeError:  # an exotic sslsocket_class with its own layout
            sock.close()
            lease.finish(Outcome.CANCELLED)
            raise ConfigError(f"cannot track connections of {type(sock).__name__}; use "
                              "ssl.SSLSocket as the context's sslsocket_class",
                              field="ssl_context") from None
        assert isinstance(sock, BalancedSSLSocket)
        sock._clientlb_lease = lease
        sock.settimeout(timeout)
        return sock
    balanced = BalancedSocket(sock.family, sock.type, sock.proto, fileno=sock.detach())
    balanced._clientlb_lease = lease
    balanced.settimeout(timeout)
    return balanced


# -- asyncio ---------------------------------------------------------------------------


def _factory(protocol: _BalancedProtocol) -> Callable[[], _BalancedProtocol]:
    return lambda: protocol


#: the keywords of ``loop.create_connection`` that open_connection passes through
_CREATE_CONNECTION_OPTIONS = frozenset(
    inspect.signature(asyncio.AbstractEventLoop.create_connection).parameters) - {
        "self", "protocol_factory", "host", "port", "ssl", "server_hostname"}


async def _within(seconds: float, connecting: Coroutine[Any, Any, tuple[asyncio.Transport,
                                                                          Any]]
                  ) -> asyncio.Transport:
    """``await connecting`` for at most ``seconds`` (TimeoutError after)."""
    if sys.version_info >= (3, 11):
        # asyncio.timeout cancels in place; wait_for costs an extra task per
        # connect (~50 µs here, benchmarks/tcp_connect_overhead.py).
        async with asyncio.timeout(seconds):
            transport, _ = await connecting
    else:
        transport, _ = await asyncio.wait_for(connecting, seconds)
    return transport


@strict_arguments
async def open_connection(
    lb: LoadBalancer | str | Sequence[str | Endpoint],
    ssl: _ssl.SSLContext | bool | None = None,
    server_hostname: ServerHostname = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    attempts: int | None = None,
    deadline: float | None = None,
    key: Key | None = None,
    limit: int = 2**16,
    **kwds: Any,
) -> tuple[asyncio.StreamReader, BalancedStreamWriter]:
    """Open asyncio streams to an endpoint picked by ``lb``.

    The asyncio twin of :func:`connect`, with :func:`asyncio.open_connection`'s
    shape: ``ssl`` is an ``SSLContext`` or ``True`` for the default context;
    ``limit`` and other keywords go to ``loop.create_connection``. The pick
    stays in flight until the connection is lost (``writer.close()``, abort,
    or the peer closing it). Waits for the balancer's first resolution
    without blocking the loop. ``lb`` may be a target, as for :func:`connect`:
    the balancer built from it is closed with the connection.

    Raises:
        ConnectError: every attempt failed.
        NoEndpointAvailable: nothing to pick (also a ``ConnectionError``).
        ConfigError: an invalid option, or TLS over a static target without a name.
    """
    _check_options(timeout, attempts, deadline)
    if ssl is not None and not isinstance(ssl, (bool, _ssl.SSLContext)):
        raise ConfigError(f"ssl must be an ssl.SSLContext, True, False or None, got {ssl!r}",
                          field="ssl")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ConfigError(f"limit must be an integer >= 1 (bytes), got {limit!r}",
                          field="limit")
    unknown = sorted(set(kwds) - _CREATE_CONNECTION_OPTIONS)
    if unknown:
        raise ConfigError(f"unknown argument {unknown[0]!r}: not a loop.create_connection() "
                          f"option (valid: {', '.join(sorted(_CREATE_CONNECTION_OPTIONS))})",
                          field=unknown[0])
    context: _ssl.SSLContext | None
    if ssl is True:
        context = _ssl.create_default_context()
    elif ssl is None or ssl is False:
        context = None
    else:
        context = ssl
    with _Owned(lb) as balancer:
        tls_name = (_tls_name(balancer, server_hostname, context) if context is not None
                    else None)
        await balancer.await_ready()
        call = _Connect(balancer, timeout, attempts, deadline, key)
        attempt = functools.partial(_stream_attempt, asyncio.get_running_loop(), limit,
                                    context, tls_name, kwds)
        streams, _ = await _aconnect_loop(call, attempt, (OSError, asyncio.TimeoutError))
        return streams


async def _stream_attempt(loop: asyncio.AbstractEventLoop, limit: int,
                          context: _ssl.SSLContext | None,
                          tls_name: Callable[[Endpoint], str | None] | None,
                          kwds: dict[str, Any], pick: Pick, seconds: float
                          ) -> tuple[asyncio.StreamReader, BalancedStreamWriter]:
    """One attempt of :func:`open_connection`, built as asyncio.open_connection does."""
    endpoint = pick.endpoint
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    protocol = _BalancedProtocol(reader, loop=loop)
    tls: dict[str, Any] = {}
    if context is not None and tls_name is not None:
        # "" tells asyncio "no SNI, no hostname check" (None would mean the IP)
        tls = {"ssl": context, "server_hostname": tls_name(endpoint) or ""}
    transport = await _within(seconds, loop.create_connection(
        _factory(protocol), endpoint.host, endpoint.port, **tls, **kwds))
    protocol.arm(_lease(pick))
    assert isinstance(transport, asyncio.WriteTransport)
    return reader, BalancedStreamWriter(transport, protocol, reader, loop)


# -- any driver ------------------------------------------------------------------------


def _check_errors(connect_errors: ErrorTypes) -> tuple[type[BaseException], ...]:
    errors = connect_errors if isinstance(connect_errors, tuple) else (connect_errors,)
    if not errors or not all(isinstance(e, type) and issubclass(e, BaseException)
                             for e in errors):
        raise ConfigError(f"connect_errors must be an exception class or a tuple of them, "
                          f"got {connect_errors!r}", field="connect_errors")
    return errors


@strict_arguments
def connect_with(
    lb: LoadBalancer | str | Sequence[str | Endpoint],
    factory: Callable[[Endpoint], T],
    *,
    connect_errors: ErrorTypes = OSError,
    attempts: int | None = None,
    deadline: float | None = None,
    key: Key | None = None,
) -> tuple[T, Pick]:
    """Balance any driver's connect: ``factory(endpoint)`` with failover.

    The generic pattern of docs/tcp.md as a function, for drivers that open
    their own sockets (psycopg, redis-py, pymongo, ...)::

        conn, pick = clientlb.connect_with(
            lb, lambda ep: psycopg.connect(host=ep.host, port=ep.port),
            connect_errors=psycopg.OperationalError)
        with pick, conn:                      # success, or failure if it raises
            conn.execute("SELECT 1")

    An exception of a ``connect_errors`` class raised by ``factory`` is a
    connect failure: it is reported as ``Outcome.CONNECT_FAILURE`` and the
    next endpoint is tried, under the same rules as :func:`connect`
    (``attempts``, ``deadline`` checked between attempts, never the same
    endpoint twice, free of the retry budget). Any other exception is reported as a
    failure and propagates at once. The factory applies its own timeout
    (``connect_timeout=``, ``socket_connect_timeout=``...).

    ``lb`` may be a target, as for :func:`connect`: the balancer built from it
    is closed when the returned pick is done.

    Returns:
        The factory's result and its :class:`~clientlb.Pick`, still in
        flight: finish it with ``with pick:`` or ``pick.done(...)`` when the
        connection is closed or the work on it is done.

    Raises:
        ConnectError: every attempt failed; ``__cause__`` is the driver's error.
        NoEndpointAvailable: nothing to pick (also a ``ConnectionError``).
    """
    errors = _check_errors(connect_errors)
    _check_options(1.0, attempts, deadline)
    with _Owned(lb) as balancer:
        call = _Connect(balancer, math.inf, attempts, deadline, key)
        return _connect_loop(call, lambda pick, _: factory(pick.endpoint), errors)


@strict_arguments
async def aconnect_with(
    lb: LoadBalancer | str | Sequence[str | Endpoint],
    factory: Callable[[Endpoint], Awaitable[T]],
    *,
    connect_errors: ErrorTypes = OSError,
    attempts: int | None = None,
    deadline: float | None = None,
    key: Key | None = None,
) -> tuple[T, Pick]:
    """The asyncio twin of :func:`connect_with`: ``await factory(endpoint)`` with failover."""
    errors = _check_errors(connect_errors)
    _check_options(1.0, attempts, deadline)
    with _Owned(lb) as balancer:
        await balancer.await_ready()
        call = _Connect(balancer, math.inf, attempts, deadline, key)
        return await _aconnect_loop(call, lambda pick, _: factory(pick.endpoint), errors)

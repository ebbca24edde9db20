"""httpx transports that balance every request over a :class:`LoadBalancer`.

::

    lb = clientlb.LoadBalancer("static://10.0.0.1:8080,10.0.0.2:8080", name="users")
    with httpx.Client(transport=clientlb.HTTPTransport(lb)) as client:
        client.get("http://users/v1/me")          # goes to 10.0.0.1 or 10.0.0.2

**Routing.** The request URL names the *logical* service (``users``); each
attempt connects to a picked endpoint, while the ``Host`` header keeps the
logical name and, for ``https``, the logical name (or ``server_name=``) is the
TLS SNI and the name the certificate is verified against — httpcore's
``sni_hostname`` request extension. Every endpoint has its own httpcore
connection pool, and a busy one up to ``pool_shards`` (default 4) pools: one
more each time all of them hold 4 requests, because httpcore rescans every
request and connection of a pool at each event, so a crowded pool costs far
more CPU than several small ones. ``limits`` apply per endpoint: they are
split across its pools (``_shard_limits``), which are fewer when the cap is
small (one per 4 connections allowed). The pools of an
endpoint that leaves the target are closed once their last response is closed
(a diff listener). The options of ``httpx.HTTPTransport`` (``verify``, ``cert``,
``trust_env``, ``http1``, ``http2``, ``limits``, ``local_address``,
``retries``, ``socket_options``) pass through; ``proxy`` and ``uds`` are
refused, as they would bypass the endpoints. Several services share one
client through httpx ``mounts=``.

**Outcomes** (:class:`~clientlb.Outcome`, the vocabulary of Envoy's outlier
detection): connect errors, TLS handshake failures and connect timeouts →
``CONNECT_FAILURE`` (local origin); read and write timeouts → ``TIMEOUT``;
502/503/504 → ``GATEWAY_FAILURE``; other 5xx, resets and protocol errors →
``FAILURE``; everything else → ``SUCCESS``; a pool timeout, a local protocol
error or a cancellation → ``CANCELLED`` (says nothing about the endpoint). The
latency recorded is the time to the response headers, and a response stays
in flight until it is closed — a long download keeps counting for
``least_request``/``peak_ewma``; an error while reading the body turns the
outcome into a failure.

**Retries** (the balancer's :class:`~clientlb.RetryPolicy`, ``retry=None``
for none): a request that never reached a backend (connection refused,
connect timeout, TLS failure, pool timeout) is retried at once on another
endpoint, whatever its method; one that may have reached it (502/503/504,
read/write errors and timeouts) only when idempotent (RFC 9110: GET, HEAD,
OPTIONS, PUT, DELETE, TRACE), when it carries an ``Idempotency-Key`` header,
or when the request opts in with ``extensions={"clientlb.retry": True}``
(``False`` turns retries off for one request), after a jittered exponential
back-off that honours ``Retry-After`` up to the policy's cap. No endpoint is
tried twice while another may take traffic (``lb.pick(exclude=...)``); a
retry after an attempt that may have reached its backend is paid from the
balancer's retry budget (20% + 10/s), one that never reached any is free
(docs/architecture.md, "The call engine"); a streamed body
that was already sent is never replayed. When the attempts are spent the
last response is returned, or the last error is raised as the same httpx
exception, its message naming every endpoint tried.

**Hedging** (``hedging=``, default the balancer's :class:`~clientlb.Hedging`,
``False`` for none): a GET, HEAD or OPTIONS request (or one of
``Hedging.methods``, or one with ``extensions={"clientlb.hedge": True}``) whose
body is bytes gets a second attempt on another endpoint when the first has not
answered after the hedge delay — at once when the first goes to an endpoint
known to be slow (a probe) — and the first response wins. A hedge that lost is
cancelled (async: its task, and httpcore closes that connection; sync: its
response is drained and closed when it arrives, in its thread) and reports
``CANCELLED``; the first attempt, the strategy's own pick, runs on when a hedge
beats it and reports what its endpoint did (``LogicalCall.lost``). The
race is one sans-I/O generator (:meth:`_Router.race`); the sync transport runs
the attempts in a few shared threads (``_http/workers.py``), the async one in
asyncio tasks (under trio, requests are not hedged).

**Affinity**: ``hash_key=`` feeds ``ring_hash``/``maglev``; ``affinity=``
gives sticky sessions (see :mod:`clientlb._http.affinity`).

Sync and async share one :class:`_Router` — classification, routing, retry
decisions, pools bookkeeping — and differ only in the dozen lines that do
I/O. Each response's ``extensions["clientlb.endpoint"]`` names the endpoint
that served it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import email.utils
import functools
import math
import os
import ssl
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Collection, Generator, Iterable, Iterator
from typing import Any, ClassVar, Generic, Literal, NoReturn, Protocol, TypeVar

import anyio
import httpcore
import httpx

from .._core.balancer import LoadBalancer, Pick
from .._core.endpoint import Endpoint, EndpointSetDiff
from .._core.errors import CircuitOpen, ConfigError, NoEndpointAvailable, strict_arguments
from .._core.outcome import Outcome
from .._engine.call import LIVE_POLICY, Completion, LogicalCall, describe
from .._engine.hedging import LIVE_HEDGING, Hedging
from .._engine.hedging import resolve as resolve_hedging
from .._engine.orca import record_headers
from .affinity import Affinity, HashKey, TokenMap, balancer_secret
from .workers import HEDGE_THREADS

__all__ = ["AsyncHTTPTransport", "HTTPCircuitOpen", "HTTPNoEndpointAvailable", "HTTPTransport",
           "TransportClosed"]

_SUCCESS = Outcome.SUCCESS
_CANCELLED = Outcome.CANCELLED
#: ``_Router.responded``/``failed`` in a race: this attempt failed, others may answer.
WAIT = math.inf
#: ``extensions={"clientlb.hedge": True}`` with no policy anywhere: the defaults.
_OPT_IN = Hedging()

# -- errors -----------------------------------------------------------------------------------


class HTTPNoEndpointAvailable(httpx.TransportError, NoEndpointAvailable):
    """``NoEndpointAvailable`` raised through httpx: catch either name."""

    def __init__(self, error: NoEndpointAvailable, request: httpx.Request | None = None) -> None:
        httpx.TransportError.__init__(self, error.reason)
        self.reason = error.reason
        self.service = error.service
        self.args = (str(error),)
        if request is not None:
            self.request = request


class TransportClosed(httpx.TransportError):
    """The transport was closed: a request in flight (or a retry of one) ends with
    this httpx exception, not a bare ``RuntimeError``; nothing is retried and the
    endpoint is not blamed (the outcome is ``CANCELLED``)."""


class HTTPCircuitOpen(HTTPNoEndpointAvailable, CircuitOpen):
    """``CircuitOpen`` raised through httpx: catch either name; ``scope`` and ``limit`` kept."""

    def __init__(self, error: CircuitOpen, request: httpx.Request | None = None) -> None:
        super().__init__(error, request)
        self.scope = error.scope
        self.limit = error.limit


def _no_endpoint(error: NoEndpointAvailable, request: httpx.Request) -> HTTPNoEndpointAvailable:
    """The httpx-side twin of a pick error, keeping its class (``CircuitOpen``) and fields."""
    if isinstance(error, CircuitOpen):
        return HTTPCircuitOpen(error, request)
    return HTTPNoEndpointAvailable(error, request)


# httpcore exception → (httpx exception, outcome, may the request have reached the backend?)
# The most specific class wins (looked up along the exception's MRO).
_EXCEPTIONS: dict[type[Exception], tuple[type[httpx.TransportError], Outcome, bool]] = {
    httpcore.ConnectError: (httpx.ConnectError, Outcome.CONNECT_FAILURE, False),
    httpcore.ConnectTimeout: (httpx.ConnectTimeout, Outcome.CONNECT_FAILURE, False),
    httpcore.PoolTimeout: (httpx.PoolTimeout, Outcome.CANCELLED, False),
    httpcore.ReadTimeout: (httpx.ReadTimeout, Outcome.TIMEOUT, True),
    httpcore.WriteTimeout: (httpx.WriteTimeout, Outcome.TIMEOUT, True),
    httpcore.TimeoutException: (httpx.TimeoutException, Outcome.TIMEOUT, True),
    httpcore.ReadError: (httpx.ReadError, Outcome.FAILURE, True),
    httpcore.WriteError: (httpx.WriteError, Outcome.FAILURE, True),
    httpcore.NetworkError: (httpx.NetworkError, Outcome.FAILURE, True),
    httpcore.RemoteProtocolError: (httpx.RemoteProtocolError, Outcome.FAILURE, True),
    httpcore.LocalProtocolError: (httpx.LocalProtocolError, Outcome.CANCELLED, True),
    httpcore.ProtocolError: (httpx.ProtocolError, Outcome.FAILURE, True),
    httpcore.UnsupportedProtocol: (httpx.UnsupportedProtocol, Outcome.CANCELLED, True),
    httpcore.ProxyError: (httpx.ProxyError, Outcome.FAILURE, True),
}
#: Caller errors: never retried, whatever the method.
_NOT_RETRIED = frozenset({httpx.LocalProtocolError, httpx.UnsupportedProtocol})


def classify_exception(exc: BaseException) -> tuple[type[httpx.TransportError] | None, Outcome,
                                                    bool]:
    """``(httpx exception class or None, outcome, may have reached the backend)``."""
    if isinstance(exc, Exception):
        for cls in type(exc).__mro__:
            entry = _EXCEPTIONS.get(cls)
            if entry is not None:
                return entry
        if isinstance(exc, httpx.TransportError):  # raised by a custom pool
            return type(exc), Outcome.FAILURE, True
    return None, Outcome.CANCELLED, True


def classify_status(status: int) -> Outcome:
    """502/503/504 → gateway failure; other 5xx → failure; the rest → success."""
    if status < 500:
        return _SUCCESS
    if status in (502, 503, 504):
        return Outcome.GATEWAY_FAILURE
    return Outcome.FAILURE


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` value (delta-seconds or an HTTP-date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


# -- transport options --------------------------------------------------------------------------

#: httpx's types for two of its options (``httpx._types.CertTypes``, ``SOCKET_OPTION``).
CertTypes = str | tuple[str, str] | tuple[str, str, str]
SocketOption = (tuple[int, int, int] | tuple[int, int, bytes | bytearray]
                | tuple[int, int, None, int])
#: httpx's default (``httpx.HTTPTransport``'s ``limits``).
DEFAULT_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20,
                              keepalive_expiry=5.0)
#: An endpoint gets another pool when each of its pools has this many requests in flight.
_SHARD_AT = 4
_OPTIONS = ("verify", "cert", "trust_env", "http1", "http2", "limits", "local_address",
            "retries", "socket_options")


def _check_unsupported(options: dict[str, Any]) -> None:
    for name in options:
        if name in ("proxy", "uds", "mounts", "transport"):
            raise ConfigError(f"{name!r} is not supported: the transport connects to the "
                              "balanced endpoints itself (route through a proxy with a "
                              "separate httpx mount)", field=name)
        raise ConfigError(f"unknown httpx transport option {name!r}; expected one of "
                          f"{', '.join(sorted(_OPTIONS))}", field=name)


def _pool_kwargs(*, verify: ssl.SSLContext | str | bool, cert: CertTypes | None,
                 trust_env: bool, http1: bool, http2: bool, limits: httpx.Limits,
                 local_address: str | None, retries: int,
                 socket_options: Iterable[SocketOption] | None) -> dict[str, Any]:
    if not isinstance(limits, httpx.Limits):
        raise ConfigError(f"limits must be an httpx.Limits, got {limits!r}", field="limits")
    options: dict[str, Any] = {
        "verify": verify, "cert": cert, "trust_env": trust_env, "http1": http1, "http2": http2,
        "local_address": local_address, "retries": retries, "socket_options": socket_options}
    _check_transport_options(options, limits)
    try:
        ssl_context = httpx.create_ssl_context(verify=verify,
                                               cert=cert,
                                               trust_env=trust_env)
    except (OSError, ssl.SSLError, TypeError, ValueError) as exc:
        name = "cert" if options.get("cert") else "verify"
        raise ConfigError(f"cannot build the TLS context from {name}="
                          f"{options.get(name)!r}: {exc}", field=name) from None
    return {
        "ssl_context": ssl_context,
        "keepalive_expiry": limits.keepalive_expiry,
        "http1": http1,
        "http2": http2,
        "local_address": local_address,
        "retries": retries,
        "socket_options": socket_options,
    }


def _check_transport_options(options: dict[str, Any], limits: httpx.Limits) -> None:
    """The httpx options' types, checked here: httpcore takes anything and fails later."""
    verify = options.get("verify", True)
    if not isinstance(verify, (bool, str, ssl.SSLContext)):
        raise ConfigError(f"verify must be True, False, an ssl.SSLContext or a CA path, got "
                          f"{verify!r}", field="verify")
    if isinstance(verify, str) and not os.path.exists(verify):
        raise ConfigError(f"verify names no file or directory: {verify!r}", field="verify")
    cert = options.get("cert")
    parts = (cert,) if isinstance(cert, str) else cert
    if cert is not None and (not isinstance(parts, tuple) or not 1 <= len(parts) <= 3
                             or not all(p is None or isinstance(p, str) for p in parts)
                             or not isinstance(parts[0], str)):
        raise ConfigError(f"cert must be a path or a (certfile, keyfile[, password]) tuple, "
                          f"got {cert!r}", field="cert")
    for name in ("trust_env", "http1", "http2"):
        if name in options and not isinstance(options[name], bool):
            raise ConfigError(f"{name} must be True or False, got {options[name]!r}",
                              field=name)
    if options.get("http1", True) is False and options.get("http2", False) is False:
        raise ConfigError("http1 and http2 cannot both be False", field="http1")
    local = options.get("local_address")
    if local is not None and (not isinstance(local, str) or not local):
        raise ConfigError(f"local_address must be an IP address string or None, got "
                          f"{local!r}", field="local_address")
    retries = options.get("retries", 0)
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ConfigError(f"retries must be an integer >= 0, got {retries!r}", field="retries")
    sockopts = options.get("socket_options")
    if sockopts is not None and (isinstance(sockopts, (str, bytes)) or not all(
            isinstance(o, tuple) and len(o) in (3, 4) for o in _iterable(sockopts))):
        raise ConfigError(f"socket_options must be (level, option, value) tuples, got "
                          f"{sockopts!r}", field="socket_options")
    for name in ("max_connections", "max_keepalive_connections"):
        n = getattr(limits, name)
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
            raise ConfigError(f"limits.{name} must be an integer >= 0 or None, got {n!r}",
                              field=f"limits.{name}")
    expiry = limits.keepalive_expiry
    if expiry is not None and (isinstance(expiry, bool) or not isinstance(expiry, (int, float))
                               or not 0 <= expiry < math.inf):
        raise ConfigError(f"limits.keepalive_expiry must be a finite number >= 0 or None, got "
                          f"{expiry!r}", field="limits.keepalive_expiry")


def _iterable(value: object) -> list[Any]:
    return list(value) if isinstance(value, Iterable) else [None]


def _shard_limits(limits: httpx.Limits, pool_shards: int) -> list[tuple[int | None, int | None]]:
    """``(max_connections, max_keepalive_connections)`` of each pool of one endpoint.

    ``limits`` hold per endpoint: they are split across its pools, so their sum is
    the cap the user set. An endpoint gets no more pools than ``max_connections //
    _SHARD_AT`` (a new pool opens when each holds ``_SHARD_AT`` requests, so each
    must allow that many connections): ``max_connections=5`` keeps one pool of 5.
    """
    if isinstance(pool_shards, bool) or not isinstance(pool_shards, int) \
            or not 1 <= pool_shards <= 64:
        raise ConfigError(f"pool_shards must be an integer 1..64, got {pool_shards!r}",
                          field="pool_shards")
    cap = limits.max_connections
    shards = pool_shards if cap is None else max(1, min(pool_shards, cap // _SHARD_AT))

    def split(total: int | None) -> list[int | None]:
        if total is None:
            return [None] * shards
        each, extra = divmod(total, shards)
        return [each + (i < extra) for i in range(shards)]

    return list(zip(split(cap), split(limits.max_keepalive_connections), strict=True))


# -- the shared core ----------------------------------------------------------------------------

P = TypeVar("P")  # httpcore.ConnectionPool or httpcore.AsyncConnectionPool


class _Route(Generic[P]):
    """One endpoint's connection pool (per TLS name) and the responses using it."""

    __slots__ = ("address", "host", "in_flight", "key", "pool", "port", "retiring")

    def __init__(self, key: tuple[str, str | None], endpoint: Endpoint, pool: P) -> None:
        self.key = key
        self.address = key[0]
        self.host = endpoint.host.encode("ascii")
        self.port = endpoint.port
        self.pool = pool
        self.in_flight = 0
        self.retiring = False


class _Attempt(Completion, Generic[P]):
    """One try of a request: its completion handle, the route and the httpcore request."""

    __slots__ = ("core_request", "route")

    def __init__(self, pick: Pick, route: _Route[P], core_request: httpcore.Request,
                 release: Callable[[], P | None]) -> None:
        super().__init__(pick, release)
        self.route = route
        self.core_request = core_request


class _Call(LogicalCall):
    """A logical request across its attempts: the engine's call plus the request."""

    __slots__ = ("body", "extensions", "request", "target", "token")

    def __init__(self, lb: LoadBalancer, request: httpx.Request, key: Any, prefer: str | None,
                 token: str | None, deadline: float | None, hedging: Hedging | None) -> None:
        extensions = request.extensions
        opt_in = extensions.get("clientlb.retry")
        super().__init__(lb, key=key, prefer=prefer, deadline=deadline,
                         policy=None if opt_in is False else LIVE_POLICY, hedging=hedging)
        policy = self.policy
        self.replayable = opt_in is True or (
            policy is not None and (request.method in policy.methods
                                    or "idempotency-key" in request.headers))
        self.request = request
        self.token = token
        self.target = request.url.raw_path
        self.extensions = extensions
        self.body: _BodyTracker | None = None


class _BodyTracker:
    """Wraps a non-replayable request body to know whether sending began."""

    __slots__ = ("started", "stream")

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.started = False


class _SyncBody(_BodyTracker, httpx.SyncByteStream):
    def __iter__(self) -> Iterator[bytes]:
        self.started = True
        yield from self.stream

    def close(self) -> None:
        close = getattr(self.stream, "close", None)
        if close is not None:
            close()


class _AsyncBody(_BodyTracker, httpx.AsyncByteStream):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        self.started = True
        async for chunk in self.stream:
            yield chunk

    async def aclose(self) -> None:
        aclose = getattr(self.stream, "aclose", None)
        if aclose is not None:
            await aclose()


class _Router(Generic[P]):
    """Everything the sync and async transports share: no I/O here."""

    def __init__(self, lb: LoadBalancer, *, pool_factory: Callable[[int], P],
                 server_name: str | None, hash_key: HashKey | None,
                 affinity: Affinity | None, pool_shards: int, is_async: bool,
                 deadline: float | None = None, hedging: object = None) -> None:
        if not isinstance(lb, LoadBalancer):
            raise ConfigError(f"expected a LoadBalancer, got {lb!r}", field="lb")
        if server_name is not None and (not isinstance(server_name, str) or not server_name):
            raise ConfigError(f"server_name must be a non-empty string, got {server_name!r}",
                              field="server_name")
        if hash_key is not None and not callable(hash_key):
            raise ConfigError(f"hash_key must be a callable of the request, got {hash_key!r}",
                              field="hash_key")
        if affinity is not None and not isinstance(affinity, Affinity):
            raise ConfigError("affinity must be a CookieAffinity or HeaderAffinity, got "
                              f"{affinity!r}", field="affinity")
        if deadline is not None and (isinstance(deadline, bool)
                                     or not isinstance(deadline, (int, float))
                                     or not 0 < deadline < float("inf")):
            raise ConfigError(f"deadline must be a number of seconds > 0 or None, got "
                              f"{deadline!r}", field="deadline")
        self.lb = lb
        self.deadline = deadline
        #: a Hedging, None (off), or LIVE_HEDGING: the balancer's, read at each request
        self.hedging: Hedging | None = resolve_hedging(hedging)
        self.server_name = server_name
        self.hash_key = hash_key
        self.affinity = affinity
        self.tokens: TokenMap | None = None
        if affinity is not None:
            self.tokens = TokenMap(affinity.secret or balancer_secret(lb),
                                   (ep.address for ep in lb.endpoints()))
        self._pool_factory = pool_factory  # shard index → a pool with that shard's limits
        self._is_async = is_async
        # (address, TLS name) → that endpoint's pools: one, or up to pool_shards under load.
        self._routes: dict[tuple[str, str | None], list[_Route[P]]] = {}
        self.pool_shards = pool_shards
        self._lock = threading.Lock()
        self.to_close: list[P] = []  # pools of removed endpoints, idle, awaiting (a)close
        self.on_retired: Callable[[], None] | None = None  # async: wakes the event loop
        self.closed = False
        # A weak reference: a transport dropped without close() does not live on in lb.
        ref = weakref.WeakMethod(self._on_diff)

        def on_diff(diff: EndpointSetDiff) -> None:
            method = ref()
            if method is not None:
                method(diff)

        self.listener = on_diff
        lb.add_diff_listener(on_diff)

    # -- pools ------------------------------------------------------------------------------

    def _on_diff(self, diff: EndpointSetDiff) -> None:
        if self.tokens is not None:
            self.tokens.update((ep.address for ep in diff.added),
                               (ep.address for ep in diff.removed))
        if not diff.removed:
            return
        gone = {ep.address for ep in diff.removed}
        with self._lock:
            for key in [k for k in self._routes if k[0] in gone]:
                for route in self._routes.pop(key):
                    route.retiring = True
                    if route.in_flight == 0:
                        self.to_close.append(route.pool)
        if not self._is_async:
            self.close_retired_sync()
        elif self.on_retired is not None and self.to_close:
            self.on_retired()

    def close_retired_sync(self) -> None:
        with self._lock:
            pools, self.to_close = self.to_close, []
        for pool in pools:
            pool.close()  # type: ignore[attr-defined]

    def take_retired(self) -> list[P]:
        with self._lock:
            pools, self.to_close = self.to_close, []
        return pools

    def _route(self, pick: Pick, sni: str | None) -> _Route[P]:
        key = (pick.address, sni)
        with self._lock:
            shards = self._routes.get(key)
            if shards is None:
                if self.closed:
                    raise TransportClosed("the transport is closed")
                route = _Route(key, pick.endpoint, self._pool_factory(0))
                if pick.draining:  # removed since the pick: a pool for this one call
                    route.retiring = True
                else:
                    self._routes[key] = [route]
            else:
                route = shards[0]
                if route.in_flight >= _SHARD_AT:
                    route = self._least_loaded(shards, pick)
            route.in_flight += 1
        return route

    def _least_loaded(self, shards: list[_Route[P]], pick: Pick) -> _Route[P]:
        """Under concurrency, spread an endpoint's requests over up to pool_shards pools.

        httpcore's pools rescan every request and connection they hold at each
        request and response, so their cost grows with the square of the
        requests in one pool; several smaller pools per busy endpoint keep it
        down (benchmarks/http_overhead.py).
        """
        best = shards[0]
        for route in shards:
            if route.in_flight < best.in_flight:
                best = route
        if best.in_flight >= _SHARD_AT and len(shards) < self.pool_shards:
            best = _Route(best.key, pick.endpoint, self._pool_factory(len(shards)))
            shards.append(best)
        return best

    def routes(self) -> list[_Route[P]]:
        """Every live pool of the transport (for introspection and tests)."""
        with self._lock:
            return [r for shards in self._routes.values() for r in shards]

    def release(self, route: _Route[P]) -> None:
        """One response on ``route`` ended; a retired pool now idle goes to ``to_close``."""
        with self._lock:
            route.in_flight -= 1
            if route.retiring and route.in_flight == 0:
                self.to_close.append(route.pool)

    def all_pools(self) -> list[P]:
        with self._lock:
            self.closed = True
            pools = [r.pool for shards in self._routes.values() for r in shards]
            pools += self.to_close
            self._routes.clear()
            self.to_close = []
        return pools

    def stats(self) -> tuple[int, int]:
        routes = self.routes()
        return len(routes), sum(r.in_flight for r in routes)

    # -- a request --------------------------------------------------------------------------

    def begin(self, request: httpx.Request) -> _Call:
        key = self.hash_key(request) if self.hash_key is not None else None
        prefer = token = None
        if self.affinity is not None:
            token = self.affinity.token_of(request)
            if token is not None and self.tokens is not None:
                prefer = self.tokens.address(token)
        deadline = request.extensions.get("clientlb.deadline", self.deadline)
        replayable = isinstance(request.stream, httpx.ByteStream)
        call = _Call(self.lb, request, key, prefer, token, deadline,
                     self.hedging_of(request) if replayable else None)
        if not replayable:
            # Not replayable: track it, so that a retry knows whether it was sent.
            call.body = (_AsyncBody if self._is_async else _SyncBody)(request.stream)
        return call

    def current_hedging(self) -> Hedging | None:
        """The transport's hedging policy, or the balancer's (read live)."""
        hedging = self.hedging
        return self.lb.hedging if hedging is LIVE_HEDGING else hedging

    def hedging_of(self, request: httpx.Request) -> Hedging | None:
        """The policy hedging ``request`` (its body is bytes), or None: the method is one of
        the policy's (GET, HEAD, OPTIONS by default), or the request opted in."""
        opt = request.extensions.get("clientlb.hedge")
        if opt is False:
            return None
        hedging = self.current_hedging()
        if opt is True:
            return hedging or _OPT_IN
        if hedging is None or not hedging.applies_to(request.method):
            return None
        return hedging

    def attempt(self, call: _Call, busy: Collection[str] = ()) -> _Attempt[P]:
        """Pick an endpoint (avoiding those tried and ``busy``) and build the httpcore
        request."""
        if call.deadline_at is not None:
            left = call.remaining()
            if left is not None and left <= 0:  # checked before a pick is in flight
                call.note = "deadline exceeded"
                raise httpx.TimeoutException(call.describe_failure(
                    "deadline exceeded before an attempt"), request=call.request)
        try:
            pick = call.pick(busy)
        except NoEndpointAvailable as exc:
            raise _no_endpoint(exc, call.request) from exc
        request = call.request
        url = request.url
        scheme = url.raw_scheme
        extensions = call.extensions
        sni: str | None = None
        if scheme == b"https":
            sni = extensions.get("sni_hostname")
            if sni is None:
                sni = self.server_name or url.host
                extensions = call.extensions = {**extensions, "sni_hostname": sni}
        if call.deadline_at is not None:
            extensions = self._bounded(call, extensions)
        try:
            route = self._route(pick, sni)
        except BaseException as exc:
            pick.done(Outcome.CANCELLED)
            if isinstance(exc, TransportClosed):
                exc.request = call.request
            raise
        core = httpcore.Request(
            method=request.method,
            url=httpcore.URL(scheme=scheme, host=route.host, port=route.port,
                             target=call.target),
            headers=request.headers.raw,
            content=call.body if call.body is not None else request.stream,  # type: ignore[arg-type]
            extensions=extensions,
        )
        return _Attempt(pick, route, core, functools.partial(self.release, route))

    @staticmethod
    def _bounded(call: _Call, extensions: dict[str, Any]) -> dict[str, Any]:
        """httpx's timeouts for one attempt, none longer than the call's time left."""
        left = max(call.remaining() or 0.0, 0.001)
        timeout = dict(extensions.get("timeout") or {})
        for phase in ("connect", "read", "write", "pool"):
            value = timeout.get(phase)
            timeout[phase] = left if value is None else min(value, left)
        return {**extensions, "timeout": timeout}

    def _body_allows_retry(self, call: _Call) -> bool:
        body = call.body
        return body is None or not body.started  # a streamed body cannot be sent twice

    def failed(self, call: _Call, attempt: _Attempt[P], exc: BaseException,
               others: bool = False) -> float:
        """An attempt raised: report it; the delay before a retry, or raise the final error
        (``others``: attempts of its race are in flight — :data:`WAIT` for them)."""
        if self.closed and isinstance(exc, Exception):  # closed under it: not the endpoint's
            attempt.finish(Outcome.CANCELLED)
            err = TransportClosed(f"the transport was closed while the request was in "
                                  f"flight (service {self.lb.name!r})")
            err.request = call.request
            raise err from exc
        cls, outcome, reached = classify_exception(exc)
        attempt.finish(outcome)
        if cls is None:
            raise exc  # not an I/O error (a bug, a cancellation): as it is
        if others:
            call.tried.append((attempt.address, describe(outcome, str(exc))))
            return WAIT
        retryable = cls not in _NOT_RETRIED and (call.body is None or not reached)
        delay = None
        if self._body_allows_retry(call):
            delay = call.after_failure(attempt.address, outcome, reached=reached,
                                       retryable=retryable, detail=str(exc))
        else:
            call.tried.append((attempt.address, f"{outcome.value}: {exc}"))
        if delay is None:
            final = cls(call.describe_failure(str(exc)))
            final.request = call.request
            raise final from exc
        return delay

    def responded(self, call: _Call, attempt: _Attempt[P], response: httpcore.Response,
                  others: bool = False) -> float | None:
        """Headers arrived: the outcome; the delay before a retry, or None to return it
        (``others``: attempts of its race are in flight — :data:`WAIT` for them rather
        than retry)."""
        attempt.mark_first_byte()
        record_headers(attempt, response.headers)  # ORCA load report (weighted_round_robin)
        status = response.status
        if status < 500:
            return None
        attempt.outcome = outcome = classify_status(status)
        policy = call.policy
        if policy is None or status not in policy.statuses \
                or not self._body_allows_retry(call):
            return None
        if others:
            call.tried.append((attempt.address, describe(outcome, f"HTTP {status}")))
            return WAIT
        retry_after = None
        for k, v in response.headers:
            if k.lower() == b"retry-after":
                retry_after = parse_retry_after(v.decode("latin-1"))
                break
        delay = call.after_failure(attempt.address, outcome, reached=True,
                                   retryable=call.body is None, detail=f"HTTP {status}",
                                   retry_after=retry_after, reason=f"http_{status}")
        if delay is None:
            call.tried.pop()  # this response is the answer, not a failed attempt
        return delay

    def response(self, call: _Call, attempt: _Attempt[P], resp: httpcore.Response,
                 stream: httpx.SyncByteStream | httpx.AsyncByteStream) -> httpx.Response:
        headers = resp.headers
        affinity = self.affinity
        address = attempt.address
        if affinity is not None and self.tokens is not None:
            token = self.tokens.token(address)
            if token != call.token:
                headers = list(headers)
                affinity.set_token(headers, token, call.request.url.raw_scheme == b"https")
        if attempt.outcome is _SUCCESS:
            call.answered(attempt.first_byte)  # the adaptive hedge delay's sample
        extensions = resp.extensions
        extensions["clientlb.endpoint"] = address
        if call.tried:
            extensions["clientlb.tried"] = tuple(call.tried)
        return httpx.Response(status_code=resp.status, headers=headers, stream=stream,
                              extensions=extensions)

    def body_error(self, attempt: _Attempt[P], exc: BaseException) -> NoReturn:
        """An error while reading a response body: record it, raise it as httpx's."""
        if self.closed:  # the transport was closed under the body: not the endpoint's fault
            attempt.outcome = Outcome.CANCELLED
            raise TransportClosed("the transport was closed while the response body was "
                                  f"being read (service {self.lb.name!r})") from exc
        cls, outcome, _ = classify_exception(exc)
        if outcome is not Outcome.CANCELLED or attempt.outcome is _SUCCESS:
            attempt.outcome = outcome
        if cls is None:
            raise exc
        raise cls(str(exc)) from exc

    # -- hedged requests --------------------------------------------------------------------

    @staticmethod
    def hedge_delay(call: _Call, first: _Attempt[P]) -> float | None:
        """When ``first`` (the call's first attempt, just picked) should be hedged, or None."""
        return None if call.hedging is None else call.hedge_delay(first.pick)

    def race(self, call: _Call, first: _Attempt[P], delay: float,
             runner: _Runner) -> Generator[float | None, None, None]:
        """A hedged request, sans I/O: the decisions of both transports (module doc).

        ``runner`` is the shell: it starts attempts (a thread or a task each), collects
        those that ended, abandons and settles the losers. The generator yields how long
        to wait (None: until an attempt ends) and, resumed, takes what ended meanwhile
        (``runner.take()``); it ends with the response in ``runner.answer``, or raises
        the call's error — the retry rule is the unhedged loop's once no attempt of the
        race is left in flight. ``delay``: when ``first`` should be hedged.
        """
        live = [first]  # in flight, oldest first
        hedges: set[_Attempt[Any]] = set()
        runner.start(first)
        clock = time.monotonic
        hedge_at: float | None = clock() + delay
        retry_at: float | None = None
        try:
            while True:
                due = min((t for t in (hedge_at, retry_at) if t is not None), default=None)
                yield None if due is None else max(0.0, due - clock())
                ended = runner.take()
                for i, (attempt, result) in enumerate(ended):
                    live.remove(attempt)
                    if isinstance(result, httpcore.Response):
                        wait = self.responded(call, attempt, result, others=bool(live))
                        if wait is None:  # the answer
                            call.won(attempt in hedges)
                            for loser, other in ended[i + 1:]:  # ended too: as they did
                                live.remove(loser)
                                runner.settle(loser, other, _loser_outcome(loser, other, True))
                            for loser in live:
                                runner.abandon(loser, call.lost(loser.pick, loser in hedges))
                            live = []
                            runner.answer = self.response(call, attempt, result,
                                                          runner.stream(attempt, result))
                            return
                        runner.settle(attempt, result, None)
                    else:
                        wait = self.failed(call, attempt, result, others=bool(live))
                    if wait != WAIT:  # nothing left in flight: retry after ``wait``
                        retry_at, hedge_at = clock() + wait, None
                now = clock()
                if retry_at is not None and now >= retry_at:
                    retry_at = None
                    attempt = self.attempt(call)
                    runner.start(attempt)
                    live.append(attempt)
                    delay_ = call.hedge_delay(attempt.pick)
                    hedge_at = None if delay_ is None else now + delay_
                elif hedge_at is not None and now >= hedge_at:
                    hedge_at = None
                    hedge = self._hedge(call, live, runner)
                    if hedge is not None:
                        hedges.add(hedge)
                        live.append(hedge)
                        delay_ = call.hedge_delay()
                        hedge_at = None if delay_ is None else now + delay_
        finally:
            for attempt in live:  # the caller gave up (or a bug): nothing to learn
                runner.abandon(attempt, False)

    def _hedge(self, call: _Call, live: list[_Attempt[P]], runner: _Runner
               ) -> _Attempt[P] | None:
        """Start a hedge of the attempts in ``live`` on another endpoint, if one may start."""
        busy = {a.address for a in live}
        if not live or not runner.room() \
                or len(call.tried_addresses() | busy) >= len(self.lb.endpoints()) \
                or not call.take_hedge(call.hedges + 2, live[-1].address,
                                       [a.pick for a in live]):
            return None
        try:
            hedge = self.attempt(call, busy)
        except (httpx.TransportError, RuntimeError):  # no endpoint, deadline, closed
            return None
        if hedge.address in busy:  # nothing else may take traffic now
            hedge.finish(_CANCELLED)
            return None
        runner.start(hedge)
        return hedge

    def describe(self, kind: str) -> str:
        pools, in_flight = self.stats()
        policy = self.lb.retry_policy
        retry = "off" if policy is None else f"{policy.attempts} attempts"
        hedging = self.current_hedging()
        hedged = "" if hedging is None else f" hedging={hedging.describe()}"
        return (f"<{kind} {self.lb.name!r} strategy={self.lb.strategy.name} pools={pools} "
                f"in_flight={in_flight} retry={retry}{hedged}>")


#: What an attempt of a race ended with: its response headers, or what it raised.
_Ended = tuple[_Attempt[Any], "httpcore.Response | BaseException"]


class _Runner(Protocol):
    """What :meth:`_Router.race` asks of a shell (``_Threads``, ``_Tasks``)."""

    answer: httpx.Response | None

    def room(self) -> bool:
        """May another attempt start now?"""

    def start(self, attempt: _Attempt[Any]) -> None:
        """Send ``attempt`` (it ends in a later :meth:`take`)."""

    def take(self) -> list[_Ended]:
        """The attempts that ended since the last call, with their results."""

    def abandon(self, attempt: _Attempt[Any], keep: bool) -> None:
        """``attempt`` lost: cancel it, or (``keep``) let it finish; either way it is
        settled (:meth:`settle`) with :func:`_loser_outcome` when it ends."""

    def settle(self, attempt: _Attempt[Any], result: httpcore.Response | BaseException,
               outcome: Outcome | None) -> None:
        """Drain and close a response not used (none for an exception), then finish the
        attempt with ``outcome`` (None: the one recorded)."""

    def stream(self, attempt: _Attempt[Any], response: httpcore.Response
               ) -> httpx.SyncByteStream | httpx.AsyncByteStream:
        """The response stream given to the caller, which finishes the attempt."""


def _loser_outcome(attempt: _Attempt[Any], result: httpcore.Response | BaseException,
                   keep: bool) -> Outcome:
    """How an attempt that lost its race ended: cancelled, unless it was kept (the
    strategy's own pick), whose outcome is what the endpoint did, at its latency."""
    if not keep:
        return _CANCELLED
    if isinstance(result, httpcore.Response):
        attempt.mark_first_byte()
        return classify_status(result.status)
    return classify_exception(result)[1]


def _resolve_lb(lb: LoadBalancer | str | Iterable[str | Endpoint]) -> tuple[LoadBalancer, bool]:
    if isinstance(lb, LoadBalancer):
        return lb, False
    return LoadBalancer(lb), True


_DRAIN_LIMIT = 65536  # bytes read from a retried error response to keep its connection


class _Drain:
    """Counts what is read of a retried error response, up to ``_DRAIN_LIMIT``."""

    __slots__ = ("read",)

    def __init__(self) -> None:
        self.read = 0

    def enough(self, chunk: bytes) -> bool:
        self.read += len(chunk)
        return self.read > _DRAIN_LIMIT


class _Body:
    """What the sync and async response streams share: the attempt they complete."""

    __slots__ = ("_attempt", "_closed", "_router", "_stream")

    def __init__(self, router: _Router[Any], attempt: _Attempt[Any], stream: Any) -> None:
        self._router = router
        self._attempt = attempt
        self._stream = stream
        self._closed = False

    def _closing(self) -> bool:
        """True the first time the stream is closed (then the attempt completes)."""
        closing, self._closed = not self._closed, True
        return closing


@strict_arguments
class _Transport:
    """The constructor, ``lb`` and ``repr`` of both transports (see HTTPTransport)."""

    _pool_class: ClassVar[Callable[..., Any]]

    def __init__(self, lb: LoadBalancer | str | Iterable[str | Endpoint], *,
                 server_name: str | None = None, hash_key: HashKey | None = None,
                 affinity: Affinity | None = None, pool_shards: int = 4,
                 deadline: float | None = None,
                 hedging: Hedging | Literal[False] | None = None,
                 # httpx.HTTPTransport's options, with its defaults (proxy and uds refused)
                 verify: ssl.SSLContext | str | bool = True, cert: CertTypes | None = None,
                 trust_env: bool = True, http1: bool = True, http2: bool = False,
                 limits: httpx.Limits = DEFAULT_LIMITS, local_address: str | None = None,
                 retries: int = 0, socket_options: Iterable[SocketOption] | None = None,
                 **unsupported: NoReturn) -> None:
        # **unsupported: a type checker flags any other keyword (nothing fits NoReturn);
        # at run time proxy=, uds= or a typo get a ConfigError that says why.
        _check_unsupported(unsupported)
        kwargs = _pool_kwargs(verify=verify, cert=cert, trust_env=trust_env, http1=http1,
                              http2=http2, limits=limits, local_address=local_address,
                              retries=retries, socket_options=socket_options)
        shard_limits = _shard_limits(limits, pool_shards)
        pool_class = self._pool_class

        def new_pool(shard: int) -> Any:
            connections, keepalive = shard_limits[shard]
            return pool_class(max_connections=connections,
                              max_keepalive_connections=keepalive, **kwargs)

        self._lb, self._owns_lb = _resolve_lb(lb)
        try:
            self._router: _Router[Any] = _Router(
                self._lb, pool_factory=new_pool,
                server_name=server_name, hash_key=hash_key, affinity=affinity,
                pool_shards=len(shard_limits), deadline=deadline, hedging=hedging,
                is_async=self._pool_class is httpcore.AsyncConnectionPool)
        except BaseException:  # a balancer built here must not outlive the failure
            if self._owns_lb:
                self._lb.close()
            raise

    @property
    def lb(self) -> LoadBalancer:
        return self._lb

    def __repr__(self) -> str:
        return self._router.describe(type(self).__name__)


# -- sync ---------------------------------------------------------------------------------------


def _close(closeable: Any) -> None:
    close = getattr(closeable, "close", None)
    if close is not None:
        close()


class _SyncResponseStream(_Body, httpx.SyncByteStream):
    __slots__ = ()

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._stream
        except Exception as exc:
            self._router.body_error(self._attempt, exc)

    def close(self) -> None:
        if self._closing():
            try:
                _close(self._stream)
            finally:
                self._attempt.finish()
                self._router.close_retired_sync()


def _discard(stream: Any) -> None:
    drain = _Drain()
    with contextlib.suppress(Exception):  # the attempt failed anyway; the retry decides
        for chunk in stream:
            if drain.enough(chunk):
                break
    _close(stream)


class _Threads:
    """The sync shell of a race (:class:`_Runner`): each attempt in one of the shared
    ``HEDGE_THREADS`` (in the caller's thread when none is free), the caller waiting for
    the first to end; a loser ends in its thread, and is settled there."""

    __slots__ = ("_abandoned", "_cond", "_ended", "_router", "answer")

    def __init__(self, router: _Router[Any]) -> None:
        self._router = router
        self._cond = threading.Condition()
        self._ended: list[_Ended] = []
        self._abandoned: dict[_Attempt[Any], bool] = {}
        self.answer: httpx.Response | None = None

    def room(self) -> bool:
        return HEDGE_THREADS.has_room()

    def start(self, attempt: _Attempt[Any]) -> None:
        context = contextvars.copy_context()  # the caller's span, for the attempt's events

        def run() -> None:
            context.run(self._run, attempt)

        if not HEDGE_THREADS.try_submit(run):
            run()  # no thread free: here (a hedge asks room() first, so only a retry)

    def _run(self, attempt: _Attempt[Any]) -> None:
        result: httpcore.Response | BaseException
        try:
            result = attempt.route.pool.handle_request(attempt.core_request)
        except BaseException as exc:
            result = exc
        with self._cond:
            keep = self._abandoned.pop(attempt, None)
            if keep is None:
                self._ended.append((attempt, result))
                self._cond.notify()
                return
        # a kept attempt cut by the transport's close() says nothing about its endpoint
        self.settle(attempt, result,
                    _loser_outcome(attempt, result, keep and not self._router.closed))

    def wait(self, timeout: float | None) -> None:
        with self._cond:
            if not self._ended:
                self._cond.wait(timeout)

    def take(self) -> list[_Ended]:
        with self._cond:
            ended, self._ended = self._ended, []
        return ended

    def abandon(self, attempt: _Attempt[Any], keep: bool) -> None:
        with self._cond:
            results = [r for a, r in self._ended if a is attempt]
            if not results:  # still running: settled in its thread when it ends
                self._abandoned[attempt] = keep
                return
            self._ended = [e for e in self._ended if e[0] is not attempt]
        self.settle(attempt, results[0], _loser_outcome(attempt, results[0], keep))

    def settle(self, attempt: _Attempt[Any], result: httpcore.Response | BaseException,
               outcome: Outcome | None) -> None:
        if isinstance(result, httpcore.Response):
            _discard(result.stream)
        attempt.finish(outcome)
        self._router.close_retired_sync()

    def stream(self, attempt: _Attempt[Any], response: httpcore.Response
               ) -> httpx.SyncByteStream:
        return _SyncResponseStream(self._router, attempt, response.stream)


class HTTPTransport(_Transport, httpx.BaseTransport):
    """An ``httpx.BaseTransport`` that balances every request over ``lb``.

    ::

        client = httpx.Client(transport=clientlb.HTTPTransport(lb), base_url="http://users")

    Args:
        lb: a :class:`LoadBalancer` (or a target, for a balancer the transport
            owns and closes).
        server_name: the TLS name (SNI and certificate check) for ``https``;
            default: the request's host, the logical service name.
        hash_key: a callable of the request returning the pick key
            (``clientlb.hash_by_header("X-User")``), for ``ring_hash``/``maglev``.
        affinity: :class:`CookieAffinity` or :class:`HeaderAffinity` for
            sticky sessions.
        pool_shards: how many connection pools a busy endpoint may get (default
            4): another one opens when each has 4 requests in flight, as
            httpcore's pool cost grows with the requests it holds.
            ``pool_shards=1`` keeps one pool per endpoint.
        deadline: the total time of one request in seconds, every attempt and
            backoff included (default None: the balancer's
            ``RetryPolicy.deadline``). Each attempt's httpx timeouts (connect,
            read, write, pool) are cut to the time left, so ``timeout=0.3`` with
            ``deadline=0.5`` gives one attempt at most 0.3 s and all of them
            0.5 s. A request may set its own with
            ``extensions={"clientlb.deadline": seconds}``.
        hedging: a :class:`~clientlb.Hedging` policy for this transport; None
            (default): the balancer's ``hedging`` (read at each request, so
            ``Registry.update(hedging=...)`` reaches it); False: none. A request
            opts in or out with ``extensions={"clientlb.hedge": True/False}``.
            The sync transport runs the attempts of a hedged request in a few
            shared threads (docs/http.md, "Hedged requests").
        verify: as in httpx: ``True`` (default), ``False``, or an
            ``ssl.SSLContext``; certificates are checked against the logical
            name (or ``server_name``).
        cert: as in httpx: a client certificate file, or ``(cert, key)`` /
            ``(cert, key, password)``.
        trust_env: as in httpx (default True): ``SSL_CERT_FILE``/``SSL_CERT_DIR``.
        http1: as in httpx (default True).
        http2: as in httpx (default False; needs ``h2``).
        limits: an ``httpx.Limits`` (httpx's default), which caps **each
            endpoint**: ``max_connections`` and ``max_keepalive_connections``
            are split across its pools, and an endpoint gets at most one pool
            per 4 connections allowed (``max_connections=5``: one pool).
        local_address: as in httpx: the local address to connect from.
        retries: as in httpx: httpcore's connect retries on the same endpoint
            (default 0; the balancer's retries go to another endpoint).
        socket_options: as in httpx: ``(level, option, value)`` tuples.
        **unsupported: none: ``proxy`` and ``uds`` are refused, as they would
            bypass the endpoints; any other name is a typo.

    Raises:
        ConfigError: an unknown or unsupported option, a bad argument.
    """

    _pool_class = httpcore.ConnectionPool

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        router = self._router
        call = router.begin(request)
        attempt = router.attempt(call)
        hedge = router.hedge_delay(call, attempt)
        if hedge is not None and HEDGE_THREADS.has_room():
            threads = _Threads(router)
            with contextlib.closing(router.race(call, attempt, hedge, threads)) as race:
                for timeout in race:
                    threads.wait(timeout)
            return threads.answer  # type: ignore[return-value]  # set when the race ends
        delay: float | None
        while True:
            try:
                resp = attempt.route.pool.handle_request(attempt.core_request)
            except BaseException as exc:
                try:
                    delay = router.failed(call, attempt, exc)
                finally:
                    router.close_retired_sync()
            else:
                delay = router.responded(call, attempt, resp)
                if delay is None:
                    return router.response(call, attempt, resp,
                                           _SyncResponseStream(router, attempt, resp.stream))
                _discard(resp.stream)
                attempt.finish()
                router.close_retired_sync()
            if delay:
                time.sleep(delay)
            attempt = router.attempt(call)

    def close(self) -> None:
        for pool in self._router.all_pools():
            pool.close()
        self._lb.remove_listener(self._router.listener)
        if self._owns_lb:
            self._lb.close()


# -- async --------------------------------------------------------------------------------------


async def _aclose(closeable: Any) -> None:
    aclose = getattr(closeable, "aclose", None)
    if aclose is not None:
        await aclose()


class _AsyncResponseStream(_Body, httpx.AsyncByteStream):
    __slots__ = ()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._stream:
                yield chunk
        except Exception as exc:
            self._router.body_error(self._attempt, exc)

    async def aclose(self) -> None:
        if self._closing():
            try:
                await _aclose(self._stream)
            finally:
                self._attempt.finish()
                for pool in self._router.take_retired():
                    await pool.aclose()


async def _adiscard(stream: Any) -> None:
    drain = _Drain()
    with contextlib.suppress(Exception):  # the attempt failed anyway; the retry decides
        async for chunk in stream:
            if drain.enough(chunk):
                break
    await _aclose(stream)


def _result(task: asyncio.Task[httpcore.Response]) -> httpcore.Response | BaseException:
    if task.cancelled():
        return asyncio.CancelledError()
    return task.exception() or task.result()


class _Tasks:
    """The asyncio shell of a race (:class:`_Runner`): each attempt a task; a loser is
    cancelled (httpcore closes its connection) or, kept, left to end; both are settled
    by a task of ``background`` (the transport's: ``aclose()`` cancels them)."""

    __slots__ = ("_background", "_ended", "_loop", "_router", "_tasks", "answer")

    def __init__(self, router: _Router[Any], background: set[asyncio.Task[Any]]) -> None:
        self._router = router
        self._background = background
        self._loop = asyncio.get_running_loop()
        self._tasks: dict[asyncio.Task[httpcore.Response], _Attempt[Any]] = {}
        self._ended: list[_Ended] = []
        self.answer: httpx.Response | None = None

    def room(self) -> bool:
        return True

    def start(self, attempt: _Attempt[Any]) -> None:
        pool = attempt.route.pool
        self._tasks[self._loop.create_task(pool.handle_async_request(attempt.core_request))] \
            = attempt

    async def wait(self, timeout: float | None) -> None:
        if not self._tasks:  # a retry's backoff
            await asyncio.sleep(timeout or 0.0)
            return
        done, _ = await asyncio.wait(self._tasks, timeout=timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        self._ended += [(self._tasks.pop(task), _result(task)) for task in done]

    def take(self) -> list[_Ended]:
        ended, self._ended = self._ended, []
        return ended

    def abandon(self, attempt: _Attempt[Any], keep: bool) -> None:
        task = next(t for t, a in self._tasks.items() if a is attempt)
        del self._tasks[task]
        if not keep:
            task.cancel()
        self._background.add(task)
        task.add_done_callback(functools.partial(self._lost, attempt, keep))

    def _lost(self, attempt: _Attempt[Any], keep: bool,
              task: asyncio.Task[httpcore.Response]) -> None:
        self._background.discard(task)
        result = _result(task)
        self.settle(attempt, result,
                    _loser_outcome(attempt, result, keep and not self._router.closed))

    def settle(self, attempt: _Attempt[Any], result: httpcore.Response | BaseException,
               outcome: Outcome | None) -> None:
        if not isinstance(result, httpcore.Response):
            attempt.finish(outcome)
            return
        task = self._loop.create_task(self._drain(attempt, result, outcome))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @staticmethod
    async def _drain(attempt: _Attempt[Any], response: httpcore.Response,
                     outcome: Outcome | None) -> None:
        try:
            await _adiscard(response.stream)
        finally:
            attempt.finish(outcome)

    def stream(self, attempt: _Attempt[Any], response: httpcore.Response
               ) -> httpx.AsyncByteStream:
        return _AsyncResponseStream(self._router, attempt, response.stream)


class AsyncHTTPTransport(_Transport, httpx.AsyncBaseTransport):
    """An ``httpx.AsyncBaseTransport`` that balances every request over ``lb``.

    The asyncio (or trio) twin of :class:`HTTPTransport`, with the same
    arguments::

        async with httpx.AsyncClient(transport=clientlb.AsyncHTTPTransport(lb)) as client:
            await client.get("http://users/v1/me")
    """

    _pool_class = httpcore.AsyncConnectionPool
    _ready = False  # the balancer answered its first resolution
    _closers: set[asyncio.Task[None]] | None = None
    #: the losers of hedged requests and their drains (asyncio only; None under trio)
    _hedges: set[asyncio.Task[Any]] | None = None

    def _watch_retired(self) -> None:
        """Close retired pools on this event loop as soon as a diff retires them."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not asyncio (trio): pools close at the next request
            return
        closers: set[asyncio.Task[None]] = set()
        self._closers = closers
        self._hedges = set()

        def close_soon() -> None:
            task = loop.create_task(self._close_retired())
            closers.add(task)
            task.add_done_callback(closers.discard)

        def wake() -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed
                loop.call_soon_threadsafe(close_soon)

        self._router.on_retired = wake

    async def _close_retired(self) -> None:
        for pool in self._router.take_retired():
            await pool.aclose()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        router = self._router
        if not self._ready:  # a discovered target may still be resolving (asyncio only)
            if self._lb.mode == "waiting":
                await self._lb.await_ready()
            self._ready = self._lb.mode != "waiting"
            if router.on_retired is None:
                self._watch_retired()
        call = router.begin(request)
        if router.to_close:
            await self._close_retired()
        attempt = router.attempt(call)
        hedge = router.hedge_delay(call, attempt)
        if hedge is not None and self._hedges is not None:  # hedged on asyncio only
            tasks = _Tasks(router, self._hedges)
            with contextlib.closing(router.race(call, attempt, hedge, tasks)) as race:
                for timeout in race:
                    await tasks.wait(timeout)
            return tasks.answer  # type: ignore[return-value]  # set when the race ends
        delay: float | None
        while True:
            try:
                resp = await attempt.route.pool.handle_async_request(attempt.core_request)
            except BaseException as exc:
                delay = router.failed(call, attempt, exc)
            else:
                delay = router.responded(call, attempt, resp)
                if delay is None:
                    return router.response(call, attempt, resp,
                                           _AsyncResponseStream(router, attempt, resp.stream))
                await _adiscard(resp.stream)
                attempt.finish()
            if delay:
                await anyio.sleep(delay)
            if router.to_close:
                await self._close_retired()
            attempt = router.attempt(call)

    async def aclose(self) -> None:
        for task in list(self._hedges or ()):  # losers of hedged requests still running
            task.cancel()
        for pool in self._router.all_pools():
            await pool.aclose()
        self._lb.remove_listener(self._router.listener)
        if self._owns_lb:
            await self._lb.aclose()

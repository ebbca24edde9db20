"""The ASGI application of the control room: routes, authentication, headers, audit log.

Security, by design rather than by configuration:

* Every change needs ``Authorization: Bearer <token>``, compared in constant
  time (``hmac.compare_digest`` of SHA-256 digests, so not even the length
  leaks). Without a token, changes are refused (403) — a dashboard that
  anyone on the network could use to drain a service would be an outage
  button. With ``read_requires_token=True`` the API, the live updates and
  ``/metrics`` need it too (the page itself then shows no data until the
  token is entered).
* No cookies, no sessions: the browser sends the token from the page's
  memory in a header, which a cross-site form cannot do, so there is no
  CSRF surface. Changes also need ``Content-Type: application/json``.
* A strict Content-Security-Policy (``default-src 'none'``; scripts and
  styles from this app only, no inline script or style), ``nosniff``,
  ``frame-ancestors 'none'``, ``no-referrer``; every value in the page is
  HTML-escaped, and the script writes text with ``textContent`` only.
* No secret is ever shown or logged: targets are masked
  (:func:`clientlb.admin._monitor.mask_secrets`), request bodies are never
  logged, and error messages are scrubbed of every secret-looking value of
  the request and of the admin token itself.
* One audit line per change attempt on the ``clientlb.admin.audit`` logger:
  who (the client address), what (method, service, endpoint, the option
  names changed — never their values) and the result.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._core.errors import ConfigError
from .._ops.registry import Registry
from . import _control, _metrics, _page
from ._monitor import INTERVAL, Monitor, mask_secrets
from ._openapi import openapi

__all__ = ["create_app"]

logger = logging.getLogger("clientlb.admin")
audit = logging.getLogger("clientlb.admin.audit")

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
_STATIC = {"dashboard.js": "text/javascript; charset=utf-8",
           "dashboard.css": "text/css; charset=utf-8"}
_SECRET_KEYS = re.compile(r"(?i)token|password|passwd|secret|credential|auth")
#: Keep-alive comment on an idle event stream (seconds): proxies close silent streams.
_KEEPALIVE = 15.0


def mount_point(scope: Scope) -> str:
    """Where the app is mounted (``/lb``), for the page's links: the ASGI ``root_path``, or,
    for frameworks that do not set it (Litestar), what ``raw_path`` has before ``path``."""
    root = str(scope.get("root_path") or "")
    if root:
        return root.rstrip("/")
    raw = scope.get("raw_path")
    path = str(scope.get("path", "")).rstrip("/")
    if isinstance(raw, bytes):
        text = raw.decode("latin-1").split("?", 1)[0].rstrip("/")
        if path and text.endswith(path):
            return text[:-len(path)]
        if not path:
            return text
    return ""


class _SecurityHeaders:
    """ASGI middleware: the security headers on every response, ``no-store`` on the API;
    a trailing slash is ignored (``/api/services/`` is ``/api/services``), because some
    frameworks add one when they mount an app."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = str(scope.get("path", ""))
        root = str(scope.get("root_path") or "")
        route = path[len(root):] if root and path.startswith(root) else path
        if len(route) > 1 and route.endswith("/"):
            scope = {**scope, "path": path.rstrip("/")}
        api = not route.startswith("/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", [])
                           if h[0].lower() not in {k for k, _ in _HEADERS}]
                headers.extend(_HEADERS)
                if api:
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class _Auth:
    """The bearer token: who may read, who may change."""

    def __init__(self, token: str | None, read_requires_token: bool) -> None:
        self._digest = hashlib.sha256(token.encode()).digest() if token is not None else None
        self._token = token
        self.read_requires_token = read_requires_token

    @property
    def changes_enabled(self) -> bool:
        return self._digest is not None

    def presented(self, request: Request) -> bool:
        """Whether the request carries the right token."""
        if self._digest is None:
            return False
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return False
        given = hashlib.sha256(value.strip().encode("utf-8", "surrogateescape")).digest()
        return hmac.compare_digest(given, self._digest)

    def may_read(self, request: Request) -> bool:
        return not self.read_requires_token or self.presented(request)

    def scrub(self, text: str, body: object = None) -> str:
        """``text`` without the admin token or any secret-looking value from ``body``."""
        secrets = [self._token] if self._token else []
        secrets.extend(_secret_values(body))
        for secret in sorted(set(secrets), key=len, reverse=True):
            if secret:
                text = text.replace(secret, "***")
        return mask_secrets(text)


def _secret_values(value: object, key: str = "") -> Iterator[str]:
    """String values under secret-looking keys, and ``token=``/``password=`` parameters."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            yield from _secret_values(v, str(k))
    elif isinstance(value, list):
        for item in value:
            yield from _secret_values(item, key)
    elif isinstance(value, str):
        if key and _SECRET_KEYS.search(key) and len(value) >= 3:
            yield value
        for match in re.finditer(r"(?i)(?:token|password|passwd|secret)=([^&\s'\"]+)", value):
            yield match.group(1)


def _error(status: int, message: str, field: str | None = None,
           headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "field": field}, status_code=status,
                        headers=dict(headers or {}))


class _Watchers:
    """The sampler task and the live viewers it wakes once a tick."""

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tick: asyncio.Future[None] | None = None
        self.closing = False
        self.viewers = 0

    def ensure_running(self) -> None:
        """Start the sampler on the running loop if it is not running (idempotent)."""
        loop = asyncio.get_running_loop()
        if self._task is not None and not self._task.done() and self._loop is loop:
            return
        self.closing = False
        self._loop = loop
        self._tick = loop.create_future()
        self._task = loop.create_task(self._run(), name="clientlb-admin-sampler")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while not self.closing:
            try:
                self.monitor.tick()
            except Exception:  # never let one bad balancer stop the dashboard
                logger.exception("sampling the balancers failed")
            self.wake()
            next_at += INTERVAL
            delay = next_at - loop.time()
            if delay < 0:  # fell behind (a busy loop): skip, do not burst
                next_at = loop.time() + INTERVAL
                delay = INTERVAL
            await asyncio.sleep(delay)

    def wake(self) -> None:
        """Wake every viewer (after a tick, or after a change so that it shows at once)."""
        if self._tick is not None and not self._tick.done():
            self._tick.set_result(None)
        if self._loop is not None:
            self._tick = self._loop.create_future()

    async def next(self, timeout: float) -> bool:
        """Wait for the next tick; False after ``timeout`` seconds without one."""
        tick = self._tick
        if tick is None:
            return False
        try:
            await asyncio.wait_for(asyncio.shield(tick), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    def end_streams(self) -> None:
        """Tell every live viewer to finish (thread-safe; a server shutting down calls it)."""
        self.closing = True
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.wake)

    async def close(self) -> None:
        self.closing = True
        self.wake()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


def create_app(registry: Registry, *, token: str | None = None,
               read_requires_token: bool = False) -> Starlette:
    """The control room of ``registry``: an ASGI application (Starlette).

    Mount it in any ASGI application (``app.mount("/lb", create_app(registry))``
    with FastAPI or Starlette; ``asgi("/lb", is_mount=True)`` with Litestar) or
    run it with ``clientlb serve`` / ``uvicorn``.

    Args:
        registry: the balancers to show and control.
        token: the bearer token every change needs (at least 16 characters;
            ``secrets.token_urlsafe()`` makes a good one). ``None`` (default):
            the control room is read-only and every change is refused.
        read_requires_token: also require the token to read the API, the live
            updates and ``/metrics`` (default False: reads are open to whoever
            reaches the address — keep it on 127.0.0.1 or a private network).

    Raises:
        ConfigError: a token that is too short or holds whitespace or control
            characters, or ``read_requires_token`` without a token.
    """
    if not isinstance(registry, Registry):
        raise ConfigError(f"must be a clientlb.Registry, got {type(registry).__name__}",
                          field="registry")
    if token is not None:
        if not isinstance(token, str):
            raise ConfigError(f"must be a string or None, got {type(token).__name__}",
                              field="token")
        if len(token) < 16:
            raise ConfigError(f"must be at least 16 characters, got {len(token)}",
                              field="token")
        if any(c.isspace() or not c.isprintable() for c in token):
            raise ConfigError("must not contain whitespace or control characters",
                              field="token")
    if read_requires_token and token is None:
        raise ConfigError("needs a token: with read_requires_token=True and no token nobody "
                          "could read anything", field="read_requires_token")
    auth = _Auth(token, bool(read_requires_token))
    monitor = Monitor(registry)
    watchers = _Watchers(monitor)

    # -- helpers --------------------------------------------------------------------------

    def client(request: Request) -> str:
        peer = request.client
        return f"{peer.host}:{peer.port}" if peer else "unknown"

    def refuse_read(request: Request) -> JSONResponse | None:
        watchers.ensure_running()
        if auth.may_read(request):
            return None
        return _error(401, "this control room needs the admin token to read: send "
                      "'Authorization: Bearer <token>'", headers={"WWW-Authenticate": "Bearer"})

    async def change(request: Request, what: str | Callable[[dict[str, Any]], str],
                     action: Callable[[dict[str, Any]], Awaitable[Response]],
                     *, needs_body: bool) -> Response:
        """Authenticate, decode, run ``action``, answer, and write one audit line.

        ``what`` says what is changed, or makes that from the decoded body
        (option names only: a value is never logged).
        """
        watchers.ensure_running()
        who = client(request)
        body: dict[str, Any] = {}
        response: Response
        if not auth.changes_enabled:
            response = _error(403, "changes are disabled: no admin token is configured (set "
                              "CLIENTLB_ADMIN_TOKEN or use --token-file)")
        elif not auth.presented(request):
            response = _error(401, "this change needs the admin token: send 'Authorization: "
                              "Bearer <token>'", headers={"WWW-Authenticate": "Bearer"})
        else:
            try:
                if needs_body:
                    body = await _read_json(request)
                response = await action(body)
            except ConfigError as exc:
                response = _error(400, auth.scrub(str(exc), body),
                                  auth.scrub(exc.field, body) if exc.field else None)
            except _control.ActionError as exc:
                response = _error(exc.status, auth.scrub(str(exc), body))
            except _TooLarge:
                response = _error(413, f"the request body is larger than "
                                  f"{_control.MAX_BODY} bytes")
            except _NotJSON:
                response = _error(415, "send the request body as Content-Type: "
                                  "application/json")
        if 200 <= response.status_code < 300:
            result = "ok"
            await run_in_threadpool(monitor.publish)  # viewers see the change now, not in 1 s
            watchers.wake()
        else:
            result = f"refused {response.status_code}"
            detail = getattr(response, "body", b"")
            if response.status_code == 400 and isinstance(detail, bytes):
                result += ": " + detail.decode("utf-8", "replace")[:300]
        described = what(body) if callable(what) else what
        audit.info("client=%s action=%r result=%s", who, auth.scrub(described, body), result)
        return response

    # -- pages and plain endpoints ------------------------------------------------------

    async def page(request: Request) -> Response:
        watchers.ensure_running()
        readable = auth.may_read(request)
        html = _page.render(
            monitor.services(charts=True) if readable else None,
            base=mount_point(request.scope),
            changes_enabled=auth.changes_enabled,
            read_requires_token=auth.read_requires_token,
        )
        return Response(html, media_type="text/html; charset=utf-8",
                        headers={"cache-control": "no-store"})

    async def static(request: Request) -> Response:
        name = request.path_params["file"]
        media_type = _STATIC.get(name)
        if media_type is None:
            raise HTTPException(404)
        data = resources.files(__package__).joinpath("static").joinpath(name).read_bytes()
        return Response(data, media_type=media_type,
                        headers={"cache-control": "public, max-age=300"})

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def metrics(request: Request) -> Response:
        refused = refuse_read(request)
        if refused is not None:
            return refused
        text = await run_in_threadpool(_metrics.scrape, registry)
        return Response(text, media_type=_metrics.CONTENT_TYPE)

    async def openapi_document(request: Request) -> Response:
        return JSONResponse(openapi(mount_point(request.scope)))

    # -- the API -------------------------------------------------------------------------

    async def list_services(request: Request) -> Response:
        refused = refuse_read(request)
        if refused is not None:
            return refused
        services = await run_in_threadpool(monitor.services)
        return JSONResponse({"services": services})

    async def get_service(request: Request) -> Response:
        refused = refuse_read(request)
        if refused is not None:
            return refused
        name = request.path_params["name"]
        service = await run_in_threadpool(monitor.service, name)
        if service is None:
            return _error(404, _control.no_service(registry, name))
        return JSONResponse(service)

    async def post_service(request: Request) -> Response:
        async def action(body: dict[str, Any]) -> Response:
            name = await run_in_threadpool(_control.create_service, registry, body)
            service = await run_in_threadpool(monitor.service, name)
            return JSONResponse(service, status_code=201)

        return await change(
            request, lambda body: f"create service {_short(str(body.get('name', '?')))}",
            action, needs_body=True)

    async def patch_service(request: Request) -> Response:
        name = request.path_params["name"]

        async def action(body: dict[str, Any]) -> Response:
            await run_in_threadpool(_control.update_service, registry, name, body)
            service = await run_in_threadpool(monitor.service, name)
            return JSONResponse(service)

        def what(body: dict[str, Any]) -> str:
            keys = ", ".join(_short(str(k), 40) for k in list(body)[:10]) or "nothing"
            return f"update service {_short(name)} ({keys})"

        return await change(request, what, action, needs_body=True)

    async def delete_service(request: Request) -> Response:
        name = request.path_params["name"]

        async def action(body: dict[str, Any]) -> Response:
            timeout = _control.delete_timeout(request.query_params.get("timeout"))
            drained = await run_in_threadpool(_control.delete_service, registry, name, timeout)
            return JSONResponse({"deleted": name, "drained": drained})

        return await change(request, f"delete service {_short(name)}", action,
                            needs_body=False)

    async def endpoint_action(request: Request) -> Response:
        name = request.path_params["name"]
        address = request.path_params["address"]
        verb = request.path_params["action"]
        if verb not in ("drain", "undrain"):
            return _error(404, f"no action {_short(verb)}; use drain or undrain")

        async def action(body: dict[str, Any]) -> Response:
            state = await run_in_threadpool(_control.set_draining, registry, name, address,
                                            verb == "drain")
            return JSONResponse({"service": name, "address": address, "state": state})

        return await change(request, f"{verb} {_short(name)} {_short(address)}", action,
                            needs_body=False)

    async def events(request: Request) -> Response:
        refused = refuse_read(request)
        if refused is not None:
            return refused

        async def stream() -> AsyncIterator[str]:
            watchers.viewers += 1
            try:
                yield "retry: 2000\n\n"
                if not monitor.latest:
                    await watchers.next(INTERVAL * 2)
                yield f"event: state\ndata: {monitor.latest}\n\n"
                while not watchers.closing:
                    if await watchers.next(_KEEPALIVE):
                        if watchers.closing:
                            break
                        yield f"event: state\ndata: {monitor.latest}\n\n"
                    else:
                        yield ": keep-alive\n\n"
            finally:
                watchers.viewers -= 1

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"cache-control": "no-store",
                                          "x-accel-buffering": "no"})

    async def not_found(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        if status == 405:
            return _error(405, f"method {request.method} is not allowed here")
        return _error(status, "not found" if status == 404 else "error")

    async def internal(request: Request, exc: Exception) -> Response:
        logger.error("internal error on %s %s: %s", request.method, request.url.path,
                     type(exc).__name__, exc_info=exc)
        return _error(500, "internal error (see the server's log)")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        watchers.ensure_running()
        try:
            yield
        finally:
            await watchers.close()

    routes = [
        Route("/", page, methods=["GET"]),
        Route("/static/{file}", static, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/api/openapi.json", openapi_document, methods=["GET"]),
        Route("/api/events", events, methods=["GET"]),
        Route("/api/services", list_services, methods=["GET"]),
        Route("/api/services", post_service, methods=["POST"]),
        Route("/api/services/{name}", get_service, methods=["GET"]),
        Route("/api/services/{name}", patch_service, methods=["PATCH"]),
        Route("/api/services/{name}", delete_service, methods=["DELETE"]),
        Route("/api/services/{name}/endpoints/{address}/{action}", endpoint_action,
              methods=["POST"]),
    ]
    from starlette.middleware import Middleware

    app = Starlette(routes=routes, middleware=[Middleware(_SecurityHeaders)],
                    exception_handlers={HTTPException: not_found, Exception: internal},
                    lifespan=lifespan)
    app.router.redirect_slashes = False  # a redirect would lose a mount without root_path
    app.state.monitor = monitor
    app.state.watchers = watchers
    return app


class _TooLarge(Exception):
    pass


class _NotJSON(Exception):
    pass


async def _read_json(request: Request) -> dict[str, Any]:
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise _NotJSON
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > _control.MAX_BODY):
        raise _TooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > _control.MAX_BODY:
            raise _TooLarge
        chunks.append(chunk)
    return _control.decode(b"".join(chunks))


def _short(value: str, limit: int = 80) -> str:
    return value if len(value) <= limit else value[:limit] + "..."

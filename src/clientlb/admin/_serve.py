"""``clientlb serve CONFIG``: the balancers of a configuration file, with the control room.

The process builds a :class:`~clientlb.Registry` from the file, serves
:func:`~clientlb.admin.create_app` on it with uvicorn, and runs until
SIGINT or SIGTERM. What it is for: watching the discovery and health of a
set of targets from a browser (a live ``clientlb resolve --watch`` for many
services), trying a configuration before it goes into an application, and
demonstrations. In an application, mount ``create_app`` instead: the
dashboard then shows the balancers that carry the application's traffic.

Defaults, and why:

* bound to ``127.0.0.1:9901`` — a control API belongs on loopback unless an
  operator decides otherwise (``--host``); port 0 picks a free port. The
  first line printed is the dashboard's address.
* the token comes from ``--token-file PATH`` or ``CLIENTLB_ADMIN_TOKEN``
  (never from the command line, where ``ps`` would show it); without one,
  the control room is read-only.
* ``--traffic N`` (default 0: off) sends N synthetic ``GET`` requests a second
  through each service's :class:`~clientlb.HTTPTransport`, one after another
  in one thread (2 s timeout each), so that passive health (outlier
  detection), latencies and shares show without an application — the
  blackbox prober's idea. For HTTP services only.
* ``/metrics`` counts from the start: the registry is instrumented with the
  control room's Prometheus telemetry (unless the file says
  ``telemetry = false``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from .._core.errors import ClientLBError, ConfigError
from .._ops.config import load_config, parse_config
from .._ops.registry import Registry

__all__ = ["TOKEN_ENV", "BackgroundServer", "Traffic", "read_token", "serve"]

TOKEN_ENV = "CLIENTLB_ADMIN_TOKEN"
logger = logging.getLogger("clientlb.admin")


def read_token(token_file: str | None, environ: dict[str, str] | None = None
               ) -> tuple[str | None, str]:
    """The admin token and where it came from: ``--token-file`` first, then the environment.

    A file holds the token alone (surrounding whitespace is ignored). A file
    that others may read is used, with a warning.

    Raises:
        ConfigError: an unreadable or empty file (the message never shows its content).
    """
    env = os.environ if environ is None else environ
    if token_file is not None:
        path = Path(token_file)
        try:
            text = path.read_text(encoding="utf-8")
            mode = path.stat().st_mode
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else \
                type(exc).__name__
            raise ConfigError(f"cannot read {token_file}: {reason}",
                              field="--token-file") from None
        token = text.strip()
        if not token:
            raise ConfigError(f"{token_file} is empty", field="--token-file")
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            logger.warning("%s can be read by other users; chmod 600 it", token_file)
        return token, f"--token-file {token_file}"
    token = env.get(TOKEN_ENV, "").strip()
    if token:
        return token, TOKEN_ENV
    return None, "none"


class Traffic(threading.Thread):
    """Synthetic HTTP ``GET`` traffic through every service of a registry (``--traffic``)."""

    def __init__(self, registry: Registry, rate: float, path: str = "/",
                 timeout: float = 2.0) -> None:
        super().__init__(name="clientlb-traffic", daemon=True)
        if not rate > 0:
            raise ConfigError(f"must be > 0 requests a second, got {rate!r}", field="--traffic")
        if not path.startswith("/"):
            raise ConfigError(f"must start with '/', got {path!r}", field="--traffic-path")
        self.registry = registry
        self.interval = 1.0 / rate
        self.path = path
        self.timeout = timeout
        self.sent = 0
        self._stop = threading.Event()

    def run(self) -> None:
        import httpx

        from .._http.transport import HTTPTransport

        clients: dict[str, tuple[Any, httpx.Client]] = {}
        next_at = time.monotonic()
        try:
            while not self._stop.wait(max(0.0, next_at - time.monotonic())):
                next_at += self.interval
                if next_at < time.monotonic():  # fell behind (slow answers): do not burst
                    next_at = time.monotonic() + self.interval
                names = self.registry.names()
                for name in [n for n in clients if n not in names]:
                    clients.pop(name)[1].close()
                for name in names:
                    try:
                        lb = self.registry.get(name)
                    except KeyError:
                        continue
                    entry = clients.get(name)
                    if entry is None or entry[0] is not lb:
                        if entry is not None:
                            entry[1].close()
                        entry = clients[name] = (lb, httpx.Client(
                            transport=HTTPTransport(lb), base_url=f"http://{name}",
                            timeout=self.timeout))
                    # a failure is counted by the balancer: that is what the dashboard shows
                    with contextlib.suppress(httpx.HTTPError, ClientLBError, OSError):
                        entry[1].get(self.path)
                    self.sent += 1
        finally:
            for _, client in clients.values():
                client.close()

    def stop(self) -> None:
        self._stop.set()


def _listen(host: str, port: int) -> socket.socket:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


class BackgroundServer:
    """The control room of ``registry`` served by uvicorn in a daemon thread (``clientlb demo``).

    Listens on ``host:port``, or on any free port when that one is taken;
    ``url`` is the dashboard's address; ``close()`` stops it.
    """

    def __init__(self, registry: Registry, *, host: str = "127.0.0.1", port: int = 9901,
                 token: str | None = None) -> None:
        import uvicorn

        from ._app import create_app

        app = create_app(registry, token=token)
        try:
            sock = _listen(host, port)
        except OSError:
            sock = _listen(host, 0)
        bound = sock.getsockname()
        shown_host = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        self.url = f"http://{shown_host}:{bound[1]}/"
        self._watchers = app.state.watchers
        self._server = uvicorn.Server(uvicorn.Config(
            app, log_level="warning", access_log=False, lifespan="on",
            timeout_graceful_shutdown=1, log_config=None))
        self._sock = sock
        self._thread = threading.Thread(target=self._run, name="clientlb-admin", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import asyncio

        asyncio.run(self._server.serve(sockets=[self._sock]))

    def close(self) -> None:
        self._watchers.end_streams()
        self._server.should_exit = True
        self._thread.join(5)
        self._sock.close()


def serve(config: str, *, host: str = "127.0.0.1", port: int = 9901,
          token_file: str | None = None, read_requires_token: bool = False,
          traffic: float = 0.0, traffic_path: str = "/", out: TextIO) -> int:
    """Run the control room over the balancers of ``config`` until SIGINT/SIGTERM."""
    import uvicorn

    from ._app import create_app
    from ._metrics import prometheus_telemetry

    if not 0 <= port <= 65535:
        raise ConfigError(f"must be 0..65535, got {port}", field="--port")
    token, source = read_token(token_file)
    _, telemetry_on = parse_config(load_config(config))  # validated again by from_config
    registry = Registry.from_config(
        config, telemetry=prometheus_telemetry() if telemetry_on else False)
    generator: Traffic | None = None
    try:
        app = create_app(registry, token=token, read_requires_token=read_requires_token)
        try:
            sock = _listen(host, port)
        except OSError as exc:
            raise OSError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        bound = sock.getsockname()
        shown_host = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        url = f"http://{shown_host}:{bound[1]}/"
        print(f"clientlb control room: {url}", file=out, flush=True)
        access = ("changes need the token from " + source) if token else \
            f"read-only (set {TOKEN_ENV} or use --token-file to allow changes)"
        print(f"{len(registry)} services from {config}: {', '.join(registry.names())}; "
              f"{access}", file=out, flush=True)
        if traffic:
            generator = Traffic(registry, traffic, traffic_path)
            generator.start()
            print(f"synthetic traffic: {traffic:g} GET {traffic_path} a second per service",
                  file=out, flush=True)
        watchers = app.state.watchers

        class Server(uvicorn.Server):
            def handle_exit(self, sig: int, frame: Any) -> None:
                watchers.end_streams()  # live viewers would hold the graceful shutdown
                super().handle_exit(sig, frame)

        server = Server(uvicorn.Config(
            app, log_level="warning", access_log=False, lifespan="on",
            timeout_graceful_shutdown=2, log_config=None))
        server.run(sockets=[sock])
        return 0
    finally:
        if generator is not None:
            generator.stop()
            generator.join(5)
        registry.close()

"""Test helpers: a controllable clock, real HTTP backends, polling with a deadline."""

from __future__ import annotations

import asyncio
import http.server
import socket
import threading
import time
from collections.abc import Callable
from typing import Any


class FakeClock:
    """A monotonic clock that only moves when the test says so."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01,
               message: str = "condition") -> Any:
    """Poll ``predicate`` until it returns a truthy value or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class HTTPBackend:
    """A real threaded HTTP/1.1 server on 127.0.0.1, controllable from the test.

    ``status`` (int) is what every request gets; ``delay`` seconds are waited
    before answering; ``hang`` (an Event) blocks answers until set;
    ``requests`` records ``(method, path, Host header)``; the body names the
    backend. ``/healthz`` answers ``health_status``.
    """

    def __init__(self, name: str, *, status: int = 200, delay: float = 0.0) -> None:
        self.name = name
        self.status = status
        self.health_status = 200
        self.delay = delay
        self.hang: threading.Event | None = None
        self.requests: list[tuple[str, str, str | None]] = []
        self.extra_headers: dict[str, str] = {}
        backend = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # no 40 ms delayed-ACK stall per response

            def log_message(self, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                backend.requests.append((self.command, self.path, self.headers.get("Host")))
                if backend.hang is not None:
                    backend.hang.wait(30)
                if backend.delay:
                    time.sleep(backend.delay)
                status = backend.health_status if self.path == "/healthz" else backend.status
                body = f"{backend.name}\n".encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("X-Backend", backend.name)
                for k, v in backend.extra_headers.items():
                    self.send_header(k, v)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_OPTIONS = do_PATCH = _serve

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.address = f"127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self.hang is not None:
            self.hang.set()
        self.server.shutdown()
        self.server.server_close()


_open_balancers: list[Any] = []


def closing(lb: Any) -> Any:
    """Register a balancer a test helper built, for ``conftest``'s autouse fixture to
    close after the test (an unclosed balancer is a ResourceWarning: pytest errors)."""
    _open_balancers.append(lb)
    return lb


def close_registered() -> None:
    while _open_balancers:
        _open_balancers.pop().close()


def resolver_tasks() -> set[str]:
    """The names of the clientlb tasks (resolvers) still running on the shared discovery
    loop."""
    from clientlb._resolvers._loop import _shared_loop

    loop, _ = _shared_loop()

    async def names() -> set[str]:
        return {t.get_name() for t in asyncio.all_tasks()
                if t.get_name().startswith("clientlb-") and not t.done()}

    return asyncio.run_coroutine_threadsafe(names(), loop).result(5)

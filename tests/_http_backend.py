"""A controllable HTTP/1.1 backend for the httpx transport tests (TLS, streaming, hangs).

Real sockets on 127.0.0.1 only. Compared with ``_helpers.HTTPBackend`` it
adds TLS, a chunked ``/stream`` endpoint gated by an event, ``Retry-After``,
per-request hangs and connection resets.
"""

from __future__ import annotations

import contextlib
import http.server
import random
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import tenacity

import clientlb
from clientlb import RetryPolicy

from ._helpers import closing

#: The retry policy of the HTTP tests: no back-off sleeps.
FAST = RetryPolicy(backoff=tenacity.wait_none())


def make_lb(addresses: list[str], **options: Any) -> clientlb.LoadBalancer:
    """A balancer named "users" for the HTTP tests: round robin, ``FAST`` retries, no
    outlier detection (these tests watch retries and hedges, not ejection), a fixed rng;
    closed at the end of the test (``_helpers.closing``)."""
    options.setdefault("strategy", "round_robin")
    options.setdefault("retry", FAST)
    options.setdefault("outlier_detection", None)
    return closing(clientlb.LoadBalancer(addresses, name="users", rng=random.Random(7),
                                         **options))


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            return  # a client that timed out or a backend closed under it: expected here
        super().handle_error(request, client_address)


class Backend:
    """``status`` for every request (``/stream`` streams two chunks, the second after
    ``gate`` is set); ``hang`` blocks answers until set; ``delay`` seconds are spent on
    each answer (a slow server); ``reset`` closes the connection without answering;
    ``requests`` records ``(method, path, Host, body)``; ``connections`` counts the
    connections accepted."""

    def __init__(self, name: str, *, status: int = 200, ssl_context: ssl.SSLContext | None = None
                 ) -> None:
        self.name = name
        self.status = status
        #: ``status_of(n)`` gives the status of the n-th request (from 0), overriding ``status``
        self.status_of: Callable[[int], int] | None = None
        self.retry_after: str | None = None
        self.hang: threading.Event | None = None
        self.delay = 0.0
        self.connections = 0
        self.reset = False
        self.gate = threading.Event()
        self.requests: list[tuple[str, str, str | None, bytes]] = []
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        backend = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body are separate writes

            def log_message(self, *args: Any) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                with backend._lock:
                    backend._connections.add(self.connection)
                    backend.connections += 1

            def finish(self) -> None:
                with backend._lock:
                    backend._connections.discard(self.connection)
                super().finish()

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    data = b""
                    while True:
                        size = int(self.rfile.readline().strip() or b"0", 16)
                        if size == 0:
                            self.rfile.readline()
                            return data
                        data += self.rfile.read(size)
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _serve(self) -> None:
                body = self._body()
                with backend._lock:
                    n = len(backend.requests)
                    backend.requests.append(
                        (self.command, self.path, self.headers.get("Host"), body))
                if backend.reset:
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                               b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    self.close_connection = True
                    return
                if backend.hang is not None:
                    backend.hang.wait(20)
                if backend.delay:
                    time.sleep(backend.delay)  # the server's own latency
                if self.path == "/stream":
                    self.send_response(200)
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    self.wfile.write(b"5\r\nfirst\r\n")
                    self.wfile.flush()
                    backend.gate.wait(20)
                    self.wfile.write(b"6\r\nsecond\r\n0\r\n\r\n")
                    return
                payload = f"{backend.name}\n".encode()
                status_of = backend.status_of
                self.send_response(backend.status if status_of is None else status_of(n))
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("X-Backend", backend.name)
                if backend.retry_after is not None:
                    self.send_header("Retry-After", backend.retry_after)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_OPTIONS = do_PATCH = _serve

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if ssl_context is not None:
            self.server.socket = ssl_context.wrap_socket(self.server.socket, server_side=True)
        self.port = int(self.server.server_address[1])
        self.address = f"127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def served(self) -> int:
        return len(self.requests)

    def close(self) -> None:
        self.gate.set()
        if self.hang is not None:
            self.hang.set()
        self.server.shutdown()
        self.server.server_close()
        with self._lock:  # a dead backend also drops its keep-alive connections
            for conn in self._connections:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)


def dead_address() -> str:
    """A loopback port where nothing listens (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"127.0.0.1:{port}"


class HangUpBackend:
    """Accepts each connection, reads the request, and closes without answering:
    a failure that *reached* the backend (httpx's RemoteProtocolError)."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.address = f"127.0.0.1:{self._sock.getsockname()[1]}"
        self.connections = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                conn.settimeout(2)
                with contextlib.suppress(OSError):
                    conn.recv(65536)

    def close(self) -> None:
        self._sock.close()

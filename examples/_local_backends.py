"""Tiny HTTP backends on 127.0.0.1 for the guide's examples (not part of clientlb).

``start(names)`` starts one threaded HTTP/1.1 server per name (``Backend(name, port)``
for a given port); each answers
every request with its own name in the body and an ``X-Backend`` header, so an
example can show where a request went. ``Backend.status`` and ``.delay`` change
what it answers.
"""

from __future__ import annotations

import http.server
import socket
import threading
import time
from typing import Any


class Backend:
    def __init__(self, name: str, port: int = 0) -> None:
        self.name = name
        self.status = 200
        self.delay = 0.0
        self.hits = 0
        backend = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                # Headers and body go out in two writes: without TCP_NODELAY, Nagle's
                # algorithm and the client's delayed ACK add ~40 ms to every response.
                self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def do_GET(self) -> None:
                backend.hits += 1
                if backend.delay:
                    time.sleep(backend.delay)
                body = f"{backend.name}\n".encode()
                self.send_response(backend.status)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("X-Backend", backend.name)
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start(*names: str) -> list[Backend]:
    return [Backend(name) for name in names]

"""A control room served by a real uvicorn on 127.0.0.1, in a thread of the test process."""

from __future__ import annotations

import threading
from typing import Any

import httpx
import uvicorn

from ._helpers import wait_until

TOKEN = "test-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class AdminServer:
    """``app`` on a free loopback port; ``client`` talks to it; ``close()`` stops both."""

    def __init__(self, app: Any) -> None:
        self.server = uvicorn.Server(uvicorn.Config(
            app, host="127.0.0.1", port=0, log_level="warning", access_log=False,
            lifespan="on", timeout_graceful_shutdown=1, log_config=None))
        self._thread = threading.Thread(target=self.server.run, daemon=True)
        self._thread.start()
        wait_until(lambda: self.server.started, timeout=10, message="uvicorn started")
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.client = httpx.Client(base_url=self.url, timeout=10)

    def close(self) -> None:
        self.client.close()
        self.server.should_exit = True
        self._thread.join(10)

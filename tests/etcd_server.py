"""A real etcd (Debian ``etcd-server``) on loopback for the discovery tests.

``EtcdServer`` runs a one-member cluster on two free loopback ports in a temp
directory. :class:`EtcdServer` also offers the few v3 JSON-gateway calls the
tests need to change data the way a registering service would (put, delete,
compact, auth), through httpx.
"""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
from pathlib import Path
from typing import Any

import httpx

from ._helpers import free_port, wait_until


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class EtcdServer:
    def __init__(self, etcd: str, directory: Path, *,
                 tls: tuple[str, str, ssl.SSLContext] | None = None) -> None:
        """``tls``: (cert file, key file, client context trusting the CA) for https."""
        self.etcd = etcd
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.peer_port = free_port()
        self.tls = tls
        self.verify: ssl.SSLContext | bool = tls[2] if tls else True
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.token: str | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def server(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        peer = f"http://127.0.0.1:{self.peer_port}"
        args = [self.etcd, "--name", "t", "--data-dir", str(self.dir / "data"),
                "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"t={peer}", "--logger", "zap", "--log-level", "error"]
        if self.tls:
            args += ["--cert-file", self.tls[0], "--key-file", self.tls[1]]
        with open(self.dir / "etcd.log", "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        wait_until(self._ready, timeout=20, message=f"etcd on port {self.port}")

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError("etcd exited: " + (self.dir / "etcd.log").read_text())
        try:
            return httpx.get(self.url + "/health", timeout=0.5,
                             verify=self.verify).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    close = stop

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        headers = {"Authorization": self.token} if self.token else {}
        response = httpx.post(self.url + path, json=body, headers=headers, timeout=5,
                              verify=self.verify)
        doc: dict[str, Any] = response.json()
        assert response.status_code == 200, doc
        return doc

    def put(self, key: str, value: str | dict[str, Any]) -> int:
        text = value if isinstance(value, str) else json.dumps(value)
        doc = self.call("/v3/kv/put", {"key": _b64(key), "value": _b64(text)})
        return int(doc["header"]["revision"])

    def delete(self, key: str) -> int:
        doc = self.call("/v3/kv/deleterange", {"key": _b64(key)})
        return int(doc["header"]["revision"])

    def compact(self, revision: int) -> None:
        self.call("/v3/kv/compaction", {"revision": str(revision), "physical": True})

    def enable_auth(self, user: str, password: str) -> None:
        self.call("/v3/auth/user/add", {"name": user, "password": password})
        self.call("/v3/auth/user/grant", {"user": user, "role": "root"})
        self.call("/v3/auth/enable", {})
        doc = self.call("/v3/auth/authenticate", {"name": user, "password": password})
        self.token = doc["token"]

"""An emulator of Consul's ``GET /v1/health/service/<service>`` for the tests.

Consul is not packaged in any registry this project reaches, so the Consul
resolver is tested against this emulator: a real HTTP/1.1 server on
127.0.0.1 (``http.server``, one thread per request) that follows the
documented behaviour of Consul's health endpoint:

* **blocking queries** — ``?index=N&wait=D``: when the service's index is
  greater than N the answer is immediate, otherwise the request is held until
  the service changes or ``wait`` ends (default 5 min, at most 10 min;
  durations as ``"10s"``, ``"5m"``, ``"100ms"``); every answer carries
  ``X-Consul-Index``, ``X-Consul-KnownLeader`` and ``X-Consul-LastContact``.
  ``set_index()`` moves the index anywhere, backwards included (a snapshot
  restore), and ``force_index_header`` sends a chosen value (``"0"``, or
  ``None`` for no header) as buggy versions did;
* **ACLs** — with ``tokens`` set, a request without a known token in the
  ``X-Consul-Token`` header (or ``?token=``, which Consul also accepts and the
  emulator records in ``tokens_in_url``) gets ``403 ACL not found``;
  a token whose policy does not cover the service gets
  ``403 Permission denied``;
* **filters** — ``dc`` (unknown: ``500 No path to datacenter``), ``tag``
  (repeatable: every tag must match), ``passing`` (only instances whose
  checks all pass), ``ns`` (namespace, default ``"default"``), ``near``
  (sorted by distance from the named node, ``_agent`` = the agent's node),
  ``filter`` (a subset of Consul's filter language: ``Sel == "v"``,
  ``Sel != "v"``, ``"v" in Sel``, joined by ``and``; selectors such as
  ``Service.Meta.version``, ``Service.Tags``, ``Node.Node``);
* **entries** — ``{"Node": {...}, "Service": {...}, "Checks": [...]}`` with
  ``Weights`` ``{"Passing": p, "Warning": w}`` and check ``Status``
  ``passing``/``warning``/``critical``.

It is an emulator, not Consul: raft, anti-entropy and the agent cache are
not modelled. docs/discovery.md says so.
"""

from __future__ import annotations

import http.server
import json
import re
import socketserver
import threading
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

_WAIT_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _parse_wait(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    if not m:
        raise ValueError(text)
    return min(float(m.group(1)) * _WAIT_UNITS[m.group(2)], 600.0)


def _select(entry: dict[str, Any], selector: str) -> Any:
    value: Any = entry
    for part in selector.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _matches(entry: dict[str, Any], expression: str) -> bool:
    for clause in re.split(r"\s+and\s+", expression.strip()):
        m = re.fullmatch(r'"([^"]*)"\s+in\s+([\w.]+)', clause.strip())
        if m:
            if m.group(1) not in (_select(entry, m.group(2)) or []):
                return False
            continue
        m = re.fullmatch(r'([\w.]+)\s*(==|!=)\s*"([^"]*)"', clause.strip())
        if not m:
            raise ValueError(f"unsupported filter clause {clause!r}")
        equal = str(_select(entry, m.group(1))) == m.group(3)
        if equal != (m.group(2) == "=="):
            return False
    return True


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class ConsulEmulator:
    """Start with ``ConsulEmulator()``; ``.address`` is ``127.0.0.1:<port>``."""

    def __init__(self, *, datacenter: str = "dc1", agent_node: str = "agent",
                 tokens: dict[str, set[str]] | None = None, ssl_context: Any = None,
                 uds: str | None = None) -> None:
        self.datacenter = datacenter
        self.datacenters = {datacenter}
        self.agent_node = agent_node
        self.tokens = tokens  # token -> services it may read ("*" = all); None = ACLs off
        self.coordinates: dict[str, float] = {agent_node: 0.0}
        self._cond = threading.Condition()
        self._index = 10
        self._service_index: dict[str, int] = {}
        self._instances: dict[str, dict[str, dict[str, Any]]] = {}
        self.force_index_header: str | bool | None = False  # False: the real index
        self.requests: list[dict[str, Any]] = []
        self.tokens_in_url: list[str] = []
        self.fail_with: int | None = None  # answer every request with this status
        self.body_override: bytes | None = None
        emulator = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                emulator._handle(self)

        self.server: socketserver.BaseServer
        if uds is not None:  # CONSUL_HTTP_ADDR=unix:///path
            self.server = _UnixHTTPServer(uds, Handler)
            self.port = 0
            self.address = f"unix://{uds}"
        else:
            tcp = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
            tcp.daemon_threads = True
            if ssl_context is not None:
                tcp.socket = ssl_context.wrap_socket(tcp.socket, server_side=True)
            self.server = tcp
            self.port = int(tcp.server_address[1])
            self.address = f"127.0.0.1:{self.port}"
        self._closed = False
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                        daemon=True)
        self._thread.start()

    # -- state changes (each bumps the raft index, as a catalog write does) ---------------

    def _bump(self, service: str) -> None:
        self._index += 1
        self._service_index[service] = self._index
        self._cond.notify_all()

    def register(self, service: str, service_id: str, *, address: str = "", port: int = 80,
                 node: str = "node1", node_address: str = "127.0.0.1",
                 tags: list[str] | None = None, meta: dict[str, str] | None = None,
                 weights: dict[str, int] | None = None, checks: list[str] | None = None,
                 namespace: str = "default", datacenter: str | None = None,
                 locality: dict[str, str] | None = None,
                 raw: dict[str, Any] | None = None) -> None:
        """Register (or replace) one instance; ``checks`` are statuses."""
        entry = raw or {
            "Node": {"ID": "", "Node": node, "Address": node_address,
                     "Datacenter": datacenter or self.datacenter, "Meta": {},
                     "CreateIndex": self._index + 1, "ModifyIndex": self._index + 1},
            "Service": {"ID": service_id, "Service": service, "Tags": tags or [],
                        "Address": address, "Meta": meta or {}, "Port": port,
                        "Weights": weights or {"Passing": 1, "Warning": 1},
                        "Namespace": namespace, **({"Locality": locality} if locality else {}),
                        "CreateIndex": self._index + 1, "ModifyIndex": self._index + 1},
            "Checks": [{"Node": node, "CheckID": f"check{i}", "Status": status,
                        "ServiceID": service_id, "ServiceName": service}
                       for i, status in enumerate(checks or ["passing"])],
        }
        with self._cond:
            self._instances.setdefault(service, {})[service_id] = entry
            self._bump(service)

    def set_status(self, service: str, service_id: str, *statuses: str) -> None:
        with self._cond:
            entry = self._instances[service][service_id]
            entry["Checks"] = [{**entry["Checks"][0], "CheckID": f"check{i}", "Status": s}
                               for i, s in enumerate(statuses)]
            self._bump(service)

    def deregister(self, service: str, service_id: str) -> None:
        with self._cond:
            del self._instances[service][service_id]
            self._bump(service)

    def set_index(self, service: str, index: int) -> None:
        """Move the service's index (backwards = a snapshot restore) and wake watchers."""
        with self._cond:
            self._service_index[service] = index
            self._cond.notify_all()

    def touch(self, service: str) -> None:
        """A write that changes the index but not the result (Consul does this)."""
        with self._cond:
            self._bump(service)

    def index_of(self, service: str) -> int:
        with self._cond:
            return self._service_index.get(service, 1)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self.server.shutdown()
        self.server.server_close()

    # -- the HTTP API ---------------------------------------------------------------------

    def _handle(self, req: http.server.BaseHTTPRequestHandler) -> None:
        parts = urlsplit(req.path)
        query = parse_qsl(parts.query, keep_blank_values=True)
        params: dict[str, list[str]] = {}
        for k, v in query:
            params.setdefault(k, []).append(v)
        if self._closed:
            req.close_connection = True
            return None
        record = {"path": parts.path, "query": query,
                  "token": req.headers.get("X-Consul-Token")}
        self.requests.append(record)
        if "token" in params:
            self.tokens_in_url.append(params["token"][0])
        m = re.fullmatch(r"/v1/health/service/([^/]+)", parts.path)
        if not m:
            return self._send(req, 404, b"Invalid URL path", "text/plain")
        service = unquote(m.group(1))
        if self.fail_with is not None:
            return self._send(req, self.fail_with, b"rpc error: emulated failure", "text/plain")
        token = req.headers.get("X-Consul-Token") or (params.get("token") or [None])[0]
        if self.tokens is not None:
            if token not in self.tokens:
                return self._send(req, 403, b"ACL not found", "text/plain")
            allowed = self.tokens[token]
            if "*" not in allowed and service not in allowed:
                return self._send(req, 403, b"Permission denied", "text/plain")
        dc = (params.get("dc") or [self.datacenter])[0]
        if dc not in self.datacenters:
            return self._send(req, 500, b"No path to datacenter", "text/plain")
        try:
            wait = _parse_wait(params["wait"][0]) if "wait" in params else 300.0
        except ValueError:
            return self._send(req, 400, b"Invalid wait time", "text/plain")
        try:
            min_index = int((params.get("index") or ["0"])[0])
        except ValueError:
            return self._send(req, 400, b"Invalid index", "text/plain")
        with self._cond:
            if min_index > 0:
                self._cond.wait_for(lambda: self._closed
                                    or self._service_index.get(service, 1) > min_index
                                    or self._service_index.get(service, 1) < min_index,
                                    timeout=wait)
            if self._closed:  # the agent went away: drop the connection, no answer
                req.close_connection = True
                return None
            index = self._service_index.get(service, 1)
            try:
                entries = self._filter(list(self._instances.get(service, {}).values()),
                                       params, dc)
            except ValueError as exc:
                return self._send(req, 400, f"Failed to create boolean expression evaluator: "
                                            f"{exc}".encode(), "text/plain")
            body = json.dumps(entries).encode()  # under the lock: a consistent snapshot
        header = str(index) if self.force_index_header is False else self.force_index_header
        if self.body_override is not None:
            body = self.body_override
        self._send(req, 200, body, "application/json", index=header)

    def _filter(self, entries: list[dict[str, Any]], params: dict[str, list[str]],
                dc: str) -> list[dict[str, Any]]:
        ns = (params.get("ns") or ["default"])[0]
        out = []
        for e in entries:
            if e.get("Node", {}).get("Datacenter", dc) != dc:
                continue
            if e.get("Service", {}).get("Namespace", "default") != ns:
                continue
            tags = e.get("Service", {}).get("Tags") or []
            if any(t not in tags for t in params.get("tag", [])):
                continue
            if "passing" in params and params["passing"][0].lower() not in ("0", "false") \
                    and any(c.get("Status") != "passing" for c in e.get("Checks") or []):
                continue
            if "filter" in params and not _matches(e, params["filter"][0]):
                continue
            out.append(e)
        if "near" in params:
            near = params["near"][0]
            origin = self.coordinates.get(self.agent_node if near == "_agent" else near, 0.0)
            out.sort(key=lambda e: abs(self.coordinates.get(e["Node"]["Node"], 1e9) - origin))
        return out

    def _send(self, req: http.server.BaseHTTPRequestHandler, status: int, body: bytes,
              content_type: str, index: str | None = None) -> None:
        req.send_response(status)
        req.send_header("Content-Type", content_type)
        req.send_header("Content-Length", str(len(body)))
        if index is not None:
            req.send_header("X-Consul-Index", index)
            req.send_header("X-Consul-KnownLeader", "true")
            req.send_header("X-Consul-LastContact", "0")
        req.end_headers()
        req.wfile.write(body)

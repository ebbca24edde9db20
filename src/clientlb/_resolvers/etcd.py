"""``etcd://[host[:port]]/prefix`` — etcd v3 keys under ``prefix/``, listed then watched.

The resolver speaks etcd v3's JSON gateway (grpc-gateway: ``POST /v3/kv/range``,
``POST /v3/watch``, ``POST /v3/auth/authenticate``; keys and values are
base64, int64s are strings) over httpx, so it needs no gRPC stubs:

1. **range** over ``prefix/`` (``range_end`` = the prefix with its last byte
   incremented, as ``clientv3.WithPrefix``), which gives the current keys
   and the store revision R;
2. **watch** the same range from revision R + 1, applying PUT and DELETE
   events as they stream in (one publish per watch response);
3. **re-list** (back to 1) when the watch is cancelled — in particular when
   the revision it needs was *compacted* (the response carries
   ``compact_revision``) —, when the stream ends or fails, and every
   ``resync_interval`` (default 300 s) as a safety net against a silently
   dead connection.

**Keys and values** follow etcd's own naming package
(``go.etcd.io/etcd/client/v3/naming/endpoints``) and grpc-go's etcd resolver:
the key is ``<prefix>/<anything>`` and the value is JSON
``{"Addr": "host:port", "Metadata": ...}`` (the older ``naming`` package's
``{"Op": 0, "Addr": ...}`` is read as well), so services that register the
etcd/grpc-go way are found unchanged. When ``Metadata`` is an object, its
``weight``, ``priority`` and ``zone`` fields (if present) set the endpoint's;
the whole ``Metadata`` and the key are kept in ``Endpoint.metadata``.

An empty range is authoritative (the set becomes empty). A value that is not
such JSON, or whose address is invalid, is skipped (logged, counted) and a
key that held a good value keeps it, so bad data never takes an endpoint
down; a listing whose keys are all malformed keeps the last good set.
Network errors keep the last good set and back off with jitter.

**Auth** (optional): ``username``/``password`` options, or ``ETCDCTL_USER``
(``user:password``, or with ``ETCDCTL_PASSWORD``); the token from
``/v3/auth/authenticate`` goes in the ``Authorization`` header and is renewed
when etcd says it is invalid or expired. Neither password nor token appears
in a log line, ``repr``, exception or statistic.

Options: ``username``, ``password``, ``tls`` (https, default False),
``ssl_context``, ``timeout`` (seconds per request, default 5),
``resync_interval`` (default 300 s), ``env`` (instead of ``os.environ``),
``transport`` (an ``httpx.AsyncBaseTransport``, e.g. for a proxy), plus those
of ``_base``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import ssl
from collections.abc import Mapping
from typing import Any

import httpx

from .._core.checks import check_bool, check_str_mapping
from .._core.endpoint import Endpoint, split_host_port
from .._core.errors import ConfigError, DiscoveryError
from .._core.target import Target
from ._backoff import check_seconds
from ._loop import LoopResolver, logger
from ._secret import Secret, redact
from .base import ResolverSink

__all__ = ["EtcdResolver", "endpoint_from_value", "prefix_range"]

_AUTH_ERRORS = ("invalid auth token", "auth token is expired", "user name is empty",
                "permission denied")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def prefix_range(prefix: str) -> tuple[bytes, bytes]:
    """``(key, range_end)`` covering every key under ``prefix/`` (clientv3.WithPrefix)."""
    key = (prefix.rstrip("/") + "/").encode()
    end = key[:-1] + bytes([key[-1] + 1])
    return key, end


def endpoint_from_value(key: str, value: bytes) -> Endpoint | None:
    """The endpoint a key's value describes; None for an ``Op: 1`` (delete) record.

    Raises:
        ValueError, ConfigError: malformed JSON, missing ``Addr``, bad address.
    """
    try:
        doc = json.loads(value)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError("value is not JSON") from None
    if not isinstance(doc, dict):
        raise ValueError("value is not a JSON object")
    if doc.get("Op", 0) == 1:
        return None
    addr = doc.get("Addr")
    if not isinstance(addr, str) or not addr:
        raise ValueError("missing 'Addr'")
    host, port = split_host_port(addr)
    metadata = doc.get("Metadata")
    attrs: dict[str, Any] = {}
    if isinstance(metadata, dict):
        for field in ("weight", "priority", "zone"):
            if field in metadata:
                attrs[field] = metadata[field]
    return Endpoint(host, port, metadata={"key": key, "metadata": metadata}, **attrs)


class _Restart(Exception):
    """Stop watching and re-list (compaction, cancel, refresh, resync)."""

    def __init__(self, asked: bool = False) -> None:
        super().__init__()
        self.asked = asked  # by refresh() or the resync timer, not by etcd


class _AuthExpired(Exception):
    """etcd rejected the auth token: authenticate again."""


class EtcdResolver(LoopResolver):
    """``etcd://[host[:port]]/prefix``: range then watch over etcd's JSON gateway."""

    scheme = "etcd"

    def __init__(self, target: Target, *, username: str | None = None,
                 password: str | None = None, tls: bool = False,
                 ssl_context: ssl.SSLContext | None = None, timeout: float = 5.0,
                 resync_interval: float = 300.0, env: Mapping[str, str] | None = None,
                 transport: httpx.AsyncBaseTransport | None = None, **options: Any) -> None:
        super().__init__(target, **options)
        check_str_mapping(env, "env", secret=True)
        env = os.environ if env is None else env
        for name, value in (("username", username), ("password", password)):
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"must be a string or None, got a {type(value).__name__}",
                                  field=name)
        check_bool(tls, "tls")
        if ssl_context is not None and not isinstance(ssl_context, ssl.SSLContext):
            raise ConfigError(f"must be an ssl.SSLContext or None, got {ssl_context!r}",
                              field="ssl_context")
        if transport is not None and not isinstance(transport, httpx.AsyncBaseTransport):
            raise ConfigError(f"must be an httpx.AsyncBaseTransport or None, got "
                              f"{transport!r}", field="transport")
        host, port = target.server or ("127.0.0.1", 2379)
        shown = f"[{host}]" if ":" in host else host
        scheme = "https" if tls or ssl_context is not None else "http"
        self.base_url = f"{scheme}://{shown}:{port}"
        self.source = f"etcd {self.base_url}"
        self._verify: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self.prefix = target.name.rstrip("/")
        self._key, self._range_end = prefix_range(self.prefix)
        if username is None and env.get("ETCDCTL_USER"):
            user = env["ETCDCTL_USER"]
            username, sep, pw = user.partition(":")
            if sep and password is None:
                password = pw
        if password is None and env.get("ETCDCTL_PASSWORD"):
            password = env["ETCDCTL_PASSWORD"]
        if (username is None) != (password is None):
            raise ConfigError("username and password go together (etcd auth)",
                              field="username" if username is None else "password")
        self.username = username
        self._password = Secret(password) if password is not None else None
        self._token: Secret | None = None
        self.timeout = check_seconds("timeout", timeout, allow_zero=False)
        self.resync_interval = check_seconds("resync_interval", resync_interval,
                                             allow_zero=False)
        self._transport = transport
        self.revision = 0
        self.relists = 0
        self._kvs: dict[str, Endpoint] = {}

    # -- HTTP -------------------------------------------------------------------------------

    def _error(self, message: str) -> DiscoveryError:
        return DiscoveryError(f"etcd {redact(message, self._token, self._password)}",
                              target=str(self.target), source=self.source)

    def _headers(self) -> dict[str, str]:
        return {"Authorization": self._token.reveal()} if self._token else {}

    async def _post(self, client: httpx.AsyncClient, path: str, body: dict[str, Any]
                    ) -> dict[str, Any]:
        try:
            response = await client.post(path, json=body, headers=self._headers())
        except httpx.HTTPError as exc:
            raise self._error(f"{path} failed: {type(exc).__name__}: {exc}") from None
        return self._decode(path, response.status_code, response.content)

    def _decode(self, path: str, status: int, content: bytes) -> dict[str, Any]:
        try:
            doc = json.loads(content)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise self._error(f"{path}: HTTP {status}, the answer is not JSON") from None
        if not isinstance(doc, dict):
            raise self._error(f"{path}: HTTP {status}, expected a JSON object")
        if status != 200 or "error" in doc or ("code" in doc and "message" in doc):
            message = str(doc.get("message") or doc.get("error") or doc)
            if self._password is not None and any(e in message for e in _AUTH_ERRORS) \
                    and path != "/v3/auth/authenticate":
                raise _AuthExpired
            raise self._error(f"{path}: HTTP {status}: {message[:200]}")
        return doc

    async def _authenticate(self, client: httpx.AsyncClient) -> None:
        if self._password is None:
            return
        self._token = None
        doc = await self._post(client, "/v3/auth/authenticate",
                               {"name": self.username, "password": self._password.reveal()})
        token = doc.get("token")
        if not isinstance(token, str) or not token:
            raise self._error("authentication answered without a token")
        self._token = Secret(token)

    # -- the loop ---------------------------------------------------------------------------

    async def run(self, sink: ResolverSink) -> None:
        timeout = httpx.Timeout(self.timeout)
        async with httpx.AsyncClient(base_url=self.base_url, timeout=timeout,
                                     verify=self._verify, transport=self._transport,
                                     headers={"User-Agent": "clientlb"}) as client:
            loop = asyncio.get_running_loop()
            quick_restarts = 0
            while True:
                self.mark_attempt()
                started = loop.time()
                try:
                    if self._password is not None and self._token is None:
                        await self._authenticate(client)
                    await self._list(client, sink)
                    await self._watch(client, sink)
                except (_AuthExpired, _Restart) as exc:
                    if isinstance(exc, _AuthExpired):
                        logger.info("%s: auth token rejected; authenticating again", self)
                        self._token = None
                    elif exc.asked:
                        quick_restarts = 0
                        continue
                    # etcd ended the watch: list again at once, but if it keeps doing so
                    # within a second, back off instead of looping.
                    quick_restarts = quick_restarts + 1 if loop.time() - started < 1.0 else 0
                    if quick_restarts >= 2:
                        await self.sleep(self.next_backoff())
                    continue
                except DiscoveryError as exc:
                    self.fail(sink, exc)
                    await self.sleep(self.next_backoff())

    async def _list(self, client: httpx.AsyncClient, sink: ResolverSink) -> None:
        doc = await self._post(client, "/v3/kv/range",
                               {"key": _b64(self._key), "range_end": _b64(self._range_end)})
        try:
            revision = int(doc["header"]["revision"])
        except (KeyError, TypeError, ValueError):
            raise self._error("/v3/kv/range: answer without header.revision") from None
        old = self._kvs
        malformed = self.malformed_count
        kvs: dict[str, Endpoint] = {}
        for kv in doc.get("kvs") or []:
            key, endpoint, ok = self._decode_kv(kv, deleted=False)
            if key is None:
                continue
            if ok and endpoint is not None:
                kvs[key] = endpoint
            elif not ok and key in old:  # malformed now: keep the good value it had
                kvs[key] = old[key]
        self.revision = revision
        self.relists += 1
        if self.answer(sink, kvs.values(), malformed_before=malformed) or kvs or not old:
            self._kvs = kvs  # (else every key was malformed: the last good set stays)

    def _decode_kv(self, kv: Any, *, deleted: bool) -> tuple[str | None, Endpoint | None, bool]:
        """(key, endpoint, well-formed) of one gateway KeyValue."""
        try:
            key = base64.b64decode(kv["key"]).decode()
        except (KeyError, TypeError, ValueError):
            self.malformed(f"{self.prefix}/?", "key is not base64 text")
            return None, None, False
        if deleted:
            return key, None, True
        try:
            value = base64.b64decode(kv.get("value") or "")
            return key, endpoint_from_value(key, value), True
        except (ValueError, ConfigError) as exc:
            self.malformed(key, str(exc))
            return key, None, False

    async def _watch(self, client: httpx.AsyncClient, sink: ResolverSink) -> None:
        body = {"create_request": {"key": _b64(self._key), "range_end": _b64(self._range_end),
                                   "start_revision": str(self.revision + 1),
                                   "progress_notify": True}}
        stream = await self.until_woken(self._stream(client, body, sink), self.resync_interval)
        if stream is not None:
            stream.result()  # raises DiscoveryError, _Restart or _AuthExpired
        raise _Restart(asked=True)  # refresh or resync: list again

    async def _stream(self, client: httpx.AsyncClient, body: dict[str, Any],
                      sink: ResolverSink) -> None:
        timeout = httpx.Timeout(self.timeout, read=None)
        try:
            async with client.stream("POST", "/v3/watch", json=body, headers=self._headers(),
                                     timeout=timeout) as response:
                if response.status_code != 200:
                    content = await response.aread()
                    self._decode("/v3/watch", response.status_code, content)
                    raise self._error(f"/v3/watch: HTTP {response.status_code}")
                async for line in response.aiter_lines():
                    if line.strip():
                        self._on_watch_message(line, sink)
        except httpx.HTTPError as exc:
            raise self._error(f"watch failed: {type(exc).__name__}: {exc}") from None
        raise self._error("the watch stream ended")

    def _on_watch_message(self, line: str, sink: ResolverSink) -> None:
        try:
            doc = json.loads(line)
        except json.JSONDecodeError:
            raise self._error("/v3/watch: a message is not JSON") from None
        if "error" in doc:
            err = doc["error"]
            message = str(err.get("message") if isinstance(err, dict) else err)
            if self._password is not None and any(e in message for e in _AUTH_ERRORS):
                raise _AuthExpired
            raise self._error(f"/v3/watch: {message[:200]}")
        result = doc.get("result") or {}
        if int(result.get("compact_revision") or 0) > 0:
            logger.info("%s: watch revision %d was compacted (compact revision %s); "
                        "listing again", self, self.revision + 1, result["compact_revision"])
            raise _Restart
        if result.get("canceled"):
            logger.info("%s: watch cancelled (%s); listing again", self,
                        result.get("cancel_reason") or "no reason given")
            raise _Restart
        events = result.get("events") or []
        if not events:
            return
        changed = False
        for event in events:
            kv = event.get("kv") or {}
            deleted = event.get("type") == "DELETE"
            key, endpoint, ok = self._decode_kv(kv, deleted=deleted)
            with contextlib.suppress(KeyError, TypeError, ValueError):
                self.revision = max(self.revision, int(kv["mod_revision"]))
            if key is None or not ok:
                continue
            if endpoint is None:
                changed |= self._kvs.pop(key, None) is not None
            else:
                changed |= self._kvs.get(key) != endpoint
                self._kvs[key] = endpoint
        if changed:
            self.publish(sink, self._kvs.values())

    def describe(self) -> dict[str, Any]:
        return {"server": self.base_url, "revision": self.revision,
                "auth": "user " + self.username if self.username else "none"}

"""``consul://[agent[:port]]/service?dc=&tag=&near=&ns=&filter=`` — Consul's health API.

The resolver long-polls ``GET /v1/health/service/<service>`` with Consul's
*blocking queries* (Consul API docs, "Blocking Queries"), over httpx:

* the first request has no ``index``; each answer's ``X-Consul-Index`` is
  sent back as ``index`` with ``wait`` (default 60 s), and the agent holds
  the request until the service changes or ``wait`` ends;
* **index rules** from the same page, "Implementation details": *reset the
  index if it goes backwards* (a snapshot restore, a new leader: the next
  query is non-blocking, index 0); *sanity-check that it is at least 1*
  (an index of 0 or a missing header is replaced by 1, so the next request
  blocks instead of spinning); *rate-limit the loop*: two queries are at
  least ``min_query_interval`` apart (default 1 s; each answer holds the
  whole list, so coalescing loses nothing); an answer equal to the last one
  (an index can change without the result changing) publishes nothing;
* **health**: an instance with any ``critical`` check (maintenance mode is a
  critical check) is left out; one with a ``warning`` check gets
  ``Service.Weights.Warning`` as its weight, a passing one
  ``Service.Weights.Passing`` (both 1 when absent — Consul's defaults);
* **address**: ``Service.Address``, falling back to ``Node.Address`` when
  empty (as Consul's DNS interface does); ``Service.Port``;
* **metadata**: ``tags``, ``meta`` (``Service.Meta``), ``node``,
  ``node_meta``, ``service_id``, ``datacenter``, ``health``; the zone is
  ``Service.Locality.Zone`` or ``Node.Locality.Zone`` (Consul ≥ 1.17);
* **parameters**: ``dc``, ``tag`` (several as ``tag=a,b``: every tag must
  match), ``near``, ``ns``/``namespace``, ``partition``, ``filter``
  (Consul's filter expression), ``passing``, ``wait`` are passed to Consul;
* an empty list is authoritative (no instance, or none healthy): the set
  becomes empty; an error status, a network error or a malformed body keeps
  the last good set; a malformed instance (no address, port 0) is skipped,
  and an answer made only of malformed instances keeps the last good set.

**Where the agent is**: the target's authority, else ``CONSUL_HTTP_ADDR``
(``host:port``, ``http://``, ``https://`` or ``unix:///path``), else
``127.0.0.1:8500``. TLS when ``CONSUL_HTTP_SSL`` is true or the address
says ``https``; ``CONSUL_CACERT``/``CONSUL_CAPATH`` name the CA,
``CONSUL_CLIENT_CERT``/``CONSUL_CLIENT_KEY`` a client certificate,
``CONSUL_HTTP_SSL_VERIFY=false`` turns verification off.

**Token**: ``token=`` in the target, else the ``token`` option, else
``CONSUL_HTTP_TOKEN``, else the file named by ``CONSUL_HTTP_TOKEN_FILE``. It is
sent only in the ``X-Consul-Token`` header — never in the URL (Consul accepts
``?token=`` too, which would land in access logs) — and never appears in a
log line, ``repr``, exception or statistic.

Options: ``token``, ``wait`` (seconds, default 60: a silent agent is noticed
within about a minute), ``min_query_interval`` (default 1 s), ``timeout``
(connect/non-blocking request timeout, default 10 s), ``consistency``
(``"default"``, ``"stale"`` or ``"consistent"``), ``ssl_context``, ``env``
(a mapping used instead of ``os.environ``), plus those of ``_base``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from .._core.checks import check_str_mapping
from .._core.endpoint import Endpoint
from .._core.errors import ConfigError, DiscoveryError
from .._core.target import Target
from ._backoff import check_seconds
from ._loop import LoopResolver, logger
from ._secret import Secret, redact
from .base import ResolverSink

__all__ = ["ConsulResolver", "endpoint_from_entry"]

_TRUE = {"1", "true", "yes", "on", "t"}
_STATUSES = ("passing", "warning", "critical")


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in _TRUE


def _format_wait(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


def _parse_wait(text: str) -> float:
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    for suffix in ("ms", "s", "m", "h"):
        if text.endswith(suffix):
            number = text[: -len(suffix)]
            try:
                return float(number) * units[suffix]
            except ValueError:
                break
    raise ConfigError(f"wait must be a duration such as '30s' or '5m', got {text!r}",
                      field="target.wait")


class ConsulResolver(LoopResolver):
    """``consul://[agent]/service``: Consul health API with blocking queries.

    See the module documentation for the rules, the environment and the options.
    """

    scheme = "consul"

    def __init__(self, target: Target, *, token: str | None = None, wait: float | None = None,
                 min_query_interval: float = 1.0, timeout: float = 10.0,
                 consistency: str = "default", ssl_context: ssl.SSLContext | None = None,
                 env: Mapping[str, str] | None = None, **options: Any) -> None:
        super().__init__(target, **options)
        check_str_mapping(env, "env", secret=True)
        env = os.environ if env is None else env
        if token is not None and not isinstance(token, str):
            # never the value: it may be the secret in the wrong place
            raise ConfigError(f"must be a string or None, got a {type(token).__name__}",
                              field="token")
        if ssl_context is not None and not isinstance(ssl_context, ssl.SSLContext):
            raise ConfigError(f"must be an ssl.SSLContext or None, got {ssl_context!r}",
                              field="ssl_context")
        params = dict(target.params)
        self.service = target.name
        # -- where the agent is
        use_tls = _truthy(env.get("CONSUL_HTTP_SSL"))
        self._uds: str | None = None
        if target.server is not None:
            host, port = target.server
        else:
            addr = (env.get("CONSUL_HTTP_ADDR") or "").strip() or "127.0.0.1:8500"
            if addr.startswith("unix://"):
                self._uds = addr[len("unix://"):]
                host, port = "localhost", 8500
            else:
                if addr.startswith("https://"):
                    use_tls, addr = True, addr[len("https://"):]
                elif addr.startswith("http://"):
                    addr = addr[len("http://"):]
                addr = addr.rstrip("/")
                try:
                    ep = Endpoint.parse(addr if ":" in addr.rsplit("]", 1)[-1] else f"{addr}:8500")
                except ConfigError as exc:
                    raise ConfigError(f"CONSUL_HTTP_ADDR is not a valid address: {exc}",
                                      field="CONSUL_HTTP_ADDR") from None
                host, port = ep.host, ep.port
        shown_host = f"[{host}]" if ":" in host else host
        self.base_url = f"{'https' if use_tls else 'http'}://{shown_host}:{port}"
        self.source = f"consul agent {self._uds or self.base_url}"
        # -- TLS
        self._verify: ssl.SSLContext | bool = True
        if ssl_context is not None:
            self._verify = ssl_context
        elif use_tls:
            if env.get("CONSUL_HTTP_SSL_VERIFY", "").strip().lower() in {"0", "false", "no"}:
                self._verify = False
            else:
                cafile = env.get("CONSUL_CACERT") or None
                capath = env.get("CONSUL_CAPATH") or None
                try:
                    ctx = ssl.create_default_context(cafile=cafile, capath=capath)
                    cert, key = env.get("CONSUL_CLIENT_CERT"), env.get("CONSUL_CLIENT_KEY")
                    if cert:
                        ctx.load_cert_chain(cert, key or None)
                except (OSError, ssl.SSLError) as exc:
                    raise ConfigError(f"cannot load the TLS files named by CONSUL_CACERT/"
                                      f"CONSUL_CAPATH/CONSUL_CLIENT_CERT: {exc}",
                                      field="CONSUL_CACERT") from None
                self._verify = ctx
        # -- token (header only)
        raw_token = params.pop("token", None) or token or env.get("CONSUL_HTTP_TOKEN") or None
        if raw_token is None and env.get("CONSUL_HTTP_TOKEN_FILE"):
            try:
                raw_token = Path(env["CONSUL_HTTP_TOKEN_FILE"]).read_text().strip() or None
            except OSError as exc:
                raise ConfigError(f"cannot read CONSUL_HTTP_TOKEN_FILE: {exc.strerror}",
                                  field="CONSUL_HTTP_TOKEN_FILE") from None
        self._token = Secret(raw_token) if raw_token else None
        self.token_source = ("target" if "token" in target.params else "option" if token
                             else "environment" if self._token else None)
        # -- query
        wait_s = _parse_wait(params.pop("wait")) if "wait" in params else wait
        self.wait = check_seconds("wait", 60.0 if wait_s is None else wait_s, allow_zero=False)
        if self.wait > 600:
            raise ConfigError(f"must be <= 600 seconds (Consul's limit), got {self.wait:g}",
                              field="wait")
        self.min_query_interval = check_seconds("min_query_interval", min_query_interval)
        self.timeout = check_seconds("timeout", timeout, allow_zero=False)
        if not isinstance(consistency, str) or consistency not in ("default", "stale",
                                                                   "consistent"):
            raise ConfigError(f"must be 'default', 'stale' or 'consistent', got "
                              f"{consistency!r}", field="consistency")
        query: list[tuple[str, str]] = []
        for key, value in params.items():
            if key == "tag":
                query.extend(("tag", t.strip()) for t in value.split(",") if t.strip())
            elif key == "namespace":
                query.append(("ns", value))
            elif key == "passing":
                if value == "" or _truthy(value):
                    query.append(("passing", "1"))
            else:
                query.append((key, value))
        if consistency != "default":
            query.append((consistency, ""))
        self._query = query
        self.path = f"/v1/health/service/{quote(self.service, safe='')}"
        self.index = 0
        self._entry_cache: dict[tuple[Any, ...], Endpoint | None] = {}

    # -- the loop -------------------------------------------------------------------------

    def _client(self) -> httpx.AsyncClient:
        transport = httpx.AsyncHTTPTransport(uds=self._uds, verify=self._verify) \
            if self._uds else httpx.AsyncHTTPTransport(verify=self._verify)
        headers = {"Accept": "application/json", "User-Agent": "clientlb"}
        if self._token:
            headers["X-Consul-Token"] = self._token.reveal()
        return httpx.AsyncClient(base_url=self.base_url, transport=transport, headers=headers,
                                 timeout=httpx.Timeout(self.timeout))

    async def run(self, sink: ResolverSink) -> None:
        async with self._client() as client:
            loop = asyncio.get_running_loop()
            last_request: float | None = None
            while True:
                if last_request is not None:  # rate limit (Consul: "rate limit the loop")
                    pause = last_request + self.min_query_interval - loop.time()
                    if pause > 0:
                        await asyncio.sleep(pause)
                last_request = loop.time()
                self.mark_attempt()
                malformed = self.malformed_count
                try:
                    entries, index = await self._query_once(client)
                except DiscoveryError as exc:
                    self.fail(sink, exc)
                    if await self.sleep(self.next_backoff()):
                        self.index = 0
                    continue
                except _Refresh:
                    self.index = 0
                    continue
                self._apply_index(index)
                # entries that are all malformed keep the last good set; the next
                # query blocks on the index until the service changes
                self.answer(sink, self._endpoints(entries), malformed_before=malformed)

    def _apply_index(self, index: int | None) -> None:
        if index is None or index < 1:
            # Consul: "sanity check index is greater than zero" — never block on 0.
            self.index = 1
        elif index < self.index:
            # Consul: "reset the index if it goes backwards".
            logger.info("%s: X-Consul-Index went backwards (%d -> %d); resetting", self,
                        self.index, index)
            self.index = 0
        else:
            self.index = index

    async def _query_once(self, client: httpx.AsyncClient) -> tuple[list[Any], int | None]:
        params: list[tuple[str, str | int | float | bool | None]] = list(self._query)
        timeout = self.timeout
        if self.index > 0:
            params += [("index", str(self.index)), ("wait", _format_wait(self.wait))]
            # Consul adds up to wait/16 of jitter to the wait.
            timeout = self.wait + self.wait / 16 + self.timeout
        request = await self.until_woken(client.get(self.path, params=params, timeout=timeout))
        if request is None:
            raise _Refresh
        try:
            response = request.result()
        except httpx.HTTPError as exc:
            raise self._error(f"request failed: {type(exc).__name__}: {exc}") from None
        if response.status_code == 403:
            hint = "the token lacks service:read" if self._token else \
                "no token was given (CONSUL_HTTP_TOKEN or token=)"
            raise self._error(f"permission denied (HTTP 403): {hint}")
        if response.status_code != 200:
            body = response.text.strip().replace("\n", " ")[:200]
            raise self._error(f"HTTP {response.status_code}: {body}")
        try:
            entries = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise self._error("the answer is not JSON") from None
        if not isinstance(entries, list):
            raise self._error(f"expected a JSON list, got {type(entries).__name__}")
        header = response.headers.get("X-Consul-Index")
        try:
            index = int(header) if header is not None else None
        except ValueError:
            index = None
        return entries, index

    def _error(self, message: str) -> DiscoveryError:
        text = redact(message, self._token)
        return DiscoveryError(f"consul health query for {self.service!r} {text}",
                              target=str(self.target), source=self.source)

    def _endpoints(self, entries: list[Any]) -> list[Endpoint]:
        # An entry whose node and service ModifyIndex and check statuses are those of
        # the last answer maps to the same Endpoint: reuse it (10,000 instances with
        # one change cost one Endpoint, not 10,000).
        cache, new_cache = self._entry_cache, {}
        endpoints = []
        for i, entry in enumerate(entries):
            key = _cache_key(entry)
            if key is not None and key in cache:
                ep = cache[key]
            else:
                try:
                    ep = endpoint_from_entry(entry)
                except (ConfigError, KeyError, TypeError, ValueError, AttributeError) as exc:
                    self.malformed(f"{self.service}[{_entry_id(entry, i)}]",
                                   redact(str(exc), self._token))
                    continue
            if key is not None:
                new_cache[key] = ep
            if ep is not None:
                endpoints.append(ep)
        self._entry_cache = new_cache
        return endpoints

    def refresh(self) -> None:
        """Re-query now (cancelling a blocking query in progress), rate-limited."""
        super().refresh()

    def describe(self) -> dict[str, Any]:
        return {"agent": self._uds or self.base_url, "index": self.index,
                "token": "set" if self._token else "none"}


class _Refresh(Exception):
    """A refresh interrupted the blocking query."""


def _cache_key(entry: Any) -> tuple[Any, ...] | None:
    try:
        service, node = entry["Service"], entry["Node"]
        statuses = tuple(c["Status"] for c in entry.get("Checks") or ())
        key = (node["Node"], node["ModifyIndex"], service["ID"], service["ModifyIndex"],
               statuses)
        hash(key)
    except (KeyError, TypeError, AttributeError):
        return None
    return key


def _entry_id(entry: Any, i: int) -> str:
    with contextlib.suppress(Exception):
        return str(entry["Service"]["ID"])
    return f"#{i}"


def endpoint_from_entry(entry: Mapping[str, Any]) -> Endpoint | None:
    """One ``/v1/health/service`` entry as an Endpoint; None when it is critical.

    Raises:
        ConfigError, KeyError, TypeError, ValueError: a malformed entry.
    """
    service = entry["Service"]
    node = entry.get("Node") or {}
    checks = entry.get("Checks") or []
    status = "passing"
    for check in checks:
        s = check.get("Status")
        if s not in _STATUSES:
            raise ValueError(f"unknown check status {s!r}")
        if s == "critical":
            return None
        if s == "warning":
            status = "warning"
    weights = service.get("Weights") or {}
    weight = weights.get("Warning" if status == "warning" else "Passing", 1)
    address = service.get("Address") or node.get("Address")
    if not address:
        raise ValueError("neither Service.Address nor Node.Address is set")
    port = service.get("Port")
    locality = service.get("Locality") or node.get("Locality") or {}
    zone = locality.get("Zone") or None
    metadata = {
        "service_id": service.get("ID"),
        "node": node.get("Node"),
        "datacenter": node.get("Datacenter"),
        "tags": tuple(service.get("Tags") or ()),
        "meta": dict(service.get("Meta") or {}),
        "node_meta": dict(node.get("Meta") or {}),
        "health": status,
    }
    return Endpoint(address, port, weight=weight, zone=zone, metadata=metadata)

"""Active health checks: probe every endpoint in the background.

Envoy's active health checking (``arch_overview/upstream/health_checking``,
``config.core.v3.HealthCheck``) with its thresholds, jitter and
``no_traffic_interval``; the probes:

* ``http`` — ``GET path`` with ``Host`` set to the logical service name (the
  balancer's ``name``) and, with ``tls``, TLS whose SNI and certificate check
  use that name too (httpcore's ``sni_hostname``) while connecting to the
  endpoint's address — exactly what real traffic does. The status must be in
  ``expected_statuses``; redirects are not followed.
* ``tcp`` — the connection (and TLS handshake with ``tls``) succeeds.
* ``grpc`` — ``grpc.health.v1.Health/Check`` answers ``SERVING`` (the gRPC
  health checking protocol; needs the ``grpc`` extra).

The probes are written once, for asyncio. When the balancer was created
inside a running event loop they run as tasks on that loop; otherwise in a
daemon thread that runs its own loop (the same decision as the balancer's
resolver). Either way a pick never waits for a probe: results change the
endpoints' health and the balancer republishes its picker.

State machine per endpoint (:meth:`HealthChecker.record`): ``unhealthy_threshold``
failures in a row make a healthy endpoint unhealthy; ``healthy_threshold``
successes in a row bring it back; an endpoint never probed yet needs only
one success (Envoy). A healthy endpoint that received no request for
``no_traffic_interval`` is probed at that slower interval; unhealthy and
ejected ones keep the normal interval. With outlier detection's
``uneject_on_health_check``, ``healthy_threshold`` passing probes made after
an ejection end it early (Envoy's ``successful_active_health_check_uneject_host``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random as _random
import ssl
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._core.endpoint import Endpoint
from .._core.errors import ConfigError
from .._core.state import EndpointState
from .config import HealthCheck

if TYPE_CHECKING:
    import httpx

    from .manager import HealthManager

__all__ = ["HealthChecker", "ProbeState"]

logger = logging.getLogger("clientlb.health")


class ProbeState:
    """Per-endpoint active-check counters (``EndpointState.probe``)."""

    __slots__ = ("fail", "in_flight", "last_detail", "last_requests", "last_traffic",
                 "next_due", "ok", "pending")

    def __init__(self, pending: bool) -> None:
        self.ok = 0  # successes in a row
        self.fail = 0  # failures in a row
        self.pending = pending  # never probed yet
        self.next_due = 0.0  # loop time of the next probe (0: as soon as possible)
        self.in_flight = False
        self.last_requests = 0
        self.last_traffic: float | None = None  # loop time traffic was last seen
        self.last_detail = ""


def _url_host(ep: Endpoint) -> str:
    return f"[{ep.host}]" if ":" in ep.host else ep.host


class HealthChecker:
    """Runs the probes of one balancer; see the module documentation."""

    def __init__(self, manager: HealthManager, config: HealthCheck,
                 service: str | None) -> None:
        # Weak: the probe loop (a thread or a task) must not keep the balancer alive;
        # one dropped without close() is collected and its finalizer stops this loop.
        self._manager: Callable[[], HealthManager | None] = (
            weakref.ref(manager) if manager is not None else lambda: None)
        self.config = config
        #: the logical name sent as Host / TLS server name; None (a static list
        #: without a ``name=``): each endpoint's own address, as curl would
        self.host: str | None = config.host or service
        self._rng = _random.Random()
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._task: asyncio.Task[None] | None = None
        self._grpc_channels: dict[str, Any] = {}
        self._grpc_lock = threading.Lock()
        if config.kind == "grpc":
            try:
                import grpc  # noqa: F401
                from grpc_health.v1 import health_pb2  # noqa: F401
            except ImportError:
                raise ConfigError(
                    "kind='grpc' needs grpcio and grpcio-health-checking: "
                    "pip install 'clientlb[grpc]'", field="health_check.kind") from None
        self._ssl: ssl.SSLContext | None = None
        if config.tls is True:
            self._ssl = ssl.create_default_context()
        elif isinstance(config.tls, ssl.SSLContext):
            self._ssl = config.tls

    @property
    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context probes use (None: plain text)."""
        return self._ssl

    # -- the state machine (no I/O; unit-tested with a fake clock) ----------------------

    def new_state(self) -> ProbeState:
        return ProbeState(pending=True)

    def record(self, state: EndpointState, ok: bool, detail: str) -> bool:
        """Apply one probe result; True when ``probe_healthy`` changed.

        Called under the balancer lock by the manager.
        """
        ps: ProbeState | None = state.probe
        if ps is None:
            return False
        cfg = self.config
        ps.last_detail = detail
        changed = False
        if ok:
            ps.ok += 1
            ps.fail = 0
            if not state.probe_healthy and (ps.pending or ps.ok >= cfg.healthy_threshold):
                state.probe_healthy = True
                state.note = (f"health check passed ({detail})" if ps.pending
                              else f"health check passed {ps.ok} times in a row ({detail})")
                changed = True
        else:
            ps.fail += 1
            ps.ok = 0
            if state.probe_healthy and ps.fail >= cfg.unhealthy_threshold:
                state.probe_healthy = False
                state.note = f"health check failed {ps.fail} times in a row: {detail}"
                changed = True
        ps.pending = False
        return changed

    def interval_for(self, state: EndpointState, ps: ProbeState, now: float) -> float:
        """Seconds until the next probe of this endpoint (before jitter)."""
        cfg = self.config
        requests = state.load.requests + state.load.in_flight
        if requests != ps.last_requests or ps.last_traffic is None:
            ps.last_requests = requests
            ps.last_traffic = now
        if (state.probe_healthy and state.ejected_until is None
                and now - ps.last_traffic >= cfg.no_traffic_interval):
            return cfg.no_traffic_interval
        return cfg.interval

    def _jittered(self, seconds: float) -> float:
        j = self.config.jitter
        return seconds * (1.0 + j * (2.0 * self._rng.random() - 1.0)) if j else seconds

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._thread = threading.Thread(
                target=self._thread_main, name=f"clientlb-health-{self.host or 'static'}",
                daemon=True)
            self._thread.start()
            return
        self._loop = loop
        self._wake = asyncio.Event()
        self._task = loop.create_task(self._run())

    def _thread_main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._wake = asyncio.Event()
            loop.run_until_complete(self._run())
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def wake(self) -> None:
        """The endpoint set changed: look for endpoints to probe now (any thread)."""
        loop, event = self._loop, self._wake
        if loop is None or event is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # loop closing
            loop.call_soon_threadsafe(event.set)

    def close(self, *, wait: bool = True) -> None:
        """Stop probing; with ``wait`` (not from a finalizer) join the probe thread."""
        if self._closed:
            return
        self._closed = True
        self.wake()
        task, loop = self._task, self._loop
        if task is not None and loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(task.cancel)
        if wait and self._thread is not None \
                and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.config.timeout + 2.0)
        self._close_grpc()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.wake()
        task = self._task
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, self.config.timeout + 2.0)
        self._close_grpc()

    # -- the scheduler -----------------------------------------------------------------------

    async def _run(self) -> None:
        cfg = self.config
        verify: ssl.SSLContext | bool = self._ssl if self._ssl is not None else True
        import httpx  # HTTP probes only: not loaded with clientlb

        client = httpx.AsyncClient(verify=verify, timeout=cfg.timeout, follow_redirects=False,
                                   trust_env=False) if cfg.kind == "http" else None
        sem = asyncio.Semaphore(cfg.max_concurrency)
        tasks: set[asyncio.Task[None]] = set()
        loop = asyncio.get_running_loop()
        wake = self._wake
        assert wake is not None
        try:
            while not self._closed:
                now = loop.time()
                soonest = now + cfg.interval
                manager = self._manager()
                if manager is None:  # the balancer was collected
                    break
                targets = manager.probe_targets()
                del manager
                if self._grpc_channels:
                    self._forget([s.endpoint for s in targets])
                for state in targets:
                    ps: ProbeState | None = state.probe
                    if ps is None or ps.in_flight:
                        continue
                    if ps.next_due <= now:
                        ps.in_flight = True
                        t = loop.create_task(self._probe_one(client, sem, state, ps))
                        tasks.add(t)
                        t.add_done_callback(tasks.discard)
                    else:
                        soonest = min(soonest, ps.next_due)
                wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(wake.wait(), max(0.0, soonest - loop.time()))
        finally:
            for t in list(tasks):
                t.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            if client is not None:
                await client.aclose()

    async def _probe_one(self, client: httpx.AsyncClient | None, sem: asyncio.Semaphore,
                         state: EndpointState, ps: ProbeState) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with sem:
                try:
                    ok, detail = await asyncio.wait_for(self.probe(client, state.endpoint),
                                                        self.config.timeout)
                except asyncio.TimeoutError:
                    ok, detail = False, f"timed out after {self.config.timeout:g}s"
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # a probe must never kill the scheduler
                    ok, detail = False, f"{type(exc).__name__}: {exc}"
            manager = self._manager()
            if not self._closed and not state.draining and manager is not None:
                manager.on_probe(state, ok, detail, self)
            del manager
        finally:
            now = loop.time()
            ps.next_due = now + self._jittered(self.interval_for(state, ps, now))
            ps.in_flight = False

    # -- the probes ----------------------------------------------------------------------

    async def probe(self, client: httpx.AsyncClient | None, ep: Endpoint) -> tuple[bool, str]:
        """One probe of ``ep``: ``(passed, detail)``."""
        kind = self.config.kind
        if kind == "http":
            assert client is not None
            return await self._probe_http(client, ep)
        if kind == "tcp":
            return await self._probe_tcp(ep)
        return await asyncio.to_thread(self._probe_grpc, ep)

    async def _probe_http(self, client: httpx.AsyncClient, ep: Endpoint) -> tuple[bool, str]:
        cfg = self.config
        scheme = "https" if self._ssl is not None else "http"
        port = cfg.port or ep.port
        url = f"{scheme}://{_url_host(ep)}:{port}{cfg.path}"
        host = self.host
        extensions = {"sni_hostname": host} if self._ssl is not None and host else {}
        headers = {"Host": host} if host else {}  # else httpx sends the address
        response = await client.get(url, headers=headers, extensions=extensions)
        await response.aclose()
        passed = response.status_code in cfg.expected_statuses
        return passed, f"HTTP {response.status_code}"

    async def _probe_tcp(self, ep: Endpoint) -> tuple[bool, str]:
        port = self.config.port or ep.port
        kwargs: dict[str, Any] = {}
        if self._ssl is not None:
            kwargs = {"ssl": self._ssl, "server_hostname": self.host or ep.host}
        _, writer = await asyncio.open_connection(ep.host, port, **kwargs)
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
        return True, "connected"

    def _probe_grpc(self, ep: Endpoint) -> tuple[bool, str]:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        channel = self._grpc_channel(ep, grpc)
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service=self.config.grpc_service)
        try:
            reply = stub.Check(request, timeout=self.config.timeout)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            return False, f"gRPC {getattr(code, 'name', code)}"
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        return reply.status == health_pb2.HealthCheckResponse.SERVING, f"gRPC {status}"

    def _grpc_channel(self, ep: Endpoint, grpc: Any) -> Any:
        address = f"{_url_host(ep)}:{self.config.port or ep.port}"
        with self._grpc_lock:
            channel = self._grpc_channels.get(address)
            if channel is None:
                if self._ssl is not None or self.config.tls:
                    creds = grpc.ssl_channel_credentials()
                    options = ([("grpc.ssl_target_name_override", self.host)]
                               if self.host else [])
                    channel = grpc.secure_channel(address, creds, options=options)
                else:
                    channel = grpc.insecure_channel(address)
                self._grpc_channels[address] = channel
            return channel

    def _forget(self, endpoints: list[Endpoint]) -> None:
        """Close the gRPC channels of endpoints that left the target."""
        keep = {f"{_url_host(ep)}:{self.config.port or ep.port}" for ep in endpoints}
        with self._grpc_lock:
            gone = [self._grpc_channels.pop(a) for a in list(self._grpc_channels)
                    if a not in keep]
        for channel in gone:
            with contextlib.suppress(Exception):
                channel.close()

    def _close_grpc(self) -> None:
        with self._grpc_lock:
            channels, self._grpc_channels = self._grpc_channels, {}
        for channel in channels.values():
            with contextlib.suppress(Exception):
                channel.close()

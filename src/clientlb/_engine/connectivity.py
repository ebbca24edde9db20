"""Connectivity: pick only endpoints that can be connected to, reconnect in the background.

gRPC's balancers (``balancer/base`` in grpc-go, ``round_robin`` in grpcio) build
their picker from READY sub-connections only: a call is never handed to an
address that is known not to accept connections while another one can take it,
and reconnection is retried in the background with backoff (gRPC's
``connection-backoff.md``). clientlb does the same for every integration, with
one mechanism (docs/architecture.md, "Connectivity"):

* every endpoint has a :class:`Connectivity` — ``idle`` (never tried),
  ``ready`` (the last attempt connected), ``transient_failure`` (the last
  attempt could not connect), ``connecting`` (a background probe is running);
* the feed is the outcome of every call (``Pick.done``): a
  ``connect_failure`` puts the endpoint in transient failure, any outcome that
  reached it (success or not) makes it ready — so HTTP, TCP and gRPC all feed
  it without code of their own;
* the picker skips endpoints in transient failure or connecting while at
  least one other endpoint may take the call (when none can, every endpoint is
  tried again: a total outage must not turn into "no endpoint");
* an endpoint in transient failure is probed in the background, after a
  jittered exponential backoff; a probe that connects makes it ready again
  (and ends an outlier ejection early, as Envoy un-ejects a host on a
  successful active check), a probe that fails doubles the wait.

The probe is a TCP handshake to the endpoint by default; an integration with
its own connection state registers a better one (the gRPC channels wait for
their sub-channel to be READY, so that no stream is handed to a grpcio
sub-channel still in its own reconnect backoff).

Backoff defaults (why): ``initial = 0.25 s``, ``multiplier = 1.6``, ``jitter =
±20 %`` (gRPC's connection-backoff multiplier and jitter), ``max = 1 s`` — far
below gRPC's 120 s, which paces full reconnects of thousands of clients: here a
probe is one TCP handshake, and a returning endpoint must take traffic again
within about a second of coming back (the outage-recovery target).
"""

from __future__ import annotations

import enum
import functools
import heapq
import itertools
import logging
import socket
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .._core.balancer import LoadBalancer
    from .._core.endpoint import Endpoint
    from .._core.state import EndpointState

__all__ = ["Connectivity", "ConnectivityTracker", "Probe", "call_later", "tcp_probe"]

logger = logging.getLogger("clientlb.connectivity")

#: ``probe(endpoint, timeout)`` → True when the endpoint accepts connections.
Probe = Callable[["Endpoint", float], bool]

INITIAL_BACKOFF = 0.25
MULTIPLIER = 1.6
JITTER = 0.2
MAX_BACKOFF = 1.0
PROBE_TIMEOUT = 1.0


class Connectivity(str, enum.Enum):
    """An endpoint's connectivity state, as gRPC's sub-channels have (shown in snapshots)."""

    IDLE = "idle"
    CONNECTING = "connecting"
    READY = "ready"
    TRANSIENT_FAILURE = "transient_failure"


IDLE = Connectivity.IDLE
READY = Connectivity.READY
CONNECTING = Connectivity.CONNECTING
TRANSIENT_FAILURE = Connectivity.TRANSIENT_FAILURE
#: States a pick avoids while another endpoint may take the call.
UNUSABLE = frozenset({TRANSIENT_FAILURE, CONNECTING})


def tcp_probe(endpoint: Endpoint, timeout: float) -> bool:
    """The default probe: does a TCP handshake with the endpoint succeed?"""
    try:
        sock = socket.create_connection((endpoint.host, endpoint.port), timeout=timeout)
    except OSError:
        return False
    sock.close()
    return True


class _Scheduler:
    """One daemon thread for every balancer: runs probes when their backoff expires."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="clientlb-probe")

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() + delay, next(self._seq), fn))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="clientlb-reconnect",
                                                daemon=True)
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    timeout = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._cond.wait(timeout)
                _, _, fn = heapq.heappop(self._heap)
            try:
                self._pool.submit(fn)
            except RuntimeError:  # interpreter shutdown
                return


@functools.cache
def _get_scheduler() -> _Scheduler:
    """The process-wide scheduler, created on first use (its thread on first probe)."""
    return _Scheduler()


def call_later(delay: float, fn: Callable[[], None]) -> None:
    """Run ``fn`` in ``delay`` seconds on the engine's shared timer thread (its pool of
    four workers): for integrations' backoffs and hedge delays, without a thread each."""
    _get_scheduler().call_later(delay, fn)


class ConnectivityTracker:
    """The connectivity of one balancer's endpoints: fed by outcomes, healed by probes.

    The balancer owns one; ``Pick.done`` calls :meth:`failed` and
    :meth:`reached`; the picker is rebuilt through ``lb.rebuild()`` when an
    endpoint enters or leaves transient failure. Probes run on a shared
    background thread and hold the balancer only weakly.
    """

    __slots__ = ("__weakref__", "_lb", "_probe", "_rng")

    def __init__(self, lb: LoadBalancer) -> None:
        self._lb = weakref.ref(lb)
        self._probe: Probe | None = None  # None: tcp_probe, looked up at each probe
        self._rng = lb.rng

    def set_probe(self, probe: Probe | None) -> None:
        """Use ``probe`` to test endpoints in transient failure (None: a TCP handshake)."""
        self._probe = probe

    def failed(self, state: EndpointState) -> None:
        """A call could not connect to ``state``'s endpoint: avoid it, probe it later."""
        if state.connectivity is TRANSIENT_FAILURE or state.connectivity is CONNECTING:
            return
        state.connectivity = TRANSIENT_FAILURE
        state.reconnect_backoff = INITIAL_BACKOFF
        lb = self._lb()
        if lb is None:
            return
        lb.rebuild()
        self._schedule(state)

    def reached(self, state: EndpointState) -> None:
        """A call reached ``state``'s endpoint (whatever its answer): it is ready."""
        previous = state.connectivity
        state.connectivity = READY
        if previous is TRANSIENT_FAILURE or previous is CONNECTING:
            lb = self._lb()
            if lb is not None:
                lb.rebuild()

    def _schedule(self, state: EndpointState) -> None:
        backoff = state.reconnect_backoff
        delay = backoff * (1.0 + JITTER * (2.0 * self._rng.random() - 1.0))
        state.reconnect_backoff = min(MAX_BACKOFF, backoff * MULTIPLIER)
        ref = weakref.ref(self)
        _get_scheduler().call_later(delay, lambda: _probe_later(ref, state))

    def probe_now(self, state: EndpointState) -> None:
        lb = self._lb()
        if lb is None or lb.closed or state.connectivity is not TRANSIENT_FAILURE:
            return
        if lb.state_of(state.address) is not state or state.draining:
            return  # left the target: nothing to reconnect to
        state.connectivity = CONNECTING
        try:
            ok = (self._probe or tcp_probe)(state.endpoint, PROBE_TIMEOUT)
        except Exception:  # a probe must never kill the scheduler
            logger.debug("%s: probe of %s raised", lb.name, state.address, exc_info=True)
            ok = False
        if state.connectivity is not CONNECTING:  # a call reported meanwhile
            return
        if ok:
            state.connectivity = READY
            logger.debug("%s: %s accepts connections again", lb.name, state.address)
            lb.endpoint_reconnected(state)
        else:
            state.connectivity = TRANSIENT_FAILURE
            self._schedule(state)


def _probe_later(ref: weakref.ref[ConnectivityTracker], state: EndpointState) -> None:
    tracker = ref()
    if tracker is not None:
        tracker.probe_now(state)

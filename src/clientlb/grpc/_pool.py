"""What a balanced channel is, apart from its I/O: one sub-channel per endpoint.

grpcio cannot load a custom resolver or balancing policy (grpc/grpc#11685), so
the balancing happens one level up (docs/architecture.md, "Integrations"): a
balanced channel keeps one ordinary grpcio channel — a *sub-channel*,
``pick_first`` to one address — per endpoint, created on first use, and every
call asks the balancer for an endpoint through its :class:`~._policy.RpcCall`.
:class:`ChannelBase` is that part, shared by the sync channel (``_channel``)
and the grpc.aio one (``aio``), which differ only in how they do I/O and how
they close a grpcio channel.

When discovery drops an endpoint, its sub-channel takes no new call and is
closed once the calls it carries have ended (drained), never under them.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import grpc

from .._core.balancer import LoadBalancer
from .._core.endpoint import Endpoint, EndpointSetDiff
from .._core.outcome import Outcome
from ._common import ChannelConfig

if TYPE_CHECKING:
    from ._policy import Attempt, RpcCall

__all__ = ["ORDER", "ChannelBase", "Key", "SubChannel", "aggregate", "multicallable"]

_CANCELLED = Outcome.CANCELLED

# (kind, method, request_serializer, response_deserializer, registered)
Key = tuple[str, str, Any, Any, bool]

#: A channel's state is the best of its sub-channels', in this order (as grpc's own).
ORDER = (
    grpc.ChannelConnectivity.READY,
    grpc.ChannelConnectivity.CONNECTING,
    grpc.ChannelConnectivity.IDLE,
    grpc.ChannelConnectivity.TRANSIENT_FAILURE,
    grpc.ChannelConnectivity.SHUTDOWN,
)


def aggregate(states: set[grpc.ChannelConnectivity]) -> grpc.ChannelConnectivity:
    """READY when any sub-channel is, else CONNECTING, IDLE, TRANSIENT_FAILURE."""
    return next((s for s in ORDER if s in states), grpc.ChannelConnectivity.IDLE)


def multicallable(kind: str) -> Callable[..., Any]:
    """A channel's ``unary_unary``/``unary_stream``/... method: the channel's
    multicallable for ``(kind, method, serializers, registered)``."""
    def make(self: Any, method: str, request_serializer: Any = None,
             response_deserializer: Any = None, _registered_method: bool | None = False) -> Any:
        return self._multicallable((kind, method, request_serializer, response_deserializer,
                                    bool(_registered_method)))

    make.__name__ = make.__qualname__ = kind
    return make


class SubChannel:
    """One endpoint's grpcio channel, its cached multicallables and in-flight count."""

    __slots__ = ("_close", "_lock", "address", "callables", "channel", "closed", "draining",
                 "in_flight", "state", "watched", "watcher")

    def __init__(self, address: str, channel: Any, close: Callable[[SubChannel], None]
                 ) -> None:
        self.address = address
        self.channel = channel
        self.callables: dict[Key, Any] = {}
        self.in_flight = 0
        self.draining = False
        self.closed = False
        #: sync only: the last state seen, the channel's watcher, whether it was ever watched
        self.state: grpc.ChannelConnectivity | None = None
        self.watcher: Callable[[grpc.ChannelConnectivity], None] | None = None
        self.watched = False
        self._close = close
        self._lock = threading.Lock()

    def callable(self, key: Key) -> Any:
        c = self.callables.get(key)
        if c is None:
            kind, method, ser, deser, registered = key
            c = getattr(self.channel, kind)(method, request_serializer=ser,
                                           response_deserializer=deser,
                                           _registered_method=registered)
            self.callables[key] = c
        return c

    def acquire(self) -> bool:
        """Count one more call; False when the sub-channel was closed meanwhile."""
        with self._lock:
            if self.closed:
                return False
            self.in_flight += 1
            return True

    def release(self) -> None:
        with self._lock:
            self.in_flight -= 1
            if not (self.draining and self.in_flight <= 0 and not self.closed):
                return
            self.closed = True
        self._close(self)

    def drain(self) -> None:
        """Take no new calls; close as soon as the in-flight ones have ended."""
        with self._lock:
            self.draining = True
            if self.in_flight > 0 or self.closed:
                return
            self.closed = True
        self._close(self)

    def __repr__(self) -> str:
        status = "closed" if self.closed else "draining" if self.draining else "open"
        return f"<SubChannel {self.address} {status} in_flight={self.in_flight}>"


#: which channel's connect probe each balancer uses (the last channel built on it)
_PROBE_OWNERS: weakref.WeakKeyDictionary[LoadBalancer, ChannelBase] = \
    weakref.WeakKeyDictionary()


class ChannelBase:
    """The sub-channels of a balanced channel and what every call needs from it.

    Subclasses set ``closed_error`` (what a call on a closed channel raises, as
    grpcio's) and implement ``_close_sub`` (close one grpcio channel, from any
    thread, never inside that channel's own callbacks).
    """

    closed_error: ClassVar[type[Exception]] = ValueError

    def __init__(self, lb: LoadBalancer, owns_lb: bool, factory: Callable[[Endpoint], Any],
                 config: ChannelConfig) -> None:
        #: the balancer that picks an endpoint for every call
        self.lb = lb
        self._owns_lb = owns_lb
        self._factory = factory
        #: the channel's own options (the retry policy and budget are the balancer's)
        self.config = config
        self._subs: dict[str, SubChannel] = {}
        self._draining: list[SubChannel] = []
        self._lock = threading.Lock()
        #: True once the channel is closed (calls then raise ``closed_error``)
        self.closed = False
        self._connect_all = False
        lb.add_diff_listener(self._on_diff)
        # Endpoints in transient failure come back when their sub-channel is READY, not
        # merely when a TCP handshake works (clientlb._engine.connectivity).
        lb.set_connect_probe(self._probe)
        _PROBE_OWNERS[lb] = self

    def _probe(self, endpoint: Endpoint, timeout: float) -> bool:
        raise NotImplementedError

    def _probe_sub(self, endpoint: Endpoint) -> SubChannel | None:
        """The sub-channel a probe waits on (None when the channel is closed)."""
        try:
            return self.sub_channel(endpoint)
        except self.closed_error:
            return None


    def _close_sub(self, sub: SubChannel) -> None:
        raise NotImplementedError

    def _multicallable(self, key: Key) -> Any:
        """The multicallable of ``key`` (``multicallable`` makes the four methods)."""
        raise NotImplementedError

    def _on_diff(self, diff: EndpointSetDiff) -> None:
        raise NotImplementedError

    def sub_channel(self, endpoint: Endpoint) -> SubChannel:
        """The sub-channel of ``endpoint``, created on first use."""
        sub = self._subs.get(endpoint.address)
        if sub is not None and not sub.draining:
            return sub
        with self._lock:
            if self.closed:
                raise self.closed_error("Cannot invoke RPC on closed channel!")
            sub = self._subs.get(endpoint.address)
            if sub is not None and not sub.draining:
                return sub
            sub = self._new_sub(endpoint)
            current = self.lb.state_of(endpoint.address)
            if current is None or current.draining:
                # Picked just before it left the target: serve this call, then close.
                sub.draining = True
                return sub
            self._subs[endpoint.address] = sub
        return sub

    def start_attempt(self, rpc: RpcCall, key: Key, first: Any, kwargs: dict[str, Any],
                      how: str = "", attempt: Attempt | None = None) -> Attempt:
        """Start an attempt of ``rpc`` (``attempt``, or the next one) without waiting for
        it: ``attempt.call`` is the grpcio call of ``sub.callable(key)[.how](first,
        timeout=, wait_for_ready=, **kwargs)``."""
        if attempt is None:
            attempt = rpc.next()
        try:
            start = attempt.sub.callable(key)
            if how:
                start = getattr(start, how)
            attempt.call = start(
                first, timeout=None if rpc.logical.deadline_at is None else rpc.timeout(),
                wait_for_ready=rpc.wfr and rpc.wait_for_ready(), **kwargs)
        except BaseException:
            attempt.finish(_CANCELLED)
            raise
        return attempt

    def _new_sub(self, endpoint: Endpoint) -> SubChannel:
        return SubChannel(endpoint.address, self._factory(endpoint), self._close_sub)

    def _drain_removed(self, diff: EndpointSetDiff) -> list[SubChannel]:
        """Drain the sub-channels of the endpoints that left; returns them."""
        if not diff.removed:
            return []
        with self._lock:
            gone = [self._subs.pop(ep.address) for ep in diff.removed
                    if ep.address in self._subs]
            self._draining = [s for s in self._draining if not s.closed] + gone
        for sub in gone:
            sub.drain()
        return gone

    def _take_all(self) -> list[SubChannel] | None:
        """Close the channel: every sub-channel (None when it was closed already)."""
        with self._lock:
            if self.closed:
                return None
            self.closed = True
            subs = [*self._subs.values(), *self._draining]
            self._subs.clear()
            self._draining.clear()
        self.lb.remove_listener(self._on_diff)
        if _PROBE_OWNERS.get(self.lb) is self:  # not another channel's probe
            del _PROBE_OWNERS[self.lb]
            self.lb.set_connect_probe(None)
        for sub in subs:
            sub.closed = True
        return subs

    def sub_channels(self) -> dict[str, str]:
        """``{address: "open" | "draining"}`` of the sub-channels not closed yet.

        A removed endpoint's sub-channel shows as ``"draining"`` while calls it
        carries are in flight, and disappears once it is closed.
        """
        with self._lock:
            self._draining = [s for s in self._draining if not s.closed]
            live = {s.address: "draining" for s in self._draining}
            live.update((a, "open") for a in self._subs)
            return live

    def _describe(self, kind: str, status: str) -> str:
        subs = self.sub_channels()
        draining = sum(1 for v in subs.values() if v == "draining")
        status = "closed" if self.closed else status
        return (f"<{kind} {self.lb.name!r} [{len(subs)} sub-channels, "
                f"{draining} draining] {status}>")

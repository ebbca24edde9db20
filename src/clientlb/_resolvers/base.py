"""Resolvers: turn a target into a stream of :class:`EndpointSet` snapshots.

A resolver publishes through a :class:`ResolverSink` (the balancer):
``publish(endpoint_set)`` for every new snapshot and ``error(exc)`` when its
source fails. The rules every resolver keeps (docs/architecture.md, "Layers and their contracts"):

* it keeps the last good set when its source fails — an error or a timeout
  calls ``error()``, never ``publish()`` with an empty set; only an
  authoritative "no such service" publishes an empty set;
* it never blocks a pick: I/O happens in a background thread (``start``) or
  an asyncio task (``astart``), chosen by the balancer;
* ``refresh()`` asks for an early re-resolution (the balancer calls it when
  every endpoint is failing), and may be ignored by static sources.

Schemes are registered in :data:`RESOLVERS`; a scheme that parses but has no
resolver yet raises :class:`ConfigError` saying so.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Protocol

from .._core.endpoint import EndpointSet
from .._core.errors import ConfigError
from .._core.target import Target

__all__ = ["RESOLVERS", "Resolver", "ResolverSink", "StaticResolver", "create_resolver",
           "start_resolver"]


class ResolverSink(Protocol):
    """What a resolver talks to (implemented by ``LoadBalancer``)."""

    def publish(self, endpoints: EndpointSet) -> None: ...

    def error(self, exc: BaseException) -> None: ...


class Resolver(ABC):
    """Base class of the resolvers; see the module documentation for the rules."""

    #: Why the last set published is empty, when it is (``"NXDOMAIN: users.internal
    #: does not exist"``), for the balancer's ``NoEndpointAvailable``; None otherwise.
    empty_reason: str | None = None

    def __init__(self, target: Target) -> None:
        self.target = target

    @abstractmethod
    def start(self, sink: ResolverSink) -> None:
        """Begin resolving from threads (sync world). Must return promptly."""

    async def astart(self, sink: ResolverSink) -> None:
        """Begin resolving inside the running event loop. Defaults to :meth:`start`."""
        self.start(sink)

    def refresh(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Re-resolve as soon as possible (hint; may be ignored)."""

    def close(self) -> None:  # noqa: B027
        """Stop resolving; idempotent."""

    def stop(self) -> None:
        """Stop resolving without waiting for it to end (from a finalizer); idempotent.

        Defaults to :meth:`close`; resolvers whose ``close`` waits override it.
        """
        self.close()

    async def aclose(self) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.target}>"


class StaticResolver(Resolver):
    """The fixed list of a ``static://`` target, published once at start."""

    def start(self, sink: ResolverSink) -> None:
        sink.publish(EndpointSet(self.target.endpoints, version=1))


ResolverFactory = Callable[..., Resolver]

#: scheme → factory(target, **options). Discovery modules register themselves here.
RESOLVERS: dict[str, ResolverFactory] = {"static": StaticResolver}


def start_resolver(resolver: Resolver, sink: ResolverSink) -> asyncio.Task[None] | None:
    """Start ``resolver``: as a task of the running event loop when there is one (its
    I/O shares the application's loop), else on the shared discovery thread; the task,
    or None."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        resolver.start(sink)
        return None
    return loop.create_task(resolver.astart(sink))


def create_resolver(target: Target, **options: Any) -> Resolver:
    factory = RESOLVERS.get(target.scheme)
    if factory is None:
        raise ConfigError(
            f"the {target.scheme}:// scheme is not available in this version of clientlb "
            f"(available: {', '.join(sorted(RESOLVERS))})",
            field="target",
        )
    return factory(target, **options)

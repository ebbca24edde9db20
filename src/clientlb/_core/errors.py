"""The exceptions clientlb raises.

Every error derives from :class:`ClientLBError`. Configuration mistakes are
:class:`ConfigError`, which is also a :class:`ValueError` so that code written
against "bad argument" conventions keeps working. Messages name the field, the
value and the rule that was broken, e.g. ``"port must be 1..65535, got 0"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .endpoint import Endpoint

__all__ = [
    "CircuitOpen",
    "ClientLBError",
    "ConfigError",
    "ConnectError",
    "DiscoveryError",
    "NoEndpointAvailable",
]


class ClientLBError(Exception):
    """Base class of every exception raised by clientlb."""


class ConfigError(ClientLBError, ValueError):
    """A configuration value is invalid.

    Raised at construction time, never at the first request. ``field`` is the
    dotted name of the offending setting when it is known.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class NoEndpointAvailable(ClientLBError):
    """``pick()`` found nothing to pick; ``reason`` says why.

    Typical reasons: the target resolved to no endpoint, every endpoint has
    weight 0, the balancer is closed, or discovery has not produced a first
    set yet (then ``__cause__`` is the discovery error).
    """

    def __init__(self, reason: str, *, service: str | None = None) -> None:
        self.reason = reason
        self.service = service
        where = f" for {service!r}" if service else ""
        super().__init__(f"no endpoint available{where}: {reason}")


class CircuitOpen(NoEndpointAvailable):
    """A circuit breaker cap was reached: ``pick()`` fails fast instead of queueing.

    ``scope`` is ``"balancer"`` (``max_requests``: too many requests in flight
    through the balancer) or ``"endpoint"`` (``max_requests_per_endpoint``:
    every eligible endpoint is full); ``limit`` is the cap. Nothing was sent,
    so the request may be retried later. Through httpx it is an
    ``httpx.TransportError`` that is still a ``CircuitOpen``, with both fields.
    """

    def __init__(self, reason: str, *, service: str | None = None, scope: str = "balancer",
                 limit: int = 0) -> None:
        self.scope = scope
        self.limit = limit
        super().__init__(f"circuit open: {reason}", service=service)


class DiscoveryError(ClientLBError):
    """A resolver could not obtain endpoints.

    ``target`` is the target with any secret removed; ``source`` names the
    server or API that failed. Tokens and credentials never appear here.
    """

    def __init__(self, message: str, *, target: str | None = None, source: str | None = None):
        self.target = target
        self.source = source
        parts = [message]
        if source:
            parts.append(f"source={source}")
        if target:
            parts.append(f"target={target}")
        detail = f" ({', '.join(parts[1:])})" if len(parts) > 1 else ""
        super().__init__(message + detail)


class ConnectError(ClientLBError, ConnectionError):
    """No attempt of a balanced connect reached a backend (``clientlb.connect``).

    Also a :class:`ConnectionError` (an ``OSError``), so socket code written
    against the standard library keeps catching it. ``errors`` lists each
    ``(endpoint, exception)`` tried, in order; ``tried`` their addresses; the
    message says why each one failed, and ``__cause__`` is the last error.
    """

    def __init__(self, message: str, *, service: str | None = None,
                 errors: Sequence[tuple[Endpoint, BaseException]] = (),
                 reasons: Sequence[str] = ()) -> None:
        self.service = service
        self.errors = tuple(errors)
        reasons = reasons or [str(exc) for _, exc in self.errors]
        detail = "; ".join(
            f"{ep.address} {reason}"
            for (ep, _), reason in zip(self.errors, reasons, strict=True)
        )
        super().__init__(f"{message}: {detail}" if detail else message)

    @property
    def tried(self) -> tuple[str, ...]:
        """The addresses (``host:port``) tried, in order."""
        return tuple(ep.address for ep, _ in self.errors)

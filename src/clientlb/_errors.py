"""The exceptions clientlb raises.

Every error derives from :class:`ClientLBError`. Configuration mistakes are
:class:`ConfigError`, which is also a :class:`ValueError` so that code written
against "bad argument" conventions keeps working. Messages name the field, the
value and the rule that was broken, e.g. ``"port must be 1..65535, got 0"``.
"""

from __future__ import annotations

__all__ = ["ClientLBError", "ConfigError", "DiscoveryError", "NoEndpointAvailable"]


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

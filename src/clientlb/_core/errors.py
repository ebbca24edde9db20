"""The exceptions clientlb raises.

Every error derives from :class:`ClientLBError`. Configuration mistakes are
:class:`ConfigError`, which is also a :class:`ValueError` so that code written
against "bad argument" conventions keeps working. Messages name the field, the
value and the rule that was broken, e.g. ``"port must be 1..65535, got 0"``.

No message can repeat a credential: :class:`ClientLBError` passes every
string argument through :func:`clientlb._core.redact.redact`, the one
redaction rule (user-info, ``token=``/``password=`` and their
percent-encoded forms become ``***``).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from .redact import redact

if TYPE_CHECKING:
    from .endpoint import Endpoint

__all__ = [
    "CircuitOpen",
    "ClientLBError",
    "ConfigError",
    "ConnectError",
    "DiscoveryError",
    "NoEndpointAvailable",
    "strict_arguments",
]

_T = TypeVar("_T", bound=Callable[..., Any])


class ClientLBError(Exception):
    """Base class of every exception raised by clientlb (messages are redacted)."""

    def __init__(self, *args: object) -> None:
        super().__init__(*(redact(a) if isinstance(a, str) else a for a in args))


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
        self.reason = reason = redact(reason)
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
        self.target = target = redact(target) if target is not None else None
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


def _argument_error(function: Callable[..., Any], owner: str, args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> ConfigError | None:
    """The ConfigError for arguments ``function`` cannot bind, or None when they bind."""
    signature = inspect.signature(function)
    try:
        signature.bind(*args, **kwargs)
    except TypeError as exc:
        params = signature.parameters
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            unknown = [k for k in kwargs if k not in params
                       or params[k].kind is inspect.Parameter.POSITIONAL_ONLY]
            if unknown:
                valid = [n for n, p in params.items() if n != "self" and p.kind in (
                    inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
                expected = f"expected one of {', '.join(valid)}" if valid else \
                    "it takes none"
                return ConfigError(f"unknown argument {unknown[0]!r} for {owner}(); "
                                   f"{expected}", field=unknown[0])
        return ConfigError(f"{owner}(): {exc}")
    return None


def strict_arguments(obj: _T) -> _T:
    """Make a public class or function raise :class:`ConfigError` for arguments it
    cannot take (an unknown keyword, one too many), instead of a bare ``TypeError``.

    The public contract: bad input is a ``ConfigError`` at construction, unknown keywords
    included, as ``HTTPTransport`` always did. Costs nothing on the normal path:
    the signature is consulted only when the call raised ``TypeError``, and a
    ``TypeError`` from inside a call whose arguments bind is re-raised as it is.
    """
    if isinstance(obj, type):
        cls = obj
        init: Callable[..., None] = cls.__dict__.get("__init__") or cls.__init__  # type: ignore[misc]

        @functools.wraps(init)
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            try:
                init(self, *args, **kwargs)
            except TypeError:
                error = _argument_error(init, type(self).__name__, (self, *args), kwargs)
                if error is None:
                    raise
                raise error from None

        setattr(cls, "__init__", __init__)  # noqa: B010 - mypy: no method assignment
        return obj
    function = obj
    if inspect.iscoroutinefunction(function):
        @functools.wraps(function)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                coroutine = function(*args, **kwargs)
            except TypeError:
                error = _argument_error(function, function.__name__, args, kwargs)
                if error is None:
                    raise
                raise error from None
            return await coroutine

        return async_wrapper  # type: ignore[return-value]

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except TypeError:
            error = _argument_error(function, function.__name__, args, kwargs)
            if error is None:
                raise
            raise error from None

    return wrapper  # type: ignore[return-value]

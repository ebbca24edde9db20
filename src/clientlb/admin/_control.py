"""The control room's actions, apart from HTTP: validate everything, then change the registry.

Each action takes the decoded JSON of a request and either changes the
registry completely or not at all: every value is checked, and turned into
the object the balancer takes, before the first change is made. Errors are
:class:`~clientlb.ConfigError` with the dotted path a configuration file
would report (``services.users.strategy: unknown strategy 'x'; ...``), or
:class:`ActionError` for what is not a configuration mistake (no such
service: 404; a name already taken: 409).

The changes are those of :meth:`clientlb.Registry.update` that make sense
live — ``strategy``, ``weights``, ``retry``, ``health_check``,
``outlier_detection``, ``panic_threshold``, ``slow_start``, ``local_zone``,
``hedging`` —
plus create, delete, drain and undrain. Why the admin checks what
``Registry.update`` checks again: ``update`` validates some values only
when it applies them (``panic_threshold``, ``local_zone``), and a request
half-applied is worse than one refused.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from .._core.endpoint import Endpoint
from .._core.errors import ConfigError
from .._ops.config import balancer_options, option_value, parse_service, repath
from .._ops.registry import Registry

__all__ = [
    "DEFAULT_DELETE_TIMEOUT",
    "LIVE_OPTIONS",
    "MAX_BODY",
    "ActionError",
    "create_service",
    "decode",
    "delete_service",
    "delete_timeout",
    "no_service",
    "set_draining",
    "update_service",
    "valid_name",
]

#: Options a PATCH may change on a live balancer.
LIVE_OPTIONS = ("strategy", "weights", "retry", "health_check", "outlier_detection",
                "panic_threshold", "slow_start", "local_zone", "hedging")
_SECTIONS = ("retry", "health_check", "outlier_detection", "slow_start", "hedging")
#: The largest request body the API reads (bytes): a service table is a few hundred.
MAX_BODY = 64 * 1024
_MAX_DIGITS = 16
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
#: How long DELETE waits for in-flight calls by default, and at most (seconds).
DEFAULT_DELETE_TIMEOUT = 10.0
MAX_DELETE_TIMEOUT = 300.0


class ActionError(Exception):
    """A refused action that is not a configuration mistake: ``status`` 404 or 409."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def valid_name(name: object) -> bool:
    """Whether ``name`` may name a service created through the API (and be a URL segment)."""
    return isinstance(name, str) and bool(_NAME.match(name))


# -- decoding -----------------------------------------------------------------------------

def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_DIGITS:
        raise ValueError(f"integers have at most {_MAX_DIGITS} digits")
    return int(text)


def _no_constant(text: str) -> Any:
    raise ValueError(f"{text} is not a JSON number")


def decode(body: bytes) -> dict[str, Any]:
    """The JSON object of a request body (finite numbers, bounded integers only).

    Raises:
        ConfigError: not UTF-8, not JSON, not an object, a NaN or an infinity,
            an integer of more than 16 digits, or nested too deep.
    """
    try:
        data = json.loads(body.decode("utf-8"), parse_float=_finite_float,
                          parse_int=_bounded_int, parse_constant=_no_constant)
    except UnicodeDecodeError:
        raise ConfigError("the request body must be UTF-8 JSON") from None
    except RecursionError:
        raise ConfigError("the request body is nested too deeply") from None
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        raise ConfigError(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"the request body must be a JSON object, got "
                          f"{type(data).__name__}")
    return data


# -- actions ------------------------------------------------------------------------------

def create_service(registry: Registry, body: Mapping[str, Any]) -> str:
    """``POST /api/services``: ``{"name": ..., "target": ..., <a config file's service keys>}``.

    Returns the new service's name.
    """
    if "name" not in body:
        raise ConfigError("missing; the service's name, e.g. \"users\"", field="name")
    name = body["name"]
    if not valid_name(name):
        raise ConfigError(f"must be 1..64 letters, digits, '.', '_' or '-', starting with a "
                          f"letter or digit, got {_short(name)}", field="name")
    path = f"services.{name}"
    spec = {k: v for k, v in body.items() if k != "name"}
    service = parse_service(name, spec, path)
    if name in registry:
        raise ActionError(409, f"{path}: a service named {name!r} already exists; PATCH or "
                               "DELETE it")
    try:
        registry.create(name, service.target, **service.options)
    except ConfigError as exc:
        if "already exists" in str(exc):
            raise ActionError(409, f"{path}: a service named {name!r} already exists; PATCH "
                                   "or DELETE it") from None
        raise _under(exc, path) from None
    return str(name)


def update_service(registry: Registry, name: str, body: Mapping[str, Any]) -> list[str]:
    """``PATCH /api/services/{name}``: the changes of :meth:`Registry.update`, all or none.

    Returns the names of the options changed.
    """
    lb = _balancer(registry, name)
    path = f"services.{name}"
    allowed = ("weights", "target", "name", *balancer_options())
    changes: dict[str, Any] = {}
    for key, value in body.items():
        where = f"{path}.{key}"
        if key not in allowed:
            raise ConfigError(f"unknown key {key!r}; expected one of {', '.join(LIVE_OPTIONS)}",
                              field=where)
        if key not in LIVE_OPTIONS:
            raise ConfigError(f"cannot be changed on a live balancer; delete the service and "
                              f"create it again, or change one of {', '.join(LIVE_OPTIONS)}",
                              field=where)
        changes[key] = _live_value(key, value, where)
    if not changes:
        return []
    if lb is not _balancer(registry, name):  # deleted (and re-created) meanwhile: change nothing
        raise ActionError(409, f"{path}: the service was replaced meanwhile; try again")
    try:
        registry.update(name, **changes)
    except KeyError:
        raise ActionError(404, no_service(registry, name)) from None
    except ConfigError as exc:  # validated above: only a race could get here
        raise _under(exc, path) from None
    return sorted(changes)


def delete_service(registry: Registry, name: str, timeout: float) -> bool:
    """``DELETE /api/services/{name}``: refuse new calls, wait for those in flight, close.

    Returns True when every call in flight finished within ``timeout``.
    """
    _balancer(registry, name)
    return registry.delete(name, timeout=timeout)


def set_draining(registry: Registry, name: str, address: str, draining: bool) -> str:
    """``POST .../endpoints/{address}/drain|undrain``; returns the endpoint's state after."""
    lb = _balancer(registry, name)
    done = lb.drain(address) if draining else lb.undrain(address)
    if not done:
        raise ActionError(404, f"services.{name}: no endpoint {address!r}; the endpoints are "
                               f"{', '.join(ep.address for ep in lb.endpoints()) or 'none'}")
    row = lb.snapshot().by_address().get(address)
    return str(row.state) if row is not None else "unknown"


def delete_timeout(text: str | None) -> float:
    """The ``timeout`` query parameter of DELETE, in seconds (default 10, at most 300)."""
    if text is None:
        return DEFAULT_DELETE_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= MAX_DELETE_TIMEOUT:
        raise ConfigError(f"must be a number of seconds 0..{MAX_DELETE_TIMEOUT:g}, got "
                          f"{_short(text)}", field="timeout")
    return value


# -- helpers ------------------------------------------------------------------------------

def _balancer(registry: Registry, name: str) -> Any:
    try:
        return registry.get(name)
    except KeyError:
        raise ActionError(404, no_service(registry, name)) from None


def no_service(registry: Registry, name: str) -> str:
    """The 404 message: no such service, and the services there are."""
    known = ", ".join(registry.names()) or "none"
    return f"no service named {_short(name)} (services: {known})"


def _live_value(key: str, value: Any, where: str) -> Any:
    """The object ``Registry.update`` takes for ``key``, validated now."""
    if key == "strategy":
        return option_value(key, value, where)
    if key == "weights":
        return _weights(value, where)
    if key in _SECTIONS:
        if value is not None and not isinstance(value, (Mapping, bool)):
            raise ConfigError(f"must be a table of settings, true (defaults) or false/null "
                              f"(off), got {_kind(value)}", field=where)
        return option_value(key, value, where)
    if key == "panic_threshold":
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not 0 <= value <= 100:
            raise ConfigError(f"must be a number 0..100, got {_kind(value)}", field=where)
        return float(value)
    # local_zone
    if value is not None and (not isinstance(value, str) or not value or len(value) > 255):
        raise ConfigError(f"must be a non-empty string (at most 255 characters) or null, got "
                          f"{_kind(value)}", field=where)
    return value


def _weights(value: Any, where: str) -> dict[str, float | None]:
    if not isinstance(value, Mapping) or not value:
        raise ConfigError(f"must be a non-empty table of 'host:port' to weight, got "
                          f"{_kind(value)}", field=where)
    out: dict[str, float | None] = {}
    for address, weight in value.items():
        at = f"{where}.{address}"
        try:
            Endpoint.parse(address)
        except ConfigError as exc:
            raise ConfigError(f"not a 'host:port' address: {str(exc).split(': ', 1)[-1]}",
                              field=f"{where}.{_short(address)}") from None
        if weight is not None and (isinstance(weight, bool) or not isinstance(
                weight, (int, float)) or not math.isfinite(weight) or not 0 <= weight <= 1e9):
            raise ConfigError(f"weight must be a number 0..1e9, or null to restore "
                              f"discovery's weight, got {_kind(weight)}", field=at)
        out[address] = None if weight is None else float(weight)
    return out


def _under(exc: ConfigError, path: str) -> ConfigError:
    """``exc`` with its field under ``path``, unless it already is."""
    if exc.field and exc.field.startswith(path):
        return exc
    return repath(exc, path)


def _kind(value: object) -> str:
    return f"{type(value).__name__} {_short(value)}"


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "...'"

"""Configuration files: TOML or JSON (or a dict) into balancer options, strictly.

The format (TOML shown; JSON has the same shape)::

    telemetry = true                    # instrument every balancer (default true)

    [services.users]
    target = "dns:///users.internal:8080"
    strategy = "peak_ewma"              # or a table: { name = "ring_hash", ... }
    first_resolution_timeout = 2.0

    [services.users.health_check]       # clientlb.HealthCheck(**table); true = defaults
    path = "/healthz"
    interval = 5.0

    [services.users.outlier_detection]  # false turns it off
    consecutive_failures = 5

    [services.users.retry]              # clientlb.RetryPolicy(**table); false = no retries
    attempts = 3
    budget = { ratio = 0.2 }

    [services.users.hedging]            # clientlb.Hedging(**table); true = defaults
    max_extra_load = 0.05               # delay omitted: adaptive

    [services.users.subset]             # subsetting; false = every endpoint (the default)
    kind = "aperture"                   # clientlb.Aperture(**rest), or "random": RandomSubset
    peers = "consul:///web"             # or client_index/client_count, or the environment

``target`` may also be a list of ``"host:port"`` strings or of endpoint tables
(``{ host = "10.0.0.1", port = 80, weight = 2 }``).

Why strict: a misspelt key silently ignored is an outage waiting for the day
the setting matters (``healthcheck`` instead of ``health_check`` would run
with no active checks and no one would know). So every unknown key is an
error, and every error is a :class:`~clientlb.ConfigError` whose message
starts with the dotted path of the offending value
(``services.users.strategy: unknown strategy 'x'; choose one of ...``).

Sections map onto the public classes by name — ``health_check`` →
:class:`clientlb.HealthCheck`, ``outlier_detection`` →
:class:`clientlb.OutlierDetection`, ``retry`` → :class:`clientlb.RetryPolicy`,
``slow_start`` → ``clientlb.SlowStart``, ``hedging`` → :class:`clientlb.Hedging`,
``subset`` → ``clientlb.Aperture`` or ``clientlb.RandomSubset`` by its ``kind``
— and every other key to the
:class:`~clientlb.LoadBalancer` argument of the same name; a key the installed
version's ``LoadBalancer`` does not take is unknown. Nested tables build the
nested classes (``retry.budget`` → ``RetryBudget``), found from type hints.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import sys
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._core.endpoint import Endpoint
from .._core.errors import ConfigError
from .._core.target import parse_target
from .._strategies import STRATEGIES, Strategy
from .._subset.config import subset_option

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

__all__ = ["SECTION_CLASSES", "ServiceConfig", "load_config", "parse_config"]

#: Config section → the public class (looked up on ``clientlb``) it builds.
SECTION_CLASSES = {
    "health_check": "HealthCheck",
    "outlier_detection": "OutlierDetection",
    "retry": "RetryPolicy",
    "slow_start": "SlowStart",
    "hedging": "Hedging",
}
# LoadBalancer arguments that make no sense in a file.
_NOT_IN_FILES = frozenset({"self", "target", "name", "clock", "rng"})
_TOP_LEVEL = ("services", "telemetry")


@dataclasses.dataclass(frozen=True)
class ServiceConfig:
    """One validated service: its target and the keyword arguments of its balancer."""

    name: str
    target: str | list[str | Endpoint]
    options: dict[str, Any]


def load_config(source: Mapping[str, Any] | str | os.PathLike[str]) -> Mapping[str, Any]:
    """Read a TOML (``.toml``) or JSON (``.json``) file, or pass a mapping through."""
    if isinstance(source, Mapping):
        return source
    if not isinstance(source, (str, os.PathLike)):
        raise ConfigError(f"expected a mapping or the path of a .toml/.json file, got "
                          f"{source!r}")
    path = Path(source)
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".json"):
        raise ConfigError(f"{path}: unsupported file type {suffix or '(none)'!r}; "
                          "use .toml or .json")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        if suffix == ".toml":
            parsed: Any = tomllib.loads(data.decode("utf-8"))
        else:
            parsed = json.loads(data)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: invalid {suffix[1:].upper()}: {exc}") from None
    if not isinstance(parsed, Mapping):
        raise ConfigError(f"{path}: the top level must be a table/object, got "
                          f"{type(parsed).__name__}")
    return parsed


def parse_config(config: Mapping[str, Any]) -> tuple[list[ServiceConfig], bool]:
    """Validate a whole configuration: the services and the ``telemetry`` switch."""
    _unknown_keys(config, _TOP_LEVEL, "")
    telemetry = config.get("telemetry", True)
    if not isinstance(telemetry, bool):
        raise ConfigError(f"must be true or false, got {telemetry!r}", field="telemetry")
    services = config.get("services")
    if services is None:
        raise ConfigError("missing; a configuration lists its balancers under [services.NAME]",
                          field="services")
    if not isinstance(services, Mapping):
        raise ConfigError(f"must be a table of services, got {_kind(services)}",
                          field="services")
    return [parse_service(name, spec, f"services.{name}")
            for name, spec in services.items()], telemetry


def parse_service(name: str, spec: object, path: str) -> ServiceConfig:
    """Validate one service table into a :class:`ServiceConfig`."""
    if not isinstance(spec, Mapping):
        raise ConfigError(f"must be a table with at least a target, got {_kind(spec)}",
                          field=path)
    allowed = balancer_options()
    _unknown_keys(spec, ("target", *allowed), path)
    if "target" not in spec:
        raise ConfigError("missing; every service needs a target (e.g. 'dns:///name:port')",
                          field=f"{path}.target")
    target = _target(spec["target"], f"{path}.target")
    try:
        parse_target(target)  # syntax and scheme now, before any balancer exists
    except ConfigError as exc:
        raise repath(exc, f"{path}.target", "target") from None
    options: dict[str, Any] = {}
    for key, value in spec.items():
        if key == "target":
            continue
        options[key] = option_value(key, value, f"{path}.{key}")
    check_service(name, target, options, path)
    return ServiceConfig(name, target, options)


def check_service(name: str, target: object, options: Mapping[str, Any], path: str) -> None:
    """What ``LoadBalancer(target, name=name, **options)`` refuses, refused now, with
    the dotted path, by the balancer's own checks (nothing is started)."""
    from .._core.balancer import check_options

    try:
        check_options(target, name=name, **options)
    except ConfigError as exc:
        raise repath(exc, path) from None


def option_value(key: str, value: Any, path: str) -> Any:
    """Turn one config value into the object the ``LoadBalancer`` argument takes."""
    if key == "strategy":
        return _strategy(value, path)
    if key == "subset":
        return subset_option(value, path)
    class_name = SECTION_CLASSES.get(key)
    if class_name is None:
        return value
    cls = _public_class(class_name)
    if value is False or value is None:
        return None
    if cls is None:
        return value
    return build(cls, value, path, section=key)


def balancer_options() -> tuple[str, ...]:
    """The ``LoadBalancer`` keyword arguments a file may set (this version's)."""
    from .._core.balancer import LoadBalancer

    params = inspect.signature(LoadBalancer.__init__).parameters
    return tuple(p for p in params if p not in _NOT_IN_FILES
                 and params[p].kind is inspect.Parameter.KEYWORD_ONLY)


def build(cls: type[Any], value: Any, path: str, *, section: str | None = None) -> Any:
    """``cls(**value)`` with unknown keys, nested tables and errors named by ``path``."""
    if value is True:
        value = {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"must be a table of {cls.__name__} settings, true or false, "
                          f"got {_kind(value)}", field=path)
    params = _init_params(cls)
    _unknown_keys(value, params, path)
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for key, item in value.items():
        nested = _nested_class(hints.get(key)) if isinstance(item, Mapping) else None
        if nested is not None:
            kwargs[key] = build(nested, item, f"{path}.{key}",
                                section=f"{section}.{key}" if section else None)
        elif isinstance(item, list) and _wants_set(hints.get(key)):
            kwargs[key] = frozenset(item)
        else:
            kwargs[key] = item
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise repath(exc, path, section) from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc), field=path) from None


def repath(exc: ConfigError, path: str, section: str | None = None) -> ConfigError:
    """The same error, its field made absolute under ``path``.

    Classes name their own fields either bare (``"weight"``) or under their
    section (``"health_check.interval"``, ``"retry.budget.ratio"`` for the
    nested ``retry.budget``); both end up as
    ``services.users.health_check.interval``.
    """
    message = str(exc)
    field = exc.field
    if field and message.startswith(field + ": "):
        message = message[len(field) + 2:]
    if not field:
        full = path
    elif section and path.endswith(section) and (
            field == section or field.startswith(section + ".")):
        parent = path[:-len(section)].rstrip(".")  # a section names its fields from itself
        full = f"{parent}.{field}" if parent else field
    else:
        full = f"{path}.{field}"
    return ConfigError(message, field=full)


# -- helpers ------------------------------------------------------------------------------

def _target(value: object, path: str) -> str | list[str | Endpoint]:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value:
        out: list[str | Endpoint] = []
        for i, item in enumerate(value):
            if isinstance(item, str):
                out.append(item)
            elif isinstance(item, Mapping):
                out.append(build(Endpoint, item, f"{path}[{i}]"))
            else:
                raise ConfigError(f"must be 'host:port' or an endpoint table, got {_kind(item)}",
                                  field=f"{path}[{i}]")
        return out
    raise ConfigError(f"must be a target string or a non-empty list of endpoints, got "
                      f"{_kind(value)}", field=path)


def _strategy(value: object, path: str) -> str | Strategy:
    if isinstance(value, Strategy):  # from code (Registry.update), not from a file
        return value
    if isinstance(value, str):
        if value not in STRATEGIES:
            raise ConfigError(f"unknown strategy {value!r}; choose one of "
                              f"{', '.join(STRATEGIES)}", field=path)
        return value
    if isinstance(value, Mapping):
        name = value.get("name")
        if not isinstance(name, str) or name not in STRATEGIES:
            raise ConfigError(f"unknown strategy {name!r}; choose one of "
                              f"{', '.join(STRATEGIES)}", field=f"{path}.name")
        params = {k: v for k, v in value.items() if k != "name"}
        strategy: Strategy = build(STRATEGIES[name], params, path)
        return strategy
    raise ConfigError(f"must be a strategy name or a table with a name, got {_kind(value)}",
                      field=path)


def _public_class(name: str) -> type[Any] | None:
    import clientlb

    cls = getattr(clientlb, name, None)
    return cls if isinstance(cls, type) else None


def _init_params(cls: type[Any]) -> tuple[str, ...]:
    if dataclasses.is_dataclass(cls):
        return tuple(f.name for f in dataclasses.fields(cls) if f.init)
    params = inspect.signature(cls.__init__).parameters
    return tuple(n for n, p in params.items() if n != "self" and p.kind in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY))


def _hints(cls: type[Any]) -> dict[str, Any]:
    try:
        if dataclasses.is_dataclass(cls):
            return typing.get_type_hints(cls)
        return typing.get_type_hints(cls.__init__)
    except Exception:  # unresolvable annotations: no nested tables then
        return {}


def _nested_class(hint: Any) -> type[Any] | None:
    """The user class inside a hint such as ``RetryBudget | None``."""
    if hint is None:
        return None
    if isinstance(hint, type) and hint.__module__.startswith("clientlb"):
        return hint
    for arg in typing.get_args(hint):
        found = _nested_class(arg)
        if found is not None:
            return found
    return None


def _wants_set(hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (frozenset, set):
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_wants_set(a) for a in typing.get_args(hint))
    return False


def _unknown_keys(mapping: Mapping[str, Any], allowed: tuple[str, ...], path: str) -> None:
    for key in mapping:
        if key not in allowed:
            where = f"{path}.{key}" if path else str(key)
            raise ConfigError(f"unknown key {key!r}; expected one of {', '.join(allowed)}",
                              field=where)


def _kind(value: object) -> str:
    return f"{type(value).__name__} {value!r}"

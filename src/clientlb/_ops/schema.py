"""A JSON Schema of the configuration file, for editors (``clientlb config --schema``).

Built from the same introspection that reads a file (``_ops.config``): the
``LoadBalancer`` keyword arguments a file may set, the section classes and
their nested classes, the strategies and their parameters, with their types
and defaults from the signatures. So the schema cannot drift from what
``Registry.from_config`` accepts; it is a guide for completion and early
squiggles, and ``clientlb config`` remains the judge (value ranges, targets and
resolver options are checked there, not here). JSON Schema draft 2020-12.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from .._strategies import STRATEGIES
from .config import SECTION_CLASSES, _hints, _init_params, _public_class, balancer_options

__all__ = ["config_schema"]

_DRAFT = "https://json-schema.org/draft/2020-12/schema"
_SCALARS: dict[type, dict[str, Any]] = {
    bool: {"type": "boolean"}, int: {"type": "integer"}, float: {"type": "number"},
    str: {"type": "string"}, type(None): {"type": "null"},
}


def config_schema() -> dict[str, Any]:
    """The JSON Schema (a dict) of a clientlb TOML/JSON configuration file."""
    from .._core.balancer import LoadBalancer
    from .._core.endpoint import Endpoint

    hints = _hints(LoadBalancer)
    defaults = _defaults(LoadBalancer)
    service: dict[str, Any] = {
        "target": {
            "description": "static://, dns://, srv://, consul:// or etcd:// target, or a "
                           "list of 'host:port' strings and endpoint tables",
            "anyOf": [{"type": "string"}, {"type": "array", "minItems": 1, "items": {
                "anyOf": [{"type": "string"}, _object(Endpoint)]}}],
        },
    }
    for option in balancer_options():
        if option == "strategy":
            schema = _strategy()
        elif option in SECTION_CLASSES:
            cls = _public_class(SECTION_CLASSES[option])
            schema = {"anyOf": [{"type": "boolean"}, _object(cls)]} if cls else {}
        else:
            schema = _hint(hints.get(option))
        service[option] = _with_default(schema, defaults.get(option, inspect.Parameter.empty))
    return {
        "$schema": _DRAFT,
        "$id": "https://clientlb.invalid/config.schema.json",
        "title": "clientlb configuration",
        "description": "One [services.NAME] table per balancer (clientlb.Registry.from_config)",
        "type": "object",
        "additionalProperties": False,
        "required": ["services"],
        "properties": {
            "telemetry": {"type": "boolean", "default": True,
                          "description": "instrument every balancer with OpenTelemetry"},
            "services": {"type": "object", "additionalProperties": {
                "type": "object", "additionalProperties": False, "required": ["target"],
                "properties": service}},
        },
    }


def _strategy() -> dict[str, Any]:
    tables = [{**_object(cls, required=()), "properties": {
        "name": {"const": name}, **_object(cls)["properties"]}, "required": ["name"]}
        for name, cls in STRATEGIES.items()]
    return {"anyOf": [{"enum": list(STRATEGIES)}, *tables],
            "description": "a strategy name, or a table with its name and parameters"}


def _object(cls: type[Any], required: Sequence[str] | None = None) -> dict[str, Any]:
    """The table of ``cls(**table)``: its parameters, typed, with their defaults."""
    hints = _hints(cls)
    defaults = _defaults(cls)
    properties = {}
    for name in _init_params(cls):
        nested = _nested(hints.get(name))
        schema = _object(nested) if nested is not None else _hint(hints.get(name))
        if nested is not None and _optional(hints.get(name)):
            schema = {"anyOf": [schema, {"type": "null"}]}
        properties[name] = _with_default(schema, defaults.get(name, inspect.Parameter.empty))
    if required is None:
        required = [n for n in _init_params(cls) if defaults.get(n, None)
                    is inspect.Parameter.empty]
    out: dict[str, Any] = {"type": "object", "additionalProperties": False,
                           "properties": properties, "description": cls.__name__}
    if required:
        out["required"] = list(required)
    return out


def _defaults(cls: type[Any]) -> dict[str, Any]:
    if dataclasses.is_dataclass(cls):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                out[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                out[f.name] = f.default_factory()
            else:
                out[f.name] = inspect.Parameter.empty
        return out
    params = inspect.signature(cls.__init__).parameters
    return {n: p.default for n, p in params.items()}


def _with_default(schema: dict[str, Any], default: Any) -> dict[str, Any]:
    """``schema`` with its ``default`` when the value has a JSON form."""
    value = _json(default)
    return {**schema, "default": value} if value is not _NO_JSON else schema


_NO_JSON = object()


def _json(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (frozenset, set)):
        items = [_json(v) for v in value]
        return _NO_JSON if _NO_JSON in items else sorted(items, key=str)
    if isinstance(value, (list, tuple)):
        items = [_json(v) for v in value]
        return _NO_JSON if _NO_JSON in items else items
    return _NO_JSON  # an object (a policy instance, a callable): documented, not shown


def _nested(hint: Any) -> type[Any] | None:
    if isinstance(hint, type) and hint.__module__.startswith("clientlb"):
        return hint
    for arg in typing.get_args(hint):
        if isinstance(arg, type) and arg.__module__.startswith("clientlb"):
            return arg
    return None


def _optional(hint: Any) -> bool:
    return type(None) in typing.get_args(hint)


def _hint(hint: Any) -> dict[str, Any]:
    """JSON Schema for a type hint; ``{}`` (anything) for what JSON cannot hold."""
    if hint is None or hint is Any:
        return {}
    if hint in _SCALARS:
        return dict(_SCALARS[hint])
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Literal:
        return {"enum": list(args)}
    if origin is typing.Union or isinstance(hint, types.UnionType):
        # a branch JSON cannot hold (an SSLContext, a Strategy object) is left out
        parts = [p for p in (_hint(a) for a in args) if p]
        return {"anyOf": parts} if len(parts) > 1 else (parts[0] if parts else {})
    if isinstance(origin, type) and issubclass(origin, Mapping):
        return {"type": "object"}
    if isinstance(origin, type) and issubclass(origin, Collection) and origin is not str:
        return {"type": "array", "items": _hint(args[0]) if args else {}}
    return {}

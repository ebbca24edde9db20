"""The OpenAPI 3.1 document of the control API (``GET /api/openapi.json``).

Written by hand, next to the handlers it describes, rather than generated:
the API is small, and the document is the contract a script relies on.
A test checks that every route of the app appears here and nothing else.
"""

from __future__ import annotations

from typing import Any

from .. import __version__
from .._strategies import STRATEGIES
from ._control import DEFAULT_DELETE_TIMEOUT, LIVE_OPTIONS, MAX_DELETE_TIMEOUT

__all__ = ["openapi"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERROR = _json(_ref("Error"), "refused; `error` says why, `field` is the dotted path")
_ERRORS = {
    "400": _json(_ref("Error"), "invalid input: the ConfigError message and dotted path a "
                 "configuration file would get; nothing was changed"),
    "401": _json(_ref("Error"), "no token, or the wrong one"),
    "403": _json(_ref("Error"), "changes are disabled (no admin token configured)"),
    "404": _json(_ref("Error"), "no such service or endpoint"),
}
_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"},
         "description": "the service's name"}
_SECURED: list[dict[str, list[str]]] = [{"bearer": []}]


def openapi(root_path: str = "") -> dict[str, Any]:
    """The document; ``root_path`` is where the app is mounted (``servers[0].url``)."""
    service_table = {
        "type": "object",
        "description": "The same table as a configuration file's [services.NAME], plus its "
                       "name: target, strategy, health_check, outlier_detection, retry, "
                       "slow_start, panic_threshold, ... (docs/control.md).",
        "required": ["name", "target"],
        "properties": {
            "name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"},
            "target": {"oneOf": [{"type": "string"}, {"type": "array"}]},
            "strategy": {"oneOf": [{"type": "string", "enum": list(STRATEGIES)},
                                   {"type": "object"}]},
        },
        "additionalProperties": True,
    }
    changes = {
        "type": "object",
        "description": "The changes of Registry.update, validated together and applied all "
                       "or none: " + ", ".join(LIVE_OPTIONS) + ".",
        "properties": {
            "strategy": {"oneOf": [{"type": "string", "enum": list(STRATEGIES)},
                                   {"type": "object"}]},
            "weights": {"type": "object", "description": "'host:port' to a weight 0..1e9, "
                        "or null to restore discovery's weight",
                        "additionalProperties": {"type": ["number", "null"]}},
            "retry": {"type": ["object", "boolean", "null"]},
            "health_check": {"type": ["object", "boolean", "null"]},
            "outlier_detection": {"type": ["object", "boolean", "null"]},
            "slow_start": {"type": ["object", "boolean", "null"]},
            "panic_threshold": {"type": "number", "minimum": 0, "maximum": 100},
            "local_zone": {"type": ["string", "null"]},
            "hedging": {"type": ["object", "boolean", "null"],
                        "description": "clientlb.Hedging's fields (delay, max_attempts, "
                        "max_extra_load, methods, non_fatal_codes); true: the defaults; "
                        "false or null: no hedging"},
        },
        "additionalProperties": False,
    }
    endpoint = {
        "type": "object",
        "properties": {
            "address": {"type": "string"}, "host": {"type": "string"},
            "port": {"type": "integer"}, "zone": {"type": ["string", "null"]},
            "priority": {"type": "integer"}, "weight": {"type": ["number", "null"]},
            "effective_weight": {"type": ["number", "null"]},
            "state": {"type": "string",
                      "enum": ["healthy", "ejected", "unhealthy", "draining"]},
            "connectivity": {"type": "string",
                             "enum": ["idle", "connecting", "ready", "transient_failure"],
                             "description": "the last connection attempt's result; a "
                             "healthy endpoint in transient_failure is skipped"},
            "ejected_for": {"type": ["number", "null"],
                            "description": "seconds of ejection left"},
            "slow_start": {"type": "boolean"}, "in_flight": {"type": "integer"},
            "latency_ms": {"type": ["number", "null"], "description": "peak-EWMA estimate"},
            "requests": {"type": "integer"}, "failures": {"type": "integer"},
            "ejections": {"type": "integer"},
            "success_rate": {"type": ["number", "null"],
                             "description": "% over the last 10 s"},
            "share": {"type": ["number", "null"],
                      "description": "% of the service's requests over the last 10 s"},
            "note": {"type": "string", "description": "why it is in its state"},
        },
    }
    service = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "target": {"type": "string", "description": "secrets masked"},
            "scheme": {"type": "string"}, "strategy": {"type": "string"},
            "mode": {"type": "string",
                     "enum": ["normal", "panic", "empty", "waiting", "closed"]},
            "discovery": {"type": "object"}, "in_flight": {"type": "integer"},
            "hedging": {"type": ["object", "null"],
                        "description": "hedged requests since the first one could be hedged "
                        "(requests, sent, won, refused, probes, adaptive_delay_ms); null "
                        "before"},
            "endpoints": {"type": "array", "items": _ref("Endpoint")},
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "clientlb control room", "version": __version__,
                 "description": "Create, configure and delete the balancers of a running "
                                "process; drain and undrain endpoints. Every change needs "
                                "the bearer token."},
        "servers": [{"url": root_path or "/"}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"],
                          "properties": {"error": {"type": "string"},
                                         "field": {"type": ["string", "null"]}}},
                "Service": service,
                "Endpoint": endpoint,
                "ServiceTable": service_table,
                "Changes": changes,
            },
        },
        "paths": {
            "/api/services": {
                "get": {"summary": "Every service", "operationId": "listServices",
                        "responses": {"200": _json({"type": "object", "properties": {
                            "services": {"type": "array", "items": _ref("Service")}}},
                            "the services, by name"), "401": _ERRORS["401"]}},
                "post": {"summary": "Create a service", "operationId": "createService",
                         "security": _SECURED,
                         "requestBody": {"required": True, "content": {
                             "application/json": {"schema": _ref("ServiceTable")}}},
                         "responses": {"201": _json(_ref("Service"), "created"), **_ERRORS,
                                       "409": _json(_ref("Error"), "the name is taken"),
                                       "413": _ERROR, "415": _ERROR}},
            },
            "/api/services/{name}": {
                "parameters": [_NAME],
                "get": {"summary": "One service", "operationId": "getService",
                        "responses": {"200": _json(_ref("Service"), "the service"),
                                      "401": _ERRORS["401"], "404": _ERRORS["404"]}},
                "patch": {"summary": "Change a service live (Registry.update)",
                          "operationId": "updateService", "security": _SECURED,
                          "requestBody": {"required": True, "content": {
                              "application/json": {"schema": _ref("Changes")}}},
                          "responses": {"200": _json(_ref("Service"), "changed"), **_ERRORS,
                                        "413": _ERROR, "415": _ERROR}},
                "delete": {"summary": "Delete a service: refuse new calls, wait for those in "
                                      "flight, close", "operationId": "deleteService",
                           "security": _SECURED,
                           "parameters": [{"name": "timeout", "in": "query", "schema": {
                               "type": "number", "minimum": 0,
                               "maximum": MAX_DELETE_TIMEOUT,
                               "default": DEFAULT_DELETE_TIMEOUT},
                               "description": "seconds to wait for calls in flight"}],
                           "responses": {"200": _json({"type": "object", "properties": {
                               "deleted": {"type": "string"},
                               "drained": {"type": "boolean"}}},
                               "deleted; drained says whether every call finished in time"),
                               **_ERRORS}},
            },
            "/api/services/{name}/endpoints/{address}/{action}": {
                "parameters": [_NAME, {"name": "address", "in": "path", "required": True,
                                       "schema": {"type": "string"},
                                       "description": "host:port"},
                               {"name": "action", "in": "path", "required": True,
                                "schema": {"type": "string", "enum": ["drain", "undrain"]}}],
                "post": {"summary": "Drain an endpoint (calls in flight finish) or put it "
                                    "back", "operationId": "drainEndpoint",
                         "security": _SECURED,
                         "responses": {"200": _json({"type": "object", "properties": {
                             "service": {"type": "string"}, "address": {"type": "string"},
                             "state": {"type": "string"}}}, "done"), **_ERRORS}},
            },
            "/api/events": {
                "get": {"summary": "Server-sent events: every service, once a second",
                        "operationId": "events",
                        "responses": {"200": {"description": "event: state, data: "
                                              "{time, services}",
                                              "content": {"text/event-stream": {}}},
                                      "401": _ERRORS["401"]}},
            },
            "/api/openapi.json": {
                "get": {"summary": "This document", "operationId": "openapi",
                        "responses": {"200": {"description": "OpenAPI 3.1"}}},
            },
            "/metrics": {
                "get": {"summary": "clientlb's OpenTelemetry metrics, Prometheus text format",
                        "operationId": "metrics",
                        "responses": {"200": {"description": "text/plain; version=0.0.4"},
                                      "401": _ERRORS["401"]}},
            },
            "/healthz": {
                "get": {"summary": "Liveness", "operationId": "healthz",
                        "responses": {"200": {"description": "ok"}}},
            },
        },
    }

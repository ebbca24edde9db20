"""The control room: a live dashboard and an HTTP control API over a :class:`~clientlb.Registry`.

Operators already rely on HAProxy's stats page and Envoy's admin interface
to *see* a balancer and to act on it without a deployment; this is the same
for balancers that live inside a Python process. :func:`create_app` returns
an ASGI application (Starlette) that any ASGI framework can mount —
FastAPI, Starlette, Litestar — or that ``clientlb serve CONFIG`` runs on its
own with uvicorn::

    import clientlb
    from clientlb.admin import create_app

    registry = clientlb.Registry.from_config("clientlb.toml")
    app.mount("/lb", create_app(registry, token=os.environ["CLIENTLB_ADMIN_TOKEN"]))

It serves:

* ``/`` — the dashboard: every service (target, strategy, mode, discovery)
  and every endpoint (state, weight, in flight, latency, success rate,
  ejections, share of requests) with charts of the last minutes, live
  (server-sent events, one update a second), and the actions below;
* ``/api/...`` — the JSON control API behind the same actions, described by
  ``/api/openapi.json``;
* ``/metrics`` — the OpenTelemetry instruments in the Prometheus text format;
* ``/healthz`` — ``ok``.

Every change needs ``Authorization: Bearer <token>``; without a ``token``
changes are refused. Needs the ``admin`` extra: ``pip install 'clientlb[admin]'``.
See docs/control-room.md.
"""

from __future__ import annotations

try:
    import starlette as _starlette  # noqa: F401 - only to name the missing extra
except ImportError as exc:  # pragma: no cover - exercised without the extra only
    raise ImportError(
        "clientlb.admin needs Starlette and uvicorn: pip install 'clientlb[admin]'"
    ) from exc

from ._app import create_app

__all__ = ["create_app"]

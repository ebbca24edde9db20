"""The dashboard's HTML, rendered on the server: readable without JavaScript, no build step.

The page is complete as sent — every service, every endpoint, the charts
of the last minutes as inline SVG — and ``static/dashboard.js`` then keeps
it live from the event stream, with the same markup. Every value goes
through :func:`html.escape`; nothing inline runs (the Content-Security-Policy
forbids inline scripts and styles), so configuration reaches the script as
``data-`` attributes.

Accessibility: native buttons, forms and selects only (all usable by
keyboard, with a visible focus ring), a skip link, table captions and
scoped headers, ``aria-live`` for status and errors, and a layout that
turns each endpoint row into a card on narrow screens (dashboard.css).
"""

from __future__ import annotations

import html
from typing import Any

from .._strategies import STRATEGIES
from ._monitor import HISTORY

__all__ = ["chart_points", "render"]

CHART_WIDTH, CHART_HEIGHT = 120, 28
COLUMNS = ("Endpoint", "State", "Weight", "Effective", "In flight", "Latency", "Success",
           "Ejections", "Share", "Last 3 minutes", "Actions")


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def chart_points(values: list[float | None], top: float | None = None) -> str:
    """SVG ``points`` of a series, newest on the right, scaled to ``top`` (default: its max).

    The same formula is in dashboard.js (``points()``); a gap (None) is skipped.
    """
    known = [v for v in values if v is not None]
    if not known:
        return ""
    scale = top if top is not None else max(known)
    scale = scale or 1.0
    step = CHART_WIDTH / (HISTORY - 1)
    start = HISTORY - len(values)
    out = []
    for i, v in enumerate(values):
        if v is None:
            continue
        x = (start + i) * step
        y = CHART_HEIGHT - 1 - (CHART_HEIGHT - 2) * min(v, scale) / scale
        out.append(f"{x:.1f},{y:.1f}")
    return " ".join(out)


def _number(value: float | None, unit: str = "", digits: int = 1) -> str:
    if value is None:
        return "–"
    return f"{value:.{digits}f}{unit}"


#: What the state badge says of a healthy endpoint, by connectivity (the picker skips it
#: while its connection fails: clientlb._engine.connectivity).
_CONNECTIVITY = {"transient_failure": "unreachable", "connecting": "reconnecting"}


def badge(ep: dict[str, Any]) -> str:
    """The state to show: the health state, or for a healthy endpoint that cannot be
    connected to, ``unreachable``/``reconnecting``. The same rule is in dashboard.js."""
    state = str(ep["state"])
    if state == "healthy":
        return _CONNECTIVITY.get(str(ep.get("connectivity")), state)
    return state


def state_title(ep: dict[str, Any]) -> str:
    """The badge's tooltip: why the endpoint is in its state."""
    if ep.get("note"):
        return str(ep["note"])
    if badge(ep) == "unreachable":
        return UNREACHABLE
    return ""


UNREACHABLE = ("its last connection attempt failed: skipped while another endpoint can take "
               "the call, until a background probe connects")


def state_text(ep: dict[str, Any]) -> str:
    """``ejected (27 s left)``, ``healthy, slow start``, ``unreachable``, ``draining``..."""
    text = badge(ep)
    if ep["state"] == "ejected" and ep.get("ejected_for") is not None:
        text += f" ({ep['ejected_for']:.0f} s left)"
    if ep.get("slow_start"):
        text += ", slow start"
    return text


def discovery_text(d: dict[str, Any]) -> str:
    if d["kind"] == "static":
        return "static list"
    parts = [d["kind"]]
    if d.get("last_update_age") is not None:
        parts.append(f"answered {d['last_update_age']:.0f} s ago")
    else:
        parts.append("no answer yet")
    if d.get("last_error"):
        parts.append(f"last error: {d['last_error']}")
    return ", ".join(parts)


def _endpoint_row(service: str, ep: dict[str, Any]) -> str:
    addr = _e(ep["address"])
    chart = ep.get("chart") or {"share": [], "latency_ms": []}
    draining = ep["state"] == "draining"
    verb = "undrain" if draining else "drain"
    label = "Undrain" if draining else "Drain"
    return f"""<tr data-address="{addr}">
<th scope="row" data-label="Endpoint">{addr}</th>
<td data-label="State"><span class="state state-{_e(badge(ep))}" title="{_e(state_title(ep))}">{_e(state_text(ep))}</span></td>
<td data-label="Weight"><form class="weight-form" data-service="{_e(service)}" data-address="{addr}">
<input name="weight" type="text" inputmode="decimal" size="5" value="{_e(ep['weight'])}" aria-label="Weight of {addr}">
<button type="submit">Set</button></form></td>
<td data-label="Effective" class="num f-effective">{_number(ep['effective_weight'], digits=2)}</td>
<td data-label="In flight" class="num f-in-flight">{_e(ep['in_flight'])}</td>
<td data-label="Latency" class="num f-latency">{_number(ep['latency_ms'], ' ms')}</td>
<td data-label="Success" class="num f-success">{_number(ep['success_rate'], ' %')}</td>
<td data-label="Ejections" class="num f-ejections">{_e(ep['ejections'])}</td>
<td data-label="Share" class="num f-share">{_number(ep['share'], ' %')}</td>
<td data-label="Last 3 minutes" class="trend">{_charts(chart)}</td>
<td data-label="Actions"><button type="button" class="drain" data-service="{_e(service)}" data-address="{addr}" data-action="{verb}">{label}</button></td>
</tr>"""


def _charts(chart: dict[str, list[float | None]]) -> str:
    share = chart.get("share") or []
    latency = chart.get("latency_ms") or []
    last_share = next((v for v in reversed(share) if v is not None), None)
    last_latency = next((v for v in reversed(latency) if v is not None), None)
    return (
        f'<svg class="spark spark-share" viewBox="0 0 {CHART_WIDTH} {CHART_HEIGHT}" '
        f'role="img" aria-label="share of requests, now {_number(last_share, " %")}">'
        f'<title>share of requests (0–100 %), last 3 minutes</title>'
        f'<polyline points="{chart_points(share, 100.0)}"/></svg>'
        f'<svg class="spark spark-latency" viewBox="0 0 {CHART_WIDTH} {CHART_HEIGHT}" '
        f'role="img" aria-label="latency, now {_number(last_latency, " ms")}">'
        f'<title>latency estimate (ms), last 3 minutes</title>'
        f'<polyline points="{chart_points(latency)}"/></svg>'
    )


def _service(svc: dict[str, Any]) -> str:
    name = _e(svc["name"])
    options = "".join(
        f'<option value="{_e(s)}"{" selected" if s == svc["strategy"] else ""}>{_e(s)}</option>'
        for s in STRATEGIES)
    rows = "\n".join(_endpoint_row(svc["name"], ep) for ep in svc["endpoints"])
    return f"""<section class="service" id="service-{name}" data-service="{name}" aria-labelledby="title-{name}">
<header class="service-head">
<h2 id="title-{name}">{name}</h2>
<span class="mode mode-{_e(svc['mode'])}">{_e(svc['mode'])}</span>
</header>
<dl class="facts">
<div><dt>Target</dt><dd class="f-target">{_e(svc['target'])}</dd></div>
<div><dt>Strategy</dt><dd class="f-strategy">{_e(svc['strategy'])}</dd></div>
<div><dt>Discovery</dt><dd class="f-discovery">{_e(discovery_text(svc['discovery']))}</dd></div>
<div><dt>In flight</dt><dd class="f-service-in-flight">{_e(svc['in_flight'])}</dd></div>
</dl>
<div class="controls">
<form class="strategy-form" data-service="{name}">
<label>Strategy <select name="strategy">{options}</select></label>
<button type="submit">Switch</button>
</form>
<button type="button" class="delete danger" data-service="{name}">Delete service</button>
</div>
<div class="table-wrap" tabindex="0" role="region" aria-label="Endpoints of {name}">
<table class="endpoints">
<caption>Endpoints of {name}</caption>
<thead><tr>{''.join(f'<th scope="col">{c}</th>' for c in COLUMNS)}</tr></thead>
<tbody>
{rows}
</tbody>
</table>
</div>
</section>"""


def render(services: list[dict[str, Any]] | None, *, base: str, changes_enabled: bool,
           read_requires_token: bool) -> str:
    """The whole page; ``services`` None means "not allowed to read without the token"."""
    if services is None:
        body = ('<p class="empty" id="no-data">This control room needs the admin token to '
                'show its services: enter it above.</p>')
    elif not services:
        body = '<p class="empty" id="no-data">No service yet: create one below.</p>'
    else:
        body = "\n".join(_service(s) for s in services)
    if changes_enabled:
        access = "Changes need the admin token."
    else:
        access = ("Read-only: no admin token is configured (set CLIENTLB_ADMIN_TOKEN or use "
                  "--token-file to allow changes).")
    options = "".join(f'<option value="{_e(s)}"{" selected" if s == "peak_ewma" else ""}>'
                      f'{_e(s)}</option>' for s in STRATEGIES)
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<link rel="icon" href="data:,">
<title>clientlb control room</title>
<link rel="stylesheet" href="{_e(base)}/static/dashboard.css">
<script src="{_e(base)}/static/dashboard.js" defer></script>
</head>
<body data-base="{_e(base)}" data-changes="{'on' if changes_enabled else 'off'}" data-read-token="{'on' if read_requires_token else 'off'}">
<a class="skip" href="#services">Skip to the services</a>
<header class="top">
<h1>clientlb control room</h1>
<p class="live"><span id="live-status" class="live-off" role="status">not live</span></p>
<form id="token-form" autocomplete="off">
<label for="token">Admin token</label>
<input id="token" name="token" type="password" autocomplete="off" spellcheck="false">
<button type="submit">Use</button>
<span id="token-status" class="hint">{_e(access)}</span>
</form>
</header>
<div id="message" class="message" role="alert" aria-live="assertive"></div>
<main id="services" tabindex="-1">
{body}
</main>
<section class="create" aria-labelledby="create-title">
<h2 id="create-title">Create a service</h2>
<form id="create-form">
<label>Name <input name="name" required placeholder="users"></label>
<label>Target <input name="target" required placeholder="static://127.0.0.1:8001,127.0.0.1:8002" size="40"></label>
<label>Strategy <select name="strategy">{options}</select></label>
<button type="submit">Create</button>
</form>
</section>
<footer><a href="{_e(base)}/api/openapi.json">API (OpenAPI)</a> · <a href="{_e(base)}/metrics">metrics</a></footer>
</body>
</html>
"""

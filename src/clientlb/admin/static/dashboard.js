// clientlb control room: keeps the server-rendered page live and sends the actions.
//
// No framework and no build step. Live updates come from /api/events
// (server-sent events), read with fetch() rather than EventSource so that the
// admin token can travel in the Authorization header (no cookie, no session).
// The token lives in this page's memory only. Every value is written with
// textContent or setAttribute, never as HTML.
"use strict";

(() => {
  const HISTORY = 180;
  const W = 120;
  const H = 28;
  const SVG = "http://www.w3.org/2000/svg";
  const body = document.body;
  const base = body.dataset.base || "";
  const changesEnabled = body.dataset.changes === "on";
  const container = document.getElementById("services");
  const liveStatus = document.getElementById("live-status");
  const message = document.getElementById("message");
  const tokenStatus = document.getElementById("token-status");
  const COLUMNS = ["Endpoint", "State", "Weight", "Effective", "In flight", "Latency",
    "Success", "Ejections", "Share", "Last 3 minutes", "Actions"];
  let strategies = [];
  let token = "";
  let stream = null;

  // -- helpers ------------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== null && v !== undefined && v !== false) node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const child of children) {
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function fmt(value, unit, digits) {
    if (value === null || value === undefined) return "–";
    return Number(value).toFixed(digits === undefined ? 1 : digits) + (unit || "");
  }

  // Same rule as _page.badge(): a healthy endpoint whose connection fails is skipped.
  const CONNECTIVITY = { transient_failure: "unreachable", connecting: "reconnecting" };

  const UNREACHABLE = "its last connection attempt failed: skipped while another endpoint can "
    + "take the call, until a background probe connects";

  function badge(ep) {
    if (ep.state === "healthy") return CONNECTIVITY[ep.connectivity] || ep.state;
    return ep.state;
  }

  function stateText(ep) {
    let text = badge(ep);
    if (ep.state === "ejected" && ep.ejected_for !== null) text += ` (${Math.round(ep.ejected_for)} s left)`;
    if (ep.slow_start) text += ", slow start";
    return text;
  }

  function discoveryText(d) {
    if (d.kind === "static") return "static list";
    const parts = [d.kind];
    parts.push(d.last_update_age !== null ? `answered ${Math.round(d.last_update_age)} s ago` : "no answer yet");
    if (d.last_error) parts.push(`last error: ${d.last_error}`);
    return parts.join(", ");
  }

  // Same formula as _page.chart_points().
  function points(values, top) {
    const known = values.filter((v) => v !== null);
    if (!known.length) return "";
    const scale = (top !== undefined ? top : Math.max(...known)) || 1;
    const step = W / (HISTORY - 1);
    const start = HISTORY - values.length;
    const out = [];
    values.forEach((v, i) => {
      if (v === null) return;
      const x = (start + i) * step;
      const y = H - 1 - (H - 2) * Math.min(v, scale) / scale;
      out.push(`${x.toFixed(1)},${y.toFixed(1)}`);
    });
    return out.join(" ");
  }

  function lastOf(values) {
    for (let i = values.length - 1; i >= 0; i--) if (values[i] !== null) return values[i];
    return null;
  }

  function say(text, kind) {
    message.textContent = text;
    message.className = "message " + (kind || "");
  }

  function setLive(text, ok) {
    liveStatus.textContent = text;
    liveStatus.className = ok ? "live-on" : "live-off";
  }

  function headers(json) {
    const h = {};
    if (token) h.Authorization = "Bearer " + token;
    if (json) h["Content-Type"] = "application/json";
    return h;
  }

  async function call(method, path, payload) {
    const options = { method, headers: headers(payload !== undefined), cache: "no-store" };
    if (payload !== undefined) options.body = JSON.stringify(payload);
    const response = await fetch(base + path, options);
    let data = null;
    try { data = await response.json(); } catch (e) { data = null; }
    if (!response.ok) {
      throw new Error(data && data.error ? data.error : `${response.status} ${response.statusText}`);
    }
    return data;
  }

  // -- rendering (the same markup as _page.py) -------------------------------------------

  function chart(kind, values, top, label, unit) {
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("class", `spark spark-${kind}`);
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", `${label}, now ${fmt(lastOf(values), unit)}`);
    const title = document.createElementNS(SVG, "title");
    title.textContent = kind === "share" ? "share of requests (0–100 %), last 3 minutes"
      : "latency estimate (ms), last 3 minutes";
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("points", points(values, top));
    svg.append(title, line);
    return svg;
  }

  function newRow(service, ep) {
    const tr = el("tr", { "data-address": ep.address });
    tr.append(el("th", { scope: "row", "data-label": "Endpoint" }, ep.address));
    tr.append(el("td", { "data-label": "State" }, el("span", { class: "state" })));
    const form = el("form", { class: "weight-form", "data-service": service, "data-address": ep.address },
      el("input", { name: "weight", type: "text", inputmode: "decimal", size: 5, value: ep.weight,
        "aria-label": `Weight of ${ep.address}` }),
      el("button", { type: "submit" }, "Set"));
    tr.append(el("td", { "data-label": "Weight" }, form));
    for (const [label, cls] of [["Effective", "f-effective"], ["In flight", "f-in-flight"],
      ["Latency", "f-latency"], ["Success", "f-success"], ["Ejections", "f-ejections"],
      ["Share", "f-share"]]) {
      tr.append(el("td", { "data-label": label, class: "num " + cls }));
    }
    tr.append(el("td", { "data-label": "Last 3 minutes", class: "trend" }));
    tr.append(el("td", { "data-label": "Actions" },
      el("button", { type: "button", class: "drain", "data-service": service, "data-address": ep.address })));
    return tr;
  }

  function updateRow(tr, ep) {
    const state = tr.querySelector(".state");
    state.className = `state state-${badge(ep)}`;
    state.textContent = stateText(ep);
    state.title = ep.note || (badge(ep) === "unreachable" ? UNREACHABLE : "");
    const input = tr.querySelector("input[name=weight]");
    if (document.activeElement !== input && !input.dataset.dirty) input.value = ep.weight === null ? "" : ep.weight;
    tr.querySelector(".f-effective").textContent = fmt(ep.effective_weight, "", 2);
    tr.querySelector(".f-in-flight").textContent = ep.in_flight;
    tr.querySelector(".f-latency").textContent = fmt(ep.latency_ms, " ms");
    tr.querySelector(".f-success").textContent = fmt(ep.success_rate, " %");
    tr.querySelector(".f-ejections").textContent = ep.ejections;
    tr.querySelector(".f-share").textContent = fmt(ep.share, " %");
    const c = ep.chart || { share: [], latency_ms: [] };
    tr.querySelector(".trend").replaceChildren(
      chart("share", c.share, 100, "share of requests", " %"),
      chart("latency", c.latency_ms, undefined, "latency", " ms"));
    const button = tr.querySelector("button.drain");
    const draining = ep.state === "draining";
    button.dataset.action = draining ? "undrain" : "drain";
    button.textContent = draining ? "Undrain" : "Drain";
  }

  function newSection(svc) {
    const name = svc.name;
    const section = el("section", { class: "service", id: `service-${name}`, "data-service": name,
      "aria-labelledby": `title-${name}` });
    section.append(el("header", { class: "service-head" },
      el("h2", { id: `title-${name}` }, name), el("span", { class: "mode" })));
    const facts = el("dl", { class: "facts" });
    for (const [label, cls] of [["Target", "f-target"], ["Strategy", "f-strategy"],
      ["Discovery", "f-discovery"], ["In flight", "f-service-in-flight"]]) {
      facts.append(el("div", {}, el("dt", {}, label), el("dd", { class: cls })));
    }
    section.append(facts);
    const select = el("select", { name: "strategy" });
    for (const s of strategies) select.append(el("option", { value: s, selected: s === svc.strategy }, s));
    section.append(el("div", { class: "controls" },
      el("form", { class: "strategy-form", "data-service": name },
        el("label", {}, "Strategy ", select), el("button", { type: "submit" }, "Switch")),
      el("button", { type: "button", class: "delete danger", "data-service": name }, "Delete service")));
    const head = el("tr", {});
    for (const c of COLUMNS) head.append(el("th", { scope: "col" }, c));
    section.append(el("div", { class: "table-wrap", tabindex: 0, role: "region", "aria-label": `Endpoints of ${name}` },
      el("table", { class: "endpoints" }, el("caption", {}, `Endpoints of ${name}`),
        el("thead", {}, head), el("tbody", {}))));
    return section;
  }

  function updateSection(section, svc) {
    const mode = section.querySelector(".mode");
    mode.className = `mode mode-${svc.mode}`;
    mode.textContent = svc.mode;
    section.querySelector(".f-target").textContent = svc.target;
    section.querySelector(".f-strategy").textContent = svc.strategy;
    section.querySelector(".f-discovery").textContent = discoveryText(svc.discovery);
    section.querySelector(".f-service-in-flight").textContent = svc.in_flight;
    const select = section.querySelector("select[name=strategy]");
    if (document.activeElement !== select && !select.dataset.dirty) select.value = svc.strategy;
    const tbody = section.querySelector("tbody");
    const seen = new Set();
    let previous = null;
    for (const ep of svc.endpoints) {
      seen.add(ep.address);
      let tr = [...tbody.children].find((row) => row.dataset.address === ep.address);
      if (!tr) tr = newRow(svc.name, ep);
      updateRow(tr, ep);
      const expected = previous ? previous.nextSibling : tbody.firstChild;
      if (tr !== expected) tbody.insertBefore(tr, expected);
      previous = tr;
    }
    for (const row of [...tbody.children]) if (!seen.has(row.dataset.address)) row.remove();
  }

  function render(data) {
    const seen = new Set();
    let previous = null;
    for (const svc of data.services) {
      seen.add(svc.name);
      let section = document.getElementById(`service-${svc.name}`);
      if (!section || section.tagName !== "SECTION") section = newSection(svc);
      updateSection(section, svc);
      const expected = previous ? previous.nextSibling : container.firstChild;
      if (section !== expected) container.insertBefore(section, expected);
      previous = section;
    }
    for (const node of [...container.children]) {
      if (node.matches("section.service") && !seen.has(node.dataset.service)) node.remove();
    }
    const empty = document.getElementById("no-data");
    if (data.services.length && empty) empty.remove();
    if (!data.services.length && !empty) {
      container.append(el("p", { class: "empty", id: "no-data" }, "No service yet: create one below."));
    }
    body.dataset.updated = String(data.time);
  }

  // -- live updates --------------------------------------------------------------------

  async function live(controller) {
    while (!controller.signal.aborted) {
      try {
        const response = await fetch(base + "/api/events", { headers: headers(false), cache: "no-store",
          signal: controller.signal });
        if (response.status === 401) {
          setLive("enter the token to see live data", false);
          return;
        }
        if (!response.ok || !response.body) throw new Error(String(response.status));
        setLive("live", true);
        const reader = response.body.getReader();
        const decoder = new TextDecoder();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += decoder.decode(value, { stream: true });
          let cut;
          while ((cut = buffer.indexOf("\n\n")) >= 0) {
            const event = buffer.slice(0, cut);
            buffer = buffer.slice(cut + 2);
            const data = event.split("\n").filter((l) => l.startsWith("data:"))
              .map((l) => l.slice(5).trimStart()).join("\n");
            if (data) render(JSON.parse(data));
          }
        }
      } catch (e) {
        if (controller.signal.aborted) return;
      }
      setLive("reconnecting…", false);
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }

  function restartLive() {
    if (stream) stream.abort();
    stream = new AbortController();
    live(stream);
  }

  // -- actions -------------------------------------------------------------------------

  async function act(description, method, path, payload, field) {
    if (!changesEnabled) {
      say("Read-only: no admin token is configured on the server.", "error");
      return false;
    }
    if (!token) {
      say("Enter the admin token first (top of the page).", "error");
      document.getElementById("token").focus();
      return false;
    }
    try {
      await call(method, path, payload);
      say(`${description}: done.`, "ok");
      if (field) field.removeAttribute("aria-invalid");
      return true;
    } catch (e) {
      say(`${description}: ${e.message}`, "error");
      if (field) field.setAttribute("aria-invalid", "true");
      return false;
    }
  }

  const enc = encodeURIComponent;

  document.addEventListener("submit", async (event) => {
    const form = event.target;
    if (!(form instanceof HTMLFormElement)) return;
    event.preventDefault();
    if (form.id === "token-form") {
      token = document.getElementById("token").value.trim();
      tokenStatus.textContent = token ? "Token set for this page (not stored)." : "No token.";
      restartLive();
      return;
    }
    if (form.id === "create-form") {
      const data = new FormData(form);
      const ok = await act(`create ${data.get("name")}`, "POST", "/api/services",
        { name: data.get("name"), target: data.get("target"), strategy: data.get("strategy") });
      if (ok) form.reset();
      return;
    }
    const service = form.dataset.service;
    if (form.classList.contains("weight-form")) {
      const input = form.querySelector("input[name=weight]");
      const text = input.value.trim();
      const number = Number(text);
      const weight = text === "" ? null : (Number.isFinite(number) ? number : text);
      const address = form.dataset.address;
      const ok = await act(`weight of ${address}`, "PATCH", `/api/services/${enc(service)}`,
        { weights: { [address]: weight } }, input);
      if (ok) delete input.dataset.dirty;
      return;
    }
    if (form.classList.contains("strategy-form")) {
      const select = form.querySelector("select");
      const ok = await act(`strategy of ${service}`, "PATCH", `/api/services/${enc(service)}`,
        { strategy: select.value }, select);
      if (ok) delete select.dataset.dirty;
    }
  });

  document.addEventListener("input", (event) => {
    const target = event.target;
    if (target instanceof HTMLElement && target.closest(".weight-form, .strategy-form")) {
      target.dataset.dirty = "1";
    }
  });

  document.addEventListener("click", async (event) => {
    const button = event.target instanceof Element ? event.target.closest("button") : null;
    if (!button) return;
    const service = button.dataset.service;
    if (button.classList.contains("drain")) {
      const address = button.dataset.address;
      const verb = button.dataset.action;
      await act(`${verb} ${address}`, "POST",
        `/api/services/${enc(service)}/endpoints/${enc(address)}/${verb}`);
    } else if (button.classList.contains("delete")) {
      if (!window.confirm(`Delete the service ${service}? New calls are refused at once; calls in flight finish.`)) return;
      await act(`delete ${service}`, "DELETE", `/api/services/${enc(service)}`);
    }
  });

  document.addEventListener("DOMContentLoaded", () => {
    strategies = [...document.querySelectorAll("#create-form select[name=strategy] option")].map((o) => o.value);
    restartLive();
  });
})();

// Shared by the fleet, host and rollouts pages: API calls with the login cookie, formatting.
"use strict";

const fp = (() => {
  class Unauthorized extends Error {}

  function toLogin() {
    const here = location.pathname + location.search;
    location.assign("/login?next=" + encodeURIComponent(here));
  }

  // GET a JSON endpoint of this server; the fleetpulse_key cookie goes along (same origin).
  async function getJSON(path, params, signal) {
    const url = new URL(path, location.origin);
    for (const [key, value] of params || []) {
      if (value !== undefined && value !== null && value !== "") url.searchParams.append(key, value);
    }
    const response = await fetch(url, {
      credentials: "same-origin",
      headers: { Accept: "application/json" },
      signal,
    });
    if (response.status === 401) {
      toLogin();
      throw new Unauthorized("not logged in");
    }
    if (!response.ok) {
      let detail = response.statusText;
      try {
        const body = await response.json();
        detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
      } catch (_) {
        /* not JSON */
      }
      throw new Error(`${response.status} ${detail}`);
    }
    return { body: await response.json(), headers: response.headers };
  }

  // A number the charts and the table may show: null for null, NaN, ±Infinity and non-numbers.
  function finite(value) {
    return typeof value === "number" && Number.isFinite(value) ? value : null;
  }

  function percent(value) {
    const v = finite(value);
    return v === null ? "—" : `${v.toFixed(1)} %`;
  }

  const UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  function bytes(value, suffix = "") {
    let v = finite(value);
    if (v === null) return "—";
    let unit = 0;
    while (Math.abs(v) >= 1024 && unit < UNITS.length - 1) {
      v /= 1024;
      unit += 1;
    }
    const digits = Number.isInteger(v) || Math.abs(v) >= 100 ? 0 : Math.abs(v) >= 10 ? 1 : 2;
    return `${v.toFixed(digits)} ${UNITS[unit]}${suffix}`;
  }

  function parseTime(value) {
    if (value === null || value === undefined) return null;
    const ms = typeof value === "number" ? value * 1000 : Date.parse(value);
    return Number.isFinite(ms) ? ms : null;
  }

  // "12 s ago", "3 min ago", "2 h ago", "5 d ago"; "never" without a time.
  function ago(value, now = Date.now()) {
    const ms = parseTime(value);
    if (ms === null) return "never";
    const s = Math.max(0, Math.round((now - ms) / 1000));
    if (s < 60) return `${s} s ago`;
    if (s < 3600) return `${Math.floor(s / 60)} min ago`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
    return `${Math.floor(s / 86400)} d ago`;
  }

  // A moment as a reader scans for it: "04:12" today, "3 Dec 04:12" before; "" without a time.
  function clock(value, now = Date.now()) {
    const ms = parseTime(value);
    if (ms === null) return "";
    const at = new Date(ms);
    const time = at.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    if (at.toDateString() === new Date(now).toDateString()) return time;
    return `${at.toLocaleDateString([], { day: "numeric", month: "short" })} ${time}`;
  }

  function absolute(value) {
    const ms = parseTime(value);
    return ms === null ? "" : new Date(ms).toLocaleString();
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  // The page's error line (#error): shown with a message, hidden with none.
  function showError(message) {
    const line = document.getElementById("error");
    line.hidden = !message;
    line.textContent = message || "";
  }

  // The "refreshed at" stamp (#refreshed-at); data-refreshes counts them for the browser tests.
  let refreshes = 0;
  function markRefreshed() {
    refreshes += 1;
    const stamp = document.getElementById("refreshed-at");
    const now = new Date();
    stamp.textContent = now.toLocaleTimeString();
    stamp.dateTime = now.toISOString();
    stamp.dataset.refreshes = String(refreshes);
  }

  // Keeps a page fresh: load(signal) now and again `everyMs` after each load ends. A newer refresh
  // aborts the one under way; a load that started a newer refresh itself marks nothing. A hidden
  // tab does not poll; coming back shows fresh data at once. Returns refresh, to call on a change.
  function poll(everyMs, load) {
    let inflight = null;
    let timer = null;
    async function refresh() {
      clearTimeout(timer);
      if (inflight) inflight.abort();
      const controller = new AbortController();
      inflight = controller;
      try {
        await load(controller.signal);
        if (inflight !== controller) return;
        showError(null);
        markRefreshed();
      } catch (err) {
        if (err.name === "AbortError" || err instanceof Unauthorized) return;
        showError(`Could not refresh: ${err.message}`);
      } finally {
        if (inflight === controller) {
          inflight = null;
          timer = setTimeout(refresh, everyMs);
        }
      }
    }
    document.addEventListener("visibilitychange", () => {
      if (document.hidden) {
        clearTimeout(timer);
        const pending = inflight;
        inflight = null;
        if (pending) pending.abort();
      } else {
        refresh();
      }
    });
    return refresh;
  }

  // Firing alerts (Prometheus' /api/v1/alerts), those of one agent when `agentId` is given.
  async function firingAlerts(signal, agentId) {
    const { body } = await getJSON("/api/v1/alerts", [], signal);
    return body.data.alerts.filter(
      (a) => a.state === "firing" && (agentId === undefined || a.labels.agent_id === agentId),
    );
  }

  // The alert list of a page: #alerts (hidden when nothing fires), its count and its items, most
  // severe first. At most `limit` are listed; the count says how many fire.
  const SEVERITY = { critical: 0, warning: 1, info: 2 };
  function renderAlerts(alerts, { limit = 50, linkAgents = true } = {}) {
    const section = document.getElementById("alerts");
    section.hidden = alerts.length === 0;
    document.getElementById("alert-count").textContent = String(alerts.length);
    const rank = (a) => SEVERITY[a.labels.severity] ?? 3;
    const sorted = [...alerts].sort(
      (a, b) => rank(a) - rank(b) || a.labels.alertname.localeCompare(b.labels.alertname),
    );
    const items = sorted.slice(0, limit).map((a) => {
      const agent = a.labels.agent_id;
      const where = !agent
        ? null
        : linkAgents
          ? el("a", { href: `/ui/host?agent=${encodeURIComponent(agent)}` }, agent)
          : null;
      return el(
        "li",
        { class: `alert severity-${a.labels.severity || "none"}`, "data-alertname": a.labels.alertname },
        el("span", { class: "badge" }, a.labels.severity || "alert"),
        el("strong", {}, a.labels.alertname),
        where ? " · " : null,
        where,
        " · ",
        el("span", { class: "alert-summary" }, a.annotations.summary || ""),
        el("span", { class: "muted", title: absolute(a.activeAt) }, ` since ${ago(a.activeAt)}`),
      );
    });
    if (sorted.length > limit) items.push(el("li", { class: "muted" }, `and ${sorted.length - limit} more`));
    document.getElementById("alert-list").replaceChildren(...items);
  }

  return {
    Unauthorized, getJSON, finite, percent, bytes, ago, clock, absolute, parseTime, el,
    showError, markRefreshed, poll, firingAlerts, renderAlerts,
  };
})();

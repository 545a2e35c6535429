// The host page: one agent's header and its CPU, memory, disk and network charts (uPlot).
"use strict";

(() => {
  const params = new URLSearchParams(location.search);
  const agentId = params.get("agent");
  // Range (seconds) → query step (seconds): a few hundred to ~1,500 points per series.
  const STEPS = { 900: 5, 3600: 10, 21600: 60, 86400: 60, 604800: 3600 };
  const DEFAULT_RANGE = 3600;
  const REFRESH_MS = 10000;
  // The x axis of a young agent is at least this many steps wide (see axisStart).
  const MIN_AXIS_STEPS = 10;
  const COLORS = [
    "#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2",
    "#db2777", "#65a30d", "#9333ea", "#ea580c", "#0d9488", "#4b5563",
  ];
  const CPU_ORDER = ["user", "system", "iowait", "steal", "nice", "irq", "softirq", "guest", "guest_nice", "idle"];
  const MEMORY_ORDER = ["total", "used", "available", "cached", "buffers"];

  const $ = (id) => document.getElementById(id);
  let range = Number(params.get("range")) in STEPS ? Number(params.get("range")) : DEFAULT_RANGE;
  let collectIntervalS = 0;
  let createdS = null; // when the agent first registered (Unix seconds)
  let timer = null;
  let generation = 0;
  // The time range queried, [start, end), and the x axis on show from `shown` (axisStart), the
  // same for every chart (their x axes line up, and the cursor syncs).
  let view = { start: 0, end: 0, shown: 0 };
  // chart name → { plot, key } (key: the series' labels and colours, to reuse the plot)
  const plots = new Map();
  const loadedSeries = new Map(); // chart name → its series as last loaded, to redraw without a fetch
  const idleShown = new Set(); // names of the charts whose idle groups the reader asked to see
  // The charts by name, for the browser console and the end-to-end test to read their scales.
  window.fleetpulseCharts = plots;

  const showError = fp.showError;

  function step() {
    // Never finer than the agent collects: a step without a point would be a gap in every line.
    return Math.max(STEPS[range], Math.ceil(collectIntervalS));
  }

  // --- data shaping ---------------------------------------------------------------------------

  // [[t, v], ...] with v a finite number or null, sorted by t.
  function cleanPoints(points) {
    return (points || [])
      .filter((p) => Array.isArray(p) && Number.isFinite(p[0]))
      .map((p) => [p[0], fp.finite(p[1])])
      .sort((a, b) => a[0] - b[0]);
  }

  // Per-second rates of a raw cumulative counter from consecutive points; a decrease (counter
  // reset: reboot, agent restart, wrap) and a gap longer than gapS give no rate.
  function rates(points, gapS) {
    const out = [];
    // The window under way holds only part of its step: its last value would understate the rate.
    const complete = Date.now() / 1000 - step();
    let prev = null;
    for (const [t, v] of points) {
      if (v === null || t > complete) continue;
      if (prev !== null) {
        const dt = t - prev[0];
        const dv = v - prev[1];
        if (dt > 0 && dt <= gapS && dv >= 0) out.push([t, dv / dt]);
      }
      prev = [t, v];
    }
    return out;
  }

  // Align series on one x axis (uPlot's layout). A point one series lacks at another's time is
  // undefined (uPlot draws across it); a silence longer than gapS becomes a null (a break).
  function align(series, gapS) {
    const xs = new Set();
    const maps = series.map((s) => {
      const m = new Map();
      let last = null;
      for (const [t, v] of s.points) {
        if (last !== null && t - last > gapS) {
          const breakAt = last + gapS / 2;
          m.set(breakAt, null);
          xs.add(breakAt);
        }
        m.set(t, v);
        xs.add(t);
        last = t;
      }
      return m;
    });
    const x = [...xs].sort((a, b) => a - b);
    return [x, ...maps.map((m) => x.map((t) => (m.has(t) ? m.get(t) : undefined)))];
  }

  function byOrder(order) {
    return (a, b) => {
      const ia = order.indexOf(a.label);
      const ib = order.indexOf(b.label);
      return (ia < 0 ? order.length : ia) - (ib < 0 ? order.length : ib) || a.label.localeCompare(b.label);
    };
  }

  // Where the x axis starts. An agent younger than the range starts at its first point: from the
  // range's start, a 10 minute old agent on the 1 h range would draw 5/6 of every chart empty and
  // squeeze its data against the right edge. The other fix, switching a young agent to the 15 min
  // range, was not taken: it overrides the range the reader picked (the buttons and the URL would
  // say one thing and the chart show another), and a 2 minute old agent would still fill a
  // seventh of the width; starting at the first point works for every range and widens by itself
  // as the agent ages, until it is older than the range. Only an agent registered after the
  // range's start is young: for an older one a late first point means it sent nothing for a
  // while, which must show as an empty stretch. Its first point may precede its registration (it
  // spools while the platform is unreachable and sends on its first connection), so the axis
  // starts at the earlier of the two.
  function axisStart(loaded) {
    if (createdS === null || createdS <= view.start) return view.start;
    let first = createdS;
    for (const { series } of loaded) {
      for (const s of series || []) {
        const point = s.points.find(([, v]) => v !== null && v !== undefined);
        if (point && point[0] < first) first = point[0];
      }
    }
    // A few steps wide at least: an agent seconds old would get an axis a few seconds long.
    return Math.max(view.start, Math.min(first, view.end - MIN_AXIS_STEPS * step()));
  }

  // Series of groups (network interfaces) that stayed at exactly 0 over the range are left out
  // unless the reader asked for them: a host has bridges, tunnels and down links by the dozen, and
  // their flat lines and legend rows bury the ones that move. A group with no value at all is
  // not called idle (it has not said so yet).
  function splitIdle(name, chart, series) {
    if (!chart.idleBy) return { shown: series, idle: 0 };
    const moving = new Set();
    const flat = new Set();
    for (const s of series) {
      for (const [, v] of s.points) {
        if (v === null || v === undefined) continue;
        (v === 0 ? flat : moving).add(s.group);
      }
    }
    const idle = new Set([...flat].filter((group) => !moving.has(group)));
    const shown = idleShown.has(name) ? series : series.filter((s) => !idle.has(s.group));
    return { shown, idle: idle.size };
  }

  function rangeQuery(metric, agg, by, matches) {
    const query = [
      ["metric", metric],
      ["match", `agent_id=${agentId}`],
      ...(matches || []).map((m) => ["match", m]),
      ["agg", agg],
      ["by", by],
      ["start", view.start],
      ["end", view.end],
      ["step", step()],
    ];
    return fp.getJSON("/query/range", query).then((r) => r.body);
  }

  const CHARTS = {
    cpu: {
      unit: "percent",
      async load() {
        const body = await rangeQuery("cpu_usage_percent", "avg", "mode");
        return body.series
          .map((s) => ({ label: s.labels.mode || "all", points: cleanPoints(s.points) }))
          .map((s) => ({ ...s, show: s.label !== "idle" }))
          .sort(byOrder(CPU_ORDER));
      },
    },
    memory: {
      unit: "bytes",
      async load() {
        const body = await rangeQuery("memory_bytes", "avg", "state");
        return body.series
          .map((s) => ({ label: s.labels.state || "memory", points: cleanPoints(s.points), dash: s.labels.state === "total" }))
          .sort(byOrder(MEMORY_ORDER));
      },
    },
    disk: {
      unit: "percent100",
      async load() {
        const body = await rangeQuery("disk_bytes", "avg", "mountpoint,state", ["state=~used|total"]);
        const mounts = new Map();
        for (const s of body.series) {
          const mount = s.labels.mountpoint || "?";
          if (!mounts.has(mount)) mounts.set(mount, {});
          mounts.get(mount)[s.labels.state] = new Map(cleanPoints(s.points));
        }
        const out = [];
        for (const [mount, { used, total }] of mounts) {
          if (!used || !total) continue;
          const points = [];
          for (const [t, u] of used) {
            const tot = total.get(t);
            points.push([t, u !== null && tot ? (100 * u) / tot : null]);
          }
          out.push({ label: mount, points: points.sort((a, b) => a[0] - b[0]) });
        }
        return out.sort((a, b) => a.label.localeCompare(b.label));
      },
    },
    diskio: {
      unit: "rate",
      async load(gapS) {
        const [read, written] = await Promise.all([
          rangeQuery("disk_read_bytes_total", "last", "device"),
          rangeQuery("disk_written_bytes_total", "last", "device"),
        ]);
        const out = [];
        for (const [body, what] of [[read, "read"], [written, "write"]]) {
          for (const s of body.series) {
            out.push({ label: `${s.labels.device || "?"} ${what}`, points: rates(cleanPoints(s.points), gapS) });
          }
        }
        return out.sort((a, b) => a.label.localeCompare(b.label));
      },
    },
    network: {
      unit: "rate",
      idleBy: "interface",
      async load(gapS) {
        const body = await rangeQuery("net_bytes_total", "last", "interface,direction");
        return body.series
          .map((s) => ({
            label: `${s.labels.interface || "?"} ${s.labels.direction || ""}`.trim(),
            group: s.labels.interface || "?",
            points: rates(cleanPoints(s.points), gapS),
            // Loopback is traffic to itself: there to see, not shown until asked for.
            show: s.labels.interface !== "lo",
          }))
          .sort((a, b) => a.label.localeCompare(b.label));
      },
    },
  };

  // --- drawing --------------------------------------------------------------------------------

  function formatter(unit) {
    if (unit === "bytes") return (v) => fp.bytes(v);
    if (unit === "rate") return (v) => fp.bytes(v, "/s");
    return (v) => fp.percent(v);
  }

  function yRange(unit) {
    if (unit === "percent100") return () => [0, 100];
    if (unit === "percent") return (u, min, max) => [0, Math.min(100, Math.max(5, (max || 0) * 1.15))];
    return (u, min, max) => [0, Math.max(1, (max || 0) * 1.15)];
  }

  function latest(values) {
    for (let i = (values || []).length - 1; i >= 0; i -= 1) {
      if (values[i] !== null && values[i] !== undefined) return values[i];
    }
    return null;
  }

  function options(name, chart, series, width) {
    const fmt = formatter(chart.unit);
    return {
      width,
      height: 220,
      series: [
        { label: "time" },
        ...series.map((s, i) => ({
          label: s.label,
          stroke: s.color || COLORS[i % COLORS.length],
          width: 1.5,
          dash: s.dash ? [6, 4] : undefined,
          show: s.show !== false,
          // Under the cursor the value there; elsewhere the latest one.
          value: (u, v, seriesIdx, dataIdx) => {
            const shown = dataIdx === null || dataIdx === undefined ? latest(u.data[seriesIdx]) : v;
            return shown === null || shown === undefined ? "—" : fmt(shown);
          },
        })),
      ],
      scales: { x: { time: true, range: () => [view.shown, view.end] }, y: { range: yRange(chart.unit) } },
      axes: [
        { stroke: "#5b6576", grid: { stroke: "#eef1f5" } },
        {
          stroke: "#5b6576",
          grid: { stroke: "#eef1f5" },
          size: 78,
          values: (u, splits) => splits.map((v) => fmt(v)),
        },
      ],
      cursor: { sync: { key: "host" } },
      legend: { live: true },
    };
  }

  function renderIdleToggle(name, chart, section, idle) {
    const button = section.querySelector(".idle-toggle");
    if (!button) return;
    const shown = idleShown.has(name);
    const noun = idle === 1 ? chart.idleBy : `${chart.idleBy}s`;
    button.hidden = idle === 0;
    button.setAttribute("aria-pressed", String(shown));
    button.textContent = shown ? `hide ${idle} idle ${noun}` : `show ${idle} idle ${noun}`;
    section.dataset.idle = String(idle);
  }

  function draw(name, chart, all, gapS) {
    const section = document.querySelector(`.chart[data-chart="${name}"]`);
    const box = section.querySelector(".plot");
    const note = section.querySelector(".note");
    // Colours by place among all the series, so that showing the idle ones recolours none.
    const coloured = all.map((s, i) => ({ ...s, color: COLORS[i % COLORS.length] }));
    const { shown: series, idle } = splitIdle(name, chart, coloured);
    renderIdleToggle(name, chart, section, idle);
    const data = align(series, gapS);
    const points = data.slice(1).reduce((n, ys) => n + ys.filter((v) => v !== null && v !== undefined).length, 0);
    section.dataset.series = String(series.length);
    section.dataset.points = String(points);
    if (!all.length) note.textContent = "No such metric from this agent in this range.";
    else if (!series.length) note.textContent = `Every ${chart.idleBy} stayed at 0 in this range.`;
    else note.textContent = points ? "" : "No points in this range yet.";
    const width = Math.max(280, box.clientWidth || section.clientWidth - 24);
    const key = series.map((s) => `${s.label}\u0001${s.color}`).join("\u0000");
    const existing = plots.get(name);
    if (existing && existing.key === key) {
      existing.plot.setData(data);
      return;
    }
    if (existing) existing.plot.destroy();
    box.replaceChildren();
    const plot = new uPlot(options(name, chart, series, width), data, box);
    plots.set(name, { plot, key });
  }

  async function loadChart(name, gapS) {
    try {
      return { series: await CHARTS[name].load(gapS) };
    } catch (err) {
      return { err };
    }
  }

  function showChart(name, { series, err }, gapS) {
    const section = document.querySelector(`.chart[data-chart="${name}"]`);
    if (err) {
      if (err instanceof fp.Unauthorized) return;
      section.classList.add("failed");
      section.querySelector(".note").textContent = `Could not load: ${err.message}`;
      return;
    }
    loadedSeries.set(name, { series, gapS });
    draw(name, CHARTS[name], series, gapS);
    section.classList.remove("failed");
  }

  // --- header ---------------------------------------------------------------------------------

  function renderAgent(a) {
    $("agent-id").textContent = a.agent_id;
    $("crumb").textContent = a.agent_id;
    document.title = `fleetpulse: ${a.agent_id}`;
    const status = $("agent-status");
    status.textContent = a.status;
    status.className = `badge status-${a.status}`;
    status.title = a.status_since
      ? `${[a.status_cause, a.status_detail].filter(Boolean).join(": ")} since ${fp.absolute(a.status_since)}`
      : "";
    const interval = (ms) => (fp.finite(ms) === null ? null : `${ms / 1000} s`);
    const facts = [
      ["hostname", a.hostname],
      ["IP", a.ip],
      ["OS", [a.os, a.arch].filter(Boolean).join(" / ")],
      ["version", a.version],
      ["tags", Object.entries(a.tags || {}).sort().map(([k, v]) => `${k}=${v}`).join(" ")],
      ["last seen", a.last_heartbeat ? `${fp.ago(a.last_heartbeat)} (${fp.absolute(a.last_heartbeat)})` : "never"],
      ["collect interval", interval(a.collect_interval_ms)],
      ["points stored", fp.finite(a.points_committed)?.toLocaleString()],
      ["conflict", a.conflict],
    ];
    $("agent-facts").replaceChildren(
      ...facts
        .filter(([, v]) => v !== null && v !== undefined && v !== "")
        .flatMap(([k, v]) => [fp.el("dt", { text: k }), fp.el("dd", { text: v })]),
    );
    collectIntervalS = (fp.finite(a.collect_interval_ms) || 0) / 1000;
    const created = fp.parseTime(a.created_at);
    createdS = created === null ? null : created / 1000;
  }

  // The audit log of this agent (GET /audit): who changed its settings or tags, revoked it...
  async function loadActions() {
    try {
      const { body } = await fp.getJSON("/audit", [["target", agentId], ["limit", 20]]);
      const rows = body.map((e) =>
        fp.el(
          "tr",
          { dataset: { action: e.action } },
          fp.el("td", { class: "when", title: fp.absolute(e.at), text: fp.ago(e.at) }),
          fp.el("td", { class: "actor", text: e.actor }),
          fp.el("td", { class: "action", text: e.action }),
          fp.el("td", { class: "detail", text: JSON.stringify(e.detail) }),
        ),
      );
      document.querySelector("#actions tbody").replaceChildren(...rows);
      $("no-actions").hidden = rows.length > 0;
    } catch (err) {
      if (!(err instanceof fp.Unauthorized)) showError(`Could not load the actions: ${err.message}`);
    }
  }

  // Its liveness history (GET /agents/{id}/liveness): online, stale, data_stale, offline, and why.
  async function loadLiveness() {
    try {
      const { body } = await fp.getJSON(`/agents/${encodeURIComponent(agentId)}/liveness`, [["limit", 20]]);
      const rows = body.map((c) =>
        fp.el(
          "tr",
          { dataset: { state: c.state, cause: c.cause } },
          fp.el("td", { class: "when", title: fp.absolute(c.at), text: fp.ago(c.at) }),
          fp.el("td", { class: "state" }, fp.el("span", { class: `badge status-${c.state}`, text: c.state })),
          fp.el("td", { class: "cause", text: c.cause }),
          fp.el("td", { class: "detail", text: c.detail }),
        ),
      );
      document.querySelector("#liveness tbody").replaceChildren(...rows);
      $("no-liveness").hidden = rows.length > 0;
    } catch (err) {
      if (!(err instanceof fp.Unauthorized)) showError(`Could not load the liveness history: ${err.message}`);
    }
  }

  // Its distinct series against its series budget (GET /agents/{id}/series-budget).
  async function loadSeriesBudget() {
    try {
      const { body } = await fp.getJSON(`/agents/${encodeURIComponent(agentId)}/series-budget`);
      const text = `${body.series.toLocaleString()} of a budget of ${body.budget.toLocaleString()}`;
      const el = $("series-budget");
      el.textContent = body.at_budget ? `${text}: at its budget, new series are refused` : text;
      el.classList.toggle("at-budget", body.at_budget);
      el.title = `${body.points_refused.toLocaleString()} points of new series refused in all`;
    } catch (err) {
      if (!(err instanceof fp.Unauthorized)) showError(`Could not load the series budget: ${err.message}`);
    }
  }

  async function loadAgent() {
    try {
      const { body } = await fp.getJSON(`/agents/${encodeURIComponent(agentId)}`);
      renderAgent(body);
      return true;
    } catch (err) {
      if (!(err instanceof fp.Unauthorized)) showError(`Could not load the agent: ${err.message}`);
      return false;
    }
  }

  // --- alerts ---------------------------------------------------------------------------------

  async function loadAlerts() {
    try {
      fp.renderAlerts(await fp.firingAlerts(undefined, agentId), { linkAgents: false });
    } catch (err) {
      if (!(err instanceof fp.Unauthorized)) showError(`Could not load alerts: ${err.message}`);
    }
  }

  // --- refresh --------------------------------------------------------------------------------

  async function refresh() {
    clearTimeout(timer);
    const gen = ++generation;
    const known = await loadAgent();
    if (gen !== generation) return;
    if (known) loadActions();
    if (known) loadLiveness();
    if (known) loadSeriesBudget();
    if (known) loadAlerts();
    if (known) {
      showError(null);
      const end = Math.floor(Date.now() / 1000);
      view = { start: end - range, end, shown: end - range };
      // Every chart loads before any is drawn: the axis start depends on all of their first points.
      const gapS = 3 * step();
      const names = Object.keys(CHARTS);
      const loaded = await Promise.all(names.map((name) => loadChart(name, gapS)));
      if (gen !== generation) return;
      view.shown = axisStart(loaded);
      const young = view.shown > view.start ? ` · from ${fp.clock(view.shown)}: the agent is younger than the range` : "";
      $("range-info").textContent = `step ${step()} s${young}`;
      names.forEach((name, i) => showChart(name, loaded[i], gapS));
      fp.markRefreshed();
    }
    timer = setTimeout(refresh, range <= 3600 ? REFRESH_MS : 6 * REFRESH_MS);
  }

  function selectRange(seconds) {
    range = seconds;
    for (const b of document.querySelectorAll("#ranges button")) {
      b.setAttribute("aria-pressed", String(Number(b.dataset.range) === range));
    }
    const query = new URLSearchParams(location.search);
    query.set("range", String(range));
    history.replaceState(null, "", `?${query}`);
  }

  if (!agentId) {
    showError("No agent given: open a host from the fleet page.");
    return;
  }
  for (const button of document.querySelectorAll(".chart .idle-toggle")) {
    const name = button.closest(".chart").dataset.chart;
    button.addEventListener("click", () => {
      if (idleShown.has(name)) idleShown.delete(name);
      else idleShown.add(name);
      const last = loadedSeries.get(name);
      if (last) draw(name, CHARTS[name], last.series, last.gapS);
    });
  }
  for (const b of document.querySelectorAll("#ranges button")) {
    b.addEventListener("click", () => {
      selectRange(Number(b.dataset.range));
      refresh();
    });
  }
  new ResizeObserver(() => {
    for (const [name, { plot }] of plots) {
      const box = document.querySelector(`.chart[data-chart="${name}"] .plot`);
      if (box.clientWidth && box.clientWidth !== plot.width) plot.setSize({ width: box.clientWidth, height: 220 });
    }
  }).observe(document.querySelector(".charts"));
  document.addEventListener("visibilitychange", () => {
    if (document.hidden) {
      generation += 1; // a refresh under way sets no timer
      clearTimeout(timer);
    } else {
      refresh();
    }
  });
  selectRange(range);
  refresh();
})();

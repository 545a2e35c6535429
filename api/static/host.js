// The host page: one agent's header and its CPU, memory, disk and network charts (uPlot).
"use strict";

(() => {
  const params = new URLSearchParams(location.search);
  const agentId = params.get("agent");
  // Range (seconds) → query step (seconds): a few hundred to ~1,500 points per series.
  const STEPS = { 900: 5, 3600: 10, 21600: 60, 86400: 60, 604800: 3600 };
  const DEFAULT_RANGE = 3600;
  const REFRESH_MS = 10000;
  const COLORS = [
    "#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2",
    "#db2777", "#65a30d", "#9333ea", "#ea580c", "#0d9488", "#4b5563",
  ];
  const CPU_ORDER = ["user", "system", "iowait", "steal", "nice", "irq", "softirq", "guest", "guest_nice", "idle"];
  const MEMORY_ORDER = ["total", "used", "available", "cached", "buffers"];

  const $ = (id) => document.getElementById(id);
  let range = Number(params.get("range")) in STEPS ? Number(params.get("range")) : DEFAULT_RANGE;
  let collectIntervalS = 0;
  let timer = null;
  let generation = 0;
  // The time range on show, the same for every chart (their x axes line up, and the cursor syncs).
  let view = { start: 0, end: 0 };
  let refreshes = 0;
  const plots = new Map(); // chart name → { plot, key } (key: the series labels, to reuse the plot)

  function showError(message) {
    $("error").hidden = !message;
    $("error").textContent = message || "";
  }

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
      async load(gapS) {
        const body = await rangeQuery("net_bytes_total", "last", "interface,direction");
        return body.series
          .map((s) => ({
            label: `${s.labels.interface || "?"} ${s.labels.direction || ""}`.trim(),
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
          stroke: COLORS[i % COLORS.length],
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
      scales: { x: { time: true, range: () => [view.start, view.end] }, y: { range: yRange(chart.unit) } },
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

  function draw(name, chart, series, gapS) {
    const section = document.querySelector(`.chart[data-chart="${name}"]`);
    const box = section.querySelector(".plot");
    const note = section.querySelector(".note");
    const data = align(series, gapS);
    const points = data.slice(1).reduce((n, ys) => n + ys.filter((v) => v !== null && v !== undefined).length, 0);
    section.dataset.series = String(series.length);
    section.dataset.points = String(points);
    note.textContent = series.length ? (points ? "" : "No points in this range yet.") : "No such metric from this agent in this range.";
    const width = Math.max(280, box.clientWidth || section.clientWidth - 24);
    const key = series.map((s) => s.label).join("\u0000");
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

  async function loadChart(name, gen) {
    const chart = CHARTS[name];
    const section = document.querySelector(`.chart[data-chart="${name}"]`);
    const gapS = 3 * step();
    try {
      const series = await chart.load(gapS);
      if (gen !== generation) return;
      draw(name, chart, series, gapS);
      section.classList.remove("failed");
    } catch (err) {
      if (err instanceof fp.Unauthorized || gen !== generation) return;
      section.classList.add("failed");
      section.querySelector(".note").textContent = `Could not load: ${err.message}`;
    }
  }

  // --- header ---------------------------------------------------------------------------------

  function renderAgent(a) {
    $("agent-id").textContent = a.agent_id;
    $("crumb").textContent = a.agent_id;
    document.title = `fleetpulse: ${a.agent_id}`;
    const status = $("agent-status");
    status.textContent = a.status;
    status.className = `badge status-${a.status}`;
    const interval = (ms) => (fp.finite(ms) === null ? null : `${ms / 1000} s`);
    const facts = [
      ["hostname", a.hostname],
      ["IP", a.ip],
      ["OS", [a.os, a.arch].filter(Boolean).join(" / ")],
      ["version", a.version],
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

  // --- refresh --------------------------------------------------------------------------------

  async function refresh() {
    clearTimeout(timer);
    const gen = ++generation;
    const known = await loadAgent();
    if (gen !== generation) return;
    if (known) {
      showError(null);
      const end = Math.floor(Date.now() / 1000);
      view = { start: end - range, end };
      $("range-info").textContent = `step ${step()} s`;
      await Promise.all(Object.keys(CHARTS).map((name) => loadChart(name, gen)));
      if (gen !== generation) return;
      refreshes += 1;
      const stamp = $("refreshed-at");
      stamp.textContent = new Date().toLocaleTimeString();
      stamp.dateTime = new Date().toISOString();
      stamp.dataset.refreshes = String(refreshes);
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

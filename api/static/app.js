// The fleet page: summary, one page of agents (server-side filter, sort and paging), live refresh.
"use strict";

(() => {
  const REFRESH_MS = 5000;
  const FILTER_DELAY_MS = 250;
  // Columns whose first click sorts descending: the busiest or most recent first.
  const DESCENDING_FIRST = new Set(["cpu_percent", "memory_percent", "last_heartbeat"]);

  const params = new URLSearchParams(location.search);
  const state = {
    q: params.get("q") || "",
    status: params.get("status") || "",
    // tag=env=prod&tag=role=db: agents carrying every one (the summary counts only those, too)
    tags: params.getAll("tag"),
    sort: params.get("sort") || "agent_id",
    limit: Number(params.get("limit")) || 50,
    offset: Math.max(0, Number(params.get("offset")) || 0),
  };

  const $ = (id) => document.getElementById(id);
  const tbody = document.querySelector("#agents tbody");

  function keepInURL() {
    const query = new URLSearchParams();
    if (state.q) query.set("q", state.q);
    if (state.status) query.set("status", state.status);
    for (const tag of state.tags) query.append("tag", tag);
    if (state.sort !== "agent_id") query.set("sort", state.sort);
    if (state.limit !== 50) query.set("limit", state.limit);
    if (state.offset) query.set("offset", state.offset);
    const search = query.toString();
    history.replaceState(null, "", search ? `?${search}` : location.pathname);
  }

  function chips(container, counts, cls) {
    container.replaceChildren();
    const entries = Object.entries(counts || {}).sort((a, b) => b[1] - a[1]);
    for (const [name, count] of entries) {
      container.append(
        fp.el("span", { class: `chip ${cls ? cls(name) : ""}` }, fp.el("b", { text: count }), ` ${name || "unknown"}`),
      );
    }
    if (!entries.length) container.append(fp.el("span", { class: "muted", text: "—" }));
  }

  function renderSummary(summary) {
    $("sum-total").textContent = summary.agents;
    chips($("sum-status"), summary.by_status, (name) => `status-${name}`);
    // Liveness transitions of the last hour, by the state entered and its cause.
    const changes = {};
    for (const [state, causes] of Object.entries(summary.changes_last_hour || {})) {
      for (const [cause, count] of Object.entries(causes)) changes[`${state}: ${cause}`] = count;
    }
    chips($("sum-changes"), changes, (name) => `status-${name.split(":")[0]}`);
    chips($("sum-os"), summary.by_os);
    chips($("sum-version"), summary.by_version);
    const tags = {};
    for (const [key, values] of Object.entries(summary.by_tag || {})) {
      for (const [value, count] of Object.entries(values)) tags[`${key}=${value}`] = count;
    }
    chips($("sum-tags"), tags);
    // A tag chip narrows the page to the agents carrying it.
    for (const chip of $("sum-tags").querySelectorAll(".chip")) {
      const tag = chip.textContent.replace(/^\d+ /, "");
      chip.classList.add("clickable");
      chip.title = `only agents tagged ${tag}`;
      chip.addEventListener("click", () => setTags([...new Set([...state.tags, tag])]));
    }
  }

  function tagsCell(agent) {
    const entries = Object.entries(agent.tags || {}).sort();
    return fp.el(
      "td",
      { class: "tags" },
      ...entries.map(([key, value]) => fp.el("span", { class: "chip tag", text: `${key}=${value}` })),
    );
  }

  // An offline agent's value is its last one of the last 5 minutes (the API keeps it that long):
  // kept, for what the host was doing when it went, but greyed so that it does not read as live.
  function usageCell(value, cls, agent) {
    const v = fp.finite(value);
    const live = agent.status === "online";
    const bar = fp.el("span", { class: "bar" });
    if (v !== null) bar.style.width = `${Math.min(100, Math.max(0, v))}%`;
    const title = live || v === null ? null : `last value before it went ${agent.status} (${fp.absolute(agent.status_since || agent.last_heartbeat)}); not live`;
    return fp.el(
      "td",
      { class: `num ${cls}${live ? "" : " stale"}`, title, dataset: { value: v === null ? "" : String(v) } },
      fp.el("span", { class: "usage" }, bar, fp.el("span", { class: "usage-text", text: fp.percent(v) })),
    );
  }

  // Any state but online says since when and why (the cause of the transition into it).
  function statusCell(agent, now) {
    const badge = fp.el("span", { class: `badge status-${agent.status}`, text: agent.status });
    if (agent.status === "online" || !agent.status_since) return fp.el("td", { class: "status" }, badge);
    const why = [agent.status_cause, agent.status_detail].filter(Boolean).join(": ");
    const since = fp.el("span", {
      class: "status-since",
      title: `${why} (${fp.absolute(agent.status_since)}, ${fp.ago(agent.status_since, now)})`,
      dataset: { ts: agent.status_since, cause: agent.status_cause || "" },
      text: `since ${fp.clock(agent.status_since, now)}`,
    });
    return fp.el("td", { class: "status" }, badge, " ", since);
  }

  function renderAgents(agents, total) {
    const now = Date.now();
    const rows = agents.map((a) => {
      const link = fp.el("a", { href: `/ui/host?agent=${encodeURIComponent(a.agent_id)}`, text: a.agent_id });
      return fp.el(
        "tr",
        { dataset: { agentId: a.agent_id } },
        fp.el("td", { class: "agent_id" }, link),
        fp.el("td", { class: "hostname", text: a.hostname || "" }),
        statusCell(a, now),
        fp.el("td", { class: "os", text: [a.os, a.arch].filter(Boolean).join(" / ") }),
        fp.el("td", { class: "version", text: a.version || "" }),
        fp.el("td", {
          class: "last-seen",
          title: fp.absolute(a.last_heartbeat),
          dataset: { ts: a.last_heartbeat || "" },
          text: fp.ago(a.last_heartbeat, now),
        }),
        usageCell(a.cpu_percent, "cpu", a),
        usageCell(a.memory_percent, "memory", a),
        tagsCell(a),
      );
    });
    tbody.replaceChildren(...rows);
    $("empty").hidden = agents.length > 0;
    const first = agents.length ? state.offset + 1 : 0;
    const last = state.offset + agents.length;
    $("page-info").textContent = `${first}–${last} of ${total}`;
    $("prev").disabled = state.offset === 0;
    $("next").disabled = last >= total;
  }

  function renderSortIndicators() {
    const key = state.sort.replace(/^-/, "");
    const descending = state.sort.startsWith("-");
    for (const th of document.querySelectorAll("#agents th[data-sort]")) {
      if (th.dataset.sort === key) th.setAttribute("aria-sort", descending ? "descending" : "ascending");
      else th.removeAttribute("aria-sort");
    }
  }


  const refresh = fp.poll(REFRESH_MS, async (signal) => {
    const query = [
      ["q", state.q],
      ["status", state.status],
      ["sort", state.sort],
      ["limit", state.limit],
      ["offset", state.offset],
    ];
    const tagQuery = state.tags.map((tag) => ["tag", tag]);
    query.push(...tagQuery);
    const [summary, agents, alerts] = await Promise.all([
      fp.getJSON("/fleet/summary", tagQuery, signal),
      fp.getJSON("/agents", query, signal),
      fp.firingAlerts(signal),
    ]);
    fp.renderAlerts(alerts);
    const total = Number(agents.headers.get("X-Total-Count") ?? agents.body.length);
    if (state.offset > 0 && state.offset >= total) {
      // The page emptied under us (agents removed or a narrower filter): back to the last page.
      state.offset = Math.max(0, Math.floor((total - 1) / state.limit) * state.limit);
      keepInURL();
      refresh();
      return;
    }
    renderSummary(summary.body);
    renderAgents(agents.body, total);
    renderSortIndicators();
  });


  function changed() {
    keepInURL();
    refresh();
  }

  for (const th of document.querySelectorAll("#agents th[data-sort]")) {
    th.tabIndex = 0;
    const sortBy = () => {
      const key = th.dataset.sort;
      const current = state.sort.replace(/^-/, "");
      if (current === key) state.sort = state.sort.startsWith("-") ? key : `-${key}`;
      else state.sort = DESCENDING_FIRST.has(key) ? `-${key}` : key;
      state.offset = 0;
      renderSortIndicators();
      changed();
    };
    th.addEventListener("click", sortBy);
    th.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        sortBy();
      }
    });
  }

  let filterTimer = null;
  $("filter").value = state.q;
  $("filter").addEventListener("input", () => {
    clearTimeout(filterTimer);
    filterTimer = setTimeout(() => {
      state.q = $("filter").value.trim();
      state.offset = 0;
      changed();
    }, FILTER_DELAY_MS);
  });
  function setTags(tags) {
    state.tags = tags;
    $("tag-filter").value = tags.join(" ");
    state.offset = 0;
    changed();
  }
  let tagTimer = null;
  $("tag-filter").value = state.tags.join(" ");
  $("tag-filter").addEventListener("input", () => {
    clearTimeout(tagTimer);
    tagTimer = setTimeout(() => setTags($("tag-filter").value.split(/\s+/).filter(Boolean)), FILTER_DELAY_MS);
  });
  $("status-filter").value = state.status;
  $("status-filter").addEventListener("change", () => {
    state.status = $("status-filter").value;
    state.offset = 0;
    changed();
  });
  $("page-size").value = String(state.limit);
  if ($("page-size").value !== String(state.limit)) {
    state.limit = 50;
    $("page-size").value = "50";
  }
  $("page-size").addEventListener("change", () => {
    state.limit = Number($("page-size").value);
    state.offset = 0;
    changed();
  });
  $("prev").addEventListener("click", () => {
    state.offset = Math.max(0, state.offset - state.limit);
    changed();
  });
  $("next").addEventListener("click", () => {
    state.offset += state.limit;
    changed();
  });

  renderSortIndicators();
  refresh();
})();

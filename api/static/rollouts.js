// The rollouts page: staged rollouts, newest first, their waves, and on a click their agents.
// Read only: rollouts are started, paused, resumed and aborted with the admin key (API or CLI).
"use strict";

(() => {
  const REFRESH_MS = 5000;
  const LIMIT = 50; // rollouts shown: the newest
  const AGENTS_LIMIT = 1000; // agents shown per rollout (the API's largest page)
  const COUNTS = ["applied", "passed", "unverified", "failed", "reverted"];
  // The rollout's reason is shown in these states (a completed or running one has none to show).
  const REASON_STATES = new Set(["failed", "aborted", "paused"]);

  const params = new URLSearchParams(location.search);
  const state = {
    state: params.get("state") || "",
    // rollouts whose agents are on show (?open=3&open=5), kept across refreshes
    open: new Set(params.getAll("open").map(Number).filter((id) => Number.isInteger(id) && id > 0)),
  };

  const $ = (id) => document.getElementById(id);
  const list = $("rollouts");

  function keepInURL() {
    const query = new URLSearchParams();
    if (state.state) query.set("state", state.state);
    for (const id of [...state.open].sort((a, b) => a - b)) query.append("open", id);
    const search = query.toString();
    history.replaceState(null, "", search ? `?${search}` : location.pathname);
  }


  function plural(n, noun) {
    return `${n} ${noun}${n === 1 ? "" : "s"}`;
  }

  // --- formatting -----------------------------------------------------------------------------

  function selectorText(selector) {
    if (!selector || typeof selector !== "object") return "";
    if (selector.all) return "all agents";
    if (Array.isArray(selector.agents)) {
      const shown = selector.agents.slice(0, 5).join(", ");
      const more = selector.agents.length - 5;
      return `agents ${shown}${more > 0 ? ` and ${more} more` : ""}`;
    }
    if (selector.tags && typeof selector.tags === "object") {
      const tags = Object.entries(selector.tags).sort().map(([k, v]) => `${k}=${v}`);
      return `tagged ${tags.join(" ")}`;
    }
    return JSON.stringify(selector);
  }

  function settingsText(settings) {
    return Object.entries(settings || {})
      .sort()
      .map(([name, value]) => {
        if (value === null || value === undefined) return `${name}: default`;
        if (Array.isArray(value)) return `${name}: ${value.join(", ")}`;
        return `${name}: ${value}`;
      })
      .join("; ");
  }

  function number(value) {
    const v = fp.finite(value);
    if (v === null) return "—";
    return Number.isInteger(v) ? v.toLocaleString() : v.toFixed(1);
  }

  function rejectedPerBatch(figures) {
    if (!figures) return null;
    const batches = fp.finite(figures.batches) || 0;
    return batches ? (fp.finite(figures.rejected) || 0) / batches : 0;
  }

  // One figure of an agent before the change and since it applied it: "0 → 2", marked when it rose.
  function figureCell(cls, before, since, pick, what) {
    const b = before ? pick(before) : null;
    const s = since ? pick(since) : null;
    const rose = fp.finite(b) !== null && fp.finite(s) !== null && s > b;
    const none = fp.finite(b) === null && fp.finite(s) === null; // not measured (yet)
    return fp.el("td", {
      class: `num figure ${cls}${rose ? " rose" : ""}`,
      title: `${what}: before the change → since it applied it`,
      dataset: { before: fp.finite(b) === null ? "" : String(b), since: fp.finite(s) === null ? "" : String(s) },
      text: none ? "—" : `${number(b)} → ${number(s)}`,
    });
  }

  function when(value, now) {
    return fp.el("time", {
      dateTime: value || undefined,
      title: fp.absolute(value),
      text: value ? fp.clock(value, now) : "—",
    });
  }

  // --- rendering ------------------------------------------------------------------------------

  function waveBox(rollout, w) {
    // Only the counts that are not zero: a passed wave reads "2 passed", not five numbers.
    const counts = COUNTS.filter((name) => fp.finite(w[name]) > 0).map((name) =>
      fp.el("span", { class: `count count-${name}`, dataset: { count: name }, text: `${w[name]} ${name}` }),
    );
    const current = rollout.wave === w.wave && (rollout.state === "running" || rollout.state === "paused");
    const times = [
      w.started_at ? `started ${fp.absolute(w.started_at)}` : "not started",
      w.ended_at ? `ended ${fp.absolute(w.ended_at)}` : null,
    ];
    return fp.el(
      "div",
      {
        class: `wave state-${w.state}${current ? " current" : ""}`,
        dataset: { wave: String(w.wave), state: w.state },
        title: times.filter(Boolean).join(", "),
      },
      fp.el(
        "div",
        { class: "wave-title" },
        fp.el("b", { text: `wave ${w.wave}` }),
        fp.el(
          "span",
          { class: "muted", title: "cumulative: this wave takes the rollout up to this step" },
          " · to ",
          fp.el("span", { class: "wave-step", text: w.step }),
        ),
      ),
      fp.el("div", { class: "wave-agents", text: plural(w.agents, "agent") }),
      fp.el("div", { class: "wave-state", text: w.state }),
      counts.length ? fp.el("div", { class: "wave-counts" }, ...counts) : null,
      w.state === "failed" && w.reason ? fp.el("div", { class: "wave-reason", text: w.reason }) : null,
    );
  }

  function agentsTable(rollout, result) {
    const box = fp.el("div", { class: "rollout-agents", id: `rollout-agents-${rollout.id}` });
    if (!result) {
      box.append(fp.el("p", { class: "muted", text: "Loading the agents…" }));
      return box;
    }
    if (result.err) {
      box.append(fp.el("p", { class: "error", text: `Could not load the agents: ${result.err.message}` }));
      return box;
    }
    const agents = result.agents;
    if (!agents.length) {
      box.append(fp.el("p", { class: "muted", text: "No agent in this rollout." }));
      return box;
    }
    const head = fp.el(
      "tr",
      {},
      ...["agent", "wave", "state", "version", "applied", "reason"].map((t) => fp.el("th", { text: t })),
      fp.el("th", { class: "num", title: "the most collectors failing at once", text: "collector errors" }),
      fp.el("th", { class: "num", title: "rejected points per committed batch", text: "rejected / batch" }),
      fp.el("th", { class: "num", title: "the deepest spool, in batches", text: "spool batches" }),
    );
    const now = Date.now();
    const rows = agents.map((a) =>
      fp.el(
        "tr",
        { dataset: { agentId: a.agent_id, state: a.state, wave: String(a.wave) } },
        fp.el(
          "td",
          { class: "agent_id" },
          fp.el("a", { href: `/ui/host?agent=${encodeURIComponent(a.agent_id)}`, text: a.agent_id }),
        ),
        fp.el("td", { class: "wave-number", text: a.wave }),
        fp.el("td", { class: "state" }, fp.el("span", { class: `badge state-${a.state}`, text: a.state })),
        fp.el("td", { class: "version", text: a.version === null || a.version === undefined ? "" : a.version }),
        fp.el("td", { class: "applied" }, a.applied_at ? when(a.applied_at, now) : ""),
        fp.el("td", { class: "reason", text: a.reason || "" }),
        figureCell("collector-errors", a.before, a.since, (f) => f.collector_errors, "collectors failing"),
        figureCell("rejected", a.before, a.since, rejectedPerBatch, "rejected points per batch"),
        figureCell("spool", a.before, a.since, (f) => f.spool_batches, "spool depth (batches)"),
      ),
    );
    box.append(
      fp.el("p", { class: "muted", text: "Figures: before the change → since the agent applied it." }),
      fp.el("table", { class: "agents rollout-agents-table" }, fp.el("thead", {}, head), fp.el("tbody", {}, ...rows)),
    );
    if (agents.length >= AGENTS_LIMIT && rollout.agents > agents.length) {
      box.append(
        fp.el("p", {
          class: "muted",
          text: `The first ${agents.length} of ${rollout.agents} agents (by wave, then id); GET /rollouts/${rollout.id}/agents pages through them all.`,
        }),
      );
    }
    return box;
  }

  function rolloutEl(rollout, result, now) {
    const open = state.open.has(rollout.id);
    const waves = rollout.waves || [];
    const head = fp.el(
      "div",
      { class: "rollout-head", title: open ? "hide its agents" : "show its agents" },
      fp.el(
        "h2",
        {},
        fp.el("span", { class: "rollout-id", text: `rollout ${rollout.id}` }),
        " ",
        fp.el("span", { class: `badge rollout-state state-${rollout.state}`, text: rollout.state }),
        " ",
        fp.el("span", { class: "wave-of", text: waves.length ? `wave ${rollout.wave} of ${waves.length}` : "no wave" }),
        " ",
        fp.el("span", { class: "agent-count muted", text: plural(rollout.agents, "agent") }),
      ),
      fp.el("button", {
        type: "button",
        class: "agents-toggle",
        "aria-expanded": String(open),
        "aria-controls": `rollout-agents-${rollout.id}`,
        dataset: { rolloutId: String(rollout.id) },
        text: open ? "hide agents ▴" : "agents ▾",
      }),
    );
    const created = [rollout.created_by, fp.clock(rollout.created_at, now)].filter(Boolean).join(", ");
    const facts = [
      ["selector", "selector", selectorText(rollout.selector)],
      ["settings", "settings", settingsText(rollout.settings)],
      ["soak", "soak", `${number(rollout.soak_s)} s per wave`],
      ["created", "created", created, fp.absolute(rollout.created_at)],
      ["ended", "ended", rollout.ended_at ? fp.clock(rollout.ended_at, now) : null, fp.absolute(rollout.ended_at)],
    ];
    const dl = fp.el(
      "dl",
      { class: "facts rollout-facts" },
      ...facts
        .filter(([, , value]) => value)
        .map(([cls, label, value, title]) =>
          fp.el(
            "div",
            {},
            fp.el("dt", { text: label }),
            fp.el("dd", { class: cls, title: title || undefined, text: value }),
          ),
        ),
    );
    const reason =
      rollout.reason && REASON_STATES.has(rollout.state)
        ? fp.el("p", { class: `rollout-reason state-${rollout.state}`, text: rollout.reason })
        : null;
    const row = fp.el(
      "div",
      { class: "waves", role: "list", "aria-label": "waves" },
      ...waves.map((w) => {
        const box = waveBox(rollout, w);
        box.setAttribute("role", "listitem");
        return box;
      }),
    );
    return fp.el(
      "article",
      { class: `rollout state-${rollout.state}`, dataset: { rolloutId: String(rollout.id), state: rollout.state } },
      head,
      dl,
      reason,
      row,
      open ? agentsTable(rollout, result) : null,
    );
  }

  function render(rollouts, agentsById) {
    const now = Date.now();
    // A keyboard user on a toggle keeps the focus across the re-render.
    const focused = document.activeElement?.closest?.(".agents-toggle")?.dataset.rolloutId;
    list.replaceChildren(...rollouts.map((r) => rolloutEl(r, agentsById.get(r.id), now)));
    if (focused) list.querySelector(`.agents-toggle[data-rollout-id="${CSS.escape(focused)}"]`)?.focus();
    $("no-rollouts").hidden = rollouts.length > 0;
    $("no-rollouts").textContent = state.state ? `No ${state.state} rollout.` : "No rollout yet.";
    $("more-rollouts").hidden = rollouts.length < LIMIT;
    $("more-rollouts").textContent = `The ${LIMIT} newest; GET /rollouts?before=ID pages through older ones.`;
  }

  async function loadAgents(id, signal) {
    try {
      const { body } = await fp.getJSON(`/rollouts/${id}/agents`, [["limit", AGENTS_LIMIT]], signal);
      return { agents: body };
    } catch (err) {
      if (err.name === "AbortError" || err instanceof fp.Unauthorized) throw err;
      return { err };
    }
  }

  const refresh = fp.poll(REFRESH_MS, async (signal) => {
    const { body: rollouts } = await fp.getJSON(
      "/rollouts",
      [
        ["state", state.state],
        ["limit", LIMIT],
      ],
      signal,
    );
    const ids = rollouts.map((r) => r.id).filter((id) => state.open.has(id));
    const loaded = await Promise.all(ids.map((id) => loadAgents(id, signal)));
    render(rollouts, new Map(ids.map((id, i) => [id, loaded[i]])));
  });


  // A click on a rollout's head (or its toggle) shows or hides its agents.
  list.addEventListener("click", (event) => {
    const head = event.target.closest(".rollout-head");
    if (!head || event.target.closest("a")) return;
    const article = head.closest("[data-rollout-id]");
    const id = Number(article.dataset.rolloutId);
    const button = head.querySelector(".agents-toggle");
    if (state.open.has(id)) {
      state.open.delete(id);
      article.querySelector(".rollout-agents")?.remove();
      button.setAttribute("aria-expanded", "false");
      button.textContent = "agents ▾";
    } else {
      state.open.add(id);
      article.append(fp.el("div", { class: "rollout-agents" }, fp.el("p", { class: "muted", text: "Loading the agents…" })));
      button.setAttribute("aria-expanded", "true");
      button.textContent = "hide agents ▴";
    }
    keepInURL();
    refresh();
  });

  $("state-filter").value = state.state;
  if ($("state-filter").value !== state.state) state.state = "";
  $("state-filter").addEventListener("change", () => {
    state.state = $("state-filter").value;
    keepInURL();
    refresh();
  });

  refresh();
})();

"""Staged rollouts of agent settings with a health gate (schema 0017; issue 18).

An operator asks for a settings change (the fields of ingest/agentsettings.py) on the agents a
selector chooses (tags, a list of ids, or every agent) and for waves of them: cumulative steps such
as ``1%, 5%, 25%, 100%``, or counts (``1, 10, 100%``). At creation the chosen agents are put in
their waves, the online ones first, each group in the order of ``md5(agent_id)``: the same hosts
are the canaries of every rollout over the same agents (an operator learns which they are), and
they are spread over the fleet rather than the oldest or the first by name.

The rollout job (ingest/worker/rolloutjob.py, one worker process at a time) moves each rollout:

1. **Start a wave**: record each agent's figures from before (ingest/rolloutgate.py), keep its
   settings row (``previous``), write the change as its new version, and announce it (the
   front-end holding its stream pushes it at once; an agent away gets it when it registers).
   Agents not online at that moment get the change too but cannot vouch for it: ``unverified``.
2. **Soak**: an agent passes once it reported the new version applied and then, for ``soak_s``,
   stayed online, committed batches (a health sample stored after it applied the change) and
   showed no rise against its before (`rolloutgate.judge`). It fails if it refuses the settings,
   does not report them applied within ``rollout_apply_timeout_s``, or fails the judgement.
3. **Pass or fail**: when every verified agent of the wave passed, the next wave starts (unless
   the rollout is paused); after the last one the rollout is ``completed``. When one agent fails,
   the rollout stops (``failed``) and every agent of that wave gets its previous settings back, as
   a new version; earlier waves keep the change (they passed). The stop is written to the audit
   log by ``platform``.

The operator can pause (no further wave starts; a failing wave is still reverted, safety does not
pause), resume, or abort (every agent the rollout changed gets its previous settings back). One
rollout per agent at a time: a unique index on the active memberships; a settings change by hand
of an agent in a rollout is refused too (ingest/agentsettings.py), since a revert would undo it.
Every state is a row, so a rollout survives a restart of every platform process: the job picks up
where the rows say.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
import redis
from psycopg import AsyncConnection, Connection
from psycopg.types.json import Jsonb

from fleetpulse import auditlog, liveness
from fleetpulse.agent import tags as tag_rules
from fleetpulse.errors import BadInput, Conflict, NotFound
from fleetpulse.ingest import agentsettings, control, rolloutgate
from fleetpulse.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_WAVES = ("1%", "5%", "25%", "100%")
ACTIVE = ("running", "paused")
STATES = ("running", "paused", "completed", "failed", "aborted")
# Agents per rollout at most: a wave is one statement, but a selector of the whole fleet must
# still be a choice, not a slip (and 100,000 is twice what one platform host holds).
MAX_AGENTS = 100_000
# The window of "before" figures: as long as the soak, within these bounds.
BASELINE_MIN_S = 60.0
BASELINE_MAX_S = 3600.0
# An applied agent that shows no committed health sample this long after its soak ended fails.
COMMIT_GRACE_S = 60.0
# An agent still "sent" after this long is announced again (a pub/sub message can be lost).
REANNOUNCE_AFTER_S = 10.0

_STEP = re.compile(r"^(\d+(?:\.\d+)?)%$|^(\d+)$")


@dataclass(frozen=True)
class Selector:
    tags: dict[str, str] | None = None
    agents: list[str] | None = None
    all: bool = False

    def to_json(self) -> dict[str, Any]:
        if self.all:
            return {"all": True}
        if self.agents is not None:
            return {"agents": self.agents}
        return {"tags": self.tags}


def selector(tags: dict[str, str] | None, agents: Sequence[str] | None, everyone: bool) -> Selector:
    """Exactly one way of choosing agents; BadInput naming the problem otherwise."""
    given = [name for name, v in (("tags", tags), ("agents", agents)) if v] + (
        ["all"] if everyone else []
    )
    if len(given) != 1:
        raise BadInput(
            "choose the agents one way: tags, a list of agent ids, or all (got "
            + (", ".join(given) or "none")
            + ")"
        )
    if tags:
        try:
            tag_rules.check(tags)
        except ValueError as exc:
            raise BadInput(f"tags: {exc}") from None
        return Selector(tags=dict(tags))
    if agents:
        return Selector(agents=sorted(set(agents)))
    return Selector(all=True)


def wave_sizes(steps: Sequence[str | int], total: int) -> list[tuple[str, int]]:
    """Each step (cumulative: '5%' of ``total``, at least one agent; or a count) with the agents
    it adds; steps that add none are dropped. BadInput unless they rise and end at every agent."""
    if not steps:
        raise BadInput("waves: give at least one step, such as 100%")
    if len(steps) > 20:
        raise BadInput(f"waves: at most 20 steps, got {len(steps)}")
    result: list[tuple[str, int]] = []
    reached = 0
    for raw in steps:
        step = str(raw).strip()
        match = _STEP.match(step)
        if match is None:
            raise BadInput(f"waves: {step[:20]!r} is neither a percentage (5%) nor a count (10)")
        if match.group(1) is not None:
            percent = float(match.group(1))
            if not 0 < percent <= 100:
                raise BadInput(f"waves: {step} is not between 0% and 100%")
            target = max(1, math.ceil(total * percent / 100))
        else:
            target = min(int(match.group(2)), total)
            if target < 1:
                raise BadInput("waves: a count is at least 1")
        if target < reached:
            raise BadInput(f"waves: {step} is fewer agents than the step before it")
        if target > reached:
            result.append((step, target - reached))
            reached = target
    if reached < total:
        raise BadInput(f"waves: the last step must reach every agent (100%), got {steps[-1]}")
    return result


_CHOOSE = f"""
SELECT a.agent_id, lv.state = 'online' AS online
FROM agents a LEFT JOIN agent_tags t USING (agent_id) CROSS JOIN LATERAL ({liveness.STATE}) lv
WHERE %(all)s OR a.agent_id = ANY(%(agents)s::text[])
    OR a.config_tags || coalesce(t.tags, '{{}}'::jsonb) @> %(tags)s::jsonb
ORDER BY lv.state = 'online' DESC, md5(a.agent_id)
LIMIT {MAX_AGENTS + 1}
"""  # noqa: S608  # constants only
_BUSY = """
SELECT rollout_id, count(*) FROM rollout_agents WHERE active AND agent_id = ANY(%s)
GROUP BY rollout_id ORDER BY rollout_id
"""
_INSERT_ROLLOUT = """
INSERT INTO rollouts (selector, settings, soak_s, created_by) VALUES (%s, %s, %s, %s)
RETURNING id
"""
_INSERT_WAVES = """
INSERT INTO rollout_waves (rollout_id, wave, step, agents)
SELECT %s, w - 1, step, agents FROM unnest(%s::text[], %s::int[]) WITH ORDINALITY AS x(step, agents, w)
"""
_INSERT_AGENTS = """
INSERT INTO rollout_agents (rollout_id, agent_id, wave)
SELECT %s, agent_id, wave FROM unnest(%s::text[], %s::int[]) AS x(agent_id, wave)
"""


@dataclass(frozen=True)
class Plan:
    waves: list[tuple[str, list[str]]]  # each step and its agents, in order
    offline: int  # chosen agents not online now (the last ones in the order)


async def plan(
    conn: AsyncConnection[Any],
    chosen: Selector,
    steps: Sequence[str | int],
    settings: Settings,
) -> Plan:
    """Which agents each wave would take now (a dry run shows it; `create` stores it)."""
    cur = await conn.execute(
        _CHOOSE,
        {
            **liveness.params(settings),
            "all": chosen.all,
            "agents": chosen.agents,
            "tags": Jsonb(chosen.tags) if chosen.tags else None,
        },
    )
    rows = await cur.fetchall()
    if chosen.agents is not None:
        unknown = sorted(set(chosen.agents) - {r[0] for r in rows})
        if unknown:
            more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
            raise BadInput(f"unknown agents: {', '.join(unknown[:5])}{more}")
    if not rows:
        raise BadInput(f"no agent matches {chosen.to_json()}")
    if len(rows) > MAX_AGENTS:
        raise BadInput(f"more than {MAX_AGENTS} agents match: narrow the selector")
    ids = [r[0] for r in rows]
    waves, start = [], 0
    for step, size in wave_sizes(steps, len(ids)):
        waves.append((step, ids[start : start + size]))
        start += size
    return Plan(waves, sum(1 for r in rows if not r[1]))


async def create(
    conn: AsyncConnection[Any],
    chosen: Selector,
    changes: dict[str, Any],
    steps: Sequence[str | int],
    soak_s: float,
    actor: str,
    settings: Settings,
) -> int:
    """Store a new rollout (it starts at the job's next round); its id. BadInput for a bad
    change, selector or waves; Conflict when some of its agents are in another rollout."""
    try:
        agentsettings.validate(changes)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    if not changes:
        raise BadInput("the rollout changes no setting")
    if not 0 <= soak_s <= 86_400:
        raise BadInput(f"soak: {soak_s:g} s is not between 0 and 86400 s")
    planned = await plan(conn, chosen, steps, settings)
    ids = [a for _, agents in planned.waves for a in agents]
    waves = [w for w, (_, agents) in enumerate(planned.waves) for _ in agents]
    try:
        async with conn.transaction():
            cur = await conn.execute(_BUSY, (ids,))
            _not_busy(await cur.fetchall())
            cur = await conn.execute(
                _INSERT_ROLLOUT, (Jsonb(chosen.to_json()), Jsonb(changes), soak_s, actor)
            )
            row = await cur.fetchone()
            assert row is not None
            rollout_id = int(row[0])
            await conn.execute(
                _INSERT_WAVES,
                (rollout_id, [s for s, _ in planned.waves], [len(a) for _, a in planned.waves]),
            )
            await conn.execute(_INSERT_AGENTS, (rollout_id, ids, waves))
            await auditlog.record_async(
                conn,
                actor,
                auditlog.ROLLOUT_CREATE,
                target(rollout_id),
                {
                    "selector": chosen.to_json(),
                    "settings": changes,
                    "waves": [s for s, _ in planned.waves],
                    "soak_s": soak_s,
                    "agents": len(ids),
                },
            )
    except psycopg.errors.UniqueViolation:  # another rollout took some of them meanwhile
        raise Conflict("some of these agents joined another rollout meanwhile: try again") from None
    return rollout_id


def _not_busy(rows: list[tuple[Any, ...]]) -> None:
    if rows:
        busy = ", ".join(f"{n} in rollout {rid}" for rid, n in rows)
        raise Conflict(f"agents are in another rollout ({busy}): one rollout per agent at a time")


def target(rollout_id: int) -> str:
    """The audit log's target of a rollout."""
    return f"rollout:{rollout_id}"


# -- the operator's controls ------------------------------------------------------------------
_LOCK = "SELECT state, wave FROM rollouts WHERE id = %s FOR UPDATE"
_SET_STATE = """
UPDATE rollouts SET state = %s, reason = %s, updated_at = now(),
    ended_at = CASE WHEN %s IN ('completed', 'failed', 'aborted') THEN now() END
WHERE id = %s
"""
_END_MEMBERSHIPS = "UPDATE rollout_agents SET active = false WHERE rollout_id = %s AND active"
# Agents given the change (every state but pending), their previous settings written back.
_REVERT = f"""
WITH src AS (
    SELECT agent_id, previous FROM rollout_agents
    WHERE rollout_id = %(rollout)s AND (%(wave)s::int IS NULL OR wave = %(wave)s)
        AND state NOT IN ('pending', 'reverted')
), restored AS ({agentsettings.restore_many_sql("SELECT * FROM src")})
UPDATE rollout_agents r SET state = CASE WHEN r.state = 'failed' THEN 'failed' ELSE 'reverted' END
FROM restored WHERE r.rollout_id = %(rollout)s AND r.agent_id = restored.agent_id
RETURNING r.agent_id
"""  # noqa: S608  # constants only


async def pause(conn: AsyncConnection[Any], rollout_id: int, actor: str) -> None:
    await _control(conn, rollout_id, actor, ("running",), "paused", auditlog.ROLLOUT_PAUSE)


async def resume(conn: AsyncConnection[Any], rollout_id: int, actor: str) -> None:
    await _control(conn, rollout_id, actor, ("paused",), "running", auditlog.ROLLOUT_RESUME)


async def abort(conn: AsyncConnection[Any], rollout_id: int, actor: str) -> list[str]:
    """Stop it and give every agent it changed its previous settings back; their ids (to
    announce)."""
    return await _control(conn, rollout_id, actor, ACTIVE, "aborted", auditlog.ROLLOUT_ABORT)


async def _control(
    conn: AsyncConnection[Any],
    rollout_id: int,
    actor: str,
    allowed: tuple[str, ...],
    new_state: str,
    action: str,
) -> list[str]:
    reverted: list[str] = []
    async with conn.transaction():
        cur = await conn.execute(_LOCK, (rollout_id,))
        row = await cur.fetchone()
        if row is None:
            raise NotFound(f"no rollout {rollout_id}")
        state, wave = row
        if state not in allowed:
            raise Conflict(f"rollout {rollout_id} is {state}: it cannot be {new_state} now")
        reason = f"{new_state} by {actor}"
        await conn.execute(_SET_STATE, (new_state, reason, new_state, rollout_id))
        if new_state == "aborted":
            cur = await conn.execute(_REVERT, {"rollout": rollout_id, "wave": None})
            reverted = [r[0] for r in await cur.fetchall()]
            await conn.execute(_END_MEMBERSHIPS, (rollout_id,))
            await conn.execute(
                "UPDATE rollout_waves SET state = 'aborted', ended_at = now(), reason = %s"
                " WHERE rollout_id = %s AND state IN ('pending', 'soaking')",
                (reason, rollout_id),
            )
        await auditlog.record_async(
            conn, actor, action, target(rollout_id), {"wave": wave, "reverted": len(reverted)}
        )
    return reverted


# -- reading ----------------------------------------------------------------------------------
_COLUMNS = (
    "id, selector, settings, soak_s, state, wave, reason, created_by, created_at, updated_at,"
    " ended_at"
)
_LIST = f"""
SELECT {_COLUMNS} FROM rollouts
WHERE (%(state)s::text IS NULL OR state = %(state)s)
    AND (%(before)s::bigint IS NULL OR id < %(before)s)
ORDER BY id DESC LIMIT %(limit)s
"""  # noqa: S608  # constants only
_ONE = f"SELECT {_COLUMNS} FROM rollouts WHERE id = %s"  # noqa: S608
_WAVES = """
SELECT w.wave, w.step, w.agents, w.state, w.started_at, w.ended_at, w.reason,
    count(*) FILTER (WHERE r.state = 'applied'), count(*) FILTER (WHERE r.state = 'passed'),
    count(*) FILTER (WHERE r.state = 'unverified'), count(*) FILTER (WHERE r.state = 'failed'),
    count(*) FILTER (WHERE r.state = 'reverted')
FROM rollout_waves w JOIN rollout_agents r ON r.rollout_id = w.rollout_id AND r.wave = w.wave
WHERE w.rollout_id = ANY(%s)
GROUP BY w.rollout_id, w.wave ORDER BY w.rollout_id, w.wave
"""
_WAVES_OF = _WAVES.replace("SELECT w.wave", "SELECT w.rollout_id, w.wave")
_AGENTS = """
SELECT agent_id, wave, state, version, sent_at, applied_at, baseline, observed, reason
FROM rollout_agents WHERE rollout_id = %(rollout)s
    AND (%(wave)s::int IS NULL OR wave = %(wave)s)
    AND (%(state)s::text IS NULL OR state = %(state)s)
ORDER BY wave, agent_id LIMIT %(limit)s OFFSET %(offset)s
"""


@dataclass(frozen=True)
class Wave:
    wave: int
    step: str
    agents: int
    state: str
    started_at: datetime | None
    ended_at: datetime | None
    reason: str | None
    applied: int
    passed: int
    unverified: int
    failed: int
    reverted: int


@dataclass(frozen=True)
class Rollout:
    id: int
    selector: dict[str, Any]
    settings: dict[str, Any]
    soak_s: float
    state: str
    wave: int
    reason: str | None
    created_by: str
    created_at: datetime
    updated_at: datetime
    ended_at: datetime | None
    waves: list[Wave]


def _rollout(row: tuple[Any, ...], waves: list[Wave]) -> Rollout:
    return Rollout(**dict(zip(_COLUMNS.replace(" ", "").split(","), row, strict=True)), waves=waves)


async def listed(
    conn: AsyncConnection[Any], state: str | None, before: int | None, limit: int
) -> list[Rollout]:
    """Newest first, each with its waves."""
    cur = await conn.execute(_LIST, {"state": state, "before": before, "limit": limit})
    rows = await cur.fetchall()
    cur = await conn.execute(_WAVES_OF, ([r[0] for r in rows],))
    waves: dict[int, list[Wave]] = {}
    for w in await cur.fetchall():
        waves.setdefault(w[0], []).append(Wave(*w[1:]))
    return [_rollout(r, waves.get(r[0], [])) for r in rows]


async def read(conn: AsyncConnection[Any], rollout_id: int) -> Rollout:
    cur = await conn.execute(_ONE, (rollout_id,))
    row = await cur.fetchone()
    if row is None:
        raise NotFound(f"no rollout {rollout_id}")
    cur = await conn.execute(_WAVES, ([rollout_id],))
    return _rollout(row, [Wave(*w) for w in await cur.fetchall()])


async def agents(
    conn: AsyncConnection[Any],
    rollout_id: int,
    wave: int | None,
    state: str | None,
    limit: int,
    offset: int,
) -> list[tuple[Any, ...]]:
    """The rollout's agents (id, wave, state, version, sent, applied, before, since, reason)."""
    cur = await conn.execute(
        _AGENTS,
        {"rollout": rollout_id, "wave": wave, "state": state, "limit": limit, "offset": offset},
    )
    return await cur.fetchall()


# -- the job's side: moving rollouts ------------------------------------------------------------
_ACTIVE_IDS = "SELECT id FROM rollouts WHERE state IN ('running', 'paused') ORDER BY id"
_CURRENT = """
SELECT r.state, r.wave, r.soak_s, r.settings, w.state, w.started_at,
    (SELECT max(wave) FROM rollout_waves WHERE rollout_id = r.id)
FROM rollouts r JOIN rollout_waves w ON w.rollout_id = r.id AND w.wave = r.wave
WHERE r.id = %s
"""
_PENDING = f"""
SELECT r.agent_id, lv.state = 'online'
FROM rollout_agents r JOIN agents a USING (agent_id) CROSS JOIN LATERAL ({liveness.STATE}) lv
WHERE r.rollout_id = %(rollout)s AND r.wave = %(wave)s AND r.state = 'pending'
"""  # noqa: S608  # constants only
_SEND = f"""
WITH members AS (
    SELECT agent_id, online FROM unnest(%(ids)s::text[], %(online)s::bool[]) AS m(agent_id, online)
), old AS (
    SELECT s.agent_id, {agentsettings.PREVIOUS} AS previous
    FROM agent_settings s JOIN members USING (agent_id)
), written AS ({agentsettings.upsert_many_sql("SELECT agent_id FROM members")})
UPDATE rollout_agents r
SET state = CASE WHEN m.online THEN 'sent' ELSE 'unverified' END, previous = old.previous,
    version = written.version, sent_at = now()
FROM written JOIN members m USING (agent_id) LEFT JOIN old USING (agent_id)
WHERE r.rollout_id = %(rollout)s AND r.agent_id = written.agent_id AND r.state = 'pending'
"""  # noqa: S608  # constants only
_BASELINE = """
UPDATE rollout_agents r SET baseline = b.figures
FROM unnest(%s::text[], %s::jsonb[]) AS b(agent_id, figures)
WHERE r.rollout_id = %s AND r.agent_id = b.agent_id
"""
_WAVE_STATE = """
UPDATE rollout_waves SET state = %s, reason = %s,
    started_at = CASE WHEN %s = 'soaking' THEN now() ELSE started_at END,
    ended_at = CASE WHEN %s IN ('passed', 'failed') THEN now() END
WHERE rollout_id = %s AND wave = %s
"""
# Agents that reported the version (or a later one) applied; their soak starts then.
_APPLIED = """
UPDATE rollout_agents r SET state = 'applied',
    applied_at = greatest(coalesce(a.settings_reported_at, now()), r.sent_at)
FROM agents a
WHERE r.rollout_id = %s AND r.wave = %s AND r.state = 'sent' AND a.agent_id = r.agent_id
    AND a.settings_version >= r.version AND a.settings_applied
"""
_SENT = """
SELECT r.agent_id, r.sent_at, a.settings_version = r.version AND NOT a.settings_applied,
    a.settings_error
FROM rollout_agents r JOIN agents a USING (agent_id)
WHERE r.rollout_id = %s AND r.wave = %s AND r.state = 'sent'
"""
_SOAKING = """
SELECT agent_id, applied_at, baseline FROM rollout_agents
WHERE rollout_id = %s AND wave = %s AND state = 'applied'
"""
_OBSERVED = """
UPDATE rollout_agents r SET observed = o.figures,
    state = CASE WHEN o.passed THEN 'passed' ELSE r.state END
FROM unnest(%s::text[], %s::jsonb[], %s::bool[]) AS o(agent_id, figures, passed)
WHERE r.rollout_id = %s AND r.agent_id = o.agent_id AND r.state = 'applied'
"""
_FAIL_AGENTS = """
UPDATE rollout_agents r SET state = 'failed', reason = f.reason
FROM unnest(%s::text[], %s::text[]) AS f(agent_id, reason)
WHERE r.rollout_id = %s AND r.agent_id = f.agent_id
"""
_UNDECIDED = """
SELECT count(*) FROM rollout_agents
WHERE rollout_id = %s AND wave = %s AND state IN ('pending', 'sent', 'applied')
"""
_NEXT_WAVE = "UPDATE rollouts SET wave = wave + 1, updated_at = now() WHERE id = %s"


class RolloutMover:
    """Moves every active rollout one step per `round` (the job calls it; one process at a time)."""

    def __init__(
        self, conn: Connection[Any], redis_client: redis.Redis | None, settings: Settings
    ) -> None:
        self._conn = conn  # autocommit
        self._redis = redis_client
        self._settings = settings
        self._liveness = liveness.params(settings)

    def round(self) -> None:
        for (rollout_id,) in self._conn.execute(_ACTIVE_IDS).fetchall():
            self.step(rollout_id)

    def step(self, rollout_id: int) -> None:
        row = self._conn.execute(_CURRENT, (rollout_id,)).fetchone()
        if row is None:
            return
        state, wave, soak_s, changes, wave_state, _, last_wave = row
        if state not in ACTIVE:
            return
        if wave_state == "pending":
            if state == "running":
                self._start(rollout_id, wave, soak_s, changes)
        elif wave_state == "soaking":
            self._soak(rollout_id, wave, soak_s, wave == last_wave)

    # Starting a wave: before figures (read outside the transaction), then one transaction.
    def _start(self, rollout_id: int, wave: int, soak_s: float, changes: dict[str, Any]) -> None:
        conn = self._conn
        members = conn.execute(
            _PENDING, {**self._liveness, "rollout": rollout_id, "wave": wave}
        ).fetchall()
        now = conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
        window = timedelta(seconds=min(max(soak_s, BASELINE_MIN_S), BASELINE_MAX_S))
        before = rolloutgate.figures(
            conn, {a: now - window for a, online in members if online}, now
        )
        ids = [a for a, _ in members]
        params = agentsettings.change_params(None, changes)
        with conn.transaction():
            state, current = conn.execute(_LOCK, (rollout_id,)).fetchone()  # type: ignore[misc]
            if state != "running" or current != wave:
                return  # paused or aborted meanwhile
            conn.execute(
                _SEND,
                {**params, "ids": ids, "online": [o for _, o in members], "rollout": rollout_id},
            )
            conn.execute(
                _BASELINE,
                (list(before), [Jsonb(f.to_json()) for f in before.values()], rollout_id),
            )
            conn.execute(_WAVE_STATE, ("soaking", None, "soaking", "soaking", rollout_id, wave))
        log.info("rollout %d: wave %d started on %d agents", rollout_id, wave, len(ids))
        self._announce(ids)

    def _soak(self, rollout_id: int, wave: int, soak_s: float, last: bool) -> None:
        conn = self._conn
        conn.execute(_APPLIED, (rollout_id, wave))
        now = conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
        failures: dict[str, str] = {}
        again = []
        timeout = self._settings.rollout_apply_timeout_s
        for agent_id, sent_at, refused, error in conn.execute(_SENT, (rollout_id, wave)):
            if refused:
                failures[agent_id] = f"refused the settings: {error or 'no reason given'}"
            elif (now - sent_at).total_seconds() > timeout:
                failures[agent_id] = f"did not report the settings applied within {timeout:g} s"
            elif (now - sent_at).total_seconds() > REANNOUNCE_AFTER_S:
                again.append(agent_id)
        soaking = conn.execute(_SOAKING, (rollout_id, wave)).fetchall()
        since = rolloutgate.figures(conn, {a: applied for a, applied, _ in soaking}, now)
        passed: dict[str, bool] = {}
        for agent_id, applied_at, baseline in soaking:
            figures = since[agent_id]
            before = rolloutgate.Figures(**baseline) if baseline else rolloutgate.Figures(0.0)
            verdict = rolloutgate.judge(before, figures)
            soaked_s = (now - applied_at).total_seconds()
            soaked = soaked_s >= soak_s
            committed = figures.health_samples > 0 and figures.batches > 0
            if verdict is None and not committed and soaked_s > soak_s + COMMIT_GRACE_S:
                verdict = "no batch committed since it applied the settings"
            if verdict is not None:
                failures[agent_id] = verdict
            passed[agent_id] = verdict is None and soaked and committed
        if since:
            conn.execute(
                _OBSERVED,
                (
                    list(since),
                    [Jsonb(f.to_json()) for f in since.values()],
                    [passed[a] for a in since],
                    rollout_id,
                ),
            )
        if failures:
            self._fail(rollout_id, wave, failures)
            return
        self._announce(again)
        if conn.execute(_UNDECIDED, (rollout_id, wave)).fetchone()[0]:  # type: ignore[index]
            return
        self._pass(rollout_id, wave, last)

    def _fail(self, rollout_id: int, wave: int, failures: dict[str, str]) -> None:
        conn = self._conn
        first = next(iter(sorted(failures)))
        more = f" (and {len(failures) - 1} more agents)" if len(failures) > 1 else ""
        reason = f"wave {wave + 1}: agent {first} {failures[first]}{more}"
        with conn.transaction():
            state, current = conn.execute(_LOCK, (rollout_id,)).fetchone()  # type: ignore[misc]
            if state not in ACTIVE or current != wave:
                return
            conn.execute(_FAIL_AGENTS, (list(failures), list(failures.values()), rollout_id))
            reverted = [
                r[0]
                for r in conn.execute(_REVERT, {"rollout": rollout_id, "wave": wave}).fetchall()
            ]
            conn.execute(_WAVE_STATE, ("failed", reason, "failed", "failed", rollout_id, wave))
            conn.execute(_SET_STATE, ("failed", reason, "failed", rollout_id))
            conn.execute(_END_MEMBERSHIPS, (rollout_id,))
            auditlog.record(
                conn,
                auditlog.BY_PLATFORM,
                auditlog.ROLLOUT_FAIL,
                target(rollout_id),
                {"wave": wave, "reason": reason, "failed": failures, "reverted": len(reverted)},
            )
        log.warning("rollout %d stopped: %s; %d agents reverted", rollout_id, reason, len(reverted))
        self._announce(reverted)

    def _pass(self, rollout_id: int, wave: int, last: bool) -> None:
        conn = self._conn
        with conn.transaction():
            state, current = conn.execute(_LOCK, (rollout_id,)).fetchone()  # type: ignore[misc]
            if state not in ACTIVE or current != wave:
                return
            conn.execute(_WAVE_STATE, ("passed", None, "passed", "passed", rollout_id, wave))
            if last:
                conn.execute(_SET_STATE, ("completed", None, "completed", rollout_id))
                conn.execute(_END_MEMBERSHIPS, (rollout_id,))
                auditlog.record(
                    conn,
                    auditlog.BY_PLATFORM,
                    auditlog.ROLLOUT_COMPLETE,
                    target(rollout_id),
                    {"waves": wave + 1},
                )
            else:
                conn.execute(_NEXT_WAVE, (rollout_id,))
        log.info("rollout %d: wave %d passed%s", rollout_id, wave, "; completed" if last else "")

    def _announce(self, agent_ids: list[str]) -> None:
        if self._redis is None or not agent_ids:
            return  # pushed at each agent's next register
        try:
            control.publish_many(self._redis, [control.SettingsChanged(a) for a in agent_ids])
        except redis.RedisError as exc:
            log.warning("rollout settings not announced (%s): pushed at the next register", exc)

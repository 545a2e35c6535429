"""The platform's own series of each agent, as PromQL reads them: liveness and identity.

- ``fleetpulse_agent_up{agent_id}``: 1 while the agent is not offline (online, stale or
  data_stale: its stream is open and heartbeats come), 0 while offline.
- ``fleetpulse_agent_state{agent_id, state}``: 1 for the state the agent is in, 0 for the other
  three (kube-state-metrics' ``kube_pod_status_phase`` shape), so ``sum by (state)`` counts them.
- ``fleetpulse_agent_info{agent_id, hostname, ip, os, arch, version, <tags>}``: 1 while the agent
  exists; its tags (config and operator's) are labels, to join on ``agent_id`` the way Prometheus
  users join ``node_uname_info``: ``load1 * on(agent_id) group_left(env) fleetpulse_agent_info``.

They are not stored as points: the series are rows of the ``fleet_series`` view (schema 15, ids
below zero), and their samples are computed here from the liveness history (agent_liveness) and
the state of now (fleetpulse/liveness.py), one sample every `STEP_S` seconds at multiples of it,
as if the platform scraped itself. So they are exact at every past time the history covers, cost
no ingest, and answer for 50,000 agents without 50,000 agents' worth of writes. The info series'
labels are the agent's identity and tags of now (a tag's past values are not kept).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
from psycopg import AsyncConnection

from fleetpulse import liveness
from fleetpulse.api.promql.errors import PromQLError
from fleetpulse.api.selectors import Series

STEP_S = 15
_STEP_US = STEP_S * 1_000_000
UP, STATE, INFO = "fleetpulse_agent_up", "fleetpulse_agent_state", "fleetpulse_agent_info"
# What /api/v1/metadata says of them.
HELP = {
    UP: "1 while the agent is not offline (stream open, heartbeats arriving), else 0.",
    STATE: "1 for the agent's liveness state (online, stale, data_stale, offline), else 0.",
    INFO: "The agent's identity and tags as labels; always 1.",
}
_CODE = {state: code for code, state in enumerate(liveness.STATES)}
_OFFLINE = _CODE["offline"]

# Per agent: the transitions inside the range, the last one before it, and the state of now where
# no sweep recorded it yet; and when the agent was first seen (its info series starts there).
_TIMELINES = f"""
SELECT agent_id, (extract(epoch FROM at) * 1000000)::int8, state FROM agent_liveness
WHERE agent_id = ANY(%(agents)b::text[]) AND at > %(lo)s AND at <= %(hi)s
UNION ALL
SELECT w.agent_id, (extract(epoch FROM p.at) * 1000000)::int8, p.state
FROM unnest(%(agents)b::text[]) AS w(agent_id) CROSS JOIN LATERAL (
    SELECT at, state FROM agent_liveness h WHERE h.agent_id = w.agent_id AND h.at <= %(lo)s
    ORDER BY at DESC LIMIT 1
) p
UNION ALL
SELECT a.agent_id, (extract(epoch FROM lv.since) * 1000000)::int8, lv.state
FROM agents a CROSS JOIN LATERAL ({liveness.STATE}) lv
WHERE a.agent_id = ANY(%(agents)b::text[]) AND lv.state IS DISTINCT FROM a.liveness
    AND lv.since <= %(hi)s
"""  # noqa: S608  # constants only
_CREATED = """
SELECT agent_id, (extract(epoch FROM created_at) * 1000000)::int8 FROM agents
WHERE agent_id = ANY(%b::text[])
"""


def virtual(series: list[Series]) -> list[Series]:
    """The series of ``series`` that this module answers for."""
    return [s for s in series if s.series_id < 0]


async def samples(
    conn: AsyncConnection[Any],
    series: list[Series],
    lo_us: int,
    hi_us: int,
    budget: int,
    rule: dict[str, Any],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The samples of the virtual ``series`` in [lo_us, hi_us]: per sample its series id, time
    and value. At most ``budget`` samples, else the query's "too many samples" error. ``rule``:
    the liveness parameters (fleetpulse/liveness.py `params`)."""
    empty = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    grid = np.arange(-(-lo_us // _STEP_US) * _STEP_US, hi_us + 1, _STEP_US, dtype=np.int64)
    if not series:
        return empty
    if len(series) * len(grid) > budget:
        raise PromQLError(
            "query processing would load too many samples into memory in query execution "
            f"({len(series)} agent series x {len(grid)} steps); narrow it",
            "execution",
        )
    agents = sorted({s.agent_id for s in series})
    row_of = {agent: i for i, agent in enumerate(agents)}
    timeline = await _timeline(conn, agents, row_of, grid, lo_us, hi_us, rule)
    cur = await conn.execute(_CREATED, (agents,))
    created = np.full(len(agents), np.iinfo(np.int64).max, np.int64)
    for agent, at in await cur.fetchall():
        created[row_of[agent]] = at
    row = np.array([row_of[s.agent_id] for s in series], np.int64)
    # the series by kind: up, info, and state per state code (one pass)
    kinds: dict[tuple[str, int], list[int]] = {}
    for i, s in enumerate(series):
        kinds.setdefault((s.name, _code(s) if s.name == STATE else -1), []).append(i)
    sids, stamps, values = [], [], []
    for (kind, wanted), chosen in kinds.items():
        # the chosen series' agents' samples: per sample, which chosen series it belongs to
        at_row = np.full(len(agents), -1, np.int64)
        at_row[row[chosen]] = np.arange(len(chosen))
        which = at_row[timeline.agent]
        mine = which >= 0
        ts, code, which = timeline.ts[mine], timeline.code[mine], which[mine]
        if kind == INFO:
            keep = ts >= created[timeline.agent[mine]]
            value = np.ones(int(keep.sum()))
        else:
            keep = code >= 0
            value = (code[keep] != _OFFLINE if kind == UP else code[keep] == wanted).astype(float)
        ids = np.array([series[i].series_id for i in chosen], np.int64)
        sids.append(ids[which[keep]])
        stamps.append(ts[keep])
        values.append(value)
    if not sids:
        return empty
    return np.concatenate(sids), np.concatenate(stamps), np.concatenate(values)


def _code(series: Series) -> int:
    return _CODE.get(series.labels.get("state", ""), -2)


class _Timeline:
    """Sample times of every agent (the grid, and its own transitions inside the range, so an
    instant query at any time reads the state of that time) and its state code at each (-1:
    not known yet)."""

    def __init__(self, agent: np.ndarray, ts: np.ndarray, code: np.ndarray) -> None:
        self.agent, self.ts, self.code = agent, ts, code


async def _timeline(
    conn: AsyncConnection[Any],
    agents: list[str],
    row_of: dict[str, int],
    grid: np.ndarray,
    lo_us: int,
    hi_us: int,
    rule: dict[str, Any],
) -> _Timeline:
    """One searchsorted over every agent's transitions at once, keyed by (agent, time)."""
    cur = await conn.execute(
        _TIMELINES, {"agents": agents, "lo": _at(lo_us), "hi": _at(hi_us), **rule}
    )
    rows = await cur.fetchall()
    agent = np.array([row_of[r[0]] for r in rows], np.int64)
    at = np.array([r[1] for r in rows], np.int64)
    code = np.array([_CODE[r[2]] for r in rows], np.int64)
    # before the range only the last transition matters: its state holds at lo
    span = hi_us - lo_us + 2
    keys = agent * span + (np.clip(at, lo_us - 1, hi_us) - (lo_us - 1))
    order = np.argsort(keys, kind="stable")
    keys, agent, code = keys[order], agent[order], code[order]
    on_grid = (
        np.arange(len(agents), dtype=np.int64)[:, None] * span + (grid - (lo_us - 1))
    ).ravel()
    inside = keys[(at[order] >= lo_us) & (at[order] <= hi_us)]
    # sorted, without repeats (np.unique's hash path took 1.25 s for 1,000,000 keys here)
    query = np.sort(np.concatenate([on_grid, inside]))
    query = query[np.concatenate([[True], query[1:] != query[:-1]])] if len(query) else query
    states = np.full(len(query), -1, np.int64)
    if len(keys):
        found = np.searchsorted(keys, query, side="right") - 1
        same = (found >= 0) & (agent[np.maximum(found, 0)] == query // span)
        states = np.where(same, code[np.maximum(found, 0)], -1)
    return _Timeline(query // span, query % span + (lo_us - 1), states)


def _at(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1e6, UTC)

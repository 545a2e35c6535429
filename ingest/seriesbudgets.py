"""Series budgets: how many distinct series an agent may own (schema 16).

A host whose software starts putting a request id or a timestamp in a label invents a new series
per request, and a time-series store pays for each one forever (influxdb#6679). Each agent
therefore has a budget of distinct series: the platform's ``series_budget`` (10,000 by default:
the project's agent sends about 220 on a small VM, and a host with hundreds of container
interfaces and mounts a few thousand), overridden by an operator for one agent, or for every
agent carrying a tag (the largest such budget when several tags match; an agent's own budget wins
over its tags'). The workers enforce it where series are created (ingest/worker/series.py): points
of series the agent already has keep flowing, points of new series past the budget are rejected
with the reason ``series_budget`` and counted, and the agent is told in its acks
(ingest/frontend/service.py). Synchronous for the CLI and the workers, async for the API.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection, Connection

from fleetpulse import auditlog

REASON = "series_budget"

# Per agent of %(agents)s: its budget and how many series it has. An agent's own budget, else the
# largest of its tags' (config and operator's), else the default.
USAGE = """
SELECT w.agent_id,
    coalesce(
        (SELECT b.budget FROM series_budgets b WHERE b.agent_id = w.agent_id),
        (SELECT max(b.budget) FROM series_budgets b
            JOIN agents a ON a.agent_id = w.agent_id
            LEFT JOIN agent_tags t ON t.agent_id = w.agent_id
            WHERE b.tag_key IS NOT NULL
                AND (a.config_tags || coalesce(t.tags, '{}'::jsonb)) ->> b.tag_key = b.tag_value),
        %(default)s) AS budget,
    (SELECT count(*) FROM series s WHERE s.agent_id = w.agent_id) AS used
FROM unnest(%(agents)s::text[]) AS w(agent_id)
"""
_REFUSED = f"""
SELECT coalesce(sum(points), 0) FROM rejects WHERE agent_id = %s AND reason = '{REASON}'
"""  # noqa: S608  # constants only

_SET = """
INSERT INTO series_budgets (agent_id, tag_key, tag_value, budget)
VALUES (%(agent_id)s, %(tag_key)s, %(tag_value)s, %(budget)s)
ON CONFLICT (agent_id, tag_key, tag_value) DO UPDATE SET
    budget = EXCLUDED.budget, updated_at = now()
"""
_CLEAR = """
DELETE FROM series_budgets
WHERE agent_id IS NOT DISTINCT FROM %(agent_id)s AND tag_key IS NOT DISTINCT FROM %(tag_key)s
    AND tag_value IS NOT DISTINCT FROM %(tag_value)s
"""
_LIST = """
SELECT agent_id, tag_key, tag_value, budget, updated_at FROM series_budgets
ORDER BY agent_id NULLS LAST, tag_key, tag_value
"""
# Agents whose new series were refused lately: their acks say so (the front-end's cache).
OVER_BUDGET = f"""
SELECT agent_id, points, last_at FROM rejects
WHERE reason = '{REASON}' AND last_at > now() - interval '5 minutes'
"""  # noqa: S608  # constants only


@dataclass(frozen=True)
class Target:
    """What a budget applies to: one agent, or every agent carrying the tag key=value."""

    agent_id: str | None = None
    tag_key: str | None = None
    tag_value: str | None = None

    def __str__(self) -> str:
        return (
            self.agent_id if self.agent_id is not None else f"tag:{self.tag_key}={self.tag_value}"
        )

    def params(self) -> dict[str, Any]:
        return {"agent_id": self.agent_id, "tag_key": self.tag_key, "tag_value": self.tag_value}


@dataclass(frozen=True)
class Budget:
    target: Target
    budget: int


def usage(conn: Connection[Any], agents: list[str], default: int) -> dict[str, tuple[int, int]]:
    """Per agent: (budget, series it has)."""
    rows = conn.execute(USAGE, {"agents": agents, "default": default}).fetchall()
    return {agent: (budget, used) for agent, budget, used in rows}


async def usage_async(
    conn: AsyncConnection[Any], agents: list[str], default: int
) -> dict[str, tuple[int, int]]:
    cur = await conn.execute(USAGE, {"agents": agents, "default": default})
    return {agent: (budget, used) for agent, budget, used in await cur.fetchall()}


async def refused_points_async(conn: AsyncConnection[Any], agent_id: str) -> int:
    """Points of new series refused past the agent's budget, in all."""
    cur = await conn.execute(_REFUSED, (agent_id,))
    row = await cur.fetchone()
    return int(row[0]) if row else 0


def change(conn: Connection[Any], target: Target, budget: int | None, actor: str) -> None:
    """Set the budget of ``target`` (None: remove it, the default or a tag's applies again)."""
    with conn.transaction():
        conn.execute(_SET if budget is not None else _CLEAR, {**target.params(), "budget": budget})
        auditlog.record(conn, actor, auditlog.SERIES_BUDGET_CHANGE, str(target), {"budget": budget})


async def change_async(
    conn: AsyncConnection[Any], target: Target, budget: int | None, actor: str
) -> None:
    async with conn.transaction():
        await conn.execute(
            _SET if budget is not None else _CLEAR, {**target.params(), "budget": budget}
        )
        await auditlog.record_async(
            conn, actor, auditlog.SERIES_BUDGET_CHANGE, str(target), {"budget": budget}
        )


def listed(conn: Connection[Any]) -> list[Budget]:
    return [_budget(row) for row in conn.execute(_LIST).fetchall()]


async def listed_async(conn: AsyncConnection[Any]) -> list[Budget]:
    cur = await conn.execute(_LIST)
    return [_budget(row) for row in await cur.fetchall()]


def _budget(row: Any) -> Budget:
    agent_id, tag_key, tag_value, budget, _ = row
    return Budget(Target(agent_id, tag_key, tag_value), budget)

"""Agent tags as the platform keeps them: the agent's own (``agents.config_tags``, replaced at every
register) and an operator's (``agent_tags``, changed through the API and the CLI), the operator's
winning on a shared key (schema 0013; the rules of a tag: agent/tags.py).

An operator's change is a JSON merge patch (RFC 7396): a text value sets the key, ``null`` removes
the operator's tag (the agent's own value, if any, shows again). Synchronous for the CLI, async
for the API, the same statements.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection, Connection
from psycopg.types.json import Jsonb

from fleetpulse import auditlog
from fleetpulse.agent import tags as rules

# The operator's patch applied in one statement: keys set to text merged in, keys set to null
# removed; the result checked by the caller before (rules.check on the merged mapping).
_PATCH = """
INSERT INTO agent_tags AS t (agent_id, tags)
VALUES (%(agent_id)s, jsonb_strip_nulls(%(patch)s::jsonb))
ON CONFLICT (agent_id) DO UPDATE SET
    tags = jsonb_strip_nulls(t.tags || %(patch)s::jsonb), updated_at = now()
RETURNING tags
"""
_READ = """
SELECT a.config_tags, coalesce(t.tags, '{}'::jsonb)
FROM agents a LEFT JOIN agent_tags t USING (agent_id) WHERE a.agent_id = %s
"""
_READ_OPERATOR = "SELECT tags FROM agent_tags WHERE agent_id = %s"


@dataclass(frozen=True)
class AgentTags:
    config: dict[str, str]  # the agent's config file (agent.tags)
    operator: dict[str, str]  # set by an operator

    @property
    def effective(self) -> dict[str, str]:
        return {**self.config, **self.operator}


def check_patch(current: Mapping[str, str], patch: Mapping[str, Any]) -> None:
    """ValueError naming the problem if ``patch`` is not a merge patch of tags, or if the
    operator's tags it leaves break a rule (agent/tags.py)."""
    for key, value in patch.items():
        if value is not None and not isinstance(value, str):
            raise ValueError(f"tag {key!r}: a value is text, or null to remove the tag")
    merged = {k: v for k, v in {**current, **patch}.items() if v is not None}
    rules.check(merged)


def patch(
    conn: Connection[Any], agent_id: str, changes: Mapping[str, Any], actor: str
) -> AgentTags:
    """Apply ``changes`` to the operator's tags (``actor`` did: the audit log, same transaction)."""
    with conn.transaction():
        row = conn.execute(_READ_OPERATOR + " FOR UPDATE", (agent_id,)).fetchone()
        check_patch(row[0] if row else {}, changes)
        conn.execute(_PATCH, {"agent_id": agent_id, "patch": Jsonb(dict(changes))})
        auditlog.record(conn, actor, auditlog.TAGS_CHANGE, agent_id, {"patch": dict(changes)})
    found = read(conn, agent_id)
    assert found is not None
    return found


async def patch_async(
    conn: AsyncConnection[Any], agent_id: str, changes: Mapping[str, Any], actor: str
) -> AgentTags:
    async with conn.transaction():
        cur = await conn.execute(_READ_OPERATOR + " FOR UPDATE", (agent_id,))
        row = await cur.fetchone()
        check_patch(row[0] if row else {}, changes)
        await conn.execute(_PATCH, {"agent_id": agent_id, "patch": Jsonb(dict(changes))})
        await auditlog.record_async(
            conn, actor, auditlog.TAGS_CHANGE, agent_id, {"patch": dict(changes)}
        )
    found = await read_async(conn, agent_id)
    assert found is not None
    return found


def read(conn: Connection[Any], agent_id: str) -> AgentTags | None:
    row = conn.execute(_READ, (agent_id,)).fetchone()
    return AgentTags(row[0], row[1]) if row else None


async def read_async(conn: AsyncConnection[Any], agent_id: str) -> AgentTags | None:
    cur = await conn.execute(_READ, (agent_id,))
    row = await cur.fetchone()
    return AgentTags(row[0], row[1]) if row else None

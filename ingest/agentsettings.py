"""Per-agent settings on the platform: stored in ``agent_settings``, pushed by the front-ends.

A change (`fleetpulse agents config`, ``PUT /agents/{id}/config``) writes a new version and
publishes ``control.SettingsChanged`` (ingest/control.py); the front-end holding the agent's
stream reads the row and sends it (ingest/frontend/service.py). The front-end also sends it at every
register, so an agent that was away, or an announcement that was lost, still gets the latest
version. What the agent answered (SettingsStatus) lands in the ``agents`` row.
"""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection, Connection

from fleetpulse import auditlog
from fleetpulse.agent.collectors.names import COLLECTORS
from fleetpulse.agent.remote import RemoteSettings, check
from fleetpulse.errors import Conflict
from fleetpulse.proto import agent_pb2

# Fields an update may set; an absent key keeps the stored value, None clears it.
FIELDS = ("collect_interval_ms", "heartbeat_interval_ms", "collectors")

_SELECT = """
SELECT version, collect_interval_ms, heartbeat_interval_ms, collectors
FROM agent_settings WHERE agent_id = %s
"""
_SELECT_MANY = """
SELECT agent_id, version, collect_interval_ms, heartbeat_interval_ms, collectors
FROM agent_settings WHERE agent_id = ANY(%s)
"""

# Only the fields the change names are written; the others keep their stored value.
_ON_CONFLICT = """
ON CONFLICT (agent_id) DO UPDATE SET
    version = s.version + 1,
    collect_interval_ms = CASE WHEN %(set_collect)s
        THEN EXCLUDED.collect_interval_ms ELSE s.collect_interval_ms END,
    heartbeat_interval_ms = CASE WHEN %(set_heartbeat)s
        THEN EXCLUDED.heartbeat_interval_ms ELSE s.heartbeat_interval_ms END,
    collectors = CASE WHEN %(set_collectors)s THEN EXCLUDED.collectors ELSE s.collectors END,
    updated_at = now()
"""
_INSERT = """
INSERT INTO agent_settings AS s
    (agent_id, version, collect_interval_ms, heartbeat_interval_ms, collectors)
SELECT src.agent_id, 1, %(collect_interval_ms)s::integer, %(heartbeat_interval_ms)s::integer,
    %(collectors)s::text[]
"""
# One statement, so two concurrent updates of one agent get two versions, never a lost one.
_UPSERT = (
    _INSERT
    + "FROM (SELECT %(agent_id)s::text AS agent_id) src"
    + _ON_CONFLICT
    + "RETURNING version, collect_interval_ms, heartbeat_interval_ms, collectors"
)


def upsert_many_sql(source: str) -> str:
    """The same change for many agents in one statement: ``source`` is a query with an
    ``agent_id`` column; the parameters are `change_params`' (its ``agent_id`` unused). Returns each
    agent's id and new version. A rollout (ingest/rollouts.py) writes a wave with it."""
    return f"{_INSERT}FROM ({source}) src{_ON_CONFLICT}RETURNING s.agent_id, s.version"


# What a rollout keeps of an agent's settings row before changing it (``s``: agent_settings), and
# how it restores them: every field written back as it was (null: the agent's file decides).
PREVIOUS = (
    "jsonb_build_object('collect_interval_ms', s.collect_interval_ms, "
    "'heartbeat_interval_ms', s.heartbeat_interval_ms, 'collectors', s.collectors)"
)


def restore_many_sql(source: str) -> str:
    """Write back ``previous`` (a `PREVIOUS` object, or null) for each ``agent_id`` of ``source``,
    as a new version; returns each agent's id and new version."""
    return f"""
UPDATE agent_settings s SET version = s.version + 1,
    collect_interval_ms = (src.previous ->> 'collect_interval_ms')::integer,
    heartbeat_interval_ms = (src.previous ->> 'heartbeat_interval_ms')::integer,
    collectors = CASE WHEN jsonb_typeof(src.previous -> 'collectors') = 'array'
        THEN ARRAY(SELECT jsonb_array_elements_text(src.previous -> 'collectors')) END,
    updated_at = now()
FROM ({source}) src WHERE s.agent_id = src.agent_id
RETURNING s.agent_id, s.version
"""  # noqa: S608  # the source is the caller's constant


_REPORTED = """
SELECT settings_version, settings_applied, settings_error, settings_reported_at,
    collect_interval_ms, heartbeat_interval_ms, collectors
FROM agents WHERE agent_id = %s
"""

_RECORD_STATUS = """
UPDATE agents SET settings_version = %s, settings_applied = %s, settings_error = %s,
    settings_reported_at = now(), collect_interval_ms = %s, heartbeat_interval_ms = %s,
    collectors = %s
WHERE agent_id = %s
"""


def validate(changes: dict[str, Any]) -> None:
    """ValueError (one line) unless every key is a known field with a value in range."""
    unknown = sorted(set(changes) - set(FIELDS))
    if unknown:
        raise ValueError(f"unknown settings {', '.join(unknown)}; known: {', '.join(FIELDS)}")
    check(
        changes.get("collect_interval_ms"),
        changes.get("heartbeat_interval_ms"),
        changes.get("collectors"),
        COLLECTORS.keys(),
    )


def change_params(agent_id: str | None, changes: dict[str, Any]) -> dict[str, Any]:
    """The bind parameters of a change (ValueError if invalid)."""
    validate(changes)
    collectors = changes.get("collectors")
    return {
        "agent_id": agent_id,
        "collect_interval_ms": changes.get("collect_interval_ms"),
        "heartbeat_interval_ms": changes.get("heartbeat_interval_ms"),
        "collectors": list(collectors) if collectors is not None else None,
        "set_collect": "collect_interval_ms" in changes,
        "set_heartbeat": "heartbeat_interval_ms" in changes,
        "set_collectors": "collectors" in changes,
    }


def _settings(row: tuple[Any, ...] | None) -> RemoteSettings | None:
    if row is None:
        return None
    version, collect_ms, heartbeat_ms, collectors = row
    return RemoteSettings(
        version, collect_ms, heartbeat_ms, tuple(collectors) if collectors is not None else None
    )


def update(
    conn: Connection[Any], agent_id: str, changes: dict[str, Any], actor: str
) -> RemoteSettings:
    """Store a new version (only the keys in ``changes`` change; ``actor`` made it: the audit
    log, in the same transaction); ValueError if invalid."""
    params = change_params(agent_id, changes)
    with conn.transaction():
        _not_in_rollout(conn.execute(_IN_ROLLOUT, (agent_id,)).fetchone(), agent_id)
        settings = _settings(conn.execute(_UPSERT, params).fetchone())
        assert settings is not None  # RETURNING always yields the row
        auditlog.record(conn, actor, auditlog.SETTINGS_CHANGE, agent_id, _detail(settings, changes))
    return settings


async def update_async(
    conn: AsyncConnection[Any], agent_id: str, changes: dict[str, Any], actor: str
) -> RemoteSettings:
    params = change_params(agent_id, changes)
    async with conn.transaction():
        cur = await conn.execute(_IN_ROLLOUT, (agent_id,))
        _not_in_rollout(await cur.fetchone(), agent_id)
        cur = await conn.execute(_UPSERT, params)
        settings = _settings(await cur.fetchone())
        assert settings is not None
        await auditlog.record_async(
            conn, actor, auditlog.SETTINGS_CHANGE, agent_id, _detail(settings, changes)
        )
    return settings


_IN_ROLLOUT = "SELECT rollout_id FROM rollout_agents WHERE agent_id = %s AND active"


def _not_in_rollout(row: tuple[Any, ...] | None, agent_id: str) -> None:
    """One rollout per agent, and no hand-made change under one: its revert would undo it."""
    if row is not None:
        raise Conflict(
            f"agent {agent_id} is in rollout {row[0]}: abort it, or wait for it to end, "
            "before changing its settings by hand"
        )


def _detail(settings: RemoteSettings, changes: dict[str, Any]) -> dict[str, Any]:
    """What the audit log keeps of a settings change: the version and what it asked for."""
    return {"version": settings.version, "changes": changes}


def load(conn: Connection[Any], agent_id: str) -> RemoteSettings | None:
    return _settings(conn.execute(_SELECT, (agent_id,)).fetchone())


async def load_async(conn: AsyncConnection[Any], agent_id: str) -> RemoteSettings | None:
    return (await load_many_async(conn, [agent_id]))[0]


async def load_many_async(
    conn: AsyncConnection[Any], agent_ids: list[str]
) -> list[RemoteSettings | None]:
    """Each agent's platform-side settings, in order (None: it has none)."""
    cur = await conn.execute(_SELECT_MANY, (agent_ids,))
    found = {row[0]: _settings(row[1:]) for row in await cur.fetchall()}
    return [found.get(agent_id) for agent_id in agent_ids]


def _reported(row: tuple[Any, ...] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    names = ("version", "applied", "error", "reported_at", *FIELDS)
    return dict(zip(names, row, strict=True))


def reported(conn: Connection[Any], agent_id: str) -> dict[str, Any] | None:
    """What the agent last said about its settings (None: no such agent)."""
    return _reported(conn.execute(_REPORTED, (agent_id,)).fetchone())


async def reported_async(conn: AsyncConnection[Any], agent_id: str) -> dict[str, Any] | None:
    cur = await conn.execute(_REPORTED, (agent_id,))
    return _reported(await cur.fetchone())


async def record_status(
    conn: AsyncConnection[Any], agent_id: str, status: agent_pb2.SettingsStatus
) -> None:
    await conn.execute(
        _RECORD_STATUS,
        (
            status.version,
            status.applied,
            status.error or None,
            status.collect_interval_ms or None,
            status.heartbeat_interval_ms or None,
            list(status.collectors) or None,
            agent_id,
        ),
    )


def to_message(settings: RemoteSettings) -> bytes:
    """The ServerMessage that carries ``settings`` to the agent."""
    return agent_pb2.ServerMessage(
        settings=agent_pb2.AgentSettings(
            version=settings.version,
            collect_interval_ms=settings.collect_interval_ms or 0,
            heartbeat_interval_ms=settings.heartbeat_interval_ms or 0,
            collectors=settings.collectors or (),
        )
    ).SerializeToString()

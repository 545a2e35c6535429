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
from fleetpulse.proto import agent_pb2

# Fields an update may set; an absent key keeps the stored value, None clears it.
FIELDS = ("collect_interval_ms", "heartbeat_interval_ms", "collectors")

_SELECT = """
SELECT version, collect_interval_ms, heartbeat_interval_ms, collectors
FROM agent_settings WHERE agent_id = %s
"""

# One statement, so two concurrent updates of one agent get two versions, never a lost one.
_UPSERT = """
INSERT INTO agent_settings AS s
    (agent_id, version, collect_interval_ms, heartbeat_interval_ms, collectors)
VALUES (%(agent_id)s, 1, %(collect_interval_ms)s, %(heartbeat_interval_ms)s, %(collectors)s)
ON CONFLICT (agent_id) DO UPDATE SET
    version = s.version + 1,
    collect_interval_ms = CASE WHEN %(set_collect)s
        THEN EXCLUDED.collect_interval_ms ELSE s.collect_interval_ms END,
    heartbeat_interval_ms = CASE WHEN %(set_heartbeat)s
        THEN EXCLUDED.heartbeat_interval_ms ELSE s.heartbeat_interval_ms END,
    collectors = CASE WHEN %(set_collectors)s THEN EXCLUDED.collectors ELSE s.collectors END,
    updated_at = now()
RETURNING version, collect_interval_ms, heartbeat_interval_ms, collectors
"""

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


def _params(agent_id: str, changes: dict[str, Any]) -> dict[str, Any]:
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
    params = _params(agent_id, changes)
    with conn.transaction():
        settings = _settings(conn.execute(_UPSERT, params).fetchone())
        assert settings is not None  # RETURNING always yields the row
        auditlog.record(conn, actor, auditlog.SETTINGS_CHANGE, agent_id, _detail(settings, changes))
    return settings


async def update_async(
    conn: AsyncConnection[Any], agent_id: str, changes: dict[str, Any], actor: str
) -> RemoteSettings:
    params = _params(agent_id, changes)
    async with conn.transaction():
        cur = await conn.execute(_UPSERT, params)
        settings = _settings(await cur.fetchone())
        assert settings is not None
        await auditlog.record_async(
            conn, actor, auditlog.SETTINGS_CHANGE, agent_id, _detail(settings, changes)
        )
    return settings


def _detail(settings: RemoteSettings, changes: dict[str, Any]) -> dict[str, Any]:
    """What the audit log keeps of a settings change: the version and what it asked for."""
    return {"version": settings.version, "changes": changes}


def load(conn: Connection[Any], agent_id: str) -> RemoteSettings | None:
    return _settings(conn.execute(_SELECT, (agent_id,)).fetchone())


async def load_async(conn: AsyncConnection[Any], agent_id: str) -> RemoteSettings | None:
    cur = await conn.execute(_SELECT, (agent_id,))
    return _settings(await cur.fetchone())


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

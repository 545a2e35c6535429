"""The front-end's view of the agents table: register upserts, liveness, disconnects.

Heartbeats never cost a PostgreSQL write each: they update an in-memory map, and a background task
flushes the latest heartbeat of every agent in one statement per interval (sorted by agent_id so
that two front-ends flushing at once cannot deadlock).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from fleetpulse.proto import agent_pb2

log = logging.getLogger(__name__)

_UPSERT_AGENT = """
INSERT INTO agents
    (agent_id, hostname, ip, os, arch, version, machine_id, status, last_heartbeat, session,
     config_tags)
VALUES (%s, %s, %s, %s, %s, %s, %s, 'online', now(), %s, %s)
ON CONFLICT (agent_id) DO UPDATE SET
    hostname = EXCLUDED.hostname, ip = EXCLUDED.ip, os = EXCLUDED.os, arch = EXCLUDED.arch,
    version = EXCLUDED.version, machine_id = EXCLUDED.machine_id, status = 'online',
    last_heartbeat = now(), updated_at = now(), disconnect_reason = NULL,
    session = EXCLUDED.session, config_tags = EXCLUDED.config_tags
"""

_FLUSH_HEARTBEATS = """
UPDATE agents SET last_heartbeat = GREATEST(agents.last_heartbeat, v.ts), updated_at = now()
FROM unnest(%s::text[], %s::timestamptz[]) AS v(agent_id, ts)
WHERE agents.agent_id = v.agent_id
"""

_MARK_OFFLINE = """
UPDATE agents SET status = 'offline', updated_at = now(),
    disconnect_reason = coalesce(%s, disconnect_reason)
WHERE agent_id = %s AND session IS NOT DISTINCT FROM %s
"""

_CONFLICT = """
UPDATE agents SET conflict = %s, conflict_at = now(), conflicts = conflicts + 1
WHERE agent_id = %s
"""


class AgentRegistry:
    """Writes agent identity and liveness to PostgreSQL on behalf of the front-end."""

    def __init__(self, pool: AsyncConnectionPool, flush_interval_s: float) -> None:
        self._pool = pool
        self._flush_interval_s = flush_interval_s
        self._pending: dict[str, datetime] = {}

    async def register(
        self, message: agent_pb2.AgentRegister, ip: str, session: str | None = None
    ) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(
                _UPSERT_AGENT,
                (
                    message.agent_id,
                    message.hostname,
                    ip,
                    message.os,
                    message.arch,
                    message.version,
                    message.machine_id,
                    session,
                    Jsonb(dict(message.tags)),
                ),
            )

    def heartbeat(self, agent_id: str) -> None:
        """Record liveness in memory; flush_forever writes it out."""
        self._pending[agent_id] = datetime.now(UTC)

    async def disconnected(
        self, agent_id: str, reason: str | None = None, session: str | None = None
    ) -> None:
        """Mark an agent offline at once when its stream (``session``) closes, unless a newer
        session registered meanwhile; ``reason`` is what the agent said if it left on purpose."""
        await self.flush()
        async with self._pool.connection() as conn:
            await conn.execute(_MARK_OFFLINE, (reason, agent_id, session))

    async def conflict(self, agent_id: str, detail: str) -> None:
        """Record that a second machine claimed this agent (shown by the API)."""
        try:
            async with self._pool.connection() as conn:
                await conn.execute(_CONFLICT, (detail, agent_id))
        except Exception:
            log.exception("could not record the conflict of %s", agent_id)

    async def flush(self) -> int:
        if not self._pending:
            return 0
        pending, self._pending = self._pending, {}
        agent_ids = sorted(pending)
        async with self._pool.connection() as conn:
            await conn.execute(_FLUSH_HEARTBEATS, (agent_ids, [pending[a] for a in agent_ids]))
        return len(agent_ids)

    async def flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self._flush_interval_s)
            try:
                await self.flush()
            except Exception:
                # Liveness is best effort; the next flush carries the newer timestamps anyway.
                log.exception("heartbeat flush failed")

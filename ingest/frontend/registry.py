"""The front-end's view of the agents table: register upserts, liveness, disconnects.

Heartbeats and accepted batches never cost a PostgreSQL write each: they update an in-memory map,
and a background task flushes the latest heartbeat and batch time of every agent in one statement
per interval (sorted by agent_id so that two front-ends flushing at once cannot deadlock). The same
task records, every ``liveness_check_interval_s``, the transitions the clock caused
(fleetpulse/liveness.py); a register and a stream's end record theirs as they happen, with the
cause.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from fleetpulse import liveness
from fleetpulse.proto import agent_pb2
from fleetpulse.settings import Settings

log = logging.getLogger(__name__)

# A register makes the agent online and records why: first connection (or after being offline),
# or a newer connection replacing a stream that was still open (``agents.`` is the row as it was).
_REGISTER = f"""
WITH up AS (
    INSERT INTO agents
        (agent_id, hostname, ip, os, arch, version, machine_id, status, last_heartbeat, session,
         config_tags, connected_at, liveness, liveness_since, liveness_cause, liveness_detail)
    VALUES (%(agent_id)s, %(hostname)s, %(ip)s, %(os)s, %(arch)s, %(version)s, %(machine_id)s,
        'online', now(), %(session)s, %(tags)s, now(), 'online', now(),
        '{liveness.REGISTERED}', '')
    ON CONFLICT (agent_id) DO UPDATE SET
        hostname = EXCLUDED.hostname, ip = EXCLUDED.ip, os = EXCLUDED.os, arch = EXCLUDED.arch,
        version = EXCLUDED.version, machine_id = EXCLUDED.machine_id, status = 'online',
        last_heartbeat = now(), updated_at = now(), disconnect_reason = NULL,
        session = EXCLUDED.session, config_tags = EXCLUDED.config_tags, connected_at = now(),
        liveness = 'online', liveness_since = now(),
        liveness_cause = CASE WHEN agents.status = 'online' AND agents.session IS DISTINCT FROM
            EXCLUDED.session THEN '{liveness.REPLACED}' ELSE '{liveness.REGISTERED}' END,
        liveness_detail = CASE WHEN agents.status = 'online' AND agents.session IS DISTINCT FROM
            EXCLUDED.session THEN 'replaced the open stream ' || agents.session ELSE '' END
    RETURNING agent_id, liveness_cause, liveness_detail
)
INSERT INTO agent_liveness (agent_id, at, state, cause, detail)
SELECT agent_id, now(), 'online', liveness_cause, liveness_detail FROM up
"""  # noqa: S608  # constants only

_FLUSH = """
UPDATE agents SET last_heartbeat = GREATEST(agents.last_heartbeat, v.heartbeat),
    last_batch_at = GREATEST(agents.last_batch_at, v.batch), updated_at = now()
FROM unnest(%s::text[], %s::timestamptz[], %s::timestamptz[]) AS v(agent_id, heartbeat, batch)
WHERE agents.agent_id = v.agent_id
"""

# The stream ``session`` closed: offline at once, unless a newer session registered meanwhile.
_MARK_OFFLINE = """
WITH gone AS (
    UPDATE agents SET status = 'offline', updated_at = now(),
        disconnect_reason = coalesce(%(reason)s, disconnect_reason),
        liveness = 'offline', liveness_since = now(), liveness_cause = %(cause)s,
        liveness_detail = %(detail)s
    WHERE agent_id = %(agent_id)s AND session IS NOT DISTINCT FROM %(session)s
    RETURNING agent_id
)
INSERT INTO agent_liveness (agent_id, at, state, cause, detail)
SELECT agent_id, now(), 'offline', %(cause)s, %(detail)s FROM gone
"""

_PRUNE_EVERY_S = 3600.0

_CONFLICT = """
UPDATE agents SET conflict = %s, conflict_at = now(), conflicts = conflicts + 1
WHERE agent_id = %s
"""


class AgentRegistry:
    """Writes agent identity and liveness to PostgreSQL on behalf of the front-end."""

    def __init__(self, pool: AsyncConnectionPool, settings: Settings) -> None:
        self._pool = pool
        self._settings = settings
        self._heartbeats: dict[str, datetime] = {}
        self._batches: dict[str, datetime] = {}
        self._swept_at = 0.0
        self._pruned_at = 0.0

    async def register(
        self, message: agent_pb2.AgentRegister, ip: str, session: str | None = None
    ) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(
                _REGISTER,
                {
                    "agent_id": message.agent_id,
                    "hostname": message.hostname,
                    "ip": ip,
                    "os": message.os,
                    "arch": message.arch,
                    "version": message.version,
                    "machine_id": message.machine_id,
                    "session": session,
                    "tags": Jsonb(dict(message.tags)),
                },
            )

    def heartbeat(self, agent_id: str) -> None:
        """Record liveness in memory; flush_forever writes it out."""
        self._heartbeats[agent_id] = datetime.now(UTC)

    def batch(self, agent_id: str) -> None:
        """Record that a batch of the agent was accepted (queued), in memory like heartbeats."""
        self._batches[agent_id] = datetime.now(UTC)

    async def disconnected(
        self,
        agent_id: str,
        session: str | None,
        cause: str,
        detail: str = "",
        reason: str | None = None,
    ) -> None:
        """Mark an agent offline at once when its stream (``session``) closes, unless a newer
        session registered meanwhile, with the cause (fleetpulse/liveness.py); ``reason`` is what
        the agent said if it left on purpose."""
        await self.flush()
        async with self._pool.connection() as conn:
            await conn.execute(
                _MARK_OFFLINE,
                {
                    "agent_id": agent_id,
                    "session": session,
                    "reason": reason,
                    "cause": cause,
                    "detail": detail,
                },
            )

    async def conflict(self, agent_id: str, detail: str) -> None:
        """Record that a second machine claimed this agent (shown by the API)."""
        try:
            async with self._pool.connection() as conn:
                await conn.execute(_CONFLICT, (detail, agent_id))
        except Exception:
            log.exception("could not record the conflict of %s", agent_id)

    async def flush(self) -> int:
        if not self._heartbeats and not self._batches:
            return 0
        heartbeats, self._heartbeats = self._heartbeats, {}
        batches, self._batches = self._batches, {}
        agent_ids = sorted(heartbeats.keys() | batches.keys())
        async with self._pool.connection() as conn:
            await conn.execute(
                _FLUSH,
                (
                    agent_ids,
                    [heartbeats.get(a) for a in agent_ids],
                    [batches.get(a) for a in agent_ids],
                ),
            )
        return len(agent_ids)

    async def sweep(self) -> int:
        """Record the transitions the clock caused since the last sweep; how many."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(liveness.SWEEP, liveness.params(self._settings))
            moved = cur.rowcount
            now = time.monotonic()
            if now - self._pruned_at > _PRUNE_EVERY_S:
                self._pruned_at = now
                await conn.execute(liveness.PRUNE, (self._settings.liveness_history_days,))
        return moved

    async def flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self._settings.heartbeat_flush_interval_s)
            try:
                await self.flush()
                if time.monotonic() - self._swept_at >= self._settings.liveness_check_interval_s:
                    self._swept_at = time.monotonic()
                    await self.sweep()
            except Exception:
                # Liveness is best effort; the next flush carries the newer timestamps anyway.
                log.exception("heartbeat flush or liveness sweep failed")

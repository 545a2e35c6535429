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
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from fleetpulse import liveness
from fleetpulse.ingest.coalesce import Coalescer
from fleetpulse.proto import agent_pb2
from fleetpulse.settings import Settings

log = logging.getLogger(__name__)

# Registers make their agents online and record why: first connection (or after being offline),
# or a newer connection replacing a stream that was still open (``agents.`` is the row as it was).
# One statement for a coalesced group (no agent twice: coalesce.py), rows in agent_id order so that
# two front-ends writing at once cannot deadlock.
_REGISTER = f"""
WITH v AS (
    SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[],
        %s::text[], %s::text[], %s::jsonb[])
        AS v(agent_id, hostname, ip, os, arch, version, machine_id, session, tags)
), up AS (
    INSERT INTO agents
        (agent_id, hostname, ip, os, arch, version, machine_id, status, last_heartbeat, session,
         config_tags, connected_at, liveness, liveness_since, liveness_cause, liveness_detail)
    SELECT agent_id, hostname, ip, os, arch, version, machine_id,
        'online', now(), session, tags, now(), 'online', now(), '{liveness.REGISTERED}', ''
    FROM v ORDER BY agent_id
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

# Streams closed: each agent offline at once, unless a newer session registered meanwhile.
_MARK_OFFLINE = """
WITH v AS (
    SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[])
        AS v(agent_id, session, reason, cause, detail)
), gone AS (
    UPDATE agents SET status = 'offline', updated_at = now(),
        disconnect_reason = coalesce(v.reason, disconnect_reason),
        liveness = 'offline', liveness_since = now(), liveness_cause = v.cause,
        liveness_detail = v.detail
    FROM v
    WHERE agents.agent_id = v.agent_id AND agents.session IS NOT DISTINCT FROM v.session
    RETURNING agents.agent_id, v.cause, v.detail
)
INSERT INTO agent_liveness (agent_id, at, state, cause, detail)
SELECT agent_id, now(), 'offline', cause, detail FROM gone
"""

_PRUNE_EVERY_S = 3600.0
# Tries of a coalesced statement that deadlocked with another front-end's.
_DEADLOCK_ATTEMPTS = 3

_CONFLICT = """
UPDATE agents SET conflict = %s, conflict_at = now(), conflicts = conflicts + 1
WHERE agent_id = %s
"""


@dataclass(frozen=True)
class Registration:
    message: agent_pb2.AgentRegister
    ip: str
    session: str | None


@dataclass(frozen=True)
class Disconnection:
    agent_id: str
    session: str | None
    reason: str | None
    cause: str
    detail: str


class AgentRegistry:
    """Writes agent identity and liveness to PostgreSQL on behalf of the front-end."""

    def __init__(self, pool: AsyncConnectionPool, settings: Settings) -> None:
        self._pool = pool
        self._settings = settings
        self._heartbeats: dict[str, datetime] = {}
        self._batches: dict[str, datetime] = {}
        self._swept_at = 0.0
        self._pruned_at = 0.0
        self._registers: Coalescer[Registration, None] = Coalescer(
            self._register_many,
            name="registers",
            key=lambda r: r.message.agent_id,
        )
        self._disconnections: Coalescer[Disconnection, None] = Coalescer(
            self._disconnected_many,
            name="offline-marks",
            key=lambda d: d.agent_id,
        )

    async def register(
        self, message: agent_pb2.AgentRegister, ip: str, session: str | None = None
    ) -> None:
        """Make the agent online (coalesced with the registers under way: coalesce.py)."""
        await self._registers.submit(Registration(message, ip, session))

    async def _register_many(self, items: list[Registration]) -> list[BaseException | None]:
        columns: list[list[object]] = [[] for _ in range(9)]
        for r in items:
            m = r.message
            row = (m.agent_id, m.hostname, r.ip, m.os, m.arch, m.version, m.machine_id, r.session)
            for column, value in zip(columns, (*row, Jsonb(dict(m.tags))), strict=True):
                column.append(value)
        return await self._write_many(_REGISTER, columns)

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
        the agent said if it left on purpose. Coalesced: a front-end that stops ends thousands of
        streams at once."""
        await self._disconnections.submit(Disconnection(agent_id, session, reason, cause, detail))

    async def _disconnected_many(self, items: list[Disconnection]) -> list[BaseException | None]:
        # The latest heartbeats and batch times first: the offline row keeps when it was last seen.
        await self.flush()
        columns: list[list[object]] = [
            [d.agent_id for d in items],
            [d.session for d in items],
            [d.reason for d in items],
            [d.cause for d in items],
            [d.detail for d in items],
        ]
        return await self._write_many(_MARK_OFFLINE, columns)

    async def _write_many(
        self, statement: str, columns: list[list[object]]
    ) -> list[BaseException | None]:
        """One statement for a coalesced group; a value PostgreSQL refuses fails only its own
        item (the group is then written one by one), and a deadlock with another front-end
        writing the same agents is retried."""
        count = len(columns[0])
        for attempt in range(1, _DEADLOCK_ATTEMPTS + 1):
            try:
                async with self._pool.connection() as conn:
                    await conn.execute(statement, columns)
                return [None] * count
            except psycopg.errors.DeadlockDetected:
                if attempt == _DEADLOCK_ATTEMPTS:
                    raise
                log.warning("deadlock writing %d agents, retrying", count)
            except psycopg.DataError:
                if count == 1:
                    raise
                break
        results: list[BaseException | None] = []
        for i in range(count):
            try:
                await self._write_many(statement, [[column[i]] for column in columns])
                results.append(None)
            except psycopg.DataError as exc:
                results.append(exc)
        return results

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

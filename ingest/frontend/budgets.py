"""Which agents are over their series budget, as the front-end tells them (ingest/seriesbudgets.py).

The workers refuse a new series past an agent's budget after the batch was acked (an ack means
"durably queued"), so the refusal reaches the agent with its next acks: every ack of an agent
whose new series were refused in the last 5 minutes says so in its ``message``
(``accepted; series_budget: ...``), which the agent logs. One read of the rejects table every
``REFRESH_S`` for the whole process, never one per batch.
"""

from __future__ import annotations

import asyncio
import logging

from psycopg_pool import AsyncConnectionPool

from fleetpulse.ingest import seriesbudgets

log = logging.getLogger(__name__)

REFRESH_S = 10.0


class OverBudget:
    """Per agent over its budget, the note its acks carry."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool
        self._notes: dict[str, str] = {}

    def note(self, agent_id: str) -> str | None:
        return self._notes.get(agent_id)

    async def refresh(self) -> None:
        async with self._pool.connection() as conn:
            cur = await conn.execute(seriesbudgets.OVER_BUDGET)
            rows = await cur.fetchall()
        self._notes = {
            agent_id: (
                f"{seriesbudgets.REASON}: points of new series past this agent's series budget "
                f"are refused ({points} so far, the last at {last_at:%H:%M:%S} UTC); known "
                "series are stored"
            )
            for agent_id, points, last_at in rows
        }

    async def refresh_forever(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:
                log.exception("could not read which agents are over their series budget")
            await asyncio.sleep(REFRESH_S)

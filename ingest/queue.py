"""Redis Streams between the front-ends and the workers.

The front-end XADDs a batch and only then acks it to the agent; nothing here ever trims a stream
(MAXLEN would drop entries the workers have not committed). Entries are removed only by workers,
after their PostgreSQL transaction committed (XACK + XDEL).
"""

from __future__ import annotations

import logging

import redis
import redis.asyncio

from fleetpulse.ingest import keys

log = logging.getLogger(__name__)


def _group_exists(exc: redis.ResponseError) -> bool:
    return "BUSYGROUP" in str(exc)


def ensure_layout(client: redis.Redis, wanted_shards: int) -> int:
    """Fix the shard count for this Redis (first caller wins) and create the consumer groups.

    Called once at startup by front-ends and workers alike (synchronously, before serving)."""
    client.set(keys.SHARDS_KEY, wanted_shards, nx=True)
    shards = int(client.get(keys.SHARDS_KEY))  # type: ignore[arg-type]
    if shards != wanted_shards:
        log.warning(
            "Redis already holds %d stream shards; using that, not %d", shards, wanted_shards
        )
    for shard in range(shards):
        try:
            # id 0, not $: a group created after the first XADD must still see every entry.
            client.xgroup_create(keys.stream_key(shard), keys.CONSUMER_GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if not _group_exists(exc):
                raise
    return shards


class BatchQueue:
    """The front-end's side: append one agent's serialized MetricBatch to its shard."""

    def __init__(self, client: redis.asyncio.Redis, shards: int) -> None:
        self._client = client
        self._shards = shards

    async def add(
        self, agent_id: str, epoch: int, sequence: int, batch: bytes, received_ms: int
    ) -> None:
        """XADD the batch bytes untouched (points are never decoded here)."""
        await self._client.xadd(
            keys.stream_key(keys.shard_for(agent_id, self._shards)),
            {
                keys.FIELD_AGENT: agent_id,
                keys.FIELD_EPOCH: epoch,
                keys.FIELD_SEQUENCE: sequence,
                keys.FIELD_RECEIVED_MS: received_ms,
                keys.FIELD_BATCH: batch,
            },
        )

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
from fleetpulse.ingest.coalesce import Coalescer

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


async def shard_count(client: redis.asyncio.Redis, wanted_shards: int) -> int:
    """The shard count of this Redis (fixing it to ``wanted_shards`` when no process did yet), for
    a writer that only adds entries (the API's remote write). The consumer groups are the
    workers' to create (``ensure_layout``): created at id 0, they see entries added before them.
    Raises redis.RedisError when Redis does not answer."""
    await client.set(keys.SHARDS_KEY, wanted_shards, nx=True)
    return int(await client.get(keys.SHARDS_KEY))  # type: ignore[arg-type]


def entry_fields(
    agent_id: str, epoch: int, sequence: int, batch: bytes, received_ms: int, form: bytes
) -> dict[bytes, object]:
    """The fields of one stream entry: what front-ends write and workers read."""
    return {
        keys.FIELD_AGENT: agent_id,
        keys.FIELD_EPOCH: epoch,
        keys.FIELD_SEQUENCE: sequence,
        keys.FIELD_RECEIVED_MS: received_ms,
        keys.FIELD_BATCH: batch,
        keys.FIELD_FORM: form,
    }


class BatchQueue:
    """The front-end's side: append agents' serialized MetricBatches to their shards.

    Thousands of streams add batches concurrently; instead of one Redis round trip (and one
    connection) each, their XADDs are coalesced into pipelines on one connection (coalesce.py):
    under load a round trip carries up to ``max_pipeline`` entries, when idle an entry waits for
    one round trip only. The waiting room is bounded (``max_pending``): when it is full, ``add``
    waits, which holds the agent's stream instead of growing memory.
    """

    def __init__(
        self,
        client: redis.asyncio.Redis,
        shards: int,
        max_pending: int = 20_000,
        max_pipeline: int = 512,
    ) -> None:
        self._client = client
        self.shards = shards
        self._xadds: Coalescer[tuple[str, dict[bytes, object]], object] = Coalescer(
            self._xadd_many, name="xadd-pipeline", max_batch=max_pipeline, max_pending=max_pending
        )

    async def close(self) -> None:
        await self._xadds.close(redis.ConnectionError("front-end stopping"))

    async def add(
        self,
        agent_id: str,
        epoch: int,
        sequence: int,
        batch: bytes,
        received_ms: int,
        form: bytes = keys.FORM_ROWS,
    ) -> None:
        """XADD the batch bytes untouched (points are never decoded here); returns once queued.

        Raises redis.RedisError when Redis refused the entry: then nothing was queued.
        """
        fields = entry_fields(agent_id, epoch, sequence, batch, received_ms, form)
        await self._xadds.submit((keys.stream_key(keys.shard_for(agent_id, self.shards)), fields))

    async def _xadd_many(
        self, entries: list[tuple[str, dict[bytes, object]]]
    ) -> list[object | BaseException]:
        pipe = self._client.pipeline(transaction=False)
        for stream, fields in entries:
            pipe.xadd(stream, fields)  # type: ignore[arg-type]
        results: list[object | BaseException] = await pipe.execute(raise_on_error=False)
        return results

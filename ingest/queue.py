"""Redis Streams between the front-ends and the workers.

The front-end XADDs a batch and only then acks it to the agent; nothing here ever trims a stream
(MAXLEN would drop entries the workers have not committed). Entries are removed only by workers,
after their PostgreSQL transaction committed (XACK + XDEL).
"""

from __future__ import annotations

import asyncio
import logging

import redis
import redis.asyncio

from fleetpulse import lifecycle
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
    connection) each, their XADDs are coalesced into pipelines on one connection, one pipeline in
    flight at a time: under load a round trip carries up to ``max_pipeline`` entries, when idle an
    entry waits for one round trip only. The waiting room is bounded (``max_pending``): when it is
    full, ``add`` waits, which holds the agent's stream instead of growing memory.
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
        self._shards = shards
        self._max_pipeline = max_pipeline
        self._pending: asyncio.Queue[tuple[str, dict[bytes, object], asyncio.Future[None]]] = (
            asyncio.Queue(max_pending)
        )
        self._flusher: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._flusher = asyncio.create_task(self._flush_forever(), name="xadd-pipeline")

    async def close(self) -> None:
        if self._flusher is not None:
            await lifecycle.cancel_and_wait([self._flusher])
        while not self._pending.empty():
            _, _, future = self._pending.get_nowait()
            if not future.done():
                future.set_exception(redis.ConnectionError("front-end stopping"))

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
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._pending.put(
            (keys.stream_key(keys.shard_for(agent_id, self._shards)), fields, future)
        )
        await future

    async def _flush_forever(self) -> None:
        while True:
            items = [await self._pending.get()]
            while len(items) < self._max_pipeline and not self._pending.empty():
                items.append(self._pending.get_nowait())
            pipe = self._client.pipeline(transaction=False)
            for stream, fields, _ in items:
                pipe.xadd(stream, fields)  # type: ignore[arg-type]
            try:
                results = await pipe.execute(raise_on_error=False)
            except redis.RedisError as exc:
                results = [exc] * len(items)
            for (_, _, future), result in zip(items, results, strict=True):
                if future.done():
                    continue  # the stream went away while waiting; the agent will resend
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(None)

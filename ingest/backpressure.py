"""Whether the queue takes more batches now: one rule for everything that writes into it (the
gRPC front-end's agents, the API's Prometheus remote write).

While the queue (stream entries not yet committed, every shard together) is at or over
``ingest_max_queued_entries``, every new batch is refused until it falls below 80 % of it, so
that the refusals do not flap around the limit; while Redis does not answer, every batch is
refused too. Each writer answers a refusal in its own protocol with the delay it carries: the
front-end in the batch's ack, the API with 429 or 503 and ``Retry-After``. Nothing refused was
queued, so the writer's client keeps it and sends it again.

The state is read, not computed per batch: ``watch`` looks at the streams' lengths every
``CHECK_INTERVAL_S`` (a pipeline of XLENs), and ``refusal`` only reads what it found. A writer
may therefore take up to one interval's worth of batches past the limit
(tests/faults/test_backpressure.py bounds it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import redis
import redis.asyncio

from fleetpulse import errors
from fleetpulse.ingest import keys
from fleetpulse.settings import Settings

log = logging.getLogger(__name__)

CHECK_INTERVAL_S = 0.5
# Refusals stop once the queue is below this share of its limit.
RESUME_FRACTION = 0.8


class Backpressure:
    """Why batches are refused right now (workers behind, the queue unreachable), or None.

    ``observe(queued, refusing)`` is called after every look (``queued`` is None when Redis did
    not answer): how a process shows the state in its own metrics.
    """

    def __init__(
        self,
        settings: Settings,
        redis_client: redis.asyncio.Redis,
        shards: int,
        observe: Callable[[int | None, bool], None] | None = None,
    ) -> None:
        self._limit = settings.ingest_max_queued_entries
        self._resume = int(self._limit * RESUME_FRACTION)
        self._retry_after_s = settings.ingest_retry_after_ms / 1000
        self._redis = redis_client
        self._streams = [keys.stream_key(shard) for shard in range(shards)]
        self._observe = observe
        self.reason: str | None = None
        # True while the reason is that Redis did not answer (else the workers are behind).
        self.unreachable = False

    def refusal(self) -> errors.RetryableError | None:
        """What to answer a batch now: `Overloaded` while the queue is over its limit,
        `Unavailable` while Redis does not answer (both with the delay to wait), else None."""
        if self.reason is None:
            return None
        error = errors.Unavailable if self.unreachable else errors.Overloaded
        return error(f"{self.reason}; keep the batch and retry", self._retry_after_s)

    async def check(self) -> None:
        """Look at the queue once and update the state."""
        try:
            pipe = self._redis.pipeline(transaction=False)
            for stream in self._streams:
                pipe.xlen(stream)
            queued: int | None = sum(int(n) for n in await pipe.execute())
        except redis.RedisError as exc:
            queued = None
            if not self.unreachable:
                log.warning("backpressure on: queue unreachable (%s)", exc)
            self.reason, self.unreachable = f"queue unreachable ({exc})", True
        else:
            assert queued is not None
            if self.unreachable:
                self.reason, self.unreachable = None, False
                log.info("queue reachable again")
            if self.reason is None and queued >= self._limit:
                self.reason = f"workers are behind ({queued} batches queued, limit {self._limit})"
                log.warning("backpressure on: %s", self.reason)
            elif self.reason is not None and queued < self._resume:
                log.info("backpressure off: %d batches queued", queued)
                self.reason = None
        if self._observe is not None:
            self._observe(queued, self.reason is not None)

    async def watch(self) -> None:
        """Check every CHECK_INTERVAL_S, until cancelled."""
        while True:
            await self.check()
            await asyncio.sleep(CHECK_INTERVAL_S)

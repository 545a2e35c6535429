"""Admission of metric batches: whether the platform takes one *now*.

Two checks, both answered in band (the batch's ``MetricAck`` says success=false with a delay;
nothing was queued and the stream stays open):

- **Backpressure**: while the queue (entries not yet committed) is over its limit, every batch is
  refused until it falls below 80 % of it; ``Backpressure.watch`` reads the streams' lengths.
- **Fairness**: a per-agent token bucket of batch bytes per second with a burst, so that one agent
  replaying a large spool cannot take the whole front-end.
"""

from __future__ import annotations

import asyncio
import logging
import time

import redis
import redis.asyncio

from fleetpulse import errors
from fleetpulse.ingest import keys
from fleetpulse.ingest.frontend import selfmetrics
from fleetpulse.settings import Settings

log = logging.getLogger(__name__)

BACKPRESSURE_CHECK_S = 0.5


class TokenBucket:
    """Per-agent fairness: batch bytes per second with a burst; refused bytes cost nothing."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = burst
        self.updated = time.monotonic()

    def take(self, amount: float) -> float:
        """0.0 when taken, else the seconds until ``amount`` will be available."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if amount <= self.tokens:
            self.tokens -= amount
            return 0.0
        return (min(amount, self.burst) - self.tokens) / self.rate


class Backpressure:
    """Why batches are refused right now (workers behind, the queue unreachable), or None."""

    def __init__(self, settings: Settings, redis_client: redis.asyncio.Redis, shards: int) -> None:
        self._settings = settings
        self._redis = redis_client
        self._streams = [keys.stream_key(shard) for shard in range(shards)]
        self.reason: str | None = None

    def refusal(self) -> errors.Overloaded | None:
        if self.reason is None:
            return None
        selfmetrics.REJECTS.labels("backpressure").inc()
        return errors.Overloaded(
            f"{self.reason}; keep the batch and retry",
            self._settings.ingest_retry_after_ms / 1000,
        )

    async def watch(self) -> None:
        """Refuse batches while the queue (entries not yet committed) is over its limit."""
        limit = self._settings.ingest_max_queued_entries
        resume = int(limit * 0.8)
        while True:
            try:
                pipe = self._redis.pipeline(transaction=False)
                for stream in self._streams:
                    pipe.xlen(stream)
                queued = sum(int(n) for n in await pipe.execute())
                selfmetrics.QUEUED.set(queued)
                if self.reason is None and queued >= limit:
                    self.reason = f"workers are behind ({queued} batches queued, limit {limit})"
                    log.warning("backpressure on: %s", self.reason)
                elif self.reason is not None and queued < resume:
                    log.info("backpressure off: %d batches queued", queued)
                    self.reason = None
            except redis.RedisError as exc:
                self.reason = f"queue unreachable ({exc})"
            selfmetrics.BACKPRESSURE.set(0 if self.reason is None else 1)
            await asyncio.sleep(BACKPRESSURE_CHECK_S)


def over_rate(bucket: TokenBucket, size: int) -> errors.Overloaded | None:
    """Why this agent's batch of ``size`` bytes is refused (over its rate), or None (taken)."""
    wait_s = bucket.take(size)
    if not wait_s:
        return None
    selfmetrics.REJECTS.labels("rate_limited").inc()
    return errors.Overloaded(f"over this agent's rate ({bucket.rate:.0f} batch bytes/s)", wait_s)

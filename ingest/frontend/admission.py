"""Admission of metric batches: whether the platform takes one *now*.

Two checks, both answered in band (the batch's ``MetricAck`` says success=false with a delay;
nothing was queued and the stream stays open):

- **Backpressure**: while the queue (entries not yet committed) is over its limit, every batch is
  refused until it falls below 80 % of it, and while Redis does not answer (the rule, shared with
  the API's remote write: ingest/backpressure.py).
- **Fairness**: a per-agent token bucket of batch bytes per second with a burst, so that one agent
  replaying a large spool cannot take the whole front-end.
"""

from __future__ import annotations

import time

import redis.asyncio

from fleetpulse import errors
from fleetpulse.ingest.backpressure import Backpressure
from fleetpulse.ingest.frontend import selfmetrics
from fleetpulse.settings import Settings


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


def backpressure(
    settings: Settings, redis_client: redis.asyncio.Redis, shards: int
) -> Backpressure:
    """The shared rule (ingest/backpressure.py), its state shown in the front-end's metrics."""

    def observe(queued: int | None, refusing: bool) -> None:
        if queued is not None:
            selfmetrics.QUEUED.set(queued)
        selfmetrics.BACKPRESSURE.set(1 if refusing else 0)

    return Backpressure(settings, redis_client, shards, observe)


def refused(backpressure: Backpressure) -> errors.RetryableError | None:
    """Why a batch is refused for the queue's state now (counted), or None (taken)."""
    refusal = backpressure.refusal()
    if refusal is not None:
        selfmetrics.REJECTS.labels("backpressure").inc()
    return refusal


def over_rate(bucket: TokenBucket, size: int) -> errors.Overloaded | None:
    """Why this agent's batch of ``size`` bytes is refused (over its rate), or None (taken)."""
    wait_s = bucket.take(size)
    if not wait_s:
        return None
    selfmetrics.REJECTS.labels("rate_limited").inc()
    return errors.Overloaded(f"over this agent's rate ({bucket.rate:.0f} batch bytes/s)", wait_s)

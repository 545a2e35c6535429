"""A worker process's own Prometheus metrics (``/metrics`` on ``worker_metrics_port + index - 1``,
and stored as series by fleetpulse/selfmetrics.py).

Counters are this process's; the queue gauges (`refresh_queue`) are the platform's, read from
Redis by every worker when its metrics are collected, so any one worker's tell the whole story
(the built-in rules take their ``max``).
"""

from __future__ import annotations

import time

import redis
from prometheus_client import Counter, Gauge, Histogram

from fleetpulse.ingest import keys

CHUNKS = Counter("fleetpulse_worker_chunks_committed", "Chunks committed (one transaction each)")
BATCHES = Counter(
    "fleetpulse_worker_batches_committed",
    "Batches committed: new, or already in the ledger",
    ["kind"],
)
POINTS = Counter("fleetpulse_worker_points_committed", "Points stored")
POINTS_REJECTED = Counter(
    "fleetpulse_worker_points_rejected", "Points refused (counted in rejects)"
)
ERRORS = Counter(
    "fleetpulse_worker_errors",
    "Failures: connection_lost (chunk retried), entry_failed (an attempt), dead_letter (given up)",
    ["kind"],
)
CHUNK_SECONDS = Histogram(
    "fleetpulse_worker_chunk_seconds",
    "Time to decode, write and acknowledge one chunk",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
ROLLUP_LAG = Gauge(
    "fleetpulse_rollup_lag_seconds",
    "Largest lag of a bucket the last rollup round of this process recomputed (rollup_log)",
)
QUEUE_ENTRIES = Gauge(
    "fleetpulse_queue_entries", "Entries in a stream shard, not yet committed", ["shard"]
)
QUEUE_OLDEST_AGE = Gauge(
    "fleetpulse_queue_oldest_age_seconds",
    "Age of the oldest entry of a stream shard not yet committed (0 when empty): the read lag",
    ["shard"],
)
DEAD_LETTERS = Gauge("fleetpulse_dead_letter_entries", "Entries in the dead-letter stream")


def refresh_queue(client: redis.Redis, shards: int) -> None:
    """Set the queue gauges from Redis (one pipelined round trip)."""
    pipe = client.pipeline(transaction=False)
    for shard in range(shards):
        pipe.xlen(keys.stream_key(shard))
        pipe.xrange(keys.stream_key(shard), count=1)
    pipe.xlen(keys.DEAD_LETTER_STREAM)
    answers = pipe.execute()
    now_ms = time.time() * 1000
    for shard in range(shards):
        length, first = answers[2 * shard], answers[2 * shard + 1]
        QUEUE_ENTRIES.labels(str(shard)).set(length)
        age = 0.0
        if first:
            entry_id = first[0][0]
            entry_ms = int(
                (entry_id.decode() if isinstance(entry_id, bytes) else entry_id).split("-")[0]
            )
            age = max(0.0, (now_ms - entry_ms) / 1000)
        QUEUE_OLDEST_AGE.labels(str(shard)).set(age)
    DEAD_LETTERS.set(answers[-1])

"""Every Redis key and stream field name the platform uses, in one place."""

from __future__ import annotations

import zlib
from typing import Any

PREFIX = "fleetpulse"
# Stream shard i holds the batches of the agents that hash to i (see shard_for).
STREAM_PREFIX = f"{PREFIX}:batches:"
# Number of shards, fixed per Redis database by the first process that starts (SET NX).
SHARDS_KEY = f"{PREFIX}:stream_shards"
CONSUMER_GROUP = "fleetpulse-workers"
# Entries that failed worker_max_deliveries times, with their error; each one acknowledged.
DEAD_LETTER_STREAM = f"{PREFIX}:dead-letter"
# Failed attempts per pending entry ("<stream>/<entry id>" -> count), shared by all workers.
ATTEMPTS_KEY = f"{PREFIX}:attempts"
# Pub/sub between front-ends and the CLI/API: claims of agent ids, conflicts, revocations, settings.
# The channel of one database is control_channel(client).
CONTROL_CHANNEL = f"{PREFIX}:control"

# Fields of one stream entry (short names: they are repeated in every entry).
FIELD_AGENT = b"a"
FIELD_EPOCH = b"e"
FIELD_SEQUENCE = b"s"
FIELD_RECEIVED_MS = b"t"
FIELD_BATCH = b"b"
# Which form FIELD_BATCH holds: a MetricBatch (rows, the original plan's) or a ColumnarBatch.
# Entries without the field are rows.
FIELD_FORM = b"f"
FORM_ROWS = b"r"
FORM_COLUMNS = b"c"


def control_channel(client: Any) -> str:
    """The control channel of ``client``'s database. Redis pub/sub ignores the database index, so
    the channel names it: two platforms sharing one Redis server (a staging and a production, on
    other database numbers) never take each other's claims, revocations or settings."""
    return f"{CONTROL_CHANNEL}:{client.connection_pool.connection_kwargs.get('db', 0)}"


def stream_key(shard: int) -> str:
    return f"{STREAM_PREFIX}{shard}"


def shard_for(agent_id: str, shards: int) -> int:
    """Stable across processes and restarts (unlike hash()), so an agent always maps to one shard."""
    return zlib.crc32(agent_id.encode()) % shards


# The committed watermark: one entry per committed chunk, listing the batches (agent, epoch,
# sequence ranges) now final in PostgreSQL (stored, or counted as rejected). A notification feed
# for the front-ends, not data: it is trimmed (approximately) to COMMITTED_MAXLEN entries, and a
# notification lost to trimming costs only a replay that the ledger turns into a no-op, which is
# announced again. See ingest/watermark.py.
COMMITTED_STREAM = f"{PREFIX}:committed"
COMMITTED_MAXLEN = 100_000
FIELD_COMMITTED = b"c"

# Running totals of the workers' time per step (read, decode, ledger, copy, marks, accounting,
# commit, ack: seconds) and of chunks and points, summed over all workers: the pipeline's profile.
WORKER_STATS_KEY = f"{PREFIX}:worker-stats"

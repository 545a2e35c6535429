"""Rollup tiers (1 minute, 1 hour): count, sum, min, max, last per series and bucket.

Stored in the shape of the samples (schema 0010): one row per series set and bucket, with one
count and one latest time for the set and an array per statistic in the set's column order
(``set_rollup_1m``, ``set_rollup_1h``). A minute is computed from its samples rows, an hour from
its minute rows, in numpy, one (rows x series) matrix per set and statistic (``_add``): no work
per point or per series in SQL or Python, and one COPYed row per set. Points of the layout before
samples are rolled up into that layout's per-series tables (``rollup_1m``, ``rollup_1h``) as
before; readers combine both (fleetpulse/samples.py ``rollup_sql``).

How they stay exact:

- Workers append a *dirty mark* (tier 1, minute) for every minute a chunk wrote points into, in the
  chunk's own transaction (copier.py). A redelivered batch writes no points and marks nothing.
- The rollup job (a thread in every worker process; one at a time runs, by advisory lock) takes the
  marks of *closed* minutes and, per minute and in one transaction, deletes them and recomputes
  that minute for every set from its raw samples (replace, never merge), then marks the hour.
  Closed hours are recomputed the same way from the minute tier.
- The marks are deleted by the statement before the recompute reads the points, and under READ
  COMMITTED each statement sees everything committed before it started. A chunk that commits points
  for that minute later also committed a new mark, which the delete did not see; the next round
  recomputes the minute again. So late data corrects its buckets, and no mark is lost: a crash rolls
  the delete back with the recompute.

What is current when: a closed bucket is recomputed once its marks have settled (no new one for
``rollup_settle_s``, 2 s) or at the latest ``rollup_max_delay_s`` (10 s) after it closed or after
a late point's commit, by the next round (every ``rollup_interval_s``, 2 s) plus that round's
duration; ``rollup_log`` records each bucket's lag. The open minute and the open hour are not in
their tier; readers take them from the finer tier.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import numpy as np
import psycopg

from fleetpulse import locks, partitions, samples
from fleetpulse.copybuf import set_rollup_buffer
from fleetpulse.ingest.worker import failpoints, selfmetrics
from fleetpulse.ingest.worker.jobs import JobThread

log = logging.getLogger(__name__)

# Mark tiers in rollup_dirty: minutes and hours to recompute, hours to compress (ingest/worker/compress.py).
TIER_MINUTE, TIER_HOUR, TIER_COMPRESS = 1, 2, 3
# Buckets recomputed per round, oldest first; the rest wait for the next round.
MAX_BUCKETS_PER_ROUND = 120

# Closed buckets whose marks have settled (no new mark for `settle`), or that have waited `max_delay`
# since they closed or were first marked after closing, whichever is later. Settling keeps a minute
# whose last batches are still arriving (agents send every collect interval) from being recomputed
# once per arriving batch; the delay caps how long that can postpone it.
_PENDING = """
SELECT bucket FROM rollup_dirty
WHERE tier = %(tier)s AND bucket <= now() - %(width)s::interval
GROUP BY bucket
HAVING max(marked_at) <= now() - %(settle)s * interval '1 second'
    OR min(greatest(marked_at, bucket + %(width)s::interval))
       <= now() - %(max_delay)s * interval '1 second'
ORDER BY bucket LIMIT %(limit)s
"""

_TAKE_MARKS = "DELETE FROM rollup_dirty WHERE tier = %s AND bucket = %s RETURNING marked_at"

_LOG = """
INSERT INTO rollup_log (tier, bucket, rows, lag_s, took_s)
VALUES (%(tier)s, %(bucket)s, %(rows)s,
        extract(epoch FROM clock_timestamp() - greatest(%(marked)s, %(bucket)s + %(width)s::interval)),
        %(took)s)
RETURNING lag_s
"""

# A bucket's inputs, per set: the minute's samples rows (reduce_minute), or the hour's minute rows
# and minute chunks (reduce_hour: minutes compressed with the hour's rows, ingest/worker/compress.py, in
# the same statement, so in one snapshot with the hot minutes), each array as array_send() gives
# it. A minute whose hour was compressed
# (ingest/worker/compress.py) has rows there only for sets that received late rows: those sets are
# recomputed from their hot rows and their chunk of the hour (in the same statement, so in one
# snapshot with the hot rows), the others keep their rollup rows, which were current when their
# rows were compressed (compression waits for a minute's rollup).
_INPUTS = {
    TIER_MINUTE: """
WITH hot AS MATERIALIZED (
    SELECT set_id, ts, vals FROM samples
    WHERE ts >= %(bucket)s AND ts < %(bucket)s + interval '1 minute'
)
SELECT set_id, (extract(epoch FROM ts) * 1000000)::int8, array_send(vals),
       NULL::int4, NULL::int2, NULL::bytea, NULL::bytea[]
FROM hot
UNION ALL
SELECT c.set_id, NULL, NULL, c.rows, c.width, c.ts, c.vals FROM sample_chunks c
WHERE c.hour = %(hour)s AND c.set_id IN (SELECT set_id FROM hot)
    AND c.first_ts < %(bucket)s + interval '1 minute' AND c.last_ts >= %(bucket)s
""",
    TIER_HOUR: """
SELECT set_id, (extract(epoch FROM bucket) * 1000000)::int8, count::int8,
       (extract(epoch FROM last_ts) * 1000000)::int8,
       array_send(sum), array_send(min), array_send(max), array_send(last),
       NULL::int2, NULL::bytea, NULL::bytea, NULL::bytea, NULL::bytea[], NULL::bytea[]
FROM set_rollup_1m
WHERE bucket >= %(bucket)s AND bucket < %(bucket)s + interval '1 hour'
UNION ALL
SELECT set_id, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
       minutes, buckets, counts, last_ts, sum, min_max_last
FROM minute_chunks WHERE hour = %(bucket)s
""",
}
# A minute recomputed for sets whose minutes of its hour are compressed: their minute chunk goes
# back to set_rollup_1m (all its other minutes, in this transaction), and compression, which the
# hour's recompute marks again, merges them with the hour's chunk once more.
_THAW = """
DELETE FROM minute_chunks WHERE hour = %(hour)s AND set_id = ANY(%(sets)s)
RETURNING set_id, minutes, buckets, counts, last_ts, sum, min_max_last
"""
COPY_SET_ROLLUPS = {
    TIER_MINUTE: "COPY set_rollup_1m (set_id, bucket, count, last_ts, sum, min, max, last)"
    " FROM STDIN (FORMAT BINARY)",
    TIER_HOUR: "COPY set_rollup_1h (set_id, bucket, count, last_ts, sum, min, max, last)"
    " FROM STDIN (FORMAT BINARY)",
}

# The per-series tiers of the layout before samples, recomputed the way that layout did, from its
# points: nothing while retention keeps none (an index probe of empty partitions). Tie-break of
# `last` (two points of one series with the same timestamp): the greater value, NaN greatest
# (PostgreSQL's order of float8), in every tier and both layouts, so that an hour derived from
# minutes equals the hour computed from raw points.
_LEGACY = {
    TIER_MINUTE: """
INSERT INTO rollup_1m (series_id, bucket, count, sum, min, max, last, last_ts)
SELECT series_id, %(bucket)s, count(*), sum(value), min(value), max(value),
       (array_agg(value ORDER BY ts DESC, value DESC))[1], max(ts)
FROM points
WHERE ts >= %(bucket)s AND ts < %(bucket)s + interval '1 minute'
GROUP BY series_id
""",
    TIER_HOUR: """
INSERT INTO rollup_1h (series_id, bucket, count, sum, min, max, last, last_ts)
SELECT series_id, %(bucket)s, sum(count)::int4, sum(sum), min(min), max(max),
       (array_agg(last ORDER BY last_ts DESC, last DESC))[1], max(last_ts)
FROM rollup_1m
WHERE bucket >= %(bucket)s AND bucket < %(bucket)s + interval '1 hour'
GROUP BY series_id
""",
}

# A recompute replaces the bucket: delete, then a plain INSERT (measured: 2.4x cheaper than an
# upsert over existing rows, 1.2x when none exist; docs/performance.md). Readers see the old rows
# until the transaction commits.
_CLEAR_SETS = {
    TIER_MINUTE: "DELETE FROM set_rollup_1m WHERE bucket = %(bucket)s AND set_id = ANY(%(sets)s)",
    TIER_HOUR: "DELETE FROM set_rollup_1h WHERE bucket = %(bucket)s",
}
_CLEAR_LEGACY = {
    TIER_MINUTE: "DELETE FROM rollup_1m WHERE bucket = %(bucket)s",
    TIER_HOUR: "DELETE FROM rollup_1h WHERE bucket = %(bucket)s",
}

_WIDTH = {TIER_MINUTE: "1 minute", TIER_HOUR: "1 hour"}


# Run by the worker inside a chunk's transaction, with the distinct minutes the chunk wrote into.
MARK_MINUTES = "INSERT INTO rollup_dirty (tier, bucket) SELECT 1, unnest(%s::timestamptz[])"


@dataclass
class RoundResult:
    minutes: int = 0
    hours: int = 0
    rows: int = 0
    # Largest lag of a bucket recomputed in the round (see rollup_log), seconds.
    max_lag_s: float = 0.0
    seconds: float = 0.0


class RollupJob:
    """Recomputes dirty buckets; ``run_round`` is safe to call from several processes at once."""

    def __init__(
        self,
        conn: psycopg.Connection,
        settle_s: float = 0.0,
        max_delay_s: float = 0.0,
        failpoint: str | None = None,
    ) -> None:
        if not conn.autocommit:
            raise ValueError("the rollup job needs an autocommit connection")
        self._conn = conn
        self._settle_s = settle_s
        self._max_delay_s = max_delay_s
        self._failpoint = failpoint  # test-only (failpoints.py): settings.failpoint
        self._known_days: dict[str, set[date]] = {}

    def run_round(self, limit: int = MAX_BUCKETS_PER_ROUND) -> RoundResult | None:
        """One round; None when another process holds the job (it is doing the same work)."""
        conn = self._conn
        locked = conn.execute("SELECT pg_try_advisory_lock(%s)", (locks.ROLLUP,)).fetchone()
        if not locked or not locked[0]:
            return None
        started = time.perf_counter()
        result = RoundResult()
        try:
            for tier in (TIER_MINUTE, TIER_HOUR):
                buckets = [
                    row[0]
                    for row in conn.execute(
                        _PENDING,
                        {
                            "tier": tier,
                            "width": _WIDTH[tier],
                            "settle": self._settle_s,
                            "max_delay": self._max_delay_s,
                            "limit": limit,
                        },
                    )
                ]
                for bucket in buckets:
                    rows, lag = self._recompute(tier, bucket)
                    result.rows += rows
                    result.max_lag_s = max(result.max_lag_s, lag)
                if tier == TIER_MINUTE:
                    result.minutes = len(buckets)
                else:
                    result.hours = len(buckets)
            conn.execute("DELETE FROM rollup_log WHERE done_at < now() - interval '1 day'")
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (locks.ROLLUP,))
        result.seconds = time.perf_counter() - started
        return result

    def _recompute(self, tier: int, bucket: datetime) -> tuple[int, float]:
        """Recompute one bucket; return (rows written, lag in seconds)."""
        self._ensure_partition(bucket)
        conn = self._conn
        started = time.perf_counter()
        with conn.transaction():
            # Fresh partitions have no statistics yet, and a plan that walks the (series_id, ts)
            # btree for its order reads the whole day; one bucket is a BRIN bitmap scan.
            conn.execute("SET LOCAL enable_seqscan = off")
            conn.execute("SET LOCAL enable_indexscan = off")
            conn.execute("SET LOCAL work_mem = '64MB'")  # the per-series sort stays in memory
            marks = [row[0] for row in conn.execute(_TAKE_MARKS, (tier, bucket))]
            rows = self._recompute_sets(tier, bucket)
            conn.execute(_CLEAR_LEGACY[tier], {"bucket": bucket})
            rows += conn.execute(_LEGACY[tier], {"bucket": bucket}).rowcount
            if tier == TIER_MINUTE:
                failpoints.mid_rollup(self._failpoint, bucket)
            if tier == TIER_MINUTE:
                hour = bucket.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
                conn.execute(
                    "INSERT INTO rollup_dirty (tier, bucket) VALUES (%s, %s)", (TIER_HOUR, hour)
                )
            else:  # the hour's rows may be compressed now (ingest/worker/compress.py)
                conn.execute(
                    "INSERT INTO rollup_dirty (tier, bucket) VALUES (%s, %s)",
                    (TIER_COMPRESS, bucket),
                )
            logged = conn.execute(
                _LOG,
                {
                    "tier": tier,
                    "bucket": bucket,
                    "rows": rows,
                    "marked": max(marks, default=bucket),
                    "width": _WIDTH[tier],
                    "took": time.perf_counter() - started,
                },
            ).fetchone()
        return rows, float(logged[0]) if logged else 0.0

    def _recompute_sets(self, tier: int, bucket: datetime) -> int:
        """Read the bucket's inputs, reduce them per set, replace the sets' rollup rows (a minute:
        the sets that have rows in it; an hour: all); return how many rows were written."""
        hour = bucket.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        params = {"bucket": bucket, "hour": hour}
        bucket_us = int(bucket.timestamp()) * 1_000_000
        with self._conn.cursor(binary=True) as cur:
            inputs = cur.execute(_INPUTS[tier], params).fetchall()
            if tier == TIER_MINUTE:
                result = reduce_minute(inputs, bucket_us, bucket_us + 60_000_000)
            else:
                result = reduce_hour(inputs)
            self._conn.execute(_CLEAR_SETS[tier], {**params, "sets": result.set_ids})
            if not result.set_ids:
                return 0
            buckets = [bucket_us] * len(result.set_ids)
            if tier == TIER_MINUTE:
                thawed = cur.execute(_THAW, {**params, "sets": result.set_ids}).fetchall()
                for set_id, *blobs in thawed:
                    m = samples.decode_minutes(*blobs)
                    m = m.take(m.bucket_us != bucket_us)
                    result.set_ids += [set_id] * len(m)
                    buckets += m.bucket_us.tolist()
                    result.count += m.count.tolist()
                    result.last_ts_us += m.last_ts_us.tolist()
                    result.arrays += [
                        [m.sum[i], m.min[i], m.max[i], m.last[i]] for i in range(len(m))
                    ]
        buffer = set_rollup_buffer(
            np.asarray(result.set_ids, dtype=np.int32),
            np.asarray(buckets, dtype=np.int64),
            np.asarray(result.count, dtype=np.int64),
            np.asarray(result.last_ts_us, dtype=np.int64),
            result.arrays,
        )
        with self._conn.cursor() as cur, cur.copy(COPY_SET_ROLLUPS[tier]) as copy:
            copy.write(buffer)
        return len(result.set_ids)

    def _ensure_partition(self, bucket: datetime) -> None:
        """Days older than the rollup tiers (a database from before them) get partitions here."""
        day = bucket.astimezone(UTC).date()
        for table in ("set_rollup_1m", "set_rollup_1h", "rollup_1m", "rollup_1h"):
            known = self._known_days.get(table)
            if known is None or day not in known:
                known = self._known_days[table] = partitions.existing_days(self._conn, table)
            if day not in known:
                partitions.ensure_days(self._conn, [day])
                self._known_days.clear()
                return

    def catch_up(self) -> RoundResult:
        """Rounds until nothing closed is left (tests and the benchmark use it)."""
        total = RoundResult()
        while True:
            result = self.run_round()
            if result is None:
                time.sleep(0.05)
                continue
            total.minutes += result.minutes
            total.hours += result.hours
            total.rows += result.rows
            total.seconds += result.seconds
            total.max_lag_s = max(total.max_lag_s, result.max_lag_s)
            if not result.minutes and not result.hours:
                return total


class RollupThread(JobThread):
    """The rollup job inside a worker process (jobs.py)."""

    def __init__(
        self,
        database_url: str,
        interval_s: float,
        settle_s: float,
        max_delay_s: float,
        failpoint: str | None = None,
    ) -> None:
        super().__init__("rollups", database_url, interval_s)
        self._settle_s = settle_s
        self._max_delay_s = max_delay_s
        self._failpoint = failpoint
        self._job: RollupJob | None = None

    def prepare(self, conn: psycopg.Connection) -> None:
        # Safe for derived data: a commit lost in a crash takes its mark deletions with it, so
        # the bucket is recomputed again; no fsync wait per bucket.
        conn.execute("SET synchronous_commit = off")
        self._job = RollupJob(conn, self._settle_s, self._max_delay_s, self._failpoint)

    def round(self, conn: psycopg.Connection) -> None:
        assert self._job is not None
        result = self._job.run_round()
        if result and (result.minutes or result.hours):
            selfmetrics.ROLLUP_LAG.set(result.max_lag_s)
            log.debug(
                "rollups: %d minutes, %d hours, %d rows in %.2f s (max lag %.1f s)",
                result.minutes,
                result.hours,
                result.rows,
                result.seconds,
                result.max_lag_s,
            )


@dataclass
class SetAggregates:
    """Per set of a bucket: the count and latest time of its rows (one for all its series, since
    every row holds every series), and its sum, min, max and last value per series (arrays)."""

    set_ids: list[int]
    count: list[int]
    last_ts_us: list[int]
    arrays: list[list[np.ndarray]]  # per set: [sum, min, max, last]


def reduce_minute(rows: list[tuple[Any, ...]], lo_us: int, hi_us: int) -> SetAggregates:
    """A minute [lo, hi) reduced per set, from ``_INPUTS[TIER_MINUTE]`` rows: a hot row is
    ``(set_id, ts µs, array_send(vals), None...)``, a chunk ``(set_id, None, None, rows, width,
    ts, vals)`` (fleetpulse/samples.py), of which the minute's rows are taken."""
    hot: dict[int, list[int]] = {}
    chunks: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for i, row in enumerate(rows):
        if row[1] is not None:
            hot.setdefault(row[0], []).append(i)
        else:
            ts, values = samples.decode_chunk(*row[3:7])
            keep = (ts >= lo_us) & (ts < hi_us)
            chunks[row[0]] = ts[keep], values[keep]
    out = SetAggregates([], [], [], [])
    for set_id, indexes in hot.items():
        ts = np.asarray([rows[i][1] for i in indexes], dtype=np.int64)
        values = samples.decode_arrays([rows[i][2] for i in indexes])
        if set_id in chunks:
            ts = np.concatenate([ts, chunks[set_id][0]])
            values = np.concatenate([values, chunks[set_id][1]])
        _add(out, set_id, np.ones(len(ts), np.int64), ts, (values, values, values, values))
    return out


def reduce_hour(rows: list[tuple[Any, ...]]) -> SetAggregates:
    """An hour reduced per set from ``_INPUTS[TIER_HOUR]`` rows: a set_rollup_1m row is
    ``(set_id, bucket µs, count, last_ts µs, sum, min, max, last, None...)`` (arrays as
    array_send() gives them), a minute chunk ``(set_id, None..., minutes, blobs...)``
    (fleetpulse/samples.py)."""
    by_set: dict[int, list[tuple[Any, ...]]] = {}
    parts: dict[int, list[samples.Minutes]] = {}
    for row in rows:
        if row[1] is not None:
            by_set.setdefault(row[0], []).append(row[:8])
        else:
            parts.setdefault(row[0], []).append(samples.decode_minutes(*row[8:]))
    for set_id, set_rows in by_set.items():
        parts.setdefault(set_id, []).append(samples.minute_rows(set_rows))
    out = SetAggregates([], [], [], [])
    for set_id, minutes in parts.items():
        m = samples.Minutes.concat(minutes)
        _add(out, set_id, m.count, m.last_ts_us, (m.sum, m.min, m.max, m.last))
    return out


def _add(
    out: SetAggregates,
    set_id: int,
    count: np.ndarray,
    ts: np.ndarray,
    stats: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
) -> None:
    """One set's aggregates from (rows x series) matrices of sums, minima, maxima and last values,
    with PostgreSQL's float8 semantics: a NaN makes sum and max NaN, min skips it unless every
    value is NaN, and `last` breaks a tie of times by the greater value, NaN greatest. No work
    per point in Python."""
    total, low, high, last = stats
    newest = int(ts.max())
    # +Inf and -Inf in one sum make NaN, as in PostgreSQL: expected, not worth a warning.
    with np.errstate(invalid="ignore"):
        out.set_ids.append(set_id)
        out.count.append(int(count.sum()))
        out.last_ts_us.append(newest)
        out.arrays.append(
            [
                total.sum(axis=0),
                np.fmin.reduce(low, axis=0),
                high.max(axis=0),
                last[ts == newest].max(axis=0),
            ]
        )


def minute_starts(ts_unix_us: np.ndarray) -> list[datetime]:
    """The distinct minutes (as their start) that these timestamps fall into."""
    minutes = np.unique(ts_unix_us // 60_000_000)
    return [datetime.fromtimestamp(int(m) * 60, UTC) for m in minutes]

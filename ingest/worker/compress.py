"""Compression of closed hours: an hour's ``samples`` rows become one ``sample_chunks`` row per
series set (schema 0011; the codec is fleetpulse/samples.py's).

Why: a samples row costs 8 bytes per value plus its row and index entry (about 10.5 bytes per
point); a chunk costs what pcodec makes of the values (6.2 bytes per value on the simulator's
random walks, about 0.5 on real host data: docs/architecture.md "Storage v2") and one row per set
and hour.

What is compressed when. The rollup job marks an hour for compression (``rollup_dirty`` tier 3)
when it recomputes the hour, which it does after the hour's minutes; a late batch repeats that
chain. A round takes the hours marked at least ``after_s`` after they closed (so an hour is
compressed once, after its late batches) and, per batch of sets, in one transaction:

1. deletes the sets' rows of the hour from ``samples``, returning them;
2. gives up on the hour (rolls back) if a minute of it waits for its rollup: the rollup of a
   minute reads its rows from ``samples`` (and, for the sets that have rows there, their chunk:
   ingest/worker/rollups.py), so a minute's rows stay hot until its rollup is current;
3. merges them with the set's chunk of the hour if one exists (late rows compressed before);
4. writes the new chunks (COPY) and commits.

So a row is in exactly one of the two tables in every snapshot, and a crash anywhere rolls the
batch back whole: nothing lost, nothing twice (tests/faults/test_compress.py kills the process in
the middle with the failpoint ``mid-compress``). The hour's mark is deleted when every batch has
committed; a mark added meanwhile (later late rows) stays for the next round.

Emptied partitions: the day's heap and index keep their dead space until vacuum; a closed day whose
partition is empty is truncated (``release_empty_days``), under an exclusive lock taken first, so
no row can arrive between the check and the truncation.

One process runs it at a time (an advisory lock of its own), in a thread of each worker process,
beside the rollup job: neither waits for the other.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import psycopg
from psycopg import sql

from fleetpulse import locks, partitions, samples
from fleetpulse.ingest.worker import failpoints
from fleetpulse.ingest.worker.jobs import JobThread

log = logging.getLogger(__name__)

TIER_COMPRESS = 3
# Values per transaction (16 MB as a matrix), estimated (compress_hour).
BATCH_VALUES = 2_000_000
FIRST_ROWS_ESTIMATE = 3600
MAX_HOURS_PER_ROUND = 24
# An empty samples partition (its heap, btree and BRIN) is smaller than this; only a partition
# above it has pages to give back.
_EMPTY_BYTES = 65_536
# The tables whose rows compression moves out (into sample_chunks and minute_chunks).
_EMPTIED_BY_COMPRESSION = ("samples", "set_rollup_1m")

_PENDING = """
SELECT bucket, max(marked_at) FROM rollup_dirty
WHERE tier = 3 AND bucket <= %(horizon)s - interval '1 hour'
GROUP BY bucket ORDER BY bucket LIMIT %(limit)s
"""
_SETS = "SELECT set_id, cardinality(series_ids) FROM series_sets ORDER BY set_id"
_TAKE_ROWS = """
DELETE FROM samples
WHERE set_id = ANY(%(sets)s) AND ts >= %(lo)s AND ts < %(hi)s
RETURNING set_id, (extract(epoch FROM ts) * 1000000)::int8, array_send(vals)
"""
_MINUTES_PENDING = """
SELECT EXISTS (SELECT 1 FROM rollup_dirty WHERE tier = 1 AND bucket >= %(lo)s AND bucket < %(hi)s)
"""
_TAKE_CHUNKS = """
DELETE FROM sample_chunks WHERE hour = %(hour)s AND set_id = ANY(%(sets)s)
RETURNING set_id, rows, width, ts, vals
"""
COPY_CHUNKS = (
    "COPY sample_chunks (set_id, hour, rows, width, first_ts, last_ts, ts, vals)"
    " FROM STDIN (FORMAT BINARY)"
)
CHUNK_TYPES = [
    "int4",
    "timestamptz",
    "int4",
    "int2",
    "timestamptz",
    "timestamptz",
    "bytea",
    "bytea[]",
]
_TAKE_MINUTES = """
DELETE FROM set_rollup_1m
WHERE set_id = ANY(%(sets)s) AND bucket >= %(lo)s AND bucket < %(hi)s
RETURNING set_id, (extract(epoch FROM bucket) * 1000000)::int8, count::int8,
    (extract(epoch FROM last_ts) * 1000000)::int8,
    array_send(sum), array_send(min), array_send(max), array_send(last)
"""
_TAKE_MINUTE_CHUNKS = """
DELETE FROM minute_chunks WHERE hour = %(hour)s AND set_id = ANY(%(sets)s)
RETURNING set_id, minutes, buckets, counts, last_ts, sum, min_max_last
"""
COPY_MINUTE_CHUNKS = (
    "COPY minute_chunks (set_id, hour, minutes, width, buckets, counts, last_ts, sum,"
    " min_max_last) FROM STDIN (FORMAT BINARY)"
)
MINUTE_CHUNK_TYPES = [
    "int4",
    "timestamptz",
    "int2",
    "int2",
    "bytea",
    "bytea",
    "bytea",
    "bytea[]",
    "bytea[]",
]
_DONE = "DELETE FROM rollup_dirty WHERE tier = 3 AND bucket = %s AND marked_at <= %s"


class _Busy(Exception):
    """A minute of the hour waits for its rollup: the batch rolls back, the hour waits."""


@dataclass
class CompressResult:
    hours: int = 0
    rows: int = 0  # samples rows compressed
    points: int = 0  # the points they held
    chunks: int = 0  # chunks written
    minute_rows: int = 0  # set_rollup_1m rows compressed
    minute_chunks: int = 0  # minute chunks written
    deferred: int = 0  # hours left for a later round (a minute's rollup was pending)
    days: set[date] = field(default_factory=set)  # days of the hours compressed
    seconds: float = 0.0


class CompressJob:
    """Compresses marked hours; ``run_round`` is safe to call from several processes at once."""

    def __init__(self, conn: psycopg.Connection, failpoint: str | None = None) -> None:
        if not conn.autocommit:
            raise ValueError("the compression job needs an autocommit connection")
        self._conn = conn
        self._failpoint = failpoint  # test-only (failpoints.py)

    def run_round(
        self, after_s: float, horizon: datetime | None = None, limit: int = MAX_HOURS_PER_ROUND
    ) -> CompressResult | None:
        """Compress the hours marked for it that closed ``after_s`` before ``horizon`` (now); None
        when another process holds the job."""
        conn = self._conn
        locked = conn.execute("SELECT pg_try_advisory_lock(%s)", (locks.COMPRESS,)).fetchone()
        if not locked or not locked[0]:
            return None
        started = time.perf_counter()
        result = CompressResult()
        try:
            until = (horizon or datetime.now(UTC)) - timedelta(seconds=after_s)
            pending = conn.execute(_PENDING, {"horizon": until, "limit": limit}).fetchall()
            for hour, marked in pending:
                try:
                    if self.compress_hour(hour, result):
                        conn.execute(_DONE, (hour, marked))
                except psycopg.Error as exc:  # this hour waits; the next ones go on
                    log.warning("compressing the hour %s failed: %s", hour.isoformat(), exc)
                    result.deferred += 1
                    if conn.closed or conn.broken:
                        raise
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (locks.COMPRESS,))
        result.seconds = time.perf_counter() - started
        return result

    def compress_hours(self, hours: list[datetime]) -> CompressResult:
        """Compress these hours now, marked or not, waiting for the job's lock (the benchmarks,
        to measure the layout as the job leaves it once the hours are old enough)."""
        conn = self._conn
        started = time.perf_counter()
        result = CompressResult()
        conn.execute("SELECT pg_advisory_lock(%s)", (locks.COMPRESS,))
        try:
            for hour in hours:
                self.compress_hour(hour, result)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (locks.COMPRESS,))
        result.seconds = time.perf_counter() - started
        return result

    def compress_hour(self, hour: datetime, result: CompressResult) -> bool:
        """Compress every set's hot rows of ``hour`` (the caller holds the job's lock); False,
        and the hour counted as deferred, if a minute of it waited for its rollup.

        Batches of sets hold about BATCH_VALUES values: a set is counted at its width times the
        most rows a set of this hour has had so far (at first ``FIRST_ROWS_ESTIMATE``, an hour
        at one collection per second), so a batch overshoots only by that ratio for a set with
        more rows than any before it."""
        partitions.ensure_days(self._conn, [hour.astimezone(UTC).date()])  # an old day's chunks
        sets = self._conn.execute(_SETS).fetchall()
        rows_per_set = FIRST_ROWS_ESTIMATE
        seen_rows = 0
        at = 0
        while at < len(sets):
            budget = BATCH_VALUES
            batch: list[int] = []
            while at < len(sets) and (not batch or budget >= sets[at][1] * rows_per_set):
                budget -= sets[at][1] * rows_per_set
                batch.append(sets[at][0])
                at += 1
            try:
                values, most_rows = self._compress_batch(hour, batch, result)
            except _Busy:
                result.deferred += 1
                return False
            result.points += values
            if most_rows:
                seen_rows = max(seen_rows, most_rows)
                rows_per_set = seen_rows
        result.hours += 1
        result.days.add(hour.astimezone(UTC).date())
        return True

    def _compress_batch(
        self, hour: datetime, set_ids: list[int], result: CompressResult
    ) -> tuple[int, int]:
        """One transaction: the sets' hot rows and minute rows of the hour, merged into their
        chunks; returns the values compressed and the most rows a set had."""
        conn = self._conn
        bounds = {"lo": hour, "hi": hour + timedelta(hours=1), "sets": set_ids, "hour": hour}
        with conn.transaction():
            with conn.cursor(binary=True) as cur:
                taken = cur.execute(_TAKE_ROWS, bounds).fetchall()
                minutes = cur.execute(_TAKE_MINUTES, bounds).fetchall()
            if not taken and not minutes:
                return 0, 0
            pending = conn.execute(_MINUTES_PENDING, bounds).fetchone()
            if pending and pending[0]:
                raise _Busy
            values_taken, most_rows = self._write_samples(hour, taken, result)
            self._write_minutes(hour, minutes, result)
            failpoints.mid_compress(self._failpoint, hour)
        result.rows += len(taken)
        result.minute_rows += len(minutes)
        return values_taken, most_rows

    def _write_samples(
        self, hour: datetime, taken: list[tuple[Any, ...]], result: CompressResult
    ) -> tuple[int, int]:
        """The sets' chunks of the hour from their taken rows and the chunk they had."""
        if not taken:
            return 0, 0
        by_set = _by_set(taken)
        with self._conn.cursor(binary=True) as cur:
            before = {
                row[0]: row[1:]
                for row in cur.execute(_TAKE_CHUNKS, {"hour": hour, "sets": list(by_set)})
            }
        values_taken = 0
        with self._conn.cursor() as cur, cur.copy(COPY_CHUNKS) as copy:
            copy.set_types(CHUNK_TYPES)
            for set_id, indexes in by_set.items():
                ts = np.asarray([taken[i][1] for i in indexes], dtype=np.int64)
                values = samples.decode_arrays([taken[i][2] for i in indexes])
                values_taken += values.size
                if set_id in before:
                    ts, values = _merge(ts, values, before[set_id])
                order = np.argsort(ts, kind="stable")
                ts, values = ts[order], values[order]
                ts_blob, vals_blob = samples.encode_chunk(ts, values)
                copy.write_row(
                    (
                        set_id,
                        hour,
                        len(ts),
                        values.shape[1],
                        samples.at_us(int(ts[0])),
                        samples.at_us(int(ts[-1])),
                        ts_blob,
                        vals_blob,
                    )
                )
                result.chunks += 1
        return values_taken, max(len(indexes) for indexes in by_set.values())

    def _write_minutes(
        self, hour: datetime, taken: list[tuple[Any, ...]], result: CompressResult
    ) -> None:
        """The sets' minute chunks of the hour from their taken minute rows and the chunk they
        had (a minute in both: the row, recomputed after the chunk was written)."""
        if not taken:
            return
        by_set = _by_set(taken)
        with self._conn.cursor(binary=True) as cur:
            before = {
                row[0]: row[1:]
                for row in cur.execute(_TAKE_MINUTE_CHUNKS, {"hour": hour, "sets": list(by_set)})
            }
        with self._conn.cursor() as cur, cur.copy(COPY_MINUTE_CHUNKS) as copy:
            copy.set_types(MINUTE_CHUNK_TYPES)
            for set_id, indexes in by_set.items():
                rows = [taken[i] for i in indexes]
                m = samples.minute_rows(rows)
                if set_id in before:
                    old = samples.decode_minutes(*before[set_id])
                    if old.sum.shape[1] != m.sum.shape[1]:
                        raise ValueError(
                            f"a minute chunk {old.sum.shape[1]} wide for rows {m.sum.shape[1]} wide"
                        )
                    m = samples.Minutes.concat([old.take(~np.isin(old.bucket_us, m.bucket_us)), m])
                m = m.take(np.argsort(m.bucket_us, kind="stable"))
                copy.write_row((set_id, hour, len(m), m.sum.shape[1], *samples.encode_minutes(m)))
                result.minute_chunks += 1

    def release_empty_days(self, days: set[date]) -> list[str]:
        """Truncate the partitions of these days that compression has emptied (``samples`` and
        ``set_rollup_1m``), so that their dead heap and index pages go back to the file system;
        returns those truncated.

        VACUUM first (it gives back the heap of an all-dead partition without blocking anyone,
        and makes the dead space of one still in use reusable), then, under an exclusive lock
        taken before the check so that no row can arrive between the two, TRUNCATE if nothing
        is left (the indexes keep their pages otherwise). For a day still written to (today,
        while agents send), the lock is not free or rows are left: it is skipped."""
        conn = self._conn
        released = []
        for parent in _EMPTIED_BY_COMPRESSION:
            known = partitions.existing_days(conn, parent)
            for day in sorted(days & known):
                table = partitions.partition_name(day, parent)
                if self._release(table):
                    released.append(table)
        return released

    def _release(self, table: str) -> bool:
        conn = self._conn
        name = sql.Identifier(table)
        conn.execute(sql.SQL("VACUUM {}").format(name))
        try:
            with conn.transaction():
                conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE NOWAIT").format(name))
                row = conn.execute(
                    sql.SQL(
                        "SELECT NOT EXISTS (SELECT 1 FROM {}) AND pg_total_relation_size(%s) > %s"
                    ).format(name),
                    (table, _EMPTY_BYTES),
                ).fetchone()
                if row and row[0]:
                    conn.execute(sql.SQL("TRUNCATE {}").format(name))
                    return True
        except psycopg.errors.LockNotAvailable:
            pass  # in use: a later round tries again
        return False

    def catch_up(self, horizon: datetime | None = None) -> CompressResult:
        """Rounds until no marked hour before ``horizon`` is left (tests and the benchmarks)."""
        total = CompressResult()
        while True:
            result = self.run_round(0.0, horizon)
            if result is None:
                time.sleep(0.05)
                continue
            total.hours += result.hours
            total.rows += result.rows
            total.points += result.points
            total.chunks += result.chunks
            total.minute_rows += result.minute_rows
            total.minute_chunks += result.minute_chunks
            total.seconds += result.seconds
            total.days |= result.days
            if not result.hours:
                total.deferred = result.deferred
                return total


def _by_set(rows: list[tuple[Any, ...]]) -> dict[int, list[int]]:
    """The indexes of the rows of each set (a row's first field)."""
    by_set: dict[int, list[int]] = {}
    for i, row in enumerate(rows):
        by_set.setdefault(row[0], []).append(i)
    return by_set


def _merge(
    ts: np.ndarray, values: np.ndarray, chunk: tuple[Any, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Hot rows and the set's existing chunk of the hour, as one set of rows."""
    rows, width, ts_blob, vals_blob = chunk
    old_ts, old_values = samples.decode_chunk(rows, width, ts_blob, vals_blob)
    if old_values.shape[1] != values.shape[1]:
        raise ValueError(f"a chunk {old_values.shape[1]} wide for rows {values.shape[1]} wide")
    return np.concatenate([old_ts, ts]), np.concatenate([old_values, values])


class CompressThread(JobThread):
    """The compression job inside a worker process (jobs.py)."""

    def __init__(
        self, database_url: str, interval_s: float, after_s: float, failpoint: str | None = None
    ) -> None:
        super().__init__("compress", database_url, interval_s)
        self._after_s = after_s
        self._failpoint = failpoint
        self._job: CompressJob | None = None

    def prepare(self, conn: psycopg.Connection) -> None:
        self._job = CompressJob(conn, self._failpoint)

    def round(self, conn: psycopg.Connection) -> None:
        assert self._job is not None
        result = self._job.run_round(self._after_s)
        if result and result.hours:
            log.info(
                "compressed %d hours: %d rows into %d chunks in %.1f s",
                result.hours,
                result.rows,
                result.chunks,
                result.seconds,
            )
            today = datetime.now(UTC).date()
            self._job.release_empty_days({day for day in result.days if day < today})

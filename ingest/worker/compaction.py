"""Packing the primary-key indexes of the rollup tiers' daily partitions.

The rollup job writes a tier bucket by bucket, so each series' newest row lands in the middle of the
``(series_id, bucket)`` index, right after that series' previous one. Every leaf split there is a
50/50 split whose left half never receives another row: a day's index ends about half full
(``rollup_1m`` at 2,000 agents x 50 series: 12 GB for 86M rows). A chart reads one series' run of
that index (schema 0007 made it carry the whole row), so it reads twice the pages it needs.

So each day's index is rebuilt packed with ``REINDEX INDEX CONCURRENTLY`` (writes and reads go on
meanwhile; the rebuilt index is swapped in at the end): every ``OPEN_DAY_INTERVAL_S`` (6 h) while
the day is open, so that at most the last 6 hours of a chart read a half-full index, and once more,
finally, an hour after the day ends (its late batches and their recomputes land first). Measured
on a closed day: 12 GB to 6.9 GB in 100 s, and an 11-hour chart read of one host from 18.6 to
8.2 ms (p50, after dropping every cache; docs/performance.md). The rebuilds at about 6, 12 and
18 h rebuild a quarter, a half and three quarters of what the final one does.

One worker process does it at a time (an advisory lock), in a thread of its own so that neither
ingest nor the rollup job waits for it; ``index_compactions`` records each rebuild.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, date, datetime, timedelta

import psycopg
from psycopg import sql

from fleetpulse import locks, partitions
from fleetpulse.ingest.worker.jobs import JobThread

log = logging.getLogger(__name__)

TABLES = ("rollup_1m", "rollup_1h")
# A day is packed for good this long after it ends: its late batches and recomputes land first.
SETTLE_S = 3600.0
# While a day is open, its index is packed again when its last packing is this old.
OPEN_DAY_INTERVAL_S = 6 * 3600.0
CHECK_INTERVAL_S = 600.0

_PRIMARY_INDEX = (
    "SELECT i.indexrelid::regclass::text FROM pg_index i"
    " WHERE i.indrelid = to_regclass(%s) AND i.indisprimary"
)


def due(conn: psycopg.Connection, now: datetime | None = None) -> list[tuple[str, bool]]:
    """The rollup primary-key indexes to pack now, each with whether it is the final packing: days
    that ended ``SETTLE_S`` ago and were not packed finally; days still open that began
    ``OPEN_DAY_INTERVAL_S`` ago and were not packed within that time."""
    now = now or datetime.now(UTC)
    last_closed: date = (now - timedelta(seconds=SETTLE_S)).date() - timedelta(days=1)
    packed = {
        row[0]: (row[1], row[2])
        for row in conn.execute("SELECT index_name, final, done_at FROM index_compactions")
    }
    found = []
    for table in TABLES:
        for day in sorted(partitions.existing_days(conn, table)):
            began = partitions.day_start(day)
            if began > now - timedelta(seconds=OPEN_DAY_INTERVAL_S):
                continue  # the future, or a day too young to be worth it
            row = conn.execute(_PRIMARY_INDEX, (partitions.partition_name(day, table),)).fetchone()
            if row is None:
                continue
            final, done_at = packed.get(row[0], (False, None))
            if day <= last_closed:
                if not final:
                    found.append((row[0], True))
            elif now < began + timedelta(days=1) and (
                done_at is None or done_at <= now - timedelta(seconds=OPEN_DAY_INTERVAL_S)
            ):
                found.append((row[0], False))  # settling days wait for their final packing
    return found


def compact(
    conn: psycopg.Connection, index: str, final: bool = True, now: datetime | None = None
) -> tuple[int, int, float]:
    """Rebuild one index packed; record it. Returns bytes before, bytes after, seconds."""
    # A rebuild interrupted by a crash leaves its new copy behind, invalid (``*_ccnew``).
    leftovers = conn.execute(
        "SELECT i.indexrelid::regclass::text FROM pg_index i"
        " WHERE i.indrelid = (SELECT indrelid FROM pg_index WHERE indexrelid = to_regclass(%s))"
        " AND NOT i.indisvalid",
        (index,),
    ).fetchall()
    for (leftover,) in leftovers:
        conn.execute(
            sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(leftover))
        )
        log.info("dropped %s, left by an interrupted rebuild", leftover)
    size = "SELECT pg_relation_size(to_regclass(%s))"
    before = int(conn.execute(size, (index,)).fetchone()[0])  # type: ignore[index]
    began = time.monotonic()
    conn.execute(sql.SQL("REINDEX INDEX CONCURRENTLY {}").format(sql.Identifier(index)))
    took = time.monotonic() - began
    after = int(conn.execute(size, (index,)).fetchone()[0])  # type: ignore[index]
    conn.execute(
        "INSERT INTO index_compactions (index_name, bytes_before, bytes_after, took_s, final,"
        " done_at) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (index_name) DO UPDATE SET"
        " bytes_before = EXCLUDED.bytes_before, bytes_after = EXCLUDED.bytes_after,"
        " took_s = EXCLUDED.took_s, final = EXCLUDED.final, done_at = EXCLUDED.done_at",
        (index, before, after, took, final, now or datetime.now(UTC)),
    )
    log.info(
        "packed %s%s: %.0f MB to %.0f MB in %.1f s",
        index,
        "" if final else " (day still open)",
        before / 1e6,
        after / 1e6,
        took,
    )
    return before, after, took


def compact_due(conn: psycopg.Connection, now: datetime | None = None) -> list[str]:
    """Pack every due index, unless another process is at it; return the indexes packed.
    ``conn`` must be in autocommit mode (REINDEX CONCURRENTLY runs outside a transaction)."""
    row = conn.execute("SELECT pg_try_advisory_lock(%s)", (locks.COMPACTION,)).fetchone()
    if not row or not row[0]:
        return []
    try:
        conn.execute("DELETE FROM index_compactions WHERE to_regclass(index_name) IS NULL")
        packed = []
        for index, final in due(conn, now):
            compact(conn, index, final, now)
            packed.append(index)
        return packed
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (locks.COMPACTION,))


class CompactionThread(JobThread):
    """``compact_due`` every ``CHECK_INTERVAL_S`` inside a worker process (jobs.py), on a
    connection of its own for each check (an idle one would wait 10 minutes between them)."""

    def __init__(self, database_url: str, interval_s: float = CHECK_INTERVAL_S) -> None:
        super().__init__("compaction", database_url, interval_s, keep_connection=False)

    def round(self, conn: psycopg.Connection) -> None:
        compact_due(conn)

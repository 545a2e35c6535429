"""Packing closed rollup partitions' indexes (ingest/worker/compaction.py) on a real PostgreSQL."""

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from fleetpulse import locks, partitions
from fleetpulse.ingest.worker import compaction
from fleetpulse.ingest.worker.rollups import RollupJob

DAY = datetime(2030, 7, 1, tzinfo=UTC).date()


@pytest.fixture
def conn(database_url: str):  # type: ignore[no-untyped-def]
    with psycopg.connect(database_url, autocommit=True) as c:
        partitions.ensure_days(c, [DAY])
        # 300 series x 400 minutes, bucket by bucket as the rollup job writes them.
        c.execute(
            "INSERT INTO rollup_1m (series_id, bucket, count, sum, min, max, last, last_ts)"
            " SELECT s, %s + m * interval '1 minute', 6, 1, 1, 1, 1, %s + m * interval '1 minute'"
            " FROM generate_series(0, 399) m, generate_series(1, 300) s ORDER BY m, s",
            (partitions.day_start(DAY), partitions.day_start(DAY)),
        )
        yield c


def index_of(table: str) -> str:
    return f"{partitions.partition_name(DAY, table)}_pkey"


def test_a_day_is_packed_while_open_and_finally_once_closed(conn: psycopg.Connection) -> None:
    index = index_of("rollup_1m")
    day0 = partitions.day_start(DAY)

    def at(hours: float) -> datetime:
        return day0 + timedelta(hours=hours)

    assert index not in dict(compaction.due(conn, at(3)))  # too young to be worth it
    assert dict(compaction.due(conn, at(7)))[index] is False  # open: packed, not finally
    assert index in compaction.compact_due(conn, at(7))
    before, after, final = conn.execute(
        "SELECT bytes_before, bytes_after, final FROM index_compactions WHERE index_name = %s",
        (index,),
    ).fetchone()  # type: ignore[misc]
    assert (final, after < 0.75 * before) == (False, True), (before, after)
    assert index not in dict(compaction.due(conn, at(12)))  # packed less than 6 h ago
    assert dict(compaction.due(conn, at(13.5)))[index] is False
    # The day ended less than SETTLE_S ago: it waits for its final packing.
    assert index not in dict(compaction.due(conn, at(24 + compaction.SETTLE_S / 7200)))

    later = at(24 + compaction.SETTLE_S / 3600 + 0.1)
    assert dict(compaction.due(conn, later))[index] is True
    packed = compaction.compact_due(conn, later)
    assert {index, index_of("rollup_1h")} <= set(packed)
    final_row = conn.execute(
        "SELECT final FROM index_compactions WHERE index_name = %s", (index,)
    ).fetchone()
    assert final_row == (True,)
    assert index not in compaction.compact_due(conn, later + timedelta(days=3))  # final: once

    # The rebuilt index is the valid primary key, used, and still refuses a second row.
    valid = conn.execute(
        "SELECT indisvalid AND indisprimary FROM pg_index WHERE indexrelid = %s::regclass",
        (index,),
    ).fetchone()
    assert valid == (True,)
    bucket = partitions.day_start(DAY) + timedelta(minutes=5)
    row = conn.execute(
        "SELECT count, last_ts FROM rollup_1m WHERE series_id = 7 AND bucket = %s", (bucket,)
    ).fetchone()
    assert row == (6, bucket)
    with pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute("INSERT INTO rollup_1m VALUES (7, %s, 1, 1, 1, 1, 1, %s)", (bucket, bucket))


def test_a_rebuild_cut_short_is_cleaned_up_and_redone(conn: psycopg.Connection) -> None:
    index = index_of("rollup_1m")
    table = partitions.partition_name(DAY, "rollup_1m")
    # What a crash in the middle of REINDEX CONCURRENTLY leaves: an invalid copy of the index.
    with pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute(f"CREATE UNIQUE INDEX CONCURRENTLY {index}_ccnew ON {table} (bucket)")
    assert conn.execute(
        "SELECT count(*) FROM pg_index WHERE indrelid = %s::regclass AND NOT indisvalid", (table,)
    ).fetchone() == (1,)
    later = partitions.day_start(DAY) + timedelta(days=2)
    assert index in compaction.compact_due(conn, later)
    assert conn.execute(
        "SELECT count(*) FROM pg_index WHERE indrelid = %s::regclass AND NOT indisvalid", (table,)
    ).fetchone() == (0,)


def test_one_process_packs_at_a_time(conn: psycopg.Connection, database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (locks.COMPACTION,))
        assert compaction.compact_due(conn, partitions.day_start(DAY) + timedelta(days=2)) == []
        other.execute("SELECT pg_advisory_unlock(%s)", (locks.COMPACTION,))
    assert compaction.due(conn, partitions.day_start(DAY) + timedelta(days=2))


def test_a_packing_does_not_stop_the_rollups(conn: psycopg.Connection, database_url: str) -> None:
    """While one process packs (holding its lock for a REINDEX of about 100 s), the rollup job
    still runs its rounds: the two jobs have their own keys (issue 17: they once shared one)."""
    minute = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=2)  # closed
    conn.execute("INSERT INTO rollup_dirty (tier, bucket) VALUES (1, %s)", (minute,))
    with psycopg.connect(database_url, autocommit=True) as packer:
        packer.execute("SELECT pg_advisory_lock(%s)", (locks.COMPACTION,))
        # the rollup job's own lock held elsewhere: the round is skipped (what a shared key did)
        packer.execute("SELECT pg_advisory_lock(%s)", (locks.ROLLUP,))
        assert RollupJob(conn).run_round() is None
        packer.execute("SELECT pg_advisory_unlock(%s)", (locks.ROLLUP,))
        result = RollupJob(conn).run_round()
        assert result is not None and result.minutes == 1
        packer.execute("SELECT pg_advisory_unlock(%s)", (locks.COMPACTION,))
    pending = conn.execute("SELECT count(*) FROM rollup_dirty WHERE tier = 1").fetchone()
    assert pending == (0,)

from datetime import UTC, date, datetime, timedelta

import numpy as np
import psycopg
from psycopg import sql

from fleetpulse import partitions
from fleetpulse.ingest.worker.copier import ChunkWriter
from fleetpulse.ingest.worker.decode import BatchRef, Decoded
from fleetpulse.migrate import migrate


def test_migrate_is_idempotent_and_creates_partitions_around_now(database_url: str) -> None:
    assert migrate(database_url) == []  # the fixture already applied everything
    with psycopg.connect(database_url, autocommit=True) as conn:
        days = partitions.existing_days(conn)
        today = datetime.now(UTC).date()
        assert {
            today - timedelta(days=1),
            today,
            today + timedelta(days=1),
            today + timedelta(days=2),
        } <= days
        tables = {
            r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname='public'")
        }
        assert {
            "agents",
            "series",
            "series_sets",
            "set_members",
            "samples",
            "points",
            "batches",
            "agent_ingest",
            "rejects",
        } <= tables
        # no default partition: a row outside every partition is refused, not parked
        far = datetime(2001, 1, 1, tzinfo=UTC)
        try:
            conn.execute("INSERT INTO samples VALUES (1, %s, '{1.0}')", (far,))
        except psycopg.errors.CheckViolation:
            pass
        else:
            raise AssertionError("a point with no partition was stored")


def test_ensure_days_creates_a_missing_day_once(database_url: str) -> None:
    day = datetime(2030, 5, 17, tzinfo=UTC).date()
    with psycopg.connect(database_url, autocommit=True) as conn:
        assert partitions.ensure_days(conn, [day, day]) == [day]
        assert partitions.ensure_days(conn, [day]) == []
        conn.execute(
            "INSERT INTO samples VALUES (1, %s, '{2.5}')",
            (partitions.day_start(day) + timedelta(hours=23),),
        )
        assert conn.execute("SELECT count(*) FROM samples_20300517").fetchone() == (1,)


def test_retention_drops_whole_expired_partitions_only(database_url: str) -> None:
    today = datetime.now(UTC).date()
    old, kept = today - timedelta(days=10), today - timedelta(days=3)
    with psycopg.connect(database_url, autocommit=True) as conn:
        partitions.ensure_days(conn, [old, kept])
        conn.execute(
            "INSERT INTO samples VALUES (1, %s, '{1.0}'), (1, %s, '{2.0}')",
            (partitions.day_start(old), partitions.day_start(kept)),
        )
        # a day of the layout before samples (schema 0009) goes with the same retention
        for day in (old, kept):
            conn.execute(
                sql.SQL("CREATE TABLE {} PARTITION OF points FOR VALUES FROM ({}) TO ({})").format(
                    sql.Identifier(partitions.partition_name(day, "points")),
                    sql.Literal(partitions.day_start(day)),
                    sql.Literal(partitions.day_start(day + timedelta(days=1))),
                )
            )
        _, dropped = partitions.maintain(conn, {"samples": 7, "rollup_1m": 30})
        assert dropped == [old]
        days = partitions.existing_days(conn)
        assert old not in days and kept in days and today + timedelta(days=2) in days
        assert conn.execute("SELECT vals FROM samples").fetchall() == [([2.0],)]
        assert partitions.existing_days(conn, "points") == {kept}
        # Each tier has its own retention: the 1-minute rollups of the old day outlive its points.
        assert old in partitions.existing_days(conn, "rollup_1m")
        assert old in partitions.existing_days(conn, "rollup_1h")


def test_points_roll_over_midnight_into_the_right_partitions(database_url: str) -> None:
    """The last microsecond of a day and the first of the next land in their own partitions."""

    day = datetime.now(UTC).date() + timedelta(days=3)  # not created by migrate: made on demand
    midnight_us = int(partitions.day_start(day).timestamp() * 1_000_000)
    with (
        psycopg.connect(database_url) as conn,
        psycopg.connect(database_url, autocommit=True) as ddl,
    ):
        conn.execute("INSERT INTO series (agent_id, name) VALUES ('night', 'm')")
        conn.commit()
        series_id = conn.execute(
            "SELECT series_id FROM series WHERE agent_id = 'night'"
        ).fetchone()[0]
        writer = ChunkWriter(conn, ddl, retention_days=7, max_future_s=5 * 86400)
        decoded = Decoded(
            batches=[BatchRef("s", "1-0", "night", 1, 1)],
            batch_index=np.zeros(3, dtype=np.int32),
            series_ids=np.full(3, series_id, dtype=np.int32),
            ts_unix_us=np.array([midnight_us - 1, midnight_us, midnight_us + 1], dtype=np.int64),
            values=np.array([1.0, 2.0, 3.0]),
        )
        assert writer.write(decoded).points_committed == 3
        before = conn.execute(sql_count(day - timedelta(days=1))).fetchone()[0]
        after = conn.execute(sql_count(day)).fetchone()[0]
    assert (before, after) == (1, 2)


def sql_count(day: date) -> sql.Composed:
    return sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(partitions.partition_name(day)))


def test_ledger_rows_past_retention_are_trimmed(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO batches (agent_id, epoch, seq, points, stream_id, committed_at) VALUES"
            " ('old', 1, 1, 1, 's', now() - interval '8 days 2 hours'),"
            " ('kept', 1, 1, 1, 's', now() - interval '7 days 30 minutes')"
        )
        assert partitions.trim_ledger(conn, retention_days=7, max_future_s=3600) == 1
        assert conn.execute("SELECT agent_id FROM batches").fetchall() == [("kept",)]


def test_rollup_charts_are_index_only_scans_once_vacuumed(database_url: str) -> None:
    """A chart's rollup rows come from the primary key's index alone (schema 0007): no heap
    page per bucket. New rollup partitions carry the insert-vacuum settings that keep it so."""
    day = datetime(2030, 6, 1, tzinfo=UTC).date()
    start = partitions.day_start(day)
    with psycopg.connect(database_url, autocommit=True) as conn:
        partitions.ensure_days(conn, [day])
        for table in ("rollup_1m", "rollup_1h"):
            options = conn.execute(
                "SELECT reloptions FROM pg_class WHERE relname = %s",
                (partitions.partition_name(day, table),),
            ).fetchone()
            assert options is not None
            assert "autovacuum_vacuum_insert_threshold=200000" in options[0]
        # 50 series x 600 minutes, written minute by minute as the rollup job writes them.
        conn.execute(
            "INSERT INTO rollup_1m (series_id, bucket, count, sum, min, max, last, last_ts)"
            " SELECT s, %s + m * interval '1 minute', 6, 6.0 * s, s, s, s,"
            "  %s + m * interval '1 minute' + interval '50 seconds'"
            " FROM generate_series(0, 599) m, generate_series(1, 50) s ORDER BY m, s",
            (start, start),
        )
        conn.execute(
            sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier(f"rollup_1m_{day:%Y%m%d}"))
        )
        conn.execute("SET enable_seqscan = off")  # the plan a large table gets, on a small one
        plan = "\n".join(
            row[0]
            for row in conn.execute(
                "EXPLAIN (ANALYZE, COSTS OFF) SELECT bucket, count, sum, min, max, last, last_ts"
                " FROM rollup_1m WHERE series_id = ANY(%s) AND bucket >= %s AND bucket < %s",
                ([7, 8], start, start + timedelta(hours=10)),
            )
        )
        assert "Index Only Scan" in plan, plan
        assert "Heap Fetches: 0" in plan, plan
        # The key is still unique: the rollup job's (series_id, bucket) cannot be stored twice.
        try:
            conn.execute("INSERT INTO rollup_1m VALUES (7, %s, 1, 1, 1, 1, 1, %s)", (start, start))
        except psycopg.errors.UniqueViolation:
            pass
        else:
            raise AssertionError("a second row for one series and minute was stored")

from datetime import UTC, datetime, timedelta

import psycopg

from fleetpulse import partitions
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
        assert {"agents", "series", "points", "batches", "agent_ingest", "rejects"} <= tables
        # no default partition: a row outside every partition is refused, not parked
        far = datetime(2001, 1, 1, tzinfo=UTC)
        try:
            conn.execute("INSERT INTO points VALUES (1, %s, 1.0)", (far,))
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
            "INSERT INTO points VALUES (1, %s, 2.5)",
            (partitions.day_start(day) + timedelta(hours=23),),
        )
        assert conn.execute("SELECT count(*) FROM points_20300517").fetchone() == (1,)

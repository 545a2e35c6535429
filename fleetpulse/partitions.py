"""Daily range partitions of ``points``: created ahead of need, DDL that never stalls COPY.

Creating a partition locks the parent table, and that lock queues behind a running COPY (and every
later COPY queues behind the waiting DDL). So DDL runs with a short ``lock_timeout`` and is retried,
on its own autocommit connection, never inside a COPY transaction.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)

LOCK_TIMEOUT_MS = 2000
DDL_ATTEMPTS = 5


def partition_name(day: date) -> str:
    return f"points_{day:%Y%m%d}"


def day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def existing_days(conn: psycopg.Connection) -> set[date]:
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i"
        " JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'points'::regclass"
    ).fetchall()
    days = set()
    for (name,) in rows:
        try:
            days.add(datetime.strptime(name, "points_%Y%m%d").date())
        except ValueError:
            continue  # a partition someone attached by hand; not ours to interpret
    return days


def ensure_days(conn: psycopg.Connection, days: Iterable[date]) -> list[date]:
    """Create the missing partitions for ``days`` (autocommit connection); return those created."""
    wanted = sorted(set(days) - existing_days(conn))
    created = []
    for day in wanted:
        stmt = sql.SQL(
            "CREATE TABLE IF NOT EXISTS {name} PARTITION OF points FOR VALUES FROM ({lo}) TO ({hi})"
        ).format(
            name=sql.Identifier(partition_name(day)),
            lo=sql.Literal(day_start(day)),
            hi=sql.Literal(day_start(day + timedelta(days=1))),
        )
        for attempt in range(1, DDL_ATTEMPTS + 1):
            try:
                conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(LOCK_TIMEOUT_MS)))
                conn.execute(stmt)
                created.append(day)
                log.info("created partition %s", partition_name(day))
                break
            except psycopg.errors.LockNotAvailable:
                if attempt == DDL_ATTEMPTS:
                    raise
                time.sleep(0.1 * attempt)
            except (psycopg.errors.DuplicateTable, psycopg.errors.UniqueViolation):
                break  # another process created it first
            finally:
                conn.execute("RESET lock_timeout")
    return created


def ensure_around_now(conn: psycopg.Connection) -> list[date]:
    """Partitions from yesterday to two days ahead; other days are created on demand."""
    today = datetime.now(UTC).date()
    return ensure_days(conn, (today + timedelta(days=offset) for offset in range(-1, 3)))


def drop_older_than(conn: psycopg.Connection, retention_days: int) -> list[date]:
    """Drop whole daily partitions that lie entirely before the retention window; return them.

    Retention is a DROP of whole partitions (no DELETE, no vacuum debt). Like creation, it runs
    with a short lock_timeout and retries, so it never stalls a COPY for long.
    """
    cutoff = datetime.now(UTC).date() - timedelta(days=retention_days)
    dropped = []
    for day in sorted(d for d in existing_days(conn) if d < cutoff):
        stmt = sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(partition_name(day)))
        for attempt in range(1, DDL_ATTEMPTS + 1):
            try:
                conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(LOCK_TIMEOUT_MS)))
                conn.execute(stmt)
                dropped.append(day)
                log.info(
                    "dropped partition %s (retention %d days)", partition_name(day), retention_days
                )
                break
            except psycopg.errors.LockNotAvailable:
                if attempt == DDL_ATTEMPTS:
                    log.warning(
                        "could not drop %s now (busy); next maintenance retries",
                        partition_name(day),
                    )
                    break
                time.sleep(0.1 * attempt)
            finally:
                conn.execute("RESET lock_timeout")
    return dropped


def maintain(conn: psycopg.Connection, retention_days: int) -> tuple[list[date], list[date]]:
    """Create the partitions needed soon and drop the expired ones (run periodically by workers)."""
    return ensure_around_now(conn), drop_older_than(conn, retention_days)

"""Daily range partitions of ``samples`` and the rollup tiers: created ahead, DDL that never stalls COPY.

Creating a partition locks the parent table, and that lock queues behind a running COPY (and every
later COPY queues behind the waiting DDL). So DDL runs with a short ``lock_timeout`` and is retried,
on its own autocommit connection, never inside a COPY transaction.

``samples``, its compressed hours (``sample_chunks``), the rollup tiers and the minute tier's
compressed hours (``minute_chunks``) are all partitioned by day, and a day is always created for all
of them together (a rollup bucket lies in the day of the points it summarises); each tier has its
own retention, so the coarse tiers outlive the raw points. ``points``, the raw layout before
``samples`` (schema 0009), gets no new partitions; retention drops the ones it has. The per-series
rollup tables ``rollup_1m``/``rollup_1h`` still get theirs: the rollup job writes there what it
computes from such points.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, timedelta

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)

LOCK_TIMEOUT_MS = 2000
DDL_ATTEMPTS = 5
TABLES = (
    "samples",
    "sample_chunks",
    "set_rollup_1m",
    "minute_chunks",
    "set_rollup_1h",
    "rollup_1m",
    "rollup_1h",
)
# Rollup partitions are vacuumed after every 200,000 inserted rows, so that the visibility map
# lets charts read them with index-only scans (schema/0007_rollup_covering.sql says why).
_ROLLUP_STORAGE = sql.SQL(
    " WITH (autovacuum_vacuum_insert_threshold = 200000, autovacuum_vacuum_insert_scale_factor = 0)"
)
# A samples row stays whole in its heap page up to a page's size (schema/0009_samples.sql).
_SAMPLES_STORAGE = sql.SQL(" WITH (toast_tuple_target = 8160)")
_STORAGE = {
    "samples": _SAMPLES_STORAGE,
    "set_rollup_1m": _SAMPLES_STORAGE,
    "set_rollup_1h": _SAMPLES_STORAGE,
    "rollup_1m": _ROLLUP_STORAGE,
    "rollup_1h": _ROLLUP_STORAGE,
}


def partition_name(day: date, table: str = "samples") -> str:
    return f"{table}_{day:%Y%m%d}"


def day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def existing_days(conn: psycopg.Connection, table: str = "samples") -> set[date]:
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i"
        " JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = %s::regclass",
        (table,),
    ).fetchall()
    days = set()
    for (name,) in rows:
        try:
            days.add(datetime.strptime(name, f"{table}_%Y%m%d").date())
        except ValueError:
            continue  # a partition someone attached by hand; not ours to interpret
    return days


def _run_ddl(conn: psycopg.Connection, stmt: sql.Composed, what: str, give_up: bool) -> bool:
    """Run one DDL statement with lock_timeout, retried; True when it ran."""
    for attempt in range(1, DDL_ATTEMPTS + 1):
        try:
            conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(LOCK_TIMEOUT_MS)))
            conn.execute(stmt)
            return True
        except psycopg.errors.LockNotAvailable:
            if attempt == DDL_ATTEMPTS:
                if give_up:
                    log.warning("could not %s now (busy); next maintenance retries", what)
                    return False
                raise
            time.sleep(0.1 * attempt)
        except (psycopg.errors.DuplicateTable, psycopg.errors.UniqueViolation):
            return False  # another process created it first
        finally:
            conn.execute("RESET lock_timeout")
    return False


def ensure_days(conn: psycopg.Connection, days: Iterable[date]) -> list[date]:
    """Create the missing partitions of every table for ``days``; return the days created."""
    wanted = set(days)
    created: set[date] = set()
    for table in TABLES:
        for day in sorted(wanted - existing_days(conn, table)):
            stmt = sql.SQL(
                "CREATE TABLE IF NOT EXISTS {name} PARTITION OF {table}"
                " FOR VALUES FROM ({lo}) TO ({hi}){storage}"
            ).format(
                name=sql.Identifier(partition_name(day, table)),
                table=sql.Identifier(table),
                lo=sql.Literal(day_start(day)),
                hi=sql.Literal(day_start(day + timedelta(days=1))),
                storage=_STORAGE.get(table, sql.SQL("")),
            )
            if _run_ddl(conn, stmt, f"create {partition_name(day, table)}", give_up=False):
                created.add(day)
                log.info("created partition %s", partition_name(day, table))
    return sorted(created)


def ensure_around_now(conn: psycopg.Connection) -> list[date]:
    """Partitions from yesterday to two days ahead; other days are created on demand."""
    today = datetime.now(UTC).date()
    return ensure_days(conn, (today + timedelta(days=offset) for offset in range(-1, 3)))


def drop_older_than(
    conn: psycopg.Connection, retention_days: int, table: str = "samples"
) -> list[date]:
    """Drop whole daily partitions of ``table`` entirely before the retention window.

    Retention is a DROP of whole partitions (no DELETE, no vacuum debt). Like creation, it runs
    with a short lock_timeout and retries, so it never stalls a COPY for long.
    """
    cutoff = datetime.now(UTC).date() - timedelta(days=retention_days)
    dropped = []
    for day in sorted(d for d in existing_days(conn, table) if d < cutoff):
        name = partition_name(day, table)
        stmt = sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name))
        if _run_ddl(conn, stmt, f"drop {name}", give_up=True):
            dropped.append(day)
            log.info("dropped partition %s (retention %d days)", name, retention_days)
    return dropped


def trim_ledger(conn: psycopg.Connection, retention_days: int, max_future_s: float) -> int:
    """Delete ledger rows no replay could still need; return how many.

    A batch's points are at most ``max_future_s`` ahead of its commit, so once its ledger row is
    older than retention plus that window, a replay of it carries only points older than retention,
    which the worker rejects: it can be counted as rejected again, never stored twice.
    """
    cur = conn.execute(
        "DELETE FROM batches WHERE committed_at < now() - %s * interval '1 day'"
        " - %s * interval '1 second'",
        (retention_days, max_future_s),
    )
    if cur.rowcount:
        log.info("trimmed %d ledger rows", cur.rowcount)
    return cur.rowcount


def maintain(
    conn: psycopg.Connection, retention_days: Mapping[str, int], max_future_s: float = 3600.0
) -> tuple[list[date], list[date]]:
    """Create the partitions needed soon, drop expired ones, trim the ledger; return (created,
    dropped days of raw samples)."""
    created = ensure_around_now(conn)
    raw_days = retention_days.get("samples", 7)
    trim_ledger(conn, raw_days, max_future_s)
    dropped: list[date] = []
    for table, days in retention_days.items():
        gone = drop_older_than(conn, days, table)
        if table == "samples":
            dropped = gone
    # The layout before samples: raw points, kept as long as raw samples are.
    drop_older_than(conn, raw_days, "points")
    return created, dropped

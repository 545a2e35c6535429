"""Upgrading a database of the release before storage v2 (schema version 8: raw points one row
each in ``points``, daily partitions ``points_YYYYMMDD``) to the current schema.

Nothing is converted (docs/architecture.md, "Storage v2"): after ``migrate`` the old points stay
in ``points`` and every reader (native queries, PromQL, the agents API, the rollup job, the
``all_points`` view) reads both layouts, until raw retention drops the old partitions. The old
database is built here as that release built it: the files 0001..0008 applied as migrate.py applies
them, partitions created by name, points and the rollup rows its job computed written in SQL. What
the API answers afterwards is checked against values computed from the inserted points, and PromQL
against the same points written in the new layout.
"""

from __future__ import annotations

import json
import math
import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from importlib import resources
from typing import Any

import numpy as np
import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg import sql
from psycopg.conninfo import make_conninfo

from fleetpulse import partitions
from fleetpulse.api.app import create_app
from fleetpulse.ingest.worker import rollups
from fleetpulse.ingest.worker.copier import write_points
from fleetpulse.migrate import migrate
from fleetpulse.settings import Settings
from tests.conftest import Backend
from tests.integration.test_api import READ_AUTH, READ_KEY
from tests.integration.test_promql import reference_rate

pytestmark = pytest.mark.integration

LAST_OLD_VERSION = 8  # the schema of the release before samples (0009)
INTERVAL_S = 10
AGENTS = ("u1", "u2")
# (agent, metric, labels), inserted in this order (so series ids are 1..6 in every database)
SERIES: tuple[tuple[str, str, dict[str, str]], ...] = tuple(
    (agent, name, labels)
    for agent in AGENTS
    for name, labels in (
        ("cpu_usage_percent", {"mode": "user"}),
        ("cpu_usage_percent", {"mode": "idle"}),
        ("net_bytes_total", {"interface": "eth0"}),
    )
)
# Every native query groups by these, so each group is exactly one series.
BY = "agent_id,mode,interface"
AGGS = ("avg", "min", "max", "sum", "count", "last")
REDUCE: dict[str, Callable[[list[float]], float]] = {
    "avg": lambda v: sum(v) / len(v),
    "sum": lambda v: sum(v) / len(v),  # one series per group: its window average
    "min": min,
    "max": max,
    "count": len,
    "last": lambda v: v[-1],
}

Key = tuple[str, str, str]  # (agent_id, mode, interface): one series
Points = dict[int, tuple[np.ndarray, np.ndarray]]  # series id -> (ts in Unix s, values), ascending


def key_of(agent_id: str, labels: dict[str, str]) -> Key:
    return (agent_id, labels.get("mode", ""), labels.get("interface", ""))


@dataclass
class Old:
    """A database as the release before left it, and what was written into it."""

    url: str
    t0: int  # the first minute of the points of the last ~3 hours
    m: int  # the minute in which they end (at m + 15 s); points written after upgrading start at m + 25 s
    ids: dict[Key, int]
    names: dict[int, str]
    points: Points  # the last ~3 hours, per series
    old_day: date  # a day 3 days ago with its own partitions and a few points
    old_day_points: int

    @property
    def total(self) -> int:
        return sum(len(ts) for ts, _ in self.points.values()) + self.old_day_points


# -- building the database of the release before ------------------------------------------------


def schema_files() -> list[tuple[int, str, str]]:
    """(version, file name, SQL) of fleetpulse/schema, in order, as migrate.py finds them."""
    found = []
    for entry in (resources.files("fleetpulse") / "schema").iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.name, entry.read_text()))
    return sorted(found)


@contextmanager
def scratch_database(admin_url: str) -> Iterator[str]:
    """An empty database on the backend's server, dropped afterwards."""
    name = f"fleetpulse_upgrade_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_conninfo(admin_url, dbname=name)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def migrate_to_version_8(conn: psycopg.Connection) -> None:
    """Apply 0001..0008 and record them exactly as migrate.py does."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version integer PRIMARY KEY, name text NOT NULL,"
        " applied_at timestamptz NOT NULL DEFAULT now())"
    )
    for version, name, text in schema_files():
        if version > LAST_OLD_VERSION:
            break
        with conn.transaction():
            conn.execute(text.encode())
            conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (version, name)
            )


def create_old_partitions(conn: psycopg.Connection, day: date) -> None:
    """One day of points, rollup_1m and rollup_1h, named and set up as the old release did."""
    rollup_storage = sql.SQL(
        " WITH (autovacuum_vacuum_insert_threshold = 200000,"
        " autovacuum_vacuum_insert_scale_factor = 0)"
    )
    for table in ("points", "rollup_1m", "rollup_1h"):
        conn.execute(
            sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({}){}").format(
                sql.Identifier(f"{table}_{day:%Y%m%d}"),
                sql.Identifier(table),
                sql.Literal(partitions.day_start(day)),
                sql.Literal(partitions.day_start(day + timedelta(days=1))),
                rollup_storage if table != "points" else sql.SQL(""),
            )
        )


def insert_old_points(
    conn: psycopg.Connection, series_id: int, ts: np.ndarray, values: np.ndarray
) -> None:
    conn.execute(
        "INSERT INTO points (series_id, ts, value)"
        " SELECT %s, to_timestamp(t), v FROM unnest(%s::float8[], %s::float8[]) AS u(t, v)",
        (series_id, ts.tolist(), values.tolist()),
    )


# The old rollup job's SQL (before 0009), for every closed minute, then every closed hour.
_OLD_MINUTES = """
INSERT INTO rollup_1m (series_id, bucket, count, sum, min, max, last, last_ts)
SELECT series_id, date_trunc('minute', ts), count(*), sum(value), min(value), max(value),
       (array_agg(value ORDER BY ts DESC, value DESC))[1], max(ts)
FROM points
WHERE ts < date_trunc('minute', now())
GROUP BY 1, 2
"""
_OLD_HOURS = """
INSERT INTO rollup_1h (series_id, bucket, count, sum, min, max, last, last_ts)
SELECT series_id, hour, sum(count)::int4, sum(sum), min(min), max(max),
       (array_agg(last ORDER BY last_ts DESC, last DESC))[1], max(last_ts)
FROM (SELECT date_trunc('hour', bucket) AS hour, * FROM rollup_1m) minutes
WHERE hour + interval '1 hour' <= now()
GROUP BY 1, 2
"""


def add_agents_and_series(conn: psycopg.Connection) -> dict[Key, int]:
    for agent in AGENTS:
        conn.execute(
            "INSERT INTO agents (agent_id, hostname, ip, os, arch, version, status, last_heartbeat)"
            " VALUES (%s, %s, '10.0.0.1', 'linux', 'amd64', '1.2.3', 'online', now())",
            (agent, f"host-{agent}"),
        )
    ids = {}
    for agent, name, labels in SERIES:
        row = conn.execute(
            "INSERT INTO series (agent_id, name, labels) VALUES (%s, %s, %s::jsonb)"
            " RETURNING series_id",
            (agent, name, json.dumps(labels)),
        ).fetchone()
        assert row is not None
        ids[key_of(agent, labels)] = row[0]
    return ids


def old_points(now: float) -> tuple[int, int, Points, dict[Key, int]]:
    """About three hours every 10 s at :05, :15, ..., ending at m + 15 s, ~10 minutes ago: CPU
    gauges and a byte counter that resets halfway (the host rebooted)."""
    m = math.floor(now / 60) * 60 - 600
    t0 = m - 3 * 3600
    ts = np.arange(t0 + 5, m + 16, INTERVAL_S, dtype=np.float64)
    rng = np.random.default_rng(8)
    points: Points = {}
    ids: dict[Key, int] = {}
    for sid, (agent, name, labels) in enumerate(SERIES, start=1):
        ids[key_of(agent, labels)] = sid
        if name == "net_bytes_total":
            values = np.cumsum(rng.integers(1000, 5000, len(ts))).astype(np.float64)
            values[len(ts) // 2 :] -= values[len(ts) // 2 - 1] - 500
        else:
            values = np.round(rng.uniform(0, 100, len(ts)), 3)
        points[sid] = (ts, values)
    return t0, m, points, ids


@pytest.fixture
def old(backend: Backend) -> Iterator[Old]:
    """A version-8 database with the points and rollups of two agents, not yet upgraded."""
    now = time.time()
    today = datetime.fromtimestamp(now, UTC).date()
    old_day = today - timedelta(days=3)
    t0, m, points, expected_ids = old_points(now)
    with scratch_database(backend.admin_database_url) as url:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SET TimeZone = 'UTC'")  # date_trunc by UTC hours, as the old job did
            migrate_to_version_8(conn)
            for day in (old_day, today - timedelta(days=1), today):
                create_old_partitions(conn, day)
            ids = add_agents_and_series(conn)
            assert ids == expected_ids
            for sid, (ts, values) in points.items():
                insert_old_points(conn, sid, ts, values)
            # a few points of a day that raw retention will drop
            noon = partitions.day_start(old_day).timestamp() + 12 * 3600
            old_ts = noon + INTERVAL_S * np.arange(60, dtype=np.float64)
            insert_old_points(conn, ids["u1", "user", ""], old_ts, np.linspace(1.0, 60.0, 60))
            conn.execute(_OLD_MINUTES)
            conn.execute(_OLD_HOURS)
        names = {ids[key_of(a, labels)]: name for a, name, labels in SERIES}
        yield Old(url, t0, m, ids, names, points, old_day, len(old_ts))


@pytest.fixture
def upgraded(old: Old) -> Old:
    applied = migrate(old.url)
    assert applied == [name for version, name, _ in schema_files() if version > LAST_OLD_VERSION]
    return old


@contextmanager
def api(url: str) -> Iterator[TestClient]:
    settings = Settings(database_url=url, api_keys=READ_KEY)  # type: ignore[arg-type]
    with TestClient(create_app(settings), headers=READ_AUTH) as client:
        yield client


# -- expected answers ----------------------------------------------------------------------------


def windows(
    ts: np.ndarray, values: np.ndarray, step: float, start: float, end: float, agg: str
) -> dict[float, float]:
    """What /query/range answers for one series: ``agg`` of the points in each ``[t, t + step)``,
    for windows with points in ``[start, end)``."""
    grouped: dict[float, list[float]] = {}
    for t, v in zip(ts.tolist(), values.tolist(), strict=True):
        if start <= t < end:
            grouped.setdefault(math.floor(t / step) * step, []).append(v)
    return {t: float(REDUCE[agg](v)) for t, v in grouped.items()}


def range_query(
    client: TestClient, metric: str, agg: str, step: str, start: float, end: float
) -> tuple[str, dict[Key, dict[float, float]]]:
    response = client.get(
        "/query/range",
        params={
            "metric": metric,
            "by": BY,
            "agg": agg,
            "step": step,
            "start": str(start),
            "end": str(end),
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    got: dict[Key, dict[float, float]] = {}
    for series in body["series"]:
        labels = series["labels"]
        points = {float(t): v for t, v in series["points"]}
        assert len(points) == len(series["points"]), "a window was answered twice"
        got[labels["agent_id"], labels["mode"], labels["interface"]] = points
    return body["tier"], got


def check_range(
    client: TestClient,
    old: Old,
    points: Points,
    step: str,
    step_s: float,
    start: float,
    end: float,
    tier: str,
) -> None:
    """Every metric, every aggregation: the API's windows are those of ``points``."""
    for metric in ("cpu_usage_percent", "net_bytes_total"):
        for agg in AGGS:
            got_tier, got = range_query(client, metric, agg, step, start, end)
            assert got_tier == tier
            want = {
                key: windows(*points[sid], step_s, start, end, agg)
                for key, sid in old.ids.items()
                if old.names[sid] == metric
            }
            assert got.keys() == want.keys(), (metric, agg)
            for key, expected in want.items():
                assert expected, "nothing to compare"
                assert got[key].keys() == expected.keys(), (metric, agg, key)
                for t, value in expected.items():
                    assert got[key][t] == pytest.approx(value, rel=1e-9), (metric, agg, key, t)


def promql_range(
    client: TestClient, query: str, start: float, end: float, step: float
) -> list[dict[str, Any]]:
    response = client.post(
        "/api/v1/query_range",
        data={"query": query, "start": str(start), "end": str(end), "step": str(step)},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "success" and body["data"]["resultType"] == "matrix", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return sorted(result, key=lambda s: json.dumps(s["metric"], sort_keys=True))


def promql_key(metric: dict[str, str]) -> Key:
    return key_of(metric["agent_id"], metric)


# -- the upgrade ---------------------------------------------------------------------------------


def test_upgrade_applies_every_later_version_and_converts_nothing(old: Old) -> None:
    today = datetime.now(UTC).date()
    yesterday = today - timedelta(days=1)
    with psycopg.connect(old.url, autocommit=True) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY 1")]
        assert versions == list(range(1, LAST_OLD_VERSION + 1))
        rollup_1m = conn.execute("SELECT * FROM rollup_1m ORDER BY 1, 2").fetchall()
        rollup_1h = conn.execute("SELECT * FROM rollup_1h ORDER BY 1, 2").fetchall()
        assert rollup_1m and rollup_1h

        later = [(v, name) for v, name, _ in schema_files() if v > LAST_OLD_VERSION]
        assert later and later[0][0] == 9
        assert migrate(old.url) == [name for _, name in later]

        assert [
            tuple(r) for r in conn.execute("SELECT version, name FROM schema_migrations ORDER BY 1")
        ] == [(v, name) for v, name, _ in schema_files()]
        # the old points stay where they were, one row each; nothing was copied into samples
        assert partitions.existing_days(conn, "points") == {old.old_day, yesterday, today}
        assert conn.execute("SELECT count(*) FROM points").fetchone() == (old.total,)
        for table in ("samples", "series_sets", "set_members"):
            assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,), table
        # the rollup tiers are untouched, and their partitions were recognised by name
        assert conn.execute("SELECT * FROM rollup_1m ORDER BY 1, 2").fetchall() == rollup_1m
        assert conn.execute("SELECT * FROM rollup_1h ORDER BY 1, 2").fetchall() == rollup_1h
        around = {today + timedelta(days=d) for d in range(-1, 3)}
        assert around <= partitions.existing_days(conn, "samples")
        for table in ("rollup_1m", "rollup_1h"):
            assert partitions.existing_days(conn, table) == around | {old.old_day}, table
    assert migrate(old.url) == []


def test_raw_range_query_reads_the_old_points(upgraded: Old) -> None:
    """(a) A step that is not a multiple of a minute reads raw points: windows of 30 s."""
    old = upgraded
    with api(old.url) as client:
        check_range(client, old, old.points, "30s", 30, old.t0, old.m + 30, "raw")
        # a range that is not aligned on the step, ending mid-window
        check_range(client, old, old.points, "30s", 30, old.t0 + 1234, old.m - 17, "raw")


def test_minute_and_hour_steps_read_the_old_rollups(upgraded: Old) -> None:
    """(b) 1-minute and 1-hour steps read the rollup rows the old release wrote."""
    old = upgraded
    hour0 = math.floor(old.t0 / 3600) * 3600
    with api(old.url) as client:
        check_range(client, old, old.points, "60", 60, old.t0, old.m + 60, "1m")
        check_range(client, old, old.points, "1h", 3600, hour0, old.m + 60, "1h")
        # The closed minutes come from rollup_1m alone: without the raw points the 1-minute
        # answers are the same.
        with psycopg.connect(old.url, autocommit=True) as conn:
            conn.execute("TRUNCATE points")
        check_range(client, old, old.points, "60", 60, old.t0, old.m + 60, "1m")


PROMQL = (
    "rate(net_bytes_total[5m])",
    "increase(net_bytes_total[2m])",
    "sum by (agent_id) (rate(net_bytes_total[5m]))",
    "avg_over_time(cpu_usage_percent[2m])",
    'max_over_time(cpu_usage_percent{mode="user"}[90s])',
    "count_over_time(cpu_usage_percent[1m])",
    "last_over_time(cpu_usage_percent[1m])",
    "cpu_usage_percent",
    'avg by (mode) (cpu_usage_percent{agent_id=~"u.*"})',
)


def test_promql_answers_equal_those_of_the_same_points_in_the_new_layout(
    upgraded: Old, database_url: str
) -> None:
    """(c) The same points written by today's writer into a fresh database: PromQL answers
    identically over both layouts."""
    old = upgraded
    with psycopg.connect(database_url, autocommit=True) as conn:
        assert add_agents_and_series(conn) == old.ids
        sids = np.concatenate([np.full(len(ts), sid) for sid, (ts, _) in old.points.items()])
        ts_us = np.concatenate(
            [np.round(ts * 1e6).astype(np.int64) for ts, _ in old.points.values()]
        )
        values = np.concatenate([v for _, v in old.points.values()])
        write_points(conn, sids, ts_us, values)
        assert conn.execute("SELECT count(*) FROM points").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM all_points").fetchone() == (len(values),)
    start, end = old.t0 + 600, old.m + 15
    with api(old.url) as before, api(database_url) as after:
        for query in PROMQL:
            for step in (60, 45):
                got_old = promql_range(before, query, start, end, step)
                got_new = promql_range(after, query, start, end, step)
                assert got_old, query
                assert all(len(s["values"]) > 100 for s in got_old), query
                assert got_old == got_new, (query, step)


# -- after the upgrade ---------------------------------------------------------------------------


def new_points(old: Old) -> Points:
    """What agents send after the upgrade, from m + 25 s on for 5 minutes: each series goes on
    (the counters keep counting), so minute m holds points of both layouts."""
    ts = np.arange(old.m + 25, old.m + 300, INTERVAL_S, dtype=np.float64)
    rng = np.random.default_rng(9)
    points: Points = {}
    for sid, (_, values) in old.points.items():
        if old.names[sid] == "net_bytes_total":
            more = values[-1] + np.cumsum(rng.integers(1000, 5000, len(ts))).astype(np.float64)
        else:
            more = np.round(rng.uniform(0, 100, len(ts)), 3)
        points[sid] = (ts, more)
    return points


def test_points_written_after_the_upgrade_are_read_with_the_old_ones(upgraded: Old) -> None:
    """(d) New points of the same series, in samples, and the old ones, in points, answer one
    query together; the rollup job recomputes a minute holding both; (e) all_points has both."""
    old = upgraded
    new = new_points(old)
    both: Points = {
        sid: (np.concatenate((ts, new[sid][0])), np.concatenate((values, new[sid][1])))
        for sid, (ts, values) in old.points.items()
    }
    m = old.m
    with psycopg.connect(old.url, autocommit=True) as conn:
        sids = np.concatenate([np.full(len(ts), sid) for sid, (ts, _) in new.items()])
        ts_us = np.concatenate([np.round(ts * 1e6).astype(np.int64) for ts, _ in new.values()])
        values = np.concatenate([v for _, v in new.values()])
        assert write_points(conn, sids, ts_us, values) == 2 * len(new[1][0])  # a row per agent
        # as a worker would: mark the minutes written into, then the rollup job's rounds
        conn.execute(rollups.MARK_MINUTES, (rollups.minute_starts(ts_us),))
        rollups.RollupJob(conn).catch_up()

        # (e) every stored point, of both layouts
        total_new = len(values)
        assert conn.execute("SELECT count(*) FROM points").fetchone() == (old.total,)
        assert conn.execute("SELECT count(*) FROM all_points").fetchone() == (
            old.total + total_new,
        )
        per_series: dict[int, int] = dict(
            conn.execute(
                "SELECT series_id, count(*) FROM all_points WHERE ts >= to_timestamp(%s)"
                " GROUP BY 1",
                (old.t0,),
            ).fetchall()
        )
        assert per_series == {sid: len(ts) for sid, (ts, _) in both.items()}

        # minute m: 2 old points and 4 new ones per series, recomputed from both layouts (each
        # into its own tier: per series from points, per set from samples), combined per series
        rows = conn.execute(
            "SELECT series_id, count, sum, min, max, last, extract(epoch FROM last_ts)::float8"
            " FROM all_rollup_1m WHERE bucket = to_timestamp(%s) ORDER BY 1",
            (m,),
        ).fetchall()
        assert [r[0] for r in rows] == sorted(both)
        for sid, count, total, low, high, last, last_ts in rows:
            ts, v = both[sid]
            in_minute = v[(ts >= m) & (ts < m + 60)]
            assert count == len(in_minute) == 6, sid
            assert total == pytest.approx(in_minute.sum(), rel=1e-12), sid
            assert (low, high, last, last_ts) == (
                in_minute.min(),
                in_minute.max(),
                in_minute[-1],
                m + 55,
            ), sid

    with api(old.url) as client:
        # (d) native queries across the boundary, on every tier
        check_range(client, old, both, "30s", 30, m - 600, m + 300, "raw")
        check_range(client, old, both, "60", 60, old.t0, m + 300, "1m")
        check_range(client, old, both, "1h", 3600, math.floor(old.t0 / 3600) * 3600, m + 300, "1h")

        # PromQL across the boundary, against references computed from both sets of points
        start, end = m - 300, m + 300
        for query, reference in (
            ("rate(net_bytes_total[2m])", "rate"),
            ("count_over_time(cpu_usage_percent[1m])", "count"),
            ("avg_over_time(cpu_usage_percent[1m])", "avg"),
        ):
            result = promql_range(client, query, start, end, 30)
            assert len(result) == (2 if reference == "rate" else 4), query
            for series in result:
                ts, v = both[old.ids[promql_key(series["metric"])]]
                assert len(series["values"]) == (end - start) // 30 + 1, query
                for t, value in series["values"]:
                    if reference == "rate":
                        expected = reference_rate(ts, v, t, 120, True)
                    else:
                        window = v[(ts > t - 60) & (ts <= t)]
                        expected = len(window) if reference == "count" else window.mean()
                    assert float(value) == pytest.approx(expected, rel=1e-9), (query, t)

        # the agents API's raw points: old and new ones, in order, in one answer
        lo, hi = m - 120, m + 300
        response = client.get(
            "/agents/u1/points",
            params={
                "name": "cpu_usage_percent",
                "start": datetime.fromtimestamp(lo, UTC).isoformat(),
                "end": datetime.fromtimestamp(hi, UTC).isoformat(),
            },
        )
        assert response.status_code == 200, response.text
        answered = response.json()["series"]
        assert len(answered) == 2
        for series in answered:
            ts, v = both[old.ids[key_of("u1", series["labels"])]]
            mask = (ts >= lo) & (ts < hi)
            got_ts = [
                datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp()
                for t, _ in series["points"]
            ]
            assert got_ts == ts[mask].tolist()
            assert [value for _, value in series["points"]] == v[mask].tolist()


def test_retention_drops_an_expired_day_of_old_points_only(upgraded: Old) -> None:
    """(f) Partition maintenance drops a day of old points past raw retention, and keeps the
    days within it and the rollup days within theirs."""
    old = upgraded
    today = datetime.now(UTC).date()
    yesterday = today - timedelta(days=1)
    with psycopg.connect(old.url, autocommit=True) as conn:
        rollup_rows = conn.execute(
            "SELECT count(*) FROM rollup_1m WHERE bucket < %s",
            (partitions.day_start(old.old_day + timedelta(days=1)),),
        ).fetchone()
        assert rollup_rows is not None and rollup_rows[0] > 0
        _, dropped = partitions.maintain(conn, {"samples": 1, "rollup_1m": 35, "rollup_1h": 400})
        assert dropped == []  # no day of samples was old enough
        assert partitions.existing_days(conn, "points") == {yesterday, today}
        for table in ("rollup_1m", "rollup_1h"):
            assert old.old_day in partitions.existing_days(conn, table), table
        assert {today + timedelta(days=d) for d in range(-1, 3)} <= partitions.existing_days(
            conn, "samples"
        )
        assert conn.execute(
            "SELECT count(*) FROM rollup_1m WHERE bucket < %s",
            (partitions.day_start(old.old_day + timedelta(days=1)),),
        ).fetchone() == tuple(rollup_rows)
        assert conn.execute("SELECT count(*) FROM all_points").fetchone() == (
            old.total - old.old_day_points,
        )
    with api(old.url) as client:
        check_range(client, old, old.points, "30s", 30, old.t0, old.m + 30, "raw")

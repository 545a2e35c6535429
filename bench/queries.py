"""``fleetpulse bench queries``: the read API's latency on a realistic dataset of 100M+ points.

The dataset (seeded first when absent; reused, and topped up to now, when present):

- ``--agents`` (2,000) hosts with ``--series-per-agent`` (50) series each, one point every 10 s.
  The series and their values are bench/hostseries.py's (what the agent sends, in the order a
  smaller ``--series-per-agent`` keeps the dashboard's; gauges with a daily cycle and noise,
  monotonic counters, the kernel's precision); each host has its own phase within the 10 s
  grid, as real agents do.
- Raw points, in ``samples`` (schema 0009, fleetpulse/samples.py): the last ``--raw-hours`` (2.8 h:
  1,008 points per series, 100.8M points in 2.016M samples rows by default). Each agent has one
  series set holding all its series in series_id order (a set of at most ``MAX_SET_WIDTH``
  series: past that, one set per ``MAX_SET_WIDTH`` of them, as the workers split a collection),
  and each of its timestamps is one samples row, as a worker stores one collection. Short on
  purpose: with the default sizes a raw day would be 864M points, and none of the timed queries
  reads raw points older than 5 minutes, because the tier follows the step.
- ``rollup_1m``: every closed minute of the last 24 h (from the hour boundary 24 h before the raw
  end), 144M rows by default; ``rollup_1h``: every closed hour of the last 7 days, 16.8M rows.
  Both are computed here in numpy exactly as the rollup job does (count, sum, min, max, last,
  last_ts): the minutes from the same 10 s values (so over the raw window they equal a rollup of
  the stored raw points), the hours of the last day from those minutes. Hours older than the
  minute tier are synthesised from one value per minute (count 360, sum 6x those values' sum), which
  the 7-day chart cannot tell apart. The open minute and hour are left out of their tier, as the
  rollup job leaves them, so readers take them from the finer tier.
- Everything is written with binary COPY in time order (samples rows in 10-minute slices, every
  set of a slice; rollup rows bucket by bucket), as the workers and the rollup job write them, so
  the heap and index layout is the one production has: one set's (or series') rows are spread over
  many pages, not clustered. Then ``VACUUM (ANALYZE)``, as autovacuum leaves older partitions, and
  the closed days' rollup indexes packed, as the workers' compaction leaves them
  (ingest/compaction.py).
- ``series_sets`` and ``set_members``: the agents' sets, created once (ingest/series.py
  SetResolver) before the first samples row is written; a top-up finds the same sets again.
- ``agents`` (a mix of OS, arch, versions; 98 % online with heartbeats refreshed before measuring),
  ``series``, ``agent_ingest``, and a ``bench_dataset`` row describing the dataset.

It lives in its own database, ``fleetpulse_bench_queries``, on the server of ``--database-url``
(an admin URL; the database is created when absent) or in an embedded PostgreSQL under
``--data-dir``. A later run reuses it: when its raw end is behind the current minute, the missing
window is generated (raw points and minutes, the hours that closed recomputed from the minutes as
the rollup job does) before measuring, in rounds until it reaches the current minute (a seed
ends an hour behind the clock, and the top-N reads the last five minutes). When that would grow
the raw window past 1.5x its design (raw end older than about half ``--raw-hours``), or the sizes
differ, or with ``--reseed``, the database is dropped and seeded again.

Measured: the real API process (``python -m fleetpulse api`` with a random read key) over HTTP on
loopback, one keep-alive connection, sequential requests, ``--warmup`` rounds first, then ``--runs``
rounds of the five queries in turn (a different random agent per host chart request). Each query's
latency is from sending the request to having read the whole body. The figures are reported, not
judged (targets: p95 <= 50 ms, <= 100 ms for the top-N). The last stdout line is one JSON object.

The seeding time, sizes and latencies in docs/performance.md ("Read latency at 100M+ points":
50.9 GB seeded, points 12.8 GB of 43.4 GB) are from the layout before, one ``points`` row per
point; they have not been measured again with ``samples`` (about 9.5 against 87.6 bytes per raw
point, ``fleetpulse bench layouts``), whose raw tier is far smaller.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import queue
import secrets
import subprocess
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from fleetpulse import partitions, samples
from fleetpulse.bench import report
from fleetpulse.bench.hostseries import HostModel
from fleetpulse.bench.ports import free_port
from fleetpulse.copybuf import rollup_buffer, samples_copy_buffer
from fleetpulse.embedded import EmbeddedPostgres
from fleetpulse.ingest import compaction
from fleetpulse.ingest.series import SetResolver
from fleetpulse.migrate import migrate

DB_NAME = "fleetpulse_bench_queries"
# Bumped whenever the generator changes what it writes: a dataset of another version is reseeded.
# 2: raw points in ``samples`` (one row per agent and timestamp), no longer in ``points``.
# 3: values with the kernel's precision (bench/hostseries.py), host parameters drawn after STEP_S.
GENERATOR_VERSION = 3
STEP_S = 10
SLICE_S = 600  # samples and minute rows are generated and written 10 minutes at a time
MINUTE_TIER_S = 24 * 3600
HOUR_TIER_S = 7 * 24 * 3600
# The raw window may grow to this multiple of --raw-hours by top-ups before a reseed.
MAX_RAW_GROWTH = 1.5
TOP_UP_ROUNDS = 6
MIN_SERIES_PER_AGENT = 13  # the eight CPU modes and five memory states the agents page reads
ONLINE_SHARE = 0.98
SEED = 20240601


_COPY_1M = "COPY rollup_1m (series_id, bucket, count, sum, min, max, last, last_ts) FROM STDIN (FORMAT BINARY)"
_COPY_1H = "COPY rollup_1h (series_id, bucket, count, sum, min, max, last, last_ts) FROM STDIN (FORMAT BINARY)"


_META = """
CREATE TABLE IF NOT EXISTS bench_dataset (
    version          integer NOT NULL,
    agents           integer NOT NULL,
    series_per_agent integer NOT NULL,
    raw_hours        double precision NOT NULL,
    epoch0           timestamptz NOT NULL,
    points           bigint NOT NULL,
    rollup_1m_rows   bigint NOT NULL,
    rollup_1h_rows   bigint NOT NULL,
    raw_start        timestamptz NOT NULL,
    raw_end          timestamptz NOT NULL,
    rollup_1m_start  timestamptz NOT NULL,
    rollup_1h_start  timestamptz NOT NULL,
    seeded_at        timestamptz NOT NULL,
    seed_s           double precision NOT NULL,
    topped_up_at     timestamptz
)
"""

# The hour tier from the minute tier, as the rollup job computes it (ingest/rollups.py).
_HOUR_FROM_MINUTES = """
INSERT INTO rollup_1h (series_id, bucket, count, sum, min, max, last, last_ts)
SELECT series_id, %(bucket)s, sum(count)::int4, sum(sum), min(min), max(max),
       (array_agg(last ORDER BY last_ts DESC, last DESC))[1], max(last_ts)
FROM rollup_1m
WHERE bucket >= %(bucket)s AND bucket < %(bucket)s + interval '1 hour'
GROUP BY series_id
"""

_QUERY_NAMES = ("fleet_summary", "agents_page", "host_24h", "host_7d", "top10_cpu")


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "fleetpulse-bench"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--agents", type=int, default=2000)
    parser.add_argument("--series-per-agent", type=int, default=50)
    parser.add_argument(
        "--raw-hours", type=float, default=2.8, help="hours of raw points (10 s) up to now"
    )
    parser.add_argument("--runs", type=int, default=100, help="timed requests per query")
    parser.add_argument("--warmup", type=int, default=10, help="untimed requests per query first")
    parser.add_argument("--reseed", action="store_true", help="drop the dataset and seed it again")
    parser.add_argument(
        "--seed-only", action="store_true", help="seed or top up the dataset, measure nothing"
    )
    parser.add_argument(
        "--database-url",
        help=f"admin URL of the server holding the {DB_NAME} database (default: embedded)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=_default_data_dir(),
        help="where the embedded PostgreSQL keeps the dataset (without --database-url)",
    )
    parser.add_argument("--results-dir", type=Path, default=Path("bench/results"))


# -- the generator -----------------------------------------------------------------------------


_OS = (
    ("linux", "ubuntu-22.04"),
    ("linux", "ubuntu-24.04"),
    ("linux", "debian-12"),
    ("linux", "rhel-9"),
    ("linux", "amzn-2023"),
)
_VERSIONS = ("0.9.4", "0.9.5", "1.0.0", "1.0.1")
_ROLES = ("web", "api", "db", "cache", "batch", "k8s-node", "edge", "search")
_REGIONS = ("eu-west", "eu-central", "us-east", "us-west", "ap-south")


class Fleet:
    """Every host's parameters and every series' generator coefficients, reproducible from SEED
    and the sizes, so a top-up continues the same series."""

    def __init__(self, agents: int, series_per_agent: int, epoch0: float) -> None:
        rng = np.random.default_rng(SEED)
        self.agents = agents
        self.series_per_agent = series_per_agent
        self.agent_ids = [f"agent-{i:05d}" for i in range(1, agents + 1)]
        self.hostnames = [
            f"{_ROLES[i % len(_ROLES)]}-{_REGIONS[(i // 7) % len(_REGIONS)]}-{i:05d}.example.internal"
            for i in range(1, agents + 1)
        ]
        self.os_index = rng.choice(len(_OS), agents, p=(0.3, 0.25, 0.25, 0.12, 0.08))
        self.arm = rng.random(agents) < 0.15
        self.version_index = rng.choice(len(_VERSIONS), agents, p=(0.05, 0.15, 0.3, 0.5))
        self.online = rng.random(agents) < ONLINE_SHARE
        # Each host collects at its own phase within the 10 s grid, in whole microseconds.
        self.offset_us = rng.integers(0, STEP_S * 1_000_000, agents)
        self.model = HostModel(agents, series_per_agent, rng, epoch0)
        self.specs = self.model.specs
        self.agent_of = self.model.host_of
        total = self.model.series
        self.series_ids = np.zeros(total, dtype=np.int32)  # set once the series rows exist
        # The series sets (_load_sets, once the series ids are known): the series in set column
        # order (indices into the arrays above: agent-major, series_id order within an agent),
        # and per set its id, its agent and its width (its columns, consecutive in that order).
        self.set_order = np.arange(total, dtype=np.int64)
        self.set_ids = np.zeros(0, dtype=np.int32)
        self.set_agent = np.zeros(0, dtype=np.int64)
        self.set_width = np.zeros(0, dtype=np.int64)
        self.offset_series_us = self.offset_us[self.agent_of]

    @property
    def series(self) -> int:
        return self.model.series

    def values(self, times: np.ndarray) -> np.ndarray:
        """Every series at unix seconds ``times`` (the 10 s grid): shape (series, times)."""
        return self.model.values(times)


class Writer:
    """COPYs buffers on its own connection in a thread, while the next slice is generated."""

    def __init__(self, database_url: str) -> None:
        self._conn = psycopg.connect(database_url, autocommit=True)
        self._conn.execute("SET synchronous_commit = off")
        self._queue: queue.Queue[tuple[str, bytes] | None] = queue.Queue(maxsize=3)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="copy", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is not None:
                continue
            statement, payload = item
            try:
                with self._conn.cursor().copy(statement) as copy:
                    copy.write(payload)
            except BaseException as exc:
                self._error = exc

    def put(self, statement: str, payload: bytes) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put((statement, payload))

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        self._conn.close()
        if self._error is not None:
            raise self._error


@dataclass
class Written:
    points: int = 0
    rollup_1m: int = 0
    rollup_1h: int = 0

    @property
    def rows(self) -> int:
        return self.points + self.rollup_1m + self.rollup_1h


class _HourAccumulator:
    """The hour tier from the minutes of one hour, as the rollup job derives it."""

    def __init__(self, series: int) -> None:
        self.bucket: float | None = None
        self.count = np.zeros(series, dtype=np.int64)
        self.sum = np.zeros(series)
        self.min = np.full(series, np.inf)
        self.max = np.full(series, -np.inf)
        self.last = np.zeros(series)
        self.last_ts_us = np.zeros(series, dtype=np.int64)

    def reset(self, bucket: float) -> None:
        self.bucket = bucket
        self.count[:] = 0
        self.sum[:] = 0
        self.min[:] = np.inf
        self.max[:] = -np.inf

    def add(
        self, count: int, total: np.ndarray, low: np.ndarray, high: np.ndarray, last: np.ndarray
    ) -> None:
        """Minutes (series, minutes) in time order."""
        self.count += count * total.shape[1]
        self.sum += total.sum(axis=1)
        np.minimum(self.min, low.min(axis=1), out=self.min)
        np.maximum(self.max, high.max(axis=1), out=self.max)
        self.last[:] = last[:, -1]


def _generate(
    fleet: Fleet,
    writer: Writer,
    start: float,
    end: float,
    raw_start: float,
    hours_from: float,
    progress: bool,
) -> Written:
    """Write [start, end) at 10 s: minutes from ``start``, raw points from ``raw_start``, closed
    hours from ``hours_from`` (all boundaries minute-aligned; ``hours_from`` hour-aligned)."""
    written = Written()
    ids = fleet.series_ids
    n = fleet.series
    offsets = fleet.offset_series_us
    hour = _HourAccumulator(n)
    began = time.monotonic()
    slice_start = start
    while slice_start < end:
        slice_end = min(end, (slice_start // SLICE_S + 1) * SLICE_S)
        grid = np.arange(slice_start, slice_end, STEP_S, dtype=np.float64)
        values = fleet.values(grid)
        raw_cols = np.flatnonzero(grid >= raw_start)
        if len(raw_cols):
            writer.put(
                samples.COPY_SAMPLES, _samples_buffer(fleet, grid[raw_cols], values, raw_cols)
            )
            written.points += n * len(raw_cols)
        minutes = len(grid) // 6
        per_minute = values.reshape(n, minutes, 6)
        total = per_minute.sum(axis=2)
        low = per_minute.min(axis=2)
        high = per_minute.max(axis=2)
        last = per_minute[:, :, -1]
        buckets = slice_start + 60.0 * np.arange(minutes)
        last_ts_us = (buckets.astype(np.int64) * 1_000_000 + 50_000_000)[:, None] + offsets[None, :]
        writer.put(
            _COPY_1M,
            rollup_buffer(
                np.tile(ids, minutes),
                np.repeat(buckets, n),
                np.full(n * minutes, 6, dtype=np.int32),
                total.T.ravel(),
                low.T.ravel(),
                high.T.ravel(),
                last.T.ravel(),
                last_ts_us.ravel(),
            ),
        )
        written.rollup_1m += n * minutes
        if slice_start >= hours_from:
            hour_bucket = slice_start // 3600 * 3600
            if hour.bucket != hour_bucket:
                hour.reset(hour_bucket)
            hour.add(6, total, low, high, last)
            hour.last_ts_us[:] = last_ts_us[-1]
            if slice_end % 3600 == 0:
                writer.put(_COPY_1H, _hour_buffer(ids, hour))
                written.rollup_1h += n
                hour.bucket = None
        slice_start = slice_end
        if progress and slice_start % 3600 == 0:
            elapsed = time.monotonic() - began
            sys.stderr.write(
                f"  {datetime.fromtimestamp(slice_start, UTC):%Y-%m-%d %H:%M}: "
                f"{written.rows:,} rows in {elapsed:.0f} s ({written.rows / elapsed:,.0f} rows/s)\n"
            )
    return written


def _samples_buffer(fleet: Fleet, grid: np.ndarray, values: np.ndarray, cols: np.ndarray) -> bytes:
    """The samples rows of the columns ``cols`` of ``values`` (series, times), at unix seconds
    ``grid``: one row per set and time, in time order, each set's row at its agent's phase."""
    block = values[np.ix_(fleet.set_order, cols)]  # (series in set column order, times)
    times = len(cols)
    widths = np.tile(fleet.set_width, times)
    row_start = np.zeros(len(widths) + 1, dtype=np.int64)
    np.cumsum(widths, out=row_start[1:])
    phase_us = fleet.offset_us[fleet.set_agent]
    row_ts_us = (grid.astype(np.int64) * 1_000_000)[:, None] + phase_us[None, :]
    return samples_copy_buffer(
        np.tile(fleet.set_ids, times), row_start, row_ts_us.ravel(), block.T.ravel()
    )


def _hour_buffer(ids: np.ndarray, hour: _HourAccumulator) -> bytes:
    assert hour.bucket is not None
    n = len(ids)
    return rollup_buffer(
        ids,
        np.full(n, hour.bucket),
        hour.count.astype(np.int32),
        hour.sum,
        hour.min,
        hour.max,
        hour.last,
        hour.last_ts_us,
    )


def _old_hours(fleet: Fleet, writer: Writer, start: float, end: float) -> int:
    """Hours older than the minute tier: one value per minute stands for its six points."""
    ids = fleet.series_ids
    n = fleet.series
    rows = 0
    bucket = start
    while bucket < end:
        values = fleet.values(bucket + 60.0 * np.arange(60) + 50.0)
        hour = _HourAccumulator(n)
        hour.reset(bucket)
        hour.count[:] = 360
        hour.sum[:] = 6 * values.sum(axis=1)
        hour.min[:] = values.min(axis=1)
        hour.max[:] = values.max(axis=1)
        hour.last[:] = values[:, -1]
        hour.last_ts_us[:] = int(bucket + 3590) * 1_000_000 + fleet.offset_series_us
        writer.put(_COPY_1H, _hour_buffer(ids, hour))
        rows += n
        bucket += 3600
    return rows


# -- the database ------------------------------------------------------------------------------


@dataclass
class Dataset:
    agents: int
    series_per_agent: int
    raw_hours: float
    epoch0: datetime
    points: int
    rollup_1m_rows: int
    rollup_1h_rows: int
    raw_start: datetime
    raw_end: datetime
    rollup_1m_start: datetime
    rollup_1h_start: datetime
    seeded_at: datetime
    seed_s: float
    topped_up_at: datetime | None


def _load_meta(conn: psycopg.Connection) -> Dataset | None:
    exists = conn.execute("SELECT to_regclass('bench_dataset') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return None
    row = conn.execute(
        "SELECT agents, series_per_agent, raw_hours, epoch0, points, rollup_1m_rows,"
        " rollup_1h_rows, raw_start, raw_end, rollup_1m_start, rollup_1h_start, seeded_at,"
        " seed_s, topped_up_at FROM bench_dataset WHERE version = %s",
        (GENERATOR_VERSION,),
    ).fetchone()
    return None if row is None else Dataset(*row)


def _save_meta(conn: psycopg.Connection, ds: Dataset) -> None:
    conn.execute(_META)
    conn.execute("DELETE FROM bench_dataset")
    conn.execute(
        "INSERT INTO bench_dataset VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,"
        " %s, %s)",
        (
            GENERATOR_VERSION,
            ds.agents,
            ds.series_per_agent,
            ds.raw_hours,
            ds.epoch0,
            ds.points,
            ds.rollup_1m_rows,
            ds.rollup_1h_rows,
            ds.raw_start,
            ds.raw_end,
            ds.rollup_1m_start,
            ds.rollup_1h_start,
            ds.seeded_at,
            ds.seed_s,
            ds.topped_up_at,
        ),
    )


def _recreate_database(admin_url: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DB_NAME))
        )
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DB_NAME)))


def _ensure_database(admin_url: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as admin:
        row = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB_NAME,)).fetchone()
        if row is None:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DB_NAME)))


def _ts(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _days(start: float, end: float) -> list[Any]:
    first = _ts(start).date()
    last = _ts(end).date()
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def _write_agents(conn: psycopg.Connection, fleet: Fleet, now: datetime) -> None:
    with conn.cursor().copy(
        "COPY agents (agent_id, hostname, ip, os, arch, version, status, last_heartbeat,"
        " machine_id, collect_interval_ms, heartbeat_interval_ms) FROM STDIN"
    ) as copy:
        for i, agent_id in enumerate(fleet.agent_ids):
            online = bool(fleet.online[i])
            copy.write_row(
                (
                    agent_id,
                    fleet.hostnames[i],
                    f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}",
                    _OS[fleet.os_index[i]][1],
                    "aarch64" if fleet.arm[i] else "x86_64",
                    _VERSIONS[fleet.version_index[i]],
                    "online" if online else "offline",
                    now if online else now - timedelta(hours=3 + i % 48),
                    secrets.token_hex(16),
                    STEP_S * 1000,
                    10_000,
                )
            )
    with conn.cursor().copy("COPY series (agent_id, name, labels) FROM STDIN") as copy:
        for agent_id in fleet.agent_ids:
            for spec in fleet.specs:
                copy.write_row((agent_id, spec.name, json.dumps(spec.labels)))


def _load_series_ids(conn: psycopg.Connection, fleet: Fleet) -> None:
    """Map the generator's series (agent-major, catalog order) to their series_id."""
    index = {
        (agent_id, spec.name, tuple(sorted(spec.labels.items()))): k
        for k, (agent_id, spec) in enumerate(
            (agent_id, spec) for agent_id in fleet.agent_ids for spec in fleet.specs
        )
    }
    found = 0
    with conn.cursor() as cur:
        cur.execute("SELECT series_id, agent_id, name, labels FROM series")
        for series_id, agent_id, name, labels in cur:
            k = index.get((agent_id, name, tuple(sorted(labels.items()))))
            if k is not None:
                fleet.series_ids[k] = series_id
                found += 1
    if found != fleet.series:
        raise RuntimeError(f"{fleet.series} series generated, {found} found in the database")


def _load_sets(conn: psycopg.Connection, fleet: Fleet) -> None:
    """Resolve (create, or find again) every agent's series set: all its series in series_id
    order, split every ``MAX_SET_WIDTH`` series as the workers split a wider collection
    (fleetpulse/samples.py). Needs an autocommit connection (ingest/series.py)."""
    n = fleet.series_per_agent
    order = np.lexsort((fleet.series_ids, fleet.agent_of))
    per_agent = [samples.MAX_SET_WIDTH] * (n // samples.MAX_SET_WIDTH)
    if n % samples.MAX_SET_WIDTH:
        per_agent.append(n % samples.MAX_SET_WIDTH)
    width = np.tile(np.asarray(per_agent, dtype=np.int64), fleet.agents)
    agent = np.repeat(np.arange(fleet.agents, dtype=np.int64), len(per_agent))
    bounds = np.concatenate(([0], np.cumsum(width))).tolist()
    blob = np.asarray(fleet.series_ids[order], dtype="<i4").tobytes()
    members = [blob[4 * bounds[k] : 4 * bounds[k + 1]] for k in range(len(width))]
    set_ids = SetResolver(conn).resolve([fleet.agent_ids[a] for a in agent.tolist()], members)
    fleet.set_order = order
    fleet.set_ids = np.asarray(set_ids, dtype=np.int32)
    fleet.set_agent = agent
    fleet.set_width = width


def _vacuum(conn: psycopg.Connection) -> None:
    for table in (
        "samples",
        "series_sets",
        "set_members",
        "rollup_1m",
        "rollup_1h",
        "series",
        "agents",
        "agent_ingest",
    ):
        conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier(table)))


def _seed(database_url: str, args: argparse.Namespace) -> Dataset:
    began = time.monotonic()
    now_s = time.time()
    raw_end = now_s // 60 * 60
    raw_start = raw_end - round(args.raw_hours * 60) * 60
    hour_end = raw_end // 3600 * 3600
    minutes_start = min(hour_end - MINUTE_TIER_S, raw_start // 3600 * 3600)
    hours_start = hour_end - HOUR_TIER_S
    fleet = Fleet(args.agents, args.series_per_agent, raw_end)
    sys.stderr.write(
        f"seeding {args.agents:,} agents x {args.series_per_agent} series: raw "
        f"{_ts(raw_start):%Y-%m-%d %H:%M} to {_ts(raw_end):%H:%M}, minutes from "
        f"{_ts(minutes_start):%Y-%m-%d %H:%M}, hours from {_ts(hours_start):%Y-%m-%d %H:%M}\n"
    )
    with psycopg.connect(database_url, autocommit=True) as conn:
        partitions.ensure_days(conn, _days(hours_start, raw_end))
        _write_agents(conn, fleet, _ts(now_s))
        _load_series_ids(conn, fleet)
        _load_sets(conn, fleet)
        writer = Writer(database_url)
        try:
            hours = _old_hours(fleet, writer, hours_start, minutes_start)
            sys.stderr.write(f"  hours before the minute tier: {hours:,} rows\n")
            written = _generate(
                fleet, writer, minutes_start, raw_end, raw_start, minutes_start, progress=True
            )
        finally:
            writer.close()
        written.rollup_1h += hours
        load_s = time.monotonic() - began
        raw_per_series = written.points // fleet.series
        conn.execute(
            "INSERT INTO agent_ingest (agent_id, batches_committed, points_committed,"
            " last_epoch, last_seq, last_commit_at)"
            " SELECT agent_id, %s, %s, 1, %s, now() FROM agents",
            (raw_per_series, raw_per_series * args.series_per_agent, raw_per_series),
        )
        sys.stderr.write(
            f"loaded {written.points:,} points, {written.rollup_1m:,} minute and "
            f"{written.rollup_1h:,} hour rows in {load_s:.0f} s "
            f"({written.rows / load_s:,.0f} rows/s, {written.points / load_s:,.0f} raw points/s); "
            "VACUUM (ANALYZE) ...\n"
        )
        _vacuum(conn)
        seed_s = time.monotonic() - began
        ds = Dataset(
            agents=args.agents,
            series_per_agent=args.series_per_agent,
            raw_hours=args.raw_hours,
            epoch0=_ts(raw_end),
            points=written.points,
            rollup_1m_rows=written.rollup_1m,
            rollup_1h_rows=written.rollup_1h,
            raw_start=_ts(raw_start),
            raw_end=_ts(raw_end),
            rollup_1m_start=_ts(minutes_start),
            rollup_1h_start=_ts(hours_start),
            seeded_at=_ts(now_s),
            seed_s=seed_s,
            topped_up_at=None,
        )
        _save_meta(conn, ds)
    sys.stderr.write(
        f"seeded in {seed_s:.0f} s (load {load_s:.0f} s + vacuum {seed_s - load_s:.0f} s): "
        f"{written.points:,} points\n"
    )
    return ds


def _top_up(database_url: str, ds: Dataset) -> float:
    """Generate [raw_end, current minute): raw points, minutes, the hours that closed."""
    began = time.monotonic()
    old_end = ds.raw_end.timestamp()
    new_end = time.time() // 60 * 60
    fleet = Fleet(ds.agents, ds.series_per_agent, ds.epoch0.timestamp())
    with psycopg.connect(database_url, autocommit=True) as conn:
        partitions.ensure_days(conn, _days(old_end, new_end))
        _load_series_ids(conn, fleet)
        _load_sets(conn, fleet)
        writer = Writer(database_url)
        try:
            # Hours are not accumulated here (their first minutes are already stored): no hour
            # boundary is ever reached from ``hours_from`` = infinity.
            written = _generate(fleet, writer, old_end, new_end, old_end, math.inf, progress=False)
        finally:
            writer.close()
        hours = 0
        for bucket in range(int(old_end // 3600 * 3600), int(new_end // 3600 * 3600), 3600):
            hours += conn.execute(_HOUR_FROM_MINUTES, {"bucket": _ts(bucket)}).rowcount
        raw_per_series = written.points // fleet.series
        conn.execute(
            "UPDATE agent_ingest SET batches_committed = batches_committed + %s,"
            " points_committed = points_committed + %s, last_seq = last_seq + %s,"
            " last_commit_at = now()",
            (raw_per_series, raw_per_series * ds.series_per_agent, raw_per_series),
        )
        for table in ("samples", "rollup_1m", "rollup_1h"):
            conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(table)))
        ds.points += written.points
        ds.rollup_1m_rows += written.rollup_1m
        ds.rollup_1h_rows += hours
        ds.raw_end = _ts(new_end)
        ds.topped_up_at = datetime.now(UTC)
        _save_meta(conn, ds)
    took = time.monotonic() - began
    sys.stderr.write(
        f"topped up {_ts(old_end):%H:%M} to {_ts(new_end):%H:%M}: {written.points:,} points, "
        f"{written.rollup_1m:,} minute rows, {hours:,} hour rows in {took:.1f} s\n"
    )
    return took


def _matches(ds: Dataset | None, args: argparse.Namespace, now_s: float) -> bool:
    if ds is None:
        return False
    same = (ds.agents, ds.series_per_agent, ds.raw_hours) == (
        args.agents,
        args.series_per_agent,
        args.raw_hours,
    )
    design = ds.raw_hours * 3600
    return same and now_s - ds.raw_start.timestamp() <= MAX_RAW_GROWTH * design


def _prepare(database_url: str, admin_url: str, args: argparse.Namespace) -> tuple[Dataset, bool]:
    """The dataset, seeded or topped up to the current minute; True when it was seeded now."""
    ds = None
    if not args.reseed:
        _ensure_database(admin_url)
        migrate(database_url)
        with psycopg.connect(database_url, autocommit=True) as conn:
            ds = _load_meta(conn)
    seeded = False
    if ds is None or not _matches(ds, args, time.time()):
        if ds is not None:
            sys.stderr.write("the stored dataset has other sizes or is too old: reseeding\n")
        _recreate_database(admin_url)
        migrate(database_url)
        ds, seeded = _seed(database_url, args), True
    # The rollup indexes packed, as the workers' compaction leaves them at this time of day.
    with psycopg.connect(database_url, autocommit=True) as conn:
        for index in compaction.compact_due(conn):
            sys.stderr.write(f"packed {index} (ingest/compaction.py)\n")
    # A seed or a long top-up ends minutes behind the clock, and the top-N reads the last five
    # minutes of raw points: top up again until the data reaches the current minute (each round
    # is shorter than the one before).
    for _ in range(TOP_UP_ROUNDS):
        if ds.raw_end.timestamp() >= time.time() // 60 * 60:
            break
        _top_up(database_url, ds)
    return ds, seeded


def _sizes(conn: psycopg.Connection) -> dict[str, float]:
    """Total size (heap, indexes, TOAST) of each table with its partitions, and of the database, GB."""
    sizes: dict[str, float] = {}
    for table in (
        "samples",
        "rollup_1m",
        "rollup_1h",
        "series",
        "series_sets",
        "set_members",
        "agents",
    ):
        row = conn.execute(
            "SELECT coalesce(sum(pg_total_relation_size(relid)), 0)::int8"
            " FROM pg_partition_tree(%s::regclass)",
            (table,),
        ).fetchone()
        sizes[f"{table}_gb"] = round(int(row[0]) / 1e9, 2) if row else 0.0
    row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    sizes["database_gb"] = round(int(row[0]) / 1e9, 2) if row else 0.0
    return sizes


def _embedded_settings() -> dict[str, str]:
    """What the embedded server is given: a quarter of the memory (at most 8 GB) for its buffers,
    as a PostgreSQL holding tens of GB would be configured (the 128 MB default makes every index
    insert of the seeding a buffer miss), and checkpoints spaced for a bulk load."""
    memory = int(psutil.virtual_memory().total)
    shared_mb = max(128, min(8192, memory // 4 // 2**20))
    return {
        "shared_buffers": f"{shared_mb}MB",
        "max_wal_size": "16GB",
        "checkpoint_timeout": "30min",
    }


def _configure_embedded(pg: EmbeddedPostgres, admin_url: str) -> str:
    """Apply ``_embedded_settings`` to the benchmark's own embedded server (ALTER SYSTEM, kept in
    its data directory), restarting it when they change; return its URL."""
    wanted = _embedded_settings()
    with psycopg.connect(admin_url, autocommit=True) as conn:
        changed = False
        for name, value in wanted.items():
            compare = (
                "SELECT current_setting(%s) = %s"
                if name == "checkpoint_timeout"
                else "SELECT pg_size_bytes(current_setting(%s)) = pg_size_bytes(%s)"
            )
            row = conn.execute(compare, (name, value)).fetchone()
            if not row or not row[0]:
                conn.execute(
                    sql.SQL("ALTER SYSTEM SET {} = {}").format(
                        sql.Identifier(name), sql.Literal(value)
                    )
                )
                changed = True
    if not changed:
        return admin_url
    sys.stderr.write(f"embedded PostgreSQL: {wanted}, restarting it\n")
    pg.stop()
    return pg.start()


def _server(conn: psycopg.Connection) -> dict[str, str]:
    out = {}
    for name in (
        "server_version",
        "shared_buffers",
        "work_mem",
        "effective_cache_size",
        "random_page_cost",
        "jit",
        "max_parallel_workers_per_gather",
        "max_wal_size",
        "checkpoint_timeout",
    ):
        row = conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()
        out[name] = str(row[0]) if row else ""
    return out


# -- the measurement ---------------------------------------------------------------------------


class _Api:
    """``python -m fleetpulse api`` on a free loopback port, with a random read key."""

    def __init__(self, database_url: str) -> None:
        self.key = secrets.token_urlsafe(24)
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETPULSE_")}
        env.update(
            FLEETPULSE_DATABASE_URL=database_url,
            FLEETPULSE_API_KEYS=self.key,
            FLEETPULSE_API_HOST="127.0.0.1",
            FLEETPULSE_API_PORT=str(self.port),
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fleetpulse", "--log-level", "warning", "api"], env=env
        )
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the API exited at start ({self.proc.returncode})")
            try:
                status, _ = self.get("/healthz")
                if status == 200:
                    break
            except OSError:
                self.conn.close()
            if time.monotonic() > deadline:
                raise TimeoutError("the API did not answer /healthz in 60 s")
            time.sleep(0.1)

    def get(self, path: str) -> tuple[int, bytes]:
        self.conn.request("GET", path, headers={"Authorization": f"Bearer {self.key}"})
        response = self.conn.getresponse()
        return response.status, response.read()

    def stop(self) -> None:
        self.conn.close()
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _paths(agent_ids: list[str], rng: np.random.Generator) -> dict[str, str]:
    now = int(time.time())

    def range_query(step: int, seconds: int) -> str:
        agent = agent_ids[int(rng.integers(len(agent_ids)))]
        params = {
            "metric": "cpu_usage_percent",
            "match": f"agent_id={agent}",
            "by": "mode",
            "agg": "avg",
            "step": step,
            "start": now - seconds,
            "end": now,
        }
        return "/query/range?" + urllib.parse.urlencode(params)

    top = {
        "metric": "cpu_usage_percent",
        "match": "mode=idle",
        "k": 10,
        "window": 300,
        "agg": "avg",
        "by": "agent_id",
        "order": "asc",
    }
    return {
        "fleet_summary": "/fleet/summary",
        "agents_page": "/agents?limit=50&sort=agent_id",
        "host_24h": range_query(60, 24 * 3600),
        "host_7d": range_query(3600, 7 * 24 * 3600),
        "top10_cpu": "/query/top?" + urllib.parse.urlencode(top),
    }


def _shape(name: str, body: bytes) -> dict[str, Any]:
    """What one answer held (checked outside the timing): groups, series, points."""
    try:
        doc = json.loads(body)
    except ValueError:
        return {}
    if name in ("host_24h", "host_7d") and isinstance(doc, dict):
        series = doc.get("series") or []
        return {
            "tier": doc.get("tier"),
            "series": len(series),
            "points": sum(len(s.get("points") or []) for s in series),
        }
    if name == "top10_cpu" and isinstance(doc, dict):
        return {"groups": len(doc.get("groups") or [])}
    if name == "agents_page" and isinstance(doc, list):
        return {
            "agents": len(doc),
            "with_cpu": sum(1 for a in doc if a.get("cpu_percent") is not None),
        }
    if name == "fleet_summary" and isinstance(doc, dict):
        return {"agents": doc.get("agents")}
    return {}


def _measure(database_url: str, runs: int, warmup: int) -> dict[str, Any]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        # Heartbeats as live agents would have kept them.
        conn.execute(
            "UPDATE agents SET last_heartbeat = now() - random() * interval '5 seconds'"
            " WHERE status = 'online'"
        )
        agent_ids = [r[0] for r in conn.execute("SELECT agent_id FROM agents ORDER BY agent_id")]
    api = _Api(database_url)
    rng = np.random.default_rng()
    latencies: dict[str, list[float]] = {name: [] for name in _QUERY_NAMES}
    sizes: dict[str, list[int]] = {name: [] for name in _QUERY_NAMES}
    errors: dict[str, dict[str, int]] = {}
    shapes: dict[str, dict[str, Any]] = {}
    try:
        for round_index in range(warmup + runs):
            for name, path in _paths(agent_ids, rng).items():
                began = time.perf_counter()
                status, body = api.get(path)
                took = time.perf_counter() - began
                if status != 200:
                    key = str(status)
                    errors.setdefault(name, {})
                    errors[name][key] = errors[name].get(key, 0) + 1
                    if sum(errors[name].values()) == 1:
                        sys.stderr.write(f"{name}: HTTP {status} for {path}: {body[:300]!r}\n")
                    continue
                if round_index >= warmup:
                    latencies[name].append(took)
                    sizes[name].append(len(body))
                shapes[name] = _shape(name, body)
    finally:
        api.stop()
    return {"latencies": latencies, "sizes": sizes, "errors": errors, "shapes": shapes}


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def _command(args: argparse.Namespace) -> str:
    parts = ["fleetpulse bench queries"]
    defaults = argparse.ArgumentParser()
    add_arguments(defaults)
    for key in ("agents", "series_per_agent", "raw_hours", "runs", "warmup"):
        value = getattr(args, key)
        if value != defaults.get_default(key):
            parts.append(f"--{key.replace('_', '-')} {value}")
    if args.database_url:
        parts.append("--database-url URL")
    return " ".join(parts)


def run(args: argparse.Namespace) -> int:
    if args.series_per_agent < MIN_SERIES_PER_AGENT:
        sys.stderr.write(f"--series-per-agent must be at least {MIN_SERIES_PER_AGENT}\n")
        return 2
    started_at = datetime.now(UTC)
    pg = None
    try:
        admin_url = args.database_url
        if admin_url is None:
            pg = EmbeddedPostgres(args.data_dir)
            admin_url = _configure_embedded(pg, pg.start())
        database_url = make_conninfo(admin_url, dbname=DB_NAME)
        ds, seeded = _prepare(database_url, admin_url, args)
        measured = None if args.seed_only else _measure(database_url, args.runs, args.warmup)
        with psycopg.connect(database_url, autocommit=True) as conn:
            sizes = _sizes(conn)
            server = _server(conn)
            # The top-up (if any) is in the dataset now; report it as stored.
            ds = _load_meta(conn) or ds
    finally:
        if pg is not None:
            pg.stop()

    summary: dict[str, Any] = {
        "agents": ds.agents,
        "series": ds.agents * ds.series_per_agent,
        "series_per_agent": ds.series_per_agent,
        "points": ds.points,
        "rollup_1m_rows": ds.rollup_1m_rows,
        "rollup_1h_rows": ds.rollup_1h_rows,
        "raw_start": ds.raw_start.isoformat(),
        "raw_end": ds.raw_end.isoformat(),
        "seeded_now": seeded,
        "seed_s": round(ds.seed_s, 1),
        "seed_rows_per_s": round(
            (ds.points + ds.rollup_1m_rows + ds.rollup_1h_rows) / max(ds.seed_s, 1e-9)
        )
        if seeded
        else None,
        "database_gb": sizes["database_gb"],
        "runs": 0 if measured is None else args.runs,
    }
    details: dict[str, Any] = {}
    if measured is not None:
        for name in _QUERY_NAMES:
            times = np.array(measured["latencies"][name])
            if len(times):
                summary[f"{name}_p50_ms"] = _ms(float(np.percentile(times, 50)))
                summary[f"{name}_p95_ms"] = _ms(float(np.percentile(times, 95)))
                summary[f"{name}_max_ms"] = _ms(float(times.max()))
                summary[f"{name}_bytes"] = int(np.median(measured["sizes"][name]))
            else:
                for stat in ("p50_ms", "p95_ms", "max_ms", "bytes"):
                    summary[f"{name}_{stat}"] = None
            details[name] = {
                "latencies_ms": [_ms(t) for t in measured["latencies"][name]],
                "errors": measured["errors"].get(name, {}),
                "answer": measured["shapes"].get(name, {}),
            }
        summary["errors"] = sum(sum(e.values()) for e in measured["errors"].values())
    result = {
        "started_at": started_at.isoformat(timespec="seconds"),
        "command": _command(args),
        "machine": report.machine(),
        "server": server,
        "sizes": sizes,
        "summary": summary,
        "queries": details,
    }
    out_dir = args.results_dir / (started_at.strftime("%Y%m%dT%H%M%SZ") + "-queries")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "result.json").write_text(json.dumps(result, indent=2))
    sys.stderr.write(
        json.dumps(
            {
                "sizes": sizes,
                "server": server,
                "answers": details and {k: v["answer"] for k, v in details.items()},
            },
            indent=1,
        )
        + f"\nresults in {out_dir}\n"
    )
    print(json.dumps(summary))
    return 1 if summary.get("errors") else 0

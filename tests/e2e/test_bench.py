"""The benchmarks end to end, small: the harness itself must not rot.

Its figures are not asserted (a benchmark measures, it does not pass or fail on speed); what is
asserted is the contract: the JSON last line, the verification, the files of the results folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from fleetpulse import samples
from fleetpulse.bench.querylayout import Fleet
from fleetpulse.embedded import EmbeddedPostgres
from fleetpulse.ingest.worker.rollups import RollupJob

pytestmark = pytest.mark.e2e

REQUIRED = {
    "mode",
    "agents",
    "duration_s",
    "sent_points",
    "committed_points",
    "committed_points_per_s",
    "missing_batches",
    "duplicate_batches",
    "freshness_p50_s",
    "freshness_p99_s",
    "copy_ceiling_points_per_s",
    "victoriametrics_points_per_s",
    "bytes_per_point",
    "victoriametrics_bytes_per_point",
}


@pytest.mark.parametrize("mode", ["saturate", "realistic"])
def test_bench_fleet_runs_verifies_and_reports(mode: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETPULSE_")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fleetpulse",
            "bench",
            "fleet",
            "--mode",
            mode,
            "--agents",
            "20",
            "--duration",
            "4",
            "--warmup",
            "2",
            "--interval",
            "1",
            "--series",
            "50",
            "--results-dir",
            str(tmp_path),
            # compressing waits for the run's last minute to close: once is enough
            *([] if mode == "saturate" else ["--no-compress"]),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary.keys() >= REQUIRED
    assert summary["mode"] == mode and summary["agents"] == 20
    assert summary["sent_points"] == summary["committed_points"] > 0
    assert summary["missing_batches"] == summary["duplicate_batches"] == 0
    assert summary["copy_ceiling_points_per_s"] > 0
    # samples rows hold each value's 8 bytes uncompressed: less means a table went uncounted
    assert summary["bytes_per_point_hot"] >= 8
    if mode == "saturate":
        # every hour of the run compressed (warm-up included), the hot rows' space given back
        assert summary["compressed_points"] >= summary["committed_points"]
        assert summary["compress_deferred_hours"] == 0
        # what is left of samples: its empty partitions (today's emptied and given back)
        assert summary["bytes_per_point_by_table"].get("samples", 0) < 1
        assert summary["bytes_per_point_by_table"]["sample_chunks"] > 0
        # and the minute tier with them, into minute chunks
        assert summary["compressed_minute_rows"] > 0
        assert summary["bytes_per_point_by_table"]["minute_chunks"] > 0
    else:
        assert summary["bytes_per_point"] == summary["bytes_per_point_hot"]
    (run_dir,) = tmp_path.iterdir()
    assert {"result.json", "summary.md", "throughput.png", "freshness.png"} <= {
        p.name for p in run_dir.iterdir()
    }
    full = json.loads((run_dir / "result.json").read_text())
    assert full["verified"] is True
    assert {"cores", "memory_gb"} <= full["machine"].keys()
    assert {"front-end", "workers", "postgres", "redis", "simulator"} <= full["resources"].keys()


@pytest.mark.parametrize("form", ["columnar", "rows"])
def test_bench_workers_drains_the_queue_into_postgres(form: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETPULSE_")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fleetpulse",
            "bench",
            "workers",
            "--agents",
            "30",
            "--batches",
            "3",
            "--series",
            "40",
            "--processes",
            "2",
            "--form",
            form,
            "--results-dir",
            str(tmp_path),
            *([] if form == "columnar" else ["--no-compress"]),  # once is enough
            # an agent inventing 50 series per batch, against a budget of 60
            *(["--flood-agents", "1", "--flood-series", "50"] if form == "columnar" else []),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**env, "FLEETPULSE_SERIES_BUDGET": "60"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert {
        "committed_points_per_s",
        "copy_ceiling_points_per_s",
        "points",
        "processes",
    } <= summary.keys()
    assert summary["points"] == 30 * 3 * 40 and summary["processes"] == 2
    assert summary["stored_equals_queued"] is True
    # a samples row holds 8 bytes per value; compressed, the run's points are all in chunks
    assert summary["bytes_per_point_hot"] > 8
    if form == "columnar":
        assert summary["compressed_points"] >= summary["points"]  # the warm-up batches too
        assert summary["bytes_per_point_by_table"]["sample_chunks"] > 0
        # the flood kept its budget's worth of series; every other new series was refused
        assert (summary["flood_points"], summary["flood_series_stored"]) == (3 * 50, 60)
        assert summary["flood_points_refused"] == 3 * 50 - 60


def test_bench_liveness_reports_the_sweep_pages_and_promql() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETPULSE_")}
    args = ["bench", "liveness", "--agents", "50", "--repeat", "1"]
    result = subprocess.run(
        [sys.executable, "-m", "fleetpulse", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["agents"] == 50 and summary["sweep_10pct_stale_recorded"] == 5
    assert {"agents_page_ms", "fleet_summary_ms", "range 1h/60s sum(fleetpulse_agent_up) ms"} <= (
        summary.keys()
    )


def test_bench_rules_times_each_group_of_the_builtin_rules() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETPULSE_")}
    args = ["bench", "rules", "--agents", "200", "--series", "20", "--rounds", "2"]
    result = subprocess.run(
        [sys.executable, "-m", "fleetpulse", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["agents"] == 200 and summary["stored_equals_queued"] is True
    groups = summary["groups"]
    assert {"fleet-agents", "fleet-hosts"} <= groups.keys()
    for group in groups.values():
        assert group["rounds"] == 2 and {"median_ratio", "max_ratio", "rules"} <= group.keys()
        assert all(rule["rounds_in_error"] == 0 for rule in group["rules"].values())
    # the planted trouble shows: the spool that drops fires at once, the full disks are pending
    data = summary["data"]
    rules = {**groups["fleet-agents"]["rules"], **groups["fleet-hosts"]["rules"]}
    assert rules["AgentSpoolDropping"]["firing"] == data["dropping_batches"]
    assert rules["FilesystemAlmostFull"]["pending"] >= data["filesystems_above_90pct"]


def _bench(args: list[str], tmp_path: Path) -> dict[str, object]:
    """Run `fleetpulse bench ...` on embedded servers; return its JSON last line."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETPULSE_")}
    result = subprocess.run(
        [sys.executable, "-m", "fleetpulse", "bench", *args, "--results-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    (run_dir,) = tmp_path.iterdir()
    assert json.loads((run_dir / "result.json").read_text())["summary"] == summary
    return summary


def test_bench_connections_holds_every_agent_on_its_own_connection(tmp_path: Path) -> None:
    """Two front-end processes sharing the port; after the window both are restarted and every
    agent comes back."""
    summary = _bench(
        [
            "connections",
            "--processes",
            "2",
            "--agents",
            "20",
            "--duration",
            "3",
            "--heartbeat-interval",
            "1",
            "--settle",
            "1",
            "--ramp",
            "0.5",
        ],
        tmp_path,
    )
    assert {
        "agents_target",
        "agents_connected",
        "agents_online_in_db",
        "server_rss_mb",
        "server_rss_idle_mb",
        "rss_per_agent_kb",
        "heartbeats_per_s",
        "server_cpu_s_per_1k_heartbeats",
        "server_cpu_percent",
        "client_errors",
        "connect_p50_s",
        "connect_p99_s",
    } <= summary.keys()
    assert summary["agents_target"] == summary["agents_connected"] == 20
    # one TCP connection per agent: channels do not share a subchannel
    assert summary["tcp_connections"] == 20
    assert summary["agents_online_in_db"] == 20
    assert summary["frontend_processes"] == 2
    assert summary["client_errors_ramp"] == summary["client_errors_window"] == {}
    # the restart: every agent registered again, within the wait
    assert summary["reconnect_connected"] == 20
    assert isinstance(summary["reconnect_s"], float) and summary["reconnect_s"] > 0
    assert summary["registrations_per_s"] is not None
    # 20 agents x 1 heartbeat/s over 3 s: every heartbeat acknowledged
    assert (
        isinstance(summary["heartbeats_per_s"], float) and 15 <= summary["heartbeats_per_s"] <= 25
    )
    assert isinstance(summary["server_rss_mb"], float) and summary["server_rss_mb"] > 0


def test_bench_ingest_queues_exactly_the_batches_it_acked(tmp_path: Path) -> None:
    summary = _bench(
        ["ingest", "--agents", "20", "--batches", "10", "--series", "50", "--window", "4"],
        tmp_path,
    )
    assert {
        "points_per_s",
        "batches_per_s",
        "agents",
        "points",
        "server_cpu_percent",
        "queued_entries_equal_acked",
    } <= summary.keys()
    assert summary["agents"] == summary["agents_finished"] == 20
    assert summary["batches"] == summary["queued_entries"] == 20 * 10
    assert summary["points"] == 20 * 10 * 50
    assert summary["queued_entries_equal_acked"] is True
    assert isinstance(summary["points_per_s"], int) and summary["points_per_s"] > 0


def test_bench_remote_write_stores_every_sample_once(tmp_path: Path) -> None:
    summary = _bench(
        ["remote-write", "--hosts", "6", "--series", "100", "--scrapes", "3", "--workers", "1"],
        tmp_path,
    )
    assert summary["samples"] == summary["points_stored"] == 6 * 100 * 3
    assert summary["requests"] == 3 * 2  # 600 samples a scrape, 500 a request
    assert summary["stored_equals_sent"] is True and summary["duplicates"] == 0
    assert summary["batches"] > 0 and summary["series_sets"] > 0
    for part in ("api", "workers", "postgres", "redis", "senders"):
        assert f"{part}_cpu_us_per_sample" in summary, part
    assert summary["api_cpu_us_per_sample"] > 0  # decoding 1,800 samples takes some
    assert isinstance(summary["accepted_samples_per_s"], int)
    assert summary["accepted_samples_per_s"] > 0


def test_bench_agent_reports_the_footprint(tmp_path: Path) -> None:
    summary = _bench(
        [
            "agent",
            "--interval",
            "0.5",
            "--duration",
            "3",
            "--warmup",
            "2",
            "--collector-rounds",
            "2",
        ],
        tmp_path,
    )
    assert {
        "cpu_ms_per_cycle",
        "series_per_cycle",
        "rss_mb",
        "node_exporter_cpu_ms_per_scrape",
        "node_exporter_series",
    } <= summary.keys()
    assert summary["cycles"] >= 4 and summary["series_per_cycle"] > 20  # type: ignore[operator]
    assert summary["cpu_ms_per_cycle"] > 0 and summary["rss_mb"] > 10  # type: ignore[operator]


QUERY_NAMES = ("fleet_summary", "agents_page", "host_24h", "host_7d", "top10_cpu")


def test_bench_queries_seeds_measures_and_reuses_the_dataset(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    agents, per_agent = 20, 20
    sizes = ["--agents", str(agents), "--series-per-agent", str(per_agent), "--raw-hours", "3"]
    args = ["queries", *sizes, "--runs", "5", "--warmup", "1", "--data-dir", str(data_dir)]
    # Seeded up to 65 minutes ago, then topped up to now in the same run: the hour that was open
    # at the seed's end has closed since, and the top-up has the platform's jobs finish it.
    first = _bench([*args, "--seed-behind", "65"], tmp_path / "first")
    assert {"points", "set_minutes", "set_hours", "database_gb", "errors"} <= first.keys()
    assert {f"{name}_{stat}" for name in QUERY_NAMES for stat in ("p50_ms", "p95_ms")} <= (
        first.keys()
    )
    assert all(isinstance(first[f"{name}_p95_ms"], float) for name in QUERY_NAMES)
    assert first["errors"] == 0 and first["runs"] == 5
    # 20 agents x 20 series x 6 points a minute, over 3 h and the 65 minutes topped up
    raw_minutes = (
        datetime.fromisoformat(str(first["raw_end"]))
        - datetime.fromisoformat(str(first["raw_start"]))
    ) // timedelta(minutes=1)
    assert raw_minutes >= 3 * 60 + 65
    assert first["seeded_now"] is True and first["points"] == agents * per_agent * raw_minutes * 6
    # Run again: the dataset is reused (topped up to the current minute, if it moved on).
    second = _bench(args, tmp_path / "second")
    assert second["seeded_now"] is False and second["errors"] == 0
    assert second["points"] >= first["points"]  # type: ignore[operator]

    pg = EmbeddedPostgres(data_dir)
    try:
        url = make_conninfo(pg.start(), dbname="fleetpulse_bench_queries")
        with psycopg.connect(url, autocommit=True) as conn:
            _check_queries_dataset(conn, agents, per_agent, second)
    finally:
        pg.stop()


def _check_queries_dataset(
    conn: psycopg.Connection, agents: int, per_agent: int, summary: dict[str, object]
) -> None:
    """The layout the platform's jobs leave, every point and minute once, and the values the
    generator gives."""

    def one(query: str, *params: object) -> Any:
        row = conn.execute(query, params).fetchone()
        assert row is not None
        return row[0]

    row = conn.execute(
        "SELECT points, set_minutes, set_hours, raw_start, raw_end, rollup_1m_start,"
        " rollup_1h_start, epoch0 FROM bench_dataset"
    ).fetchone()
    assert row is not None
    points, set_minutes, set_hours, raw_start, raw_end, minutes_start, hours_start, epoch0 = row
    assert points == summary["points"] and set_minutes == summary["set_minutes"]
    sets = one("SELECT count(*) FROM series_sets")
    assert sets == agents  # one set per agent (20 series)
    open_hour = raw_end.replace(minute=0)
    hour = timedelta(hours=1)

    # Closed hours: compressed, one chunk per set and hour (the first raw hour from the raw start
    # on); nothing hot before the open hour.
    assert one("SELECT count(*) FROM samples WHERE ts < %s", open_hour) == 0
    assert one("SELECT count(*) FROM set_rollup_1m WHERE bucket < %s", open_hour) == 0
    chunks = conn.execute(
        "SELECT hour, count(*), count(DISTINCT set_id), min(rows), max(rows), min(width)"
        " FROM sample_chunks GROUP BY hour ORDER BY hour"
    ).fetchall()
    raw_hours = []
    at = raw_start.replace(minute=0)
    while at < open_hour:
        raw_hours.append(at)
        at += hour
    assert [c[0] for c in chunks] == raw_hours
    for h, n, distinct, low, high, width in chunks:
        rows = (h + hour - max(h, raw_start)) // timedelta(seconds=10)
        assert (n, distinct, low, high, width) == (sets, sets, rows, rows, per_agent)
    minute_chunks = conn.execute(
        "SELECT hour, count(*), count(DISTINCT set_id), min(minutes), max(minutes)"
        " FROM minute_chunks GROUP BY hour ORDER BY hour"
    ).fetchall()
    assert [c[0] for c in minute_chunks] == [
        minutes_start + k * hour for k in range((open_hour - minutes_start) // hour)
    ]
    assert all(c[1:] == (sets, sets, 60, 60) for c in minute_chunks)
    # The open hour is hot: a samples row per set and 10 s, a minute row per set and closed minute.
    assert one("SELECT count(*) FROM sample_chunks WHERE hour >= %s", open_hour) == 0
    assert one("SELECT count(*) FROM minute_chunks WHERE hour >= %s", open_hour) == 0
    assert one("SELECT count(*) FROM samples") == sets * ((raw_end - open_hour).seconds // 10)
    assert one("SELECT count(*) FROM set_rollup_1m") == sets * ((raw_end - open_hour).seconds // 60)
    # Every point and minute once; an hour row per set and closed hour of the last 7 days on.
    assert (
        one("SELECT sum(rows * width) FROM sample_chunks")
        + one("SELECT coalesce(sum(cardinality(vals)), 0) FROM samples")
        == points
    )
    assert (
        one("SELECT sum(minutes) FROM minute_chunks") + one("SELECT count(*) FROM set_rollup_1m")
        == set_minutes
    )
    assert (
        one("SELECT count(*) FROM set_rollup_1h")
        == set_hours
        == sets * ((open_hour - hours_start) // hour)
    )
    assert one("SELECT count(DISTINCT (set_id, bucket)) FROM set_rollup_1h") == set_hours
    assert one("SELECT min(bucket) FROM set_rollup_1h") == hours_start
    # Nothing in the per-series tables of the layout before; no job's work left undone (the
    # hour open at the seed's end was rolled up and compressed by the jobs, their marks gone).
    for table in ("points", "rollup_1m", "rollup_1h", "rollup_dirty"):
        assert one(f"SELECT count(*) FROM {table}") == 0, table
    seed_end = epoch0.timestamp()
    if seed_end % 3600:
        finished = datetime.fromtimestamp(seed_end // 3600 * 3600, UTC)
        assert one("SELECT count(*) FROM rollup_log WHERE tier = 2 AND bucket = %s", finished) == 1

    # One series read back: the generator's values, at its agent's phase, every 10 s.
    fleet = Fleet(agents, per_agent, seed_end)
    agent, spec = 7, 3  # cpu_usage_percent{mode="idle"} of agent-00008
    assert fleet.specs[spec].labels == {"mode": "idle"}
    series_id = one(
        "SELECT series_id FROM series WHERE agent_id = %s AND name = %s AND labels = %s::jsonb",
        fleet.agent_ids[agent],
        fleet.specs[spec].name,
        json.dumps(fleet.specs[spec].labels),
    )
    got = samples.read_points(conn, [series_id], raw_start, raw_end)
    order = np.argsort(got.ts_unix_us)
    ts, values = got.ts_unix_us[order], got.value[order]
    grid = np.arange(raw_start.timestamp(), raw_end.timestamp(), 10.0)
    assert len(ts) == len(grid) == points // (agents * per_agent)
    assert np.array_equal(ts, grid.astype(np.int64) * 1_000_000 + fleet.offset_us[agent])
    assert np.array_equal(values, fleet.values(grid)[agent * per_agent + spec])
    # Its minutes (compressed and hot) are the aggregate of those points, bit for bit: count,
    # sum (in time order), min, max, last (the latest point's) and the latest time.
    read = samples.read_minutes(conn, [series_id], raw_start, raw_end)
    m = read.minutes.take(np.argsort(read.minutes.bucket_us))
    per_minute, stamps = values.reshape(-1, 6), ts.reshape(-1, 6)
    total = per_minute[:, 0].copy()
    for k in range(1, 6):
        total += per_minute[:, k]
    assert np.array_equal(m.bucket_us, grid[::6].astype(np.int64) * 1_000_000)
    assert (m.count == 6).all()
    assert np.array_equal(m.sum[:, 0], total)
    assert np.array_equal(m.min[:, 0], per_minute.min(axis=1))
    assert np.array_equal(m.max[:, 0], per_minute.max(axis=1))
    assert np.array_equal(m.last[:, 0], per_minute[:, -1])
    assert np.array_equal(m.last_ts_us, stamps[:, -1])

    # The rollup job computes the same tiers: every set's minutes of the open hour from its hot
    # rows, and its hours of the minute tier from their minutes (sums equal up to the order of
    # addition, the rest bit for bit).
    tiers = {
        "set_rollup_1m": (open_hour, raw_end),
        "set_rollup_1h": (minutes_start, open_hour),
    }

    def tier_rows(table: str) -> list[tuple[Any, ...]]:
        lo, hi = tiers[table]
        return conn.execute(
            f"SELECT set_id, bucket, count, last_ts, sum, min, max, last FROM {table}"
            " WHERE bucket >= %s AND bucket < %s ORDER BY set_id, bucket",
            (lo, hi),
        ).fetchall()

    before = {table: tier_rows(table) for table in tiers}
    conn.execute(
        "INSERT INTO rollup_dirty (tier, bucket)"
        " SELECT 1, generate_series(%s::timestamptz, %s::timestamptz - interval '1 minute',"
        " interval '1 minute')"
        " UNION ALL SELECT 2, generate_series(%s::timestamptz, %s::timestamptz - interval '1 hour',"
        " interval '1 hour')",
        (open_hour, raw_end, minutes_start, open_hour),
    )
    RollupJob(conn).catch_up()
    for table, rows in before.items():
        after = tier_rows(table)
        assert len(after) == len(rows) == len(set(r[:2] for r in rows)), table
        for mine, job in zip(rows, after, strict=True):
            assert mine[:4] == job[:4] and mine[5:] == job[5:], (table, mine[:2])
            assert np.allclose(mine[4], job[4], rtol=1e-12, atol=0), (table, mine[:2])


def test_bench_layouts_measures_every_layout_on_real_samples(tmp_path: Path) -> None:
    args = ["layouts", "--collections", "12", "--interval", "0.05", "--agents", "3"]
    summary = _bench([*args, "--chunk-collections", "6"], tmp_path)
    series, collections = summary["series"], summary["collections"]
    assert isinstance(series, int) and series > 50  # the agent's collectors on this host
    assert collections == 12 and summary["points"] == 3 * 12 * series
    for layout in ("rows", "batch_rows", "chunks_pcodec", "chunks_zstd"):
        assert summary[f"{layout}_bytes_per_point"] > 0  # type: ignore[operator]
        assert summary[f"{layout}_copy_points_per_s"] > 0  # type: ignore[operator]
    # one row and one index entry per point cost more than a row per collection
    assert summary["rows_bytes_per_point"] > summary["batch_rows_bytes_per_point"]  # type: ignore[operator]
    for codec in ("pcodec", "zstd"):  # (the bench checks each round trip bit for bit)
        assert summary[f"{codec}_bytes_per_value"] > 0  # type: ignore[operator]

"""The benchmarks end to end, small: the harness itself must not rot.

Its figures are not asserted (a benchmark measures, it does not pass or fail on speed); what is
asserted is the contract: the JSON last line, the verification, the files of the results folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from fleetpulse.embedded import EmbeddedPostgres

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
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
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
    summary = _bench(
        [
            "connections",
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
    assert summary["client_errors"] == {}
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
    sizes = ["--agents", "20", "--series-per-agent", "20", "--raw-hours", "0.5"]
    args = ["queries", *sizes, "--runs", "5", "--warmup", "1", "--data-dir", str(data_dir)]
    first = _bench(args, tmp_path / "first")
    assert {"points", "rollup_1m_rows", "rollup_1h_rows", "database_gb", "errors"} <= first.keys()
    assert {f"{name}_{stat}" for name in QUERY_NAMES for stat in ("p50_ms", "p95_ms")} <= (
        first.keys()
    )
    assert all(isinstance(first[f"{name}_p95_ms"], float) for name in QUERY_NAMES)
    assert first["errors"] == 0 and first["runs"] == 5
    # 20 agents x 20 series x 30 minutes x 6 points, seeded in this run
    assert first["seeded_now"] is True and first["points"] == 20 * 20 * 30 * 6
    # Run again: the dataset is reused (topped up to the current minute, if it moved on).
    second = _bench(args, tmp_path / "second")
    assert second["seeded_now"] is False and second["errors"] == 0
    assert second["points"] >= first["points"]  # type: ignore[operator]

    pg = EmbeddedPostgres(data_dir)
    try:
        url = make_conninfo(pg.start(), dbname="fleetpulse_bench_queries")
        with psycopg.connect(url) as conn:

            def one(query: str) -> object:
                row = conn.execute(query).fetchone()
                assert row is not None
                return row[0]

            assert one("SELECT points FROM bench_dataset") == second["points"]
            assert one("SELECT count(*) FROM all_points") == second["points"]
            assert one("SELECT count(*) FROM series") == 20 * 20
            # The minute tier over the raw window counts exactly the raw points, and equals a
            # rollup of them (count, sum, min, max, last, last_ts), as the rollup job computes it.
            assert (
                one(
                    "SELECT sum(count) FROM rollup_1m r, bench_dataset d WHERE r.bucket >= d.raw_start"
                )
                == second["points"]
            )
            assert (
                one("""
                SELECT count(*) FROM (
                    SELECT series_id, date_trunc('minute', ts) AS bucket, count(*) AS n,
                        sum(value) AS s, min(value) AS lo, max(value) AS hi,
                        (array_agg(value ORDER BY ts DESC))[1] AS last, max(ts) AS last_ts
                    FROM all_points GROUP BY 1, 2
                ) m JOIN rollup_1m r USING (series_id, bucket)
                WHERE r.count <> m.n OR abs(r.sum - m.s) > 1e-9 * abs(m.s) + 1e-9
                    OR r.min <> m.lo OR r.max <> m.hi OR r.last <> m.last OR r.last_ts <> m.last_ts
            """)
                == 0
            )
            # Every hour of the minute tier's window equals its minutes; seven days of hours.
            assert (
                one("""
                SELECT count(*) FROM (
                    SELECT series_id, date_trunc('hour', bucket) AS bucket, sum(count) AS n,
                        sum(sum) AS s, min(min) AS lo, max(max) AS hi, max(last_ts) AS last_ts
                    FROM rollup_1m GROUP BY 1, 2
                ) m JOIN rollup_1h r USING (series_id, bucket)
                WHERE r.count <> m.n OR abs(r.sum - m.s) > 1e-9 * abs(m.s) + 1e-9
                    OR r.min <> m.lo OR r.max <> m.hi OR r.last_ts <> m.last_ts
            """)
                == 0
            )
            assert one("SELECT count(*) FROM rollup_1m") == second["rollup_1m_rows"]
            assert one("SELECT count(*) FROM rollup_1h") == second["rollup_1h_rows"]
            assert one("SELECT count(DISTINCT bucket) FROM rollup_1h") >= 7 * 24  # type: ignore[operator]
    finally:
        pg.stop()


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

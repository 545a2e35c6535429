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

import pytest

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
        ["agent", "--interval", "0.5", "--duration", "3", "--warmup", "2", "--scrapes", "2"],
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

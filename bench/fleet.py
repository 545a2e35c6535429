"""``fleetpulse bench fleet``: simulate a fleet against the whole platform and measure it.

One run: start the platform (embedded servers by default, or servers given by URL, or an already
running front-end with ``--target``), spread N simulated agents over simulator processes, send for
``--duration`` seconds (or, with ``--until-stopped``, until SIGTERM or SIGINT) while printing live
figures, stop sending, let every agent resend until all its batches are acknowledged, wait until
PostgreSQL has caught up, then verify per agent and per batch that what was stored is exactly what
was sent (verify.py), measure the two anchors on the run's own rows, and write
``<results-dir>/<timestamp>/``. The last line on stdout is one JSON object with the headline
figures. A run with any missing or duplicated batch exits with status 1.

``--until-stopped`` makes the bench a load generator with a verdict for as long as something else
needs it (the fault-injection suite runs it beside every fault): the live figures survive the
platform's servers going away and coming back, and the first signal ends the sending, not the run.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import secrets
import shlex
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import psycopg
from pydantic import SecretStr

from fleetpulse.bench import anchors, disk, report, simagent
from fleetpulse.bench.ports import free_port
from fleetpulse.bench.report import progress
from fleetpulse.bench.resources import ResourceSampler, processes_named
from fleetpulse.bench.simulator import (
    ACKED_POINTS,
    AGENT_KIND,
    NFIELDS,
    REFUSED,
    SENT_BATCHES,
    SENT_POINTS,
    STREAM_ERRORS,
    AgentResult,
    SimConfig,
    simulator_main,
)
from fleetpulse.bench.stats import percentile
from fleetpulse.bench.verify import CommitWatch, verify
from fleetpulse.connections import pg_connect
from fleetpulse.errors import ConfigError
from fleetpulse.settings import Settings, load_settings
from fleetpulse.supervisor import Supervisor

log = logging.getLogger(__name__)

# After the senders stop, the queue drains into PostgreSQL; verification waits for as long as
# commits progress, and gives up (reporting the rest as missing) after this long without progress.
CATCH_UP_STALL_S = 60.0
ANCHOR_MAX_ROWS = 10_000_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mode", choices=["saturate", "realistic"], default="saturate")
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--duration", type=float, default=30.0, help="measured window, seconds")
    parser.add_argument(
        "--until-stopped",
        action="store_true",
        help="send until SIGTERM or SIGINT instead of for --duration seconds (the measured window "
        "runs from the end of the warm-up to the signal), then drain, verify and report as "
        "usual; a second signal aborts. The live figures ride out a PostgreSQL restart, so the "
        "run can be load beside a fault test (tests/faults)",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="seconds of sending before the measured window (default: ramp + one interval in "
        "realistic mode, ramp + 5 s in saturate mode): agents connect and create their series",
    )
    parser.add_argument("--series", type=int, default=200, help="series per agent")
    parser.add_argument(
        "--interval", type=float, default=10.0, help="realistic mode: seconds between batches"
    )
    parser.add_argument("--heartbeat-interval", type=float, default=10.0)
    parser.add_argument(
        "--window", type=int, default=1, help="saturate mode: batches in flight per agent"
    )
    parser.add_argument(
        "--form",
        choices=["columnar", "rows"],
        default="columnar",
        help="batch form: columnar (the project's agent) or rows (the original protocol)",
    )
    parser.add_argument(
        "--values",
        choices=["host", "walk"],
        default="host",
        help="the agents' values: host (shaped and rounded like a host's, bench/hostseries.py) or"
        " walk (full-precision random walks: the worst case of every codec)",
    )
    parser.add_argument("--processes", type=int, default=2, help="simulator processes")
    parser.add_argument(
        "--workers", type=int, default=2, help="worker processes of the platform it starts"
    )
    parser.add_argument(
        "--ramp", type=float, default=None, help="seconds over which agents connect"
    )
    parser.add_argument(
        "--target", help="gRPC address of a running platform (needs --database-url)"
    )
    parser.add_argument("--database-url", help="PostgreSQL URL (env FLEETPULSE_DATABASE_URL)")
    parser.add_argument("--redis-url", help="Redis URL (env FLEETPULSE_REDIS_URL)")
    parser.add_argument("--results-dir", type=Path, default=Path("bench/results"))
    parser.add_argument(
        "--no-anchors", action="store_true", help="skip the COPY and VictoriaMetrics anchors"
    )
    parser.add_argument(
        "--no-compress",
        action="store_true",
        help="measure bytes per point as the run leaves them, without compressing its hours"
        " (which waits for the run's last minute to close)",
    )
    parser.add_argument(
        "--data-dir", type=Path, help="embedded servers' data (default: a temporary dir)"
    )


class Platform:
    """The platform under test: started here (and stopped after), or given by --target."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.supervisor: Supervisor | None = None
        self._temp_dir: str | None = None
        settings = load_settings(database_url=args.database_url, redis_url=args.redis_url)
        if args.target:
            settings.require("database_url", "enrollment_token")
            assert settings.database_url and settings.enrollment_token
            self.target = args.target
            self.database_url = settings.database_url
            self.token = settings.enrollment_token.get_secret_value()
            self.description = f"running platform at {self.target}"
            return
        data_dir = args.data_dir
        if data_dir is None:
            self._temp_dir = tempfile.mkdtemp(prefix="fleetpulse-bench-")
            data_dir = Path(self._temp_dir)
        settings = settings.model_copy(
            update={
                "data_dir": data_dir,
                "grpc_port": free_port(),
                "api_port": free_port(),
                "enrollment_token": settings.enrollment_token
                or SecretStr(secrets.token_urlsafe(24)),
                # The data path alone, as every figure of this bench measured it: the rules' cost
                # is `bench rules`'; and the processes' own batches, arriving every 15 s, would
                # keep the run's last minute open, which the compression at the end waits for.
                "rules_evaluate": False,
                "self_metrics_interval_s": 0.0,
            }
        )
        self.supervisor = Supervisor(
            settings,
            agents=0,
            workers=args.workers,
            collect_interval_s=10.0,
            log_level="warning",
            out=sys.stderr,
        )
        self.supervisor.start(banner=False)
        started: Settings = self.supervisor.settings
        assert started.database_url and started.enrollment_token
        self.target = f"127.0.0.1:{started.grpc_port}"
        self.database_url = started.database_url
        self.token = started.enrollment_token.get_secret_value()
        pids = self.supervisor.component_pids()
        pg = "embedded PostgreSQL 16" if "postgres" in pids else "external PostgreSQL"
        rd = "embedded Redis 6.2" if "redis" in pids else "external Redis"
        self.description = f"started by the bench: {pg}, {rd}, {self.supervisor.workers} workers"

    def components(self) -> dict[str, tuple[list[int], bool]]:
        if self.supervisor is None:
            return {}
        pids = self.supervisor.component_pids()
        found: dict[str, tuple[list[int], bool]] = {
            "front-end": (pids.get("ingest", []), True),
            "workers": (pids.get("workers", []), True),
            "api": (pids.get("api", []), True),
        }
        found["postgres"] = (
            (pids["postgres"], True) if "postgres" in pids else (processes_named("postgres"), False)
        )
        found["redis"] = (
            (pids["redis"], True) if "redis" in pids else (processes_named("redis-server"), False)
        )
        return found

    def check(self) -> None:
        if self.supervisor is not None and (failed := self.supervisor.failed_child()) is not None:
            raise RuntimeError(f"platform component died during the run: {failed}")

    def stop(self) -> None:
        if self.supervisor is not None:
            self.supervisor.shutdown()
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)


ROLLUP_CATCH_UP_S = 90.0


def _rollup_lags(conn: psycopg.Connection, since: datetime, platform: Any) -> np.ndarray:
    """Lag of every minute recomputed during the run (rollup_log), once the closed ones are done.

    The lag runs from the later of the minute's close and the newest commit that marked it, to
    its recompute: how long a dashboard waits for a closed minute's rollup."""
    deadline = time.monotonic() + ROLLUP_CATCH_UP_S
    while time.monotonic() < deadline:
        row = conn.execute(
            "SELECT count(*) FROM rollup_dirty WHERE tier = 1 AND bucket <= now() - interval '1 minute'"
        ).fetchone()
        if row is not None and row[0] == 0:
            break
        platform.check()
        time.sleep(0.5)
    rows = conn.execute(
        "SELECT lag_s FROM rollup_log WHERE tier = 1 AND done_at >= %s", (since,)
    ).fetchall()
    return np.array([r[0] for r in rows], dtype=np.float64)


def run(args: argparse.Namespace) -> int:
    """`fleetpulse bench fleet`: one run; the last stdout line is its summary as JSON."""
    result = measure(args)
    print(json.dumps(result["summary"]))
    return 0 if result["verified"] else 1


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """One fleet run, written to its results folder; returns the full result."""
    if args.agents < 1 or args.duration <= 0 or args.processes < 1:
        raise ConfigError("--agents, --duration and --processes must be positive")
    started_at = datetime.now(UTC)
    run_id = started_at.strftime("%H%M%S") + secrets.token_hex(2)
    prefix = simagent.agent_prefix(AGENT_KIND, run_id)
    command = (
        f"fleetpulse bench fleet --mode {args.mode} --agents {args.agents}"
        + (" --until-stopped" if args.until_stopped else f" --duration {args.duration:g}")
        + (f" --warmup {args.warmup:g}" if args.warmup is not None else "")
        + f" --series {args.series} --interval {args.interval:g} --form {args.form}"
        + f" --values {args.values}"
        + f" --processes {args.processes}"
        + f" --workers {args.workers}"
        + (f" --target {shlex.quote(args.target)}" if args.target else "")
    )
    processes = min(args.processes, args.agents)
    ramp_s = args.ramp if args.ramp is not None else min(30.0, args.agents / 1000)
    if args.warmup is None:
        args.warmup = ramp_s + (args.interval if args.mode == "realistic" else 5.0)
    total_s = args.warmup + args.duration
    # Set by the first SIGTERM/SIGINT of an --until-stopped run (a plain flag: a signal handler
    # must not take a lock the main thread may hold).
    stop_requested = False

    def interrupted(signum: int, frame: object) -> None:
        nonlocal stop_requested
        if args.until_stopped and not stop_requested:
            stop_requested = True  # stop sending; drain, verify and report follow
            return
        raise KeyboardInterrupt  # unwinds through the finally below, which stops the platform

    signal.signal(signal.SIGTERM, interrupted)
    if args.until_stopped:
        signal.signal(signal.SIGINT, interrupted)
    platform = Platform(args)
    sampler: ResourceSampler | None = None
    sim_procs: list[Any] = []
    try:
        config = SimConfig(
            target=platform.target,
            token=platform.token,
            mode=args.mode,
            run_id=run_id,
            epoch=int(time.time() * 1000),
            series_per_agent=args.series,
            interval_s=args.interval,
            heartbeat_interval_s=args.heartbeat_interval,
            ramp_s=ramp_s,
            window=args.window,
            form=args.form,
            values=args.values,
        )
        ctx = multiprocessing.get_context("spawn")
        stats = ctx.Array("q", processes * NFIELDS, lock=False)
        stop = ctx.Event()
        results_queue = ctx.Queue()
        shares = np.array_split(np.arange(1, args.agents + 1), processes)
        sim_procs = [
            ctx.Process(
                target=simulator_main,
                args=(config, range(int(s[0]), int(s[-1]) + 1), stats, i, stop, results_queue),
                daemon=True,
            )
            for i, s in enumerate(shares)
        ]
        components = platform.components

        def all_components() -> dict[str, tuple[list[int], bool]]:
            found = components()
            found["simulator"] = ([p.pid for p in sim_procs if p.pid is not None], False)
            found["bench"] = ([os.getpid()], False)
            return found

        sampler = ResourceSampler(all_components)
        watch = CommitWatch(platform.database_url, prefix)
        for proc in sim_procs:
            proc.start()
        t0 = time.monotonic()
        window_start_ns = window_end_ns = 0
        timeline: list[dict[str, Any]] = []
        last = (0, 0, 0)
        next_tick = t0 + 1

        def sending() -> bool:
            if args.until_stopped:
                return not stop_requested
            return time.monotonic() < t0 + total_s

        while sending():
            # In slices, so that a stop request (--until-stopped) is seen at once.
            while not stop_requested and (now := time.monotonic()) < next_tick:
                time.sleep(min(0.1, next_tick - now))
            if stop_requested:
                break
            next_tick += 1
            platform.check()
            if not window_start_ns and time.monotonic() >= t0 + args.warmup:
                window_start_ns = time.time_ns()
                sampler.start()  # resources are measured over the window only
            sent_points = sum(stats[i * NFIELDS + SENT_POINTS] for i in range(processes))
            acked_points = sum(stats[i * NFIELDS + ACKED_POINTS] for i in range(processes))
            sent_batches = sum(stats[i * NFIELDS + SENT_BATCHES] for i in range(processes))
            _, committed_points = watch.committed()
            elapsed = time.monotonic() - t0
            timeline.append(
                {
                    "t_s": round(elapsed, 2),
                    "sent_per_s": sent_points - last[0],
                    "accepted_per_s": acked_points - last[1],
                    "committed_per_s": committed_points - last[2],
                    "sent_points": sent_points,
                    "accepted_points": acked_points,
                    "committed_points": committed_points,
                }
            )
            last = (sent_points, acked_points, committed_points)
            phase = "measuring" if window_start_ns else "warm-up  "
            if args.until_stopped:
                clock = f"{phase} {elapsed:5.0f}s (until stopped)"
            else:
                bar = "#" * int(min(1.0, elapsed / total_s) * 30)
                clock = f"[{bar:<30}] {phase} {elapsed:5.0f}/{total_s:.0f}s"
            progress(
                f"{clock}  batches {sent_batches:,}  "
                f"points/s sent {timeline[-1]['sent_per_s']:,} accepted {timeline[-1]['accepted_per_s']:,} "
                f"committed {timeline[-1]['committed_per_s']:,}"
            )
        window_end_ns = time.time_ns()
        if not window_start_ns:
            window_start_ns = window_end_ns
            sampler.start()
        stop.set()
        results: list[AgentResult] = []
        for _ in sim_procs:
            results += results_queue.get(timeout=120)
        for proc in sim_procs:
            proc.join(30)
        resources = sampler.stop()
        sampler = None
        refused = sum(stats[i * NFIELDS + REFUSED] for i in range(processes))
        stream_errors = sum(stats[i * NFIELDS + STREAM_ERRORS] for i in range(processes))
        acked_batches = sum(r.batches_acked for r in results)
        committed = watch.committed()
        progressed_at, drain_started = time.monotonic(), time.monotonic()
        while committed[0] < acked_batches and time.monotonic() - progressed_at < CATCH_UP_STALL_S:
            platform.check()
            time.sleep(0.5)
            previous, committed = committed, watch.committed()
            if committed[0] > previous[0]:
                progressed_at = time.monotonic()
            progress(
                f"draining: {committed[0]:,}/{acked_batches:,} batches committed "
                f"({time.monotonic() - drain_started:.0f} s after the senders stopped)"
            )
        progress(
            f"sent {sum(r.batches_sent for r in results):,} batches; committed {committed[0]:,}; verifying",
            final=True,
        )
        watch.close()
        conn = pg_connect(platform.database_url, autocommit=True)
        check = verify(conn, prefix, results)
        rejects = conn.execute(
            "SELECT reason, sum(batches)::int8, sum(points)::int8 FROM rejects WHERE agent_id LIKE %s GROUP BY reason",
            (prefix + "%",),
        ).fetchall()
        rollup_lags = _rollup_lags(conn, started_at, platform)
        conn.close()
        hot = disk.bytes_per_point(platform.database_url)

        ceiling = vm = None
        if not args.no_anchors:
            progress(
                "anchors: binary COPY ceiling and VictoriaMetrics on the run's rows", final=True
            )
            rows = anchors.fetch_run_rows(platform.database_url, prefix, ANCHOR_MAX_ROWS)
            if rows.rows:
                ceiling = anchors.copy_ceiling(
                    platform.database_url,
                    prefix,
                    f"bench_copy_ceiling_{run_id}",
                    ANCHOR_MAX_ROWS // 100,
                )
                vm = anchors.victoriametrics(rows)
        compressed: dict[str, Any] = {}
        # Only a platform the bench started is its own to compress: beside --target or as the
        # load of another test (--until-stopped), its hours are someone else's data.
        if not (args.no_compress or args.target or args.until_stopped):
            progress("compressing the run's hours as the job does once they are old", final=True)
            compressed = disk.compress_run(platform.database_url)
        stored = disk.bytes_per_point(platform.database_url) if compressed else hot
    finally:
        if sampler is not None:
            sampler.stop()
        for proc in sim_procs:
            if proc.is_alive():
                proc.kill()
        platform.stop()

    batches: pl.DataFrame = check.pop("batches")
    window_s = max(1e-9, (window_end_ns - window_start_ns) / 1e9)
    in_window = batches.filter(
        pl.col("send_ns").is_between(window_start_ns, window_end_ns, closed="left")
    )
    committed_in_window = batches.filter(
        pl.col("committed_us").is_between(
            window_start_ns // 1000, window_end_ns // 1000, closed="left"
        )
    )
    freshness_s = (
        in_window.filter(pl.col("committed_us").is_not_null())
        .select((pl.col("committed_us") - pl.col("send_ns") // 1000) / 1e6)
        .to_series()
        .to_numpy()
    )
    span_s = max(1e-9, (check["last_commit_us"] - check["first_send_us"]) / 1e6)
    summary: dict[str, Any] = {
        "mode": args.mode,
        "agents": args.agents,
        "series_per_agent": args.series,
        # --until-stopped: the measured window as it turned out
        "duration_s": round(window_s, 2) if args.until_stopped else args.duration,
        "warmup_s": args.warmup,
        "sent_batches": check["sent_batches"],
        "stored_batches": check["ledger_batches"],  # of those sent: in the ledger
        "sent_points": check["sent_points"],
        "accepted_points": sum(r.batches_acked * r.points_per_batch for r in results),
        "committed_points": check["stored_points"],
        # the measured window: after warm-up, before the senders stop
        "sent_points_per_s": round(int(in_window["points"].sum()) / window_s),
        "committed_points_per_s": round(int(committed_in_window["points"].sum()) / window_s),
        # the whole run, from the first send to the last commit (ramp, warm-up and drain included)
        "committed_points_per_s_overall": round(check["stored_points"] / span_s),
        "missing_batches": check["missing_batches"],
        "duplicate_batches": check["duplicate_batches"],
        "unexpected_batches": check["unexpected_batches"],
        "unacked_batches": sum(r.batches_sent - r.batches_acked for r in results),
        # answers "not now, retry after" (backpressure, queue unavailable): each batch was kept
        # and sent again; and streams that failed (each followed by a reconnect and a replay)
        "refusals": refused,
        "stream_failures": stream_errors,
        "stream_failures_by_reason": dict(
            sum((r.stream_failures for r in results), Counter()).most_common(10)
        ),
        "freshness_p50_s": percentile(freshness_s, 50),
        "freshness_p95_s": percentile(freshness_s, 95),
        "freshness_p99_s": percentile(freshness_s, 99),
        "freshness_max_s": percentile(freshness_s, 100),
        # closed minutes recomputed into rollup_1m during the run, and how long each waited
        "rollup_minutes": len(rollup_lags),
        "rollup_lag_p50_s": percentile(rollup_lags, 50),
        "rollup_lag_p99_s": percentile(rollup_lags, 99),
        "rollup_lag_max_s": percentile(rollup_lags, 100),
        "copy_ceiling_points_per_s": ceiling["points_per_s"] if ceiling else None,
        "victoriametrics_points_per_s": vm["points_per_s"] if vm else None,
        # disk: points and rollup tables with their indexes, per point stored (bench/disk.py),
        # and VictoriaMetrics' for the same samples
        # (after compressing the run's hours, ingest/worker/compress.py; bytes_per_point_hot before)
        "bytes_per_point": stored["bytes_per_point"],
        "bytes_per_point_hot": hot["bytes_per_point"],
        "bytes_per_point_by_table": {
            key.removesuffix("_bytes_per_point"): value
            for key, value in stored.items()
            if key.endswith("_bytes_per_point") and value
        },
        "victoriametrics_bytes_per_point": vm["bytes_per_point"] if vm else None,
        **compressed,
    }
    summary["ratio_to_copy_ceiling"] = (
        round(summary["committed_points_per_s"] / ceiling["points_per_s"], 3) if ceiling else None
    )
    summary["ratio_to_victoriametrics"] = (
        round(summary["committed_points_per_s"] / vm["points_per_s"], 3) if vm else None
    )
    verified = (
        check["missing_batches"] == 0
        and check["duplicate_batches"] == 0
        and check["unexpected_batches"] == 0
    )
    result = {
        "started_at": started_at.isoformat(timespec="seconds"),
        "command": command,
        "machine": report.machine(),
        "platform": platform.description,
        "summary": summary,
        "verified": verified,
        "verification": check,
        "anchors": {"copy_ceiling": ceiling, "victoriametrics": vm},
        "disk": stored,
        "resources": resources,
        "rejects": [{"reason": r, "batches": b, "points": p} for r, b, p in rejects],
        "timeline": timeline,
        "window": {
            "start_ns": window_start_ns,
            "end_ns": window_end_ns,
            "seconds": round(window_s, 2),
        },
        "settings": {k: v for k, v in vars(args).items() if k not in {"handler"}},
    }
    out_dir = args.results_dir / started_at.strftime("%Y%m%dT%H%M%SZ")
    result["results_dir"] = str(out_dir)
    report.write(result, freshness_s, out_dir)
    sys.stderr.write(report.summary_markdown(result) + f"\nresults in {out_dir}\n")
    if not verified:
        log.error(
            "verification FAILED: %d missing, %d duplicate, %d unexpected batches",
            check["missing_batches"],
            check["duplicate_batches"],
            check["unexpected_batches"],
        )
    return result

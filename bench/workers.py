"""``fleetpulse bench workers``: the worker pool alone, from a pre-loaded queue into PostgreSQL.

Redis is loaded with realistic encoded batches (thousands of agents, ~200 series each, the
columnar form by default) exactly as the front-end writes them; then N worker processes drain the
queue into the real schema. Phase one (one batch per agent) creates the series and is reported
apart; phase two is the timed steady state. In the same run, the same rows are COPYed into an
index-less table (the machine's ceiling). The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import redis

from fleetpulse import samples
from fleetpulse.bench import anchors, disk, report, simagent
from fleetpulse.bench.encoder import BatchEncoder, ColumnarEncoder
from fleetpulse.bench.hostseries import HostModel, host_series
from fleetpulse.bench.resources import ResourceSampler, processes_named
from fleetpulse.bench.simulator import AGENT_KIND
from fleetpulse.connections import pg_connect, redis_client
from fleetpulse.embedded import EmbeddedPostgres, EmbeddedRedis
from fleetpulse.ingest import keys, queue, seriesbudgets
from fleetpulse.migrate import migrate
from fleetpulse.proto import edge_pb2, metric_pb2
from fleetpulse.settings import load_settings

# Samples rows COPYed again for the ceiling (about 20M points at 200 series).
ANCHOR_MAX_ROWS = 100_000
STREAM_SHARDS = 4
LOAD_PIPELINE = 500
# The flood agents of --flood-agents: flood-<run id>-<n>, apart from the timed agents.
FLOOD_KIND = "flood"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--agents", type=int, default=2000)
    parser.add_argument(
        "--batches",
        type=int,
        default=10,
        help="timed batches per agent (after one warm-up batch), 10 s apart from the start of the"
        " previous clock hour: 359 fill it",
    )
    parser.add_argument("--series", type=int, default=200)
    parser.add_argument("--processes", type=int, default=2, help="worker processes")
    parser.add_argument("--form", choices=["columnar", "rows"], default="columnar")
    parser.add_argument(
        "--no-rollups",
        dest="rollups",
        action="store_false",
        help="run the workers without rollup maintenance (to measure what rollups cost)",
    )
    parser.add_argument(
        "--flood-agents",
        type=int,
        default=0,
        help="agents that invent new series in every batch (a label per request), queued with"
        " the timed batches: what they cost the others (ingest/seriesbudgets.py)",
    )
    parser.add_argument(
        "--flood-series", type=int, default=10_000, help="new series per flood batch"
    )
    parser.add_argument("--database-url")
    parser.add_argument("--redis-url")
    parser.add_argument("--results-dir", type=Path, default=Path("bench/results"))
    parser.add_argument(
        "--no-compress",
        action="store_true",
        help="measure bytes per point as the run leaves them, without compressing its hours"
        " (which waits for the run's last minute to close)",
    )


def _load(
    client: redis.Redis,
    run_id: str,
    args: argparse.Namespace,
    first_seq: int,
    count: int,
    epoch: int,
) -> int:
    """XADD ``count`` batches per agent, as the front-end would; return the points queued."""
    encoder_type = ColumnarEncoder if args.form == "columnar" else BatchEncoder
    form = keys.FORM_COLUMNS if args.form == "columnar" else keys.FORM_ROWS
    points = 0
    pipe = client.pipeline(transaction=False)
    pending = 0
    # The batches fill the clock hour before the run's from its start, 10 s apart, at :05, :15,
    # ... (the warm-up batch first; 359 timed ones fill the hour), so that what chunks cost is
    # measured on whole hours, as the workers' job compresses them. The run's epoch (ms) fixes
    # the hour for both loads.
    base_ns = ((epoch // 3_600_000 - 1) * 3600 - 5) * 1_000_000_000
    seqs = np.arange(first_seq, first_seq + count)
    times_ns = base_ns + seqs * 10_000_000_000
    series = host_series(args.series)
    for index in range(1, args.agents + 1):
        agent_id = simagent.agent_id_for(AGENT_KIND, run_id, index)
        encoder = encoder_type(agent_id, series)
        rng = np.random.default_rng(index)
        values = HostModel(1, args.series, rng, time.time(), noise=rng).values(times_ns / 1e9)
        for column, seq in enumerate(seqs.tolist()):
            raw = encoder.encode(epoch, seq, int(times_ns[column]), values[:, column])
            envelope = edge_pb2.AgentEnvelope.FromString(raw)
            payload = envelope.metric_columns if args.form == "columnar" else envelope.metrics
            fields = queue.entry_fields(
                agent_id, epoch, seq, payload, int(time.time() * 1000), form
            )
            pipe.xadd(keys.stream_key(keys.shard_for(agent_id, STREAM_SHARDS)), fields)
            points += encoder.points
            pending += 1
            if pending >= LOAD_PIPELINE:
                pipe.execute()
                pending = 0
    pipe.execute()
    return points


def _flood(
    client: redis.Redis, run_id: str, args: argparse.Namespace, count: int, epoch: int
) -> int:
    """XADD ``count`` batches per flood agent, each of ``--flood-series`` series never seen
    before, at the timed batches' times (`_load`); return the points queued."""
    points = 0
    pipe = client.pipeline(transaction=False)
    base_ns = ((epoch // 3_600_000 - 1) * 3600 - 5) * 1_000_000_000
    for index in range(1, args.flood_agents + 1):
        agent_id = simagent.agent_id_for(FLOOD_KIND, run_id, index)
        for seq in range(1, count + 1):
            payload = metric_pb2.ColumnarBatch(
                agent_id=agent_id,
                epoch=epoch,
                sequence=seq,
                values=[1.0] * args.flood_series,
                timestamps_ns=[base_ns + (seq + 1) * 10_000_000_000],
                series=metric_pb2.SeriesSet(
                    entries=[
                        metric_pb2.SeriesDef(name="requests", labels={"request_id": f"{seq}-{i}"})
                        for i in range(args.flood_series)
                    ]
                ),
            ).SerializeToString()
            fields = queue.entry_fields(
                agent_id, epoch, seq, payload, int(time.time() * 1000), keys.FORM_COLUMNS
            )
            pipe.xadd(keys.stream_key(keys.shard_for(agent_id, STREAM_SHARDS)), fields)
            points += args.flood_series
        pipe.execute()
    return points


_FLOOD_OUTCOME = f"""
SELECT (SELECT count(*) FROM series WHERE agent_id LIKE %(prefix)s),
    (SELECT coalesce(sum(points), 0) FROM rejects
        WHERE agent_id LIKE %(prefix)s AND reason = '{seriesbudgets.REASON}')
"""  # noqa: S608  # constants only


def _queued(client: redis.Redis) -> int:
    return sum(int(client.xlen(keys.stream_key(s))) for s in range(STREAM_SHARDS))


def _drain(
    client: redis.Redis, workers: list[subprocess.Popen[bytes]], timeout_s: float = 3600
) -> float:
    started = time.monotonic()
    while _queued(client):
        if any(w.poll() is not None for w in workers):
            raise RuntimeError("a worker exited during the benchmark")
        if time.monotonic() - started > timeout_s:
            raise TimeoutError("the queue did not drain")
        time.sleep(0.05)
    return time.monotonic() - started


_CLOSED_MARKS = """
SELECT count(*) FROM rollup_dirty
WHERE (tier = 1 AND bucket <= now() - interval '1 minute')
   OR (tier = 2 AND bucket <= now() - interval '1 hour')
"""


def _rollups_current(
    database_url: str, workers: list[subprocess.Popen[bytes]], timeout_s: float = 1800
) -> float:
    """Seconds until the workers' rollup job has recomputed every closed bucket."""
    started = time.monotonic()
    with pg_connect(database_url, autocommit=True) as conn:
        while True:
            row = conn.execute(_CLOSED_MARKS).fetchone()
            if row is not None and row[0] == 0:
                return time.monotonic() - started
            if any(w.poll() is not None for w in workers):
                raise RuntimeError("a worker exited during the benchmark")
            if time.monotonic() - started > timeout_s:
                raise TimeoutError("the rollups did not catch up")
            time.sleep(0.1)


def _rolled_up(conn: psycopg.Connection, prefix: str) -> int:
    """Points counted by the 1-minute tier for this run's series (all in closed minutes), in
    set_rollup_1m and in the minute chunks the workers' compression may have written."""
    conn.commit()  # the snapshot is a transaction of its own
    with samples.snapshot(conn), conn.cursor(binary=True) as cur:
        row = cur.execute(
            "SELECT coalesce(sum(r.count * cardinality(ss.series_ids)), 0)::int8"
            " FROM set_rollup_1m r JOIN series_sets ss USING (set_id) WHERE ss.agent_id LIKE %s",
            (prefix + "%",),
        ).fetchone()
        chunks = cur.execute(
            "SELECT c.minutes, c.counts, c.width FROM minute_chunks c"
            " JOIN series_sets ss USING (set_id) WHERE ss.agent_id LIKE %s",
            (prefix + "%",),
        ).fetchall()
    compressed = sum(
        int(samples.decode_int64(minutes, counts).sum()) * width
        for minutes, counts, width in chunks
    )
    return (int(row[0]) if row else 0) + compressed


def _profile(stats: dict[str, float], rollup_work: Any, points: int) -> dict[str, Any]:
    """Where the workers' time went during the timed drain (summed over processes), and the
    rollup job's work for the whole run, in seconds and microseconds per timed point."""
    steps = {k[:-2]: v for k, v in stats.items() if k.endswith("_s")}
    if rollup_work is not None:
        steps["rollup_job (all buckets of the run)"] = float(rollup_work[2])
    total = sum(steps.values()) or 1e-9
    return {
        "chunks": int(stats.get("chunks", 0)),
        "steps": {
            step: {
                "seconds": round(seconds, 3),
                "share": round(seconds / total, 3),
                "us_per_point": round(seconds / max(points, 1) * 1e6, 3),
            }
            for step, seconds in steps.items()
        },
        "rollup_buckets": int(rollup_work[0]) if rollup_work else 0,
        "rollup_rows": int(rollup_work[1]) if rollup_work else 0,
    }


def run(args: argparse.Namespace) -> int:
    started_at = datetime.now(UTC)
    run_id = started_at.strftime("%H%M%S") + secrets.token_hex(2)
    prefix = simagent.agent_prefix(AGENT_KIND, run_id)
    settings = load_settings(database_url=args.database_url, redis_url=args.redis_url)
    temp_dir = tempfile.mkdtemp(prefix="fleetpulse-bench-workers-")
    pg = rd = None
    workers: list[subprocess.Popen[bytes]] = []
    try:
        database_url = settings.database_url
        if database_url is None:
            pg = EmbeddedPostgres(Path(temp_dir))
            database_url = pg.start()
        redis_url = settings.redis_url
        if redis_url is None:
            rd = EmbeddedRedis(Path(temp_dir))
            redis_url = rd.start()
        migrate(database_url)
        client = redis_client(redis_url)
        client.delete(keys.SHARDS_KEY)
        queue.ensure_layout(client, STREAM_SHARDS)
        epoch = int(time.time() * 1000)
        env = {
            **os.environ,
            "FLEETPULSE_DATABASE_URL": database_url,
            "FLEETPULSE_REDIS_URL": redis_url,
            "FLEETPULSE_STREAM_SHARDS": str(STREAM_SHARDS),
            "FLEETPULSE_ROLLUPS": "true" if args.rollups else "false",
            # A short block, so a read in flight when the workers are paused returns empty
            # (idle) instead of holding entries through the pause and counting it as read time.
            "FLEETPULSE_WORKER_BLOCK_MS": "100",
        }

        sys.stderr.write(f"loading {args.agents} agents x 1 warm-up batch ...\n")
        warm_points = _load(client, run_id, args, 1, 1, epoch)
        workers = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "fleetpulse",
                    "--log-level",
                    "warning",
                    "worker",
                    "--index",
                    str(i),
                    "--of",
                    str(args.processes),
                ],
                env=env,
            )
            for i in range(1, args.processes + 1)
        ]
        warm_s = _drain(client, workers)
        sys.stderr.write(
            f"warm-up: {args.agents * args.series:,} series created in {warm_s:.1f} s\n"
        )
        sys.stderr.write(f"loading {args.agents} agents x {args.batches} batches ...\n")
        # The workers are paused while the queue fills (SIGSTOP keeps their series caches warm,
        # which a restart would not), so that the timed drain is the only time they work.
        for w in workers:
            os.kill(w.pid, signal.SIGSTOP)
        time.sleep(0.3)  # their blocked reads time out (empty) before the first entry arrives
        try:
            flood_points = _flood(client, run_id, args, args.batches, epoch)
            timed_points = _load(client, run_id, args, 2, args.batches, epoch)
            client.delete(keys.WORKER_STATS_KEY)  # the profile covers the timed drain only
            with pg_connect(database_url, autocommit=True) as conn:
                conn.execute("DELETE FROM rollup_log")
        finally:
            for w in workers:
                os.kill(w.pid, signal.SIGCONT)
        sampler = ResourceSampler(
            lambda: {
                "workers": ([w.pid for w in workers], True),
                "postgres": ([pg.pid], True)
                if pg and pg.pid
                else (processes_named("postgres"), False),
                "redis": ([rd.pid], False)
                if rd and rd.pid
                else (processes_named("redis-server"), False),
            },
            interval_s=0.5,
        )
        sampler.start()
        timed_s = _drain(client, workers)
        raw_stats: Any = client.hgetall(keys.WORKER_STATS_KEY)
        stats = {k.decode(): float(v) for k, v in raw_stats.items()}
        rollup_s = _rollups_current(database_url, workers) if args.rollups else None
        resources = sampler.stop()
        with pg_connect(database_url) as conn:
            row = conn.execute(
                "SELECT coalesce(sum(points_committed), 0)::int8, coalesce(sum(batches_committed), 0)::int8"
                " FROM agent_ingest WHERE agent_id LIKE %s",
                (prefix + "%",),
            ).fetchone()
            assert row is not None
            rolled = _rolled_up(conn, prefix) if args.rollups else None
            rollup_work = conn.execute(
                "SELECT count(*), coalesce(sum(rows), 0), coalesce(sum(took_s), 0) FROM rollup_log"
            ).fetchone()
            flooded = conn.execute(
                _FLOOD_OUTCOME, {"prefix": simagent.agent_prefix(FLOOD_KIND, run_id) + "%"}
            ).fetchone()
            assert flooded is not None
        committed_points, committed_batches = int(row[0]), int(row[1])
        ceiling = anchors.copy_ceiling(
            database_url, prefix, f"bench_copy_ceiling_{run_id}", ANCHOR_MAX_ROWS
        )
        hot = disk.bytes_per_point(database_url)
        compressed: dict[str, Any] = {}
        if not args.no_compress:
            compressed = disk.compress_run(database_url)
        stored = disk.bytes_per_point(database_url) if compressed else hot
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            w.wait(30)
        if rd is not None:
            rd.stop()
        if pg is not None:
            pg.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)

    expected_points = warm_points + timed_points
    summary: dict[str, Any] = {
        "form": args.form,
        "agents": args.agents,
        "series_per_agent": args.series,
        "processes": args.processes,
        "points": timed_points,
        "seconds": round(timed_s, 3),
        "committed_points_per_s": round(timed_points / timed_s),
        "series_created": args.agents * args.series,
        "series_created_per_s": round(args.agents * args.series / warm_s),
        "copy_ceiling_points_per_s": ceiling["points_per_s"],
        "copy_ceiling_rows": ceiling["rows"],  # samples rows, at most anchors_max_rows
        "ratio_to_copy_ceiling": round(timed_points / timed_s / ceiling["points_per_s"], 3),
        "stored_equals_queued": committed_points == expected_points,
        # Agents inventing a new series per point, drained with the timed batches: they keep
        # their series budget's worth (ingest/seriesbudgets.py), the rest is refused and counted.
        "flood_agents": args.flood_agents,
        "flood_points": flood_points,
        "flood_series_stored": int(flooded[0]),
        "flood_points_refused": int(flooded[1]),
        "rollups": args.rollups,
        # After the queue drained: until every closed minute and hour was recomputed.
        "rollups_current_after_s": None if rollup_s is None else round(rollup_s, 3),
        "rollup_points_equal_stored": None if rolled is None else rolled == expected_points,
        # disk: points and rollup tables with their indexes, per point stored (bench/disk.py)
        # (after compressing the run's hours, ingest/worker/compress.py; bytes_per_point_hot before)
        "bytes_per_point": stored["bytes_per_point"],
        "bytes_per_point_hot": hot["bytes_per_point"],
        "bytes_per_point_by_table": {
            key.removesuffix("_bytes_per_point"): value
            for key, value in stored.items()
            if key.endswith("_bytes_per_point") and value
        },
        **compressed,
        # CPU per timed point, from the drain's start until the rollups were current
        **{
            f"{name}_cpu_us_per_point": round(resources[name]["cpu_s"] / timed_points * 1e6, 3)
            for name in ("postgres", "workers")
            if name in resources
        },
    }
    result = {
        "profile": _profile(stats, rollup_work, timed_points),
        "started_at": started_at.isoformat(timespec="seconds"),
        "command": f"fleetpulse bench workers --agents {args.agents} --batches {args.batches} "
        f"--series {args.series} --processes {args.processes} --form {args.form}"
        + ("" if args.rollups else " --no-rollups")
        + (
            f" --flood-agents {args.flood_agents} --flood-series {args.flood_series}"
            if args.flood_agents
            else ""
        ),
        "machine": report.machine(),
        "summary": summary,
        "committed_batches": committed_batches,
        "resources": resources,
        "disk": stored,
    }
    out_dir = args.results_dir / (started_at.strftime("%Y%m%dT%H%M%SZ") + "-workers")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "result.json").write_text(json.dumps(result, indent=2))
    sys.stderr.write(
        json.dumps({"resources": result["resources"], "profile": result["profile"]}, indent=1)
        + f"\nresults in {out_dir}\n"
    )
    print(json.dumps(summary))
    ok = summary["stored_equals_queued"] and summary["rollup_points_equal_stored"] is not False
    return 0 if ok else 1

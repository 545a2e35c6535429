"""``fleetpulse bench remote-write``: Prometheus remote write into the platform, accepted and
committed samples per second, and the CPU each part spends per sample.

The platform is the bench's own: PostgreSQL and Redis (embedded unless URLs are given), the
schema, one ``fleetpulse api`` process with a write key and ``fleetpulse worker --processes N``,
all through the real CLI. The requests are built beforehand, as Prometheus would send them for
``--hosts`` node-exporter-like targets (``hostseries``: the agent's series and realistic values,
plus ``instance`` and ``job``) scraped every ``--interval`` seconds: each scrape's samples, target
after target, cut every ``--samples-per-request`` (Prometheus' ``max_samples_per_send``, 500 by
default in 2.42) into snappy-compressed ``WriteRequest`` bodies. ``--concurrency`` senders (its
shards) post them in order as fast as the endpoint answers 204, and resend a request answered
429 or 503 after its ``Retry-After``, as Prometheus does. A real Prometheus is not the driver
here: one scraping enough targets to load the endpoint would take the machine's two cores itself
(the end-to-end test, tests/e2e/test_remote_write.py, is where a real one writes).

One warm-up scrape first (its series are created, as on a real first contact), then the timed
scrapes. **Accepted**: samples of the timed requests answered 204, over the window from the
first send to the last 204. **Committed**: the same samples over the window from the first send
to the last ledger commit of the run's batches (``batches.committed_at``). CPU is each
component's user+system time from the first timed send until the queue drained, per committed
sample: the API process (decoding, grouping, XADD; the figure beside the gRPC front-end's), the
workers, PostgreSQL, Redis, and this process (the senders). Verification: the stored points equal
the samples sent, none twice. The last stdout line is one JSON object; the exit status is 1 when
the verification fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cramjam
import httpx
import numpy as np

from fleetpulse.bench import report
from fleetpulse.bench.hostseries import HostModel, host_series
from fleetpulse.bench.ports import free_port
from fleetpulse.bench.resources import ResourceSampler, processes_named
from fleetpulse.bench.stats import ms, percentile
from fleetpulse.connections import pg_connect, redis_client
from fleetpulse.embedded import EmbeddedPostgres, EmbeddedRedis
from fleetpulse.errors import ConfigError
from fleetpulse.ingest import keys, queue, remotewrite
from fleetpulse.migrate import migrate
from fleetpulse.proto import remotewrite_pb2
from fleetpulse.settings import load_settings

STREAM_SHARDS = 4
READY_TIMEOUT_S = 60.0
DRAIN_TIMEOUT_S = 600.0
HEADERS = {
    "content-type": "application/x-protobuf",
    "content-encoding": "snappy",
    "x-prometheus-remote-write-version": "0.1.0",
    "user-agent": "fleetpulse-bench-remote-write",
}
DEFAULT_RETRY_AFTER_S = 1.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hosts", type=int, default=100, help="scraped targets (agents)")
    parser.add_argument("--series", type=int, default=200, help="series per target")
    parser.add_argument("--scrapes", type=int, default=20, help="timed scrapes of every target")
    parser.add_argument("--interval", type=float, default=15.0, help="seconds between scrapes")
    parser.add_argument(
        "--samples-per-request", type=int, default=500, help="remote_write max_samples_per_send"
    )
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight (shards)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--database-url", help="PostgreSQL URL (env FLEETPULSE_DATABASE_URL)")
    parser.add_argument("--redis-url", help="Redis URL (env FLEETPULSE_REDIS_URL)")
    parser.add_argument("--results-dir", type=Path, default=Path("bench/results"))


@dataclass
class Body:
    data: bytes
    samples: int


def build_requests(
    hosts: int, series: int, stamps_ms: list[int], per_request: int, run_id: str
) -> list[list[Body]]:
    """Per scrape, its remote-write bodies: every target's series with its values at that
    instant, target after target, cut every ``per_request`` samples."""
    names = host_series(series)
    model = HostModel(hosts, series, np.random.default_rng(7), stamps_ms[0] / 1000)
    values = model.values(np.asarray(stamps_ms, dtype=np.float64) / 1000)  # (hosts*series, t)
    labels = [
        [
            remotewrite_pb2.Label(name=k, value=v)
            for k, v in sorted(
                {
                    "__name__": name,
                    **extra,
                    "instance": f"rw-{run_id}-{host}:9100",
                    "job": "node",
                }.items()
            )
        ]
        for host in range(hosts)
        for name, extra in names
    ]
    scrapes = []
    for column, stamp in enumerate(stamps_ms):
        bodies = []
        for first in range(0, len(labels), per_request):
            request = remotewrite_pb2.WriteRequest(
                timeseries=[
                    remotewrite_pb2.TimeSeries(
                        labels=labels[row],
                        samples=[
                            remotewrite_pb2.Sample(value=values[row, column], timestamp=stamp)
                        ],
                    )
                    for row in range(first, min(first + per_request, len(labels)))
                ]
            )
            compressed = bytes(cramjam.snappy.compress_raw(request.SerializeToString()))
            bodies.append(Body(compressed, len(request.timeseries)))
        scrapes.append(bodies)
    return scrapes


@dataclass
class Sent:
    first_send_at: float = float("inf")  # wall clock
    last_accept_at: float = 0.0
    samples: int = 0
    requests: int = 0
    refused: Counter[int] = field(default_factory=Counter)
    latency_s: list[float] = field(default_factory=list)


async def send(url: str, key: str, bodies: list[Body], concurrency: int) -> Sent:
    """Post every body (in order, ``concurrency`` at a time) until each is answered 204."""
    sent = Sent()
    waiting = deque(bodies)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        timeout=60, limits=limits, auth=("prometheus", key), headers=HEADERS
    ) as client:

        async def shard() -> None:
            while waiting:
                body = waiting.popleft()
                while True:
                    sent.first_send_at = min(sent.first_send_at, time.time())
                    started = time.monotonic()
                    answer = await client.post(url, content=body.data)
                    if answer.status_code == 204:
                        sent.latency_s.append(time.monotonic() - started)
                        sent.samples += body.samples
                        sent.requests += 1
                        sent.last_accept_at = time.time()
                        break
                    if answer.status_code not in (429, 503):
                        raise RuntimeError(f"HTTP {answer.status_code}: {answer.text.strip()}")
                    sent.refused[answer.status_code] += 1
                    delay = answer.headers.get("retry-after")
                    await asyncio.sleep(float(delay) if delay else DEFAULT_RETRY_AFTER_S)

        await asyncio.gather(*(shard() for _ in range(concurrency)))
    return sent


def _queued(client: Any) -> int:
    shards = int(client.get(keys.SHARDS_KEY) or 0)
    return sum(int(client.xlen(keys.stream_key(shard))) for shard in range(shards))


def _drain(client: Any, procs: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while _queued(client):
        if any(p.poll() is not None for p in procs):
            raise RuntimeError("a platform process exited during the benchmark")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the queue did not drain in {DRAIN_TIMEOUT_S:.0f} s")
        time.sleep(0.05)


def _wait_ready(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the API exited with status {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the API did not answer in {READY_TIMEOUT_S:.0f} s")
        time.sleep(0.1)


_OUTCOME = """
SELECT count(*), count(DISTINCT (p.series_id, p.ts))
FROM all_points p JOIN series s USING (series_id)
WHERE s.agent_id LIKE %(prefix)s AND p.ts >= to_timestamp(%(since_s)s)
"""
_LEDGER = """
SELECT count(*), coalesce(sum(points), 0), coalesce(sum(rejected), 0),
       extract(epoch FROM max(committed_at))
FROM batches WHERE epoch = %(epoch)s AND agent_id LIKE %(prefix)s
  AND committed_at >= to_timestamp(%(timed_from_s)s)
"""
_SETS = "SELECT count(*) FROM series_sets WHERE agent_id LIKE %s"
_ROLLUPS = "SELECT coalesce(sum(took_s), 0) FROM rollup_log"


def run(args: argparse.Namespace) -> int:
    """`fleetpulse bench remote-write`: one run; the last stdout line is its summary as JSON."""
    if min(args.hosts, args.series, args.scrapes, args.samples_per_request, args.concurrency) < 1:
        raise ConfigError(
            "--hosts, --series, --scrapes, --samples-per-request and --concurrency must be positive"
        )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request
    started_at = datetime.now(UTC)
    run_id = started_at.strftime("%H%M%S") + secrets.token_hex(2)
    prefix = f"rw-{run_id}-"
    command = (
        f"fleetpulse bench remote-write --hosts {args.hosts} --series {args.series}"
        f" --scrapes {args.scrapes} --interval {args.interval:g}"
        f" --samples-per-request {args.samples_per_request} --concurrency {args.concurrency}"
        f" --workers {args.workers}"
    )
    # The scrapes end a minute ago: every sample is inside the workers' accepted window.
    last_ms = int(time.time() * 1000) - 60_000
    stamps_ms = [
        last_ms - round((args.scrapes - i) * args.interval * 1000) for i in range(args.scrapes + 1)
    ]
    sys.stderr.write(
        f"building {args.scrapes + 1} scrapes of {args.hosts} targets x {args.series} series ...\n"
    )
    scrapes = build_requests(args.hosts, args.series, stamps_ms, args.samples_per_request, run_id)
    warmup, timed = scrapes[0], [body for bodies in scrapes[1:] for body in bodies]

    settings = load_settings(database_url=args.database_url, redis_url=args.redis_url)
    temp_dir = tempfile.mkdtemp(prefix="fleetpulse-bench-remote-write-")
    pg = rd = None
    procs: list[subprocess.Popen[bytes]] = []
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
        queue.ensure_layout(client, STREAM_SHARDS)
        key = secrets.token_urlsafe(24)
        port = free_port()
        env = {
            **os.environ,
            "FLEETPULSE_DATABASE_URL": database_url,
            "FLEETPULSE_REDIS_URL": redis_url,
            "FLEETPULSE_STREAM_SHARDS": str(STREAM_SHARDS),
            "FLEETPULSE_API_PORT": str(port),
            "FLEETPULSE_API_KEYS": secrets.token_urlsafe(24),
            "FLEETPULSE_API_WRITE_KEYS": f"bench:{key}",
        }
        cli = [sys.executable, "-m", "fleetpulse", "--log-level", "warning"]
        api = subprocess.Popen([*cli, "api"], env=env, stdin=subprocess.DEVNULL)
        workers = subprocess.Popen(
            [*cli, "worker", "--processes", str(args.workers)], env=env, stdin=subprocess.DEVNULL
        )
        procs = [api, workers]
        base = f"http://127.0.0.1:{port}"
        _wait_ready(f"{base}/healthz", api)
        url = f"{base}/api/v1/write"

        sys.stderr.write(f"warm-up: {len(warmup)} requests (the targets' series are created)\n")
        asyncio.run(send(url, key, warmup, args.concurrency))
        _drain(client, procs)
        since_s = stamps_ms[1] / 1000  # the timed scrapes' samples
        timed_from_s = time.time()  # the timed requests' ledger rows

        sampler = ResourceSampler(
            lambda: {
                "api": ([api.pid], True),
                "workers": ([workers.pid], True),
                "postgres": ([pg.pid], True)
                if pg and pg.pid
                else (processes_named("postgres"), False),
                "redis": ([rd.pid], False)
                if rd and rd.pid
                else (processes_named("redis-server"), False),
                "senders": ([os.getpid()], False),
            },
            interval_s=0.5,
        )
        client.delete(keys.WORKER_STATS_KEY)  # the workers' profile covers the timed window
        with pg_connect(database_url, autocommit=True) as conn:
            conn.execute("DELETE FROM rollup_log")
        sampler.sample()  # the baseline: its first own sample comes an interval later
        sampler.start()
        total = sum(b.samples for b in timed)
        sys.stderr.write(f"sending {len(timed)} requests, {total:,} samples ...\n")
        sent = asyncio.run(send(url, key, timed, args.concurrency))
        _drain(client, procs)
        resources = sampler.stop()
        raw_stats: Any = client.hgetall(keys.WORKER_STATS_KEY)
        stats = {k.decode(): float(v) for k, v in raw_stats.items()}
        with pg_connect(database_url) as conn:
            rollup_s = (conn.execute(_ROLLUPS).fetchone() or (0,))[0]
            params = {
                "prefix": prefix + "%",
                "since_s": since_s,
                "timed_from_s": timed_from_s,
                "epoch": remotewrite.EPOCH,
            }
            points, distinct = conn.execute(_OUTCOME, params).fetchone() or (0, 0)
            batches, ledger_points, rejected, last_commit_s = conn.execute(
                _LEDGER, params
            ).fetchone() or (0, 0, 0, None)
            sets = (conn.execute(_SETS, (prefix + "%",)).fetchone() or (0,))[0]
        client.close()
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        if rd is not None:
            rd.stop()
        if pg is not None:
            pg.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)

    accept_s = max(1e-9, sent.last_accept_at - sent.first_send_at)
    commit_s = max(1e-9, float(last_commit_s or 0) - sent.first_send_at)
    committed = int(ledger_points)
    summary: dict[str, Any] = {
        "hosts": args.hosts,
        "series_per_host": args.series,
        "scrapes": args.scrapes,
        "samples_per_request": args.samples_per_request,
        "concurrency": args.concurrency,
        "workers": args.workers,
        "requests": sent.requests,
        "samples": sent.samples,
        "accepted_samples_per_s": round(sent.samples / accept_s),
        "committed_samples_per_s": round(committed / commit_s),
        "accept_seconds": round(accept_s, 3),
        "commit_seconds": round(commit_s, 3),
        "request_latency_p50_ms": ms(percentile(sent.latency_s, 50, 6)),
        "request_latency_p99_ms": ms(percentile(sent.latency_s, 99, 6)),
        "refused": {str(k): v for k, v in sorted(sent.refused.items())},
        "batches": int(batches),
        "samples_per_batch": round(committed / batches, 1) if batches else None,
        "series_sets": int(sets),
        "points_stored": int(points),
        "stored_equals_sent": int(points) == sent.samples == committed and not int(rejected),
        "duplicates": int(points) - int(distinct),
        # CPU from the first timed send until the queue drained, per committed sample
        **{
            f"{name}_cpu_us_per_sample": round(usage["cpu_s"] / max(committed, 1) * 1e6, 2)
            for name, usage in resources.items()
        },
        **{
            f"{name}_cpu_percent": usage["cpu_percent_of_one_core"]
            for name, usage in resources.items()
        },
    }
    result = {
        "started_at": started_at.isoformat(timespec="seconds"),
        "command": command,
        "machine": report.machine(),
        "platform": (
            ("embedded PostgreSQL" if pg else "external PostgreSQL")
            + (", embedded Redis" if rd else ", external Redis")
            + f"; one `fleetpulse api`, `fleetpulse worker --processes {args.workers}`"
        ),
        "summary": summary,
        "resources": resources,
        # Where the workers' time went in the timed window (seconds, summed over processes):
        # their chunk steps (ingest/worker/consumer.py) and the rollup job.
        "workers_profile_s": {
            **{k[:-2]: round(v, 3) for k, v in stats.items() if k.endswith("_s")},
            "rollup_job": round(float(rollup_s), 3),
        },
        "worker_chunks": int(stats.get("chunks", 0)),
    }
    out_dir = args.results_dir / (started_at.strftime("%Y%m%dT%H%M%SZ") + "-remote-write")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "result.json").write_text(json.dumps(result, indent=2))
    sys.stderr.write(f"results in {out_dir}\n")
    print(json.dumps(summary))
    return 0 if summary["stored_equals_sent"] and not summary["duplicates"] else 1

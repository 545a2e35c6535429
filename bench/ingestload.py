"""``fleetpulse bench ingest``: how fast one front-end takes batches into Redis, workers aside.

One ``fleetpulse ingest`` process (``frontendproc.py``: its own PostgreSQL, Redis and schema) and
NO workers, so nothing drains the queue and the front-end's own rate is what is measured. N agents,
each on its own grpc.aio channel (its own TCP connection), register, wait until all are registered,
then send pre-encoded realistic batches (``ColumnarEncoder`` over ``hostseries``: ~200 series per
host, the columnar form the project's agent sends) as fast as the front-end acks them, with
``--window`` batches in flight per agent. The window runs from the first batch written to the last
ack read. Afterwards the Redis streams must hold exactly one entry per acked batch: the front-end
acks only after XADD, so an entry fewer would be an ack without its XADD (and one more, an XADD
whose ack never came). The last stdout line is one JSON object; the exit status is 1 when the
queue and the acks disagree or an agent did not finish.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import secrets
import signal
import sys
import time
from array import array
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import redis

from fleetpulse.bench import report, simagent
from fleetpulse.bench.encoder import ColumnarEncoder
from fleetpulse.bench.frontendproc import FrontendProcess
from fleetpulse.bench.hostseries import host_series
from fleetpulse.bench.report import progress
from fleetpulse.bench.resources import machine_busy_s, processes_cpu_s, processes_named
from fleetpulse.bench.stats import int_or_none, ms, percentile
from fleetpulse.connections import redis_client
from fleetpulse.errors import ConfigError
from fleetpulse.ingest import keys

# Live counters, one row of NFIELDS per client process.
READY, SENT, ACKED, REFUSED, FINISHED, FAILED = range(6)
NFIELDS = 6
READY_TIMEOUT_S = 120.0
# Refused batches (a front-end with backpressure) are sent again after the delay it asks for, or this.
DEFAULT_RETRY_AFTER_S = 0.1
AGENT_KIND = "ingest"  # its agents are ingest-<run id>-<n> (simagent.agent_id_for)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--agents", type=int, default=200, help="agents, each on its own channel")
    parser.add_argument("--batches", type=int, default=250, help="batches per agent")
    parser.add_argument(
        "--series", type=int, default=200, help="series per agent (points per batch)"
    )
    parser.add_argument("--window", type=int, default=8, help="batches in flight per agent")
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="give up sending after this many seconds"
    )
    parser.add_argument("--database-url", help="PostgreSQL URL (env FLEETPULSE_DATABASE_URL)")
    parser.add_argument("--redis-url", help="Redis URL (env FLEETPULSE_REDIS_URL)")
    parser.add_argument("--results-dir", type=Path, default=Path("bench/results"))


@dataclass(frozen=True)
class LoadConfig:
    target: str
    token: str
    run_id: str
    epoch: int
    series: int
    batches: int
    window: int


@dataclass
class LoadResult:
    """What one client process observed, returned to the parent at the end."""

    first_send_at: float = float("inf")  # wall clock
    last_ack_at: float = 0.0
    points_acked: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    ack_latency_s: array[float] = field(default_factory=lambda: array("d"))


class LoadAgent(simagent.SimulatedAgent):
    """One agent with its batches encoded in advance; sends them as fast as they are acked."""

    def __init__(
        self, config: LoadConfig, index: int, stats: Any, offset: int, result: LoadResult
    ) -> None:
        super().__init__(AGENT_KIND, config.run_id, index, stats, offset)
        self.config = config
        self._result = result
        encoder = ColumnarEncoder(self.agent_id, host_series(config.series))
        self.points_per_batch = encoder.points
        rng = np.random.default_rng(index)
        values = rng.uniform(0, 100, config.series)
        base_ns = time.time_ns() - (config.batches + 1) * 10_000_000_000
        self.payloads: list[bytes] = []
        for seq in range(1, config.batches + 1):
            values += rng.normal(0, 1, config.series)
            self.payloads.append(
                encoder.encode(config.epoch, seq, base_ns + seq * 10_000_000_000, values)
            )

    async def run(self, start_delay_s: float, go: asyncio.Event) -> None:
        await asyncio.sleep(start_delay_s)
        try:
            async with simagent.session(
                self.config.target, self.config.token, self._register
            ) as call:
                self._count(READY)
                await go.wait()
                await self._send_all(call)
                await call.done_writing()
            self._count(FINISHED)
        except grpc.aio.AioRpcError as exc:
            self._result.errors[exc.code().name] += 1
            self._count(FAILED)
        except simagent.StreamEnded as exc:
            self._result.errors[str(exc)] += 1
            self._count(FAILED)

    async def _send_all(self, call: Any) -> None:
        result = self._result
        pending = deque(range(len(self.payloads)))  # indexes still to send (refused ones again)
        sent_at: dict[int, float] = {}
        acked = 0
        result.first_send_at = min(result.first_send_at, time.time())
        while acked < len(self.payloads):
            while pending and len(sent_at) < self.config.window:
                index = pending.popleft()
                sent_at[index + 1] = time.monotonic()
                await call.write(self.payloads[index])
                self._count(SENT)
            message = await call.read()
            if message is grpc.aio.EOF:
                raise simagent.StreamEnded("server ended the stream before every ack")
            if message.WhichOneof("message") != "metric_ack":
                continue
            ack = message.metric_ack
            started = sent_at.pop(ack.sequence, None)
            if started is None:
                continue
            if ack.success:
                acked += 1
                self._count(ACKED)
                result.points_acked += self.points_per_batch
                result.ack_latency_s.append(time.monotonic() - started)
                result.last_ack_at = max(result.last_ack_at, time.time())
            else:
                self._count(REFUSED)
                pending.appendleft(ack.sequence - 1)
                await asyncio.sleep(ack.retry_after_ms / 1000 or DEFAULT_RETRY_AFTER_S)


async def _load(config: LoadConfig, indexes: range, stats: Any, offset: int, go: Any) -> LoadResult:
    result = LoadResult()
    agents = [LoadAgent(config, index, stats, offset, result) for index in indexes]
    go_here = asyncio.Event()
    tasks = [asyncio.create_task(agent.run(i * 0.005, go_here)) for i, agent in enumerate(agents)]
    # `go` is a multiprocessing.Event set by the parent process: it cannot be awaited.
    while not go.is_set():  # noqa: ASYNC110
        await asyncio.sleep(0.002)
    go_here.set()
    await asyncio.wait(tasks)
    return result


def client_main(
    config: LoadConfig, indexes: range, stats: Any, process_index: int, go: Any, results: Any
) -> None:
    """Entry point of one client process (multiprocessing target)."""
    from fleetpulse.lifecycle import raise_open_files_limit, set_process_title

    set_process_title(f"fleetpulse bench ingest client {process_index + 1}")
    raise_open_files_limit()
    import uvloop

    results.put(uvloop.run(_load(config, indexes, stats, process_index * NFIELDS, go)))


def _queued(client: redis.Redis) -> int:
    """Entries in every batch stream of this Redis database."""
    shards = int(client.get(keys.SHARDS_KEY) or 0)
    return sum(int(client.xlen(keys.stream_key(shard))) for shard in range(shards))


def _sum(stats: Any, processes: int, name: int) -> int:
    return sum(stats[i * NFIELDS + name] for i in range(processes))


def run(args: argparse.Namespace) -> int:
    """`fleetpulse bench ingest`: one run; the last stdout line is its summary as JSON."""
    if min(args.agents, args.batches, args.series, args.window, args.client_processes) < 1:
        raise ConfigError(
            "--agents, --batches, --series, --window and --client-processes must be positive"
        )
    started_at = datetime.now(UTC)
    run_id = started_at.strftime("%H%M%S") + secrets.token_hex(2)
    processes = min(args.client_processes, args.agents)
    command = (
        f"fleetpulse bench ingest --agents {args.agents} --batches {args.batches}"
        f" --series {args.series} --window {args.window} --client-processes {processes}"
    )

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # unwinds through the finally below, which stops everything

    signal.signal(signal.SIGTERM, interrupted)
    frontend = FrontendProcess(args.database_url, args.redis_url)
    clients: list[Any] = []
    try:
        # No worker drains the queue here: backpressure (refusing batches while the queue is
        # over a limit) would stop the run, so its limit is set out of reach.
        frontend.start(settings_env={"FLEETPULSE_INGEST_MAX_QUEUED_ENTRIES": str(10**12)})
        assert frontend.redis_url is not None
        client = redis_client(frontend.redis_url)
        queued_before = _queued(client)
        redis_pids = frontend.backend_pids().get("redis") or processes_named("redis-server")
        config = LoadConfig(
            target=frontend.target,
            token=frontend.token,
            run_id=run_id,
            epoch=int(time.time() * 1000),
            series=args.series,
            batches=args.batches,
            window=args.window,
        )
        ctx = multiprocessing.get_context("spawn")
        stats = ctx.Array("q", processes * NFIELDS, lock=False)
        go = ctx.Event()
        results_queue = ctx.Queue()
        bounds = [round(i * args.agents / processes) for i in range(processes + 1)]
        clients = [
            ctx.Process(
                target=client_main,
                args=(config, range(bounds[i] + 1, bounds[i + 1] + 1), stats, i, go, results_queue),
                daemon=True,
            )
            for i in range(processes)
        ]
        total = args.agents * args.batches
        sys.stderr.write(
            f"front-end {frontend.target} (pid {frontend.pid}); {args.agents} agents x "
            f"{args.batches} batches of {args.series} points ({total:,} batches), encoding and "
            f"registering in {processes} client processes\n"
        )
        for proc in clients:
            proc.start()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while _sum(stats, processes, READY) + _sum(stats, processes, FAILED) < args.agents:
            frontend.check()
            if time.monotonic() > deadline or any(not p.is_alive() for p in clients):
                raise RuntimeError(
                    f"only {_sum(stats, processes, READY)} of {args.agents} agents registered"
                )
            time.sleep(0.1)
        client_pids = [p.pid for p in clients if p.pid is not None]
        cpu_0 = frontend.cpu_s()
        redis_cpu_0, clients_cpu_0 = processes_cpu_s(redis_pids), processes_cpu_s(client_pids)
        machine_0 = machine_busy_s()
        t0 = time.monotonic()
        go.set()
        next_report = t0 + 1
        while _sum(stats, processes, FINISHED) + _sum(stats, processes, FAILED) < args.agents:
            frontend.check()
            if time.monotonic() - t0 > args.timeout:
                raise RuntimeError(
                    f"{_sum(stats, processes, ACKED):,}/{total:,} batches acked after "
                    f"--timeout {args.timeout:g} s"
                )
            time.sleep(0.01)
            if time.monotonic() >= next_report:
                next_report += 1
                progress(
                    f"sending {time.monotonic() - t0:4.0f} s: "
                    f"{_sum(stats, processes, ACKED):,}/{total:,} batches acked"
                )
        elapsed_s = time.monotonic() - t0
        cpu_s = frontend.cpu_s() - cpu_0
        redis_cpu_s = processes_cpu_s(redis_pids) - redis_cpu_0
        clients_cpu_s = processes_cpu_s(client_pids) - clients_cpu_0
        machine_s = machine_busy_s() - machine_0
        finished = _sum(stats, processes, FINISHED)
        acked = _sum(stats, processes, ACKED)
        refused = _sum(stats, processes, REFUSED)
        progress(f"{acked:,}/{total:,} batches acked in {elapsed_s:.2f} s", final=True)
        results: list[LoadResult] = [results_queue.get(timeout=120) for _ in clients]
        for proc in clients:
            proc.join(30)
        queued = _queued(client) - queued_before
        server_metrics = frontend.metrics()
        redis_memory_mb = int(client.info("memory")["used_memory"]) / 2**20
        client.close()
    finally:
        for proc in clients:
            if proc.is_alive():
                proc.kill()
        frontend_description = frontend.description
        frontend.stop()

    window_s = max(
        1e-9, max(r.last_ack_at for r in results) - min(r.first_send_at for r in results)
    )
    points = sum(r.points_acked for r in results)
    errors: Counter[str] = Counter()
    latencies: list[float] = []
    for result in results:
        errors.update(result.errors)
        latencies += result.ack_latency_s
    summary: dict[str, Any] = {
        "agents": args.agents,
        "agents_finished": finished,
        "batches_per_agent": args.batches,
        "series_per_agent": args.series,
        "window_per_agent": args.window,
        "client_processes": processes,
        "batches": acked,
        "points": points,
        "seconds": round(window_s, 3),
        "points_per_s": round(points / window_s),
        "batches_per_s": round(acked / window_s, 1),
        "ack_latency_p50_ms": ms(percentile(latencies, 50, 6)),
        "ack_latency_p99_ms": ms(percentile(latencies, 99, 6)),
        "refused_batches": refused,
        # the front-end's own counters (/metrics): batches it XADDed and acked, refusals by reason
        "server_batches_accepted": int_or_none(
            server_metrics.get("fleetpulse_ingest_batches_accepted_total")
        ),
        "server_rejects": {
            name.split('"')[1]: int(value)
            for name, value in server_metrics.items()
            if name.startswith("fleetpulse_ingest_rejects_total{") and value
        },
        "client_errors": dict(sorted(errors.items())),
        "queued_entries": queued,
        "queued_entries_equal_acked": queued == acked,
        "redis_used_memory_mb": round(redis_memory_mb, 1),
        # CPU from the go signal to the last agent done, in % of one core
        "server_cpu_percent": round(100 * cpu_s / elapsed_s, 1),
        "server_cpu_us_per_batch": round(cpu_s / acked * 1e6, 1) if acked else None,
        "redis_cpu_percent": round(100 * redis_cpu_s / elapsed_s, 1),
        "clients_cpu_percent": round(100 * clients_cpu_s / elapsed_s, 1),
        # every process of the machine (the clients share it; 100 per core)
        "machine_cpu_percent": round(100 * machine_s / elapsed_s, 1),
    }
    result_doc = {
        "started_at": started_at.isoformat(timespec="seconds"),
        "command": command,
        "machine": report.machine(),
        "platform": frontend_description,
        "summary": summary,
    }
    out_dir = args.results_dir / (started_at.strftime("%Y%m%dT%H%M%SZ") + "-ingest")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "result.json").write_text(json.dumps(result_doc, indent=2))
    sys.stderr.write(f"results in {out_dir}\n")
    print(json.dumps(summary))
    return 0 if summary["queued_entries_equal_acked"] and finished == args.agents else 1

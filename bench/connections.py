"""``fleetpulse bench connections``: how many idle, heartbeating agents one front-end holds.

One ``fleetpulse ingest`` process (``frontendproc.py``: its own PostgreSQL, Redis and schema, no
workers), then N simulated agents that only register and heartbeat, as a fleet does between
batches. Each agent has its own grpc.aio channel, hence its own TCP connection
(``grpc.use_local_subchannel_pool``: channels do not share a subchannel), opens the Connect stream
with the enrollment token, registers, then heartbeats every ``--heartbeat-interval`` seconds from a
random phase, reading every ServerMessage. The agents are spread over client processes (at most
``CHANNELS_PER_PROCESS`` each) and connect over ``--ramp`` seconds.

Once every agent is registered (or the connect timeout passed), and one more heartbeat interval
has settled, the window of ``--duration`` seconds measures the front-end: RSS idle (before any
agent) and at steady state, CPU, heartbeats acknowledged, plus established TCP connections on its
port and agents online in PostgreSQL at the end of the window. The last stdout line is one JSON
object; the exit status is 1 when not every agent was connected at the end of the window.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import multiprocessing
import random
import re
import secrets
import signal
import sys
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import psutil

from fleetpulse.bench import report, simagent
from fleetpulse.bench.frontendproc import (
    FrontendProcess,
    raise_open_files_limit_to,
    tcp_established,
)
from fleetpulse.bench.report import progress
from fleetpulse.bench.resources import machine_busy_s, processes_cpu_s, processes_rss_bytes
from fleetpulse.bench.stats import int_or_none, ms, percentile
from fleetpulse.connections import pg_connect
from fleetpulse.errors import ConfigError

# A Python process with grpc.aio holds a few thousand channels comfortably (docs/performance.md).
CHANNELS_PER_PROCESS = 5000
# Live counters, one row of NFIELDS per client process (CONNECTED and SETTING_UP are gauges: agents
# with a registered stream, and agents between opening a stream and its register's answer).
CONNECTED, REGISTERED, HEARTBEATS_SENT, HEARTBEATS_ACKED, FAILURES, SETTING_UP = range(6)
NFIELDS = 6
RETRY_DELAY_MAX_S = 30.0
# Samples of the front-end's /metrics (ingest/frontend/selfmetrics.py).
_SERVER_CONNECTED = "fleetpulse_ingest_connected_agents"
_SERVER_HEARTBEATS = "fleetpulse_ingest_heartbeats_total"
_SERVER_REJECTS = "fleetpulse_ingest_rejects_total{"
# After the agents disconnect: stop waiting for them to be marked offline after this long with no
# progress, and report how many were left online.
OFFLINE_STALL_S = 10.0
MAX_ERROR_KINDS = 30
_ADDRESS = re.compile(r"0x[0-9a-f]+")
AGENT_KIND = "conn"  # its agents are conn-<run id>-<n> (simagent.agent_id_for)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--agents", type=int, default=20_000, help="simulated agents (default 20,000)"
    )
    parser.add_argument("--heartbeat-interval", type=float, default=10.0, help="seconds")
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="front-end processes sharing the port (fleetpulse ingest --processes N; default 1)",
    )
    parser.add_argument(
        "--reconnect-timeout",
        type=float,
        default=300.0,
        help="after the window the front-end is restarted: seconds to wait for every agent to "
        "be back (default 300; 0 skips the restart)",
    )
    parser.add_argument(
        "--duration", type=float, default=60.0, help="measured window, seconds (default 60)"
    )
    parser.add_argument(
        "--client-processes",
        type=int,
        default=None,
        help=f"processes holding the agents' channels (default: {CHANNELS_PER_PROCESS:,} agents each)",
    )
    parser.add_argument(
        "--ramp",
        type=float,
        default=None,
        help="seconds over which agents connect (default: agents / 500)",
    )
    parser.add_argument(
        "--connect-timeout",
        type=float,
        default=None,
        help="seconds after the ramp to wait for every agent to register (default: max(30, ramp))",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=None,
        help="seconds between all connected and the window (default: one heartbeat interval)",
    )
    parser.add_argument(
        "--open-files-limit",
        type=int,
        default=None,
        help="open-files limit for the front-end and clients (default: agents + 1,024, raised "
        "if the bench may; 0 keeps the machine's limit)",
    )
    parser.add_argument("--database-url", help="PostgreSQL URL (env FLEETPULSE_DATABASE_URL)")
    parser.add_argument("--redis-url", help="Redis URL (env FLEETPULSE_REDIS_URL)")
    parser.add_argument("--results-dir", type=Path, default=Path("bench/results"))


@dataclass(frozen=True)
class ClientConfig:
    target: str
    token: str
    run_id: str
    heartbeat_interval_s: float
    ramp_s: float


@dataclass
class ClientResult:
    """What one client process observed, returned to the parent at the end."""

    agents: int
    errors: Counter[str] = field(default_factory=Counter)
    # failed attempts by status code and details (what the server or gRPC said), a few kinds
    error_details: Counter[str] = field(default_factory=Counter)
    connect_s: array[float] = field(default_factory=lambda: array("d"))
    # wall time of each failed attempt, and its code (the run splits them by phase)
    error_at: array[float] = field(default_factory=lambda: array("d"))
    error_codes: list[str] = field(default_factory=list)
    # (wall time of the ack, seconds from heartbeat written to ack read), for the window's RTTs
    ack_at: array[float] = field(default_factory=lambda: array("d"))
    ack_rtt_s: array[float] = field(default_factory=lambda: array("d"))
    # the client process's own pauses for garbage collection (they delay its reads, and so RTTs)
    gc_pause_max_s: float = 0.0
    gc_pause_total_s: float = 0.0

    def note_error(self, code: str, details: str) -> None:
        self.error_at.append(time.time())
        self.error_codes.append(code)
        # Details name addresses and ports: keep the first MAX_ERROR_KINDS kinds, count the rest.
        key = f"{code}: {_ADDRESS.sub('0x...', details)[:240]}"
        if key in self.error_details or len(self.error_details) < MAX_ERROR_KINDS:
            self.error_details[key] += 1
        else:
            self.error_details[f"{code}: (other details)"] += 1


class IdleAgent(simagent.SimulatedAgent):
    """One simulated agent between batches: register, then heartbeats; reconnects on failure."""

    def __init__(
        self, config: ClientConfig, index: int, stats: Any, offset: int, result: ClientResult
    ) -> None:
        super().__init__(AGENT_KIND, config.run_id, index, stats, offset)
        self.config = config
        self._result = result
        self._heartbeat_sent_at = 0.0

    async def run(self, start_delay_s: float) -> None:
        await asyncio.sleep(start_delay_s)
        first_attempt_at = time.monotonic()
        connected_once = False
        retry_delay_s = 0.5
        while True:
            self._count(SETTING_UP)
            setting_up = True
            attempt_at = time.monotonic()
            try:
                async with simagent.session(
                    self.config.target, self.config.token, self._register
                ) as call:
                    self._count(SETTING_UP, -1)
                    setting_up = False
                    if not connected_once:
                        connected_once = True
                        self._result.connect_s.append(time.monotonic() - first_attempt_at)
                    self._count(REGISTERED)
                    self._count(CONNECTED)
                    retry_delay_s = 0.5
                    try:
                        await self._heartbeats(call)
                    finally:
                        self._count(CONNECTED, -1)
            except grpc.aio.AioRpcError as exc:
                self._result.errors[exc.code().name] += 1
                details = str(exc.details())
                if exc.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.INTERNAL):
                    # gRPC's own account (the failed operation, the transport's error), and
                    # whether the stream had registered
                    details += " | " + " ".join(str(exc.debug_error_string()).split())
                    details += " | " + ("before register" if setting_up else "registered")
                    waited_s = time.monotonic() - attempt_at
                    details += (
                        f" | after {10 * int(waited_s // 10)}-{10 * int(waited_s // 10) + 10} s"
                    )
                self._result.note_error(exc.code().name, details)
                server_delay_s = simagent.stream_retry_after_s(exc)
            except simagent.StreamEnded as exc:
                self._result.errors[str(exc)] += 1
                self._result.note_error(str(exc), "")
                server_delay_s = 0.0
            except asyncio.InvalidStateError as exc:
                # grpc.aio's write() on a call that ended meanwhile (the front-end stopped it):
                # the project's agent reconnects on it too (agent/daemon.py).
                self._result.errors["WRITE_AFTER_END"] += 1
                self._result.note_error("WRITE_AFTER_END", str(exc))
                server_delay_s = 0.0
            if setting_up:
                self._count(SETTING_UP, -1)
            self._count(FAILURES)
            # Like the project's agent: jittered exponential backoff, at least what the server asked.
            await asyncio.sleep(max(server_delay_s, random.uniform(0.5, 1.0) * retry_delay_s))
            retry_delay_s = min(RETRY_DELAY_MAX_S, retry_delay_s * 2)

    async def _heartbeats(self, call: Any) -> None:
        interval_s = self.config.heartbeat_interval_s
        reader = asyncio.create_task(self._read(call))
        next_at = time.monotonic() + random.uniform(0, interval_s)  # phases spread like a fleet
        try:
            while True:
                done, _ = await asyncio.wait(
                    (reader,), timeout=max(0.0, next_at - time.monotonic())
                )
                if done:
                    reader.result()  # raises the stream's error status, if any
                    raise simagent.StreamEnded("server closed the stream")
                message = simagent.heartbeat_message(self.agent_id)
                self._heartbeat_sent_at = time.monotonic()
                await call.write(message)
                self._count(HEARTBEATS_SENT)
                next_at += interval_s
        finally:
            reader.cancel()

    async def _read(self, call: Any) -> None:
        while True:
            message = await call.read()
            if message is grpc.aio.EOF:
                return
            if message.WhichOneof("message") == "heartbeat_ack":
                self._count(HEARTBEATS_ACKED)
                self._result.ack_at.append(time.time())
                self._result.ack_rtt_s.append(time.monotonic() - self._heartbeat_sent_at)


async def _hold(
    config: ClientConfig, indexes: range, stats: Any, offset: int, stop: Any
) -> ClientResult:
    result = ClientResult(agents=len(indexes))
    spread_s = config.ramp_s / max(1, len(indexes))
    agents = [IdleAgent(config, index, stats, offset, result) for index in indexes]
    tasks = [
        asyncio.create_task(agent.run(i * spread_s + random.uniform(0, spread_s)))
        for i, agent in enumerate(agents)
    ]
    # `stop` is a multiprocessing.Event set by the parent process: it cannot be awaited.
    while not stop.is_set():  # noqa: ASYNC110
        await asyncio.sleep(0.1)
    for task in tasks:
        task.cancel()
    await asyncio.wait(tasks, timeout=60)
    return result


def client_main(
    config: ClientConfig, indexes: range, stats: Any, process_index: int, stop: Any, results: Any
) -> None:
    """Entry point of one client process (multiprocessing target)."""
    from fleetpulse.lifecycle import raise_open_files_limit, set_process_title

    set_process_title(f"fleetpulse bench connections client {process_index + 1}")
    raise_open_files_limit()  # one socket per agent
    import uvloop

    pauses: list[float] = []
    started = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            pauses.append(time.perf_counter() - started[0])

    gc.callbacks.append(on_gc)
    # A simulated agent must answer the front-end's keepalive pings within 10 s like a host
    # would; a full collection over 5,000 channels' objects paused a client process 6.7 s (20,000
    # agents, 4 processes), and at 50,000 the front-ends ended thousands of streams for
    # ping_timeout. The clients live minutes: no collections (the pauses are still measured).
    gc.disable()
    result = uvloop.run(_hold(config, indexes, stats, process_index * NFIELDS, stop))
    gc.callbacks.remove(on_gc)
    result.gc_pause_max_s = max(pauses, default=0.0)
    result.gc_pause_total_s = sum(pauses)
    results.put(result)


_ONLINE = """
SELECT count(*) FILTER (WHERE status = 'online'),
       count(*) FILTER (WHERE status = 'online' AND last_heartbeat > now() - make_interval(secs => %s))
FROM agents WHERE agent_id LIKE %s
"""


def _online(database_url: str, prefix: str, offline_after_s: float) -> tuple[int, int]:
    """Agents of the run with status online, and those also heartbeating recently enough that
    readers report them online (docs/architecture.md, schema: agents)."""
    with pg_connect(database_url, autocommit=True) as conn:
        row = conn.execute(_ONLINE, (offline_after_s, prefix + "%")).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def _sum(stats: Any, processes: int, name: int) -> int:
    return sum(stats[i * NFIELDS + name] for i in range(processes))


_PORT_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def _check_source_ports(agents: int) -> None:
    """Every agent is a connection from 127.0.0.1 to the one front-end port: each needs a source
    port of its own, from the kernel's ephemeral range (28,232 by default). Past it, connects fail
    and the run stalls (it did at 28,221 of 50,000), so say it before starting."""
    try:
        low, high = (int(v) for v in _PORT_RANGE.read_text().split())
    except (OSError, ValueError):
        return  # not Linux: nothing to check
    # the front-ends' own connections (PostgreSQL, Redis, /metrics) need some too
    if agents + 1000 > high - low + 1:
        raise ConfigError(
            f"{agents:,} agents need as many loopback source ports; this host has "
            f"{high - low + 1:,} (net.ipv4.ip_local_port_range {low}-{high}): widen it, "
            f"for example: sysctl -w net.ipv4.ip_local_port_range="
            f"'{max(1024, 64999 - agents - 5000)} 64999'"
        )


def _reconnect(
    frontend: FrontendProcess,
    stats: Any,
    processes: int,
    args: argparse.Namespace,
    sample: Any,
) -> dict[str, Any]:
    """Restart the front-end (every process) and wait until every agent registered again."""
    if args.reconnect_timeout <= 0:
        return {}
    registered_0 = _sum(stats, processes, REGISTERED)
    failures_0 = _sum(stats, processes, FAILURES)
    restart_at = time.time()
    started = time.monotonic()
    listen_s = frontend.restart()  # its processes are new: their CPU counts from zero
    back = done = False
    while True:
        now = sample("reconnect")
        registered = _sum(stats, processes, REGISTERED) - registered_0
        back = now["connected"] >= args.agents and registered >= args.agents
        if back or time.monotonic() - started > args.reconnect_timeout:
            done = True
        progress(
            f"reconnecting after a front-end restart: {now['connected']:,}/{args.agents:,} "
            f"connected, {now['setting_up']:,} opening a stream, {now['t_s']:.0f} s",
            final=done,
        )
        if done:
            break
        time.sleep(0.5)
    elapsed = time.monotonic() - started
    return {
        "restart_at": restart_at,
        "reconnect_s": round(elapsed, 1) if back else None,
        "listen_s": round(listen_s, 2),
        "connected": now["connected"],
        "registrations_per_s": round(args.agents / elapsed, 1) if back else None,
        "failed_attempts": _sum(stats, processes, FAILURES) - failures_0,
        "server_cpu_s": round(frontend.cpu_s(), 2),
    }


def run(args: argparse.Namespace) -> int:
    """`fleetpulse bench connections`: one run; the last stdout line is its summary as JSON."""
    if args.agents < 1 or args.duration <= 0 or args.heartbeat_interval <= 0:
        raise ConfigError("--agents, --duration and --heartbeat-interval must be positive")
    if args.processes < 1:
        raise ConfigError("--processes must be at least 1")
    _check_source_ports(args.agents)
    started_at = datetime.now(UTC)
    run_id = started_at.strftime("%H%M%S") + secrets.token_hex(2)
    prefix = simagent.agent_prefix(AGENT_KIND, run_id)
    processes = args.client_processes or math.ceil(args.agents / CHANNELS_PER_PROCESS)
    processes = max(1, min(processes, args.agents))
    ramp_s = args.ramp if args.ramp is not None else args.agents / 500
    connect_timeout_s = (
        args.connect_timeout if args.connect_timeout is not None else max(30.0, ramp_s)
    )
    settle_s = args.settle if args.settle is not None else args.heartbeat_interval
    # Each process has its own limit: a front-end process holds its share of the agents, a
    # client process its share of the channels.
    per_process = max(math.ceil(args.agents / args.processes), math.ceil(args.agents / processes))
    wanted_files = (
        args.open_files_limit if args.open_files_limit is not None else per_process + 1024
    )
    files_limit = raise_open_files_limit_to(wanted_files) if wanted_files else None
    command = (
        f"fleetpulse bench connections --agents {args.agents}"
        f" --heartbeat-interval {args.heartbeat_interval:g} --duration {args.duration:g}"
        f" --processes {args.processes} --reconnect-timeout {args.reconnect_timeout:g}"
        f" --client-processes {processes} --ramp {ramp_s:g}"
        + (
            f" --open-files-limit {args.open_files_limit}"
            if args.open_files_limit is not None
            else ""
        )
    )

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # unwinds through the finally below, which stops everything

    signal.signal(signal.SIGTERM, interrupted)
    frontend = FrontendProcess(args.database_url, args.redis_url)
    clients: list[Any] = []
    stop: Any = None
    try:
        frontend.start(
            settings_env={"FLEETPULSE_HEARTBEAT_INTERVAL_S": str(args.heartbeat_interval)},
            processes=args.processes,
        )
        assert frontend.database_url is not None
        time.sleep(2.0)  # let the process finish starting (imports, pools) before the idle figure
        rss_idle = frontend.rss_bytes()
        fds_idle = frontend.open_fds()
        config = ClientConfig(
            target=frontend.target,
            token=frontend.token,
            run_id=run_id,
            heartbeat_interval_s=args.heartbeat_interval,
            ramp_s=ramp_s,
        )
        ctx = multiprocessing.get_context("spawn")
        stats = ctx.Array("q", processes * NFIELDS, lock=False)
        stop = ctx.Event()
        results_queue = ctx.Queue()
        bounds = [round(i * args.agents / processes) for i in range(processes + 1)]
        clients = [
            ctx.Process(
                target=client_main,
                args=(
                    config,
                    range(bounds[i] + 1, bounds[i + 1] + 1),
                    stats,
                    i,
                    stop,
                    results_queue,
                ),
                daemon=True,
            )
            for i in range(processes)
        ]
        sys.stderr.write(
            f"front-end {frontend.target} ({args.processes} process(es), pid {frontend.pid}, "
            "open files limit "
            f"{frontend.open_files_limit():,}); {args.agents:,} agents over {processes} client "
            f"processes, ramp {ramp_s:g} s\n"
        )
        timeline: list[dict[str, Any]] = []

        def sample(phase: str) -> dict[str, Any]:
            """One point of the timeline (result.json): what clients and front-end are at."""
            frontend.check()
            timeline.append(
                {
                    "t_s": round(time.monotonic() - t0, 1),
                    "phase": phase,
                    "connected": _sum(stats, processes, CONNECTED),
                    "setting_up": _sum(stats, processes, SETTING_UP),
                    "registrations": _sum(stats, processes, REGISTERED),
                    "failed_attempts": _sum(stats, processes, FAILURES),
                    "heartbeats_acked": _sum(stats, processes, HEARTBEATS_ACKED),
                    "server_cpu_s": round(frontend.cpu_s(), 2),
                    "server_rss_mb": round(frontend.rss_bytes() / 2**20, 1),
                    "server_open_fds": frontend.open_fds(),
                    "clients_cpu_s": round(processes_cpu_s([p.pid for p in clients if p.pid]), 2),
                    # every process of the machine, since the previous point (200 = both cores)
                    "machine_cpu_percent": round(
                        psutil.cpu_percent() * (psutil.cpu_count() or 1), 1
                    ),
                }
            )
            return timeline[-1]

        cpu_before_ramp = frontend.cpu_s()
        psutil.cpu_percent()  # starts the machine-wide measure of the timeline
        t0 = time.monotonic()
        for proc in clients:
            proc.start()
        deadline = t0 + ramp_s + connect_timeout_s
        while (now := sample("connect"))["connected"] < args.agents:
            if time.monotonic() > deadline:
                break
            progress(
                f"connecting: {now['connected']:,}/{args.agents:,} registered, "
                f"{now['failed_attempts']:,} failed attempts, {now['t_s']:.0f} s"
            )
            time.sleep(1.0)
        connected = now["connected"]
        connect_phase_s = time.monotonic() - t0
        all_connected = connected >= args.agents
        cpu_ramp_s = frontend.cpu_s() - cpu_before_ramp
        progress(
            f"{connected:,}/{args.agents:,} registered after {connect_phase_s:.1f} s; "
            f"settling {settle_s:g} s",
            final=True,
        )
        settle_until = time.monotonic() + settle_s
        while time.monotonic() < settle_until:
            time.sleep(min(1.0, max(0.0, settle_until - time.monotonic())))
            sample("settle")

        client_pids = [p.pid for p in clients if p.pid is not None]
        # First, as it can take up to its timeout (a front-end out of file descriptors cannot
        # accept the scrape); then the window's starting figures, all at once.
        server_heartbeats_0 = frontend.metrics().get(_SERVER_HEARTBEATS)
        acked_0 = _sum(stats, processes, HEARTBEATS_ACKED)
        sent_0 = _sum(stats, processes, HEARTBEATS_SENT)
        failures_0 = _sum(stats, processes, FAILURES)
        cpu_0, clients_cpu_0 = frontend.cpu_s(), processes_cpu_s(client_pids)
        machine_0 = machine_busy_s()
        wall_0, window_0 = time.time(), time.monotonic()
        rss_samples: list[int] = []
        while (elapsed := time.monotonic() - window_0) < args.duration:
            time.sleep(min(1.0, args.duration - elapsed))
            now = sample("window")
            rss_samples.append(frontend.rss_bytes())
            progress(
                f"measuring {elapsed:3.0f}/{args.duration:g} s: {now['connected']:,} connected, "
                f"{now['heartbeats_acked'] - acked_0:,} heartbeats acked, "
                f"RSS {now['server_rss_mb']:,.0f} MB"
            )
        window_s = time.monotonic() - window_0
        wall_1 = time.time()
        cpu_window_s = frontend.cpu_s() - cpu_0
        clients_cpu_window_s = processes_cpu_s(client_pids) - clients_cpu_0
        machine_window_s = machine_busy_s() - machine_0
        acked = _sum(stats, processes, HEARTBEATS_ACKED) - acked_0
        sent = _sum(stats, processes, HEARTBEATS_SENT) - sent_0
        failures_in_window = _sum(stats, processes, FAILURES) - failures_0
        agents_connected = _sum(stats, processes, CONNECTED)
        server_metrics = frontend.metrics()  # after the window's figures (see above)
        rss = frontend.rss_bytes()
        fds = frontend.open_fds()
        established = tcp_established(frontend.port)
        clients_rss = processes_rss_bytes(client_pids)
        status_online, online = _online(frontend.database_url, prefix, 3 * args.heartbeat_interval)
        progress(
            f"window done: {agents_connected:,} connected, {established:,} TCP connections, "
            f"{online:,} online in PostgreSQL",
            final=True,
        )

        reconnect = _reconnect(frontend, stats, processes, args, sample)
        # Disconnect every agent; the front-end marks each offline as its stream closes.
        stop.set()
        # generous: a client cancelling thousands of waiting streams takes a while (a 50,000-agent
        # run lost its results to a 120 s wait)
        results: list[ClientResult] = [results_queue.get(timeout=600) for _ in clients]
        for proc in clients:
            proc.join(30)
        # Every stream is closed now; wait while the front-end keeps marking agents offline.
        disconnect_0 = progressed_at = time.monotonic()
        still_online = status_online
        while still_online and time.monotonic() - progressed_at < OFFLINE_STALL_S:
            time.sleep(0.5)
            previous = still_online
            still_online = _online(frontend.database_url, prefix, 3 * args.heartbeat_interval)[0]
            if still_online < previous:
                progressed_at = time.monotonic()
        offline_after_s = progressed_at - disconnect_0
    finally:
        if stop is not None:
            stop.set()
        for proc in clients:
            if proc.is_alive():
                proc.kill()
        frontend_description = frontend.description
        frontend.stop()

    errors: Counter[str] = Counter()
    by_phase: dict[str, Counter[str]] = {
        "ramp": Counter(),
        "window": Counter(),
        "reconnect": Counter(),
    }
    restart_wall = reconnect.get("restart_at", float("inf"))
    connect_s: list[float] = []
    rtt_in_window: list[float] = []
    error_details: Counter[str] = Counter()
    for result in results:
        errors.update(result.errors)
        error_details.update(result.error_details)
        for at, code in zip(result.error_at, result.error_codes, strict=True):
            phase = "ramp" if at < wall_0 else "window" if at < restart_wall else "reconnect"
            by_phase[phase][code] += 1
        connect_s += result.connect_s
        rtt_in_window += [
            rtt
            for at, rtt in zip(result.ack_at, result.ack_rtt_s, strict=True)
            if wall_0 <= at < wall_1
        ]
    summary: dict[str, Any] = {
        "agents_target": args.agents,
        "agents_connected": agents_connected,
        "agents_online_in_db": online,
        "agents_status_online_in_db": status_online,
        "tcp_connections": established,
        # the front-end's own view (its /metrics): registered streams it holds, heartbeats it acked
        "server_connected_agents": int_or_none(server_metrics.get(_SERVER_CONNECTED)),
        "server_heartbeats_per_s": round(
            (server_metrics[_SERVER_HEARTBEATS] - server_heartbeats_0) / window_s, 1
        )
        if server_heartbeats_0 is not None and _SERVER_HEARTBEATS in server_metrics
        else None,
        "server_rejects": {
            name.split('"')[1]: int(value)
            for name, value in server_metrics.items()
            if name.startswith(_SERVER_REJECTS) and value
        },
        "frontend_processes": args.processes,
        "client_processes": processes,
        "heartbeat_interval_s": args.heartbeat_interval,
        "duration_s": round(window_s, 2),
        "ramp_s": ramp_s,
        "all_connected_after_s": round(connect_phase_s, 2) if all_connected else None,
        "registrations_per_s": round(args.agents / connect_phase_s, 1) if all_connected else None,
        "server_rss_idle_mb": round(rss_idle / 2**20, 1),
        "server_rss_mb": round(rss / 2**20, 1),
        "server_rss_peak_mb": round(max([rss, *rss_samples]) / 2**20, 1),
        "rss_per_agent_kb": round((rss - rss_idle) / 1024 / agents_connected, 2)
        if agents_connected
        else None,
        "server_open_fds": fds,
        "server_open_fds_idle": fds_idle,
        "open_files_limit": files_limit,
        "heartbeats_sent": sent,
        "heartbeats_acked": acked,
        "heartbeats_per_s": round(acked / window_s, 1),
        "heartbeats_expected_per_s": round(args.agents / args.heartbeat_interval, 1),
        "heartbeat_rtt_p50_ms": ms(percentile(rtt_in_window, 50, 6)),
        "heartbeat_rtt_p99_ms": ms(percentile(rtt_in_window, 99, 6)),
        "server_cpu_s": round(cpu_window_s, 2),
        "server_cpu_percent": round(100 * cpu_window_s / window_s, 1),
        # of one core, per 1,000 connected agents
        "server_cpu_percent_per_1k_agents": round(
            100 * cpu_window_s / window_s / (agents_connected / 1000), 2
        )
        if agents_connected
        else None,
        "server_cpu_s_per_1k_heartbeats": round(cpu_window_s / (acked / 1000), 4)
        if acked
        else None,
        "server_cpu_s_connect_phase": round(cpu_ramp_s, 2),
        "clients_cpu_percent": round(100 * clients_cpu_window_s / window_s, 1),
        "clients_rss_mb": round(clients_rss / 2**20, 1),
        "clients_gc_pause_max_ms": round(max(r.gc_pause_max_s for r in results) * 1000, 1),
        # every process of the machine (the clients share it; 100 per core)
        "machine_cpu_percent": round(100 * machine_window_s / window_s, 1),
        "client_errors": dict(sorted(errors.items())),
        "client_errors_ramp": dict(sorted(by_phase["ramp"].items())),
        "client_errors_window": dict(sorted(by_phase["window"].items())),
        "client_errors_reconnect": dict(sorted(by_phase["reconnect"].items())),
        # The front-end restarted (every process) after the window: until every agent was
        # registered again (None: not within --reconnect-timeout, or no restart).
        "reconnect_s": reconnect.get("reconnect_s"),
        "reconnect_listen_s": reconnect.get("listen_s"),
        "reconnect_connected": reconnect.get("connected"),
        "reconnect_registrations_per_s": reconnect.get("registrations_per_s"),
        "reconnect_failed_attempts": reconnect.get("failed_attempts"),
        "server_cpu_s_reconnect": reconnect.get("server_cpu_s"),
        "stream_failures_in_window": failures_in_window,
        "connect_p50_s": percentile(connect_s, 50),
        "connect_p99_s": percentile(connect_s, 99),
        "connect_max_s": percentile(connect_s, 100),
        # After every client disconnected: until the last agent was marked offline in PostgreSQL,
        # and how many never were (status 'online' left behind).
        "offline_in_db_after_disconnect_s": round(offline_after_s, 1),
        "agents_left_online_after_disconnect": still_online,
    }
    result_doc = {
        "started_at": started_at.isoformat(timespec="seconds"),
        "command": command,
        "machine": report.machine(),
        "platform": frontend_description,
        "summary": summary,
        "client_error_details": dict(error_details.most_common()),
        "server_metrics_at_window_end": server_metrics,
        "timeline": timeline,
    }
    out_dir = args.results_dir / (started_at.strftime("%Y%m%dT%H%M%SZ") + "-connections")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "result.json").write_text(json.dumps(result_doc, indent=2))
    sys.stderr.write(f"results in {out_dir}\n")
    print(json.dumps(summary))
    return 0 if agents_connected == args.agents else 1

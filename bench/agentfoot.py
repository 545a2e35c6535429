"""``fleetpulse bench agent``: what the agent costs a host, beside node_exporter on the same host.

A real ``fleetpulse agent`` process (its own config, a state dir under a temp dir) collects every
``--interval`` seconds for ``--duration`` seconds. It runs with the ``Environment=`` lines of the
shipped systemd unit (agent/fleetpulse-agent.service), so the bench measures what a host runs.

It sends to a tiny gRPC sink on loopback, in a process of its own (its CPU is not the agent's):
the sink answers the register, acks every batch at once and reports it committed right after,
and acks heartbeats, as a healthy platform does. So the agent does all of its steady-state work:
collect, encode, fsync to its spool, send, and free its spool on the committed announcement.

Its CPU time (all its threads, from the scheduler's nanosecond account where the kernel keeps
one) over the window divided by the collections made in the window is the CPU per cycle, split
into the main thread and gRPC's threads; its steady RSS (and what it is made of:
anonymous memory vs mapped files such as shared libraries) is read at the end. Series per cycle
are counted by the sink in the batches it received (and checked against the agent's own account).

When Debian's ``prometheus-node-exporter`` is installed, it runs in the same window on a loopback
port and is scraped at the agent's collect interval (as a Prometheus server with that scrape
interval would), so both pay the same price for waking up with cold caches; its CPU per scrape
and its series per scrape (sample lines of the exposition) are reported beside the agent's.

After the run, the CPU of each collector alone (``collector_cpu_ms``) is measured in the bench
process, every collector every round, so a costly one shows whatever its configured interval.
The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent import futures
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from fleetpulse.bench import report
from fleetpulse.bench.nodeexporter import NODE_EXPORTER, NodeExporter

SERVICE_UNIT = Path(__file__).resolve().parent.parent / "agent" / "fleetpulse-agent.service"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--interval", type=float, default=1.0, help="agent collect interval, s")
    parser.add_argument("--duration", type=float, default=30.0, help="measured window, s")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument(
        "--collector-rounds",
        type=int,
        default=20,
        help="rounds of the per-collector cost measurement (in the bench process, after the run)",
    )
    parser.add_argument(
        "--collectors",
        help="comma-separated collectors to enable (default: the agent's default, all)",
    )
    parser.add_argument("--results-dir", type=Path, default=Path("bench/results"))


def _cpu_s(proc: psutil.Process) -> float:
    """CPU time of the process, all threads, in seconds (see ``_thread_cpu_s``)."""
    threads = _thread_cpu_s(proc.pid)
    if threads is not None:
        return sum(threads.values())
    times = proc.cpu_times()
    return float(times.user + times.system)


def _thread_cpu_s(pid: int) -> dict[str, float] | None:
    """CPU time per thread name (``main`` for the main thread), in seconds, from the scheduler's
    own nanosecond account
    (/proc/PID/task/TID/schedstat). user + system from /proc/PID/stat is sampled at the timer
    tick, so a process that wakes briefly many times a second (gRPC's threads) is measured only
    statistically there; None when schedstat is not available."""
    out: dict[str, float] = {}
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                name = "main" if task.name == str(pid) else (task / "comm").read_text().strip()
                run_ns = int((task / "schedstat").read_text().split()[0])
            except (OSError, IndexError, ValueError):
                continue  # a thread that ended meanwhile
            out[name] = out.get(name, 0.0) + run_ns / 1e9
    except OSError:
        return None
    return out or None


def _memory(pid: int) -> dict[str, float]:
    """RSS and its parts (Linux /proc/PID/status), in MiB."""
    fields = {"VmRSS": "rss_mb", "RssAnon": "rss_anon_mb", "RssFile": "rss_file_mb"}
    out: dict[str, float] = {}
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {"rss_mb": round(psutil.Process(pid).memory_info().rss / 2**20, 1)}
    for line in lines:
        key, _, rest = line.partition(":")
        if key in fields:
            out[fields[key]] = round(int(rest.split()[0]) / 1024, 1)
        elif key == "Threads":
            out["threads"] = int(rest.split()[0])
    return out


def _unit_environment(unit: Path = SERVICE_UNIT) -> dict[str, str]:
    """The ``Environment=NAME=value`` settings of the shipped systemd unit."""
    env: dict[str, str] = {}
    try:
        lines = unit.read_text().splitlines()
    except OSError:
        return env
    for line in lines:
        if line.startswith("Environment="):
            for assignment in line.removeprefix("Environment=").split():
                name, _, value = assignment.strip('"').partition("=")
                env[name] = value
    return env


def _account(state_dir: Path) -> tuple[int, int]:
    """(batches, points) the agent says it sent so far, from its own account."""
    data = json.loads((state_dir / "sent.json").read_text())
    epochs = data["epochs"].values()
    return sum(e["batches_sent"] for e in epochs), sum(e["points_sent"] for e in epochs)


# -- the sink: a platform that accepts and commits everything at once ---------------------------


def _sink(ready: Any, counts: Any) -> None:
    """Serve Connect on a loopback port until terminated; counts = [batches, points, bytes]."""
    import grpc

    from fleetpulse.proto import agent_pb2, common_pb2, wire

    registered = agent_pb2.ServerMessage(
        register_response=common_pb2.Response(success=True)
    ).SerializeToString()
    heartbeat_ack = agent_pb2.ServerMessage(
        heartbeat_ack=common_pb2.Response(success=True)
    ).SerializeToString()

    def connect(requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
        for raw in requests:
            message = agent_pb2.AgentMessage.FromString(raw)
            case = message.WhichOneof("message")
            if case == "register":
                yield registered
            elif case == "heartbeat":
                yield heartbeat_ack
            elif case == "metric_columns":
                batch = message.metric_columns
                points = len(batch.series.entries) * len(batch.timestamps_ns)
                with counts.get_lock():
                    counts[0] += 1
                    counts[1] += points
                    counts[2] += len(raw)
                yield agent_pb2.ServerMessage(
                    metric_ack=agent_pb2.MetricAck(
                        success=True, epoch=batch.epoch, sequence=batch.sequence, points=points
                    )
                ).SerializeToString()
                span = agent_pb2.SequenceRange(first=batch.sequence, last=batch.sequence)
                yield agent_pb2.ServerMessage(
                    committed=agent_pb2.Committed(epoch=batch.epoch, ranges=[span])
                ).SerializeToString()
            elif case == "disconnect":
                return

    handler = grpc.method_handlers_generic_handler(
        wire.SERVICE,
        {
            wire.METHOD: grpc.stream_stream_rpc_method_handler(
                connect, request_deserializer=None, response_serializer=None
            )
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    ready.send(port)
    server.wait_for_termination()


def _collector_costs(rounds: int, pause_s: float) -> dict[str, float]:
    """CPU per run of each collector, in ms, measured in this process (``pause_s`` between
    rounds, so caches are as cold as in an agent that sleeps between collections)."""
    from fleetpulse.agent.collectors.scheduler import Scheduler

    scheduler = Scheduler()
    spent = dict.fromkeys(scheduler.collectors, 0.0)
    for _ in range(rounds + 1):
        for name, collector in scheduler.collectors.items():
            started = time.thread_time()
            try:
                collector(scheduler.proc)
            except Exception:  # noqa: S112 - a collector that fails here costs what it costs
                continue
            spent[name] += time.thread_time() - started
        if not _:
            spent = dict.fromkeys(spent, 0.0)  # the first round only primes (open files, baselines)
        time.sleep(pause_s)
    scheduler.close()
    return {name: round(total / rounds * 1000, 3) for name, total in spent.items()}


def run(args: argparse.Namespace) -> int:
    started_at = datetime.now(UTC)
    temp = Path(tempfile.mkdtemp(prefix="fleetpulse-bench-agent-"))
    context = multiprocessing.get_context("spawn")
    counts = context.Array("q", 3)
    receive, send = context.Pipe(duplex=False)
    sink = context.Process(target=_sink, args=(send, counts), daemon=True)
    sink.start()
    if not receive.poll(30):
        sink.terminate()
        raise RuntimeError("the bench's gRPC sink did not start")
    sink_port = receive.recv()
    config = temp / "agent.yaml"
    config.write_text(
        "server:\n"
        f'  address: "127.0.0.1:{sink_port}"\n'
        "agent:\n"
        "  id: bench-agent\n"
        f"  collect_interval: {args.interval}\n"
        f"  state_dir: {temp / 'state'}\n"
    )
    if args.collectors:
        config.write_text(config.read_text() + f"  collectors: [{args.collectors}]\n")
    unit_env = _unit_environment()
    agent = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fleetpulse",
            "--log-level",
            "error",
            "agent",
            "--config",
            str(config),
        ],
        env={"FLEETPULSE_ENROLLMENT_TOKEN": "bench", "PATH": "/usr/bin:/bin", **unit_env},
    )
    node: NodeExporter | None = None
    try:
        if Path(NODE_EXPORTER).exists():
            node = NodeExporter()
        time.sleep(args.warmup)
        ps = psutil.Process(agent.pid)
        if agent.poll() is not None:
            raise RuntimeError(f"the agent exited with status {agent.returncode}")
        with counts.get_lock():
            received_before = counts[:]
        cpu_before, (batches_before, points_before) = _cpu_s(ps), _account(temp / "state")
        threads_before = _thread_cpu_s(agent.pid) or {}
        node_before = _cpu_s(node.ps) if node else 0.0
        # The same window for both: node_exporter is scraped at the agent's collect interval,
        # as a Prometheus server with that scrape interval would.
        scrapes = 0
        ends_at = time.monotonic() + args.duration
        next_at = time.monotonic()
        while (now := time.monotonic()) < ends_at:
            if node is not None and now >= next_at:
                node.scrape()
                scrapes += 1
                next_at += args.interval
            time.sleep(max(0.0, min(next_at, ends_at) - time.monotonic()))
        cpu_after, (batches_after, points_after) = _cpu_s(ps), _account(temp / "state")
        threads_after = _thread_cpu_s(agent.pid) or {}
        node_after = _cpu_s(node.ps) if node else 0.0
        with counts.get_lock():
            received_after = counts[:]
        memory = _memory(agent.pid)
        node_rss_mb = round(node.ps.memory_info().rss / 2**20, 1) if node else None
    finally:
        agent.terminate()
        agent.wait(20)
        if node is not None:
            node.stop()
        sink.terminate()
        sink.join(10)
        shutil.rmtree(temp, ignore_errors=True)
    collector_cpu_ms = _collector_costs(args.collector_rounds, min(args.interval, 1.0))
    cycles = max(1, batches_after - batches_before)
    received = max(1, received_after[0] - received_before[0])
    series = (received_after[1] - received_before[1]) / received
    cpu_ms = (cpu_after - cpu_before) / cycles * 1000
    # The main thread (collect, encode, spool, the asyncio side of gRPC) against gRPC's own
    # threads (its event engine, timer and lifeguard: I/O, and periodic wakeups even when idle).
    main_s = threads_after.get("main", 0.0) - threads_before.get("main", 0.0)
    other_s = sum(threads_after.values()) - sum(threads_before.values()) - main_s
    node_ms = round((node_after - node_before) / scrapes * 1000, 3) if node and scrapes else None
    summary = {
        "cycles": cycles,
        "cpu_ms_per_cycle": round(cpu_ms, 3),
        "main_thread_cpu_ms_per_cycle": round(main_s / cycles * 1000, 3) if threads_after else None,
        "grpc_threads_cpu_ms_per_cycle": round(other_s / cycles * 1000, 3)
        if threads_after
        else None,
        "window_s": args.duration,
        "series_per_cycle": round(series, 1),
        "series_per_cycle_agent_account": round((points_after - points_before) / cycles, 1),
        "batches_received": received,
        "bytes_per_batch": round((received_after[2] - received_before[2]) / received),
        "cpu_us_per_series": round(cpu_ms * 1000 / series, 2) if series else None,
        **memory,
        "agent_env": " ".join(f"{k}={v}" for k, v in unit_env.items()) or None,
        "node_exporter_cpu_ms_per_scrape": node_ms,
        "node_exporter_series": node.series if node else None,
        "node_exporter_cpu_us_per_series": (
            round(node_ms * 1000 / node.series, 2) if node and node_ms is not None else None
        ),
        "node_exporter_rss_mb": node_rss_mb,
        "node_exporter_scrapes": scrapes if node else None,
        "collector_cpu_ms": collector_cpu_ms,
    }
    result = {
        "started_at": started_at.isoformat(timespec="seconds"),
        "command": f"fleetpulse bench agent --interval {args.interval} --duration {args.duration}",
        "machine": report.machine(),
        "summary": summary,
    }
    out_dir = args.results_dir / (started_at.strftime("%Y%m%dT%H%M%SZ") + "-agent")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(summary))
    return 0

"""``fleetpulse bench agent``: what the agent costs a host, beside node_exporter on the same host.

A real ``fleetpulse agent`` process (its own config, a state dir under a temp dir) collects every
``--interval`` seconds for ``--duration`` seconds. It is pointed at a loopback port where nothing
listens, so it does all of its work except the send itself: collect, encode, fsync to its spool,
and keep trying to reconnect (the spool is bounded by its config). Its CPU time (user + system,
psutil) over the window divided by the collections made in the window is the CPU per cycle; its
steady RSS is read at the end. Series per cycle come from the batches it spooled.

When Debian's ``prometheus-node-exporter`` is installed, it runs in the same window on a loopback
port and is scraped ``--scrapes`` times; its CPU per scrape and its series per scrape (sample lines
of the exposition) are reported beside the agent's. The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from fleetpulse.bench import report
from fleetpulse.bench.ports import free_port

NODE_EXPORTER = "/usr/bin/prometheus-node-exporter"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--interval", type=float, default=1.0, help="agent collect interval, s")
    parser.add_argument("--duration", type=float, default=30.0, help="measured window, s")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--scrapes", type=int, default=30, help="node_exporter scrapes")
    parser.add_argument("--results-dir", type=Path, default=Path("bench/results"))


def _cpu_s(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def _spooled(state_dir: Path) -> tuple[int, int]:
    """(batches, points) the agent spooled so far, from its own account."""
    data = json.loads((state_dir / "sent.json").read_text())
    epochs = data["epochs"].values()
    return sum(e["batches_sent"] for e in epochs), sum(e["points_sent"] for e in epochs)


def _node_exporter(scrapes: int) -> dict[str, Any]:
    if not Path(NODE_EXPORTER).exists():
        return {"cpu_ms_per_scrape": None, "series": None, "rss_mb": None}
    port = free_port()
    proc = subprocess.Popen(
        [NODE_EXPORTER, f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        deadline = time.monotonic() + 15
        while True:
            try:
                urllib.request.urlopen(url, timeout=5).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        ps = psutil.Process(proc.pid)
        before = _cpu_s(ps)
        series = 0
        for _ in range(scrapes):
            body = urllib.request.urlopen(url, timeout=10).read().decode()
            series = sum(1 for line in body.splitlines() if line and not line.startswith("#"))
            time.sleep(0.2)
        return {
            "cpu_ms_per_scrape": round((_cpu_s(ps) - before) / scrapes * 1000, 3),
            "series": series,
            "rss_mb": round(ps.memory_info().rss / 2**20, 1),
        }
    finally:
        proc.terminate()
        proc.wait(10)


def run(args: argparse.Namespace) -> int:
    started_at = datetime.now(UTC)
    temp = Path(tempfile.mkdtemp(prefix="fleetpulse-bench-agent-"))
    config = temp / "agent.yaml"
    config.write_text(
        "server:\n"
        f'  address: "127.0.0.1:{free_port()}"\n'  # nothing listens: no send, all else runs
        "agent:\n"
        "  id: bench-agent\n"
        f"  collect_interval: {args.interval}\n"
        f"  state_dir: {temp / 'state'}\n"
    )
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
        env={"FLEETPULSE_ENROLLMENT_TOKEN": "bench", "PATH": "/usr/bin:/bin"},
    )
    try:
        time.sleep(args.warmup)
        ps = psutil.Process(agent.pid)
        cpu_before, (batches_before, points_before) = _cpu_s(ps), _spooled(temp / "state")
        time.sleep(args.duration)
        cpu_after, (batches_after, points_after) = _cpu_s(ps), _spooled(temp / "state")
        rss_mb = ps.memory_info().rss / 2**20
        node = _node_exporter(args.scrapes)
    finally:
        agent.terminate()
        agent.wait(20)
        shutil.rmtree(temp, ignore_errors=True)
    cycles = max(1, batches_after - batches_before)
    series = (points_after - points_before) / cycles
    cpu_ms = (cpu_after - cpu_before) / cycles * 1000
    summary = {
        "cycles": cycles,
        "cpu_ms_per_cycle": round(cpu_ms, 3),
        "series_per_cycle": round(series, 1),
        "cpu_us_per_series": round(cpu_ms * 1000 / series, 2) if series else None,
        "rss_mb": round(rss_mb, 1),
        "node_exporter_cpu_ms_per_scrape": node["cpu_ms_per_scrape"],
        "node_exporter_series": node["series"],
        "node_exporter_cpu_us_per_series": (
            round(node["cpu_ms_per_scrape"] * 1000 / node["series"], 2) if node["series"] else None
        ),
        "node_exporter_rss_mb": node["rss_mb"],
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

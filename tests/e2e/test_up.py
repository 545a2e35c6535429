"""`fleetpulse up --agents 3` as a user runs it: agents online, every sent point stored once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import Backend
from tests.origin_agent import run_origin_agent
from tests.processes import free_port

pytestmark = pytest.mark.e2e


def get_json(url: str, key: str | None = None) -> Any:
    request = urllib.request.Request(url)
    if key is not None:
        request.add_header("Authorization", f"Bearer {key}")
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def api_key(data_dir: Path) -> str:
    """The read key `up` generated (it prints it too)."""
    return (data_dir / "api-key").read_text().strip()


def start_up(args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "fleetpulse", "up", *args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


def wait_until(predicate, timeout_s: float, what: str) -> Any:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except OSError:
            pass
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}; last value: {last!r}")


def processes_using(data_dir: Path) -> list[str]:
    """Embedded PostgreSQL and Redis are not children of `up` (pg_ctl daemonizes): find them by path."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(p.info["cmdline"] or [])
        if str(data_dir) in cmdline:
            found.append(cmdline)
    return found


def stop_and_check_no_orphans(proc: subprocess.Popen[bytes], timeout_s: float) -> float:
    children = psutil.Process(proc.pid).children(recursive=True)
    assert children, "up started no child process"
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout_s) == 0
    elapsed = time.monotonic() - started
    _, alive = psutil.wait_procs(children, timeout=2)
    assert not alive, f"orphans left behind: {[p.cmdline() for p in alive]}"
    return elapsed


def test_up_runs_agents_and_stores_every_point_exactly_once(
    backend: Backend, request: pytest.FixtureRequest, tmp_path: Path, repo_root: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETPULSE_")}
    if backend.name == "external":
        env["FLEETPULSE_DATABASE_URL"] = request.getfixturevalue("database_url")
        env["FLEETPULSE_REDIS_URL"] = request.getfixturevalue("redis_url")
    api_port, grpc_port = free_port(), free_port()
    env["FLEETPULSE_INGEST_METRICS_PORT"] = str(free_port())
    data_dir = tmp_path / "data"
    common = [
        "--data-dir",
        str(data_dir),
        "--api-port",
        str(api_port),
        "--grpc-port",
        str(grpc_port),
    ]
    api = f"http://127.0.0.1:{api_port}"
    log_path = tmp_path / "up.log"

    proc = start_up(
        [*common, "--agents", "3", "--collect-interval", "0.5", "--heartbeat-interval", "1"],
        env,
        log_path,
    )
    try:

        def three_online_with_points() -> list[dict[str, Any]] | None:
            agents = get_json(f"{api}/agents", api_key(data_dir))
            agents = [a for a in agents if a["agent_id"] != "origin-agent"]
            ok = len(agents) == 3 and all(
                a["status"] == "online" and a["points_committed"] > 0 for a in agents
            )
            return agents if ok else None

        agents = wait_until(three_online_with_points, 60, "3 online agents with points")
        # a third-party agent generated from the original .proto files alone, against `up`
        token = (data_dir / "enrollment_token").read_text().strip()
        origin = run_origin_agent(
            repo_root, f"127.0.0.1:{grpc_port}", token, tmp_path, "origin-agent"
        )
        assert origin.returncode == 0, origin.stderr
        assert origin.stdout.split() == [
            "register_response:True",
            "heartbeat_ack:True",
            "heartbeat_ack:True",
        ]
        if backend.name == "embedded":
            assert (
                len(processes_using(data_dir)) >= 2
            )  # postgres and redis-server are found by path
        time.sleep(2)  # let a few more batches flow through the whole path
        elapsed = stop_and_check_no_orphans(proc, timeout_s=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    print(f"up stopped in {elapsed:.1f} s")
    assert processes_using(data_dir) == []
    assert elapsed < 15, f"stopping took {elapsed:.1f} s"

    sent = {}
    for agent in agents:
        report = json.loads((data_dir / "agents" / agent["agent_id"] / "sent.json").read_text())
        (account,) = report["epochs"].values()
        assert account["batches_sent"] == account["batches_acked"] > 0  # flushed before exit
        assert account["batches_dropped"] == 0
        # two-level acks end to end: the workers' commits reached the agent and freed its spool
        assert 0 < account["batches_committed"] <= account["batches_acked"]
        sent[agent["agent_id"]] = account

    # Start again on the same data (nothing running but the API matters here) and compare.
    proc = start_up([*common, "--agents", "0"], env, log_path)
    try:
        wait_until(
            lambda: get_json(f"{api}/healthz")["status"] == "ok", 60, "the API after restart"
        )
        for agent_id, account in sent.items():
            detail = get_json(f"{api}/agents/{agent_id}", api_key(data_dir))
            assert detail["batches_committed"] == account["batches_sent"], (
                agent_id,
                detail,
                account,
            )
            assert detail["points_committed"] == account["points_sent"], (agent_id, detail, account)
            assert detail["last_seq"] == account["last_seq"]
            # Count the rows actually stored, series by series: no loss and no duplicates.
            names = {
                s["name"] for s in get_json(f"{api}/agents/{agent_id}/series", api_key(data_dir))
            }
            stored = 0
            for name in names:
                body = get_json(f"{api}/agents/{agent_id}/points?name={name}", api_key(data_dir))
                stored += sum(len(series["points"]) for series in body["series"])
                for series in body["series"]:
                    stamps = [p[0] for p in series["points"]]
                    assert len(stamps) == len(set(stamps)), f"duplicate points in {agent_id} {name}"
            assert stored == account["points_sent"], (agent_id, stored, account)
        stop_and_check_no_orphans(proc, timeout_s=30)
    finally:
        if proc.poll() is None:
            proc.kill()

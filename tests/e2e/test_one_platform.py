"""One platform per data dir, no port shared with a stranger, and no embedded server left behind
(fleetpulse/datadir.py, fleetpulse/embedded.py): what a user meets who starts `up` twice, kills it,
or stops a benchmark."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from fleetpulse.embedded import _alive
from tests.e2e.test_up import (
    api_key,
    get_json,
    processes_using,
    start_up,
    stop_and_check_no_orphans,
    wait_until,
)
from tests.integration.conftest import TOKEN
from tests.processes import free_port, log_tail

pytestmark = pytest.mark.e2e


@dataclass
class Up:
    proc: subprocess.Popen[bytes]
    data_dir: Path
    api_port: int
    grpc_port: int
    metrics_port: int
    env: dict[str, str]
    log_path: Path

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def args(self) -> list[str]:
        return [
            "--data-dir",
            str(self.data_dir),
            "--api-port",
            str(self.api_port),
            "--grpc-port",
            str(self.grpc_port),
        ]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETPULSE_")}
    return {**env, **extra}


def launch(tmp_path: Path, *extra: str) -> Up:
    metrics_port = free_port()
    up = Up(
        None,  # type: ignore[arg-type]
        tmp_path / "data",
        free_port(),
        free_port(),
        metrics_port,
        clean_env(FLEETPULSE_INGEST_METRICS_PORT=str(metrics_port)),
        tmp_path / "up.log",
    )
    up.proc = start_up([*up.args(), *extra], up.env, up.log_path)
    return up


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Up]:
    """`up` with two agents, once both are online and committing."""
    up = launch(tmp_path, "--agents", "2", "--collect-interval", "0.5", "--heartbeat-interval", "1")
    try:
        wait_until(lambda: len(online_with_points(up)) == 2, 90, "2 agents online with points")
        yield up
        stop_and_check_no_orphans(up.proc, timeout_s=30)
    except BaseException:
        print(log_tail(up.log_path))
        raise
    finally:
        if up.proc.poll() is None:
            up.proc.kill()
            up.proc.wait()


def online_with_points(up: Up) -> dict[str, int]:
    agents = get_json(f"{up.api}/agents", api_key(up.data_dir))
    return {
        a["agent_id"]: a["points_committed"]
        for a in agents
        if a["status"] == "online" and a["points_committed"] > 0
    }


def fleetpulse(
    *args: str, env: dict[str, str], timeout_s: float = 90
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleetpulse", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        stdin=subprocess.DEVNULL,
    )


# What a second `up` would write or replace if it started anything: the lock, the record, the
# secrets, Redis' config, socket and pid file, pgserver's handle list and the postmaster's pid file.
_OWNED = [
    "up.lock",
    "platform.json",
    "enrollment_token",
    "api-key",
    "postgres.lock",
    "redis/redis.lock",
    "redis/redis.conf",
    "redis/redis.sock",
    "redis/redis.pid",
    "postgres/postmaster.pid",
    "postgres/.handle_pids.json",
]


def snapshot(data_dir: Path) -> dict[str, tuple[int, int, int]]:
    state = {}
    for name in _OWNED:
        stat = (data_dir / name).lstat()
        state[name] = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
    return state


def test_a_second_up_is_refused_and_the_first_keeps_working(running: Up, tmp_path: Path) -> None:
    up = running
    before = snapshot(up.data_dir)
    # The same data dir, on the same ports and on ports of its own: refused either way, naming
    # the running one's pid and addresses, before it touches anything.
    for ports in (
        up.args(),
        [
            "--data-dir",
            str(up.data_dir),
            "--api-port",
            str(free_port()),
            "--grpc-port",
            str(free_port()),
        ],
    ):
        second = fleetpulse("up", *ports, "--agents", "2", env=up.env)
        assert second.returncode == 2, second.stderr
        assert "fleetpulse is up" not in second.stdout
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1, second.stderr
        assert f"pid {up.proc.pid}" in lines[0] and "in use" in lines[0]
        assert f"API {up.api}" in lines[0] and f"gRPC 127.0.0.1:{up.grpc_port}" in lines[0]
    assert snapshot(up.data_dir) == before

    # Another data dir on the same ports: refused naming the port, nothing started there.
    other = tmp_path / "other"
    third = fleetpulse(
        "up",
        "--data-dir",
        str(other),
        "--api-port",
        str(free_port()),
        "--grpc-port",
        str(up.grpc_port),
        env=up.env,
    )
    assert third.returncode == 2, third.stderr
    assert f"port {up.grpc_port} (ingest gRPC)" in third.stderr and "--grpc-port" in third.stderr
    assert len(third.stderr.strip().splitlines()) == 1
    assert not (other / "postgres").exists() and not (other / "redis").exists()

    # The first platform still works: its agents commit, its queue answers, its Redis socket
    # takes new connections (a settings change is published through it).
    committed = online_with_points(up)
    wait_until(
        lambda: all(online_with_points(up).get(a, 0) > n for a, n in committed.items()),
        30,
        "both agents committing more points",
    )
    pipeline = get_json(f"{up.api}/pipeline", api_key(up.data_dir))
    assert "queue_error" not in pipeline and pipeline["queue"]["streams"]
    agent_id = sorted(committed)[0]
    # The CLI finds the platform through the data dir alone (no URL given).
    cli_env = clean_env(FLEETPULSE_DATA_DIR=str(up.data_dir))
    config = fleetpulse("agents", "config", agent_id, "--collect-interval", "1", env=cli_env)
    assert config.returncode == 0, config.stderr
    assert "collect interval    1.0 s" in config.stdout
    listing = fleetpulse("agents", "list", env=cli_env)
    assert listing.returncode == 0, listing.stderr
    rows = [line.split() for line in listing.stdout.splitlines()]
    assert rows[0][:3] == ["AGENT", "HOSTNAME", "STATUS"]
    assert {row[0] for row in rows[1:-1]} == set(committed)
    assert all(row[2] == "online" for row in rows[1:-1])
    assert rows[-1][:4] == ["2", "agents,", "2", "online"]
    status = fleetpulse("status", env=cli_env)
    assert status.returncode == 0, status.stderr
    assert f"pid {up.proc.pid}" in status.stdout and up.api in status.stdout
    assert "agents             2 (2 online, 0 offline)" in status.stdout
    assert "dead letters       0" in status.stdout


def test_a_front_end_does_not_share_its_port_with_a_stranger(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    """A listener that set SO_REUSEPORT itself, as gRPC does by default: a `fleetpulse ingest`
    on its port fails with one line instead of splitting the connections with it."""
    with socket.socket() as stranger:
        stranger.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        stranger.bind(("127.0.0.1", 0))
        stranger.listen()
        port = stranger.getsockname()[1]
        env = clean_env(
            FLEETPULSE_DATABASE_URL=database_url,
            FLEETPULSE_REDIS_URL=redis_url,
            FLEETPULSE_ENROLLMENT_TOKEN=TOKEN,
            FLEETPULSE_GRPC_PORT=str(port),
            FLEETPULSE_INGEST_METRICS_PORT="0",
        )
        single = fleetpulse("ingest", env=env)
        assert single.returncode == 2, single.stderr
        assert (
            f"cannot listen on 127.0.0.1:{port} (gRPC): in use by pid {os.getpid()}"
            in single.stderr
        )
        pool = fleetpulse("ingest", "--processes", "2", env=env)
        assert pool.returncode == 2, pool.stderr
        assert f"port {port} (ingest gRPC) on 127.0.0.1 is in use" in pool.stderr
        assert len(pool.stderr.strip().splitlines()) == 1


def postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "postgres" / "postmaster.pid").read_text().split()[0])


def test_up_adopts_and_stops_the_postgres_a_killed_up_left(tmp_path: Path) -> None:
    up = launch(tmp_path, "--agents", "0")
    try:
        wait_until(lambda: get_json(f"{up.api}/healthz")["status"] == "ok", 90, "the API")
        pg = postmaster_pid(up.data_dir)
        children = [p.pid for p in psutil.Process(up.proc.pid).children()]
        up.proc.kill()
        up.proc.wait()
        # Its children die with it (parent-death signal); pg_ctl's daemon does not.
        wait_until(lambda: not any(_alive(pid) for pid in children), 30, "up's children to exit")
        assert _alive(pg)

        up.proc = start_up([*up.args(), "--agents", "0"], up.env, up.log_path)
        wait_until(lambda: get_json(f"{up.api}/healthz")["status"] == "ok", 90, "the API again")
        assert postmaster_pid(up.data_dir) == pg  # adopted, not started twice
        stop_and_check_no_orphans(up.proc, timeout_s=60)
        assert not _alive(pg), "the adopted PostgreSQL outlived the up that owned it"
        assert processes_using(up.data_dir) == []
        assert not (up.data_dir / "platform.json").exists()
    except BaseException:
        print(log_tail(up.log_path))
        raise
    finally:
        if up.proc.poll() is None:
            up.proc.kill()
        for cmdline in processes_using(up.data_dir):  # never leave a server behind a failure
            print("left behind:", cmdline)
        if (up.data_dir / "postgres" / "postmaster.pid").exists():
            pid = postmaster_pid(up.data_dir)
            if _alive(pid):
                os.kill(pid, signal.SIGINT)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_benchmark_stopped_while_it_seeds_stops_its_postgres(tmp_path: Path, signum: int) -> None:
    data_dir = tmp_path / "bench"
    log_path = tmp_path / "bench.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fleetpulse",
                "bench",
                "queries",
                "--data-dir",
                str(data_dir),
                "--results-dir",
                str(tmp_path / "results"),
            ],
            env=clean_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:

        def seeding() -> Any:
            text = log_path.read_text(errors="replace")
            return "embedded PostgreSQL running" in text or "seed" in text.lower()

        wait_until(seeding, 90, "the benchmark to start seeding")
        pg = wait_until(lambda: postmaster_pid(data_dir), 30, "its postmaster")
        time.sleep(2)
        assert proc.poll() is None, log_tail(log_path)
        proc.send_signal(signum)
        # SIGTERM ends it as SystemExit(128 + 15); Ctrl-C as KeyboardInterrupt, status 130
        assert proc.wait(60) == (143 if signum == signal.SIGTERM else 130)
        assert not _alive(pg), f"PostgreSQL left running; log:\n{log_tail(log_path)}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

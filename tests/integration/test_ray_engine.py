"""`fleetpulse worker --engine ray`: the worker loop as Ray actors on a local Ray.

One run of the real command: batches committed once, an actor SIGKILLed while it holds entries is
restarted by Ray and commits them itself, SIGTERM drains and leaves no Ray process behind.
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import psycopg
import pytest
import redis

from fleetpulse.ingest import keys
from tests.integration.test_pool import wait_for
from tests.integration.test_worker import make_batch, stored, xadd
from tests.processes import fleetpulse_process

POINTS_PER_BATCH = 3
_WHERE = re.compile(r"worker ray (\d+)/2 runs in pid (\d+)")


@pytest.fixture
def ray_tmpdir() -> Iterator[Path]:
    """Ray's sessions under a short private path (its unix sockets must fit in 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="fpray"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def actor_pids(log_path: Path) -> dict[int, int]:
    """The latest pid the driver logged for each actor index."""
    return {int(i): int(pid) for i, pid in _WHERE.findall(log_path.read_text(errors="replace"))}


def processes_of_session(ray_tmpdir: Path) -> list[psutil.Process]:
    """Ray's own servers (gcs_server, raylet, agents) name the session dir on their command line."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(str(ray_tmpdir) in part for part in proc.info["cmdline"] or ()):
            found.append(proc)
    return found


def pending_by_consumer(client: redis.Redis, shards: int) -> dict[str, int]:
    pending: dict[str, int] = {}
    for shard in range(shards):
        summary = client.xpending(keys.stream_key(shard), keys.CONSUMER_GROUP)
        for consumer in summary["consumers"]:
            name = consumer["name"].decode()
            pending[name] = pending.get(name, 0) + int(consumer["pending"])
    return {name: count for name, count in pending.items() if count}


def enqueue(client: redis.Redis, agents: list[str], batches_each: int) -> None:
    for agent in agents:
        for seq in range(1, batches_each + 1):
            xadd(client, agent, 1, seq, make_batch(agent, 1, seq, POINTS_PER_BATCH), shards=2)


def all_stored(database_url: str, agents: list[str], batches_each: int) -> bool:
    expected = (batches_each * POINTS_PER_BATCH, POINTS_PER_BATCH, batches_each)
    return all(stored(database_url, agent) == expected for agent in agents)


def test_ray_actors_commit_once_restart_after_sigkill_and_drain_on_sigterm(
    database_url: str, redis_url: str, tmp_path: Path, ray_tmpdir: Path
) -> None:
    env = {
        "FLEETPULSE_DATABASE_URL": database_url,
        "FLEETPULSE_REDIS_URL": redis_url,
        "FLEETPULSE_STREAM_SHARDS": "2",
        # Nobody takes over a dead consumer's entries during the test: only the restarted actor,
        # under its own consumer name, can commit what the killed one held.
        "FLEETPULSE_WORKER_RECLAIM_IDLE_MS": "600000",
        "RAY_TMPDIR": str(ray_tmpdir),
        "RAY_ADDRESS": "",  # a local Ray even where the environment names a cluster
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    log_path = tmp_path / "ray-worker.log"
    client = redis.Redis.from_url(redis_url)
    args = ["worker", "--engine", "ray", "--processes", "2"]
    with fleetpulse_process(args, env, log_path) as driver:
        pids = wait_for(
            lambda: (p := actor_pids(log_path)) and len(p) == 2 and p, 60, "two actors running"
        )
        assert " ".join(psutil.Process(driver.pid).cmdline()).startswith(
            "fleetpulse worker pool (ray, 2)"
        )
        assert (ray_tmpdir / "ray" / "session_latest").exists()

        first = ["ray-a0", "ray-a1", "ray-a2", "ray-a3"]
        enqueue(client, first, 10)
        wait_for(lambda: all_stored(database_url, first, 10), 30, "first batches committed")

        # Hold the ledger so that the actors' next chunks stay in flight (read, not acknowledged).
        second = ["ray-b0", "ray-b1", "ray-b2", "ray-b3"]
        with psycopg.connect(database_url) as lock:
            lock.execute("LOCK TABLE batches IN EXCLUSIVE MODE")
            enqueue(client, second, 10)
            holding = wait_for(lambda: pending_by_consumer(client, 2), 20, "entries in flight")
            consumer = next(iter(holding))
            assert consumer.startswith(f"{socket.gethostname()}-ray-")
            index = int(consumer.rsplit("-", 1)[1])
            victim = psutil.Process(pids[index])
            assert victim.cmdline()[0].startswith("ray::")  # an actor process, not Ray itself
            victim.kill()
            victim.wait(10)
            lock.rollback()

        restarted = wait_for(
            lambda: (p := actor_pids(log_path)).get(index) not in (None, pids[index]) and p,
            30,
            f"actor {index} running again",
        )
        wait_for(lambda: all_stored(database_url, second, 10), 30, "held batches committed")
        assert not pending_by_consumer(client, 2)

        third = ["ray-c0", "ray-c1"]
        enqueue(client, third, 10)
        wait_for(lambda: all_stored(database_url, third, 10), 30, "later batches committed")

        tree = psutil.Process(driver.pid).children(recursive=True)
        assert {pids[3 - index], restarted[index]} <= {p.pid for p in tree}
        assert processes_of_session(ray_tmpdir)  # gcs_server and raylet are this session's
        started = time.monotonic()
        driver.send_signal(signal.SIGTERM)
        assert driver.wait(30) == 0
        stop_s = time.monotonic() - started
        _, alive = psutil.wait_procs(tree, timeout=10)
        assert not alive, [p.pid for p in alive]
        assert not processes_of_session(ray_tmpdir)

    for agents in (first, second, third):
        assert all_stored(database_url, agents, 10)
    for shard in range(2):
        assert client.xlen(keys.stream_key(shard)) == 0
    client.close()
    log_text = log_path.read_text(errors="replace")
    assert "worker ray 1/2 stopped" in log_text and "worker ray 2/2 stopped" in log_text, log_text
    assert stop_s < 20, stop_s

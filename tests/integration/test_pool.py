"""`fleetpulse worker --processes N`: named processes, restart on death, drain on SIGTERM."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import psutil
import redis

from tests.integration.test_worker import make_batch, stored, xadd
from tests.processes import fleetpulse_process


def wait_for(predicate, timeout_s: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def workers_of(pool_pid: int) -> dict[str, int]:
    """Worker processes of the pool by their title, e.g. {'fleetpulse worker 1/2': pid}."""
    found = {}
    for child in psutil.Process(pool_pid).children():
        try:
            title = " ".join(child.cmdline()).strip()
        except psutil.NoSuchProcess:
            continue
        if title.startswith("fleetpulse worker "):
            found[title] = child.pid
    return found


def test_pool_restarts_a_killed_worker_and_drains_on_sigterm(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    env = {
        "FLEETPULSE_DATABASE_URL": database_url,
        "FLEETPULSE_REDIS_URL": redis_url,
        "FLEETPULSE_STREAM_SHARDS": "2",
    }
    client = redis.Redis.from_url(redis_url)
    with fleetpulse_process(["worker", "--processes", "2"], env, tmp_path / "pool.log") as pool:
        names = wait_for(
            lambda: (w := workers_of(pool.pid)) and len(w) == 2 and w, 20, "two named workers"
        )
        assert set(names) == {"fleetpulse worker 1/2", "fleetpulse worker 2/2"}
        assert " ".join(psutil.Process(pool.pid).cmdline()).startswith("fleetpulse worker pool")

        psutil.Process(names["fleetpulse worker 1/2"]).kill()
        restarted = wait_for(
            lambda: (
                (w := workers_of(pool.pid)).get("fleetpulse worker 1/2")
                not in (None, names["fleetpulse worker 1/2"])
                and w
            ),
            20,
            "worker 1/2 restarted",
        )
        assert restarted["fleetpulse worker 2/2"] == names["fleetpulse worker 2/2"]

        for seq in range(1, 21):
            xadd(client, "pooled", 1, seq, make_batch("pooled", 1, seq, 3), shards=2)
        wait_for(
            lambda: stored(database_url, "pooled")[2] == 20, 30, "batches committed by the pool"
        )

        children = [psutil.Process(pid) for pid in workers_of(pool.pid).values()]
        pool.send_signal(signal.SIGTERM)
        assert pool.wait(20) == 0
        _, alive = psutil.wait_procs(children, timeout=5)
        assert not alive
    client.close()
    assert stored(database_url, "pooled") == (60, 3, 20)

"""The agent's spool under kill -9: real agent, front-end and worker processes, real PostgreSQL and
Redis. The agent is SIGKILLed at random moments, while the platform is down and while it is
sending; after the last restart, what the platform stored equals what the agent says it sent,
batch for batch and point for point (no loss, no duplicate)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg

from tests.integration.conftest import TOKEN, ingest_env
from tests.integration.test_agent import wait_for
from tests.processes import fleetpulse_process, free_port, wait_for_port

AGENT_ID = "crashy"


def write_config(path: Path, port: int, state_dir: Path, collect_interval_s: float) -> Path:
    path.write_text(
        "server:\n"
        f'  address: "127.0.0.1:{port}"\n'
        "agent:\n"
        f"  id: {AGENT_ID}\n"
        f"  collect_interval: {collect_interval_s}\n"
        "  heartbeat_interval: 0.5\n"
        f"  state_dir: {state_dir}\n"
        "  collectors: [load, memory]\n"
    )
    return path


def start_agent(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "fleetpulse", "agent", "--config", str(config)],
            env={**os.environ, "FLEETPULSE_ENROLLMENT_TOKEN": TOKEN},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def kill_after(agent: subprocess.Popen[bytes], seconds: float) -> None:
    time.sleep(seconds)
    agent.send_signal(signal.SIGKILL)
    agent.wait(10)


def sent_account(state_dir: Path) -> dict[int, dict[str, int]]:
    return {
        int(epoch): account
        for epoch, account in json.loads((state_dir / "sent.json").read_text())["epochs"].items()
    }


def stored(database_url: str) -> dict[int, tuple[int, int, int, int]]:
    """Per epoch: batches, points, first and last sequence in the ledger."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT epoch, count(*), sum(points), min(seq), max(seq) FROM batches"
            " WHERE agent_id = %s GROUP BY epoch",
            (AGENT_ID,),
        ).fetchall()
    return {epoch: (n, int(points), first, last) for epoch, n, points, first, last in rows}


def test_agent_killed_at_random_moments_loses_and_duplicates_nothing(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    rng = random.Random(int(os.environ.get("FLEETPULSE_TEST_SEED", "6")))
    port = free_port()
    state = tmp_path / "state"
    busy = write_config(tmp_path / "busy.yaml", port, state, 0.05)
    log = tmp_path / "agent.log"

    # The platform is down: every batch goes to the spool, across three epochs.
    for _ in range(3):
        kill_after(start_agent(busy, log), rng.uniform(1.0, 2.0))

    env = ingest_env(database_url, redis_url, port, shards=1)
    env["FLEETPULSE_WORKER_BLOCK_MS"] = "100"
    with (
        fleetpulse_process(["ingest"], env, tmp_path / "ingest.log") as ingest,
        fleetpulse_process(["worker"], env, tmp_path / "worker.log"),
    ):
        wait_for_port(port, ingest)
        # Up: killed while replaying, sending, or freeing its spool on committed.
        for _ in range(4):
            kill_after(start_agent(busy, log), rng.uniform(0.5, 2.5))
        # The last run collects once more, then only replays: the account stops moving.
        calm = write_config(tmp_path / "calm.yaml", port, state, 3600)
        agent = start_agent(calm, log)
        try:

            def everything_stored() -> bool:
                sent = sent_account(state)
                if len(sent) < 8 or not sent[max(sent)]["batches_sent"]:
                    return False  # the last run has not collected yet
                return sum(a["batches_sent"] for a in sent.values()) == sum(
                    n for n, *_ in stored(database_url).values()
                )

            wait_for(everything_stored, 60, "every batch the agent sent stored")
        finally:
            agent.send_signal(signal.SIGTERM)
            assert agent.wait(20) == 0

    sent = sent_account(state)
    assert len(sent) == 8  # one epoch per start
    expected = {
        epoch: (a["batches_sent"], a["points_sent"], a["first_seq"], a["last_seq"])
        for epoch, a in sent.items()
        if a["batches_sent"]
    }
    got = stored(database_url)
    assert got == expected
    for batches, _, first, last in got.values():
        assert batches == last - first + 1  # no gap in any epoch
    assert all(a["batches_dropped"] == 0 for a in sent.values())
    with psycopg.connect(database_url) as conn:
        points = conn.execute(
            "SELECT count(*) FROM all_points JOIN series USING (series_id) WHERE agent_id = %s",
            (AGENT_ID,),
        ).fetchone()
    assert points == (sum(a["points_sent"] for a in sent.values()),)

"""Server faults: Redis and PostgreSQL stopped and restarted during ingest. Each test owns its
servers (a redis-server and an embedded PostgreSQL of its own, never the machine's), so each runs
once, not on both backends."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.faults.conftest import Harness, PostgresServer, RedisServer, wait_for, wait_spooling
from tests.processes import free_port

pytestmark = [pytest.mark.faults, pytest.mark.timeout(150)]


def deferred(agent_log: str) -> int:
    return agent_log.count(" deferred ")


def test_redis_restarted_during_ingest(
    dedicated_harness: Harness, dedicated_redis: RedisServer
) -> None:
    """AOF with appendfsync always: what Redis acknowledged is on disk before the front-end acks
    the agent, so neither a clean stop (SHUTDOWN) nor a crash (SIGKILL) loses an accepted batch."""
    h = dedicated_harness
    assert dedicated_redis.appendfsync == "always"
    ingest, pool, agents = h.start_platform(free_port())

    for stop in (dedicated_redis.shutdown, dedicated_redis.kill):
        refused = {a.agent_id: deferred(a.log.read_text()) for a in agents}
        stop()
        # While Redis is away the front-end keeps the streams open and answers each batch with a
        # retry delay (nothing queued); the agents keep their batches.
        wait_spooling(agents, 5)
        wait_for(
            lambda refused=refused: all(
                deferred(a.log.read_text()) > refused[a.agent_id] for a in agents
            ),
            30,
            "every agent told to retry",
        )
        dedicated_redis.start()  # same port, same dir: the AOF brings the streams back
        h.wait_flowing(agents)

    # The front-end still follows the control channel (pub/sub) after the restarts: a revocation
    # closes the agent's stream at once, and the agent enrolls again with the token.
    revoked = agents[0]
    done = subprocess.run(
        [sys.executable, "-m", "fleetpulse", "agents", "revoke", revoked.agent_id],
        env={**os.environ, **h.env()},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    wait_for(lambda: revoked.registrations() >= 2, 30, "the revoked agent to enroll again")
    assert "credential refused; enrolling again" in revoked.log.read_text()
    h.wait_flowing(agents)
    h.finish(ingest, pool)
    # The simulated agents were told to retry while Redis was away too, and sent those batches
    # again on the same streams.
    assert h.fleet is not None and h.fleet.summary is not None
    assert h.fleet.summary["refusals"] > 0


def test_postgres_restarted_during_ingest(
    dedicated_harness: Harness, dedicated_postgres: PostgresServer
) -> None:
    """An immediate shutdown (a crash: no checkpoint, sessions cut) while workers copy; the edge
    keeps accepting into Redis meanwhile; after the restart (WAL recovery) the workers reconnect
    and commit what waited, once."""
    h = dedicated_harness
    ingest, pool, agents = h.start_platform(free_port())

    dedicated_postgres.crash()
    acked = {a.agent_id: a.account()["batches_acked"] for a in agents}
    wait_for(
        lambda: all(a.account()["batches_acked"] >= acked[a.agent_id] + 10 for a in agents),
        30,
        "batches accepted (queued in Redis) while PostgreSQL is down",
        every_s=0.1,
    )
    assert h.queued() >= 10 * len(agents)
    dedicated_postgres.start()

    h.wait_flowing(agents)
    h.finish(ingest, pool)
    assert "chunk failed, retrying" in pool.log_text()  # the workers did see it go

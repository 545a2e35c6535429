"""Front-end faults: killed (agents reconnect and replay), restarted one after the other (two
front-ends sharing the port), frozen for longer than the agents' heartbeat timeout. The simulated
fleet follows the agents' rules where they share a port (killed, rolling restart); with one agent
cut off, it stays on the front-end that is not frozen, and must stay online there."""

from __future__ import annotations

import signal

import psycopg
import pytest
from psycopg.rows import dict_row

from fleetpulse import liveness
from fleetpulse.api.agents import _LIST_AGENTS
from fleetpulse.settings import Settings
from tests.faults.conftest import (
    FLEET_AGENTS,
    READY_LINE_INGEST,
    READY_LINE_WORKER,
    Agent,
    Harness,
    wait_for,
    wait_spooling,
)
from tests.processes import free_port

pytestmark = [pytest.mark.faults, pytest.mark.timeout(150)]


def test_front_end_killed_agents_reconnect_and_replay(harness: Harness) -> None:
    port = free_port()
    ingest, pool, agents = harness.start_platform(port)

    ingest.kill()  # SIGKILL: no goodbye to the agents, batches in flight unacknowledged
    wait_spooling(agents, 10)
    restarted = harness.start_ingest(port)
    harness.wait_flowing(agents)
    harness.finish(restarted, pool)
    assert all(a.registrations() >= 2 for a in agents)  # each reconnected, then replayed
    assert harness.fleet is not None and harness.fleet.summary is not None
    assert harness.fleet.summary["stream_failures"] >= FLEET_AGENTS  # and every simulated one


def test_rolling_restart_of_two_front_ends_sharing_the_port(harness: Harness) -> None:
    port = free_port()
    # Two `fleetpulse ingest` on one port, sharing it on purpose (SO_REUSEPORT, as `--processes 2`
    # runs them): the kernel spreads the agents' connections over both.
    front_ends = {
        name: harness.start_ingest(port, name, wait=False, grpc_reuse_port="true")
        for name in ("ingest-a", "ingest-b")
    }
    pool = harness.start_workers(2, wait=False)
    for proc in front_ends.values():
        harness.wait_logged(proc, READY_LINE_INGEST, 1, 30)
    harness.start_fleet(port)  # its agents' connections spread over both too
    agents = harness.add_agents(3, port)
    harness.wait_logged(pool, READY_LINE_WORKER, 2, 30)
    harness.wait_flowing(agents)

    for name in ("ingest-a", "ingest-b"):
        # SIGTERM: stop accepting, 2 s for open streams, then they are cut; the agents that were
        # on it reconnect to the other one (or the replacement) and replay what was not committed.
        stopped = front_ends[name]
        assert stopped.stop() == 0
        # A clean stop: no error, and every agent it held (simulated ones included) marked
        # offline before its pool closed (sessions are named "<front-end pid>-…/<n>" in the
        # agents table).
        assert " ERROR " not in stopped.log_text(), stopped.log_text()
        assert online_via(harness.database_url, stopped.pid) == []
        front_ends[name] = harness.start_ingest(port, name, grpc_reuse_port="true")
        harness.wait_flowing(agents)

    harness.finish(*front_ends.values(), pool)
    # Every agent was on a stopped front-end once (the first or the second).
    assert all(a.registrations() >= 2 for a in agents)


def online_via(database_url: str, front_end_pid: int) -> list[str]:
    """Agents the agents table says are online on a stream of this front-end process."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT agent_id FROM agents WHERE status = 'online' AND session LIKE %s",
            (f"{front_end_pid}-%",),
        ).fetchall()
    return [agent_id for (agent_id,) in rows]


def statuses(database_url: str) -> dict[str, str]:
    """The liveness state of every agent, by the API's own statement and default settings."""
    defaults = Settings()
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        rows = conn.execute(
            _LIST_AGENTS,
            {
                **liveness.params(defaults),
                "status": None,
                "os": None,
                "arch": None,
                "version": None,
                "q": None,
                "tags": None,
            },
        ).fetchall()
    return {row["agent_id"]: row["status"] for row in rows}


def only_cut_agent(database_url: str, agents: list[Agent], cut: Agent, status: str) -> bool:
    """The cut agent has ``status``; no other agent, simulated ones included, is offline (one
    whose heartbeat is a moment late on this loaded machine may be stale)."""
    found = statuses(database_url)
    real = {a.agent_id for a in agents}
    fleet = [s for agent_id, s in found.items() if agent_id not in real]
    others = [s for agent_id, s in found.items() if agent_id in real and agent_id != cut.agent_id]
    return (
        found.get(cut.agent_id) == status
        and len(others) == len(agents) - 1
        and "offline" not in others
        and len(fleet) == FLEET_AGENTS
        and "offline" not in fleet
    )


def test_agent_cut_off_longer_than_its_heartbeat_timeout(harness: Harness) -> None:
    cut_port, other_port = free_port(), free_port()
    frozen = harness.start_ingest(cut_port, "ingest-cut", wait=False)
    other = harness.start_ingest(other_port, "ingest-other", wait=False)
    pool = harness.start_workers(2, wait=False)
    for proc in (frozen, other):
        harness.wait_logged(proc, READY_LINE_INGEST, 1, 30)
    # The simulated fleet on the front-end that stays up: the platform keeps ingesting its load
    # while the other front-end is frozen, and none of its agents may be called offline.
    harness.start_fleet(other_port)
    agents = harness.add_agents(3, [cut_port, other_port, other_port])
    harness.wait_logged(pool, READY_LINE_WORKER, 2, 30)
    cut = agents[0]
    harness.wait_flowing(agents)
    wait_for(
        lambda: only_cut_agent(harness.database_url, agents, cut, "online"),
        20,
        "every agent online",
    )

    # SIGSTOP the front-end of one agent: its stream stays open but nothing answers, and no
    # heartbeat reaches PostgreSQL. Past 3 heartbeat intervals (the agent's own, 0.5 s) the
    # platform calls it offline; the agents of the other front-end stay online.
    frozen.send(signal.SIGSTOP)
    wait_for(
        lambda: only_cut_agent(harness.database_url, agents, cut, "offline"),
        30,
        "the cut agent offline, the others online",
        every_s=0.1,
    )
    wait_spooling([cut], 10)  # still collecting, into its spool
    assert only_cut_agent(harness.database_url, agents, cut, "offline")
    frozen.send(signal.SIGCONT)

    wait_for(
        lambda: only_cut_agent(harness.database_url, agents, cut, "online"),
        30,
        "the cut agent online again",
    )
    harness.wait_flowing(agents)
    harness.finish(frozen, other, pool)

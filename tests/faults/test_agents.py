"""Agents SIGKILLed with full spools: first with nothing accepted (the platform down), then with
everything accepted but nothing committed (front-end up, workers down), so that the restarted agents
replay batches the streams already hold. The ledger must turn every duplicate into a no-op.

tests/e2e/test_agent_crash.py kills one agent at random moments; this one kills several at the two
moments where a spool is fullest, and checks the duplicates it creates in the queue."""

from __future__ import annotations

import pytest

from fleetpulse.ingest import keys
from tests.faults.conftest import SHARDS, Agent, Harness, wait_for
from tests.processes import free_port

pytestmark = [pytest.mark.faults, pytest.mark.timeout(150)]


def queued_batches(h: Harness, agents: list[Agent]) -> tuple[int, int]:
    """Entries of these agents in the streams, and distinct batches (agent, epoch, sequence) among
    them (the simulated fleet's entries are not counted)."""
    ids = {a.agent_id.encode() for a in agents}
    entries = 0
    distinct = set()
    for shard in range(SHARDS):
        for _, fields in h.redis.xrange(keys.stream_key(shard)):
            if fields[keys.FIELD_AGENT] not in ids:
                continue
            entries += 1
            distinct.add(
                (fields[keys.FIELD_AGENT], fields[keys.FIELD_EPOCH], fields[keys.FIELD_SEQUENCE])
            )
    return entries, len(distinct)


def test_agents_killed_with_full_spools_lose_and_duplicate_nothing(harness: Harness) -> None:
    port = free_port()
    # Nothing listens yet: the simulated fleet, like the agents, keeps trying to connect.
    harness.start_fleet(port)
    agents = harness.add_agents(3, port)

    # 1. The platform is down: every batch goes to the spool only.
    wait_for(
        lambda: all(a.account()["batches_sent"] >= 10 for a in agents),
        30,
        "10 batches spooled by every agent",
        every_s=0.1,
    )
    for agent in agents:
        agent.kill()
        assert agent.spooled_bytes() > 0 and agent.account()["batches_acked"] == 0
        agent.start()  # a new epoch; the first run's spool is replayed with it

    # 2. The front-end is up, the workers are not: the spools are accepted (queued), never
    # committed, so the agents keep every batch. Kill them again, full spools of queued batches.
    ingest = harness.start_ingest(port)
    harness.wait_fleet_connected()  # its batches queue up beside the agents'
    wait_for(
        lambda: all(
            (n := a.account())["batches_acked"] >= 20 and n["batches_committed"] == 0
            for a in agents
        ),
        30,
        "every agent's spool accepted, none committed",
        every_s=0.1,
    )
    for agent in agents:
        agent.kill()
        assert agent.spooled_bytes() > 0
    queued_before, _ = queued_batches(harness, agents)
    for agent in agents:
        agent.start()  # replays its whole spool again: the same batches, queued a second time

    wait_for(
        lambda: (q := queued_batches(harness, agents))[0] - q[1] >= queued_before // 2,
        30,
        "the replayed duplicates in the streams",
        every_s=0.1,
    )
    entries, distinct = queued_batches(harness, agents)
    assert entries > distinct

    # 3. Workers: every batch once, whatever the number of copies queued.
    pool = harness.start_workers(2)
    harness.wait_flowing(agents)
    results = harness.finish(ingest, pool)
    assert all(r["batches_stored"] >= 20 for r in results)
    assert all(a.starts == 3 for a in agents)

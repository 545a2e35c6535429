"""PostgreSQL made slow by a held lock: the workers stop committing, the queue fills to its limit,
the front-end refuses batches with a retry delay instead of queueing more, and the agents keep them.
The queue and the front-end's memory stay within bounds that follow from the configuration; after
the lock is released everything commits, once."""

from __future__ import annotations

import math
import re
import urllib.request

import psutil
import psycopg
import pytest

from fleetpulse.ingest.backpressure import CHECK_INTERVAL_S
from tests.faults.conftest import (
    COLLECT_INTERVAL_S,
    FLEET_AGENTS,
    FLEET_INTERVAL_S,
    Harness,
    wait_for,
)
from tests.processes import free_port

pytestmark = [pytest.mark.faults, pytest.mark.timeout(150)]

MAX_QUEUED = 60  # ingest_max_queued_entries: batches queued and not committed
# Held until every agent had this many batches refused (half a second of its collections).
REFUSALS = 5
MAX_MESSAGE_BYTES = 256 * 1024  # the front-end refuses larger AgentMessages
# What the front-end may hold per agent besides its baseline: one message being received and an
# HTTP/2 stream window (64 KiB), plus slack for the allocator (Python does not return freed arenas
# at once).
HTTP2_WINDOW_BYTES = 64 * 1024
ALLOCATOR_SLACK_BYTES = 16 * 1024 * 1024


# The front-end's own metrics (ingest/frontend/selfmetrics.py) that tell its backpressure.
METRICS = {
    "backpressure": "fleetpulse_ingest_backpressure",
    "refused": 'fleetpulse_ingest_rejects_total{reason="backpressure"}',
}


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    found = {}
    for key, name in METRICS.items():
        match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
        found[key] = float(match.group(1)) if match else 0.0
    return found


def refusals(log: str) -> int:
    """Batches the agent was told to keep and resend later because the workers are behind (the
    agent logs each refusal with its reason)."""
    return log.count("RESOURCE_EXHAUSTED: workers are behind")


def test_held_lock_engages_backpressure_within_bounds(harness: Harness) -> None:
    port, metrics_port = free_port(), free_port()
    ingest, pool, agents = harness.start_platform(
        port,
        ingest_max_queued_entries=MAX_QUEUED,
        ingest_metrics_port=metrics_port,
        max_message_bytes=MAX_MESSAGE_BYTES,
    )
    front_end = psutil.Process(ingest.pid)
    rss_before = front_end.memory_info().rss

    with psycopg.connect(harness.database_url) as locker:
        locker.execute("LOCK TABLE batches IN ACCESS EXCLUSIVE MODE")  # every ledger insert waits
        peak_rss = rss_before
        # Under the bench load the small queue limit can be touched before the lock, and the workers
        # drain it again: only what happens from here on is the lock's doing.
        refused_before = {a.agent_id: refusals(a.log.read_text()) for a in agents}

        def refusing() -> bool:
            """The queue is full, backpressure is on, and every agent has had batches refused for a
            while since the lock."""
            nonlocal peak_rss
            peak_rss = max(peak_rss, front_end.memory_info().rss)
            return (
                harness.queued() >= MAX_QUEUED
                and scrape(metrics_port)["backpressure"] == 1
                and all(
                    refusals(a.log.read_text()) - refused_before[a.agent_id] >= REFUSALS
                    for a in agents
                )
            )

        wait_for(refusing, 60, "backpressure and refusals", every_s=0.2)
        # Nothing leaves the streams while the lock holds (workers delete only after COMMIT), so
        # this is the most the queue held: the limit, plus what was accepted before the
        # front-end's next look at the queue (every agent sends one batch per collection, every
        # simulated agent one per interval; four check intervals allowed for a busy machine).
        queued = harness.queued()
        overshoot = len(agents) * math.ceil(
            4 * CHECK_INTERVAL_S / COLLECT_INTERVAL_S
        ) + FLEET_AGENTS * math.ceil(4 * CHECK_INTERVAL_S / FLEET_INTERVAL_S)
        assert MAX_QUEUED <= queued <= MAX_QUEUED + overshoot
        rss_bound = (
            rss_before
            + (len(agents) + FLEET_AGENTS) * (MAX_MESSAGE_BYTES + HTTP2_WINDOW_BYTES)
            + ALLOCATOR_SLACK_BYTES
        )
        assert peak_rss <= rss_bound, (peak_rss, rss_before)
        assert scrape(metrics_port)["refused"] >= REFUSALS * len(agents)
        # Refusals are answers on an open stream, not errors: no agent reconnected.
        assert all(a.registrations() == 1 for a in agents)
        locker.rollback()

    wait_for(
        lambda: scrape(metrics_port)["backpressure"] == 0,
        30,
        "backpressure off once the workers caught up",
    )
    harness.wait_flowing(agents)
    harness.finish(ingest, pool)
    # The simulated agents were refused too, kept their batches and sent them again on the same
    # stream: none of their streams broke.
    assert harness.fleet is not None and harness.fleet.summary is not None
    assert harness.fleet.summary["refusals"] > 0
    assert harness.fleet.summary["stream_failures"] == 0

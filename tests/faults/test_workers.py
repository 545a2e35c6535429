"""Worker faults: killed in the middle of a COPY, killed between COMMIT and XACK, stopped for longer
than the reclaim time. Each under load from real agents and the bench's simulated fleet, each
ending with `fleetpulse audit` and the fleet's own verification."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import pytest

from fleetpulse.errors import ConfigError
from fleetpulse.ingest.worker.consumer import consumer_name
from fleetpulse.settings import load_settings
from tests.faults.conftest import Harness, wait_for
from tests.processes import free_port

pytestmark = [pytest.mark.faults, pytest.mark.timeout(150)]

# Blocked COPYs of this database's workers, with the lock they wait for.
_COPIES_WAITING = """
SELECT c.pid FROM pg_stat_progress_copy c JOIN pg_stat_activity a USING (pid)
WHERE c.datname = current_database() AND c.command = 'COPY FROM' AND a.wait_event_type = 'Lock'
"""


def copies_waiting(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        return len(conn.execute(_COPIES_WAITING).fetchall())


def test_worker_killed_in_the_middle_of_a_copy(harness: Harness) -> None:
    ingest, pool, agents = harness.start_platform(free_port())

    # Hold every partition of `samples` in SHARE mode. A COPY into the partitioned table starts
    # (ledger rows inserted, data streaming in, pg_stat_progress_copy reporting) and locks a
    # partition only when its first row is routed there: so each worker's next COPY stops in the
    # middle, and stays there until we let go.
    with psycopg.connect(harness.database_url) as locker:
        partitions = [
            name
            for (name,) in locker.execute(
                "SELECT inhrelid::regclass::text FROM pg_inherits"
                " WHERE inhparent = 'samples'::regclass"
            )
        ]
        locker.execute(f"LOCK TABLE {', '.join(partitions)} IN SHARE MODE")
        wait_for(
            lambda: copies_waiting(harness.database_url) == 2,
            30,
            "both workers in the middle of a COPY",
        )
        # Every worker of this database is inside a COPY now: kill worker 1 there.
        victim = harness.workers(pool)[1]
        victim.kill()
        victim.wait(10)
        killed_at = harness.db_now()
        in_flight = harness.pending(consumer_name(1))
        assert in_flight, "the killed worker held no entries"
        batches = [harness.batch_of(stream, entry_id) for stream, entry_id in in_flight]
        locker.rollback()  # the killed worker's backend reads EOF, rolls its transaction back

    restarted = wait_for(
        lambda: (w := harness.workers(pool)).get(1) and w[1].pid != victim.pid and w[1],
        30,
        "worker 1 restarted by the pool",
    )
    harness.wait_flowing(agents)
    harness.finish(ingest, pool)

    # The chunk the killed worker was copying was committed after the kill, by its restart
    # (which re-read its own pending entries), and once.
    committed = harness.ledger_rows(batches)
    assert set(committed) == set(batches)
    assert all(at > killed_at for at in committed.values())
    assert restarted.is_running()
    assert copies_waiting(harness.database_url) == 0


def test_worker_killed_between_commit_and_xack(harness: Harness, tmp_path: Path) -> None:
    marker = tmp_path / "failpoint-after-commit"
    port = free_port()
    ingest = harness.start_ingest(port)
    harness.start_fleet(port)
    agents = harness.add_agents(3, port)
    harness.wait_fleet_connected()  # its batches are in the backlog too
    wait_for(lambda: harness.queued() >= 20, 30, "a backlog for the workers")
    # The failpoint (ingest/worker/failpoints.py): the first worker to commit a chunk SIGKILLs itself
    # before its XACK, once, and names the chunk's entries in the marker file.
    pool = harness.start_workers(2, failpoint=f"after-commit:{marker}")

    wait_for(marker.exists, 30, "the failpoint to fire")
    fired_at = harness.db_now()  # within a poll of the kill; the pool restarts it >= 1 s later
    entry_ids = [line.split()[1] for line in marker.read_text().splitlines()]
    assert entry_ids
    with psycopg.connect(harness.database_url) as conn:
        # An entry id is unique within its stream only: another shard may hold the same id, whose
        # batch another worker commits later. The earliest row of each id is the dead worker's.
        first = conn.execute(
            "SELECT stream_id, min(committed_at) FROM batches WHERE stream_id = ANY(%s)"
            " GROUP BY stream_id",
            (entry_ids,),
        ).fetchall()
    # Committed by the worker that died (the ledger keeps the entry id that committed a batch) ...
    assert {entry_id for entry_id, _ in first} == set(entry_ids)
    assert all(at < fired_at for _, at in first)
    wait_for(lambda: "exited with status -9" in pool.log_text(), 10, "the pool to see the kill")
    # ... then redelivered to the restarted worker, whose ledger insert found them: a no-op,
    # acknowledged. The audit proves no point was stored twice.
    harness.wait_workers(pool, 2)
    harness.wait_flowing(agents)
    harness.finish(ingest, pool)
    assert pool.count_in_log("exited with status -9") == 1  # once: the marker disarmed it


def test_worker_stopped_longer_than_the_reclaim_time(harness: Harness) -> None:
    ingest, pool, agents = harness.start_platform(
        free_port(), worker_reclaim_idle_ms=2000, worker_reclaim_interval_s=0.5
    )
    victim = harness.workers(pool)[1]
    mine = consumer_name(1)

    def stopped_holding_entries() -> list[tuple[str, str]] | None:
        """SIGSTOP worker 1; keep it stopped if it holds entries (it is mid-chunk), else go on."""
        victim.suspend()
        # Anything it wrote just before the stop (an XACK) reaches Redis in well under this.
        time.sleep(0.2)
        held = harness.pending(mine)
        if held:
            return held
        victim.resume()
        return None

    held = wait_for(stopped_holding_entries, 40, "worker 1 stopped in the middle of a chunk")
    # Idle for worker_reclaim_idle_ms, the entries are taken over by worker 2 (XAUTOCLAIM).
    wait_for(lambda: not set(held) & set(harness.pending(mine)), 30, "worker 2 to reclaim them")
    wait_for(lambda: "reclaimed" in pool.log_text(), 10, "the reclaim logged")
    # SIGCONT: it finishes the chunk it was in, and the ledger settles who stored it; or, if it
    # was stopped idle inside its transaction (holding agent_ingest row locks the others would
    # wait on), PostgreSQL has ended that session after the reclaim time: it reconnects, and the
    # chunk is committed by the worker that reclaimed it.
    victim.resume()

    harness.wait_flowing(agents)
    harness.finish(ingest, pool)
    assert harness.workers(pool)[1].pid == victim.pid  # it was never restarted, only resumed


def test_failpoint_is_off_unless_set_and_takes_only_its_own_syntax(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("FLEETPULSE_FAILPOINT", raising=False)
    assert load_settings().failpoint is None
    monkeypatch.setenv("FLEETPULSE_FAILPOINT", "after-commit")  # no marker file: refused
    with pytest.raises(ConfigError, match="failpoint"):
        load_settings()

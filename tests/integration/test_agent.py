"""The agent daemon against a real front-end process: reconnect, replay, nothing lost."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import psycopg
import redis

from fleetpulse.agent.config import AgentConfig
from fleetpulse.agent.daemon import AgentDaemon
from fleetpulse.ingest import keys
from tests.integration.conftest import TOKEN, ingest_env
from tests.processes import fleetpulse_process, free_port, wait_for_port


def wait_for(predicate, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def account(daemon: AgentDaemon):  # type: ignore[no-untyped-def]
    return daemon.report.epochs.get(daemon.epoch)


def test_agent_replays_what_was_not_acked_across_a_front_end_restart(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    port = free_port()
    env = ingest_env(database_url, redis_url, port, shards=1)
    config = AgentConfig(
        server_address=f"127.0.0.1:{port}",
        agent_id="replayer",
        enrollment_token=TOKEN,
        collect_interval_s=0.1,
        heartbeat_interval_s=0.5,
        state_dir=tmp_path / "state",
        collectors=frozenset({"load", "memory"}),
    )
    daemon = AgentDaemon(config)
    thread = threading.Thread(target=lambda: asyncio.run(daemon.run(handle_signals=False)))

    with fleetpulse_process(["ingest"], env, tmp_path / "ingest-1.log") as proc:
        wait_for_port(port, proc)
        thread.start()
        wait_for(lambda: account(daemon) and account(daemon).batches_acked >= 3, 20, "first acks")
    # front-end gone: the agent keeps collecting and buffers
    sent_while_down = account(daemon).batches_sent
    wait_for(
        lambda: account(daemon).batches_sent >= sent_while_down + 5,
        10,
        "batches while disconnected",
    )
    assert account(daemon).batches_acked < account(daemon).batches_sent
    with fleetpulse_process(["ingest"], env, tmp_path / "ingest-2.log") as proc:
        wait_for_port(port, proc)
        wait_for(
            lambda: account(daemon).batches_acked >= sent_while_down + 5,
            30,
            "replay after reconnect",
        )
        daemon.stop_threadsafe()
        thread.join(10)
        assert not thread.is_alive()

    final = account(daemon)
    assert final.batches_acked == final.batches_sent  # flushed at shutdown
    # it enrolled: its credential is private to it, and the reconnect used it
    assert daemon.credential_path.stat().st_mode & 0o777 == 0o600
    with psycopg.connect(database_url) as conn:
        used = conn.execute(
            "SELECT last_used_at IS NOT NULL FROM agent_credentials WHERE agent_id = 'replayer'"
        ).fetchone()
        goodbye = conn.execute(
            "SELECT status, disconnect_reason FROM agents WHERE agent_id = 'replayer'"
        ).fetchone()
    assert used == (True,)
    assert goodbye == ("offline", "agent shutting down")
    client = redis.Redis.from_url(redis_url)
    sequences = [
        int(fields[keys.FIELD_SEQUENCE])
        for _, fields in client.xrange(keys.stream_key(0))
        if fields[keys.FIELD_AGENT] == b"replayer"
    ]
    client.close()
    # every batch queued at least once, in order of first appearance; duplicates are the
    # worker's ledger's business
    assert set(sequences) == set(range(1, final.last_seq + 1))
    first_seen = list(dict.fromkeys(sequences))
    assert first_seen == sorted(first_seen)


def test_agent_keeps_batches_refused_under_backpressure_and_sends_them_later(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    port = free_port()
    env = ingest_env(database_url, redis_url, port, shards=1)
    env["FLEETPULSE_INGEST_MAX_QUEUED_ENTRIES"] = "4"
    env["FLEETPULSE_INGEST_RETRY_AFTER_MS"] = "300"
    config = AgentConfig(
        server_address=f"127.0.0.1:{port}",
        agent_id="patient",
        enrollment_token=TOKEN,
        collect_interval_s=0.1,
        heartbeat_interval_s=0.5,
        state_dir=tmp_path / "state",
        collectors=frozenset({"load"}),
    )
    daemon = AgentDaemon(config)
    thread = threading.Thread(target=lambda: asyncio.run(daemon.run(handle_signals=False)))
    client = redis.Redis.from_url(redis_url)
    seen: set[int] = set()

    def drain() -> None:  # stands in for the workers: take what is queued, then delete it
        for entry_id, fields in client.xrange(keys.stream_key(0)):
            seen.add(int(fields[keys.FIELD_SEQUENCE]))
            client.xdel(keys.stream_key(0), entry_id)

    with fleetpulse_process(["ingest"], env, tmp_path / "ingest.log") as proc:
        wait_for_port(port, proc)
        thread.start()
        # no workers: the queue fills, the front-end refuses, the agent keeps its batches
        wait_for(lambda: client.xlen(keys.stream_key(0)) >= 4, 10, "a full queue")
        time.sleep(1.0)  # the front-end checks the queue every 0.5 s: backpressure is on now
        engaged_at = client.xlen(keys.stream_key(0))
        time.sleep(1.5)
        # the agent kept collecting and sending; nothing more was queued (refused, not XADDed)
        assert client.xlen(keys.stream_key(0)) == engaged_at
        assert account(daemon).batches_sent > account(daemon).batches_acked + 5
        daemon.stop_threadsafe()  # it stops collecting; it has until its flush deadline
        deadline = time.monotonic() + 20
        while thread.is_alive() and time.monotonic() < deadline:
            drain()
            time.sleep(0.2)
        thread.join(5)
        drain()
    client.close()
    final = account(daemon)
    assert final.batches_acked == final.batches_sent
    assert seen == set(range(1, final.last_seq + 1))  # every batch queued in the end


def test_spooled_batches_survive_an_agent_restart_and_are_sent_then(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    port = free_port()
    config = AgentConfig(
        server_address=f"127.0.0.1:{port}",  # nothing listens yet: the platform is down
        agent_id="spooler",
        enrollment_token=TOKEN,
        collect_interval_s=0.1,
        heartbeat_interval_s=0.5,
        state_dir=tmp_path / "state",
        collectors=frozenset({"load"}),
    )
    first = AgentDaemon(config)
    thread = threading.Thread(target=lambda: asyncio.run(first.run(handle_signals=False)))
    thread.start()
    wait_for(lambda: len(first.spool) >= 5, 10, "batches spooled while the platform is down")
    first.stop_threadsafe()
    thread.join(15)
    spooled = {(b.epoch, b.sequence) for b in first.spool.pending()}
    assert len(spooled) >= 5

    second = AgentDaemon(config)  # a restart: a new epoch, the old batches still on disk
    assert second.epoch != first.epoch
    assert spooled <= {(b.epoch, b.sequence) for b in second.spool.pending()}
    client = redis.Redis.from_url(redis_url)
    with fleetpulse_process(
        ["ingest"], ingest_env(database_url, redis_url, port, shards=1), tmp_path / "ingest.log"
    ) as proc:
        wait_for_port(port, proc)
        thread = threading.Thread(target=lambda: asyncio.run(second.run(handle_signals=False)))
        thread.start()

        def queued_identities() -> set[tuple[int, int]]:
            return {
                (int(f[keys.FIELD_EPOCH]), int(f[keys.FIELD_SEQUENCE]))
                for _, f in client.xrange(keys.stream_key(0))
            }

        wait_for(lambda: spooled <= queued_identities(), 20, "the old epoch's batches queued")
        second.stop_threadsafe()
        thread.join(15)
    client.close()
    report = second.report.epochs
    assert first.epoch in report and report[first.epoch].batches_acked >= len(spooled)

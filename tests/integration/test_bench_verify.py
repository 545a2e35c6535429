"""The bench's verification catches loss and duplication (so a green bench run means something)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import psycopg

from fleetpulse.bench.simulator import AgentResult
from fleetpulse.bench.verify import verify
from fleetpulse.ingest.worker.copier import write_points

PREFIX = "bench-t-"
AGENT = PREFIX + "00001"


def _store(conn: psycopg.Connection, seq: int, send_ns: int, copies: int) -> None:
    ts = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=send_ns // 1000)
    conn.execute(
        "INSERT INTO batches (agent_id, epoch, seq, points, stream_id) VALUES (%s, 1, %s, 2, 'x')",
        (AGENT, seq),
    )
    for _ in range(copies):
        ids = [
            r[0] for r in conn.execute("SELECT series_id FROM series WHERE agent_id = %s", (AGENT,))
        ]
        ts_us = round(ts.timestamp() * 1_000_000)
        write_points(conn, np.array(ids), np.full(len(ids), ts_us), np.ones(len(ids)))


def test_verify_reports_missing_and_duplicated_batches(database_url: str) -> None:
    now_ns = int(datetime.now(UTC).timestamp() * 1e9)
    send_ns = np.array([now_ns + i * 1_000_000 for i in range(4)], dtype=np.int64)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO series (agent_id, name, labels) VALUES (%s, 'a', '{}'), (%s, 'b', '{}')",
            (AGENT, AGENT),
        )
        _store(conn, 1, int(send_ns[0]), copies=1)  # fine
        _store(conn, 2, int(send_ns[1]), copies=2)  # duplicated points
        # batch 3 never stored
        _store(conn, 4, int(send_ns[3]), copies=1)  # fine
        result = AgentResult(
            agent_id=AGENT,
            epoch=1,
            points_per_batch=2,
            batches_sent=4,
            batches_acked=4,
            last_seq=4,
            send_ns=send_ns,
        )
        check = verify(conn, PREFIX, [result])
    assert check["sent_batches"] == 4
    assert check["missing_batches"] == 1
    assert check["duplicate_batches"] == 1
    assert check["missing_examples"][0]["seq"] == 3
    assert check["duplicate_examples"][0]["seq"] == 2


def test_verify_passes_when_everything_is_stored_once(database_url: str) -> None:
    now_ns = int(datetime.now(UTC).timestamp() * 1e9)
    send_ns = np.array([now_ns + i * 1_000_000 for i in range(3)], dtype=np.int64)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO series (agent_id, name, labels) VALUES (%s, 'a', '{}'), (%s, 'b', '{}')",
            (AGENT, AGENT),
        )
        for i in range(3):
            _store(conn, i + 1, int(send_ns[i]), copies=1)
        result = AgentResult(
            agent_id=AGENT,
            epoch=1,
            points_per_batch=2,
            batches_sent=3,
            batches_acked=3,
            last_seq=3,
            send_ns=send_ns,
        )
        check = verify(conn, PREFIX, [result])
    assert (check["missing_batches"], check["duplicate_batches"], check["unexpected_batches"]) == (
        0,
        0,
        0,
    )
    assert check["stored_points"] == 6

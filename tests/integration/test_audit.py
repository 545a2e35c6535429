"""fleetpulse audit: it finds missing, duplicated, rejected and unexpected batches (so a clean
audit at the end of a fault test means something)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psycopg

from fleetpulse.audit import audit
from fleetpulse.ingest.worker.copier import write_points

AGENT = "audited"


def account(
    first: int, last: int, points_each: int, dropped: list[list[int]]
) -> dict[str, int | list[list[int]]]:
    dropped_n = sum(b - a + 1 for a, b in dropped)
    return {
        "first_seq": first,
        "last_seq": last,
        "batches_sent": last - first + 1,
        "points_sent": (last - first + 1) * points_each,
        "batches_acked": 0,
        "points_acked": 0,
        "batches_dropped": dropped_n,
        "points_dropped": dropped_n * points_each,
        "batches_committed": 0,
        "points_committed": 0,
        "dropped_ranges": dropped,
    }


def store(
    conn: psycopg.Connection,
    series_id: int,
    epoch: int,
    seq: int,
    copies: int = 1,
    rejected: int = 0,
) -> None:
    conn.execute(
        "INSERT INTO batches (agent_id, epoch, seq, points, rejected, stream_id) VALUES (%s, %s, %s, 2, %s, 'x')",
        (AGENT, epoch, seq, rejected),
    )
    for _ in range(copies):
        for _ in range(2 - rejected):
            minute_ago = int((time.time() - 60) * 1_000_000)
            write_points(conn, np.array([series_id]), np.array([minute_ago]), np.array([1.0]))


def run_audit(database_url: str, path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    """``fleetpulse audit`` as an operator runs it."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "fleetpulse",
            "audit",
            *flags,
            "--database-url",
            database_url,
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_audit_names_every_kind_of_discrepancy(database_url: str, tmp_path: Path) -> None:
    state = tmp_path / "agent-state"
    state.mkdir()
    (state / "sent.json").write_text(
        json.dumps(
            {
                "agent_id": AGENT,
                "epochs": {"1": account(1, 10, 2, [[9, 10]]), "2": account(1, 3, 2, [])},
            }
        )
    )
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO series (agent_id, name) VALUES (%s, 'm') RETURNING series_id", (AGENT,)
        ).fetchone()
        assert row is not None
        sid = row[0]
        for seq in (1, 2, 3, 6, 7, 8):  # 4 and 5 missing; 9 and 10 dropped by the agent
            store(conn, sid, 1, seq, rejected=1 if seq == 6 else 0)
        store(conn, sid, 2, 1)
        store(conn, sid, 2, 2, copies=2)  # its points twice
        store(conn, sid, 2, 3)
        store(conn, sid, 3, 1)  # an epoch the account does not have

    (result,) = audit(database_url, [tmp_path])
    assert not result.ok
    assert result.missing == [[1, 4, 5]]
    assert result.points_duplicated == 2
    assert (result.points_rejected, result.batches_with_rejects) == (1, 1)
    assert result.unexpected == [[3, 1, 1]]
    assert (result.batches_dropped, result.points_dropped) == (2, 4)

    done = run_audit(database_url, tmp_path)
    assert done.returncode == 1, done.stderr
    assert "missing: epoch 1 sequences 4..5" in done.stdout
    assert "duplicated: 2 points stored more than once" in done.stdout
    assert "unexpected: epoch 3 sequences 1..1" in done.stdout
    assert "1 agents audited: 1 with missing or duplicated data" in done.stdout


def test_a_complete_account_audits_clean(database_url: str, tmp_path: Path) -> None:
    (tmp_path / "sent.json").write_text(
        json.dumps({"agent_id": AGENT, "epochs": {"7": account(1, 3, 2, [])}})
    )
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO series (agent_id, name) VALUES (%s, 'm') RETURNING series_id", (AGENT,)
        ).fetchone()
        assert row is not None
        for seq in (1, 2, 3):
            store(conn, row[0], 7, seq)
    (result,) = audit(database_url, [tmp_path / "sent.json"])
    assert result.ok and result.point_rows == 6
    done = run_audit(database_url, tmp_path, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["ok"] is True

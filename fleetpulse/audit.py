"""``fleetpulse audit``: what agents say they sent against what the platform stored and rejected.

Each agent keeps its own account in ``<state_dir>/sent.json`` (agent/report.py): per epoch, the
sequence range it created, the points in it, and the sequences it gave up on (its spool was full,
or the platform refused a batch for good). The audit reads those accounts and the platform's
ledger (``batches``: one row per stored batch, with its points and the points rejected) and the
points themselves, and reports per agent:

- **missing**: sequences the agent created and did not give up on, absent from the ledger;
- **duplicated**: points stored more than once (more point rows for the agent's batches than the
  ledger says were accepted: the ledger's primary key already forbids a batch twice);
- **rejected**: points the platform counted as rejected (bad values), with the batches they were in;
- **unexpected**: ledger rows for sequences the agent never reported (another writer, or an
  account lost with its state dir).

Point rows are counted only when the agent's ledger rows are all still within raw retention
(older partitions are dropped by design), which the audit says.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from fleetpulse import connections, partitions

_LEDGER = """
SELECT epoch, seq, points, rejected FROM batches WHERE agent_id = %s ORDER BY epoch, seq
"""
# Points stored for the agent, in both layouts (all its series: batches of every epoch write the
# same series): a samples row holds one point per series of its set, a chunk of compressed rows
# (schema 0011) rows x width. One statement, so one snapshot: a row being compressed meanwhile is
# counted once.
_POINT_ROWS = """
SELECT (SELECT count(*) FROM points JOIN series USING (series_id) WHERE series.agent_id = %(a)s)
     + (SELECT coalesce(sum(cardinality(ss.series_ids)), 0)
        FROM samples s JOIN series_sets ss USING (set_id) WHERE ss.agent_id = %(a)s)
     + (SELECT coalesce(sum(c.rows::int8 * c.width), 0)
        FROM sample_chunks c JOIN series_sets ss USING (set_id) WHERE ss.agent_id = %(a)s)
"""
_OLDEST_COMMIT = "SELECT min(committed_at)::date FROM batches WHERE agent_id = %s"


@dataclass
class AgentAudit:
    agent_id: str
    report: str
    batches_sent: int = 0
    points_sent: int = 0
    batches_dropped: int = 0
    points_dropped: int = 0
    batches_stored: int = 0
    points_accepted: int = 0
    points_rejected: int = 0
    batches_with_rejects: int = 0
    point_rows: int | None = None
    missing: list[list[int]] = field(default_factory=list)  # [epoch, first, last]
    unexpected: list[list[int]] = field(default_factory=list)
    points_duplicated: int = 0
    points_mismatch: list[list[int]] = field(default_factory=list)  # [epoch, sent, in ledger]

    @property
    def ok(self) -> bool:
        return not (self.missing or self.points_duplicated or self.points_mismatch)


def _ranges(values: list[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for value in sorted(values):
        if out and out[-1][1] + 1 == value:
            out[-1][1] = value
        else:
            out.append([value, value])
    return out


def find_reports(paths: list[Path]) -> list[Path]:
    """sent.json files: given directly, or anywhere under given directories."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(path.rglob("sent.json")))
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or directory")
    return found


def audit_agent(conn: psycopg.Connection[Any], report_path: Path) -> AgentAudit:
    data = json.loads(report_path.read_text())
    result = AgentAudit(agent_id=data["agent_id"], report=str(report_path))
    ledger = conn.execute(_LEDGER, (result.agent_id,)).fetchall()
    stored: dict[tuple[int, int], tuple[int, int]] = {
        (epoch, seq): (points, rejected) for epoch, seq, points, rejected in ledger
    }
    reported: set[tuple[int, int]] = set()
    for epoch_text, account in sorted(data["epochs"].items(), key=lambda kv: int(kv[0])):
        epoch = int(epoch_text)
        result.batches_sent += account["batches_sent"]
        result.points_sent += account["points_sent"]
        result.batches_dropped += account["batches_dropped"]
        result.points_dropped += account["points_dropped"]
        if not account["batches_sent"]:
            continue
        dropped = {
            seq
            for first, last in account.get("dropped_ranges", [])
            for seq in range(first, last + 1)
        }
        sequences = range(account["first_seq"], account["last_seq"] + 1)
        reported.update((epoch, seq) for seq in sequences)
        missing = [seq for seq in sequences if (epoch, seq) not in stored and seq not in dropped]
        result.missing += [[epoch, first, last] for first, last in _ranges(missing)]
        in_ledger = sum(stored[(epoch, s)][0] for s in sequences if (epoch, s) in stored)
        expected = account["points_sent"] - account["points_dropped"]
        if not missing and in_ledger != expected:
            result.points_mismatch.append([epoch, expected, in_ledger])
    unexpected: dict[int, list[int]] = {}
    for epoch, seq in stored.keys() - reported:
        unexpected.setdefault(epoch, []).append(seq)
    result.unexpected = [
        [epoch, first, last]
        for epoch, seqs in sorted(unexpected.items())
        for first, last in _ranges(seqs)
    ]
    result.batches_stored = len(stored)
    result.points_rejected = sum(rejected for _, rejected in stored.values())
    result.batches_with_rejects = sum(1 for _, rejected in stored.values() if rejected)
    result.points_accepted = sum(points - rejected for points, rejected in stored.values())
    days = partitions.existing_days(conn, "samples") | partitions.existing_days(conn, "points")
    oldest_commit = conn.execute(_OLDEST_COMMIT, (result.agent_id,)).fetchone()
    within_retention = bool(
        days and oldest_commit and oldest_commit[0] is not None and oldest_commit[0] > min(days)
    )
    if within_retention or not stored:
        row = conn.execute(_POINT_ROWS, {"a": result.agent_id}).fetchone()
        result.point_rows = int(row[0]) if row else 0
        result.points_duplicated = max(0, result.point_rows - result.points_accepted)
    return result


def audit(database_url: str, paths: list[Path]) -> list[AgentAudit]:
    reports = find_reports(paths)
    with connections.pg_connect(database_url) as conn:
        return [audit_agent(conn, path) for path in reports]


def render(results: list[AgentAudit]) -> str:
    lines = []
    for r in results:
        state = "OK" if r.ok else "PROBLEM"
        lines.append(
            f"{r.agent_id}: {state}  sent {r.batches_sent} batches / {r.points_sent} points, "
            f"stored {r.batches_stored} / {r.points_accepted} points, "
            f"rejected {r.points_rejected} points in {r.batches_with_rejects} batches, "
            f"dropped by the agent {r.batches_dropped} / {r.points_dropped}"
        )
        for epoch, first, last in r.missing:
            lines.append(f"  missing: epoch {epoch} sequences {first}..{last}")
        if r.points_duplicated:
            lines.append(f"  duplicated: {r.points_duplicated} points stored more than once")
        for epoch, sent, in_ledger in r.points_mismatch:
            lines.append(f"  points differ: epoch {epoch} sent {sent}, ledger {in_ledger}")
        for epoch, first, last in r.unexpected:
            lines.append(
                f"  unexpected: epoch {epoch} sequences {first}..{last} not in the account"
            )
        if r.point_rows is None:
            lines.append("  point rows not counted: some of its batches are past raw retention")
    bad = sum(1 for r in results if not r.ok)
    lines.append(
        f"{len(results)} agents audited: {bad} with missing or duplicated data"
        if results
        else "no agent accounts (sent.json) found"
    )
    return "\n".join(lines)


def to_json(results: list[AgentAudit]) -> str:
    return json.dumps(
        {"ok": all(r.ok for r in results), "agents": [asdict(r) | {"ok": r.ok} for r in results]}
    )

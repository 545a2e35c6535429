"""A rollout's health gate: each agent's figures before a settings change and since, and the verdict.

The figures are the agent's own, read from what the platform already stores for it, in a few
statements for a whole wave (never one per agent):

- ``batches``, ``points``, ``rejected``: its batches committed in the window (the ``batches``
  ledger), so rejected points per batch;
- ``health_samples``, ``collector_errors``, ``spool_batches``, ``dropped_batches``: the health
  series the agent sends with every batch (agent/daemon.py ``_health``): how many of them were
  stored (a collection made after the change and committed), the most collectors failing at once,
  the deepest spool, and how many batches its spool dropped;
- ``refusals``, ``offline``: its liveness transitions (``agent_liveness``): streams the platform
  ended for a bad message, and times it went offline or stopped sending data.

``judge`` compares the two windows of one agent; the rules, and why each has the slack it has, are
next to it. A rise is judged per agent against its own before, so a host that always drops a
batch now and then is not failed for doing it again, and one that never did is.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import numpy as np
import psycopg

from fleetpulse import liveness, samples

# The health series of agent/daemon.py, by what the gate takes from each.
COLLECTOR_ERRORS = "agent_collector_errors"
SPOOL_BATCHES = "agent_spool_batches"
DROPPED_BATCHES = "agent_dropped_batches_total"
_SERIES = (COLLECTOR_ERRORS, SPOOL_BATCHES, DROPPED_BATCHES)

# Slack of the comparisons, in the figure's own unit. Rejected points per batch: one point (a
# clock step can push a single sample out of the accepted window) or a tenth more than before.
REJECTS_SLACK_POINTS = 1.0
REJECTS_SLACK_FRACTION = 0.1
# Spool depth: batches wait for the commit that frees them, a few collections' worth on a busy
# platform; a rise past that (or past twice what it was) means batches stopped leaving.
SPOOL_SLACK_BATCHES = 5.0


@dataclass(frozen=True)
class Figures:
    seconds: float  # length of the window
    batches: int = 0
    points: int = 0
    rejected: int = 0
    health_samples: int = 0
    collector_errors: float = 0.0
    spool_batches: float = 0.0
    dropped_batches: float = 0.0
    refusals: int = 0
    offline: int = 0

    @property
    def rejected_per_batch(self) -> float:
        return self.rejected / self.batches if self.batches else 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def judge(before: Figures, since: Figures) -> str | None:
    """Why the agent fails the gate (one line), or None: no rise against its own before."""
    if since.offline:
        return "went offline or stopped sending data after applying the settings"
    if since.refusals:
        return f"the platform refused its stream {since.refusals} time(s) after the change"
    if since.collector_errors > before.collector_errors:
        return (
            f"collectors failing rose from {before.collector_errors:g} to "
            f"{since.collector_errors:g}"
        )
    allowed = before.rejected_per_batch + max(
        REJECTS_SLACK_POINTS, REJECTS_SLACK_FRACTION * before.rejected_per_batch
    )
    if since.rejected_per_batch > allowed:
        return (
            f"rejected points per batch rose from {before.rejected_per_batch:.1f} to "
            f"{since.rejected_per_batch:.1f}"
        )
    if since.spool_batches > max(
        2 * before.spool_batches, before.spool_batches + SPOOL_SLACK_BATCHES
    ):
        return f"spool depth rose from {before.spool_batches:g} to {since.spool_batches:g} batches"
    before_rate = before.dropped_batches / before.seconds if before.seconds > 0 else 0.0
    if since.dropped_batches > 0 and since.dropped_batches > before_rate * since.seconds:
        return f"its spool dropped {since.dropped_batches:g} batches after the change"
    return None


_BATCHES = """
SELECT w.agent_id, count(b.agent_id), coalesce(sum(b.points), 0), coalesce(sum(b.rejected), 0)
FROM unnest(%(ids)s::text[], %(los)s::timestamptz[]) AS w(agent_id, lo)
LEFT JOIN batches b
    ON b.agent_id = w.agent_id AND b.committed_at >= w.lo AND b.committed_at < %(hi)s
GROUP BY w.agent_id
"""
_TRANSITIONS = f"""
SELECT w.agent_id,
    count(*) FILTER (WHERE l.cause = '{liveness.REFUSED}'),
    count(*) FILTER (WHERE l.state IN ('offline', 'data_stale'))
FROM unnest(%(ids)s::text[], %(los)s::timestamptz[]) AS w(agent_id, lo)
JOIN agent_liveness l ON l.agent_id = w.agent_id AND l.at >= w.lo AND l.at < %(hi)s
GROUP BY w.agent_id
"""  # noqa: S608  # constants only
_SERIES_IDS = """
SELECT series_id, agent_id, name FROM series
WHERE agent_id = ANY(%(ids)s) AND name = ANY(%(names)s) AND labels = '{}'::jsonb
"""


def figures(conn: psycopg.Connection, los: dict[str, datetime], hi: datetime) -> dict[str, Figures]:
    """Each agent's figures in [its lo, hi): ``los`` maps agent id to the start of its window.
    Needs a connection outside a transaction (the series are read in one snapshot)."""
    if not los:
        return {}
    ids = list(los)
    params = {"ids": ids, "los": [los[a] for a in ids], "hi": hi, "names": list(_SERIES)}
    batches = {r[0]: r[1:] for r in conn.execute(_BATCHES, params).fetchall()}
    transitions = {r[0]: r[1:] for r in conn.execute(_TRANSITIONS, params).fetchall()}
    health = _health(conn, ids, los, hi)
    result = {}
    for agent_id in ids:
        count, points, rejected = batches.get(agent_id, (0, 0, 0))
        refusals, offline = transitions.get(agent_id, (0, 0))
        result[agent_id] = Figures(
            (hi - los[agent_id]).total_seconds(),
            int(count),
            int(points),
            int(rejected),
            refusals=int(refusals),
            offline=int(offline),
            **health.get(agent_id, {}),
        )
    return result


def _health(
    conn: psycopg.Connection, ids: list[str], los: dict[str, datetime], hi: datetime
) -> dict[str, dict[str, Any]]:
    """The health series' figures per agent: a vectorised pass over their stored points."""
    rows = conn.execute(_SERIES_IDS, {"ids": ids, "names": list(_SERIES)}).fetchall()
    if not rows:
        return {}
    index = {agent_id: i for i, agent_id in enumerate(ids)}
    series_ids = np.asarray([r[0] for r in rows], np.int64)
    order = np.argsort(series_ids)
    series_ids = series_ids[order]
    agent_of = np.asarray([index[r[1]] for r in rows], np.int64)[order]
    kind_of = np.asarray([_SERIES.index(r[2]) for r in rows], np.int64)[order]
    lo_us = np.asarray([samples.unix_us(los[a]) for a in ids], np.int64)
    points = samples.read_points(conn, series_ids.tolist(), min(los.values()), hi)
    at = np.searchsorted(series_ids, points.series_id)
    agent, kind = agent_of[at], kind_of[at]
    keep = points.ts_unix_us >= lo_us[agent]
    agent, kind, value = agent[keep], kind[keep], points.value[keep]
    n = len(ids)
    counts = np.zeros(n, np.int64)
    np.add.at(counts, agent[kind == 0], 1)
    highest = np.full((len(_SERIES), n), -np.inf)
    lowest = np.full((len(_SERIES), n), np.inf)
    np.maximum.at(highest, (kind, agent), value)
    np.minimum.at(lowest, (kind, agent), value)
    seen = np.isfinite(highest)
    highest = np.where(seen, highest, 0.0)
    increase = np.where(seen, highest - np.where(seen, lowest, 0.0), 0.0)
    return {
        agent_id: {
            "health_samples": int(counts[i]),
            "collector_errors": float(highest[0, i]),
            "spool_batches": float(highest[1, i]),
            "dropped_batches": float(increase[2, i]),
        }
        for i, agent_id in enumerate(ids)
    }

"""Write one decoded chunk: ledger, samples (one binary COPY), accounting, in one transaction.

Series are resolved before (decode.py), and the series sets of the chunk's samples rows before
the transaction opens (fleetpulse/samples.py has the layout); everything here works on the chunk's
numpy columns and, for the sets, one Python step per row (a collection), never per point.

The ledger insert comes first and returns which batches are new; points of batches already in the
ledger (a redelivery after a crash between COMMIT and XACK) are dropped before the COPY, which is
what makes redelivery a no-op. The caller XACKs only after this transaction committed. The same
transaction marks the minutes it wrote into as dirty for the rollup job (rollups.py).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import numpy as np
import psycopg

from fleetpulse import partitions, samples
from fleetpulse.copybuf import samples_copy_buffer
from fleetpulse.ingest import platformbatches
from fleetpulse.ingest.worker import rollups
from fleetpulse.ingest.worker.decode import Decoded
from fleetpulse.ingest.worker.series import SetResolver

log = logging.getLogger(__name__)

_DAY_US = 86_400_000_000
REASON_TIMESTAMP = "timestamp_out_of_window"
REASON_UNDECODABLE = "undecodable_batch"

_INSERT_LEDGER = """
INSERT INTO batches (agent_id, epoch, seq, points, rejected, stream_id)
SELECT * FROM unnest(%b::text[], %b::int8[], %b::int8[], %b::int4[], %b::int4[], %b::text[])
ORDER BY 1, 2, 3
ON CONFLICT DO NOTHING
RETURNING agent_id, epoch, seq
"""

_UPDATE_ACCOUNTING = """
INSERT INTO agent_ingest AS ai
    (agent_id, batches_committed, points_committed, points_rejected, last_epoch, last_seq, last_commit_at)
SELECT t.*, now() FROM unnest(%b::text[], %b::int8[], %b::int8[], %b::int8[], %b::int8[], %b::int8[]) AS t
ORDER BY 1
ON CONFLICT (agent_id) DO UPDATE SET
    batches_committed = ai.batches_committed + EXCLUDED.batches_committed,
    points_committed = ai.points_committed + EXCLUDED.points_committed,
    points_rejected = ai.points_rejected + EXCLUDED.points_rejected,
    last_epoch = CASE WHEN ai.last_epoch IS NULL
        OR (EXCLUDED.last_epoch, EXCLUDED.last_seq) > (ai.last_epoch, ai.last_seq)
        THEN EXCLUDED.last_epoch ELSE ai.last_epoch END,
    last_seq = CASE WHEN ai.last_epoch IS NULL
        OR (EXCLUDED.last_epoch, EXCLUDED.last_seq) > (ai.last_epoch, ai.last_seq)
        THEN EXCLUDED.last_seq ELSE ai.last_seq END,
    last_commit_at = now()
"""

_UPDATE_REJECTS = """
INSERT INTO rejects AS r (agent_id, reason, batches, points)
SELECT * FROM unnest(%b::text[], %b::text[], %b::int8[], %b::int8[]) ORDER BY 1, 2
ON CONFLICT (agent_id, reason) DO UPDATE SET
    batches = r.batches + EXCLUDED.batches, points = r.points + EXCLUDED.points, last_at = now()
"""


@dataclass(frozen=True)
class ChunkResult:
    batches_new: int
    batches_duplicate: int
    points_committed: int
    points_rejected: int
    # Seconds spent per step (ledger, copy, marks, accounting, commit): the worker's profile.
    timings: dict[str, float]


class ChunkWriter:
    """Owns the worker's two PostgreSQL connections: one for COPY transactions, one for DDL."""

    def __init__(
        self,
        conn: psycopg.Connection,
        ddl_conn: psycopg.Connection,
        retention_days: int,
        max_future_s: float,
        mark_rollups: bool = True,
    ) -> None:
        self._conn = conn
        self._mark_rollups = mark_rollups
        self._ddl_conn = ddl_conn
        self._retention_us = retention_days * _DAY_US
        self._max_future_us = int(max_future_s * 1_000_000)
        self._known_days: set[date] = partitions.existing_days(ddl_conn)
        self._sets = SetResolver(ddl_conn)

    def write(self, decoded: Decoded) -> ChunkResult:
        decoded = decoded.shaped()
        batch_index, ts_us = decoded.batch_index, decoded.ts_unix_us
        nbatches = len(decoded.batches)
        now_us = int(time.time() * 1_000_000)
        in_window = (ts_us >= now_us - self._retention_us) & (ts_us <= now_us + self._max_future_us)
        points_per_batch = np.bincount(batch_index[in_window], minlength=nbatches)
        late_or_early = np.bincount(batch_index[~in_window], minlength=nbatches)
        rejected_per_batch = late_or_early.copy()
        for index, _, points in decoded.rejects:
            rejected_per_batch[index] += points

        self._ensure_partitions(ts_us[in_window])
        # The samples rows of the points in the window, and their sets (resolved outside the
        # transaction, like series: a set is only an identity).
        rows = samples.rows_of(decoded.row_ids[in_window], ts_us[in_window])
        row_batch = batch_index[in_window][rows.start[:-1]]
        set_ids = self._resolve_sets(decoded, rows, row_batch, decoded.series_ids[in_window])

        clock = time.perf_counter
        t0 = clock()
        timings = dict.fromkeys(("ledger", "copy", "marks", "accounting", "commit"), 0.0)
        with self._conn.transaction():
            new_batch = self._insert_ledger(decoded, points_per_batch, rejected_per_batch)
            row_new = new_batch[row_batch]
            t1 = clock()
            timings["ledger"] = t1 - t0
            committed = 0
            if row_new.any():
                values = decoded.values[in_window]
                start, row_ts = rows.start, rows.ts_unix_us
                if not row_new.all():  # redelivered batches: their rows are dropped
                    widths = np.diff(start)
                    values = values[np.repeat(row_new, widths)]
                    start = np.concatenate(([0], np.cumsum(widths[row_new])))
                    row_ts, set_ids = row_ts[row_new], set_ids[row_new]
                committed = len(values)
                buffer = samples_copy_buffer(set_ids, start, row_ts, values)
                with self._conn.cursor() as cur, cur.copy(samples.COPY_SAMPLES) as copy:
                    copy.write(buffer)
                t2 = clock()
                timings["copy"] = t2 - t1
                if self._mark_rollups:
                    self._conn.execute(rollups.MARK_MINUTES, (rollups.minute_starts(row_ts),))
                t1 = clock()
                timings["marks"] = t1 - t2
            self._update_accounting(
                decoded, new_batch, points_per_batch, rejected_per_batch, late_or_early
            )
            t2 = clock()
            timings["accounting"] = t2 - t1
        timings["commit"] = clock() - t2
        return ChunkResult(
            batches_new=int(new_batch.sum()),
            batches_duplicate=int(nbatches - new_batch.sum()),
            points_committed=committed,
            points_rejected=int(rejected_per_batch[new_batch].sum()),
            timings=timings,
        )

    def _resolve_sets(
        self, decoded: Decoded, rows: samples.Rows, row_batch: np.ndarray, series_ids: np.ndarray
    ) -> np.ndarray:
        """The set id of each row: one bytes slice and one dict lookup per row."""
        members = samples.row_members(series_ids, rows)
        agents = [decoded.batches[b].agent_id for b in row_batch.tolist()]
        return np.asarray(self._sets.resolve(agents, members), dtype=np.int32)

    def _ensure_partitions(self, ts_us: np.ndarray) -> None:
        if not len(ts_us):
            return
        epoch = datetime(1970, 1, 1, tzinfo=UTC).date()
        days = {epoch + timedelta(days=int(d)) for d in np.unique(ts_us // _DAY_US)}
        missing = days - self._known_days
        if missing:
            partitions.ensure_days(self._ddl_conn, missing)
            self._known_days |= missing

    def _insert_ledger(
        self, decoded: Decoded, points_per_batch: np.ndarray, rejected_per_batch: np.ndarray
    ) -> np.ndarray:
        batches = decoded.batches
        rows = self._conn.execute(
            _INSERT_LEDGER,
            (
                [b.agent_id for b in batches],
                [b.epoch for b in batches],
                [b.sequence for b in batches],
                points_per_batch.tolist(),
                rejected_per_batch.tolist(),
                [b.entry_id for b in batches],
            ),
        ).fetchall()
        inserted = {(agent_id, epoch, seq) for agent_id, epoch, seq in rows}
        new_batch = np.zeros(len(batches), dtype=bool)
        for i, b in enumerate(batches):
            identity = (b.agent_id, b.epoch, b.sequence)
            if identity in inserted:
                new_batch[i] = True
                inserted.discard(identity)  # a batch queued twice in one chunk counts once
        return new_batch

    def _update_accounting(
        self,
        decoded: Decoded,
        new_batch: np.ndarray,
        points_per_batch: np.ndarray,
        rejected_per_batch: np.ndarray,
        late_or_early: np.ndarray,
    ) -> None:
        # Loops over batches, never over points: a chunk holds hundreds of batches at most.
        per_agent: dict[str, list[int]] = {}
        rejects: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
        for i in np.flatnonzero(new_batch):
            b = decoded.batches[i]
            if b.error is not None:
                rejects[(b.agent_id, REASON_UNDECODABLE)][0] += 1
                continue
            if late_or_early[i]:
                rejects[(b.agent_id, REASON_TIMESTAMP)][1] += int(late_or_early[i])
            if platformbatches.is_platform_epoch(b.epoch):
                continue  # the platform's own batch (a rule's results): not what the agent sent
            acc = per_agent.setdefault(b.agent_id, [0, 0, 0, b.epoch, b.sequence])
            acc[0] += 1
            acc[1] += int(points_per_batch[i])
            acc[2] += int(rejected_per_batch[i])
            if (b.epoch, b.sequence) > (acc[3], acc[4]):
                acc[3], acc[4] = b.epoch, b.sequence
        for index, reason, points in decoded.rejects:
            if new_batch[index]:
                rejects[(decoded.batches[index].agent_id, reason)][1] += points
        if per_agent:
            agents = sorted(per_agent)
            self._conn.execute(
                _UPDATE_ACCOUNTING,
                (agents, *([per_agent[a][col] for a in agents] for col in range(5))),
            )
        if rejects:
            ordered = sorted(rejects)
            self._conn.execute(
                _UPDATE_REJECTS,
                (
                    [k[0] for k in ordered],
                    [k[1] for k in ordered],
                    [rejects[k][0] for k in ordered],
                    [rejects[k][1] for k in ordered],
                ),
            )
            log.warning(
                "rejected in chunk (batches, points) by agent and reason: %s", dict(rejects)
            )


def write_points(
    conn: psycopg.Connection, series_ids: np.ndarray, ts_unix_us: np.ndarray, values: np.ndarray
) -> int:
    """Store points of existing series, in any order, outside the queue and the ledger: for tools,
    tests and the benchmarks' data sets (the worker's path is ChunkWriter). Needs an autocommit
    connection; returns the samples rows written."""
    series_ids = np.asarray(series_ids, dtype=np.int32)
    ts_unix_us = np.asarray(ts_unix_us, dtype=np.int64)
    values = np.asarray(values, dtype=np.float64)
    if not len(series_ids):
        return 0
    agent_of: dict[int, str] = dict(
        conn.execute(
            "SELECT series_id, agent_id FROM series WHERE series_id = ANY(%s)",
            (np.unique(series_ids).tolist(),),
        ).fetchall()
    )
    agents = sorted(set(agent_of.values()))
    agent_index = {a: i for i, a in enumerate(agents)}
    group = np.asarray([agent_index[agent_of[int(s)]] for s in np.unique(series_ids)])
    group = group[np.searchsorted(np.unique(series_ids), series_ids)]
    order, row_ids = samples.shape(group, ts_unix_us, series_ids)
    sids, ts, vals = series_ids[order], ts_unix_us[order], values[order]
    rows = samples.rows_of(row_ids, ts)
    members = samples.row_members(sids, rows)
    row_agents = [agents[g] for g in group[order][rows.start[:-1]].tolist()]
    set_ids = np.asarray(SetResolver(conn).resolve(row_agents, members), dtype=np.int32)
    epoch = datetime(1970, 1, 1, tzinfo=UTC).date()
    days = {epoch + timedelta(days=int(d)) for d in np.unique(rows.ts_unix_us // _DAY_US)}
    partitions.ensure_days(conn, days)
    with conn.cursor() as cur, cur.copy(samples.COPY_SAMPLES) as copy:
        copy.write(samples_copy_buffer(set_ids, rows.start, rows.ts_unix_us, vals))
    return len(rows)

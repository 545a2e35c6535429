"""Write one decoded chunk: ledger, points (one binary COPY), accounting, in one transaction.

Series are resolved before (decode.py); everything here works on the chunk's numpy columns.

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

from fleetpulse import partitions
from fleetpulse.ingest import rollups
from fleetpulse.ingest.copybuf import points_copy_buffer
from fleetpulse.ingest.decode import Decoded

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

_COPY_POINTS = "COPY points (series_id, ts, value) FROM STDIN (FORMAT BINARY)"


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

    def write(self, decoded: Decoded) -> ChunkResult:
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

        clock = time.perf_counter
        t0 = clock()
        timings = dict.fromkeys(("ledger", "copy", "marks", "accounting", "commit"), 0.0)
        with self._conn.transaction():
            new_batch = self._insert_ledger(decoded, points_per_batch, rejected_per_batch)
            keep = in_window & new_batch[batch_index]
            t1 = clock()
            timings["ledger"] = t1 - t0
            if keep.any():
                buffer = points_copy_buffer(
                    decoded.series_ids[keep], ts_us[keep], decoded.values[keep]
                )
                with self._conn.cursor() as cur, cur.copy(_COPY_POINTS) as copy:
                    copy.write(buffer)
                t2 = clock()
                timings["copy"] = t2 - t1
                if self._mark_rollups:
                    self._conn.execute(rollups.MARK_MINUTES, (rollups.minute_starts(ts_us[keep]),))
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
            points_committed=int(keep.sum()),
            points_rejected=int(rejected_per_batch[new_batch].sum()),
            timings=timings,
        )

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
            acc = per_agent.setdefault(b.agent_id, [0, 0, 0, b.epoch, b.sequence])
            acc[0] += 1
            acc[1] += int(points_per_batch[i])
            acc[2] += int(rejected_per_batch[i])
            if (b.epoch, b.sequence) > (acc[3], acc[4]):
                acc[3], acc[4] = b.epoch, b.sequence
            if late_or_early[i]:
                rejects[(b.agent_id, REASON_TIMESTAMP)][1] += int(late_or_early[i])
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

"""What a fleet run stored, against what its simulated agents sent (``bench fleet``).

- ``CommitWatch``: the batches and points the run's agents have committed so far (the ledger,
  ``agent_ingest``), for the live figures and for the drain after the senders stop.
- ``verify``: batch by batch, what the simulator sent (``AgentResult``) against the ledger
  (``batches``) and the rows stored (hot ``samples`` rows and compressed ``sample_chunks``):
  missing, duplicated and unexpected batches, and each batch's commit time (freshness).
"""

from __future__ import annotations

import io
import logging
from typing import Any

import numpy as np
import polars as pl
import psycopg

from fleetpulse import samples
from fleetpulse.bench.simulator import AgentResult
from fleetpulse.connections import pg_connect

log = logging.getLogger(__name__)


def _committed(conn: psycopg.Connection, prefix: str) -> tuple[int, int]:
    row = conn.execute(
        "SELECT coalesce(sum(batches_committed), 0)::int8, coalesce(sum(points_committed), 0)::int8"
        " FROM agent_ingest WHERE agent_id LIKE %s",
        (prefix + "%",),
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


class CommitWatch:
    """What the run's agents have committed so far, for the live figures and the drain.

    PostgreSQL must answer at the start; it may go away during the run (restarted under the bench
    by a fault test): the figures then stay where they were, and the next look connects again."""

    def __init__(self, database_url: str, prefix: str) -> None:
        self._database_url = database_url
        self._prefix = prefix
        self._conn: psycopg.Connection | None = pg_connect(database_url, autocommit=True)
        self.last = (0, 0)

    def committed(self) -> tuple[int, int]:
        """(batches, points) committed, or the last figures if PostgreSQL cannot say now."""
        try:
            if self._conn is None:
                self._conn = pg_connect(self._database_url, autocommit=True, connect_timeout=5)
            self.last = _committed(self._conn, self._prefix)
        except psycopg.OperationalError as exc:
            log.warning("PostgreSQL unavailable for the live figures: %s", exc)
            self.close()
        return self.last

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _read_table(conn: psycopg.Connection, query: str, params: tuple[Any, ...]) -> pl.DataFrame:
    """A query's result through COPY … CSV into polars (fast for a million rows)."""
    buffer = io.BytesIO()
    with (
        conn.cursor() as cur,
        cur.copy(f"COPY ({query}) TO STDOUT (FORMAT CSV, HEADER)", params) as copy,
    ):
        for chunk in copy:
            buffer.write(chunk)
    buffer.seek(0)
    return pl.read_csv(buffer)


def verify(conn: psycopg.Connection, prefix: str, results: list[AgentResult]) -> dict[str, Any]:
    """Compare, batch by batch, what the simulator sent with the ledger and the stored rows."""
    sent = pl.DataFrame(
        {
            "agent_id": np.repeat([r.agent_id for r in results], [r.batches_sent for r in results]),
            "seq": np.concatenate(
                [np.arange(1, r.batches_sent + 1) for r in results] or [np.zeros(0, np.int64)]
            ),
            "send_ns": np.concatenate([r.send_ns for r in results] or [np.zeros(0, np.int64)]),
            "points": np.repeat(
                [r.points_per_batch for r in results], [r.batches_sent for r in results]
            ),
        }
    )
    ledger = _read_table(
        conn,
        "SELECT agent_id, seq, points AS ledger_points,"
        " (extract(epoch FROM committed_at) * 1e6)::int8 AS committed_us"
        " FROM batches WHERE agent_id LIKE %s",
        (prefix + "%",),
    )
    # Rows actually stored, per agent and timestamp: every batch has its own timestamp per agent,
    # so a count above the batch's points is a duplicate, below it a loss. Hot rows and compressed
    # hours (fleetpulse/samples.py) in one snapshot: a long run sees hours compressed under it.
    with samples.snapshot(conn):
        stored = _read_table(
            conn,
            # a samples row holds one point per series of its set (fleetpulse/samples.py)
            "SELECT ss.agent_id, (extract(epoch FROM s.ts) * 1e6)::int8 AS ts_us,"
            " sum(cardinality(ss.series_ids))::int8 AS stored_points"
            " FROM samples s JOIN series_sets ss USING (set_id) WHERE ss.agent_id LIKE %s GROUP BY 1, 2",
            (prefix + "%",),
        )
        chunked = conn.execute(
            "SELECT ss.agent_id, c.rows, c.width, c.ts FROM sample_chunks c"
            " JOIN series_sets ss USING (set_id) WHERE ss.agent_id LIKE %s",
            (prefix + "%",),
            binary=True,
        ).fetchall()
    if ledger.is_empty():
        ledger = pl.DataFrame(
            schema={
                "agent_id": pl.String,
                "seq": pl.Int64,
                "ledger_points": pl.Int64,
                "committed_us": pl.Int64,
            }
        )
    if stored.is_empty():
        stored = pl.DataFrame(
            schema={"agent_id": pl.String, "ts_us": pl.Int64, "stored_points": pl.Int64}
        )
    if chunked:  # one point per series of the set at each of the chunk's timestamps
        stamps = [samples.decode_timestamps(n, ts) for _, n, _, ts in chunked]
        repeat = [len(t) for t in stamps]
        stored = (
            pl.concat(
                [
                    stored,
                    pl.DataFrame(
                        {
                            "agent_id": np.repeat([row[0] for row in chunked], repeat),
                            "ts_us": np.concatenate(stamps),
                            "stored_points": np.repeat([row[2] for row in chunked], repeat),
                        },
                        schema=stored.schema,
                    ),
                ]
            )
            .group_by("agent_id", "ts_us")
            .agg(pl.col("stored_points").sum())
        )
    sent = sent.with_columns((pl.col("send_ns") // 1000).alias("ts_us"))
    joined = (
        sent.join(ledger, on=["agent_id", "seq"], how="left")
        .join(stored, on=["agent_id", "ts_us"], how="left")
        .with_columns(pl.col("stored_points").fill_null(0))
    )
    missing = joined.filter(
        pl.col("ledger_points").is_null() | (pl.col("stored_points") < pl.col("points"))
    )
    duplicated = joined.filter(pl.col("stored_points") > pl.col("points"))
    unexpected = stored.join(sent, on=["agent_id", "ts_us"], how="anti")  # stored, never sent
    first_send_us = int(sent["send_ns"].to_numpy().min()) // 1000 if len(sent) else 0
    last_commit_us = int(ledger["committed_us"].to_numpy().max()) if len(ledger) else 0
    return {
        "sent_batches": len(sent),
        "sent_points": int(sent["points"].sum()) if len(sent) else 0,
        "ledger_batches": int(joined["ledger_points"].is_not_null().sum()),
        "stored_points": int(stored["stored_points"].sum()) if len(stored) else 0,
        "missing_batches": len(missing),
        "duplicate_batches": len(duplicated),
        "unexpected_batches": len(unexpected),
        "batches": joined.select("send_ns", "points", "committed_us"),
        "first_send_us": first_send_us,
        "last_commit_us": last_commit_us,
        "missing_examples": missing.head(5).to_dicts(),
        "duplicate_examples": duplicated.head(5).to_dicts(),
    }

"""What the stored points cost on disk: the ``bytes_per_point`` of ``bench workers`` and ``bench
fleet`` (issue 15's measure of the storage layout).

Every table that holds points or rollups, each partition with its indexes and TOAST, divided by
the points committed (agent_ingest, all agents). ``compress_run`` first does what the workers'
compression job (ingest/worker/compress.py) does to an hour once it is old enough: the run's hours,
compressed as soon as their last minute is rolled up, and their emptied partitions given back.
A partition packed later by the index compaction job (ingest/worker/compaction.py) would be smaller.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from fleetpulse.connections import pg_connect
from fleetpulse.ingest.worker.compress import CompressJob
from fleetpulse.ingest.worker.rollups import RollupJob

# The tables that hold points or their rollups (partitioned ones: every partition): samples and
# the series sets that name their columns (fleetpulse/samples.py), the layout before them, and
# the rollup tiers.
POINT_TABLES = (
    "samples",
    "sample_chunks",
    "series_sets",
    "set_members",
    "set_rollup_1m",
    "minute_chunks",
    "set_rollup_1h",
    "points",
    "rollup_1m",
    "rollup_1h",
)

_SIZES = """
SELECT t.parent, (CASE
    WHEN EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partrelid = t.parent::regclass)
    THEN (SELECT coalesce(sum(pg_total_relation_size(relid)), 0)
          FROM pg_partition_tree(t.parent::regclass) WHERE isleaf)
    ELSE pg_total_relation_size(t.parent::regclass)
END)::int8
FROM unnest(%s::text[]) AS t(parent)
"""


def stored_bytes(conn: psycopg.Connection) -> dict[str, int]:
    """Bytes on disk per point table, partitions, indexes and TOAST included."""
    return {str(name): int(size) for name, size in conn.execute(_SIZES, (list(POINT_TABLES),))}


def bytes_per_point(database_url: str) -> dict[str, float | int | None]:
    """``bytes_per_point`` over all point tables, and each table's share, per committed point."""
    with pg_connect(database_url) as conn:
        sizes = stored_bytes(conn)
        row = conn.execute(
            "SELECT coalesce(sum(points_committed), 0)::int8 FROM agent_ingest"
        ).fetchone()
    points = int(row[0]) if row else 0
    if not points:
        return {"bytes_per_point": None, "points_stored": 0}
    figures: dict[str, float | int | None] = {
        "bytes_per_point": round(sum(sizes.values()) / points, 2),
        "points_stored": points,
    }
    for name, size in sizes.items():
        figures[f"{name}_bytes_per_point"] = round(size / points, 2)
    return figures


def compress_run(database_url: str) -> dict[str, Any]:
    """Compress every hour that holds samples rows, as the job would once they are old enough:
    wait for the newest row's minute to close, roll everything closed up (the job compresses a
    minute only after its rollup), compress, give the emptied partitions back. Returns how many
    points were compressed and how fast (one process: the job's speed)."""
    with pg_connect(database_url, autocommit=True) as conn:
        newest = conn.execute("SELECT max(ts) FROM samples").fetchone()
        if not newest or newest[0] is None:
            return {"compressed_points": 0, "compress_s": 0.0, "compress_points_per_s": None}
        closes = newest[0].replace(second=0, microsecond=0) + timedelta(minutes=1)
        time.sleep(max(0.0, (closes - datetime.now(UTC)).total_seconds() + 0.5))
        RollupJob(conn).catch_up()
        hours = [
            datetime.fromtimestamp(int(row[0]) * 3600, UTC)
            for row in conn.execute(
                "SELECT DISTINCT floor(extract(epoch FROM ts) / 3600)::int8 FROM samples ORDER BY 1"
            )
        ]
        job = CompressJob(conn)
        result = job.compress_hours(hours)
        released = job.release_empty_days({hour.date() for hour in hours})
    return {
        "released_partitions": len(released),
        "compressed_points": result.points,
        "compressed_minute_rows": result.minute_rows,
        "compress_s": round(result.seconds, 3),
        "compress_points_per_s": round(result.points / result.seconds) if result.seconds else None,
        "compress_deferred_hours": result.deferred,
    }

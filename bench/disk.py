"""What the stored points cost on disk: the ``bytes_per_point`` of ``bench workers`` and ``bench
fleet`` (issue 15's measure of the storage layout).

Every table that holds points or rollups, each partition with its indexes and TOAST, divided by
the points committed (agent_ingest, all agents). Measured as the run leaves it: a partition
packed later by the compaction job (ingest/compaction.py) would be smaller.
"""

from __future__ import annotations

import psycopg

# The tables that hold points or their rollups (partitioned ones: every partition): samples and
# the series sets that name their columns (fleetpulse/samples.py), the layout before them, and
# the rollup tiers.
POINT_TABLES = (
    "samples",
    "series_sets",
    "set_members",
    "set_rollup_1m",
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
    with psycopg.connect(database_url) as conn:
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

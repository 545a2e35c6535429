-- fleetpulse schema, version 8: the rollup partitions whose primary-key index was rebuilt packed
-- (ingest/compaction.py says why and when), one row per index: its last rebuild, and whether that
-- was the final one (after its day ended). Rows of partitions dropped by retention are deleted.
CREATE TABLE index_compactions (
    index_name   text PRIMARY KEY,
    bytes_before bigint NOT NULL,
    bytes_after  bigint NOT NULL,
    took_s       double precision NOT NULL,
    final        boolean NOT NULL,
    done_at      timestamptz NOT NULL DEFAULT now()
);

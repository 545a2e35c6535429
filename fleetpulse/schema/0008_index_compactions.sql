-- fleetpulse schema, version 8: the closed rollup partitions whose primary-key index was rebuilt
-- packed (ingest/compaction.py says why), one row per index, kept for the record and so that
-- each index is rebuilt once. Rows of partitions dropped by retention are deleted with them.
CREATE TABLE index_compactions (
    index_name   text PRIMARY KEY,
    bytes_before bigint NOT NULL,
    bytes_after  bigint NOT NULL,
    took_s       double precision NOT NULL,
    done_at      timestamptz NOT NULL DEFAULT now()
);

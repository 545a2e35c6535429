-- fleetpulse schema, version 12: storage v2, step 5: the minute tier of closed hours compressed,
-- one row per series set and hour. docs/architecture.md ("Storage v2") has the measurements;
-- fleetpulse/samples.py holds the codec, ingest/compress.py the job that writes these rows (with
-- the hour's sample_chunks, in the same transaction), ingest/rollups.py the job that takes a
-- set's row back into set_rollup_1m when a late batch changes one of its minutes.
--
-- A row holds the set_rollup_1m rows of one set in one hour, in time order: their buckets and
-- latest times (microseconds) and counts (int64), and per column (series) of the set two blobs:
-- its sums (`sum[col]`), and its minima, maxima and last values one after the other
-- (`min_max_last[col]`, three times `minutes` values), each compressed with pcodec. Three
-- statistics of one scale in one blob cost 0.92 bytes per raw point at 10 s intervals against
-- 1.09 with a blob each (pcodec's header is about 25 bytes a blob). A compressed minute row leaves
-- set_rollup_1m in the transaction that writes its chunk: every minute of a set is in exactly one
-- of the two tables.
CREATE TABLE minute_chunks (
    set_id       integer NOT NULL,
    hour         timestamptz NOT NULL,
    minutes      smallint NOT NULL,
    width        smallint NOT NULL,
    buckets      bytea NOT NULL,
    counts       bytea NOT NULL,
    last_ts      bytea NOT NULL,
    sum          bytea[] NOT NULL,
    min_max_last bytea[] NOT NULL,
    PRIMARY KEY (set_id, hour)
) PARTITION BY RANGE (hour);
-- Compressed already: PostgreSQL's own compression (pglz) would spend CPU for nothing.
ALTER TABLE minute_chunks ALTER COLUMN buckets SET STORAGE EXTERNAL,
    ALTER COLUMN counts SET STORAGE EXTERNAL, ALTER COLUMN last_ts SET STORAGE EXTERNAL,
    ALTER COLUMN sum SET STORAGE EXTERNAL, ALTER COLUMN min_max_last SET STORAGE EXTERNAL;

-- fleetpulse schema, version 11: storage v2, step 4: closed hours of samples compressed, one row
-- per series set and hour. docs/architecture.md ("Storage v2") has the measurements;
-- fleetpulse/samples.py holds the codec, ingest/compress.py the job that writes these rows.
--
-- A chunk holds the samples rows of one set in one hour, in time order: their timestamps
-- (microseconds, int64) and, per column (series) of the set, its values (`vals[col]`, as
-- set_members numbers columns), each compressed with pcodec; a reader fetches only the columns it
-- wants. A compressed row leaves `samples` in the same transaction that writes
-- its chunk, so every stored point is in exactly one of the two tables; readers read both.
CREATE TABLE sample_chunks (
    set_id   integer NOT NULL,
    hour     timestamptz NOT NULL,
    rows     integer NOT NULL,
    width    smallint NOT NULL,
    first_ts timestamptz NOT NULL,
    last_ts  timestamptz NOT NULL,
    ts       bytea NOT NULL,
    vals     bytea[] NOT NULL,
    PRIMARY KEY (set_id, hour)
) PARTITION BY RANGE (hour);
-- Compressed already: PostgreSQL's own compression (pglz) would spend CPU for nothing.
ALTER TABLE sample_chunks ALTER COLUMN ts SET STORAGE EXTERNAL,
    ALTER COLUMN vals SET STORAGE EXTERNAL;

-- Tier 3 of the rollup marks: an hour whose rows may be compressed (the rollup job marks it when
-- it recomputes the hour; ingest/compress.py consumes the mark).
ALTER TABLE rollup_dirty DROP CONSTRAINT rollup_dirty_tier_check,
    ADD CONSTRAINT rollup_dirty_tier_check CHECK (tier IN (1, 2, 3));

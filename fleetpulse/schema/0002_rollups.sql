-- fleetpulse schema, version 2: rollup tiers for dashboards. How they are kept current and correct:
-- ingest/rollups.py and docs/architecture.md ("Rollups").

-- A BRIN index on the raw points' time: the rollup job reads one closed minute of every series at a
-- time. Points arrive roughly in time order, so block ranges summarise well; it costs far less at
-- COPY time than any btree (docs/performance.md has the measured cost).
CREATE INDEX points_ts_brin ON points USING brin (ts) WITH (pages_per_range = 32, autosummarize = on);

-- One row per series and minute / hour. `last` is the value at `last_ts` (the latest point of the
-- bucket), so the hour tier can be derived from the minute tier exactly.
CREATE TABLE rollup_1m (
    series_id integer NOT NULL,
    bucket    timestamptz NOT NULL,
    count     integer NOT NULL,
    sum       double precision NOT NULL,
    min       double precision NOT NULL,
    max       double precision NOT NULL,
    last      double precision NOT NULL,
    last_ts   timestamptz NOT NULL,
    PRIMARY KEY (series_id, bucket)
) PARTITION BY RANGE (bucket);
CREATE INDEX rollup_1m_bucket_brin ON rollup_1m USING brin (bucket) WITH (autosummarize = on);

CREATE TABLE rollup_1h (
    series_id integer NOT NULL,
    bucket    timestamptz NOT NULL,
    count     integer NOT NULL,
    sum       double precision NOT NULL,
    min       double precision NOT NULL,
    max       double precision NOT NULL,
    last      double precision NOT NULL,
    last_ts   timestamptz NOT NULL,
    PRIMARY KEY (series_id, bucket)
) PARTITION BY RANGE (bucket);

-- Buckets whose rollup must be (re)computed. Workers append the minutes a chunk touched in the
-- chunk's own transaction (insert only: no row is ever contended); the rollup job deletes the
-- marks it consumes in the transaction that recomputes them. tier 1 = minute, 2 = hour.
CREATE TABLE rollup_dirty (
    tier      smallint NOT NULL CHECK (tier IN (1, 2)),
    bucket    timestamptz NOT NULL,
    marked_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX rollup_dirty_tier_bucket ON rollup_dirty (tier, bucket);

-- One row per recomputed bucket: how many series rows it wrote, how long it took, and its lag:
-- from the later of the bucket's close and the newest commit that marked it, to the recompute.
-- Read by the pipeline health view and the benchmarks; rows older than a day are deleted.
CREATE TABLE rollup_log (
    tier    smallint NOT NULL,
    bucket  timestamptz NOT NULL,
    rows    integer NOT NULL,
    lag_s   double precision NOT NULL,
    took_s  double precision NOT NULL,
    done_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX rollup_log_done_at ON rollup_log (done_at);

-- The ledger is bounded: rows older than raw retention plus the accepted future window are deleted
-- by partition maintenance (fleetpulse/partitions.py). A batch replayed after that has only points
-- older than retention, which are rejected, never stored twice.
CREATE INDEX batches_committed_at ON batches (committed_at);

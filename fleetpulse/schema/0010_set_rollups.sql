-- fleetpulse schema, version 10: storage v2, step 3: the rollup tiers in the shape of the samples,
-- one row per series set and bucket instead of one per series and bucket. docs/architecture.md
-- ("Storage v2") has the measurements; ingest/rollups.py computes them.
--
-- Every column of a set has one value in each of the set's samples rows, so a set's bucket has one
-- count and one latest timestamp for all its series; the other aggregates are arrays in the set's
-- column order. A series in several sets in one bucket (its agent's series changed) has a row in
-- each; readers combine them per series (fleetpulse/samples.py).
CREATE TABLE set_rollup_1m (
    set_id  integer NOT NULL,
    bucket  timestamptz NOT NULL,
    count   integer NOT NULL,
    last_ts timestamptz NOT NULL,
    sum     float8[] NOT NULL,
    min     float8[] NOT NULL,
    max     float8[] NOT NULL,
    last    float8[] NOT NULL,
    PRIMARY KEY (set_id, bucket)
) PARTITION BY RANGE (bucket);

CREATE TABLE set_rollup_1h (LIKE set_rollup_1m INCLUDING ALL) PARTITION BY RANGE (bucket);

-- Never compressed (as samples.vals): a 200-series set's row (four arrays, 6.4 KB) stays in its
-- heap page (toast_tuple_target = 8160 on every partition, fleetpulse/partitions.py).
ALTER TABLE set_rollup_1m ALTER COLUMN sum SET STORAGE EXTERNAL,
    ALTER COLUMN min SET STORAGE EXTERNAL, ALTER COLUMN max SET STORAGE EXTERNAL,
    ALTER COLUMN last SET STORAGE EXTERNAL;
ALTER TABLE set_rollup_1h ALTER COLUMN sum SET STORAGE EXTERNAL,
    ALTER COLUMN min SET STORAGE EXTERNAL, ALTER COLUMN max SET STORAGE EXTERNAL,
    ALTER COLUMN last SET STORAGE EXTERNAL;

-- The rollup job recomputes a bucket across all sets; readers go by set (the primary key).
CREATE INDEX set_rollup_1m_bucket ON set_rollup_1m (bucket);
CREATE INDEX set_rollup_1h_bucket ON set_rollup_1h (bucket);

-- Per series and bucket, both layouts combined as readers combine them: for inspection, tests and
-- benchmarks' checks. `rollup_1m` and `rollup_1h` keep what the layout before computed (and what
-- the job computes from points of that layout, while retention keeps any).
CREATE VIEW all_rollup_1m AS
SELECT series_id, bucket, sum(count)::int8 AS count, sum(sum) AS sum, min(min) AS min,
       max(max) AS max, (array_agg(last ORDER BY last_ts DESC, last DESC))[1] AS last,
       max(last_ts) AS last_ts
FROM (
    SELECT series_id, bucket, count, sum, min, max, last, last_ts FROM rollup_1m
    UNION ALL
    SELECT u.series_id, r.bucket, r.count, u.sum, u.min, u.max, u.last, r.last_ts
    FROM set_rollup_1m r
    JOIN series_sets ss USING (set_id)
    CROSS JOIN LATERAL unnest(ss.series_ids, r.sum, r.min, r.max, r.last)
        AS u(series_id, sum, min, max, last)
) b
GROUP BY series_id, bucket;

CREATE VIEW all_rollup_1h AS
SELECT series_id, bucket, sum(count)::int8 AS count, sum(sum) AS sum, min(min) AS min,
       max(max) AS max, (array_agg(last ORDER BY last_ts DESC, last DESC))[1] AS last,
       max(last_ts) AS last_ts
FROM (
    SELECT series_id, bucket, count, sum, min, max, last, last_ts FROM rollup_1h
    UNION ALL
    SELECT u.series_id, r.bucket, r.count, u.sum, u.min, u.max, u.last, r.last_ts
    FROM set_rollup_1h r
    JOIN series_sets ss USING (set_id)
    CROSS JOIN LATERAL unnest(ss.series_ids, r.sum, r.min, r.max, r.last)
        AS u(series_id, sum, min, max, last)
) b
GROUP BY series_id, bucket;

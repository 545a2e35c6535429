-- fleetpulse schema, version 9: storage v2, step 1: points are stored one row per series set and
-- timestamp, not one row per point. docs/architecture.md ("Storage v2") has the measurements that
-- chose it; fleetpulse/samples.py is the layout's one home in the code.

-- A series set: the ordered series of one row of `samples` (an agent's collection, or a slice of
-- it: at most samples.MAX_SET_WIDTH series). Identified by a digest of its series ids, so equal
-- sets from any worker resolve to one id. Sets are created on first sight, like series, and never
-- change; an agent whose series change gets a new set.
CREATE TABLE series_sets (
    set_id     integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    agent_id   text NOT NULL,
    digest     bytea NOT NULL UNIQUE,
    series_ids integer[] NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX series_sets_agent ON series_sets (agent_id);

-- Which sets hold a series, and in which column (1-based, as PostgreSQL arrays count): what a
-- read by series id starts from.
CREATE TABLE set_members (
    series_id integer NOT NULL,
    set_id    integer NOT NULL,
    col       smallint NOT NULL,
    PRIMARY KEY (series_id, set_id, col)
);

-- One row per (series set, timestamp): vals[i] is the value of the set's i-th series. One
-- binary-COPYed row and one index entry carry a whole collection (200 points for the agent), where
-- `points` paid both per point. Range-partitioned by day like `points`; retention drops partitions.
-- `vals` is never compressed or moved out of line (STORAGE EXTERNAL, and every partition has
-- toast_tuple_target = 8160, fleetpulse/partitions.py): pglz gains little on doubles and costs CPU
-- on every write and read; rows of up to MAX_SET_WIDTH values fit a page.
CREATE TABLE samples (
    set_id integer NOT NULL,
    ts     timestamptz NOT NULL,
    vals   float8[] NOT NULL
) PARTITION BY RANGE (ts);
ALTER TABLE samples ALTER COLUMN vals SET STORAGE EXTERNAL;
CREATE INDEX samples_set_ts ON samples (set_id, ts);
-- The rollup job reads every set of one closed minute at a time (as it read `points`).
CREATE INDEX samples_ts_brin ON samples USING brin (ts) WITH (pages_per_range = 32, autosummarize = on);

-- `points` keeps what was written before this version: readers read both tables (the
-- fleetpulse/samples.py POINTS_SQL) until retention has dropped its last partition. No partition of
-- it is created any more.

-- Every stored point, of both layouts, one row each: for inspection, tests and the audit.
-- Reads that care about speed use fleetpulse/samples.py, which selects sets before expanding.
CREATE VIEW all_points AS
SELECT series_id, ts, value FROM points
UNION ALL
SELECT u.series_id, s.ts, u.value
FROM samples s
JOIN series_sets ss USING (set_id)
CROSS JOIN LATERAL unnest(ss.series_ids, s.vals) AS u(series_id, value);

-- fleetpulse schema, version 7: the rollup tiers' primary keys carry the whole row.
--
-- The rollup job writes a tier bucket by bucket (every series of one minute together), so one
-- series' rows lie one per heap page: a 24 h chart at 1-minute step for one host's eight CPU modes
-- read 11,520 heap pages, mostly not cached (docs/performance.md, "Read latency at 100M+ points").
-- With the other columns in the key's index (INCLUDE), the same chart is an index-only scan of
-- about 80 consecutive index pages. It is the same one index per tier, only wider; ON CONFLICT
-- and the uniqueness of (series_id, bucket) are unchanged.
ALTER TABLE rollup_1m DROP CONSTRAINT rollup_1m_pkey;
ALTER TABLE rollup_1m ADD CONSTRAINT rollup_1m_pkey
    PRIMARY KEY (series_id, bucket) INCLUDE (count, sum, min, max, last, last_ts);
ALTER TABLE rollup_1h DROP CONSTRAINT rollup_1h_pkey;
ALTER TABLE rollup_1h ADD CONSTRAINT rollup_1h_pkey
    PRIMARY KEY (series_id, bucket) INCLUDE (count, sum, min, max, last, last_ts);

-- An index-only scan skips the heap only for pages the visibility map marks all-visible, which
-- vacuum does. The default insert trigger (20 % of the table) would leave most of today's
-- partition unmarked all day, so rollup partitions are vacuumed after every 200,000 inserted
-- rows instead (fleetpulse/partitions.py gives new partitions the same settings).
DO $$
DECLARE
    part regclass;
BEGIN
    FOR part IN
        SELECT inhrelid::regclass FROM pg_inherits
        WHERE inhparent IN ('rollup_1m'::regclass, 'rollup_1h'::regclass)
    LOOP
        EXECUTE format(
            'ALTER TABLE %s SET (autovacuum_vacuum_insert_threshold = 200000,'
            ' autovacuum_vacuum_insert_scale_factor = 0)', part);
    END LOOP;
END $$;

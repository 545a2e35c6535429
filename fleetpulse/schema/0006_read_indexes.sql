-- fleetpulse schema, version 6: what the read side (api/query.py, api/promql.py) looks series up
-- by across the fleet: a metric name, then label matchers on the (few thousand) series it has.
CREATE INDEX series_name ON series (name);

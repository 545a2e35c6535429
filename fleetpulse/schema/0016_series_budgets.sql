-- fleetpulse schema, version 16: series budgets (ingest/seriesbudgets.py; docs/architecture.md,
-- "Series budgets"). An agent may own at most its budget of distinct series: the platform's
-- default (series_budget), overridden for one agent or for every agent carrying a tag. Points of
-- new series past it are rejected (reason series_budget, counted in rejects); known series flow.
CREATE TABLE series_budgets (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    agent_id   text,
    tag_key    text,
    tag_value  text,
    budget     integer NOT NULL CHECK (budget >= 0),
    updated_at timestamptz NOT NULL DEFAULT now(),
    -- one agent, or one tag (key and value)
    CHECK ((agent_id IS NOT NULL AND tag_key IS NULL AND tag_value IS NULL)
        OR (agent_id IS NULL AND tag_key IS NOT NULL AND tag_value IS NOT NULL)),
    UNIQUE NULLS NOT DISTINCT (agent_id, tag_key, tag_value)
);

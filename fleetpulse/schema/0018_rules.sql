-- fleetpulse schema, version 18: recording and alerting rules (api/rules/; docs/architecture.md,
-- "Rules and alerts"). The rules themselves live in files (Prometheus' format); what lives here is
-- what must outlast the evaluator: where each group's evaluations are, each rule's health, and
-- each alert's state, so that a restarted (or another) evaluator neither fires an alert twice nor
-- loses a pending alert's start, and every API process answers /api/v1/rules and /api/v1/alerts.

-- One row per rule group (its file and name): the last evaluation timestamp done. The next
-- evaluator resumes at the slot after it; recording rules' batches are named by that timestamp,
-- so a slot evaluated twice (a crash between the write and this row) is stored once.
CREATE TABLE rule_groups (
    group_key        text PRIMARY KEY,
    last_eval_at     timestamptz NOT NULL,  -- the evaluation timestamp (a slot of the interval)
    eval_duration_s  double precision NOT NULL,
    evaluated_at     timestamptz NOT NULL DEFAULT now(),  -- wall clock
    missed           bigint NOT NULL DEFAULT 0,  -- slots skipped because the evaluator was late
    evaluator        text NOT NULL DEFAULT ''
);

CREATE TABLE rule_health (
    group_key       text NOT NULL,
    rule_key        text NOT NULL,  -- api/rules/files.py Rule.key: kind, name, ordinal
    health          text NOT NULL CHECK (health IN ('ok', 'err', 'unknown')),
    last_error      text NOT NULL DEFAULT '',
    last_eval_at    timestamptz NOT NULL,
    eval_duration_s double precision NOT NULL,
    PRIMARY KEY (group_key, rule_key)
);

-- The alerts of every alerting rule that are pending, firing, or resolved and still being sent
-- as resolved (api/rules/alerts.py).
CREATE TABLE alerts (
    group_key         text NOT NULL,
    rule_key          text NOT NULL,
    fingerprint       text NOT NULL,
    labels            jsonb NOT NULL,
    annotations       jsonb NOT NULL,
    state             text NOT NULL CHECK (state IN ('pending', 'firing', 'inactive')),
    active_at         timestamptz NOT NULL,
    fired_at          timestamptz,
    resolved_at       timestamptz,
    keep_firing_since timestamptz,
    last_sent_at      timestamptz,
    valid_until       timestamptz,
    value             double precision NOT NULL,
    PRIMARY KEY (group_key, rule_key, fingerprint)
);
-- The firing alerts of one agent (the host page).
CREATE INDEX alerts_agent ON alerts ((labels->>'agent_id')) WHERE state <> 'inactive';

-- fleetpulse schema, version 14: the audit log of operator actions (fleetpulse/auditlog.py;
-- issue 18). One row per action: when, who (the name of the API key, the CLI's user, the
-- enrollment token, or the platform itself), what, on what, and the action's own details.
CREATE TABLE audit_log (
    id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at     timestamptz NOT NULL DEFAULT now(),
    actor  text NOT NULL,
    action text NOT NULL,
    target text NOT NULL,
    detail jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_log_target ON audit_log (target, id);
CREATE INDEX audit_log_action ON audit_log (action, id);

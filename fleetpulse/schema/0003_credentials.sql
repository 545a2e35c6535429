-- fleetpulse schema, version 3: per-agent credentials, identity conflicts, disconnect reasons.
-- How they are used: ingest/credentials.py, ingest/frontend.py, docs/architecture.md ("Identity").

-- One credential per agent, issued at its first register with the enrollment token and returned
-- once; only its SHA-256 is kept. `last_used_at` is set the first time the agent connects with it:
-- from then on the enrollment token can no longer claim this agent_id (until it is revoked).
CREATE TABLE agent_credentials (
    agent_id     text PRIMARY KEY,
    token_hash   bytea NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);

ALTER TABLE agents
    ADD COLUMN machine_id text NOT NULL DEFAULT '',
    -- The last time a second machine claimed this agent_id while it was connected (a cloned image).
    ADD COLUMN conflict text,
    ADD COLUMN conflict_at timestamptz,
    ADD COLUMN conflicts bigint NOT NULL DEFAULT 0,
    -- Set when the agent said why it disconnected (AgentMessage.disconnect), cleared at register.
    ADD COLUMN disconnect_reason text;

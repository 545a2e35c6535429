-- fleetpulse schema, version 5: per-agent settings kept by the platform and pushed to the agent
-- (AgentSettings / SettingsStatus in proto/agent.proto; docs/architecture.md, "Remote settings").

-- What the operator set (`fleetpulse agents config`, PUT /agents/{id}/config). NULL: the agent's
-- own config file decides. A row may exist before its agent ever connected (pre-provisioning).
CREATE TABLE agent_settings (
    agent_id              text PRIMARY KEY,
    version               bigint NOT NULL CHECK (version > 0),
    collect_interval_ms   integer CHECK (collect_interval_ms > 0),
    heartbeat_interval_ms integer CHECK (heartbeat_interval_ms > 0),
    collectors            text[] CHECK (cardinality(collectors) > 0),
    updated_at            timestamptz NOT NULL DEFAULT now()
);

-- What the agent last reported (SettingsStatus): the version it answered, whether it applied it
-- and why not, and the settings in effect. heartbeat_interval_ms decides when the agent counts as
-- offline (offline_after_heartbeats of its own interval, not the platform default).
ALTER TABLE agents
    ADD COLUMN settings_version bigint,
    ADD COLUMN settings_applied boolean,
    ADD COLUMN settings_error text,
    ADD COLUMN settings_reported_at timestamptz,
    ADD COLUMN collect_interval_ms integer,
    ADD COLUMN heartbeat_interval_ms integer,
    ADD COLUMN collectors text[];

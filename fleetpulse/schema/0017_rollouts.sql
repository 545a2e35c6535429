-- fleetpulse schema, version 17: staged rollouts of agent settings with a health gate
-- (ingest/rollouts.py; docs/architecture.md, "Rollouts"). A rollout gives a settings change to the
-- agents its selector chose, wave after wave; a wave passes when its agents applied the settings
-- and stayed healthy for the soak time against their own figures from before; a failing wave
-- stops the rollout and gets its agents' previous settings back. All of it lives here, so a
-- rollout survives a restart of every platform process.
CREATE TABLE rollouts (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- what chose the agents, as asked: {"tags": {...}}, {"agents": [...]} or {"all": true}
    selector   jsonb NOT NULL,
    -- the change, as agent_settings fields (ingest/agentsettings.py FIELDS)
    settings   jsonb NOT NULL,
    soak_s     double precision NOT NULL CHECK (soak_s >= 0),
    state      text NOT NULL DEFAULT 'running'
        CHECK (state IN ('running', 'paused', 'completed', 'failed', 'aborted')),
    wave       integer NOT NULL DEFAULT 0,  -- the wave in progress, or the last one
    reason     text,  -- why it failed, was aborted or paused
    created_by text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    ended_at   timestamptz
);
CREATE INDEX rollouts_active ON rollouts (id) WHERE state IN ('running', 'paused');

CREATE TABLE rollout_waves (
    rollout_id bigint NOT NULL REFERENCES rollouts ON DELETE CASCADE,
    wave       integer NOT NULL,
    step       text NOT NULL,  -- as asked: '5%' or '10' (cumulative)
    agents     integer NOT NULL,  -- agents in this wave
    state      text NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'soaking', 'passed', 'failed', 'aborted')),
    started_at timestamptz,
    ended_at   timestamptz,
    reason     text,
    PRIMARY KEY (rollout_id, wave)
);

CREATE TABLE rollout_agents (
    rollout_id bigint NOT NULL REFERENCES rollouts ON DELETE CASCADE,
    agent_id   text NOT NULL,
    wave       integer NOT NULL,
    state      text NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'sent', 'applied', 'passed', 'unverified', 'failed',
            'reverted')),
    -- true while its rollout runs or is paused: one rollout per agent at a time
    active     boolean NOT NULL DEFAULT true,
    -- its platform-side settings before the rollout (restored on revert); null: it had none
    previous   jsonb,
    version    bigint,  -- the settings version the rollout gave it
    sent_at    timestamptz,
    applied_at timestamptz,
    baseline   jsonb,  -- its figures before the change (ingest/rolloutgate.py)
    observed   jsonb,  -- its figures since it applied the change
    reason     text,  -- why it failed the gate
    PRIMARY KEY (rollout_id, agent_id)
);
CREATE UNIQUE INDEX rollout_agents_one_active ON rollout_agents (agent_id) WHERE active;
CREATE INDEX rollout_agents_wave ON rollout_agents (rollout_id, wave);

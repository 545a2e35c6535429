-- fleetpulse schema, version 15: liveness that says what it knows (fleetpulse/liveness.py;
-- docs/architecture.md, "Liveness").
--
-- agents.status stays the stream's fact ('online' while a stream is open). liveness is the state
-- last recorded for the agent (online, stale, data_stale, offline), since when and why; the API
-- computes the state of now from the same rule, so a state no process has recorded yet (no
-- front-end running) is still shown right.
ALTER TABLE agents
    ADD COLUMN liveness text CHECK (liveness IN ('online', 'stale', 'data_stale', 'offline')),
    ADD COLUMN liveness_since timestamptz,
    ADD COLUMN liveness_cause text,
    ADD COLUMN liveness_detail text,
    -- when the open stream registered, and the last batch a front-end accepted from the agent
    -- (written with the heartbeats, once per flush): "heartbeats arrive but batches do not"
    ADD COLUMN connected_at timestamptz,
    ADD COLUMN last_batch_at timestamptz;

-- Every transition, with its time and cause: the agent's history (GET /agents/{id}/liveness) and
-- the PromQL series fleetpulse_agent_up / fleetpulse_agent_state read it.
CREATE TABLE agent_liveness (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    agent_id text NOT NULL,
    at       timestamptz NOT NULL,
    state    text NOT NULL CHECK (state IN ('online', 'stale', 'data_stale', 'offline')),
    cause    text NOT NULL,
    detail   text NOT NULL DEFAULT ''
);
CREATE INDEX agent_liveness_agent_at ON agent_liveness (agent_id, at);
-- the fleet summary's last hour of transitions, and the pruning of old ones
CREATE INDEX agent_liveness_at ON agent_liveness (at);

-- The platform's own series of each agent (api/promql/fleetseries.py computes their samples from
-- the agents table and agent_liveness), eight ids per agent below zero; and every series PromQL
-- and Prometheus' metadata endpoints read: the stored ones and these. A query naming a stored
-- metric pays nothing for the rest: each branch's constant name folds its filter away.
CREATE VIEW agent_own_series AS
SELECT (-8 * a.id - 1)::integer AS series_id, 'fleetpulse_agent_up'::text AS name, a.agent_id,
    '{}'::jsonb AS labels
FROM agents a
UNION ALL
SELECT (-8 * a.id - 1 - s.k)::integer, 'fleetpulse_agent_state', a.agent_id,
    jsonb_build_object('state', s.state)
FROM agents a,
    unnest(ARRAY['online', 'stale', 'data_stale', 'offline']) WITH ORDINALITY AS s(state, k)
UNION ALL
SELECT (-8 * a.id - 6)::integer, 'fleetpulse_agent_info', a.agent_id,
    a.config_tags || coalesce(t.tags, '{}'::jsonb) || jsonb_build_object(
        'hostname', a.hostname, 'ip', a.ip, 'os', a.os, 'arch', a.arch, 'version', a.version)
FROM agents a LEFT JOIN agent_tags t USING (agent_id);

CREATE VIEW fleet_series AS
SELECT series_id, name, agent_id, labels FROM series
UNION ALL
SELECT series_id, name, agent_id, labels FROM agent_own_series;

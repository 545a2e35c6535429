-- fleetpulse schema, version 13: agent tags (agent/tags.py; docs/architecture.md, "Groups").
-- config_tags: what the agent's config file says (agent.tags), replaced at every register.
-- operator_tags: what an operator set (PATCH /agents/{id}/tags, `fleetpulse agents tag`); a row
-- may be tagged before its agent ever connected. The agent's tags are both, the operator's
-- winning on a shared key.
ALTER TABLE agents ADD COLUMN config_tags jsonb NOT NULL DEFAULT '{}'::jsonb;

CREATE TABLE agent_tags (
    agent_id   text PRIMARY KEY,
    tags       jsonb NOT NULL DEFAULT '{}'::jsonb,
    updated_at timestamptz NOT NULL DEFAULT now()
);

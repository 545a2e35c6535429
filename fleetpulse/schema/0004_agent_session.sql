-- fleetpulse schema, version 4: which stream an agent's 'online' belongs to.
-- A front-end marks an agent offline only if the agent's current session is still the one that
-- closed: a reconnect that registered meanwhile (maybe on another front-end) stays online.
ALTER TABLE agents ADD COLUMN session text;

-- fleetpulse schema, version 1. Applied by `fleetpulse migrate` (fleetpulse/migrate.py) in one
-- transaction under an advisory lock. Why each table looks the way it does: docs/architecture.md.

-- The original plan's agents table, column for column, plus a surrogate key.
CREATE TABLE agents (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    agent_id       text NOT NULL UNIQUE,
    hostname       text NOT NULL DEFAULT '',
    ip             text NOT NULL DEFAULT '',
    os             text NOT NULL DEFAULT '',
    arch           text NOT NULL DEFAULT '',
    version        text NOT NULL DEFAULT '',
    -- 'online' while a stream is open, 'offline' once it closed. Readers also require a recent
    -- last_heartbeat, so a front-end that died without closing its streams cannot keep agents online.
    status         text NOT NULL DEFAULT 'offline' CHECK (status IN ('online', 'offline')),
    last_heartbeat timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- One row per (agent, metric name, label set). Points reference it by a 4-byte id so that labels
-- are stored once, never per point. jsonb normalises key order, so equal label sets compare equal.
CREATE TABLE series (
    series_id  integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    agent_id   text NOT NULL,
    name       text NOT NULL,
    labels     jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (agent_id, name, labels)
);

-- Narrow raw points, range-partitioned by day. No DEFAULT partition on purpose: rows in a default
-- partition would block creating the partition they belong to. Partitions are created ahead of
-- time by fleetpulse/partitions.py; points outside the accepted window are rejected and counted.
CREATE TABLE points (
    series_id integer NOT NULL,
    ts        timestamptz NOT NULL,
    value     double precision NOT NULL
) PARTITION BY RANGE (ts);
CREATE INDEX points_series_ts ON points (series_id, ts);

-- The batch ledger: one row per committed batch, written in the same transaction as its points.
-- Its primary key turns a redelivered batch into a no-op. Unpartitioned, because a UNIQUE key on a
-- partitioned table would have to include the partition column.
CREATE TABLE batches (
    agent_id     text NOT NULL,
    epoch        bigint NOT NULL,
    seq          bigint NOT NULL,
    points       integer NOT NULL,
    rejected     integer NOT NULL DEFAULT 0,
    stream_id    text NOT NULL,
    -- Stamped as the row is written, inside the committing transaction just before its COPY, so
    -- it precedes the real commit by at most that chunk's COPY and COMMIT (freshness figures).
    committed_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (agent_id, epoch, seq)
);

-- Running ingest accounting per agent, updated once per chunk (not per batch) by the workers.
CREATE TABLE agent_ingest (
    agent_id          text PRIMARY KEY,
    batches_committed bigint NOT NULL DEFAULT 0,
    points_committed  bigint NOT NULL DEFAULT 0,
    points_rejected   bigint NOT NULL DEFAULT 0,
    last_epoch        bigint,
    last_seq          bigint,
    last_commit_at    timestamptz
);

-- What the workers refused, per agent and reason: nothing rejected is silently lost. A batch that
-- does not decode counts in `batches` (its points are unknown); refused points count in `points`.
CREATE TABLE rejects (
    agent_id text NOT NULL,
    reason   text NOT NULL,
    batches  bigint NOT NULL DEFAULT 0,
    points   bigint NOT NULL DEFAULT 0,
    last_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (agent_id, reason)
);

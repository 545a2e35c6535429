"""Liveness that says what it knows: one rule for an agent's state, its transitions and their causes.

States (issue 18):

- ``online``: the stream is open and heartbeats come on time.
- ``stale``: the stream is open but the last heartbeat is more than ``stale_after_heartbeats``
  intervals old (one missed); the agent may be wedged, or its network slow.
- ``data_stale``: heartbeats come on time but no batch was accepted from the agent for
  ``data_stale_after_s`` (at least three of its collection intervals): it lives, its data does not
  arrive (a stuck collector, a full disk under its spool, the platform refusing its batches).
- ``offline``: the stream closed, or heartbeats stopped for ``offline_after_heartbeats`` intervals
  (a front-end that died without closing its streams cannot keep agents online).

Both heartbeat bounds add one ``heartbeat_flush_interval_s``: a heartbeat reaches PostgreSQL up
to one flush after it arrived.

Intervals are the agent's own (it reports them; remote settings change them), else the platform's
``heartbeat_interval_s``. The rule is one SQL expression (`STATE`), used by the API for the state of
now and by the front-ends' sweep, which records each transition the clock causes (late, timed out,
resumed) at the time it happened, not when the sweep noticed. Transitions an event causes (a
register, a stream closing with its reason, a newer connection, a revocation, a clone conflict, a
front-end stopping) are recorded by the front-end as they happen (ingest/frontend/registry.py).
"""

from __future__ import annotations

from typing import Any

from fleetpulse import errors
from fleetpulse.settings import Settings

STATES = ("online", "stale", "data_stale", "offline")

# Causes of a transition (agent_liveness.cause).
REGISTERED = "registered"  # a stream registered
REPLACED = "replaced"  # a newer connection of the agent took over (the old stream was open)
DISCONNECTED = "disconnected"  # the agent said goodbye (detail: its reason)
STREAM_CLOSED = "stream_closed"  # the stream ended without a goodbye (network, agent killed)
REVOKED = "revoked"  # an operator revoked its credential
CLONE_CONFLICT = "clone_conflict"  # a second machine claimed its id (detail: which)
FRONTEND_STOPPED = "frontend_stopped"  # the front-end holding the stream shut down
REFUSED = "refused"  # the front-end ended the stream for a bad message (detail: which)
OBSERVED = "observed"  # first recorded by a sweep (an agent registered before schema 15)
HEARTBEAT_LATE = "heartbeat_late"
HEARTBEAT_TIMEOUT = "heartbeat_timeout"
HEARTBEATS_RESUMED = "heartbeats_resumed"
BATCHES_LATE = "batches_late"
BATCHES_RESUMED = "batches_resumed"

# The state of now, its start and cause, for the agents row ``a``: a LATERAL subquery
# (``CROSS JOIN LATERAL ({STATE}) lv``). Parameters: `params`.
_HEARTBEAT_S = "coalesce(a.heartbeat_interval_ms / 1000.0, %(heartbeat_interval_s)s)::float8"
# A heartbeat reaches PostgreSQL up to one flush after it arrived (registry.py): the bounds
# allow for that, so that a flush interval as long as the heartbeat interval makes no one late.
_LATE_AT = (
    "a.last_heartbeat + make_interval(secs => %(stale_after_heartbeats)s * "
    f"{_HEARTBEAT_S} + %(heartbeat_flush_interval_s)s)"
)
_GONE_AT = (
    "a.last_heartbeat + make_interval(secs => %(offline_after_heartbeats)s * "
    f"{_HEARTBEAT_S} + %(heartbeat_flush_interval_s)s)"
)
_DATA_AFTER_S = (
    "greatest(%(data_stale_after_s)s, 3 * coalesce(a.collect_interval_ms / 1000.0, 0))::float8"
)
_DATA_LATE_AT = (
    f"greatest(a.last_batch_at, a.connected_at) + make_interval(secs => {_DATA_AFTER_S})"
)
STATE = f"""
SELECT s.state,
    -- the recorded state's own start and cause while it holds; a new one never starts before
    -- the recorded one did
    CASE WHEN s.state = a.liveness THEN a.liveness_since
        ELSE greatest(s.since, a.liveness_since) END AS since,
    CASE WHEN s.state = a.liveness THEN a.liveness_cause ELSE s.cause END AS cause,
    CASE WHEN s.state = a.liveness THEN a.liveness_detail ELSE s.detail END AS detail
FROM (SELECT
    CASE WHEN a.status <> 'online' OR a.last_heartbeat IS NULL THEN 'offline'
        WHEN {_GONE_AT} <= now() THEN 'offline'
        WHEN {_LATE_AT} <= now() THEN 'stale'
        WHEN {_DATA_LATE_AT} <= now() THEN 'data_stale'
        ELSE 'online' END AS state,
    CASE WHEN a.status <> 'online' OR a.last_heartbeat IS NULL THEN a.updated_at
        WHEN {_GONE_AT} <= now() THEN {_GONE_AT}
        WHEN {_LATE_AT} <= now() THEN {_LATE_AT}
        WHEN {_DATA_LATE_AT} <= now() THEN {_DATA_LATE_AT}
        WHEN a.liveness = 'data_stale' THEN least(now(), a.last_batch_at)
        ELSE least(now(), a.last_heartbeat) END AS since,
    CASE WHEN a.status <> 'online' OR a.last_heartbeat IS NULL THEN '{STREAM_CLOSED}'
        WHEN {_GONE_AT} <= now() THEN '{HEARTBEAT_TIMEOUT}'
        WHEN {_LATE_AT} <= now() THEN '{HEARTBEAT_LATE}'
        WHEN {_DATA_LATE_AT} <= now() THEN '{BATCHES_LATE}'
        WHEN a.liveness IS NULL THEN '{OBSERVED}'
        WHEN a.liveness = 'data_stale' THEN '{BATCHES_RESUMED}'
        ELSE '{HEARTBEATS_RESUMED}' END AS cause,
    CASE WHEN a.status <> 'online' OR a.last_heartbeat IS NULL THEN ''
        WHEN {_LATE_AT} <= now() THEN 'last heartbeat at ' || a.last_heartbeat::text
            || ', every ' || {_HEARTBEAT_S}::text || ' s expected'
        WHEN {_DATA_LATE_AT} <= now() THEN 'no batch accepted for '
            || {_DATA_AFTER_S}::text || ' s'
        ELSE '' END AS detail
) s
"""  # noqa: S608  # constants only: every value is a bind parameter

# Record what the clock changed since the last sweep: every agent whose state of now is not its
# recorded one, locked, moved, and its transition written, in one statement. Rows another
# statement holds (a heartbeat flush, a register) are skipped, never waited for, so a sweep cannot
# deadlock with anything; they are recorded by the next sweep.
SWEEP = f"""
WITH due AS (
    SELECT a.agent_id, lv.state, lv.since, lv.cause, lv.detail
    FROM agents a CROSS JOIN LATERAL ({STATE}) lv
    WHERE lv.state IS DISTINCT FROM a.liveness
    FOR UPDATE OF a SKIP LOCKED
), moved AS (
    UPDATE agents a SET liveness = due.state, liveness_since = due.since,
        liveness_cause = due.cause, liveness_detail = due.detail
    FROM due WHERE a.agent_id = due.agent_id
    RETURNING a.agent_id, due.state, due.since, due.cause, due.detail
)
INSERT INTO agent_liveness (agent_id, at, state, cause, detail)
SELECT agent_id, since, state, cause, detail FROM moved
"""  # noqa: S608  # constants only

PRUNE = "DELETE FROM agent_liveness WHERE at < now() - make_interval(days => %s)"


def params(settings: Settings) -> dict[str, Any]:
    """The bind parameters of `STATE` and `SWEEP`."""
    return {
        "heartbeat_interval_s": settings.heartbeat_interval_s,
        "stale_after_heartbeats": settings.stale_after_heartbeats,
        "offline_after_heartbeats": settings.offline_after_heartbeats,
        "data_stale_after_s": settings.data_stale_after_s,
        "heartbeat_flush_interval_s": settings.heartbeat_flush_interval_s,
    }


def cause_of_end(error: errors.FleetpulseError | None, stopping: bool) -> tuple[str, str]:
    """Why a stream that ended without a goodbye went offline, and the detail: from the error
    the front-end ended it with (None: it just closed)."""
    if isinstance(error, errors.Superseded):
        return REPLACED, error.message
    if isinstance(error, errors.Unauthenticated):
        return REVOKED, error.message
    if isinstance(error, errors.Conflict):
        return CLONE_CONFLICT, error.message
    if stopping:
        return FRONTEND_STOPPED, ""
    if error is not None:
        return REFUSED, error.message
    return STREAM_CLOSED, ""

"""What the rule evaluator keeps in PostgreSQL (schema 0018): each group's last evaluation, each
rule's health, each alert's state; and what every API process reads back for /api/v1/rules and
/api/v1/alerts. One statement per table per round, whatever the number of rules or alerts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from psycopg import AsyncConnection

from fleetpulse.api.rules.alerts import Alert

_SAVE_GROUP = """
INSERT INTO rule_groups AS g (group_key, last_eval_at, eval_duration_s, evaluated_at, missed, evaluator)
VALUES (%s, to_timestamp(%s), %s, now(), %s, %s)
ON CONFLICT (group_key) DO UPDATE SET
    last_eval_at = EXCLUDED.last_eval_at, eval_duration_s = EXCLUDED.eval_duration_s,
    evaluated_at = now(), missed = g.missed + EXCLUDED.missed, evaluator = EXCLUDED.evaluator
"""
_SAVE_HEALTH = """
INSERT INTO rule_health (group_key, rule_key, health, last_error, last_eval_at, eval_duration_s)
SELECT %(group)s, k, h, e, to_timestamp(%(ts)s), d
FROM unnest(%(keys)s::text[], %(health)s::text[], %(errors)s::text[], %(durations)s::float8[])
    AS r(k, h, e, d)
ON CONFLICT (group_key, rule_key) DO UPDATE SET
    health = EXCLUDED.health, last_error = EXCLUDED.last_error,
    last_eval_at = EXCLUDED.last_eval_at, eval_duration_s = EXCLUDED.eval_duration_s
"""
_DELETE_ALERTS = """
DELETE FROM alerts a WHERE a.group_key = %(group)s AND NOT EXISTS (
    SELECT 1 FROM unnest(%(keys)s::text[], %(fps)s::text[]) AS k(rule_key, fingerprint)
    WHERE k.rule_key = a.rule_key AND k.fingerprint = a.fingerprint)
"""
_SAVE_ALERTS = """
INSERT INTO alerts (group_key, rule_key, fingerprint, labels, annotations, state, active_at,
    fired_at, resolved_at, keep_firing_since, last_sent_at, valid_until, value)
SELECT %(group)s, k, f, l, a, s, to_timestamp(t0), to_timestamp(t1), to_timestamp(t2),
    to_timestamp(t3), to_timestamp(t4), to_timestamp(t5), v
FROM unnest(%(keys)s::text[], %(fps)s::text[], %(labels)s::jsonb[], %(annotations)s::jsonb[],
    %(states)s::text[], %(active)s::float8[], %(fired)s::float8[], %(resolved)s::float8[],
    %(keep)s::float8[], %(sent)s::float8[], %(valid)s::float8[], %(values)s::float8[])
    AS r(k, f, l, a, s, t0, t1, t2, t3, t4, t5, v)
ON CONFLICT (group_key, rule_key, fingerprint) DO UPDATE SET
    labels = EXCLUDED.labels, annotations = EXCLUDED.annotations, state = EXCLUDED.state,
    active_at = EXCLUDED.active_at, fired_at = EXCLUDED.fired_at,
    resolved_at = EXCLUDED.resolved_at, keep_firing_since = EXCLUDED.keep_firing_since,
    last_sent_at = EXCLUDED.last_sent_at, valid_until = EXCLUDED.valid_until, value = EXCLUDED.value
"""
# Times leave as Unix seconds (float8): the evaluator's clock.
_ALERT_COLUMNS = """rule_key, fingerprint, labels, annotations, state,
    extract(epoch FROM active_at)::float8, extract(epoch FROM fired_at)::float8,
    extract(epoch FROM resolved_at)::float8, extract(epoch FROM keep_firing_since)::float8,
    extract(epoch FROM last_sent_at)::float8, extract(epoch FROM valid_until)::float8, value"""
_LAST_EVAL = "SELECT extract(epoch FROM last_eval_at)::float8 FROM rule_groups WHERE group_key = %s"
_LOAD_ALERTS = "SELECT " + _ALERT_COLUMNS + " FROM alerts WHERE group_key = %s"  # noqa: S608  # constants
_READ_GROUPS = (
    "SELECT group_key, extract(epoch FROM last_eval_at)::float8, eval_duration_s FROM rule_groups"
)
_READ_HEALTH = (
    "SELECT group_key, rule_key, health, last_error, extract(epoch FROM last_eval_at)::float8,"
    " eval_duration_s FROM rule_health"
)
_READ_ALERTS = "SELECT group_key, " + _ALERT_COLUMNS + " FROM alerts"  # noqa: S608  # constants


def _alert(row: Any) -> tuple[str, Alert]:
    rule_key, fp, labels, annotations, state, active, fired, resolved, keep, sent, valid, value = (
        row
    )
    return rule_key, Alert(
        labels, annotations, state, active, value, fired, resolved, keep, sent, valid, fp
    )


async def last_evaluation(conn: AsyncConnection[Any], group_key: str) -> float | None:
    """The group's last evaluation timestamp (Unix seconds), or None if it never ran."""
    cur = await conn.execute(_LAST_EVAL, (group_key,))
    row = await cur.fetchone()
    return None if row is None else row[0]


async def load_alerts(conn: AsyncConnection[Any], group_key: str) -> dict[str, list[Alert]]:
    """The group's saved alerts, by rule key."""
    cur = await conn.execute(_LOAD_ALERTS, (group_key,))
    out: dict[str, list[Alert]] = {}
    for row in await cur.fetchall():
        rule_key, alert = _alert(row)
        out.setdefault(rule_key, []).append(alert)
    return out


@dataclass
class RuleOutcome:
    key: str
    health: str  # ok, err
    error: str
    duration_s: float


async def save_round(
    conn: AsyncConnection[Any],
    group_key: str,
    ts: float,
    duration_s: float,
    missed: int,
    evaluator: str,
    outcomes: list[RuleOutcome],
    alerts: list[tuple[str, Alert]],
    changed: list[tuple[str, Alert]],
) -> None:
    """One round of a group, in one transaction: the group's row, its rules' health, and its
    alerts (``alerts``: all it keeps now, by rule key; ``changed``: those to write)."""
    async with conn.transaction():
        await conn.execute(_SAVE_GROUP, (group_key, ts, duration_s, missed, evaluator))
        if outcomes:
            await conn.execute(
                _SAVE_HEALTH,
                {
                    "group": group_key,
                    "ts": ts,
                    "keys": [o.key for o in outcomes],
                    "health": [o.health for o in outcomes],
                    "errors": [o.error for o in outcomes],
                    "durations": [o.duration_s for o in outcomes],
                },
            )
        await conn.execute(
            _DELETE_ALERTS,
            {
                "group": group_key,
                "keys": [k for k, _ in alerts],
                "fps": [a.fingerprint for _, a in alerts],
            },
        )
        if changed:
            await conn.execute(
                _SAVE_ALERTS,
                {
                    "group": group_key,
                    "keys": [k for k, _ in changed],
                    "fps": [a.fingerprint for _, a in changed],
                    "labels": [orjson.dumps(a.labels).decode() for _, a in changed],
                    "annotations": [orjson.dumps(a.annotations).decode() for _, a in changed],
                    "states": [a.state for _, a in changed],
                    "active": [a.active_at for _, a in changed],
                    "fired": [a.fired_at for _, a in changed],
                    "resolved": [a.resolved_at for _, a in changed],
                    "keep": [a.keep_firing_since for _, a in changed],
                    "sent": [a.last_sent_at for _, a in changed],
                    "valid": [a.valid_until for _, a in changed],
                    "values": [a.value for _, a in changed],
                },
            )


@dataclass
class GroupState:
    last_eval_at: float | None = None
    duration_s: float = 0.0
    health: dict[str, tuple[str, str, float, float]] | None = None  # key: health, error, at, s


async def read_state(
    conn: AsyncConnection[Any],
) -> tuple[dict[str, GroupState], dict[tuple[str, str], list[Alert]]]:
    """Every group's and rule's last evaluation, and every saved alert by (group, rule key):
    what /api/v1/rules and /api/v1/alerts answer from, in any API process."""
    groups: dict[str, GroupState] = {}
    cur = await conn.execute(_READ_GROUPS)
    for key, at, duration in await cur.fetchall():
        groups[key] = GroupState(at, duration, {})
    cur = await conn.execute(_READ_HEALTH)
    for group_key, rule_key, health, error, at, duration in await cur.fetchall():
        state = groups.setdefault(group_key, GroupState(health={}))
        assert state.health is not None
        state.health[rule_key] = (health, error, at, duration)
    cur = await conn.execute(_READ_ALERTS)
    alerts: dict[tuple[str, str], list[Alert]] = {}
    for row in await cur.fetchall():
        rule_key, alert = _alert(row[1:])
        alerts.setdefault((row[0], rule_key), []).append(alert)
    return groups, alerts

"""The audit log: every operator action, with its time, who made it, and its target (schema 0014).

Who: ``key:<name>`` for an API key (keys are named in the settings: ``name:key``), ``cli:<user>``
for the CLI run by a local user, ``enrollment-token`` for an agent that enrolled itself, and
``platform`` for what the platform does on its own. An action is written in the transaction that
makes it, so the log never shows a change that did not happen, nor misses one that did.
Read by ``GET /audit`` and ``fleetpulse actions``; it is kept (an operator deletes old rows by
hand if ever needed: it grows with actions, not with data).
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection, Connection
from psycopg.types.json import Jsonb

# What was done (the `action` column).
SETTINGS_CHANGE = "settings.change"
TAGS_CHANGE = "tags.change"
CREDENTIAL_REVOKE = "credential.revoke"
AGENT_ENROLL = "agent.enroll"
SERIES_BUDGET_CHANGE = "series_budget.change"
ROLLOUT_CREATE = "rollout.create"
ROLLOUT_PAUSE = "rollout.pause"
ROLLOUT_RESUME = "rollout.resume"
ROLLOUT_ABORT = "rollout.abort"
# The rollout job's own: a wave failed its health gate (the rollout stopped, the wave reverted),
# or the last wave passed.
ROLLOUT_FAIL = "rollout.fail"
ROLLOUT_COMPLETE = "rollout.complete"
ACTIONS = (
    SETTINGS_CHANGE,
    TAGS_CHANGE,
    CREDENTIAL_REVOKE,
    AGENT_ENROLL,
    SERIES_BUDGET_CHANGE,
    ROLLOUT_CREATE,
    ROLLOUT_PAUSE,
    ROLLOUT_RESUME,
    ROLLOUT_ABORT,
    ROLLOUT_FAIL,
    ROLLOUT_COMPLETE,
)

# The actor of an enrollment: the agent presented the enrollment token.
BY_ENROLLMENT = "enrollment-token"
# The actor of what the platform does on its own (a rollout stopped by its health gate).
BY_PLATFORM = "platform"

_INSERT = "INSERT INTO audit_log (actor, action, target, detail) VALUES (%s, %s, %s, %s)"
_READ = """
SELECT id, at, actor, action, target, detail FROM audit_log
WHERE (%(target)s::text IS NULL OR target = %(target)s)
    AND (%(action)s::text IS NULL OR action = %(action)s)
    AND (%(actor)s::text IS NULL OR actor = %(actor)s)
    AND (%(before)s::bigint IS NULL OR id < %(before)s)
ORDER BY id DESC LIMIT %(limit)s
"""


@dataclass(frozen=True)
class Entry:
    id: int
    at: datetime
    actor: str
    action: str
    target: str
    detail: dict[str, Any]


def cli_actor() -> str:
    """The CLI's user, as the log names it."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no name for this uid (a container)
        return "cli:unknown"


def key_actor(name: str) -> str:
    return f"key:{name}"


def record(
    conn: Connection[Any], actor: str, action: str, target: str, detail: dict[str, Any]
) -> None:
    conn.execute(_INSERT, (actor, action, target, Jsonb(detail)))


async def record_async(
    conn: AsyncConnection[Any], actor: str, action: str, target: str, detail: dict[str, Any]
) -> None:
    await conn.execute(_INSERT, (actor, action, target, Jsonb(detail)))


def _params(
    target: str | None, action: str | None, actor: str | None, before: int | None, limit: int
) -> dict[str, Any]:
    return {"target": target, "action": action, "actor": actor, "before": before, "limit": limit}


def read(
    conn: Connection[Any],
    target: str | None = None,
    action: str | None = None,
    actor: str | None = None,
    before: int | None = None,
    limit: int = 100,
) -> list[Entry]:
    """The newest entries first; ``before``: an id, to page back."""
    rows = conn.execute(_READ, _params(target, action, actor, before, limit)).fetchall()
    return [Entry(*row) for row in rows]


async def read_async(
    conn: AsyncConnection[Any],
    target: str | None = None,
    action: str | None = None,
    actor: str | None = None,
    before: int | None = None,
    limit: int = 100,
) -> list[Entry]:
    cur = await conn.execute(_READ, _params(target, action, actor, before, limit))
    return [Entry(*row) for row in await cur.fetchall()]

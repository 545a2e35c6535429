"""What the routers share, apart from them (the full-stack FastAPI template's ``deps.py``): the
request's database connection and settings, the read-key check every route but a few runs, an
agent id that must exist, and the two rules the agent and fleet reads both apply (no NUL in text,
when an agent counts as online).

Dependencies are ``Annotated`` aliases (``ConnDep``...) so that a handler names what it needs by
type. They raise fleetpulse's errors (fleetpulse/errors.py); app.py answers them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import orjson
from fastapi import Depends, Query, Request
from psycopg import AsyncConnection
from psycopg.types.json import Jsonb, set_json_loads
from psycopg_pool import AsyncConnectionPool

from fleetpulse.agent import tags as agent_tags
from fleetpulse.api import auth
from fleetpulse.errors import BadInput, NotFound
from fleetpulse.settings import Settings

_AGENT_EXISTS = "SELECT 1 FROM agents WHERE agent_id = %s"


async def _connection(request: Request) -> AsyncIterator[AsyncConnection[Any]]:
    pool: AsyncConnectionPool[AsyncConnection[Any]] = request.app.state.pool
    async with pool.connection() as conn:
        yield conn


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


# scope="function": the connection goes back to the pool when the handler returns, not after the
# response (possibly megabytes of points) has been sent to a slow client.
ConnDep = Annotated[AsyncConnection[Any], Depends(_connection, scope="function")]
SettingsDep = Annotated[Settings, Depends(_settings)]


async def configure_connection(conn: AsyncConnection[Any]) -> None:
    """Every API connection (the app's pool and the rule evaluator's): autocommit, UTC, custom
    plans, orjson for jsonb."""
    # Each read is one statement, so autocommit (no transaction left open between requests); UTC
    # so that timestamps leave the API in one zone whatever the server's TimeZone setting is.
    await conn.set_autocommit(True)
    await conn.execute("SET TimeZone = 'UTC'")
    # psycopg prepares a statement run five times, and PostgreSQL may then use a generic plan,
    # made without the parameters' values: for a range over daily partitions it cannot prune at
    # plan time. Measured on the 1B-point dataset (docs/performance.md): the 7-day chart's SQL took
    # 11-13 ms for its first five runs and 155-468 ms once generic; a custom plan each time keeps
    # the parse saved and plans with the values.
    await conn.execute("SET plan_cache_mode = force_custom_plan")
    # Series labels are jsonb: orjson reads them, not the standard library (2,000 series of a
    # top-N: about 8 of select_series' 22 ms were json.loads).
    set_json_loads(orjson.loads, conn)


async def require_read_key(request: Request, settings: SettingsDep) -> None:
    """The app-wide check: a read (or admin) key on every path but the open ones, the
    dashboard's pages (which check it themselves, to redirect to the login form) and the paths
    that take a write key instead (which check that)."""
    path = request.url.path
    if path not in auth.OPEN_PATHS and path not in auth.PAGE_PATHS and path not in auth.WRITE_PATHS:
        auth.require_read(request, settings)


def has_nul(text: str) -> bool:
    """Whether ``text`` holds a NUL. PostgreSQL text cannot, so no stored agent id or metric name
    contains one, and psycopg refuses to send such a parameter at all (DataError, which would be
    a 500): a read with one finds nothing without asking."""
    return "\x00" in text


def agent_not_found(agent_id: str) -> NotFound:
    return NotFound(f"agent '{agent_id}' not found")


async def known_agent_id(agent_id: str, conn: ConnDep) -> str:
    if has_nul(agent_id):
        raise agent_not_found(agent_id)
    cur = await conn.execute(_AGENT_EXISTS, (agent_id,))
    if await cur.fetchone() is None:
        raise agent_not_found(agent_id)
    return agent_id


KnownAgentIdDep = Annotated[str, Depends(known_agent_id)]


# `tag=env=prod&tag=role=db`: agents carrying every one of these tags (agent/tags.py).
TagsDep = Annotated[
    list[str] | None,
    Query(description="key=value; repeated: every one (the agent's tags, agent/tags.py)"),
]


def tag_filter(tag: list[str] | None) -> Jsonb | None:
    """The ``tag`` parameters as a jsonb containment filter, or None (not filtered)."""
    if not tag:
        return None
    try:
        return Jsonb(agent_tags.parse(tag))
    except ValueError as exc:
        raise BadInput(f"tag: {exc}") from None

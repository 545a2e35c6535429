"""Read endpoints for agents: identity and liveness, ingest accounting, series, raw points.

Every query is a constant with bind parameters; nothing a client sends is ever formatted into SQL.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import groupby
from operator import itemgetter
from typing import Annotated, Any, Literal

import numpy as np
import orjson
from fastapi import APIRouter, Query, Response
from psycopg import AsyncConnection
from psycopg.rows import class_row

from fleetpulse import liveness, samples
from fleetpulse.api.deps import (
    ConnDep,
    KnownAgentIdDep,
    SettingsDep,
    TagsDep,
    agent_not_found,
    has_nul,
    tag_filter,
)
from fleetpulse.api.schemas import (
    AgentDetailPublic,
    AgentPublic,
    LivenessChangePublic,
    SeriesPointsPublic,
    SeriesPublic,
)
from fleetpulse.errors import BadInput

DEFAULT_WINDOW = timedelta(hours=1)

# The state of now (fleetpulse/liveness.py: online, stale, data_stale or offline), since when and
# why, by the same rule the front-ends record transitions with.
_AGENT_COLUMNS = """
SELECT a.agent_id, a.hostname, a.ip, a.os, a.arch, a.version,
    lv.state AS status, lv.since AS status_since, lv.cause AS status_cause,
    lv.detail AS status_detail,
    a.last_heartbeat, a.created_at, a.updated_at,
    a.config_tags || coalesce(t.tags, '{}'::jsonb) AS tags,
    coalesce(i.batches_committed, 0) AS batches_committed,
    coalesce(i.points_committed, 0) AS points_committed"""
_LIVENESS_JOIN = f"CROSS JOIN LATERAL ({liveness.STATE}) lv"

# The filters are bind parameters; NULL means "not filtered".
_LIST_AGENTS = (
    "SELECT *, count(*) OVER () AS total FROM ("  # noqa: S608  # constants only
    + _AGENT_COLUMNS
    + """
FROM agents a LEFT JOIN agent_ingest i USING (agent_id) LEFT JOIN agent_tags t USING (agent_id)
"""
    + _LIVENESS_JOIN
    + """
) a
WHERE (%(status)s::text IS NULL OR status = %(status)s)
    AND (%(os)s::text IS NULL OR os = %(os)s)
    AND (%(arch)s::text IS NULL OR arch = %(arch)s)
    AND (%(version)s::text IS NULL OR version = %(version)s)
    AND (%(q)s::text IS NULL OR agent_id ILIKE %(q)s OR hostname ILIKE %(q)s)
    AND (%(tags)s::jsonb IS NULL OR tags @> %(tags)s::jsonb)
"""
)

_COUNT_AGENTS = "SELECT count(*) FROM (" + _LIST_AGENTS + ") counted"  # noqa: S608

# ORDER BY clauses by the `sort` a client may ask for: a fixed set, chosen by key, never built
# from the request. agent_id last, so that pages are stable.
_ORDER = {
    "agent_id": "agent_id",
    "hostname": "hostname, agent_id",
    "status": "status, agent_id",
    "os": "os, agent_id",
    "version": "version, agent_id",
    "last_heartbeat": "last_heartbeat NULLS FIRST, agent_id",
    "-agent_id": "agent_id DESC",
    "-hostname": "hostname DESC, agent_id",
    "-status": "status DESC, agent_id",
    "-os": "os DESC, agent_id",
    "-version": "version DESC, agent_id",
    "-last_heartbeat": "last_heartbeat DESC NULLS LAST, agent_id",
}
# Sorted in Python after computing them for every matching agent.
_COMPUTED_SORTS = ("cpu_percent", "memory_percent")
SORTS = (*_ORDER, *_COMPUTED_SORTS, *(f"-{key}" for key in _COMPUTED_SORTS))

# The series whose latest point (of the last 5 minutes) gives each agent's CPU and memory use.
_NOW_SERIES = """
SELECT series_id, agent_id, name, labels->>'state' FROM series
WHERE agent_id = ANY(%s)
    AND ((name = 'cpu_usage_percent' AND labels = '{"mode": "idle"}')
        OR (name = 'memory_bytes' AND labels->>'state' IN ('total', 'available')))
"""
_LATEST = (
    "SELECT DISTINCT ON (series_id) series_id, value FROM ("  # noqa: S608  # constants only
    + samples.points_sql("ids", "lo", "hi")
    + ") p ORDER BY series_id, ts DESC"
)
# Points may lie up to max_future_s ahead; an hour by default.
_NOW_HORIZON = timedelta(days=2)

# Two constants joined; no input is ever formatted into SQL.
_GET_AGENT = (
    _AGENT_COLUMNS  # noqa: S608
    + """,
    coalesce(i.points_rejected, 0) AS points_rejected,
    i.last_epoch, i.last_seq, i.last_commit_at,
    coalesce(
        (SELECT jsonb_object_agg(r.reason, r.points) FROM rejects r WHERE r.agent_id = a.agent_id),
        '{}'::jsonb
    ) AS rejected_by_reason,
    a.machine_id, a.disconnect_reason, a.conflicts, a.conflict, a.conflict_at,
    c.agent_id IS NOT NULL AND c.revoked_at IS NULL AS credential_active,
    c.revoked_at AS credential_revoked_at,
    a.collect_interval_ms, a.heartbeat_interval_ms, a.collectors,
    a.settings_version, a.settings_applied, a.settings_error, s.version AS settings_desired_version
FROM agents a LEFT JOIN agent_ingest i USING (agent_id)
    LEFT JOIN agent_tags t USING (agent_id)
    LEFT JOIN agent_credentials c USING (agent_id)
    LEFT JOIN agent_settings s USING (agent_id)
"""
    + _LIVENESS_JOIN
    + """
WHERE a.agent_id = %(agent_id)s
"""
)

_LIST_SERIES = """
SELECT series_id, name, labels FROM series WHERE agent_id = %s ORDER BY name, series_id
"""

_HISTORY = """
SELECT id, at, state, cause, detail FROM agent_liveness
WHERE agent_id = %(agent_id)s AND (%(before)s::bigint IS NULL OR id < %(before)s)
ORDER BY at DESC, id DESC LIMIT %(limit)s
"""

_LIST_SERIES_BY_NAME = """
SELECT series_id, name, labels FROM series WHERE agent_id = %s AND name = %s
ORDER BY name, series_id
"""

_SERIES_LABELS = "SELECT series_id, labels FROM series WHERE agent_id = %s AND name = %s"

_SELECT_POINTS = (
    "SELECT series_id, ts, value FROM ("  # noqa: S608  # constants only
    + samples.points_sql("ids", "start", "end")
    + ") p ORDER BY series_id, ts LIMIT %(limit)s"
)


# Points of compressed hours (fleetpulse/samples.py), read in the same snapshot as _SELECT_POINTS.
_CHUNKS = samples.chunks_sql("ids", "start", "end")


def _with_chunks(
    rows: list[tuple[int, datetime, float]],
    chunked: list[tuple[Any, ...]],
    start: datetime,
    end: datetime,
    limit: int,
) -> list[tuple[int, datetime, float]]:
    """The hot rows (the first ``limit`` by series and time) and the points of compressed hours,
    in that order, the first ``limit``: a hot row past the hot limit cannot be among them."""
    points = samples.chunk_points(chunked, samples.unix_us(start), samples.unix_us(end))
    order = np.lexsort((points.ts_unix_us, points.series_id))[:limit]
    extra = list(
        zip(
            points.series_id[order].tolist(),
            [samples.at_us(t) for t in points.ts_unix_us[order].tolist()],
            points.value[order].tolist(),
            strict=True,
        )
    )
    return sorted(rows + extra, key=lambda row: (row[0], row[1]))[:limit]


class BadWindow(BadInput):
    """``start``/``end`` that make no window: answered 400, as ``/agents/{id}/points`` always
    has (other bad input, here and in the native queries, is 422)."""


router = APIRouter(tags=["agents"])


def _like(text: str) -> str:
    """A substring pattern for ILIKE that matches ``text`` literally (% and _ included)."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


async def now_values(conn: AsyncConnection[Any], agents: list[AgentPublic]) -> None:
    """Fill cpu_percent and memory_percent of ``agents`` in one query."""
    if not agents:
        return
    cur = await conn.execute(_NOW_SERIES, ([a.agent_id for a in agents],))
    wanted = {row[0]: row[1:] for row in await cur.fetchall()}
    if not wanted:
        return
    now = datetime.now(UTC)
    cur = await conn.execute(
        _LATEST, {"ids": list(wanted), "lo": now - timedelta(minutes=5), "hi": now + _NOW_HORIZON}
    )
    idle: dict[str, float] = {}
    memory: dict[tuple[str, str], float] = {}
    for series_id, value in await cur.fetchall():
        agent_id, name, state = wanted[series_id]
        if name == "cpu_usage_percent":
            idle[agent_id] = value
        else:
            memory[(agent_id, state)] = value
    for agent in agents:
        if agent.agent_id in idle:
            agent.cpu_percent = round(100.0 - idle[agent.agent_id], 2)
        total = memory.get((agent.agent_id, "total"))
        available = memory.get((agent.agent_id, "available"))
        if total and available is not None:
            agent.memory_percent = round(100.0 * (1.0 - available / total), 2)


def _sort_key(field: str) -> Any:
    def key(agent: AgentPublic) -> tuple[bool, float, str]:
        value = getattr(agent, field)
        return (value is None, value if value is not None else 0.0, agent.agent_id)

    return key


@router.get("/agents", responses={422: {"description": "Unknown sort key or limit out of range"}})
async def list_agents(
    conn: ConnDep,
    settings: SettingsDep,
    response: Response,
    status: Literal["online", "stale", "data_stale", "offline"] | None = None,
    os: str | None = None,
    arch: str | None = None,
    version: str | None = None,
    q: str | None = None,
    tag: TagsDep = None,
    sort: Literal[SORTS] = "agent_id",  # type: ignore[valid-type]
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    # bounded by what PostgreSQL's OFFSET takes (bigint): past it, a 422 and not a 500
    offset: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
) -> list[AgentPublic]:
    """One page of agents, filtered and sorted, each with its CPU and memory now; the number of
    matching agents is in the X-Total-Count header."""
    params: dict[str, Any] = {
        **liveness.params(settings),
        "status": status,
        "os": os,
        "arch": arch,
        "version": version,
        "q": _like(q) if q else None,
        "tags": tag_filter(tag),
    }
    if any(value is not None and has_nul(str(value)) for value in params.values()):
        response.headers["X-Total-Count"] = "0"
        return []
    computed = sort.lstrip("-") in _COMPUTED_SORTS
    query = _LIST_AGENTS + f"ORDER BY {_ORDER.get(sort, 'agent_id')}"
    if not computed:
        query += " LIMIT %(limit)s OFFSET %(offset)s"
        params |= {"limit": limit, "offset": offset}
    cur = await conn.execute(query, params)
    columns = [column.name for column in cur.description or ()]
    rows = [dict(zip(columns, row, strict=True)) for row in await cur.fetchall()]
    total = rows[0]["total"] if rows else await _count(conn, params, offset)
    agents = [AgentPublic.model_validate(row) for row in rows]
    if computed:
        await now_values(conn, agents)
        agents.sort(key=_sort_key(sort.lstrip("-")), reverse=sort.startswith("-"))
        if sort.startswith("-"):  # nulls last either way
            agents.sort(key=lambda agent: getattr(agent, sort[1:]) is None)
        agents = agents[offset : offset + limit]
    else:
        await now_values(conn, agents)
    response.headers["X-Total-Count"] = str(total)
    return agents


async def _count(conn: AsyncConnection[Any], params: dict[str, Any], offset: int) -> int:
    """The total when the page came back empty (an offset past the end, or nothing matches)."""
    if offset == 0:
        return 0
    cur = await conn.execute(_COUNT_AGENTS, params)
    row = await cur.fetchone()
    return int(row[0]) if row else 0


@router.get("/agents/{agent_id}", responses={404: {"description": "Unknown agent"}})
async def get_agent(agent_id: str, conn: ConnDep, settings: SettingsDep) -> AgentDetailPublic:
    """One agent with its ingest accounting and its rejected points by reason."""
    if has_nul(agent_id):
        raise agent_not_found(agent_id)
    cur = conn.cursor(row_factory=class_row(AgentDetailPublic))
    await cur.execute(_GET_AGENT, {"agent_id": agent_id, **liveness.params(settings)})
    agent = await cur.fetchone()
    if agent is None:
        raise agent_not_found(agent_id)
    await now_values(conn, [agent])
    return agent


@router.get("/agents/{agent_id}/liveness", responses={404: {"description": "Unknown agent"}})
async def agent_liveness(
    agent_id: KnownAgentIdDep,
    conn: ConnDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
) -> list[LivenessChangePublic]:
    """The agent's liveness transitions, newest first, each with its time and cause; ``before``
    (an id) pages back."""
    cur = conn.cursor(row_factory=class_row(LivenessChangePublic))
    await cur.execute(_HISTORY, {"agent_id": agent_id, "before": before, "limit": limit})
    return await cur.fetchall()


@router.get("/agents/{agent_id}/series", responses={404: {"description": "Unknown agent"}})
async def list_agent_series(
    agent_id: KnownAgentIdDep, conn: ConnDep, name: str | None = None
) -> list[SeriesPublic]:
    """The agent's series (one per metric name and label set), optionally of one metric name."""
    cur = conn.cursor(row_factory=class_row(SeriesPublic))
    if name is None:
        await cur.execute(_LIST_SERIES, (agent_id,))
    elif has_nul(name):
        return []
    else:
        await cur.execute(_LIST_SERIES_BY_NAME, (agent_id, name))
    return await cur.fetchall()


def _as_utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _window(start: datetime | None, end: datetime | None) -> tuple[datetime, datetime]:
    """The half-open range [start, end) in UTC; by default the hour before now."""
    try:
        end_utc = _as_utc(end) if end is not None else datetime.now(UTC)
        start_utc = _as_utc(start) if start is not None else end_utc - DEFAULT_WINDOW
    except OverflowError as exc:  # e.g. 0001-01-01T00:00:00+01:00 has no UTC datetime
        raise BadWindow("start/end out of range") from exc
    if start_utc >= end_utc:
        raise BadWindow(
            f"start ({start_utc.isoformat()}) must be before end ({end_utc.isoformat()})"
        )
    return start_utc, end_utc


@router.get(
    "/agents/{agent_id}/points",
    response_model=SeriesPointsPublic,
    responses={
        400: {"description": "start is not before end"},
        404: {"description": "Unknown agent"},
        422: {"description": "More than api_max_points points in range, or invalid parameters"},
    },
)
async def get_agent_points(
    agent_id: KnownAgentIdDep,
    conn: ConnDep,
    settings: SettingsDep,
    name: str,
    start: datetime | None = None,
    end: datetime | None = None,
) -> Response:
    """Raw points of one metric in [start, end), grouped by series; only series with points."""
    start_utc, end_utc = _window(start, end)
    max_points = settings.api_max_points
    labels_by_series: dict[int, dict[str, str]] = {}
    rows: list[tuple[int, datetime, float]] = []
    if not has_nul(name):
        # One snapshot for every read: every series the points reference has its labels, and a
        # row compressed meanwhile is read once, as a hot row or from its chunk.
        async with samples.snapshot_async(conn):
            cur = await conn.execute(_SERIES_LABELS, (agent_id, name))
            labels_by_series = dict(await cur.fetchall())
            cur = await conn.execute(
                _SELECT_POINTS,
                {
                    "ids": list(labels_by_series),
                    "start": start_utc,
                    "end": end_utc,
                    "limit": max_points + 1,
                },
                binary=True,
            )
            rows = await cur.fetchall()
            cur = await conn.execute(
                _CHUNKS,
                {"ids": list(labels_by_series), "start": start_utc, "end": end_utc},
                binary=True,
            )
            chunked = await cur.fetchall()
        if chunked:
            rows = _with_chunks(rows, chunked, start_utc, end_utc, max_points + 1)
    if len(rows) > max_points:
        raise BadInput(f"more than {max_points} points in range; narrow start/end")
    body = {
        "agent_id": agent_id,
        "name": name,
        "start": start_utc,
        "end": end_utc,
        "series": [
            {
                "series_id": series_id,
                "labels": labels_by_series[series_id],
                "points": [(ts, value) for _, ts, value in series_rows],
            }
            for series_id, series_rows in groupby(rows, key=itemgetter(0))
        ],
    }
    # The one large response, so its cost was measured (200k points, 4 series, local PostgreSQL
    # 16): fetch 95 ms binary vs 130 ms text; grouping 20 ms into tuples vs 130 ms into lists (the
    # cyclic GC rescans every list); orjson 27 ms vs 90 ms to validate and dump through
    # SeriesPointsPublic, which therefore only documents this response. orjson writes NaN and ±Inf
    # as null.
    return Response(orjson.dumps(body, option=orjson.OPT_UTC_Z), media_type="application/json")

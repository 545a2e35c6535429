"""The fleet at a glance: a summary, the metric catalog and the pipeline's health."""

from __future__ import annotations

import logging
from typing import Annotated, Any

import redis.asyncio
from fastapi import APIRouter, Query

from fleetpulse import connections, liveness
from fleetpulse.api.deps import ConnDep, SettingsDep, TagsDep, has_nul, tag_filter
from fleetpulse.ingest import keys

log = logging.getLogger(__name__)

router = APIRouter(tags=["fleet"])

_SUMMARY = f"""
WITH a AS (
    SELECT os, arch, version, lv.state AS status
    FROM agents a LEFT JOIN agent_tags t USING (agent_id) CROSS JOIN LATERAL ({liveness.STATE}) lv
    WHERE %(tags)s::jsonb IS NULL OR config_tags || coalesce(t.tags, '{{}}'::jsonb) @> %(tags)s
)
SELECT GROUPING(status), GROUPING(os), GROUPING(arch), GROUPING(version),
    status, os, arch, version, count(*)
FROM a GROUP BY GROUPING SETS ((), (status), (os), (arch), (version))
"""  # noqa: S608  # constants only

# Transitions of the last hour by the state entered and its cause (of the filter's agents).
_CHANGES = """
SELECT h.state, h.cause, count(*) FROM agent_liveness h
    JOIN agents a USING (agent_id) LEFT JOIN agent_tags t USING (agent_id)
WHERE h.at > now() - interval '1 hour'
    AND (%(tags)s::jsonb IS NULL OR a.config_tags || coalesce(t.tags, '{}'::jsonb) @> %(tags)s)
GROUP BY 1, 2 ORDER BY 1, 2
"""

# Per tag key, its most common values and how many agents (of the filter) carry each.
_BY_TAG = """
WITH a AS (
    SELECT config_tags || coalesce(t.tags, '{}'::jsonb) AS tags
    FROM agents LEFT JOIN agent_tags t USING (agent_id)
    WHERE %(tags)s::jsonb IS NULL OR config_tags || coalesce(t.tags, '{}'::jsonb) @> %(tags)s
), counted AS (
    SELECT kv.key, kv.value, count(*) AS n,
        row_number() OVER (PARTITION BY kv.key ORDER BY count(*) DESC, kv.value) AS rank
    FROM a, jsonb_each_text(a.tags) kv GROUP BY kv.key, kv.value
)
SELECT key, value, n FROM counted WHERE rank <= %(values_per_key)s ORDER BY key, n DESC, value
"""
# How many values of one tag key the summary lists (the most common first).
TAG_VALUES_SHOWN = 20

_METRICS = """
SELECT name, count(*) FROM series GROUP BY name ORDER BY name LIMIT %s
"""
_AGENT_METRICS = """
SELECT name, count(*) FROM series WHERE agent_id = %s GROUP BY name ORDER BY name LIMIT %s
"""
# Distinct label values per key of one metric (the agent id is a label like the others), at
# most limit + 1 per key so the answer can say it was cut.
_LABELS = """
WITH kv AS (
    SELECT 'agent_id' AS key, agent_id AS value FROM series WHERE name = %(metric)s
    UNION
    SELECT l.key, l.value FROM series, jsonb_each_text(labels) l WHERE name = %(metric)s
), ranked AS (
    SELECT key, value, row_number() OVER (PARTITION BY key ORDER BY value) AS n FROM kv
)
SELECT key, value FROM ranked WHERE n <= %(limit)s + 1 ORDER BY key, value
"""

_COMMIT_RATE = """
SELECT count(*), coalesce(sum(points), 0), coalesce(sum(rejected), 0)
FROM batches WHERE committed_at > now() - interval '60 seconds'
"""


@router.get("/fleet/summary")
async def fleet_summary(
    conn: ConnDep, settings: SettingsDep, tag: TagsDep = None
) -> dict[str, Any]:
    """Agents in all, and by liveness state, OS, architecture, version and tag (the most common
    values of each key), and the liveness transitions of the last hour by state and cause; with
    ``tag``, of the agents carrying those tags only."""
    params = {**liveness.params(settings), "tags": tag_filter(tag)}
    cur = await conn.execute(_SUMMARY, params)
    summary: dict[str, Any] = {
        "agents": 0,
        "by_status": dict.fromkeys(liveness.STATES, 0),
        "by_os": {},
        "by_arch": {},
        "by_version": {},
        "by_tag": {},
    }
    for g_status, g_os, g_arch, g_version, status, os, arch, version, n in await cur.fetchall():
        grouped = (g_status, g_os, g_arch, g_version)
        if grouped == (1, 1, 1, 1):
            summary["agents"] = n
        elif not g_status:
            summary["by_status"][status] = n
        elif not g_os:
            summary["by_os"][os] = n
        elif not g_arch:
            summary["by_arch"][arch] = n
        else:
            summary["by_version"][version] = n
    cur = await conn.execute(_BY_TAG, {**params, "values_per_key": TAG_VALUES_SHOWN})
    for key, value, n in await cur.fetchall():
        summary["by_tag"].setdefault(key, {})[value] = n
    cur = await conn.execute(_CHANGES, params)
    changes: dict[str, dict[str, int]] = {}
    for state, cause, n in await cur.fetchall():
        changes.setdefault(state, {})[cause] = n
    summary["changes_last_hour"] = changes
    return summary


@router.get("/catalog/metrics")
async def catalog_metrics(
    conn: ConnDep,
    agent_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> list[dict[str, Any]]:
    """Metric names with their number of series (of one agent, or of the fleet)."""
    if agent_id is not None and has_nul(agent_id):
        return []
    if agent_id is None:
        cur = await conn.execute(_METRICS, (limit,))
    else:
        cur = await conn.execute(_AGENT_METRICS, (agent_id, limit))
    return [{"name": name, "series": n} for name, n in await cur.fetchall()]


@router.get("/catalog/labels")
async def catalog_labels(
    conn: ConnDep, metric: str, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> dict[str, Any]:
    """Label keys of a metric and their values, at most ``limit`` values per key."""
    labels: dict[str, list[str]] = {}
    truncated = False
    if not has_nul(metric):
        cur = await conn.execute(_LABELS, {"metric": metric, "limit": limit})
        for key, value in await cur.fetchall():
            values = labels.setdefault(key, [])
            if len(values) == limit:
                truncated = True
            else:
                values.append(value)
    return {"metric": metric, "labels": labels, "truncated": truncated}


@router.get("/pipeline")
async def pipeline(conn: ConnDep, settings: SettingsDep) -> dict[str, Any]:
    """Queue depth, consumer-group pending and lag per stream shard, dead letters, commit rate."""
    cur = await conn.execute(_COMMIT_RATE)
    row = await cur.fetchone()
    batches, points, rejected = row if row else (0, 0, 0)
    health: dict[str, Any] = {
        "committed_last_60s": {
            "batches_per_s": round(batches / 60, 2),
            "points_per_s": round(int(points) / 60, 1),
            "points_rejected_per_s": round(int(rejected) / 60, 2),
        },
        "queue": None,
    }
    if settings.redis_url is None:
        health["queue_error"] = "no redis_url configured for the API"
        return health
    client = connections.redis_async(settings.redis_url)
    try:
        health["queue"] = await _queue(client)
    except redis.RedisError as exc:
        health["queue_error"] = f"{type(exc).__name__}: {exc}"
    finally:
        await client.aclose()
    return health


async def _queue(client: redis.asyncio.Redis) -> dict[str, Any]:
    shards = int(await client.get(keys.SHARDS_KEY) or 0)
    streams = []
    for shard in range(shards):
        stream = keys.stream_key(shard)
        length = await client.xlen(stream)
        pending = lag = None
        try:
            for group in await client.xinfo_groups(stream):
                if group["name"] in (keys.CONSUMER_GROUP, keys.CONSUMER_GROUP.encode()):
                    pending, lag = group["pending"], group.get("lag")
        except redis.ResponseError:  # the stream does not exist yet
            pass
        streams.append({"stream": stream, "length": length, "pending": pending, "lag": lag})
    stats = await client.hgetall(keys.WORKER_STATS_KEY)
    return {
        "streams": streams,
        "queued": sum(s["length"] for s in streams),
        "dead_letters": await client.xlen(keys.DEAD_LETTER_STREAM),
        "worker_stats": {
            (k.decode() if isinstance(k, bytes) else k): float(v) for k, v in stats.items()
        },
    }

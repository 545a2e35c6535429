"""The fleet and the platform as the CLI shows them: ``fleetpulse agents list`` and ``status``.

Both read through the API's own handlers (api/agents.py, api/fleet.py), called with a connection
of their own, so that the terminal shows the same rows and figures as the dashboard.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

from fleetpulse.datadir import PlatformRecord
from fleetpulse.errors import ConfigError, FleetpulseError
from fleetpulse.settings import Settings


def list_agents(
    settings: Settings,
    status: str | None,
    q: str | None,
    sort: str,
    limit: int,
    tags: list[str] | None = None,
) -> tuple[list[Any], int]:
    """A page of agents as ``GET /agents`` answers it, and how many match in all."""
    from fastapi import Response

    from fleetpulse.api import agents, deps

    if sort not in agents.SORTS:
        raise ConfigError(f"--sort must be one of: {', '.join(agents.SORTS)}")
    if not 1 <= limit <= 1000:
        raise ConfigError("--limit must be between 1 and 1000")
    try:
        deps.tag_filter(tags)
    except FleetpulseError as exc:
        raise ConfigError(f"--{exc.message}") from None

    async def fetch() -> tuple[list[Any], int]:
        from fleetpulse import connections

        assert settings.database_url
        response = Response()
        async with await connections.pg_connect_async(
            settings.database_url, autocommit=True
        ) as conn:
            page = await agents.list_agents(
                conn,
                settings,
                response,
                status=status,
                os=None,
                arch=None,
                version=None,
                q=q,
                tag=tags,
                sort=sort,
                limit=limit,
                offset=0,
            )
        return page, int(response.headers.get("X-Total-Count", len(page)))

    return asyncio.run(fetch())


def liveness_history(settings: Settings, agent_id: str, limit: int) -> list[Any]:
    """An agent's liveness transitions, newest first, as ``GET /agents/{id}/liveness``."""
    from fleetpulse.api import agents, deps

    if not 1 <= limit <= 1000:
        raise ConfigError("--limit must be between 1 and 1000")

    async def fetch() -> list[Any]:
        from fleetpulse import connections

        assert settings.database_url
        async with await connections.pg_connect_async(
            settings.database_url, autocommit=True
        ) as conn:
            known = await deps.known_agent_id(agent_id, conn)
            return await agents.agent_liveness(known, conn, limit=limit, before=None)

    return asyncio.run(fetch())


def render_history(changes: list[Any]) -> str:
    """One line per transition: when, the state entered, its cause and detail."""
    return "\n".join(
        f"{c.at.astimezone().isoformat(timespec='seconds')}  {c.state:<10}  {c.cause}"
        + (f"  {c.detail}" if c.detail else "")
        for c in changes
    )


def platform_health(settings: Settings) -> dict[str, Any]:
    """The fleet summary and the pipeline (``/fleet/summary``, ``/pipeline``)."""
    from fleetpulse.api import fleet

    async def fetch() -> dict[str, Any]:
        from fleetpulse import connections

        assert settings.database_url
        async with await connections.pg_connect_async(
            settings.database_url, autocommit=True
        ) as conn:
            return {
                "summary": await fleet.fleet_summary(conn, settings),
                "pipeline": await fleet.pipeline(conn, settings),
            }

    return asyncio.run(fetch())


def _ago(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "never"
    seconds = max(0.0, (now - moment).total_seconds())
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} d ago"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} %"


def render_agents(agents: list[Any], total: int) -> str:
    """The dashboard's agents table, as text."""
    now = datetime.now(UTC)
    header = ("AGENT", "HOSTNAME", "STATUS", "OS", "VERSION", "LAST SEEN", "CPU", "MEMORY", "TAGS")
    rows = [
        (
            a.agent_id,
            a.hostname,
            a.status,
            a.os,
            a.version,
            _ago(a.last_heartbeat, now),
            _percent(a.cpu_percent),
            _percent(a.memory_percent),
            ",".join(f"{key}={value}" for key, value in sorted(a.tags.items())),
        )
        for a in agents
    ]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    right = {6, 7}  # numbers line up on the right

    def line(row: tuple[str, ...]) -> str:
        cells = [
            str(cell).rjust(width) if i in right else str(cell).ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    lines = [line(header), *(line(row) for row in rows)]
    online = sum(1 for a in agents if a.status == "online")
    shown = f"{len(agents)} of {total}" if total > len(agents) else f"{total}"
    lines.append(f"{shown} agents, {online} online")
    return "\n".join(lines)


def render_status(record: PlatformRecord | None, health: dict[str, Any]) -> str:
    """What runs where, the agents by status, and the pipeline's commit rate, queue and lag."""
    lines: list[str] = []
    if record is None:
        lines.append("no fleetpulse up in this data dir; figures from the configured servers")
    else:
        uptime_s = time.time() - record.started_at
        lines += [
            f"fleetpulse up, pid {record.pid}, {record.state} for {_duration(uptime_s)}",
            f"  data dir         {record.data_dir}",
            f"  dashboard, API   {record.api_url}",
            f"  ingest (gRPC)    {record.grpc_address}",
            f"  ingest metrics   {record.ingest_metrics_url or 'off'}",
            f"  PostgreSQL       {'embedded' if record.embedded_postgres else 'external'}"
            f"  {record.database_url or ''}",
            f"  Redis            {'embedded' if record.embedded_redis else 'external'}"
            f"  {record.redis_url or ''}",
        ]
    summary = health["summary"]
    by_status = summary["by_status"]
    lines.append(
        f"agents             {summary['agents']} "
        f"({by_status.get('online', 0)} online, {by_status.get('offline', 0)} offline)"
    )
    pipeline = health["pipeline"]
    rate = pipeline["committed_last_60s"]
    lines.append(
        f"committed          {rate['batches_per_s']:,} batches/s, "
        f"{rate['points_per_s']:,} points/s (last 60 s)"
    )
    queue = pipeline.get("queue")
    if queue is None:
        lines.append(f"queue              unknown: {pipeline.get('queue_error', 'no Redis')}")
    else:
        streams = queue["streams"]
        pending = sum(s["pending"] or 0 for s in streams)
        lags = [s["lag"] for s in streams if s["lag"] is not None]
        queued = (
            f"queue              {queue['queued']:,} batches in {len(streams)} streams, "
            f"{pending:,} read and not yet committed"
        )
        lines.append(queued + (f", {sum(lags):,} not yet read (lag)" if lags else ""))
        lines.append(f"dead letters       {queue['dead_letters']:,}")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"

"""Per-agent settings through the API: read them, and replace them with the admin key.

Writes need ``authorization: Bearer <api_admin_key>`` (compared in constant time); without a
configured key the API is read only and every write is 403. A change is stored as a new version and
announced on the control channel, so the front-end holding the agent's stream pushes it at once
(ingest/control.py); an agent that is away gets it when it registers.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from fastapi import APIRouter, Request

from fleetpulse import auditlog
from fleetpulse.api import auth
from fleetpulse.api.deps import ConnDep, KnownAgentIdDep, SettingsDep
from fleetpulse.api.schemas import AgentConfigIn, AgentConfigPublic
from fleetpulse.connections import redis_async
from fleetpulse.errors import BadInput
from fleetpulse.ingest import agentsettings, control
from fleetpulse.settings import Settings

log = logging.getLogger(__name__)

router = APIRouter(tags=["agents"])


def _seconds(ms: int | None) -> float | None:
    return None if ms is None else ms / 1000


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1000)


async def _config(conn: ConnDep, agent_id: str) -> AgentConfigPublic:
    desired = await agentsettings.load_async(conn, agent_id)
    reported = await agentsettings.reported_async(conn, agent_id) or {}
    version = desired.version if desired else 0
    reported_version = reported.get("version")
    return AgentConfigPublic(
        agent_id=agent_id,
        version=version,
        collect_interval_s=_seconds(desired.collect_interval_ms) if desired else None,
        heartbeat_interval_s=_seconds(desired.heartbeat_interval_ms) if desired else None,
        collectors=list(desired.collectors) if desired and desired.collectors else None,
        reported_version=reported_version,
        applied=reported.get("applied"),
        error=reported.get("error"),
        effective_collect_interval_s=_seconds(reported.get("collect_interval_ms")),
        effective_heartbeat_interval_s=_seconds(reported.get("heartbeat_interval_ms")),
        effective_collectors=reported.get("collectors"),
        in_sync=(reported_version or 0) == version and reported.get("applied") is not False,
    )


@router.get("/agents/{agent_id}/config", responses={404: {"description": "Unknown agent"}})
async def get_agent_config(agent_id: KnownAgentIdDep, conn: ConnDep) -> AgentConfigPublic:
    """The settings the platform holds for the agent, and what the agent reported in effect."""
    return await _config(conn, agent_id)


@router.put(
    "/agents/{agent_id}/config",
    responses={
        401: {"description": "Missing or wrong admin key"},
        403: {"description": "No admin key configured: the API is read only"},
        404: {"description": "Unknown agent"},
        422: {"description": "A setting out of range or an unknown collector"},
    },
)
async def put_agent_config(
    agent_id: KnownAgentIdDep,
    body: AgentConfigIn,
    conn: ConnDep,
    settings: SettingsDep,
    request: Request,
) -> AgentConfigPublic:
    """Replace the agent's platform-side settings (fields left out: the agent's own file decides);
    pushed to the agent at once when it is connected."""
    # Here, not as a dependency: an unknown agent (404) or an invalid body (422) is answered as
    # such whatever the key.
    actor = auditlog.key_actor(auth.require_admin(request, settings))
    changes: dict[str, Any] = {
        "collect_interval_ms": _ms(body.collect_interval_s),
        "heartbeat_interval_ms": _ms(body.heartbeat_interval_s),
        "collectors": body.collectors,
    }
    try:
        await agentsettings.update_async(conn, agent_id, changes, actor)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    await _announce(settings, agent_id)
    return await _config(conn, agent_id)


async def _announce(settings: Settings, agent_id: str) -> None:
    if settings.redis_url is None:
        return  # pushed at the agent's next register
    client = redis_async(settings.redis_url)
    try:
        await control.publish_async(client, control.SettingsChanged(agent_id))
    except redis.RedisError as exc:
        log.warning(
            "settings of %s stored but not announced (%s): pushed at its next register",
            agent_id,
            exc,
        )
    finally:
        await client.aclose()

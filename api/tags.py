"""Agent tags through the API: read an agent's tags, change an operator's with the admin key.

``PATCH /agents/{id}/tags`` takes a JSON merge patch (RFC 7396, ``application/merge-patch+json``
or plain JSON): ``{"role": "db", "old": null}`` sets ``role`` and removes the operator's ``old``.
The agent's own tags (its config file) are not the operator's to remove, only to override.
The rules of a tag are agent/tags.py's; a patch that breaks one is 422, naming the tag.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Request

from fleetpulse import auditlog
from fleetpulse.api import auth
from fleetpulse.api.deps import ConnDep, KnownAgentIdDep, SettingsDep
from fleetpulse.api.schemas import AgentTagsPublic
from fleetpulse.errors import BadInput
from fleetpulse.ingest import agenttags

router = APIRouter(tags=["agents"])


def _public(agent_id: str, found: agenttags.AgentTags) -> AgentTagsPublic:
    return AgentTagsPublic(
        agent_id=agent_id, tags=found.effective, config=found.config, operator=found.operator
    )


@router.get("/agents/{agent_id}/tags", responses={404: {"description": "Unknown agent"}})
async def get_agent_tags(agent_id: KnownAgentIdDep, conn: ConnDep) -> AgentTagsPublic:
    """The agent's tags: its own (config file), the operator's, and both merged."""
    found = await agenttags.read_async(conn, agent_id)
    assert found is not None  # a known agent
    return _public(agent_id, found)


@router.patch(
    "/agents/{agent_id}/tags",
    responses={
        401: {"description": "Missing or wrong admin key"},
        403: {"description": "No admin key configured: the API is read only"},
        404: {"description": "Unknown agent"},
        422: {"description": "Not a tag (key or value), or too many tags"},
    },
)
async def patch_agent_tags(
    agent_id: KnownAgentIdDep,
    conn: ConnDep,
    settings: SettingsDep,
    request: Request,
    patch: dict[str, Any] = Body(  # noqa: B008  # FastAPI's way of taking a plain JSON body
        ..., examples=[{"role": "db", "old": None}], media_type="application/merge-patch+json"
    ),
) -> AgentTagsPublic:
    """Set (text) or remove (null) the operator's tags of the agent."""
    actor = auditlog.key_actor(auth.require_admin(request, settings))
    try:
        found = await agenttags.patch_async(conn, agent_id, patch, actor)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    return _public(agent_id, found)

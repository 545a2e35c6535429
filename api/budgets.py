"""Series budgets through the API (ingest/seriesbudgets.py): read them, and an agent's use of its
own; set or remove one for an agent or a tag with the admin key.

``PUT /series-budgets`` takes ``{"agent_id": "web-1", "budget": 5000}`` or ``{"tag": "role=k8s",
"budget": 50000}``; ``"budget": null`` removes it (the tag's or the default applies again).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from fleetpulse import auditlog
from fleetpulse.agent import tags as tag_rules
from fleetpulse.api import auth
from fleetpulse.api.deps import ConnDep, KnownAgentIdDep, SettingsDep, known_agent_id
from fleetpulse.errors import BadInput
from fleetpulse.ingest import seriesbudgets

router = APIRouter(tags=["series budgets"])


class BudgetChange(BaseModel):
    agent_id: str | None = None
    tag: str | None = Field(default=None, description="key=value: every agent carrying it")
    budget: int | None = Field(..., ge=0, le=2**31 - 1, description="null removes it")


class BudgetPublic(BaseModel):
    agent_id: str | None
    tag: str | None
    budget: int


class SeriesUsePublic(BaseModel):
    agent_id: str
    series: int  # distinct series the agent has
    budget: int  # the budget that applies to it (its own, its tags' largest, or the default)
    at_budget: bool  # new series are refused now
    points_refused: int  # points of new series refused past the budget, in all


def _public(found: seriesbudgets.Budget) -> BudgetPublic:
    target = found.target
    tag = None if target.tag_key is None else f"{target.tag_key}={target.tag_value}"
    return BudgetPublic(agent_id=target.agent_id, tag=tag, budget=found.budget)


@router.get("/series-budgets")
async def list_budgets(conn: ConnDep, settings: SettingsDep) -> dict[str, Any]:
    """The default budget, and every budget an operator set (per agent, per tag)."""
    found = await seriesbudgets.listed_async(conn)
    return {"default": settings.series_budget, "budgets": [_public(b) for b in found]}


@router.put(
    "/series-budgets",
    responses={
        401: {"description": "Missing or wrong admin key"},
        403: {"description": "No admin key configured: the API is read only"},
        404: {"description": "Unknown agent"},
        422: {"description": "Neither or both of agent_id and tag, or not a tag"},
    },
)
async def put_budget(
    change: BudgetChange, conn: ConnDep, settings: SettingsDep, request: Request
) -> dict[str, Any]:
    """Set (or with ``"budget": null`` remove) the series budget of one agent or of a tag."""
    actor = auditlog.key_actor(auth.require_admin(request, settings))
    if (change.agent_id is None) == (change.tag is None):
        raise BadInput("give one of agent_id and tag")
    if change.agent_id is not None:
        target = seriesbudgets.Target(agent_id=await known_agent_id(change.agent_id, conn))
    else:
        assert change.tag is not None
        try:
            ((key, value),) = tag_rules.parse([change.tag]).items()
        except ValueError as exc:
            raise BadInput(f"tag: {exc}") from None
        target = seriesbudgets.Target(tag_key=key, tag_value=value)
    await seriesbudgets.change_async(conn, target, change.budget, actor)
    return await list_budgets(conn, settings)


@router.get("/agents/{agent_id}/series-budget", responses={404: {"description": "Unknown agent"}})
async def agent_series_use(
    agent_id: KnownAgentIdDep, conn: ConnDep, settings: SettingsDep
) -> SeriesUsePublic:
    """The agent's distinct series against its budget, and the points refused past it."""
    (budget, used) = (await seriesbudgets.usage_async(conn, [agent_id], settings.series_budget))[
        agent_id
    ]
    return SeriesUsePublic(
        agent_id=agent_id,
        series=used,
        budget=budget,
        at_budget=used >= budget,
        points_refused=await seriesbudgets.refused_points_async(conn, agent_id),
    )

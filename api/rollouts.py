"""Staged rollouts through the API (ingest/rollouts.py): start one (or plan it: ``dry_run``), watch
its waves and agents, pause, resume or abort it with the admin key.

``POST /rollouts`` takes::

    {"selector": {"tags": {"env": "prod"}},            # or {"agents": [...]}, or {"all": true}
     "settings": {"collect_interval_s": 15},            # the fields of PUT /agents/{id}/config
     "waves": ["1%", "5%", "25%", "100%"],               # cumulative; counts work too: [1, 10, "100%"]
     "soak_s": 300}                                     # default: rollout_soak_s
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, Literal

import redis
from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from fleetpulse import auditlog
from fleetpulse.api import auth
from fleetpulse.api.deps import ConnDep, SettingsDep
from fleetpulse.connections import redis_async
from fleetpulse.ingest import control, rollouts
from fleetpulse.settings import Settings

log = logging.getLogger(__name__)

router = APIRouter(tags=["rollouts"])

_WRITE_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or wrong admin key"},
    403: {"description": "No admin key configured: the API is read only"},
}


class SelectorIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tags: dict[str, str] | None = None
    agents: list[str] | None = Field(default=None, max_length=rollouts.MAX_AGENTS)
    all: bool = False


class SettingsIn(BaseModel):
    """The settings to roll out: the fields of PUT /agents/{id}/config; only those given change."""

    model_config = ConfigDict(extra="forbid")

    collect_interval_s: float | None = None
    heartbeat_interval_s: float | None = None
    collectors: list[str] | None = None


class RolloutIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    selector: SelectorIn
    settings: SettingsIn
    waves: list[str | int] = Field(default=list(rollouts.DEFAULT_WAVES), max_length=20)
    soak_s: float | None = Field(default=None, ge=0, le=86_400)
    dry_run: bool = False


class WavePublic(BaseModel):
    wave: int  # 1, 2, ...
    step: str  # as asked: 5% or 10 (cumulative)
    agents: int
    state: Literal["pending", "soaking", "passed", "failed", "aborted"]
    started_at: datetime | None
    ended_at: datetime | None
    reason: str | None
    applied: int  # agents soaking now (reported the settings applied)
    passed: int
    unverified: int  # not online when the wave started: given the settings, not checked
    failed: int
    reverted: int


class RolloutPublic(BaseModel):
    id: int
    selector: dict[str, Any]
    settings: dict[str, Any]  # in seconds, as PUT /agents/{id}/config takes them
    soak_s: float
    state: Literal["running", "paused", "completed", "failed", "aborted"]
    wave: int  # the wave in progress (or the last one), from 1
    reason: str | None
    created_by: str
    created_at: datetime
    updated_at: datetime
    ended_at: datetime | None
    agents: int
    waves: list[WavePublic]


class PlannedWavePublic(BaseModel):
    step: str
    agents: list[str]


class RolloutPlanPublic(BaseModel):
    """A dry run: the waves the rollout would take now (online agents first)."""

    agents: int
    offline: int
    waves: list[PlannedWavePublic]


class RolloutAgentPublic(BaseModel):
    agent_id: str
    wave: int
    state: Literal["pending", "sent", "applied", "passed", "unverified", "failed", "reverted"]
    version: int | None  # the settings version the rollout gave it
    sent_at: datetime | None
    applied_at: datetime | None
    before: dict[str, Any] | None  # its figures before the change (ingest/rolloutgate.py)
    since: dict[str, Any] | None  # since it applied it
    reason: str | None  # why it failed the gate


def _changes(body: SettingsIn) -> dict[str, Any]:
    """The settings as stored: milliseconds, only the fields given."""
    changes: dict[str, Any] = {}
    for name, value in body.model_dump(exclude_unset=True).items():
        if name.endswith("_s"):
            changes[name[:-2] + "_ms"] = None if value is None else round(value * 1000)
        else:
            changes[name] = value
    return changes


def _seconds(changes: dict[str, Any]) -> dict[str, Any]:
    return {
        (k[:-3] + "_s" if k.endswith("_ms") else k): (v / 1000 if k.endswith("_ms") and v else v)
        for k, v in changes.items()
    }


def public(found: rollouts.Rollout) -> RolloutPublic:
    return RolloutPublic(
        id=found.id,
        selector=found.selector,
        settings=_seconds(found.settings),
        soak_s=found.soak_s,
        state=found.state,
        wave=found.wave + 1,
        reason=found.reason,
        created_by=found.created_by,
        created_at=found.created_at,
        updated_at=found.updated_at,
        ended_at=found.ended_at,
        agents=sum(w.agents for w in found.waves),
        waves=[WavePublic(**{**w.__dict__, "wave": w.wave + 1}) for w in found.waves],
    )


@router.get("/rollouts")
async def list_rollouts(
    conn: ConnDep,
    state: Literal["running", "paused", "completed", "failed", "aborted"] | None = None,
    before: int | None = Query(default=None, description="an id: the page after it"),
    limit: int = Query(default=50, ge=1, le=500),
) -> list[RolloutPublic]:
    """Rollouts, newest first, each with its waves."""
    return [public(r) for r in await rollouts.listed(conn, state, before, limit)]


@router.post(
    "/rollouts",
    status_code=201,
    responses={
        **_WRITE_ERRORS,
        200: {"model": RolloutPlanPublic, "description": "dry_run: the plan, nothing stored"},
        409: {"description": "Some of the agents are in another rollout"},
        422: {"description": "A bad selector, setting, wave or soak; no agent matches"},
    },
)
async def start_rollout(
    body: RolloutIn, conn: ConnDep, settings: SettingsDep, request: Request, response: Response
) -> RolloutPublic | RolloutPlanPublic:
    """Start a rollout (it begins within one ``rollout_check_interval_s``), or with
    ``dry_run`` show which agents each wave would take."""
    actor = auditlog.key_actor(auth.require_admin(request, settings))
    chosen = rollouts.selector(body.selector.tags, body.selector.agents, body.selector.all)
    changes = _changes(body.settings)
    if body.dry_run:
        planned = await rollouts.plan(conn, chosen, body.waves, settings)
        response.status_code = 200
        return RolloutPlanPublic(
            agents=sum(len(a) for _, a in planned.waves),
            offline=planned.offline,
            waves=[PlannedWavePublic(step=s, agents=a) for s, a in planned.waves],
        )
    soak_s = settings.rollout_soak_s if body.soak_s is None else body.soak_s
    rollout_id = await rollouts.create(conn, chosen, changes, body.waves, soak_s, actor, settings)
    response.headers["Location"] = f"/rollouts/{rollout_id}"
    return public(await rollouts.read(conn, rollout_id))


@router.get("/rollouts/{rollout_id}", responses={404: {"description": "No such rollout"}})
async def get_rollout(rollout_id: int, conn: ConnDep) -> RolloutPublic:
    return public(await rollouts.read(conn, rollout_id))


@router.get("/rollouts/{rollout_id}/agents", responses={404: {"description": "No such rollout"}})
async def get_rollout_agents(
    rollout_id: int,
    conn: ConnDep,
    wave: int | None = Query(default=None, ge=1, description="only this wave (from 1)"),
    state: Literal["pending", "sent", "applied", "passed", "unverified", "failed", "reverted"]
    | None = None,
    limit: int = Query(default=100, ge=1, le=1000),
    offset: int = Query(default=0, ge=0),
) -> list[RolloutAgentPublic]:
    """The rollout's agents with their state and figures, by wave then id."""
    await rollouts.read(conn, rollout_id)  # 404 for an unknown rollout
    rows = await rollouts.agents(
        conn, rollout_id, None if wave is None else wave - 1, state, limit, offset
    )
    return [
        RolloutAgentPublic(
            agent_id=agent_id,
            wave=wave_ + 1,
            state=state_,
            version=version,
            sent_at=sent_at,
            applied_at=applied_at,
            before=before_,
            since=since,
            reason=reason,
        )
        for agent_id, wave_, state_, version, sent_at, applied_at, before_, since, reason in rows
    ]


async def _control(
    action: str, rollout_id: int, conn: ConnDep, settings: Settings, request: Request
) -> RolloutPublic:
    actor = auditlog.key_actor(auth.require_admin(request, settings))
    if action == "pause":
        await rollouts.pause(conn, rollout_id, actor)
    elif action == "resume":
        await rollouts.resume(conn, rollout_id, actor)
    else:
        await _announce(settings, await rollouts.abort(conn, rollout_id, actor))
    return public(await rollouts.read(conn, rollout_id))


_CONTROL_ERRORS: dict[int | str, dict[str, Any]] = {
    **_WRITE_ERRORS,
    404: {"description": "No such rollout"},
    409: {"description": "The rollout is not in a state this applies to"},
}


@router.post("/rollouts/{rollout_id}/pause", responses=_CONTROL_ERRORS)
async def pause_rollout(
    rollout_id: int, conn: ConnDep, settings: SettingsDep, request: Request
) -> RolloutPublic:
    """No further wave starts; the wave in progress is still checked (and reverted if it fails)."""
    return await _control("pause", rollout_id, conn, settings, request)


@router.post("/rollouts/{rollout_id}/resume", responses=_CONTROL_ERRORS)
async def resume_rollout(
    rollout_id: int, conn: ConnDep, settings: SettingsDep, request: Request
) -> RolloutPublic:
    return await _control("resume", rollout_id, conn, settings, request)


@router.post("/rollouts/{rollout_id}/abort", responses=_CONTROL_ERRORS)
async def abort_rollout(
    rollout_id: int, conn: ConnDep, settings: SettingsDep, request: Request
) -> RolloutPublic:
    """Stop it; every agent it changed gets its previous settings back."""
    return await _control("abort", rollout_id, conn, settings, request)


async def _announce(settings: Settings, agent_ids: list[str]) -> None:
    if settings.redis_url is None or not agent_ids:
        return  # pushed at each agent's next register
    client = redis_async(settings.redis_url)
    try:
        await control.publish_many_async(client, [control.SettingsChanged(a) for a in agent_ids])
    except redis.RedisError as exc:
        log.warning("reverted settings stored but not announced (%s): pushed at register", exc)
    finally:
        await client.aclose()

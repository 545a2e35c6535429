"""Response models of the read API: the JSON contract dashboards code against (and /docs shows)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


class HealthPublic(BaseModel):
    status: Literal["ok", "unavailable"]
    error: str | None = None


class AgentPublic(BaseModel):
    agent_id: str
    hostname: str
    ip: str
    os: str
    arch: str
    version: str
    # Computed at read time (fleetpulse/liveness.py): online (stream open, heartbeats on time),
    # stale (heartbeats late), data_stale (heartbeats on time, batches not) or offline; since
    # when, and the cause of the transition into it.
    status: Literal["online", "stale", "data_stale", "offline"]
    status_since: datetime | None = None
    status_cause: str | None = None
    status_detail: str | None = None
    last_heartbeat: datetime | None
    created_at: datetime
    updated_at: datetime
    batches_committed: int
    points_committed: int
    # Now: 100 - idle CPU % and 1 - available/total memory, from each agent's latest points of the
    # last 5 minutes (null when it sent none).
    cpu_percent: float | None = None
    memory_percent: float | None = None
    # Its own tags (agent.tags in its config file) with an operator's laid over them.
    tags: dict[str, str] = {}


class AgentDetailPublic(AgentPublic):
    points_rejected: int
    last_epoch: int | None
    last_seq: int | None
    last_commit_at: datetime | None
    rejected_by_reason: dict[str, int]
    # Identity (issue 5): the host's id, why it last disconnected (its own word), how often a
    # second machine claimed this agent_id while it was connected (a cloned image) and the last
    # such claim, and whether it holds an active credential.
    machine_id: str
    disconnect_reason: str | None
    conflicts: int
    conflict: str | None
    conflict_at: datetime | None
    credential_active: bool
    credential_revoked_at: datetime | None
    # Settings in effect on the agent as it last reported them (SettingsStatus), the platform-side
    # version it answered and whether it applied it, and the version the platform holds for it.
    collect_interval_ms: int | None
    heartbeat_interval_ms: int | None
    collectors: list[str] | None
    settings_version: int | None
    settings_applied: bool | None
    settings_error: str | None
    settings_desired_version: int | None


class SeriesPublic(BaseModel):
    series_id: int
    name: str
    # map<string, string> on the wire (MetricPoint.labels), so string values only.
    labels: dict[str, str]


class SeriesDataPublic(BaseModel):
    series_id: int
    labels: dict[str, str]
    # [timestamp, value] pairs ordered by timestamp; NaN and ±Inf are stored but JSON has no
    # spelling for them, so they come out as null.
    points: list[tuple[datetime, float | None]]


class SeriesPointsPublic(BaseModel):
    agent_id: str
    name: str
    start: datetime
    end: datetime
    series: list[SeriesDataPublic]


class AgentConfigIn(BaseModel):
    """PUT /agents/{id}/config: the whole platform-side config of one agent. A field left out (or
    null) is not set by the platform: the agent's own config file decides it."""

    model_config = ConfigDict(extra="forbid")

    collect_interval_s: float | None = None
    heartbeat_interval_s: float | None = None
    collectors: list[str] | None = None


class AgentConfigPublic(BaseModel):
    agent_id: str
    # What the platform holds (version 0: nothing set yet).
    version: int
    collect_interval_s: float | None
    heartbeat_interval_s: float | None
    collectors: list[str] | None
    # What the agent last reported: the version it answered (None: never), whether it applied
    # it and why not, and the settings in effect on it.
    reported_version: int | None
    applied: bool | None
    error: str | None
    effective_collect_interval_s: float | None
    effective_heartbeat_interval_s: float | None
    effective_collectors: list[str] | None
    # The agent runs the platform's current version.
    in_sync: bool


class AgentTagsPublic(BaseModel):
    agent_id: str
    tags: dict[str, str]  # what filters and selectors see: config, then operator's over them
    config: dict[str, str]  # the agent's config file (agent.tags), sent at every register
    operator: dict[str, str]  # set through the API or `fleetpulse agents tag`


class AuditEntryPublic(BaseModel):
    id: int
    at: datetime
    actor: str  # key:<name>, cli:<user>, enrollment-token, platform
    action: str  # settings.change, tags.change, credential.revoke, agent.enroll
    target: str  # an agent id
    detail: dict[str, Any]


class LivenessChangePublic(BaseModel):
    """One transition of an agent's liveness (agent_liveness)."""

    id: int
    at: datetime
    state: Literal["online", "stale", "data_stale", "offline"]
    cause: str
    detail: str

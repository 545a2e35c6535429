"""Response models of the read API: the JSON contract dashboards code against (and /docs shows)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel


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
    # Computed at read time: 'online' needs both an open stream and a recent heartbeat.
    status: Literal["online", "offline"]
    last_heartbeat: datetime | None
    created_at: datetime
    updated_at: datetime
    batches_committed: int
    points_committed: int


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

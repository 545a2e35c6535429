"""``GET /audit``: the audit log of operator actions (fleetpulse/auditlog.py), newest first."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from fleetpulse import auditlog
from fleetpulse.api.deps import ConnDep, has_nul
from fleetpulse.api.schemas import AuditEntryPublic

router = APIRouter(tags=["audit"])


@router.get("/audit")
async def read_audit_log(
    conn: ConnDep,
    target: str | None = None,
    action: Annotated[str | None, Query(description=", ".join(auditlog.ACTIONS))] = None,
    actor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before: Annotated[int | None, Query(ge=1, le=2**63 - 1, description="an entry's id")] = None,
) -> list[AuditEntryPublic]:
    """Operator actions, newest first: settings changes, tags, revocations, enrollments; filtered
    by target (an agent id), action or actor (``key:<name>``, ``cli:<user>``,
    ``enrollment-token``); ``before`` pages back."""
    if any(value is not None and has_nul(value) for value in (target, action, actor)):
        return []
    entries = await auditlog.read_async(conn, target, action, actor, before, limit)
    return [AuditEntryPublic.model_validate(entry, from_attributes=True) for entry in entries]

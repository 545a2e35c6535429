"""Rules and alerts over HTTP, as Prometheus answers them: ``/api/v1/rules``, ``/api/v1/alerts``,
``/api/v1/alertmanagers`` (what Grafana's alerting view and amtool-like clients read), and
``POST /-/reload`` (reload the rule files, as Prometheus' lifecycle endpoint; admin key).

The rules listed are this process's (every API process loads the same files); their health and
alerts come from PostgreSQL (api/rules/store.py), written by whichever process evaluates, so every
API process answers the same.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response

from fleetpulse.api import auth, prom
from fleetpulse.api.deps import ConnDep, SettingsDep
from fleetpulse.api.rules import store
from fleetpulse.api.rules.alerts import INACTIVE, Alert, AlertState
from fleetpulse.api.rules.evaluator import RuleSet
from fleetpulse.api.rules.files import Group, Rule
from fleetpulse.errors import BadInput, ConfigError

router = APIRouter(prefix="/api/v1", tags=["prometheus"])
lifecycle = APIRouter(tags=["rules"])

_ZERO_TIME = "0001-01-01T00:00:00Z"  # Go's zero time: a rule never evaluated


def _time(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def alert_value(value: float) -> str:
    """Go's ``strconv.FormatFloat(v, 'e', -1, 64)``: what Prometheus writes as an alert's value."""
    if np.isnan(value):
        return "NaN"
    if np.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return np.format_float_scientific(value, unique=True, exp_digits=2).replace(".e", "e")


def _alert_json(alert: Alert) -> dict[str, Any]:
    return {
        "labels": alert.labels,
        "annotations": alert.annotations,
        "state": alert.state,
        "activeAt": _time(alert.active_at),
        "value": alert_value(alert.value),
    }


def _ruleset(request: Request) -> RuleSet:
    ruleset: RuleSet = request.app.state.ruleset
    return ruleset


def _rule_json(
    group: Group, rule: Rule, state: store.GroupState | None, alerts: list[Alert]
) -> dict[str, Any]:
    health, error, at, duration = ("unknown", "", None, 0.0)
    if state is not None and state.health and rule.key in state.health:
        health, error, at, duration = state.health[rule.key]
    out: dict[str, Any] = {
        "name": rule.name,
        "query": rule.expr,
        "labels": rule.labels,
        "health": health,
        "evaluationTime": duration,
        "lastEvaluation": _time(at) or _ZERO_TIME,
        "type": "alerting" if rule.kind == "alert" else "recording",
    }
    if error:
        out["lastError"] = error
    if rule.kind == "alert":
        active = [a for a in alerts if a.state != INACTIVE]
        out.update(
            {
                "state": AlertState(rule, {a.fingerprint: a for a in active}).state,
                "duration": rule.for_s,
                "keepFiringFor": rule.keep_firing_for_s,
                "annotations": rule.annotations,
                "alerts": [_alert_json(a) for a in active],
            }
        )
    return out


@router.get("/rules")
async def rules(request: Request, conn: ConnDep) -> Response:
    """The rule groups in force, each rule with its health, last evaluation and alerts."""
    pairs = list(request.query_params.multi_items())
    kind = next((v for k, v in pairs if k == "type"), "").lower()
    if kind not in ("", "alert", "record"):
        raise BadInput(f'invalid parameter "type": not supported value "{kind}"')
    names = {v for k, v in pairs if k == "rule_name[]"}
    group_names = {v for k, v in pairs if k == "rule_group[]"}
    file_names = {v for k, v in pairs if k == "file[]"}
    states, saved = await store.read_state(conn)
    groups = []
    for group in _ruleset(request).groups:
        if (group_names and group.name not in group_names) or (
            file_names and group.file not in file_names
        ):
            continue
        state = states.get(group.key)
        listed = [
            _rule_json(group, rule, state, saved.get((group.key, rule.key), []))
            for rule in group.rules
            if (not kind or rule.kind == kind) and (not names or rule.name in names)
        ]
        if (kind or names) and not listed:
            continue
        groups.append(
            {
                "name": group.name,
                "file": group.file,
                "rules": listed,
                "interval": group.interval_s,
                "limit": group.limit,
                "evaluationTime": state.duration_s if state else 0.0,
                "lastEvaluation": (_time(state.last_eval_at) if state else None) or _ZERO_TIME,
            }
        )
    return prom.answer({"groups": groups})


@router.get("/alerts")
async def alerts(request: Request, conn: ConnDep) -> Response:
    """Every pending and firing alert of the rules in force."""
    _, saved = await store.read_state(conn)
    listed = [
        _alert_json(alert)
        for group in _ruleset(request).groups
        for rule in group.rules
        for alert in saved.get((group.key, rule.key), [])
        if alert.state != INACTIVE
    ]
    return prom.answer({"alerts": listed})


@router.get("/alertmanagers")
async def alertmanagers(settings: SettingsDep) -> Response:
    """The Alertmanagers alerts are sent to."""
    active = [{"url": url.rstrip("/") + "/api/v2/alerts"} for url in settings.alertmanagers()]
    return prom.answer({"activeAlertmanagers": active, "droppedAlertmanagers": []})


@lifecycle.post("/-/reload")
@lifecycle.put("/-/reload", operation_id="reload_put")
async def reload(request: Request, settings: SettingsDep) -> Response:
    """Reload the rule files (admin key). A file that does not load is refused with its error,
    and the rules in force stay."""
    auth.require_admin(request, settings)
    error = _ruleset(request).reload()
    if error is not None:
        raise ConfigError(f"failed to reload rules: {error}")
    return Response(status_code=200)

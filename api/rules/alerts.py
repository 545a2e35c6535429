"""One alerting rule's alerts and their states, as Prometheus' rules/alerting.go moves them.

Per evaluation, `AlertState.step` takes the rule's result (label sets and values at the
evaluation time) and moves each alert:

- a new label set becomes **pending**, active from this evaluation (at once **firing** when the
  rule has no ``for``);
- a pending alert still present fires once it has been active for ``for``;
- an alert no longer present: a pending one is forgotten; a firing one keeps firing while
  ``keep_firing_for`` lasts (counted from the first evaluation that missed it), then is
  **inactive** (resolved at that evaluation) and is kept for `RESOLVED_RETENTION_S` so that
  Alertmanager hears it resolved;
- a resolved alert whose label set comes back starts over as a new pending alert.

`needs_sending` is Prometheus' resend rule. Times are Unix seconds (evaluation timestamps, not
the wall clock). The alerts are plain data so that api/rules/store.py can save and restore them:
a restarted evaluator neither fires an alert again nor loses a pending alert's start.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import orjson

from fleetpulse.api.rules.files import Rule

PENDING, FIRING, INACTIVE = "pending", "firing", "inactive"
# How long a resolved alert is still sent to Alertmanager as resolved (Prometheus: 15 minutes).
RESOLVED_RETENTION_S = 15 * 60.0


def fingerprint(labels: Mapping[str, str]) -> str:
    """A stable id of a label set (its sorted pairs, hashed)."""
    data = orjson.dumps(labels, option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(data, digest_size=12).hexdigest()


@dataclass
class Alert:
    labels: dict[str, str]
    annotations: dict[str, str]
    state: str
    active_at: float
    value: float
    fired_at: float | None = None
    resolved_at: float | None = None
    keep_firing_since: float | None = None
    last_sent_at: float | None = None
    valid_until: float | None = None
    fingerprint: str = ""

    def __post_init__(self) -> None:
        if not self.fingerprint:
            self.fingerprint = fingerprint(self.labels)

    def needs_sending(self, ts: float, resend_delay_s: float) -> bool:
        """Prometheus' rule: never while pending; at once when resolved since the last send;
        otherwise once ``resend_delay_s`` has passed since the last send."""
        if self.state == PENDING:
            return False
        if self.resolved_at is not None and (
            self.last_sent_at is None or self.resolved_at > self.last_sent_at
        ):
            return True
        return self.last_sent_at is None or self.last_sent_at + resend_delay_s < ts


class LabelsetError(ValueError):
    """Two samples of a rule's result have one label set once the rule's labels are applied."""


@dataclass
class AlertState:
    """The alerts of one alerting rule, by fingerprint."""

    rule: Rule
    active: dict[str, Alert] = field(default_factory=dict)

    def step(
        self,
        ts: float,
        result: list[tuple[dict[str, str], float]],
        external_labels: Mapping[str, str] | None = None,
        external_url: str = "",
        limit: int = 0,
    ) -> None:
        """Move every alert to its state at evaluation time ``ts``, given the rule's result then:
        each sample's labels and value. Templates see ``__name__`` (as in Prometheus); the
        alert's labels do not carry it."""
        rule = self.rule
        found: dict[str, Alert] = {}
        for sample_labels, value in result:
            labels = {k: v for k, v in sample_labels.items() if k != "__name__"}
            for name, template in rule.label_templates.items():
                labels[name] = template.expand(sample_labels, value, external_labels, external_url)
            labels = {k: v for k, v in labels.items() if v != ""}
            labels["alertname"] = rule.name
            annotations = {
                name: template.expand(sample_labels, value, external_labels, external_url)
                for name, template in rule.annotation_templates.items()
            }
            alert = Alert(labels, annotations, PENDING, ts, value)
            if alert.fingerprint in found:
                raise LabelsetError(
                    "vector contains metrics with the same labelset after applying alert labels"
                )
            found[alert.fingerprint] = alert
        for fp, alert in found.items():
            known = self.active.get(fp)
            if known is not None and known.state != INACTIVE:
                known.value, known.annotations, known.labels = (
                    alert.value,
                    alert.annotations,
                    alert.labels,
                )
                continue
            self.active[fp] = alert
        active_or_pending = 0
        for fp, alert in list(self.active.items()):
            if fp not in found:
                keep_firing = False
                if alert.state == FIRING and rule.keep_firing_for_s > 0:
                    if alert.keep_firing_since is None:
                        alert.keep_firing_since = ts
                    keep_firing = ts - alert.keep_firing_since < rule.keep_firing_for_s
                if alert.state == PENDING or (
                    alert.resolved_at is not None and ts - alert.resolved_at > RESOLVED_RETENTION_S
                ):
                    del self.active[fp]
                if alert.state != INACTIVE and not keep_firing:
                    alert.state = INACTIVE
                    alert.resolved_at = ts
                if not keep_firing:
                    continue
            else:
                alert.keep_firing_since = None
            active_or_pending += 1
            if alert.state == PENDING and ts - alert.active_at >= rule.for_s:
                alert.state = FIRING
                alert.fired_at = ts
        if limit > 0 and active_or_pending > limit:
            self.active.clear()
            raise LabelsetError(f"exceeded limit of {limit} with {active_or_pending} alerts")

    def current(self) -> list[Alert]:
        """Pending and firing alerts (what /api/v1/alerts lists)."""
        return [a for a in self.active.values() if a.state != INACTIVE]

    @property
    def state(self) -> str:
        """The rule's state: the most severe of its alerts' (Prometheus' rule state)."""
        states = {a.state for a in self.active.values()}
        return FIRING if FIRING in states else PENDING if PENDING in states else INACTIVE

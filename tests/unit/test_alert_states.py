"""One alerting rule's alerts move as Prometheus 2.42's rules/alerting.go moves them
(api/rules/alerts.py): pending, firing once active for ``for``, kept firing for
``keep_firing_for``, resolved and kept for RESOLVED_RETENTION_S, restarted when the label set
comes back, refused when two samples collide or the group's limit is exceeded; and
`Alert.needs_sending` is Prometheus' resend rule."""

from __future__ import annotations

import pytest
import yaml

from fleetpulse.api.rules.alerts import (
    FIRING,
    INACTIVE,
    PENDING,
    RESOLVED_RETENTION_S,
    Alert,
    AlertState,
    LabelsetError,
    fingerprint,
)
from fleetpulse.api.rules.files import Rule, load_text

T0 = 1_700_000_000.0
STEP = 15.0
A = {"instance": "a:9100", "job": "node"}
B = {"instance": "b:9100", "job": "node"}


def rule(
    for_: str | None = None,
    keep_firing_for: str | None = None,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
) -> Rule:
    body: dict[str, object] = {"alert": "HostDown", "expr": "up == 0"}
    if for_ is not None:
        body["for"] = for_
    if keep_firing_for is not None:
        body["keep_firing_for"] = keep_firing_for
    if labels:
        body["labels"] = labels
    if annotations:
        body["annotations"] = annotations
    text = yaml.safe_dump({"groups": [{"name": "g", "rules": [body]}]})
    (group,) = load_text(text, "/rules/test.yml", STEP)
    (loaded,) = group.rules
    return loaded


def only(state: AlertState) -> Alert:
    (alert,) = state.active.values()
    return alert


# -- pending and firing ---------------------------------------------------------------------------


def test_a_new_sample_is_a_pending_alert_active_from_this_evaluation() -> None:
    state = AlertState(rule(for_="5m", labels={"severity": "page"}))
    state.step(T0, [(A, 1.0)])
    alert = only(state)
    assert alert.state == PENDING
    assert alert.active_at == T0
    assert alert.value == 1.0
    assert alert.fired_at is None and alert.resolved_at is None
    assert alert.labels == {**A, "severity": "page", "alertname": "HostDown"}
    assert alert.fingerprint == fingerprint(alert.labels)
    assert state.current() == [alert]
    assert state.state == PENDING


def test_it_fires_once_active_for_the_rules_for_and_not_before() -> None:
    state = AlertState(rule(for_="5m"))
    state.step(T0, [(A, 1.0)])
    ts = T0
    while ts + STEP < T0 + 300:
        ts += STEP
        state.step(ts, [(A, 1.0)])
        assert only(state).state == PENDING, ts - T0
    state.step(T0 + 299.999, [(A, 1.0)])
    assert only(state).state == PENDING
    state.step(T0 + 300, [(A, 1.0)])
    alert = only(state)
    assert alert.state == FIRING
    assert alert.fired_at == T0 + 300
    assert alert.active_at == T0
    assert state.state == FIRING
    # and it keeps firing, from the same start
    state.step(T0 + 315, [(A, 1.0)])
    assert (only(state).state, only(state).active_at, only(state).fired_at) == (
        FIRING,
        T0,
        T0 + 300,
    )


def test_a_late_evaluation_fires_at_once() -> None:
    state = AlertState(rule(for_="1m"))
    state.step(T0, [(A, 1.0)])
    state.step(T0 + 600, [(A, 1.0)])
    assert only(state).state == FIRING
    assert only(state).fired_at == T0 + 600


@pytest.mark.parametrize("for_", [None, "0s", "0"])
def test_without_for_it_fires_at_once(for_: str | None) -> None:
    state = AlertState(rule(for_=for_))
    state.step(T0, [(A, 1.0)])
    alert = only(state)
    assert alert.state == FIRING
    assert alert.active_at == alert.fired_at == T0


def test_each_label_set_is_its_own_alert() -> None:
    state = AlertState(rule(for_="1m"))
    state.step(T0, [(A, 1.0)])
    state.step(T0 + 30, [(A, 1.0), (B, 2.0)])
    state.step(T0 + 60, [(A, 1.0), (B, 2.0)])
    by_instance = {a.labels["instance"]: a for a in state.active.values()}
    assert by_instance["a:9100"].state == FIRING
    assert by_instance["b:9100"].state == PENDING
    assert by_instance["b:9100"].active_at == T0 + 30


# -- going away ---------------------------------------------------------------------------------


def test_a_pending_alert_that_disappears_is_forgotten() -> None:
    state = AlertState(rule(for_="5m"))
    state.step(T0, [(A, 1.0)])
    state.step(T0 + STEP, [])
    assert state.active == {}
    assert state.current() == []
    assert state.state == INACTIVE
    # and comes back as a new alert
    state.step(T0 + 2 * STEP, [(A, 1.0)])
    assert only(state).active_at == T0 + 2 * STEP
    assert only(state).state == PENDING


def test_a_firing_alert_that_disappears_is_resolved_then_dropped_after_the_retention() -> None:
    state = AlertState(rule())
    state.step(T0, [(A, 1.0)])
    resolved_at = T0 + STEP
    state.step(resolved_at, [])
    alert = only(state)
    assert alert.state == INACTIVE
    assert alert.resolved_at == resolved_at
    assert state.current() == []
    assert state.state == INACTIVE
    # kept while it is at most RESOLVED_RETENTION_S old, so that Alertmanager hears it resolved
    state.step(resolved_at + RESOLVED_RETENTION_S, [])
    assert only(state).state == INACTIVE
    assert only(state).resolved_at == resolved_at
    state.step(resolved_at + RESOLVED_RETENTION_S + STEP, [])
    assert state.active == {}


def test_resolved_retention_is_fifteen_minutes() -> None:
    assert RESOLVED_RETENTION_S == 15 * 60


def test_keep_firing_for_keeps_it_firing_after_it_disappears_then_resolves() -> None:
    state = AlertState(rule(keep_firing_for="10m"))
    state.step(T0, [(A, 1.0)])
    assert only(state).state == FIRING
    gone = T0 + 60
    state.step(gone, [])
    alert = only(state)
    assert alert.state == FIRING
    assert alert.keep_firing_since == gone
    assert alert.resolved_at is None
    assert state.current() == [alert]
    state.step(gone + 599, [])
    assert only(state).state == FIRING
    assert only(state).keep_firing_since == gone
    state.step(gone + 600, [])
    alert = only(state)
    assert alert.state == INACTIVE
    assert alert.resolved_at == gone + 600
    # then dropped after the retention, like any resolved alert
    state.step(gone + 600 + RESOLVED_RETENTION_S + 1, [])
    assert state.active == {}


def test_keep_firing_for_is_counted_again_when_the_sample_comes_back() -> None:
    state = AlertState(rule(keep_firing_for="10m"))
    state.step(T0, [(A, 1.0)])
    state.step(T0 + 60, [])
    state.step(T0 + 120, [(A, 2.0)])
    alert = only(state)
    assert alert.state == FIRING
    assert alert.keep_firing_since is None
    assert alert.active_at == T0
    assert alert.value == 2.0
    # gone again: ten minutes from this evaluation, not from the first
    state.step(T0 + 500, [])
    assert only(state).keep_firing_since == T0 + 500
    state.step(T0 + 1000, [])
    assert only(state).state == FIRING
    state.step(T0 + 1100, [])
    assert only(state).state == INACTIVE
    assert only(state).resolved_at == T0 + 1100


def test_keep_firing_for_does_not_keep_a_pending_alert() -> None:
    state = AlertState(rule(for_="5m", keep_firing_for="10m"))
    state.step(T0, [(A, 1.0)])
    state.step(T0 + STEP, [])
    assert state.active == {}


def test_a_resolved_alert_that_comes_back_starts_over_as_pending() -> None:
    state = AlertState(rule(for_="1m"))
    state.step(T0, [(A, 1.0)])
    state.step(T0 + 60, [(A, 1.0)])
    assert only(state).state == FIRING
    state.step(T0 + 120, [])
    assert only(state).state == INACTIVE
    back = T0 + 180
    state.step(back, [(A, 5.0)])
    alert = only(state)
    assert alert.state == PENDING
    assert alert.active_at == back
    assert alert.fired_at is None
    assert alert.resolved_at is None
    assert alert.value == 5.0
    state.step(back + 60, [(A, 5.0)])
    assert only(state).state == FIRING
    assert only(state).fired_at == back + 60


# -- what each evaluation updates ---------------------------------------------------------------


def test_value_and_annotations_follow_each_evaluation_and_active_at_is_kept() -> None:
    state = AlertState(
        rule(
            for_="1m",
            annotations={
                "summary": "{{ $labels.instance }} at {{ $value | humanize }}",
                "plain": "no template",
            },
        )
    )
    state.step(T0, [(A, 1234.0)])
    assert only(state).annotations == {"summary": "a:9100 at 1.234k", "plain": "no template"}
    state.step(T0 + 30, [(A, 0.5)])
    alert = only(state)
    assert alert.value == 0.5
    assert alert.annotations["summary"] == "a:9100 at 500m"
    assert alert.active_at == T0
    state.step(T0 + 60, [(A, 2e6)])
    alert = only(state)
    assert alert.state == FIRING
    assert alert.value == 2e6
    assert alert.annotations["summary"] == "a:9100 at 2M"
    assert alert.active_at == T0


def test_label_templates_expand_per_sample_with_external_labels_and_url() -> None:
    state = AlertState(
        rule(
            labels={"where": "{{ $externalLabels.region }}/{{ $labels.instance }}"},
            annotations={"link": "{{ $externalURL }}/alerts"},
        )
    )
    state.step(T0, [(A, 1.0), (B, 1.0)], {"region": "eu"}, "http://prom:9090")
    assert sorted(a.labels["where"] for a in state.active.values()) == [
        "eu/a:9100",
        "eu/b:9100",
    ]
    assert {a.annotations["link"] for a in state.active.values()} == {"http://prom:9090/alerts"}


def test_a_rule_label_overrides_the_samples_and_one_that_expands_empty_is_dropped() -> None:
    state = AlertState(rule(labels={"job": "fleet", "instance": "{{ $labels.blank }}"}))
    state.step(T0, [({"instance": "a", "job": "node", "blank": ""}, 1.0)])
    assert only(state).labels == {"job": "fleet", "alertname": "HostDown"}


def test_a_label_template_on_a_missing_label_drops_the_label() -> None:
    # Prometheus 2.42 expands a missing label to "" (Go's missingkey=zero), and a label whose
    # value expands to "" is dropped.
    state = AlertState(rule(labels={"owner": "{{ $labels.team }}"}))
    state.step(T0, [(A, 1.0)])
    assert only(state).labels == {**A, "alertname": "HostDown"}


# -- refused evaluations ----------------------------------------------------------------------


def test_two_samples_that_collide_after_the_rule_labels_are_refused() -> None:
    state = AlertState(rule(for_="5m", labels={"instance": "all"}))
    state.step(T0, [(A, 1.0)])
    before = dict(state.active)
    (alert,) = before.values()
    with pytest.raises(LabelsetError, match="same labelset after applying alert labels"):
        state.step(T0 + STEP, [(A, 7.0), (B, 8.0)])
    # the evaluation changed nothing
    assert state.active == before
    assert alert.value == 1.0 and alert.active_at == T0


def test_the_alertname_label_is_the_rules_name() -> None:
    state = AlertState(rule(labels={"alertname": "Other"}))
    state.step(T0, [({"alertname": "FromSample", **A}, 1.0)])
    assert only(state).labels["alertname"] == "HostDown"


def test_exceeding_the_limit_is_refused_and_clears_the_alerts() -> None:
    state = AlertState(rule(for_="5m"))
    samples = [({"instance": str(i)}, 1.0) for i in range(3)]
    state.step(T0, samples, limit=3)
    assert len(state.current()) == 3
    with pytest.raises(LabelsetError, match="exceeded limit of 2 with 3 alerts"):
        state.step(T0 + STEP, samples, limit=2)
    assert state.active == {}
    # within the limit again: the alerts start over
    state.step(T0 + 2 * STEP, samples[:2], limit=2)
    assert {a.active_at for a in state.active.values()} == {T0 + 2 * STEP}
    # no limit
    state.step(T0 + 3 * STEP, samples, limit=0)
    assert len(state.current()) == 3


def test_resolved_alerts_do_not_count_against_the_limit() -> None:
    state = AlertState(rule())
    state.step(T0, [({"instance": "a"}, 1.0), ({"instance": "b"}, 1.0)], limit=2)
    state.step(T0 + STEP, [({"instance": "c"}, 1.0)], limit=2)
    assert sorted(a.state for a in state.active.values()) == [FIRING, INACTIVE, INACTIVE]
    state.step(T0 + 2 * STEP, [({"instance": "c"}, 1.0), ({"instance": "d"}, 1.0)], limit=2)
    assert len(state.current()) == 2


def test_alerts_kept_firing_count_against_the_limit() -> None:
    state = AlertState(rule(keep_firing_for="10m"))
    state.step(T0, [({"instance": "a"}, 1.0)], limit=1)
    with pytest.raises(LabelsetError, match="exceeded limit of 1 with 2 alerts"):
        state.step(T0 + STEP, [({"instance": "b"}, 1.0)], limit=1)


# -- needs_sending: Prometheus' resend rule ------------------------------------------------------

RESEND_S = 60.0


def test_a_pending_alert_is_never_sent() -> None:
    state = AlertState(rule(for_="5m"))
    state.step(T0, [(A, 1.0)])
    alert = only(state)
    assert not alert.needs_sending(T0, RESEND_S)
    assert not alert.needs_sending(T0 + 10 * RESEND_S, RESEND_S)


def test_a_firing_alert_is_sent_at_once_then_again_only_after_the_resend_delay() -> None:
    state = AlertState(rule())
    state.step(T0, [(A, 1.0)])
    alert = only(state)
    assert alert.needs_sending(T0, RESEND_S)
    alert.last_sent_at = T0
    assert not alert.needs_sending(T0, RESEND_S)
    assert not alert.needs_sending(T0 + 30, RESEND_S)
    # Prometheus: lastSentAt + resendDelay before ts, strictly
    assert not alert.needs_sending(T0 + RESEND_S, RESEND_S)
    assert alert.needs_sending(T0 + RESEND_S + 1, RESEND_S)


def test_a_resolved_alert_is_sent_at_once_then_after_the_resend_delay() -> None:
    state = AlertState(rule())
    state.step(T0, [(A, 1.0)])
    alert = only(state)
    alert.last_sent_at = T0
    state.step(T0 + STEP, [])
    assert alert.state == INACTIVE
    # resolved since the last send: at once, resend delay or not
    assert alert.needs_sending(T0 + STEP, RESEND_S)
    alert.last_sent_at = T0 + STEP
    assert not alert.needs_sending(T0 + 2 * STEP, RESEND_S)
    assert alert.needs_sending(T0 + STEP + RESEND_S + 1, RESEND_S)


def test_an_alert_resolved_before_it_was_ever_sent_is_sent() -> None:
    state = AlertState(rule())
    state.step(T0, [(A, 1.0)])
    state.step(T0 + STEP, [])
    assert only(state).needs_sending(T0 + STEP, RESEND_S)

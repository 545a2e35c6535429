"""Every rule file fleetpulse accepts, Debian's promtool (Prometheus 2.42) accepts too
(api/rules/files.py promises to be at least as strict): the built-in rules and files written here
with recording and alerting rules, ``for``, ``keep_firing_for``, labels and annotations with
templates and pipelines. And files fleetpulse refuses, promtool refuses too (a sanity check that
the two read the same format), including the ones a lenient reader would load.

Needs no database: only ``promtool check rules``. Skipped when promtool is not installed, except
under CI (``CI`` set), where that is a failure (as tests/integration/test_promql.py does).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from fleetpulse.api.rules.evaluator import BUILTIN_RULES
from fleetpulse.api.rules.files import RuleFileError, load

pytestmark = pytest.mark.skipif(
    shutil.which("promtool") is None and not os.environ.get("CI"),
    reason="promtool (Debian's prometheus) is not installed",
)


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:  # only reached under CI, where a missing promtool is a failure
        pytest.fail("promtool (Debian's prometheus) is not installed, and CI is set")
    return path


def check_rules(promtool: str, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def write(tmp_path: Path, text: str, name: str = "rules.yml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


# -- accepted by fleetpulse, so by promtool -------------------------------------------------------

ACCEPTED = {
    "record-and-alert": """
        groups:
          - name: fleet-recording
            interval: 30s
            rules:
              - record: job:cpu_usage:avg
                expr: avg by (job) (rate(cpu_seconds_total{mode!="idle"}[5m]))
                labels:
                  team: infra
              - record: fleet:up:count
                expr: count(up)
          - name: fleet-alerts
            interval: 1m
            limit: 100
            rules:
              - alert: HostDown
                expr: up == 0
                for: 5m
                keep_firing_for: 10m
                labels:
                  severity: critical
                  instance_host: '{{ reReplaceAll ":[0-9]+" "" $labels.instance }}'
                annotations:
                  summary: "{{ $labels.instance }} of {{ .Labels.job }} is down"
                  description: "Down for {{ 300 | humanizeDuration }}; value {{ $value }}."
              - alert: HostDown
                expr: up{job="edge"} == 0
                for: 1h30m
              - alert: CPUHigh
                expr: job:cpu_usage:avg > 0.9
                keep_firing_for: 15m
                labels:
                  severity: warning
                annotations:
                  summary: "CPU of {{ $labels.job }} at {{ $value | humanizePercentage }}"
    """,
    "templates": """
        groups:
          - name: templates
            rules:
              - alert: DiskFull
                expr: disk_used_bytes / disk_total_bytes > 0.9
                for: 0s
                labels:
                  severity: '{{ "page" | toUpper | toLower }}'
                  region: "{{ $externalLabels.region }}"
                annotations:
                  used: "{{ $value | humanize }} ({{ $value | humanize1024 }}B)"
                  percent: '{{ printf "%.2f" $value }}% on {{ $labels.mountpoint | title }}'
                  formatted: '{{ printf "%s is at %.1f%%" $labels.instance $value }}'
                  verbs: '{{ printf "%v %d %q" .Value 42 $labels.device }}'
                  piped: '{{ $value | printf "%.3f" }}'
                  link: "{{ $externalURL }}/graph?g0.expr=up"
                  trimmed: "a  {{- $value -}}  b"
                  commented: "a {{/* a comment */}} b {{- /* trimmed */ -}} c"
                  literals: '{{ 5 }} {{ 1.5 }} {{ -3 }} {{ "s" }} {{ `raw` }}'
                  seconds: "{{ 0.25 | humanizeDuration }} {{ 86400 | humanizeDuration }}"
                  multiline: |
                    {{ $labels.instance }} is full:
                    {{ $value | humanizePercentage }} used
    """,
    "durations": """
        groups:
          - name: durations
            interval: 250ms
            rules:
              - alert: A
                expr: vector(1)
                for: 1y2w3d4h5m6s7ms
                keep_firing_for: "0"
              - alert: B
                expr: vector(1)
                for: 90s
                keep_firing_for: 1w
    """,
    "empty-group": """
        groups:
          - name: nothing-yet
    """,
}


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_promtool_accepts_what_fleetpulse_accepts(name: str, promtool: str, tmp_path: Path) -> None:
    path = write(tmp_path, ACCEPTED[name])
    groups = load([str(path)], 60)  # raises if fleetpulse refuses it
    assert groups
    done = check_rules(promtool, path)
    assert done.returncode == 0, done.stdout + done.stderr
    rules = sum(len(g.rules) for g in groups)
    assert f"SUCCESS: {rules} rules found" in done.stdout


def test_promtool_accepts_the_builtin_rules(promtool: str) -> None:
    groups = load([str(BUILTIN_RULES)], 60)
    assert groups and all(g.rules for g in groups)
    done = check_rules(promtool, BUILTIN_RULES)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {sum(len(g.rules) for g in groups)} rules found" in done.stdout


# -- refused by fleetpulse, and by promtool ------------------------------------------------------

BOTH_REFUSE = {
    "record-and-alert": "- record: a\n  alert: B\n  expr: up\n",
    "neither-record-nor-alert": "- expr: up\n",
    "missing-expr": "- alert: A\n",
    "unparsable-expr": "- alert: A\n  expr: 'sum(up'\n",
    "recording-with-annotations": "- record: a:b\n  expr: up\n  annotations: {x: y}\n",
    "recording-with-for": "- record: a:b\n  expr: up\n  for: 5m\n",
    "recording-with-keep-firing-for": "- record: a:b\n  expr: up\n  keep_firing_for: 5m\n",
    "invalid-record-name": "- record: a-b\n  expr: up\n",
    "invalid-label-name": "- alert: A\n  expr: up\n  labels: {a-b: x}\n",
    "duration-5q": "- alert: A\n  expr: up\n  for: 5q\n",
    "bare-number-duration": "- alert: A\n  expr: up\n  for: 30\n",
    "bare-number-keep-firing-for": "- alert: A\n  expr: up\n  keep_firing_for: 30\n",
    "unknown-field-in-rule": "- alert: A\n  expr: up\n  severity: page\n",
    "undefined-template-variable": "- alert: A\n  expr: up\n  annotations: {s: '{{ $foo }}'}\n",
    "unknown-template-function": "- alert: A\n  expr: up\n  annotations: {s: '{{ $value | frob }}'}\n",
    "unclosed-template-action": "- alert: A\n  expr: up\n  labels: {s: '{{ $value '}\n",
    "template-end-without-block": "- alert: A\n  expr: up\n  labels: {s: '{{ end }}'}\n",
}
BOTH_REFUSE_FILES = {
    "repeated-group-name": "groups:\n  - name: g\n    rules: []\n  - name: g\n    rules: []\n",
    "unknown-field-in-group": "groups:\n  - name: g\n    evaluation_interval: 1m\n",
    "unknown-top-level-field": "groups: []\nrules: []\n",
    "group-without-name": "groups:\n  - rules: []\n",
    "bad-interval": "groups:\n  - name: g\n    interval: 5q\n",
    "not-yaml": "groups:\n  - name: g\n    rules: [\n",
}


def in_a_group(rules: str) -> str:
    return "groups:\n  - name: g\n    rules:\n" + textwrap.indent(rules, "      ")


REFUSED_TEXTS = {
    **{name: in_a_group(rules) for name, rules in BOTH_REFUSE.items()},
    **BOTH_REFUSE_FILES,
}


@pytest.mark.parametrize("name", sorted(REFUSED_TEXTS))
def test_promtool_refuses_what_fleetpulse_refuses(name: str, promtool: str, tmp_path: Path) -> None:
    path = write(tmp_path, REFUSED_TEXTS[name])
    with pytest.raises(RuleFileError) as raised:
        load([str(path)], 60)
    assert raised.value.message.startswith(f"{path}: ")
    done = check_rules(promtool, path)
    assert done.returncode != 0, done.stdout + done.stderr


# -- refused by promtool, which a lenient reader would load ------------------------------------------------

# Each of these files is refused by promtool 2.42 (its error in the comment), so fleetpulse, which
# promises to be at least as strict, must refuse it too.
PROMTOOL_REFUSES = {
    # yaml: unmarshal errors: mapping key "expr" already defined (PyYAML keeps the last one)
    "repeated-key": "- alert: A\n  expr: up == 0\n  expr: up == 1\n",
    # template: unexpected "/" in command (a comment must follow "{{" at once)
    "comment-after-a-space": "- alert: A\n  expr: up\n  annotations: {s: 'a {{ /* c */ }} b'}\n",
    # template: comment ends before closing delimiter
    "space-after-a-comment": "- alert: A\n  expr: up\n  annotations: {s: 'a {{/* c */ }} b'}\n",
    # template: non executable command in pipeline stage 2
    "literal-in-a-pipeline": "- alert: A\n  expr: up\n  annotations: {s: '{{ $value | 5 }}'}\n",
    # template: invalid syntax (\q is no escape in a Go string)
    "invalid-escape": "- alert: A\n  expr: up\n  annotations: {s: '{{ \"a\\qb\" }}'}\n",
    # not a valid duration string: "\uff15m" (U+FF15, a full-width 5)
    "non-ascii-digit-in-duration": "- alert: A\n  expr: up\n  for: \uff15m\n",
}
PROMTOOL_REFUSES_FILES = {
    # yaml: cannot unmarshal !!bool `true` into int (bool is an int in Python)
    "boolean-limit": "groups:\n  - name: g\n    limit: true\n    rules: []\n",
}
PROMTOOL_REFUSED_TEXTS = {
    **{name: in_a_group(rules) for name, rules in PROMTOOL_REFUSES.items()},
    **PROMTOOL_REFUSES_FILES,
}


@pytest.mark.parametrize("name", sorted(PROMTOOL_REFUSED_TEXTS))
def test_fleetpulse_refuses_what_promtool_refuses(name: str, promtool: str, tmp_path: Path) -> None:
    path = write(tmp_path, PROMTOOL_REFUSED_TEXTS[name])
    done = check_rules(promtool, path)
    assert done.returncode != 0, done.stdout + done.stderr
    with pytest.raises(RuleFileError):
        load([str(path)], 60)

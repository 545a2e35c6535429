"""Prometheus rule files (api/rules/files.py): a valid file loads into groups and rules with their
keys, intervals and durations; every file that does not load is refused with one line naming the
file, the group, the rule and the problem; durations read and print as Prometheus' do.

fleetpulse promises to be at least as strict as ``promtool check rules``; the cases marked PROMTOOL
below are files promtool 2.42 refuses (or reads differently) that fleetpulse accepts.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from fleetpulse.api.rules.files import (
    Group,
    RuleFileError,
    expand_paths,
    format_duration,
    load,
    load_text,
    parse_duration,
)
from fleetpulse.errors import BadInput

PATH = "/etc/fleetpulse/rules/fleet.yml"
DEFAULT_INTERVAL_S = 60.0

VALID = """
groups:
  - name: fleet
    interval: 30s
    limit: 10
    rules:
      - record: job:up:sum
        expr: sum by (job) (up)
        labels:
          team: infra
      - alert: HostDown
        expr: up == 0
        for: 5m
        keep_firing_for: 1h30m
        labels:
          severity: critical
          owner: "{{ $labels.team }}"
        annotations:
          summary: "{{ $labels.instance }} is down"
          description: "{{ $value | humanize }} for {{ 300 | humanizeDuration }}"
  - name: defaults
    rules:
      - alert: HostDown
        expr: up == 0
      - alert: HostDown
        expr: up{job="edge"} == 0
        for: 0
      - record: fleet:up:count
        expr: count(up)
"""


def loaded(text: str = VALID) -> list[Group]:
    return load_text(textwrap.dedent(text), PATH, DEFAULT_INTERVAL_S)


def refusal(text: str, path: str = PATH) -> str:
    with pytest.raises(RuleFileError) as raised:
        load_text(textwrap.dedent(text), path, DEFAULT_INTERVAL_S)
    assert isinstance(raised.value, BadInput)
    message = raised.value.message
    assert "\n" not in message
    return message


def one_rule(body: str, group: str = "g") -> str:
    """A file with one group holding one rule (``body``: the rule's YAML, unindented)."""
    rule = textwrap.indent(textwrap.dedent(body).strip(), "        ")
    return f"groups:\n  - name: {group}\n    rules:\n      -{rule[7:]}\n"


# -- a valid file ---------------------------------------------------------------------------------


def test_a_valid_file_loads_its_groups_and_rules() -> None:
    fleet, _ = loaded()
    assert (fleet.file, fleet.name, fleet.interval_s, fleet.limit) == (PATH, "fleet", 30.0, 10)
    assert fleet.key == f"{PATH};fleet"
    record, alert = fleet.rules
    assert (record.kind, record.name, record.expr) == ("record", "job:up:sum", "sum by (job) (up)")
    assert record.key == "record:job:up:sum"
    assert record.labels == {"team": "infra"}
    assert record.annotations == {}
    assert (record.for_s, record.keep_firing_for_s) == (0.0, 0.0)
    assert (alert.kind, alert.name, alert.expr) == ("alert", "HostDown", "up == 0")
    assert alert.key == "alert:HostDown"
    assert alert.for_s == 300.0
    assert alert.keep_firing_for_s == 5400.0
    assert alert.labels == {"severity": "critical", "owner": "{{ $labels.team }}"}
    assert alert.annotations == {
        "summary": "{{ $labels.instance }} is down",
        "description": "{{ $value | humanize }} for {{ 300 | humanizeDuration }}",
    }
    # the templates are parsed at load, ready to expand
    assert set(alert.label_templates) == {"severity", "owner"}
    assert alert.annotation_templates["summary"].expand({"instance": "h:1"}, 1.0) == "h:1 is down"
    assert alert.annotation_templates["description"].expand({}, 1234.5) == "1.234k for 5m 0s"


def test_a_group_without_interval_takes_the_default() -> None:
    _, defaults = loaded()
    assert defaults.interval_s == DEFAULT_INTERVAL_S
    assert defaults.limit == 0
    assert loaded(VALID)[1].interval_s == 60.0
    assert load_text(textwrap.dedent(VALID), PATH, 15.0)[1].interval_s == 15.0
    assert load_text(textwrap.dedent(VALID), PATH, 15.0)[0].interval_s == 30.0


def test_rules_of_the_same_name_get_ordinals_in_their_key() -> None:
    _, defaults = loaded()
    first, second, record = defaults.rules
    assert (first.name, second.name) == ("HostDown", "HostDown")
    assert first.key == "alert:HostDown"
    assert second.key == "alert:HostDown#1"
    assert record.key == "record:fleet:up:count"
    assert second.for_s == 0.0
    # keys are per group: HostDown in "fleet" is #0 too
    assert loaded()[0].rules[1].key == "alert:HostDown"
    # and stable across reloads
    assert [r.key for g in loaded() for r in g.rules] == [r.key for g in loaded() for r in g.rules]


def test_as_prometheus_writes_the_rule_back() -> None:
    record, alert = loaded()[0].rules
    assert record.as_prometheus() == {
        "record": "job:up:sum",
        "expr": "sum by (job) (up)",
        "labels": {"team": "infra"},
    }
    assert alert.as_prometheus()["for"] == "5m"
    assert alert.as_prometheus()["keep_firing_for"] == "1h30m"


def test_an_empty_file_has_no_groups() -> None:
    assert load_text("", PATH, 60) == []
    assert load_text("groups: []\n", PATH, 60) == []
    assert load_text("groups:\n  - name: g\n", PATH, 60)[0].rules == ()


def test_the_group_offset_is_within_its_interval_and_stable() -> None:
    fleet, defaults = loaded()
    for group in (fleet, defaults):
        assert 0 <= group.offset_s < group.interval_s
        assert group.offset_s == loaded()[[fleet, defaults].index(group)].offset_s
    # spread by file and name: 20 groups of one file do not all evaluate at one offset
    many = load_text(
        "groups:\n" + "".join(f"  - name: g{i}\n    interval: 1m\n" for i in range(20)), PATH, 60
    )
    assert len({g.offset_s for g in many}) > 10
    elsewhere = load_text("groups:\n  - name: fleet\n    interval: 30s\n", "/other.yml", 60)[0]
    assert elsewhere.key != fleet.key


# -- refused, with one line naming file, group, rule and problem ---------------------------------

REFUSED = [
    (
        "record and alert",
        one_rule("record: a\nalert: B\nexpr: up"),
        f"{PATH}: group \"g\", rule 1: only one of 'record' and 'alert' must be set",
    ),
    (
        "neither record nor alert",
        one_rule("expr: up"),
        f"{PATH}: group \"g\", rule 1: one of 'record' or 'alert' must be set",
    ),
    (
        "missing expr",
        one_rule("alert: A\nfor: 5m"),
        f"{PATH}: group \"g\", rule 1 (alert A): field 'expr' must be set in rule",
    ),
    (
        "empty expr",
        one_rule("alert: A\nexpr: ''"),
        f"{PATH}: group \"g\", rule 1 (alert A): field 'expr' must be set in rule",
    ),
    (
        "unparsable expr",
        one_rule("alert: A\nexpr: 'sum(up'"),
        f'{PATH}: group "g", rule 1 (alert A): could not parse expression: '
        "parse error: unclosed left parenthesis",
    ),
    (
        "recording rule with annotations",
        one_rule("record: a:b\nexpr: up\nannotations: {x: y}"),
        f"{PATH}: group \"g\", rule 1 (record a:b): invalid field 'annotations' in recording rule",
    ),
    (
        "recording rule with for",
        one_rule("record: a:b\nexpr: up\nfor: 5m"),
        f"{PATH}: group \"g\", rule 1 (record a:b): invalid field 'for' in recording rule",
    ),
    (
        "recording rule with keep_firing_for",
        one_rule("record: a:b\nexpr: up\nkeep_firing_for: 5m"),
        f'{PATH}: group "g", rule 1 (record a:b): '
        "invalid field 'keep_firing_for' in recording rule",
    ),
    (
        "invalid record name",
        one_rule("record: a-b\nexpr: up"),
        f'{PATH}: group "g", rule 1 (record a-b): invalid recording rule name: a-b',
    ),
    (
        "invalid label name",
        one_rule("alert: A\nexpr: up\nlabels: {a-b: x}"),
        f'{PATH}: group "g", rule 1 (alert A): invalid label name: a-b',
    ),
    (
        "invalid annotation name",
        one_rule("alert: A\nexpr: up\nannotations: {'a b': x}"),
        f'{PATH}: group "g", rule 1 (alert A): invalid annotation name: a b',
    ),
    (
        "reserved label",
        one_rule("alert: A\nexpr: up\nlabels: {__x: y}"),
        f'{PATH}: group "g", rule 1 (alert A): label name __x is reserved (it starts with __)',
    ),
    (
        "reserved label __name__",
        one_rule("record: a\nexpr: up\nlabels: {__name__: y}"),
        f'{PATH}: group "g", rule 1 (record a): label name __name__ is reserved (it starts with __)',
    ),
    (
        "label value not a string",
        one_rule("alert: A\nexpr: up\nlabels: {a: [1]}"),
        f'{PATH}: group "g", rule 1 (alert A): labels.a: expected a string',
    ),
    (
        "bad duration 5q",
        one_rule("alert: A\nexpr: up\nfor: 5q"),
        f'{PATH}: group "g", rule 1 (alert A): for: not a valid duration string: "5q"',
    ),
    (
        "bare number as duration",
        one_rule("alert: A\nexpr: up\nfor: 30"),
        f'{PATH}: group "g", rule 1 (alert A): for: not a valid duration string: "30"',
    ),
    (
        "bad keep_firing_for",
        one_rule("alert: A\nexpr: up\nkeep_firing_for: 30"),
        f'{PATH}: group "g", rule 1 (alert A): keep_firing_for: not a valid duration string: "30"',
    ),
    (
        "bad interval",
        "groups:\n  - name: g\n    interval: 5q\n    rules: []\n",
        f'{PATH}: group "g": interval: not a valid duration string: "5q"',
    ),
    (
        "zero interval",
        "groups:\n  - name: g\n    interval: 0s\n    rules: []\n",
        f'{PATH}: group "g": interval must be above 0',
    ),
    (
        "repeated group name",
        "groups:\n  - name: g\n    rules: []\n  - name: h\n  - name: g\n    rules: []\n",
        f'{PATH}: group "g": groupname "g" is repeated in the same file',
    ),
    (
        "group without name",
        "groups:\n  - name: g\n  - rules: []\n",
        f"{PATH}: group 2: groupname must not be empty",
    ),
    (
        "unknown field in group",
        "groups:\n  - name: g\n    evaluation_interval: 1m\n    rules: []\n",
        f'{PATH}: group "g": unknown field "evaluation_interval"',
    ),
    (
        "unknown field in rule",
        one_rule("alert: A\nexpr: up\nseverity: page"),
        f'{PATH}: group "g", rule 1 (alert A): unknown field "severity"',
    ),
    (
        "unknown top-level field",
        "groups: []\nrules: []\n",
        f'{PATH}: unknown field "rules"',
    ),
    (
        "negative limit",
        "groups:\n  - name: g\n    limit: -1\n    rules: []\n",
        f'{PATH}: group "g": limit must be a whole number, 0 or more',
    ),
    (
        "template outside the subset in an annotation",
        one_rule("alert: A\nexpr: up\nannotations:\n  summary: '{{ if $value }}x{{ end }}'"),
        f'{PATH}: group "g", rule 1 (alert A): annotations.summary: '
        "'if' blocks are not supported by fleetpulse",
    ),
    (
        "template outside the subset in a label",
        one_rule("alert: A\nexpr: up\nlabels:\n  sev: '{{ query \"up\" }}'"),
        f'{PATH}: group "g", rule 1 (alert A): labels.sev: '
        "template function 'query' is not supported by fleetpulse",
    ),
    (
        "unknown template function",
        one_rule("alert: A\nexpr: up\nannotations:\n  summary: '{{ $value | frob }}'"),
        f'{PATH}: group "g", rule 1 (alert A): annotations.summary: function "frob" not defined',
    ),
    (
        "template in a recording rule's label",
        one_rule("record: a\nexpr: up\nlabels:\n  x: '{{ $value }}'"),
        f'{PATH}: group "g", rule 1 (record a): labels.x: recording rules\' labels are not templates',
    ),
    (
        "a rule that is not a mapping",
        "groups:\n  - name: g\n    rules:\n      - up == 0\n",
        f'{PATH}: group "g", rule 1: expected a mapping',
    ),
    (
        "not a mapping",
        "- a\n- b\n",
        f"{PATH}: expected a mapping with groups:",
    ),
]


@pytest.mark.parametrize(("text", "want"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_a_file_that_does_not_load_names_file_group_rule_and_problem(text: str, want: str) -> None:
    assert refusal(text) == want


def test_the_rule_number_counts_within_its_group() -> None:
    text = """
    groups:
      - name: first
        rules:
          - record: a
            expr: up
      - name: second
        rules:
          - record: b
            expr: up
          - alert: C
            expr: up
            for: 5q
    """
    assert refusal(text) == (
        f'{PATH}: group "second", rule 2 (alert C): for: not a valid duration string: "5q"'
    )


def test_not_yaml_is_refused_with_its_line() -> None:
    message = refusal("groups:\n  - name: g\n    rules: [\n      - a: b: c\n")
    assert message.startswith(f"{PATH}: not YAML (line ")
    message = refusal("groups:\n\t- name: g\n")
    assert message.startswith(f"{PATH}: not YAML (line 2)")


# -- files and paths --------------------------------------------------------------------------------


def test_load_reads_files_and_globs_in_order(tmp_path: Path) -> None:
    (tmp_path / "b.yml").write_text("groups:\n  - name: from-b\n")
    (tmp_path / "a.yml").write_text("groups:\n  - name: from-a\n    interval: 10s\n")
    (tmp_path / "c.txt").write_text("not: [a rule file\n")
    groups = load([str(tmp_path / "*.yml")], 60)
    assert [(g.name, g.file) for g in groups] == [
        ("from-a", str(tmp_path / "a.yml")),
        ("from-b", str(tmp_path / "b.yml")),
    ]
    assert groups[0].interval_s == 10.0 and groups[1].interval_s == 60.0
    assert expand_paths([str(tmp_path / "*.yml")]) == [
        str(tmp_path / "a.yml"),
        str(tmp_path / "b.yml"),
    ]
    # a file named twice (by a glob and by name) is read once
    assert expand_paths([str(tmp_path / "*.yml"), str(tmp_path / "a.yml")]) == [
        str(tmp_path / "a.yml"),
        str(tmp_path / "b.yml"),
    ]
    # a glob that matches nothing is no error
    assert load([str(tmp_path / "none-*.yml")], 60) == []


def test_a_file_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yml"
    with pytest.raises(RuleFileError) as raised:
        load([str(missing)], 60)
    assert raised.value.message == f"{missing}: cannot read: No such file or directory"


def test_a_refusal_names_the_file_it_was_read_from(tmp_path: Path) -> None:
    (tmp_path / "good.yml").write_text("groups:\n  - name: g\n")
    (tmp_path / "bad.yml").write_text(one_rule("alert: A\nexpr: up\nfor: 30"))
    with pytest.raises(RuleFileError) as raised:
        load([str(tmp_path / "*.yml")], 60)
    assert raised.value.message == (
        f'{tmp_path / "bad.yml"}: group "g", rule 1 (alert A): '
        'for: not a valid duration string: "30"'
    )


# -- durations --------------------------------------------------------------------------------------

DAY_S = 86_400
DURATIONS = [
    ("0", 0.0),
    ("0s", 0.0),
    ("250ms", 0.25),
    ("30s", 30.0),
    ("90s", 90.0),
    ("5m", 300.0),
    ("1m30s", 90.0),
    ("1h30m", 5400.0),
    ("1d", DAY_S),
    ("2w", 14 * DAY_S),
    ("1y", 365 * DAY_S),
    ("1y2w3d4h5m6s7ms", (365 + 14 + 3) * DAY_S + 4 * 3600 + 5 * 60 + 6.007),
]
NOT_DURATIONS = ["", "30", "5q", "1.5h", "-1s", "1m1h", "1s1s", " 5m", "5M", "1_000s", "h"]


@pytest.mark.parametrize(("text", "want_s"), DURATIONS)
def test_parse_duration(text: str, want_s: float) -> None:
    assert parse_duration(text) == pytest.approx(want_s, abs=1e-9)


@pytest.mark.parametrize("text", NOT_DURATIONS)
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="not a valid duration string"):
        parse_duration(text)


# Prometheus' duration regexp is [0-9]+ (ASCII): "\uff15m" (a full-width 5) is not a duration
# (promtool: not a valid duration string), though Python's \d would match it.
def test_parse_duration_refuses_non_ascii_digits() -> None:
    with pytest.raises(ValueError, match="not a valid duration string"):
        parse_duration("\uff15m")


FORMATTED = [
    (0.0, "0s"),
    (0.001, "1ms"),
    (0.25, "250ms"),
    (1.0, "1s"),
    (90.0, "1m30s"),
    (300.0, "5m"),
    (5400.0, "1h30m"),
    (3661.5, "1h1m1s500ms"),
    (DAY_S, "1d"),
    (DAY_S + 3600, "1d1h"),
    (7 * DAY_S, "1w"),
    (14 * DAY_S, "2w"),
    (365 * DAY_S, "1y"),
]


@pytest.mark.parametrize(("seconds", "want"), FORMATTED, ids=[w for _, w in FORMATTED])
def test_format_duration_round_trips(seconds: float, want: str) -> None:
    assert format_duration(seconds) == want
    assert parse_duration(want) == pytest.approx(seconds, abs=1e-9)


@pytest.mark.parametrize("text", [t for t, _ in DURATIONS])
def test_every_duration_round_trips_through_format(text: str) -> None:
    seconds = parse_duration(text)
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds, abs=1e-9)


# Prometheus' model.Duration.String writes years and weeks only when they divide the
# duration exactly ("it is often easier to read 90d than 12w6d").
@pytest.mark.parametrize(
    ("seconds", "want"),
    [(8 * DAY_S, "8d"), (90 * DAY_S, "90d"), (366 * DAY_S, "366d"), (10 * DAY_S + 60, "10d1m")],
)
def test_format_duration_writes_years_and_weeks_only_when_exact(seconds: float, want: str) -> None:
    assert format_duration(seconds) == want


# -- PROMTOOL: files promtool 2.42 refuses, which PyYAML's defaults would load -------------------------------------


def test_a_key_repeated_in_a_mapping_is_refused() -> None:
    # promtool: yaml: unmarshal errors: line 6: mapping key "expr" already defined at line 5.
    # PyYAML keeps the last value silently, so the rule alerts on `up == 1`.
    text = one_rule("alert: A\nexpr: up == 0\nexpr: up == 1")
    with pytest.raises(RuleFileError):
        load_text(text, PATH, 60)


def test_a_limit_that_is_not_a_whole_number_is_refused() -> None:
    # promtool: cannot unmarshal !!bool `true` into int. bool is an int in Python, so the group
    # loads with limit=True.
    with pytest.raises(RuleFileError):
        load_text("groups:\n  - name: g\n    limit: true\n    rules: []\n", PATH, 60)


def test_label_and_annotation_values_keep_their_yaml_text() -> None:
    # Prometheus reads labels and annotations as strings, so a plain scalar keeps the text it
    # is written with (promtool test rules: a="1.50", b="010", c="0x1F", d="12:30", f="1_000",
    # g=".inf"); PyYAML's safe loader would resolve them as YAML 1.1 numbers ("1.5", "8", "31", "750", ...).
    text = one_rule(
        """
        alert: A
        expr: up
        labels:
          a: 1.50
          b: 010
          c: 0x1F
          d: 12:30
          f: 1_000
          g: .inf
          i: 1e3
          j: 7
        annotations:
          version: 2.10
        """
    )
    rule = load_text(text, PATH, 60)[0].rules[0]
    assert rule.labels == {
        "a": "1.50",
        "b": "010",
        "c": "0x1F",
        "d": "12:30",
        "f": "1_000",
        "g": ".inf",
        "i": "1e3",
        "j": "7",
    }
    assert rule.annotations == {"version": "2.10"}

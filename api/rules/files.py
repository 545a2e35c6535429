"""Rule files in Prometheus' format: ``groups:`` of recording and alerting rules.

`load` reads the files the settings name (globs allowed, as Prometheus' ``rule_files``), checks
every group and rule as ``promtool check rules`` does, and returns the groups, or raises
`RuleFileError` with one line naming the file, the group, the rule and the problem. A file that
does not load changes nothing: the caller keeps the rules in force (api/rules/evaluator.py).

fleetpulse is at least as strict as promtool, so that every file it accepts promtool accepts
(tests/integration/test_rule_files_promtool.py runs Debian's promtool on them): unknown fields are
refused (Go's strict YAML does too), templates must be in the subset api/rules/templates.py
reads, and durations are Prometheus' (``30s``, ``5m``, ``1h30m``; a bare number is not one).
"""

from __future__ import annotations

import glob
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fleetpulse.api.promql import PromQLError, parse
from fleetpulse.api.rules.templates import Template, TemplateError
from fleetpulse.errors import BadInput

METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_DURATION = re.compile(
    r"(?:([0-9]+)y)?(?:([0-9]+)w)?(?:([0-9]+)d)?(?:([0-9]+)h)?(?:([0-9]+)m)?(?:([0-9]+)s)?"
    r"(?:([0-9]+)ms)?"
)
_UNITS_S = (365 * 86400, 7 * 86400, 86400, 3600, 60, 1, 0.001)
_GROUP_FIELDS = {"name", "interval", "limit", "rules"}
_RULE_FIELDS = {"record", "alert", "expr", "for", "keep_firing_for", "labels", "annotations"}


class RuleFileError(BadInput):
    """A rule file that does not load: one line, naming the file, group, rule and problem."""


def parse_duration(text: str) -> float:
    """Seconds from a Prometheus duration (``0``, ``90s``, ``1h30m``, ``250ms``); ValueError else."""
    found = _DURATION.fullmatch(text)
    if text == "0":
        return 0.0
    if not text or not found or not any(found.groups()):
        raise ValueError(f'not a valid duration string: "{text}"')
    return sum(int(n) * unit for n, unit in zip(found.groups(), _UNITS_S, strict=True) if n)


@dataclass(frozen=True)
class Rule:
    kind: str  # "record" or "alert"
    name: str
    expr: str
    # Unique within its group, stable across reloads while the rule keeps its name and its place
    # among the rules of that name: what alert state and rule health are stored under.
    key: str
    for_s: float = 0.0
    keep_firing_for_s: float = 0.0
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    label_templates: dict[str, Template] = field(default_factory=dict, compare=False)
    annotation_templates: dict[str, Template] = field(default_factory=dict, compare=False)

    def as_prometheus(self) -> dict[str, Any]:
        """The rule as Prometheus' rule file writes it (``/api/v1/rules`` and ``fleetpulse rules``)."""
        out: dict[str, Any] = {self.kind: self.name, "expr": self.expr}
        if self.for_s:
            out["for"] = format_duration(self.for_s)
        if self.keep_firing_for_s:
            out["keep_firing_for"] = format_duration(self.keep_firing_for_s)
        if self.labels:
            out["labels"] = dict(self.labels)
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out


@dataclass(frozen=True)
class Group:
    file: str
    name: str
    interval_s: float
    limit: int
    rules: tuple[Rule, ...]

    @property
    def key(self) -> str:
        """What the group's evaluation state is stored under: its file and name."""
        return f"{self.file};{self.name}"

    @property
    def offset_s(self) -> float:
        """Where in its interval the group evaluates, spread by its key as Prometheus spreads
        groups (its evaluation times are ``k * interval + offset``)."""
        digest = hashlib.blake2b(self.key.encode(), digest_size=8).digest()
        return (int.from_bytes(digest, "big") % max(1, int(self.interval_s * 1000))) / 1000.0


def format_duration(seconds: float) -> str:
    """A duration as Prometheus writes one (model.Duration): ``1h30m``, ``90d`` (years and weeks
    only when they divide it exactly), ``0s``."""
    ms = round(seconds * 1000)
    if ms == 0:
        return "0s"
    out = []
    units = (
        ("y", 31_536_000_000, True),
        ("w", 604_800_000, True),
        ("d", 86_400_000, False),
        ("h", 3_600_000, False),
        ("m", 60_000, False),
        ("s", 1000, False),
        ("ms", 1, False),
    )
    for unit, size, exact in units:
        if exact and ms % size:
            continue
        if ms >= size:
            out.append(f"{ms // size}{unit}")
            ms %= size
    return "".join(out)


class _Loader(yaml.BaseLoader):
    """YAML as Go's yaml reads it into Prometheus' rule structs: every scalar stays the text it
    was written as (a label ``1.50`` is "1.50", not 1.5; ``010`` is not 8), and a key repeated in
    one mapping is an error, not the last one winning."""

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                line = key_node.start_mark.line + 1
                raise yaml.constructor.ConstructorError(
                    None, None, f'mapping key "{key}" already defined (line {line})', None
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def expand_paths(patterns: Iterable[str]) -> list[str]:
    """Each pattern's files, sorted, as Prometheus expands ``rule_files``; a pattern without
    wildcards must name a file that exists."""
    paths: list[str] = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            paths.extend(sorted(glob.glob(pattern)))
        else:
            paths.append(pattern)
    return list(dict.fromkeys(str(Path(p).resolve()) for p in paths))


def load(patterns: Iterable[str], default_interval_s: float) -> list[Group]:
    """Every group of every file, or `RuleFileError` for the first file that does not load."""
    groups: list[Group] = []
    for path in expand_paths(patterns):
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise RuleFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
        groups.extend(load_text(text, path, default_interval_s))
    return groups


def load_text(text: str, path: str, default_interval_s: float) -> list[Group]:
    try:
        doc = yaml.load(text, Loader=_Loader)  # noqa: S506  # BaseLoader: plain text only
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RuleFileError(f"{path}: not YAML{where}: {problem}") from None
    if doc is None or doc == "":
        return []
    if not isinstance(doc, dict) or set(doc) - {"groups"}:
        extra = sorted(set(doc) - {"groups"}) if isinstance(doc, dict) else []
        problem = f'unknown field "{extra[0]}"' if extra else "expected a mapping with groups:"
        raise RuleFileError(f"{path}: {problem}")
    raw_groups = _absent_as_none(doc.get("groups")) or []
    if not isinstance(raw_groups, list):
        raise RuleFileError(f"{path}: groups: expected a list")
    groups: list[Group] = []
    seen: set[str] = set()
    for index, raw in enumerate(raw_groups, start=1):
        groups.append(_group(raw, index, path, default_interval_s, seen))
    return groups


def _group(raw: Any, index: int, path: str, default_interval_s: float, seen: set[str]) -> Group:
    if not isinstance(raw, dict):
        raise RuleFileError(f"{path}: group {index}: expected a mapping")
    name = raw.get("name")
    where = f'{path}: group "{name}"' if name else f"{path}: group {index}"
    unknown = sorted(set(raw) - _GROUP_FIELDS)
    if unknown:
        raise RuleFileError(f'{where}: unknown field "{unknown[0]}"')
    if not isinstance(name, str) or not name:
        raise RuleFileError(f"{where}: groupname must not be empty")
    if name in seen:
        raise RuleFileError(f'{where}: groupname "{name}" is repeated in the same file')
    seen.add(name)
    raw = {k: _absent_as_none(v) for k, v in raw.items()}
    interval_s = default_interval_s
    if raw.get("interval") is not None:
        interval_s = _duration(raw["interval"], f"{where}: interval")
        if interval_s <= 0:
            raise RuleFileError(f"{where}: interval must be above 0")
    limit_text = raw.get("limit") or "0"
    if not isinstance(limit_text, str) or not re.fullmatch(r"[0-9]+", limit_text):
        raise RuleFileError(f"{where}: limit must be a whole number, 0 or more")
    limit = int(limit_text)
    raw_rules = raw.get("rules") or []
    if not isinstance(raw_rules, list):
        raise RuleFileError(f"{where}: rules: expected a list")
    rules: list[Rule] = []
    names: dict[str, int] = {}
    for number, raw_rule in enumerate(raw_rules, start=1):
        rule = _rule(raw_rule, f"{where}, rule {number}", names)
        rules.append(rule)
    return Group(path, name, interval_s, limit, tuple(rules))


def _absent_as_none(value: Any) -> Any:
    """A value written as nothing (``labels:``), which the text-only loader reads as ""."""
    return None if value == "" else value


def _duration(value: Any, where: str) -> float:
    try:
        return parse_duration(str(value))
    except ValueError as exc:
        raise RuleFileError(f"{where}: {exc}") from None


def _strings(raw: Any, what: str, where: str) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise RuleFileError(f"{where}: {what}: expected a mapping of names to strings")
    out = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not LABEL_NAME.fullmatch(key):
            raise RuleFileError(f"{where}: invalid {what[:-1]} name: {key}")
        if key.startswith("__"):
            raise RuleFileError(f"{where}: {what[:-1]} name {key} is reserved (it starts with __)")
        if not isinstance(value, str):
            raise RuleFileError(f"{where}: {what}.{key}: expected a string")
        out[key] = value
    return out


def _rule(raw: Any, where: str, names: dict[str, int]) -> Rule:
    if not isinstance(raw, dict):
        raise RuleFileError(f"{where}: expected a mapping")
    raw = {k: _absent_as_none(v) for k, v in raw.items()}
    record, alert = raw.get("record"), raw.get("alert")
    if record is not None and alert is not None:
        raise RuleFileError(f"{where}: only one of 'record' and 'alert' must be set")
    if record is None and alert is None:
        raise RuleFileError(f"{where}: one of 'record' or 'alert' must be set")
    kind, name = ("record", record) if record is not None else ("alert", alert)
    where = f"{where} ({kind} {name})"
    unknown = sorted(set(raw) - _RULE_FIELDS)
    if unknown:
        raise RuleFileError(f'{where}: unknown field "{unknown[0]}"')
    if not isinstance(name, str) or not name:
        raise RuleFileError(f"{where}: the {kind} name must be a non-empty string")
    expr = raw.get("expr")
    if expr is None or (isinstance(expr, str) and not expr.strip()):
        raise RuleFileError(f"{where}: field 'expr' must be set in rule")
    expr = str(expr)
    try:
        parse(expr)
    except PromQLError as exc:
        raise RuleFileError(f"{where}: could not parse expression: {exc.message}") from None
    labels = _strings(raw.get("labels"), "labels", where)
    annotations = _strings(raw.get("annotations"), "annotations", where)
    if kind == "record":
        for field_name in ("annotations", "for", "keep_firing_for"):
            if raw.get(field_name) is not None:
                raise RuleFileError(f"{where}: invalid field '{field_name}' in recording rule")
        if not METRIC_NAME.fullmatch(name):
            raise RuleFileError(f"{where}: invalid recording rule name: {name}")
    for_s = _duration(raw["for"], f"{where}: for") if raw.get("for") is not None else 0.0
    keep_s = 0.0
    if raw.get("keep_firing_for") is not None:
        keep_s = _duration(raw["keep_firing_for"], f"{where}: keep_firing_for")
    try:
        label_templates = {
            k: Template(v, f"{where}: labels.{k}") for k, v in labels.items() if kind == "alert"
        }
        annotation_templates = {
            k: Template(v, f"{where}: annotations.{k}") for k, v in annotations.items()
        }
    except TemplateError as exc:
        raise RuleFileError(exc.message) from None
    if kind == "record":
        for k, v in labels.items():
            if "{{" in v:
                raise RuleFileError(
                    f"{where}: labels.{k}: recording rules' labels are not templates"
                )
    ordinal = names.get(name, 0)
    names[name] = ordinal + 1
    key = f"{kind}:{name}" + (f"#{ordinal}" if ordinal else "")
    return Rule(
        kind,
        name,
        expr,
        key,
        for_s,
        keep_s,
        labels,
        annotations,
        label_templates,
        annotation_templates,
    )

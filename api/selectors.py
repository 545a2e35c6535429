"""Series selectors: label matchers, how they read from the text a client sends, and their SQL.

One home for both APIs. The native endpoints take matchers as ``match=LABEL=VALUE`` parameters
(`parse_matchers`); PromQL and Prometheus' ``match[]`` take them as selectors in PromQL's grammar,
which api/promql/parser.py turns into the same `Matcher`. Either way a selector becomes SQL here,
one constant fragment per matcher with its key and value as bind parameters: nothing a client sends
is formatted into SQL, label names included. ``agent_id`` and ``__name__`` are labels like the
others (columns of ``series``, the rest is its ``labels`` jsonb).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection, errors

from fleetpulse.errors import BadInput

MAX_MATCHED_SERIES = 20_000
# Prometheus' label names (and ingest's).
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_MATCH = re.compile(r"^(" + LABEL_NAME.pattern + r")(=~|!~|!=|=)(.*)$", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Matcher:
    key: str
    op: str  # "=", "!=", "=~", "!~"
    value: str


@dataclass(frozen=True, slots=True)
class Series:
    series_id: int
    name: str
    agent_id: str
    labels: dict[str, str]

    def label(self, key: str) -> str:
        if key == "agent_id":
            return self.agent_id
        if key == "__name__":
            return self.name
        return self.labels.get(key, "")


def labels_of(series: Series) -> dict[str, str]:
    """The series' label set as Prometheus shows it: ``__name__`` and ``agent_id`` included; a
    series of no agent (the platform's own, a fleet-wide recording rule: the empty agent id) has
    no ``agent_id``, as Prometheus shows no empty label."""
    if not series.agent_id:
        return {"__name__": series.name, **series.labels}
    return {"__name__": series.name, "agent_id": series.agent_id, **series.labels}


def parse_matchers(raw: list[str]) -> list[Matcher]:
    """The native API's ``match`` parameters: ``LABEL=VALUE``, ``!=``, ``=~`` or ``!~``."""
    matchers = []
    for text in raw:
        found = _MATCH.match(text)
        if not found:
            raise BadInput(
                f"match: {text!r} is not LABEL=VALUE, LABEL!=VALUE, LABEL=~RE or LABEL!~RE"
            )
        matchers.append(Matcher(*found.groups()))
    return matchers


# -- as SQL ------------------------------------------------------------------------------------

# Where series are read from: the stored ones, or all that PromQL sees (the stored ones and the
# platform's own series of each agent, api/promql/fleetseries.py: schema 15's view).
STORED, ALL = "series", "fleet_series"
_OWN = "agent_own_series"
_SERIES_BASE = "SELECT series_id, name, agent_id, labels FROM {table} WHERE true"
_LHS_AGENT = "agent_id"
_LHS_NAME = "name"
_LHS_LABEL = "coalesce(labels->>%s, '')"
_OPS = {"=": " = %s", "!=": " <> %s", "=~": " ~ %s", "!~": " !~ %s"}


def _has_nul(matchers: list[Matcher]) -> bool:
    # PostgreSQL text holds no NUL: nothing stored can match (and psycopg refuses to send it)
    return any("\x00" in m.key or "\x00" in m.value for m in matchers)


def condition(matcher: Matcher) -> tuple[str, list[Any]]:
    """One matcher as a constant SQL fragment (`` AND ...``) and its parameters. A regular
    expression is anchored (matches the whole value), as in Prometheus."""
    value = f"^(?:{matcher.value})$" if matcher.op in ("=~", "!~") else matcher.value
    if matcher.key == "agent_id":
        return f" AND {_LHS_AGENT}{_OPS[matcher.op]}", [value]
    if matcher.key == "__name__":
        return f" AND {_LHS_NAME}{_OPS[matcher.op]}", [value]
    return f" AND {_LHS_LABEL}{_OPS[matcher.op]}", [matcher.key, value]


def any_of(sets: list[list[Matcher]] | None) -> tuple[str, list[Any]]:
    """SQL for "matches any of the selectors" (None: every series), each selector all of its
    matchers, and its parameters."""
    if sets is None:
        return "true", []
    clauses, params = [], []
    for matchers in sets:
        if _has_nul(matchers):
            continue
        clause = "true"
        for matcher in matchers:
            fragment, values = condition(matcher)
            clause += fragment
            params += values
        clauses.append(f"({clause})")
    return " OR ".join(clauses) or "false", params


async def select_series(
    conn: AsyncConnection[Any],
    matchers: list[Matcher],
    table: str = STORED,
    max_series: int = MAX_MATCHED_SERIES,
) -> list[Series]:
    """Series matching every matcher (one of them should name the metric): of the stored ones,
    or with ``table=ALL`` also the platform's own series of each agent (api/promql/fleetseries.py).
    At most ``max_series`` stored ones (MAX_MATCHED_SERIES for a person's query; the rule
    evaluator, whose rules cover the fleet by design, allows more); the platform's own are not limited (a few per agent,
    whose samples cost no read: ``sum(fleetpulse_agent_up)`` over 50,000 agents answers)."""
    if _has_nul(matchers):
        return []
    where, params = "", []
    for matcher in matchers:
        fragment, values = condition(matcher)
        where += fragment
        params.extend(values)
    stored = _SERIES_BASE.format(table=STORED) + where + f" LIMIT {int(max_series) + 1}"
    try:
        cur = await conn.execute(stored, params)
        rows = await cur.fetchall()
        if len(rows) > max_series:
            raise BadInput(f"more than {max_series} series match; add label matchers")
        if table == ALL:
            cur = await conn.execute(_SERIES_BASE.format(table=_OWN) + where, params)
            rows += await cur.fetchall()
    except errors.InvalidRegularExpression as exc:
        raise BadInput(f"invalid regular expression: {str(exc).splitlines()[0]}") from None
    return [Series(*row) for row in rows]

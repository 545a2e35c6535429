"""The differential test against a real Prometheus 2.42 (issue 16): its data set, its queries,
how each query is evaluated, and how two answers are compared.

fleetpulse's PromQL is right when it answers what Prometheus answers, so the reference is
Prometheus itself, not a reimplementation of its semantics in the tests: the same samples go into
a Prometheus TSDB (backfilled from OpenMetrics text with ``promtool``) and into fleetpulse, and
every query of ``QUERIES`` is asked of both, as instant queries at ``INSTANT_TIMES`` and as range
queries over ``RANGES``. The data set is built for the places where engines go wrong: counter
resets, a histogram, NaN, a series that starts and one that stops, an agent that goes silent for
twelve minutes, and one agent's series whose samples sit exactly on whole 15 s so that window
boundaries are hit exactly (everything else carries millisecond jitter, as real scrapes do).

The times are relative to the data's start (whole hours some hours ago, so that the same
queries hit the same situations every day); query texts may name ``$at`` (two hours after the
start) for the ``@`` modifier and stay stable as pytest ids and as keys of ``KNOWN_DIFFERENCES``.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

SEED = 16
SCRAPE_MS = 15_000
AGENTS = ("a1", "a2", "a3", "a4")
# Where each agent scrapes within its 15 s (± the jitter): never on a whole 15 s.
SCRAPE_OFFSET_MS = {"a1": 2_300, "a2": 6_100, "a3": 9_700, "a4": 12_400}
JITTER_MS = 900
HOUR = 3600

# What happens when, in seconds after the start.
A3_SILENT = (100 * 60, 112 * 60)  # a3 sends nothing for 12 minutes, then restarts
A2_REBOOT = 130 * 60  # a2's counters start again from zero
A4_JOINS = 90 * 60
A2_DATA_UNMOUNTED = 150 * 60  # filesystem_*{agent_id="a2", mountpoint="/data"} stop
# The aligned series' silence: its last sample before is exactly 5 minutes before the first
# instant time (start + 2 h), its next sample 10 minutes after the last.
ALIGNED_SILENT = (115 * 60, 125 * 60)

HISTOGRAM_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, math.inf)


@dataclass(frozen=True)
class Series:
    family: str  # the OpenMetrics metric family (its ``# TYPE`` line)
    kind: str  # gauge, counter or histogram
    name: str
    labels: dict[str, str]  # agent_id and the series' own labels, without the name
    ts_ms: np.ndarray
    values: np.ndarray

    @property
    def agent_id(self) -> str:
        return self.labels["agent_id"]


@dataclass(frozen=True)
class DataSet:
    start: int  # Unix seconds, a whole hour
    end: int
    series: list[Series]


def data_set(now: float | None = None) -> DataSet:
    """Four hours of samples ending two whole hours before the last whole hour."""
    now = time.time() if now is None else now
    end = (math.floor(now / HOUR) - 2) * HOUR
    start = end - 4 * HOUR
    rng = np.random.default_rng(SEED)
    series: list[Series] = []
    for agent in AGENTS:
        series += _agent_series(rng, agent, start, end)
    series += _aligned_series(rng, start, end)
    return DataSet(start, end, series)


def _agent_times(rng: np.random.Generator, agent: str, start: int, end: int) -> np.ndarray:
    n = (end - start) * 1000 // SCRAPE_MS
    ts = start * 1000 + SCRAPE_MS * np.arange(n) + SCRAPE_OFFSET_MS[agent]
    ts = ts + rng.integers(-JITTER_MS, JITTER_MS + 1, n)
    rel = (ts - start * 1000) / 1000
    if agent == "a3":
        ts = ts[(rel < A3_SILENT[0]) | (rel >= A3_SILENT[1])]
    if agent == "a4":
        ts = ts[rel >= A4_JOINS]
    return ts


def _restarts(agent: str, start: int) -> list[float]:
    """When an agent's counters start again from zero (Unix seconds)."""
    return {"a2": [start + A2_REBOOT], "a3": [start + A3_SILENT[1]]}.get(agent, [])


def _counter(
    increments: np.ndarray, ts_ms: np.ndarray, restarts: list[float], initial: float
) -> np.ndarray:
    """Cumulative values that start again from zero at each restart."""
    values = np.cumsum(increments, dtype=float) + initial
    for restart in restarts:
        after = ts_ms >= restart * 1000
        if after.any():
            first = int(np.argmax(after))
            values[first:] -= values[first] - increments[first]
    return values


def _agent_series(rng: np.random.Generator, agent: str, start: int, end: int) -> list[Series]:
    ts = _agent_times(rng, agent, start, end)
    n = len(ts)
    restarts = _restarts(agent, start)
    out: list[Series] = []

    def add(family: str, kind: str, name: str, labels: dict[str, str], values: Any) -> None:
        out.append(Series(family, kind, name, {"agent_id": agent, **labels}, ts, values))

    version = "1.3.0" if agent == "a4" else "1.2.3"
    add("agent_info", "gauge", "agent_info", {"os": "linux", "version": version}, np.ones(n))
    # Gauges swing around a level (never reaching a bound, so no two series tie at the top of a
    # topk or the bottom of a bottomk, where Prometheus' choice would be arbitrary).
    hours = (ts - ts[0]) / 3_600_000

    def swing(level: float, amplitude: float, noise: float, decimals: int) -> np.ndarray:
        phase = rng.uniform(0, 2 * math.pi)
        wave = level + amplitude * np.sin(2 * math.pi * hours + phase)
        return np.round(wave + rng.normal(0, noise, n), decimals)

    for mode, level in (("user", 30.0), ("system", 15.0), ("idle", 50.0)):
        add(
            "cpu_usage_percent",
            "gauge",
            "cpu_usage_percent",
            {"mode": mode},
            swing(level, 5.0, 1.5, 3),
        )
    total = 8e9 if agent == "a4" else 16e9
    used = np.clip(6e9 + np.cumsum(rng.normal(0, 5e7, n)), 1e9, total)
    add("memory_used_bytes", "gauge", "memory_used_bytes", {}, np.round(used))
    add("memory_total_bytes", "gauge", "memory_total_bytes", {}, np.full(n, total))
    for mountpoint, size in (("/", 100e9), ("/data", 500e9)):
        keep = np.ones(n, dtype=bool)
        if agent == "a2" and mountpoint == "/data":
            keep = ts < (start + A2_DATA_UNMOUNTED) * 1000
        elapsed = (ts - ts[0]) / 1000
        avail = size * 0.6 - elapsed * rng.uniform(1e4, 1e5) + rng.normal(0, 1e6, n)
        for family, values in (
            ("filesystem_avail_bytes", np.round(avail)),
            ("filesystem_size_bytes", np.full(n, size)),
        ):
            out.append(
                Series(
                    family,
                    "gauge",
                    family,
                    {"agent_id": agent, "mountpoint": mountpoint},
                    ts[keep],
                    values[keep],
                )
            )
    temperature = swing(40.0 + 5 * AGENTS.index(agent), 1.0, 0.3, 2)
    if agent == "a1":
        temperature[rng.choice(n, 6, replace=False)] = math.nan
    add("temperature_celsius", "gauge", "temperature_celsius", {"sensor": "cpu"}, temperature)
    for direction, scale in (("rx", 1e6), ("tx", 2e5)):
        increments = np.round(rng.uniform(0.1, 1.0, n) * scale)
        add(
            "net_bytes",
            "counter",
            "net_bytes_total",
            {"interface": "eth0", "direction": direction},
            _counter(increments, ts, restarts, float(rng.integers(1e9, 5e9))),
        )
    if agent in ("a1", "a2"):
        for method in ("GET", "POST"):
            for code, rate in (("200", 30.0), ("500", 0.3)):
                increments = rng.poisson(rate, n).astype(float)
                add(
                    "http_requests",
                    "counter",
                    "http_requests_total",
                    {"code": code, "method": method},
                    _counter(increments, ts, restarts, float(rng.integers(0, 1e5))),
                )
        out += _histogram(rng, agent, ts, restarts)
    return out


def _histogram(
    rng: np.random.Generator, agent: str, ts: np.ndarray, restarts: list[float]
) -> list[Series]:
    """A classic histogram: cumulative buckets, ``_sum`` and ``_count`` consistent per scrape."""
    family = "http_request_duration_seconds"
    labels = {"agent_id": agent, "method": "GET"}
    requests = rng.poisson(25, len(ts))
    durations = [np.round(rng.lognormal(-2.0, 1.0, k), 3) for k in requests]
    out = []
    for le in HISTOGRAM_BUCKETS:
        increments = np.array([float((d <= le).sum()) for d in durations])
        out.append(
            Series(
                family,
                "histogram",
                f"{family}_bucket",
                {**labels, "le": "+Inf" if le == math.inf else repr(le)},
                ts,
                _counter(increments, ts, restarts, 0.0),
            )
        )
    sums = np.round(np.array([d.sum() for d in durations]), 3)
    out.append(
        Series(
            family,
            "histogram",
            f"{family}_sum",
            labels,
            ts,
            np.round(_counter(sums, ts, restarts, 0.0), 3),
        )
    )
    out.append(
        Series(
            family,
            "histogram",
            f"{family}_count",
            labels,
            ts,
            _counter(requests.astype(float), ts, restarts, 0.0),
        )
    )
    return out


def _aligned_series(rng: np.random.Generator, start: int, end: int) -> list[Series]:
    """Agent a1's ``aligned_*`` series: a sample at every whole 15 s (the first at the start), and
    none strictly inside ``ALIGNED_SILENT``."""
    rel = np.arange(0, end - start, 15)
    rel = rel[(rel <= ALIGNED_SILENT[0]) | (rel >= ALIGNED_SILENT[1])]
    ts = (start + rel) * 1000
    labels = {"agent_id": "a1"}
    events = rng.integers(0, 10, len(ts)).astype(float)
    return [
        Series(
            "aligned_gauge",
            "gauge",
            "aligned_gauge",
            labels,
            ts,
            rng.integers(0, 100, len(ts)).astype(float),
        ),
        Series(
            "aligned_events",
            "counter",
            "aligned_events_total",
            labels,
            ts,
            _counter(events, ts, [], 100.0),
        ),
    ]


def format_value(value: float) -> str:
    """A sample value as Prometheus spells it (in OpenMetrics text and in its JSON answers)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def openmetrics(data: DataSet) -> Iterator[str]:
    """The data set as OpenMetrics text, one metric family after another, for ``promtool tsdb
    create-blocks-from openmetrics``."""
    families: dict[str, list[Series]] = {}
    for s in data.series:
        families.setdefault(s.family, []).append(s)
    for family, members in families.items():
        yield f"# TYPE {family} {members[0].kind}\n"
        for s in members:
            labels = ",".join(f'{k}="{v}"' for k, v in s.labels.items())
            for t, v in zip(s.ts_ms.tolist(), s.values.tolist(), strict=True):
                yield f"{s.name}{{{labels}}} {format_value(v)} {t // 1000}.{t % 1000:03d}\n"
    yield "# EOF\n"


# --- how each query is evaluated -----------------------------------------------------------------

# Instant queries, seconds after the start: at 2 h a1's aligned series has its last sample exactly
# 5 minutes before (the lookback's edge); at 3 h it has samples exactly on t and t - 1m, t - 5m...;
# at 1:45:17.250 a3 is silent (for more than 5 minutes) and a4 joined 15 minutes before.
INSTANT_TIMES = (2 * HOUR, 3 * HOUR, HOUR + 45 * 60 + 17.25)
# Range queries (start, end, step), seconds after the start: 15 s across the aligned series'
# silence and a3's return; a minute step over three hours; 5 minutes from the very start of the
# data (windows reaching before the first sample); 47 s, which divides neither the range nor a
# minute, from an odd start.
RANGES = (
    (110 * 60, 130 * 60, 15),
    (30 * 60, 3 * HOUR + 30 * 60, 60),
    (0, 4 * HOUR, 300),
    (HOUR + 7, 2 * HOUR + 7, 47),
)
AT = 2 * HOUR  # $at in query texts


@dataclass(frozen=True)
class Form:
    """One evaluation of a query: the endpoint, its parameters, and a name for reports."""

    name: str
    path: str
    params: dict[str, str]

    @property
    def instant(self) -> bool:
        return self.path == "/api/v1/query"


def _relative(seconds: float) -> str:
    whole = int(seconds)
    fraction = f"{seconds - whole:.3f}"[1:] if seconds != whole else ""
    return f"+{whole // 3600}h{whole % 3600 // 60:02d}m{whole % 60:02d}{fraction}s"


def forms(data: DataSet) -> list[Form]:
    out = [
        Form(f"instant at start{_relative(t)}", "/api/v1/query", {"time": _number(data.start + t)})
        for t in INSTANT_TIMES
    ]
    for first, last, step in RANGES:
        out.append(
            Form(
                f"range start{_relative(first)}..start{_relative(last)} step {step}s",
                "/api/v1/query_range",
                {
                    "start": _number(data.start + first),
                    "end": _number(data.start + last),
                    "step": str(step),
                },
            )
        )
    return out


def _number(seconds: float) -> str:
    return str(int(seconds)) if seconds == int(seconds) else f"{seconds:.3f}"


def render(query: str, data: DataSet) -> str:
    """The query text with ``$at`` replaced by its Unix time."""
    return query.replace("$at", str(data.start + AT))


def is_ordered(query: str) -> bool:
    """Whether Prometheus promises the order of an instant answer (only sort and sort_desc)."""
    return query.startswith(("sort(", "sort_desc("))


# --- comparing two answers -----------------------------------------------------------------------

REL_TOL = 1e-6


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any  # the decoded JSON, or the text when it was not JSON


class Malformed(Exception):
    """fleetpulse's answer is not shaped as Prometheus' answers are."""


LabelSet = tuple[tuple[str, str], ...]


def _label_set(metric: Any) -> LabelSet:
    if not isinstance(metric, dict) or not all(isinstance(v, str) for v in metric.values()):
        raise Malformed(f"labels {metric!r}")
    return tuple(sorted(metric.items()))


def _show(labels: LabelSet) -> str:
    name = dict(labels).get("__name__", "")
    return name + "{" + ", ".join(f'{k}="{v}"' for k, v in labels if k != "__name__") + "}"


def _few(items: list[str], limit: int = 3) -> str:
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _same_value(want: str, got: Any) -> bool:
    """Equal within ``REL_TOL``; NaN and ±Inf must be spelled as Prometheus spells them."""
    if not isinstance(got, str):
        raise Malformed(f"value {got!r} is not a string")
    x, y = float(want), float(got)
    if not (math.isfinite(x) and math.isfinite(y)):
        return want == got
    return math.isclose(x, y, rel_tol=REL_TOL)


def _stamp(t: Any) -> int:
    """A timestamp in milliseconds, Prometheus' resolution."""
    if isinstance(t, bool) or not isinstance(t, int | float):
        raise Malformed(f"timestamp {t!r} is not a number")
    return round(t * 1000)


def _show_stamp(stamp: int) -> str:
    return f"{stamp / 1000:.3f}".rstrip("0").rstrip(".")


def _points(pairs: list[Any]) -> dict[int, Any]:
    stamps = [_stamp(t) for t, _ in pairs]
    if any(a >= b for a, b in itertools.pairwise(stamps)):
        raise Malformed("timestamps not increasing")
    return {t: v for t, (_, v) in zip(stamps, pairs, strict=True)}


def _compare_points(labels: str, want: dict[int, str], got: dict[int, Any]) -> str | None:
    missing = sorted(want.keys() - got.keys())
    extra = sorted(got.keys() - want.keys())
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing at {_few([_show_stamp(t) for t in missing])}")
        if extra:
            parts.append(f"extra at {_few([_show_stamp(t) for t in extra])}")
        return f"{labels}: {'; '.join(parts)} ({len(want)} points expected, {len(got)} got)"
    for t in sorted(want):
        if not _same_value(want[t], got[t]):
            return f"{labels} at {_show_stamp(t)}: Prometheus {want[t]!r}, fleetpulse {got[t]!r}"
    return None


def _by_labels(result: Any, key: str) -> tuple[dict[LabelSet, Any], list[LabelSet]]:
    """Results keyed by their label set, and the label sets that occur more than once."""
    out: dict[LabelSet, Any] = {}
    duplicates = []
    for item in result:
        labels = _label_set(item["metric"])
        if labels in out:
            duplicates.append(labels)
        out[labels] = item[key]
    return out, duplicates


def _outcome(answer: Answer) -> str:
    """An answer in a few words: its error, or the kind and size of its result."""
    body = answer.body
    if body["status"] == "error":
        return f"HTTP {answer.status} {body.get('errorType')} {str(body.get('error'))[:150]!r}"
    data = body["data"]
    size = f", {len(data['result'])} series" if data["resultType"] in ("vector", "matrix") else ""
    return f"HTTP {answer.status} {data['resultType']}{size}"


def report(differences: list[tuple[str, str]]) -> str:
    """(form, difference) pairs in a few lines: forms that differ alike share a line."""
    forms_of: dict[str, list[str]] = {}
    for form, difference in differences:
        forms_of.setdefault(difference, []).append(form)
    return "\n".join(f"{_few(names, 2)}: {difference}" for difference, names in forms_of.items())


def compare(want: Answer, got: Answer, ordered: bool = False) -> str | None:
    """None when fleetpulse's answer is Prometheus', else what differs first, in a line or two.

    Errors must agree in HTTP status and ``errorType`` (not in message text); results in
    ``resultType``, label sets, timestamps and values (relative tolerance ``REL_TOL``, NaN and
    ±Inf as Prometheus spells them). Order counts only when ``ordered``.
    """
    if not isinstance(got.body, dict):
        return f"fleetpulse answered HTTP {got.status}, not in JSON: {str(got.body)[:200]}"
    try:
        return _compare(want, got, ordered)
    except (Malformed, AttributeError, KeyError, TypeError, ValueError) as exc:
        return (
            f"fleetpulse's answer (HTTP {got.status}) is malformed ({exc!r}): {str(got.body)[:200]}"
        )


def _compare(want: Answer, got: Answer, ordered: bool) -> str | None:
    if want.body["status"] == "error" or got.body["status"] == "error":
        mine = (want.status, want.body.get("errorType"))
        theirs = (got.status, got.body.get("errorType"))
        if mine == theirs:
            return None
        return f"Prometheus: {_outcome(want)}; fleetpulse: {_outcome(got)}"
    if got.status != 200 or got.body["status"] != "success":
        raise Malformed("neither success nor error")
    w, g = want.body["data"], got.body["data"]
    if w["resultType"] != g["resultType"]:
        return f"resultType: Prometheus {w['resultType']}, fleetpulse {g['resultType']}"
    kind = w["resultType"]
    if kind in ("scalar", "string"):
        (wt, wv), (gt, gv) = w["result"], g["result"]
        if _stamp(wt) != _stamp(gt):
            return f"{kind} time: Prometheus {wt}, fleetpulse {gt}"
        same = wv == gv if kind == "string" else _same_value(wv, gv)
        return None if same else f"{kind}: Prometheus {wv!r}, fleetpulse {gv!r}"
    key = "value" if kind == "vector" else "values"
    want_series, _ = _by_labels(w["result"], key)
    got_series, duplicates = _by_labels(g["result"], key)
    if duplicates:
        return f"fleetpulse answered a label set more than once: {_few([_show(d) for d in duplicates])}"
    missing = sorted(want_series.keys() - got_series.keys())
    extra = sorted(got_series.keys() - want_series.keys())
    if missing or extra:
        parts = [f"{len(want_series)} series expected, {len(got_series)} got"]
        if missing:
            parts.append(f"missing {_few([_show(m) for m in missing])}")
        if extra:
            parts.append(f"extra {_few([_show(e) for e in extra])}")
        return "label sets differ: " + "; ".join(parts)
    if ordered:
        want_order = [_label_set(item["metric"]) for item in w["result"]]
        got_order = [_label_set(item["metric"]) for item in g["result"]]
        for i, (a, b) in enumerate(zip(want_order, got_order, strict=True)):
            if a != b:
                return f"order differs at {i}: Prometheus {_show(a)}, fleetpulse {_show(b)}"
    for labels in sorted(want_series):
        if kind == "vector":
            want_points, got_points = _points([want_series[labels]]), _points([got_series[labels]])
        else:
            want_points, got_points = _points(want_series[labels]), _points(got_series[labels])
        difference = _compare_points(_show(labels), want_points, got_points)
        if difference:
            return difference
    return None


# --- the queries ---------------------------------------------------------------------------------

# Selectors and modifiers: these and RANGE_FUNCTIONS read storage in every way; they also run
# on the compressed layout.
SELECTORS = [
    # Selectors: matchers of every kind, no metric name, __name__, NaN, the aligned series.
    "cpu_usage_percent",
    'cpu_usage_percent{mode="user"}',
    'cpu_usage_percent{mode!="idle"}',
    'cpu_usage_percent{mode=~"user|sys.*"}',
    'cpu_usage_percent{mode!~"i.*"}',
    'cpu_usage_percent{agent_id=~"a[12]", mode="user"}',
    'cpu_usage_percent{mode=~"USER"}',
    'filesystem_avail_bytes{nolabel=""}',
    'filesystem_avail_bytes{mountpoint=""}',
    'filesystem_avail_bytes{mountpoint=~"/data|"}',
    '{agent_id="a1"}',
    '{agent_id="a2", mountpoint="/data"}',
    '{__name__="memory_used_bytes"}',
    '{__name__=~"filesystem_.*", mountpoint="/"}',
    '{__name__=~"memory_.*_bytes", agent_id!="a1"}',
    "nonexistent_metric",
    "memory_used_bytes",
    "temperature_celsius",
    "aligned_gauge",
    "http_requests_total",
    "http_request_duration_seconds_bucket",
    # Range selectors (an instant query answers the raw samples; a range query refuses them).
    'memory_used_bytes{agent_id="a1"}[1m]',
    "aligned_gauge[1m]",
    "aligned_gauge[5m] offset 1m",
    # offset and @
    "memory_used_bytes offset 5m",
    "memory_used_bytes offset -5m",
    "memory_used_bytes offset 1h30m",
    "aligned_gauge offset 1m",
    "memory_used_bytes @ $at",
    "memory_used_bytes @ start()",
    "memory_used_bytes @ end()",
    "memory_used_bytes offset 10m @ $at",
    "rate(net_bytes_total[5m] @ end())",
    "rate(net_bytes_total[5m] offset 30m)",
    "sum_over_time(aligned_gauge[6m] @ $at)",
]

# Functions of range vectors.
RANGE_FUNCTIONS = [
    # Counters: rate and friends, across resets, silences, starts and stops.
    "rate(net_bytes_total[5m])",
    "rate(net_bytes_total[1m])",
    "rate(net_bytes_total[90s])",
    "rate(http_requests_total[5m])",
    'rate(http_requests_total{code="500"}[10m])',
    "irate(net_bytes_total[5m])",
    "irate(http_requests_total[1m])",
    "increase(http_requests_total[10m])",
    "increase(net_bytes_total[1h])",
    "increase(net_bytes_total[1h30m])",
    "rate(aligned_events_total[1m])",
    "increase(aligned_events_total[2m])",
    "irate(aligned_events_total[1m])",
    "resets(net_bytes_total[1h])",
    "resets(http_requests_total[30m])",
    "changes(memory_used_bytes[10m])",
    "changes(http_requests_total[5m])",
    "changes(agent_info[1h])",
    "delta(memory_used_bytes[10m])",
    "delta(temperature_celsius[5m])",
    "delta(aligned_gauge[1m])",
    "idelta(memory_used_bytes[5m])",
    "idelta(aligned_gauge[1m])",
    "deriv(filesystem_avail_bytes[30m])",
    "deriv(memory_total_bytes[10m])",
    "deriv(aligned_gauge[2m])",
    "predict_linear(filesystem_avail_bytes[30m], 3600)",
    'predict_linear(filesystem_avail_bytes{mountpoint="/"}[1h], 86400)',
    "holt_winters(memory_used_bytes[10m], 0.5, 0.5)",
    "holt_winters(temperature_celsius[5m], 0.1, 0.9)",
    "rate(memory_used_bytes[5m])",
    # *_over_time
    "avg_over_time(cpu_usage_percent[5m])",
    "min_over_time(cpu_usage_percent[5m])",
    "max_over_time(cpu_usage_percent[5m])",
    "sum_over_time(cpu_usage_percent[2m])",
    "count_over_time(cpu_usage_percent[5m])",
    "last_over_time(cpu_usage_percent[5m])",
    "present_over_time(cpu_usage_percent[5m])",
    "stddev_over_time(cpu_usage_percent[10m])",
    "stdvar_over_time(cpu_usage_percent[10m])",
    "stddev_over_time(memory_total_bytes[10m])",
    "quantile_over_time(0.9, cpu_usage_percent[10m])",
    "quantile_over_time(0.5, temperature_celsius[10m])",
    "quantile_over_time(0, memory_used_bytes[5m])",
    "quantile_over_time(1.5, memory_used_bytes[5m])",
    "quantile_over_time(-1, memory_used_bytes[5m])",
    "max_over_time(temperature_celsius[5m])",
    "min_over_time(temperature_celsius[5m])",
    "avg_over_time(temperature_celsius[5m])",
    "sum_over_time(temperature_celsius[5m])",
    "count_over_time(aligned_gauge[1m])",
    "sum_over_time(aligned_gauge[1m])",
    "last_over_time(aligned_gauge[5m])",
    "count_over_time(aligned_gauge[15s])",
    "absent_over_time(nonexistent_metric[5m])",
    'absent_over_time(memory_used_bytes{agent_id="a4"}[5m])',
    'absent_over_time(memory_used_bytes{agent_id="a3", job=~"x"}[5m])',
    "count_over_time(memory_used_bytes[1h])",
    "avg_over_time(net_bytes_total[30s])",
    # windows that line up with the tiers' buckets (whole hours or minutes at aligned steps):
    # read from the tiers plus the raw point on each window's closed end (api/promql/buckets.py)
    "avg_over_time(cpu_usage_percent[1h])",
    "sum_over_time(aligned_gauge[1h])",
    "count_over_time(aligned_gauge[10m])",
    "max_over_time(temperature_celsius[1h])",
    "min_over_time(temperature_celsius[30m])",
    "avg_over_time(aligned_gauge[10m] offset 1h)",
    "max_over_time(memory_used_bytes[2h])",
    "sum_over_time(net_bytes_total[10m])",
    "count_over_time(http_requests_total[1h] @ $at)",
]

FUNCTIONS = [
    # Arithmetic and rounding functions
    "abs(cpu_usage_percent - 50)",
    "ceil(cpu_usage_percent)",
    "floor(cpu_usage_percent)",
    "round(cpu_usage_percent)",
    "round(cpu_usage_percent, 5)",
    "round(cpu_usage_percent, 0.3)",
    "round(-cpu_usage_percent)",
    "exp(cpu_usage_percent / 10)",
    "exp(memory_used_bytes)",
    "ln(cpu_usage_percent - 30)",
    "log2(memory_used_bytes)",
    "log10(memory_used_bytes)",
    "sqrt(cpu_usage_percent - 20)",
    "sgn(cpu_usage_percent - 30)",
    "clamp(cpu_usage_percent, 20, 40)",
    "clamp(cpu_usage_percent, 40, 20)",
    "clamp_max(cpu_usage_percent, 30)",
    "clamp_min(cpu_usage_percent, 30)",
    "clamp_min(temperature_celsius, 55)",
    "abs(temperature_celsius)",
    # Trigonometry
    "sin(cpu_usage_percent)",
    "cos(cpu_usage_percent)",
    "tan(cpu_usage_percent)",
    "asin(cpu_usage_percent / 100)",
    "acos(cpu_usage_percent / 100)",
    "atan(cpu_usage_percent)",
    "asin(cpu_usage_percent / 50)",
    "sinh(cpu_usage_percent / 10)",
    "cosh(cpu_usage_percent / 10)",
    "tanh(cpu_usage_percent / 10)",
    "asinh(cpu_usage_percent)",
    "acosh(cpu_usage_percent)",
    "atanh(cpu_usage_percent / 100)",
    "deg(cpu_usage_percent)",
    "rad(cpu_usage_percent)",
    "pi()",
    "cpu_usage_percent * pi() / 180",
    # Time and date
    "time()",
    "time() - 3600",
    "timestamp(memory_used_bytes)",
    "timestamp(aligned_gauge)",
    "timestamp(memory_used_bytes offset 5m)",
    "timestamp(sum(memory_used_bytes))",
    "time() - timestamp(memory_used_bytes)",
    "day_of_month()",
    "day_of_week()",
    "day_of_year()",
    "days_in_month()",
    "hour()",
    "minute()",
    "month()",
    "year()",
    "hour(timestamp(memory_used_bytes))",
    "minute(timestamp(aligned_gauge))",
    "day_of_week(vector(1700000000))",
    "days_in_month(vector(1709251200))",
    "day_of_year(vector(1735603200))",
    "month(vector(0))",
    "year(vector(-1))",
    # vector, scalar, sort, absent
    "vector(1)",
    "vector(time())",
    'vector(scalar(memory_used_bytes{agent_id="a1"}))',
    'scalar(memory_used_bytes{agent_id="a1"})',
    "scalar(memory_used_bytes)",
    "scalar(sum(memory_used_bytes))",
    "scalar(nonexistent_metric)",
    "sort(memory_used_bytes)",
    "sort_desc(memory_used_bytes)",
    "sort(rate(net_bytes_total[5m]))",
    "sort_desc(sum by (agent_id) (cpu_usage_percent))",
    "absent(nonexistent_metric)",
    'absent(nonexistent_metric{agent_id="a1", job=~"x", mode!="y"})',
    "absent(memory_used_bytes)",
    'absent(memory_used_bytes{agent_id="a4"})',
    "absent(sum(nonexistent_metric))",
    # Labels
    'label_replace(cpu_usage_percent, "host", "host-$1", "agent_id", "a(.*)")',
    'label_replace(cpu_usage_percent, "host", "$1", "agent_id", "nomatch(.*)")',
    'label_replace(cpu_usage_percent, "mode", "", "mode", "idle")',
    'label_replace(memory_used_bytes, "__name__", "mem", "", "")',
    'label_replace(memory_used_bytes, "agent_id", "$2-$1", "agent_id", "(.)(.)")',
    'label_replace(cpu_usage_percent, "mode", "x", "", "")',
    'label_join(cpu_usage_percent, "id", "-", "agent_id", "mode")',
    'label_join(cpu_usage_percent, "id", "", "mode")',
    'label_join(memory_used_bytes, "agent_id", ",")',
    'label_join(filesystem_avail_bytes, "where", ":", "agent_id", "nolabel", "mountpoint")',
    # Histograms
    "histogram_quantile(0.9, rate(http_request_duration_seconds_bucket[5m]))",
    "histogram_quantile(0.5, sum by (le) (rate(http_request_duration_seconds_bucket[5m])))",
    "histogram_quantile(0.99, sum by (le, agent_id) (rate(http_request_duration_seconds_bucket[10m])))",
    "histogram_quantile(0, rate(http_request_duration_seconds_bucket[5m]))",
    "histogram_quantile(1, rate(http_request_duration_seconds_bucket[5m]))",
    "histogram_quantile(1.5, rate(http_request_duration_seconds_bucket[5m]))",
    "histogram_quantile(-0.5, rate(http_request_duration_seconds_bucket[5m]))",
    "histogram_quantile(0.5, http_request_duration_seconds_bucket)",
    'histogram_quantile(0.9, rate(http_request_duration_seconds_bucket{le!="+Inf"}[5m]))',
    'histogram_quantile(0.9, rate(http_request_duration_seconds_bucket{le=~"0.1|0.5|[+]Inf"}[5m]))',
    "rate(http_request_duration_seconds_sum[5m]) / rate(http_request_duration_seconds_count[5m])",
]

AGGREGATIONS = [
    "sum(cpu_usage_percent)",
    "sum by (agent_id) (cpu_usage_percent)",
    "sum(cpu_usage_percent) by (mode)",
    "sum without (mode) (cpu_usage_percent)",
    "sum by () (cpu_usage_percent)",
    "sum without () (cpu_usage_percent)",
    "sum by (nolabel) (cpu_usage_percent)",
    'sum by (__name__) ({__name__=~"memory_.*"})',
    "avg by (mode) (cpu_usage_percent)",
    "avg without (agent_id) (cpu_usage_percent)",
    "avg(temperature_celsius)",
    "count(cpu_usage_percent)",
    "count by (mode) (cpu_usage_percent)",
    "count without (agent_id, mode) (cpu_usage_percent)",
    "min(cpu_usage_percent)",
    "max by (agent_id) (cpu_usage_percent)",
    "max(temperature_celsius)",
    "min without (sensor) (temperature_celsius)",
    "group(cpu_usage_percent)",
    "group by (agent_id) (cpu_usage_percent)",
    "group without (mode) (cpu_usage_percent)",
    "stddev(cpu_usage_percent)",
    "stddev by (agent_id) (cpu_usage_percent)",
    "stdvar(cpu_usage_percent)",
    "stdvar without (mode) (cpu_usage_percent)",
    "topk(2, cpu_usage_percent)",
    "topk by (agent_id) (1, cpu_usage_percent)",
    "topk without (mode) (1, cpu_usage_percent)",
    "topk(1, temperature_celsius)",
    "topk(0, cpu_usage_percent)",
    "topk(100, memory_used_bytes)",
    "topk(2, sum by (agent_id) (rate(net_bytes_total[5m])))",
    "bottomk(2, cpu_usage_percent)",
    "bottomk by (mode) (1, cpu_usage_percent)",
    "bottomk without (agent_id) (2, cpu_usage_percent)",
    "topk(scalar(count(agent_info)) - 2, memory_used_bytes)",
    'count_values("bucket", round(cpu_usage_percent / 25))',
    'count_values by (agent_id) ("bucket", round(cpu_usage_percent / 25))',
    'count_values without (mode) ("bucket", round(cpu_usage_percent / 25))',
    'count_values("total", memory_total_bytes)',
    'count_values("value", cpu_usage_percent{agent_id="a1"})',
    'count_values("mode", cpu_usage_percent > 1000)',
    "quantile(0.5, cpu_usage_percent)",
    "quantile by (mode) (0.9, cpu_usage_percent)",
    "quantile without (agent_id) (0.25, cpu_usage_percent)",
    "quantile(0, memory_used_bytes)",
    "quantile(0.25, temperature_celsius)",  # NaN samples: Go sorts them first
    'count_values("celsius", temperature_celsius)',  # NaN as a label value
    "quantile(2, memory_used_bytes)",
    "quantile(-1, memory_used_bytes)",
    "sum(nonexistent_metric)",
    "count(nonexistent_metric)",
    "sum by (agent_id) (rate(http_requests_total[5m]))",
    "sum by (code) (increase(http_requests_total[10m]))",
    "max by (mountpoint) (1 - filesystem_avail_bytes / filesystem_size_bytes)",
    "avg(avg_over_time(cpu_usage_percent[10m])) by (agent_id)",
]

OPERATORS = [
    # Scalar arithmetic, literals and precedence
    "1 + 2",
    "7 % 3",
    "-7 % 3",
    "5.5 % -2",
    "2 ^ 10",
    "2 ^ 3 ^ 2",
    "-2 ^ 2",
    "(1 + 2) * 3 - 4 / 8",
    "1 / 0",
    "-1 / 0",
    "0 / 0",
    "0x3d",
    "0x3d + 1e3 - 1.5e-3",
    "Inf - Inf",
    "-Inf",
    "NaN",
    "+5",
    "2 == bool 2",
    "1 > bool 2",
    "3 >= bool 3",
    "1 != bool NaN",
    '"fleetpulse"',
    # Vector and scalar
    "memory_used_bytes / 1024 / 1024",
    "2 * memory_used_bytes",
    "100 - cpu_usage_percent",
    "-cpu_usage_percent",
    "cpu_usage_percent % 7",
    "cpu_usage_percent ^ 2",
    "2 ^ (cpu_usage_percent / 10)",
    "1e9 / memory_used_bytes",
    "memory_used_bytes / 0",
    "cpu_usage_percent > 50",
    "cpu_usage_percent > bool 50",
    "50 < cpu_usage_percent",
    "50 >= bool cpu_usage_percent",
    "cpu_usage_percent == 0",
    "cpu_usage_percent != bool 0",
    "cpu_usage_percent <= 0x3d",
    "temperature_celsius > 0",
    "temperature_celsius == bool temperature_celsius",
    "rate(net_bytes_total[5m]) * 8",
    "cpu_usage_percent > 20 < 60",
    "cpu_usage_percent > scalar(avg(cpu_usage_percent))",
    "(cpu_usage_percent > 50) + 1",
    # Vector and vector, one-to-one and grouping
    "filesystem_avail_bytes / filesystem_size_bytes",
    "memory_used_bytes / memory_total_bytes * 100",
    "filesystem_avail_bytes < bool filesystem_size_bytes * 0.59",
    "filesystem_avail_bytes > filesystem_size_bytes * 0.59",
    "cpu_usage_percent == cpu_usage_percent",
    "cpu_usage_percent - cpu_usage_percent offset 5m",
    'cpu_usage_percent{mode="user"} + ignoring(mode) cpu_usage_percent{mode="system"}',
    'cpu_usage_percent{mode="user"} + on(agent_id) cpu_usage_percent{mode="system"}',
    'cpu_usage_percent{mode="user"} > on(agent_id) cpu_usage_percent{mode="system"}',
    'cpu_usage_percent{mode="user"} > bool ignoring(mode) cpu_usage_percent{mode="system"}',
    "cpu_usage_percent / on(agent_id) group_left sum by (agent_id) (cpu_usage_percent)",
    "sum by (agent_id) (cpu_usage_percent) / on(agent_id) group_right cpu_usage_percent",
    "memory_used_bytes * on(agent_id) group_left(os, version) agent_info",
    "agent_info * on(agent_id) group_right(os) memory_used_bytes",
    "cpu_usage_percent * ignoring(mode) group_left memory_used_bytes / 1e8",
    "filesystem_avail_bytes / ignoring(mountpoint) group_left memory_total_bytes",
    "memory_used_bytes + cpu_usage_percent",
    "memory_used_bytes - on() group_left sum(memory_used_bytes)",
    'rate(http_request_duration_seconds_count[5m]) - on(agent_id) sum by (agent_id) (rate(http_requests_total{method="GET"}[5m]))',
    # and, or, unless
    "cpu_usage_percent and cpu_usage_percent > 50",
    "cpu_usage_percent and on(agent_id) memory_used_bytes > 6e9",
    "cpu_usage_percent and ignoring(mode) memory_used_bytes",
    "cpu_usage_percent or memory_used_bytes",
    'memory_used_bytes{agent_id="a1"} or memory_used_bytes',
    "sum by (agent_id) (memory_used_bytes) or on(agent_id) vector(0)",
    "memory_used_bytes or vector(0)",
    'cpu_usage_percent unless cpu_usage_percent{mode="idle"}',
    "cpu_usage_percent unless on(agent_id) temperature_celsius > 56",
    "memory_used_bytes unless ignoring(sensor) temperature_celsius",
    "nonexistent_metric or memory_total_bytes",
    "(cpu_usage_percent > 40) or (cpu_usage_percent < 10)",
    'sum by (agent_id) (rate(http_requests_total{code="500"}[5m])) / sum by (agent_id) (rate(http_requests_total[5m])) > 0.005',
]

SUBQUERIES = [
    "max_over_time(rate(net_bytes_total[5m])[30m:1m])",
    "max_over_time(memory_used_bytes[10m:])",
    "min_over_time(rate(net_bytes_total[1m])[1h:5m])",
    "avg_over_time(max_over_time(cpu_usage_percent[5m])[15m:30s])",
    "rate(net_bytes_total[5m:30s])",
    "rate(sum by (agent_id) (http_requests_total)[10m:1m])",
    "deriv(sum(memory_used_bytes)[30m:1m])",
    "max_over_time(memory_used_bytes[10m:1m] offset 30m)",
    "max_over_time(memory_used_bytes[10m:1m] @ $at)",
    "count_over_time(aligned_gauge[1m:15s])",
    "sum_over_time(vector(1)[5m:1m])",
    "max_over_time(deriv(rate(net_bytes_total[1m])[5m:1m])[10m:])",
    "rate(http_requests_total[5m])[10m:]",
    "memory_used_bytes[5m:1m]",
]

# The same status and errorType as Prometheus: parse errors, wrong types, execution errors.
ERRORS = [
    "",
    "sum(",
    "cpu_usage_percent{",
    "1 +",
    ")",
    "cpu_usage_percent[5x]",
    "rate(memory_used_bytes)",
    "abs(1)",
    "nonexistent_function(memory_used_bytes)",
    'histogram_quantile("a", http_request_duration_seconds_bucket)',
    "quantile_over_time(0.5, cpu_usage_percent)",
    "topk(cpu_usage_percent, 2)",
    '{__name__=~".*"}',
    "{}",
    '{mode=~".*"}',
    "1 == 1",
    "1 and 1",
    "cpu_usage_percent and 1",
    "time() offset 5m",
    "memory_used_bytes offset 5m offset 5m",
    "memory_used_bytes @ 1 @ 2",
    "sum(memory_used_bytes) by (agent_id) without (mode)",
    'label_replace(cpu_usage_percent, "host", "$1", "agent_id", "(")',
    'label_replace(cpu_usage_percent, "in-valid", "x", "agent_id", ".*")',
    'count_values("in-valid", cpu_usage_percent)',
    "cpu_usage_percent + on(agent_id) cpu_usage_percent",
    "memory_used_bytes + on(agent_id) group_left cpu_usage_percent",
    '{agent_id="a1"} / {agent_id="a1"}',
    "memory_used_bytes[5m][5m]",
    "rate(memory_used_bytes[5m:1m:1m])",
]

QUERIES = [
    *SELECTORS,
    *RANGE_FUNCTIONS,
    *FUNCTIONS,
    *AGGREGATIONS,
    *OPERATORS,
    *SUBQUERIES,
    *ERRORS,
]

# Queries on which fleetpulse does not yet answer as Prometheus does, each with what differed
# (``"query": "reason"``): their tests are expected to fail, strictly, so that a query that starts
# to pass fails the run until it is taken out of here. Empty: every query of the set is equal.
KNOWN_DIFFERENCES: dict[str, str] = {}

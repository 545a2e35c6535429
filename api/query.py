"""Native queries: range queries with a step and an aggregation, grouped by labels, and top-N.

Series are chosen by metric name and label matchers (``=``, ``!=``, ``=~``, ``!~``; ``agent_id``
is a label like the others). Every matcher is a constant SQL fragment with its key and value as
bind parameters: nothing a client sends is formatted into SQL, label names included.

**Windows.** A point labelled ``t`` aggregates the samples in ``[t, t + step)``, ``t`` a multiple of
the step (Unix time), which is how the rollup tiers bucket too. Aggregation runs in two stages:
within a window per series (avg, min, max, last; ``count`` counts the samples; ``sum`` takes the
series' average), then across the series of a group (``by``): ``avg`` and ``last`` the mean,
``min``/``max``, ``sum`` and ``count`` the sum. So ``agg=max&by=agent_id`` is PromQL's
``max by (agent_id) (max_over_time(m[step]))`` with windows labelled by their start.

**Tiers.** The finest data a step needs and no finer: steps that are multiples of an hour read
``rollup_1h``, multiples of a minute ``rollup_1m``, anything else the raw points. The newest
buckets of a tier may not be computed yet (a minute is final at most ``rollup_max_delay_s`` after
it closes): those come from the next finer tier, so a chart is never missing its last minutes.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Annotated, Any, Literal

import numpy as np
import orjson
import polars as pl
from fastapi import APIRouter, HTTPException, Query, Response
from psycopg import AsyncConnection, errors

from fleetpulse import samples
from fleetpulse.api.agents import ConnDep

router = APIRouter(tags=["queries"])

Agg = Literal["avg", "min", "max", "sum", "count", "last"]
MAX_STEPS = 11_000
MAX_MATCHED_SERIES = 20_000
MAX_GROUPS = 5_000
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d|w)?$")
# Longer steps, windows and ranges mean nothing here (retention is measured in days) and would
# push window starts past what a datetime holds.
MAX_DURATION_S = 100 * 365 * 86_400
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}
_MATCH = re.compile(r"^([a-zA-Z_][a-zA-Z0-9_]*)(=~|!~|!=|=)(.*)$", re.DOTALL)
# How long after a bucket closes its rollup is final at the latest (ingest/rollups.py: max delay
# 10 s after the minute closed; an hour is recomputed from its minutes after they are final).
_MINUTE_FINAL_S = 70
_HOUR_FINAL_S = 3600 + 80


def bad(detail: str) -> HTTPException:
    return HTTPException(HTTPStatus.UNPROCESSABLE_ENTITY, detail)


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


def parse_duration(text: str, what: str = "step") -> float:
    """Seconds from ``30``, ``30s``, ``5m``, ``1h``, ``1d``, ``1w`` or ``250ms``."""
    found = _DURATION.match(text.strip())
    if not found:
        raise bad(f"{what}: {text!r} is not a duration (a number of seconds, or like 30s, 5m, 1h)")
    seconds = float(found.group(1)) * _UNITS[found.group(2)]
    if seconds <= 0:
        raise bad(f"{what} must be positive, got {text!r}")
    if not seconds <= MAX_DURATION_S:  # inf included
        raise bad(f"{what} must be at most 100 years, got {text[:40]!r}")
    return seconds


def parse_time(text: str, what: str) -> float:
    """Unix seconds from Unix seconds or RFC 3339."""
    try:
        value = float(text)
    except ValueError:
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise bad(f"{what}: {text!r} is neither Unix seconds nor RFC 3339") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        value = moment.timestamp()
    if not math.isfinite(value) or abs(value) > 32_503_680_000:  # year 3000
        raise bad(f"{what}: {text!r} is out of range")
    return value


def parse_matchers(raw: list[str]) -> list[Matcher]:
    matchers = []
    for text in raw:
        found = _MATCH.match(text)
        if not found:
            raise bad(f"match: {text!r} is not LABEL=VALUE, LABEL!=VALUE, LABEL=~RE or LABEL!~RE")
        matchers.append(Matcher(*found.groups()))
    return matchers


# -- choosing series ---------------------------------------------------------------------------

_SERIES_BASE = "SELECT series_id, name, agent_id, labels FROM series WHERE true"
_LHS_AGENT = "agent_id"
_LHS_NAME = "name"
_LHS_LABEL = "coalesce(labels->>%s, '')"
_OPS = {"=": " = %s", "!=": " <> %s", "=~": " ~ %s", "!~": " !~ %s"}


def _condition(matcher: Matcher) -> tuple[str, list[Any]]:
    """One matcher as a constant SQL fragment and its parameters. A regular expression is
    anchored (matches the whole value), as in Prometheus."""
    value = f"^(?:{matcher.value})$" if matcher.op in ("=~", "!~") else matcher.value
    if matcher.key == "agent_id":
        return f" AND {_LHS_AGENT}{_OPS[matcher.op]}", [value]
    if matcher.key == "__name__":
        return f" AND {_LHS_NAME}{_OPS[matcher.op]}", [value]
    return f" AND {_LHS_LABEL}{_OPS[matcher.op]}", [matcher.key, value]


async def select_series(conn: AsyncConnection[Any], matchers: list[Matcher]) -> list[Series]:
    """Series matching every matcher (one of them should name the metric)."""
    if any("\x00" in m.key or "\x00" in m.value for m in matchers):
        return []  # PostgreSQL text holds no NUL: nothing stored can match
    query, params = _SERIES_BASE, []
    for matcher in matchers:
        fragment, values = _condition(matcher)
        query += fragment
        params.extend(values)
    query += f" LIMIT {MAX_MATCHED_SERIES + 1}"
    try:
        cur = await conn.execute(query, params)
    except errors.InvalidRegularExpression as exc:
        raise bad(f"invalid regular expression: {str(exc).splitlines()[0]}") from None
    rows = await cur.fetchall()
    if len(rows) > MAX_MATCHED_SERIES:
        raise bad(f"more than {MAX_MATCHED_SERIES} series match; add label matchers")
    return [Series(*row) for row in rows]


# -- reading windows ---------------------------------------------------------------------------

# Samples of three tiers, each for its own time range: the hour tier up to split_h, the minute
# tier from split_h to split_m, raw points from split_m. A raw point is a bucket of one.
_HOURS = (
    "SELECT series_id, bucket AS ts, count AS n, sum AS s, min AS lo, max AS hi, last, last_ts"  # noqa: S608  # constants only
    " FROM (" + samples.rollup_sql("1h", "ids", "start", "split_h") + ") hours"
)
_MINUTES = (
    "SELECT series_id, bucket AS ts, count AS n, sum AS s, min AS lo, max AS hi, last, last_ts"  # noqa: S608  # constants only
    " FROM (" + samples.rollup_sql("1m", "ids", "split_h", "split_m") + ") minutes"
)
_RAW = (
    "SELECT series_id, ts, 1 AS n, value AS s, value AS lo, value AS hi, value AS last,"  # noqa: S608  # constants only
    " ts AS last_ts FROM (" + samples.points_sql("ids", "split_m", "end") + ") raw"
)
# A window's "last" is the value of its latest sample: an ordered aggregate, which makes
# PostgreSQL sort every sample. It is computed only when the aggregation asks for it (agg=last);
# otherwise the samples are hashed into windows unsorted.
_LAST = "(array_agg(last ORDER BY last_ts DESC))[1]"
_NO_LAST = "NULL::float8"
_K = "floor(date_part('epoch', ts) / %(step)s)::bigint"  # date_part: float8, not numeric


def _windows_sql(parts: list[str], step: bool, last: bool) -> str:
    k = _K if step else "0::bigint"
    return (
        f"SELECT series_id, {k} AS k, sum(n)::bigint AS n, sum(s) AS s, min(lo) AS lo,"  # noqa: S608  # constants only
        f" max(hi) AS hi, {_LAST if last else _NO_LAST} AS last,"
        " (extract(epoch FROM max(last_ts)) * 1000000)::int8 AS t"
        f" FROM ({' UNION ALL '.join(parts)}) samples GROUP BY 1, 2"
    )


_TIERS = {"1h": [_HOURS, _MINUTES, _RAW], "1m": [_MINUTES, _RAW], "raw": [_RAW]}
# Every query read_windows runs, built once from the constants above, by (tier, with a step,
# agg=last). Rollup rows are aggregated again like raw points, also when the step is the tier's
# bucket: a series in two sets in one bucket has a row from each (fleetpulse/samples.py).
_WINDOW_QUERIES = {
    (tier, step, last): _windows_sql(parts, step, last).encode()
    for tier, parts in _TIERS.items()
    for step in (False, True)
    for last in (False, True)
}
_SCHEMA = {
    "series_id": pl.Int64,
    "k": pl.Int64,
    "n": pl.Int64,
    "s": pl.Float64,
    "lo": pl.Float64,
    "hi": pl.Float64,
    "last": pl.Float64,
    "t": pl.Int64,
}
# Raw points of compressed hours (fleetpulse/samples.py): read beside the query above, in the same
# snapshot, and folded into its windows in polars, with PostgreSQL's float8 semantics (min skips
# NaN, max and sum take it, `last` is the value at the latest time, the greater on a tie).
_CHUNKS = samples.chunks_sql("ids", "split_m", "end").encode()
# Minutes of compressed hours, likewise: each a sample of the minute tier.
_MINUTE_CHUNKS = samples.minute_chunks_sql("ids", "split_h", "split_m").encode()


def tier_for(step_s: float) -> str:
    if step_s % 3600 == 0:
        return "1h"
    if step_s % 60 == 0:
        return "1m"
    return "raw"


def _splits(tier: str, start: float, end: float, now: float) -> tuple[float, float]:
    """Where the hour tier hands over to the minute tier, and that one to raw points."""
    split_m = start
    split_h = start
    if tier in ("1m", "1h"):
        split_m = max(start, min(end, (math.floor((now - _MINUTE_FINAL_S) / 60) + 1) * 60))
    if tier == "1h":
        split_h = max(start, min(split_m, (math.floor((now - _HOUR_FINAL_S) / 3600) + 1) * 3600))
    return split_h, split_m


async def read_windows(
    conn: AsyncConnection[Any],
    ids: list[int],
    start: float,
    end: float,
    step: float | None,
    tier: str,
    last: bool = True,
) -> pl.DataFrame:
    """Per series and window k (``t = k * step``): sample count, sum, min, max and last value
    (null unless ``last``). ``step`` None: one window over [start, end). With a step, ``start``
    is a multiple of it."""
    split_h, split_m = _splits(tier, start, end, datetime.now(UTC).timestamp())

    def at(seconds: float) -> datetime:
        return datetime.fromtimestamp(seconds, UTC)

    params = {
        "ids": ids,
        "start": at(start),
        "end": at(end),
        "split_h": at(split_h),
        "split_m": at(split_m),
        "step": step,
    }
    async with samples.snapshot_async(conn):
        cur = await conn.execute(_WINDOW_QUERIES[tier, step is not None, last], params, binary=True)
        rows = await cur.fetchall()
        chunked, minutes = [], []
        if split_m < end:
            cur = await conn.execute(_CHUNKS, params, binary=True)
            chunked = await cur.fetchall()
        if split_h < split_m:
            cur = await conn.execute(_MINUTE_CHUNKS, params, binary=True)
            minutes = await cur.fetchall()
    windows = pl.DataFrame(rows, schema=_SCHEMA, orient="row")
    extra = []
    if chunked:
        points = samples.chunk_points(chunked, int(split_m * 1e6), int(end * 1e6))
        extra.append(_points_frame(points, step, last))
    if minutes:
        m = samples.chunk_minutes(minutes, int(split_h * 1e6), int(split_m * 1e6))
        extra.append(_minutes_frame(m, step, last))
    if extra:
        windows = _fold(windows, extra)
    return windows.drop("t")


def _window_of(ts_unix_us: np.ndarray, step: float | None) -> np.ndarray:
    if step is None:
        return np.zeros(len(ts_unix_us), np.int64)
    return np.floor(ts_unix_us / 1e6 / step).astype(np.int64)


def _points_frame(points: samples.Points, step: float | None, last: bool) -> pl.DataFrame:
    """Points of compressed hours as window rows of one sample each."""
    return pl.DataFrame(
        {
            "series_id": points.series_id,
            "k": _window_of(points.ts_unix_us, step),
            "n": np.ones(len(points), np.int64),
            "s": points.value,
            "lo": points.value,
            "hi": points.value,
            "last": points.value,
            "t": points.ts_unix_us,
        },
        schema=_SCHEMA,
    ).with_columns(last=pl.col("last") if last else pl.lit(None, pl.Float64))


def _minutes_frame(m: samples.SeriesMinutes, step: float | None, last: bool) -> pl.DataFrame:
    """Minutes of compressed hours as window rows (a minute's window is its bucket's)."""
    rows = m.minutes
    return pl.DataFrame(
        {
            "series_id": m.series_id,
            "k": _window_of(rows.bucket_us, step),
            "n": rows.count,
            "s": rows.sum[:, 0],
            "lo": rows.min[:, 0],
            "hi": rows.max[:, 0],
            "last": rows.last[:, 0],
            "t": rows.last_ts_us,
        },
        schema=_SCHEMA,
    ).with_columns(last=pl.col("last") if last else pl.lit(None, pl.Float64))


def _fold(windows: pl.DataFrame, extra: list[pl.DataFrame]) -> pl.DataFrame:
    """Windows with rows of compressed hours added, with PostgreSQL's float8 semantics (min skips
    NaN, max and sum take it, `last` is the value at the latest time, the greater on a tie)."""
    return (
        pl.concat([windows, *extra])
        .group_by("series_id", "k")
        .agg(
            n=pl.col("n").sum(),
            s=pl.col("s").sum(),
            lo=pl.col("lo").min(),
            hi=pl.col("hi").nan_max(),
            last=pl.col("last").sort_by("t", "last").last(),
            t=pl.col("t").max(),
        )
    )


def reduce_windows(
    windows: pl.DataFrame, series: list[Series], agg: Agg, by: list[str]
) -> pl.DataFrame:
    """Stage 1 (within a window, per series) and stage 2 (across a group): columns g, k, v."""
    within = {
        "avg": pl.col("s") / pl.col("n"),
        "sum": pl.col("s") / pl.col("n"),
        "min": pl.col("lo"),
        "max": pl.col("hi"),
        "last": pl.col("last"),
        "count": pl.col("n").cast(pl.Float64),
    }[agg]
    across = {
        "avg": pl.col("v").mean(),
        "last": pl.col("v").mean(),
        "min": pl.col("v").min(),
        "max": pl.col("v").max(),
        "sum": pl.col("v").sum(),
        "count": pl.col("v").sum(),
    }[agg]
    keys = [tuple(s.label(key) for key in by) for s in series]
    group_of = {key: index for index, key in enumerate(dict.fromkeys(keys))}
    groups = pl.DataFrame(
        {
            "series_id": [s.series_id for s in series],
            "g": [group_of[key] for key in keys],
        },
        schema={"series_id": pl.Int64, "g": pl.Int64},
    )
    return (
        windows.join(groups, on="series_id")
        .with_columns(v=within)
        .group_by("g", "k")
        .agg(v=across)
        .sort("g", "k")
    )


def group_labels(series: list[Series], by: list[str]) -> list[dict[str, str]]:
    keys = dict.fromkeys(tuple(s.label(key) for key in by) for s in series)
    return [dict(zip(by, key, strict=True)) for key in keys]


def _by(text: str | None) -> list[str]:
    return [key.strip() for key in (text or "").split(",") if key.strip()]


def _json(body: dict[str, Any]) -> Response:
    # orjson writes NaN and ±Inf as null, in numpy arrays too
    return Response(
        orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json"
    )


@router.get(
    "/query/range",
    responses={422: {"description": "Bad parameter, or over a limit (named in detail)"}},
)
async def query_range(
    conn: ConnDep,
    metric: str,
    match: Annotated[list[str] | None, Query()] = None,
    agg: Agg = "avg",
    by: str | None = None,
    start: str | None = None,
    end: str | None = None,
    step: str = "60",
) -> Response:
    """A metric's values per step window, aggregated by ``agg`` and grouped by the ``by`` labels
    (comma-separated; none: one group). Window ``t`` covers ``[t, t + step)``."""
    step_s = parse_duration(step)
    end_s = parse_time(end, "end") if end else datetime.now(UTC).timestamp()
    start_s = parse_time(start, "start") if start else end_s - 3600
    if start_s >= end_s:
        raise bad("start must be before end")
    first_k, last_k = math.floor(start_s / step_s), math.ceil(end_s / step_s) - 1
    if last_k - first_k + 1 > MAX_STEPS:
        raise bad(f"more than {MAX_STEPS} steps: use a larger step or a shorter range")
    keys = _by(by)
    series = await select_series(
        conn, [Matcher("__name__", "=", metric), *parse_matchers(match or [])]
    )
    tier = tier_for(step_s)
    body: dict[str, Any] = {"metric": metric, "agg": agg, "step": step_s, "tier": tier}
    labels = group_labels(series, keys)
    if len(labels) > MAX_GROUPS:
        raise bad(f"more than {MAX_GROUPS} groups: group by fewer labels or match fewer series")
    if not series:
        return _json({**body, "series": []})
    windows = await read_windows(
        conn,
        [s.series_id for s in series],
        first_k * step_s,
        end_s,
        step_s,
        tier,
        last=agg == "last",
    )
    values = reduce_windows(windows, series, agg, keys).with_columns(
        t=pl.col("k").cast(pl.Float64) * step_s
    )
    # Each group's [t, v] pairs as one two-column array: orjson writes it without a Python
    # object per number (a 24 h chart at 1-minute step has 11,520 of them).
    values = values.sort("g", "t")
    groups = values["g"].to_numpy()
    pairs = np.ascontiguousarray(values.select("t", "v").to_numpy())
    bounds = np.flatnonzero(np.diff(groups)) + 1
    body["series"] = [
        {"labels": labels[int(chunk_groups[0])], "points": chunk}
        for chunk_groups, chunk in zip(
            np.split(groups, bounds), np.split(pairs, bounds), strict=True
        )
        if len(chunk_groups)
    ]
    return _json(body)


@router.get("/query/top", responses={422: {"description": "Bad parameter"}})
async def query_top(
    conn: ConnDep,
    metric: str,
    match: Annotated[list[str] | None, Query()] = None,
    k: Annotated[int, Query(ge=1, le=1000)] = 10,
    window: str = "300",
    agg: Agg = "avg",
    by: str = "agent_id",
    order: Literal["desc", "asc"] = "desc",
) -> Response:
    """The k groups with the highest (desc) or lowest (asc) ``agg`` over the last ``window``."""
    window_s = parse_duration(window, "window")
    if window_s > 7 * 86400:
        raise bad("window: at most 7 days")
    end_s = datetime.now(UTC).timestamp()
    keys = _by(by)
    series = await select_series(
        conn, [Matcher("__name__", "=", metric), *parse_matchers(match or [])]
    )
    body: dict[str, Any] = {"metric": metric, "window": window_s, "agg": agg, "groups": []}
    if not series:
        return _json(body)
    tier = "raw" if window_s < 3600 else "1m"
    windows = await read_windows(
        conn, [s.series_id for s in series], end_s - window_s, end_s, None, tier, last=agg == "last"
    )
    values = reduce_windows(windows, series, agg, keys).filter(pl.col("v").is_not_nan())
    top = values.sort("v", descending=order == "desc", nulls_last=True).head(k)
    labels = group_labels(series, keys)
    body["groups"] = [{"labels": labels[g], "value": v} for g, _, v in top.iter_rows()]
    return _json(body)

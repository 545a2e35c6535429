"""Native queries: range queries with a step and an aggregation, grouped by labels, and top-N.

Series are chosen by metric name and label matchers (``=``, ``!=``, ``=~``, ``!~``; ``agent_id``
is a label like the others; api/selectors.py). Every matcher is a constant SQL fragment with its
key and value as bind parameters: nothing a client sends is formatted into SQL, label names
included.

**Windows.** A point labelled ``t`` aggregates the samples in ``[t, t + step)``, ``t`` a multiple of
the step (Unix time), which is how the rollup tiers bucket too. Aggregation runs in two stages:
within a window per series (avg, min, max, last; ``count`` counts the samples; ``sum`` takes the
series' average), then across the series of a group (``by``): ``avg`` and ``last`` the mean,
``min``/``max``, ``sum`` and ``count`` the sum. So ``agg=max&by=agent_id`` is PromQL's
``max by (agent_id) (max_over_time(m[step]))`` with windows labelled by their start.

**Tiers.** The finest data a step needs and no finer: steps that are multiples of an hour read
``rollup_1h``, multiples of a minute ``rollup_1m``, anything else the raw points. The newest
buckets of a tier may not be computed yet (a minute is final at most ``rollup_max_delay_s`` after
it closes): those come from the next finer tier, so a chart is never missing its last minutes
(api/tiers.py chooses, api/windows.py reads).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import numpy as np
import orjson
import polars as pl
from fastapi import APIRouter, Query, Response

from fleetpulse.api import tiers
from fleetpulse.api.deps import ConnDep
from fleetpulse.api.selectors import Matcher, Series, parse_matchers, select_series
from fleetpulse.api.times import MAX_STEPS, parse_duration, parse_time
from fleetpulse.api.windows import read_windows
from fleetpulse.errors import BadInput

router = APIRouter(tags=["queries"])

Agg = Literal["avg", "min", "max", "sum", "count", "last"]
MAX_GROUPS = 5_000
MAX_TOP_WINDOW_S = 7 * 86_400


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
        raise BadInput("start must be before end")
    first_k, last_k = math.floor(start_s / step_s), math.ceil(end_s / step_s) - 1
    if last_k - first_k + 1 > MAX_STEPS:
        raise BadInput(f"more than {MAX_STEPS} steps: use a larger step or a shorter range")
    keys = _by(by)
    series = await select_series(
        conn, [Matcher("__name__", "=", metric), *parse_matchers(match or [])]
    )
    tier = tiers.for_step(step_s)
    body: dict[str, Any] = {"metric": metric, "agg": agg, "step": step_s, "tier": tier}
    labels = group_labels(series, keys)
    if len(labels) > MAX_GROUPS:
        raise BadInput(
            f"more than {MAX_GROUPS} groups: group by fewer labels or match fewer series"
        )
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
    if window_s > MAX_TOP_WINDOW_S:
        raise BadInput("window: at most 7 days")
    end_s = datetime.now(UTC).timestamp()
    keys = _by(by)
    series = await select_series(
        conn, [Matcher("__name__", "=", metric), *parse_matchers(match or [])]
    )
    body: dict[str, Any] = {"metric": metric, "window": window_s, "agg": agg, "groups": []}
    if not series:
        return _json(body)
    tier = tiers.for_window(window_s)
    windows = await read_windows(
        conn, [s.series_id for s in series], end_s - window_s, end_s, None, tier, last=agg == "last"
    )
    values = reduce_windows(windows, series, agg, keys).filter(pl.col("v").is_not_nan())
    top = values.sort("v", descending=order == "desc", nulls_last=True).head(k)
    labels = group_labels(series, keys)
    body["groups"] = [{"labels": labels[g], "value": v} for g, _, v in top.iter_rows()]
    return _json(body)

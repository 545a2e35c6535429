"""Per-window aggregates of series, read from the rollup tiers and the raw points at once.

A window is ``[k * step, (k + 1) * step)`` (or one window over the whole range). Its sample count,
sum, min, max and last value come from the hour tier up to where it is final, the minute tier after
that, and raw points for the newest part (api/tiers.py: `splits`), hot rows and compressed hours
read in one snapshot. The native range and top-N queries (api/query.py) aggregate these windows;
PromQL reads its exact buckets through them (api/promql/storage.py: `Reader.buckets`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import polars as pl
from psycopg import AsyncConnection

from fleetpulse import samples
from fleetpulse.api.tiers import splits

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
    split_h, split_m = splits(tier, start, end, datetime.now(UTC).timestamp())

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

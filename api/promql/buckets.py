"""``sum``, ``count``, ``avg``, ``min`` and ``max_over_time`` from the rollup tiers, exactly.

Where a query's windows line up with a tier's buckets (every window ``[t - r, t]`` starts on a
bucket boundary and ``r`` is a whole number of buckets), Prometheus' answer is an aggregate of
whole buckets ``[t - r, t)`` plus the raw point at exactly ``t``, if there is one (2.42's windows
include both edges). The tiers hold count, sum, min and max per series and bucket, so the
7-day chart ``avg_over_time(x[1h])`` at hourly steps reads 168 hour rows and at most 168 points
per series instead of 60,480 raw points (docs/performance.md). Anything else reads raw points
(api/promql/storage.py), and so does this path's query whenever it could differ:

- a bucket of the range waits for the rollup job (a late batch marked it): the tier is stale;
- a bucket's sum is NaN or infinite, or its max is NaN: PostgreSQL's float semantics, which the
  tiers keep (a NaN makes sum and max NaN), are not Prometheus' for ``max_over_time`` (a NaN
  only when every sample is NaN), and a sum of infinities depends on the order it is taken in;
- minute buckets older than the raw horizon may be gone (the minute tier is kept 35 days): hour
  buckets only there.

Which tier's buckets a query's windows line up with is api/tiers.py's `for_windows` (minute
buckets from windows of 10 minutes: shorter windows read raw points as cheaply).
"""

from __future__ import annotations

import numpy as np

from fleetpulse.api.promql.storage import Buckets

BUCKETED = frozenset(
    {"sum_over_time", "count_over_time", "avg_over_time", "min_over_time", "max_over_time"}
)


def over_time(
    name: str,
    buckets: Buckets,
    ref_us: np.ndarray,
    range_us: int,
    edge: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> tuple[np.ndarray, np.ndarray] | None:
    """``name`` over each series' windows ``[ref - range, ref]``: ``(values, present)``, (S, T),
    from whole buckets and ``edge``, the raw points at exactly the windows' ends (series index,
    time, value). None where the tiers could answer otherwise than the raw points (module
    docstring)."""
    count = buckets.count
    filled = count > 0
    if not np.isfinite(buckets.sum[filled]).all() or np.isnan(buckets.max[filled]).any():
        return None
    series, steps = count.shape[0], len(ref_us)
    first = (ref_us - range_us - buckets.first_us) // buckets.width_us  # (T,) first bucket
    end = (ref_us - buckets.first_us) // buckets.width_us  # (T,) one past the last
    cum_count = np.concatenate([np.zeros((series, 1), np.int64), count.cumsum(axis=1)], axis=1)
    cum_sum = np.concatenate([np.zeros((series, 1)), buckets.sum.cumsum(axis=1)], axis=1)
    n = (cum_count[:, end] - cum_count[:, first]).astype(np.float64)
    total = cum_sum[:, end] - cum_sum[:, first]
    # the raw point on each window's closed end
    at_index, at_ts, at_value = edge
    on_edge = np.zeros((series, steps), bool)
    edge_value = np.zeros((series, steps))
    if len(at_ts):
        if not np.isfinite(at_value).all():
            return None
        times, step_of = np.unique(ref_us, return_inverse=True)
        slot = np.searchsorted(times, at_ts)
        by_time = np.zeros((series, len(times)), bool)
        value_by_time = np.zeros((series, len(times)))
        by_time[at_index, slot] = True
        value_by_time[at_index, slot] = at_value
        on_edge = by_time[:, step_of]
        edge_value = value_by_time[:, step_of]
    n += on_edge
    total += np.where(on_edge, edge_value, 0.0)
    present = n > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        if name == "count_over_time":
            out = n
        elif name == "sum_over_time":
            out = total
        elif name == "avg_over_time":
            out = total / n
        else:
            ufunc = np.fmin if name == "min_over_time" else np.fmax
            table = buckets.min if name == "min_over_time" else buckets.max
            out = ufunc(
                _window_reduce(ufunc, table, first, end), np.where(on_edge, edge_value, np.nan)
            )
    return np.where(present, out, np.nan), present


def _window_reduce(
    ufunc: np.ufunc, table: np.ndarray, first: np.ndarray, end: np.ndarray
) -> np.ndarray:
    """``ufunc`` over the columns [first, end) of each row, per window (windows may overlap):
    ``reduceat`` over the interleaved (first, end) pairs, every other result kept."""
    series, columns = table.shape
    padded = np.concatenate([table, np.full((series, 1), np.nan)], axis=1)
    bounds = np.empty(2 * len(first), np.int64)
    bounds[0::2] = np.clip(first, 0, columns)
    bounds[1::2] = np.clip(end, 0, columns)
    reduced = ufunc.reduceat(padded, bounds, axis=1)[:, 0::2]
    empty = bounds[1::2] <= bounds[0::2]
    reduced[:, empty] = np.nan
    return reduced

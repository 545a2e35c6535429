"""Exact *_over_time from bucket aggregates (api/promql/buckets.py) against the same functions
over the raw points they were made from (functions.range_function, itself checked against
Prometheus)."""

from __future__ import annotations

import numpy as np
import pytest

from fleetpulse.api import tiers
from fleetpulse.api.promql import buckets
from fleetpulse.api.promql.functions import range_function
from fleetpulse.api.promql.model import RangeSamples
from fleetpulse.api.promql.storage import Buckets

MINUTE = 60_000_000
HOUR = 60 * MINUTE


def _raw(rng: np.random.Generator, series: int, lo_us: int, hi_us: int) -> RangeSamples:
    """Points every 10 s with a per-series phase (0: on every minute's edge), some missing."""
    index, stamps, values = [], [], []
    for s in range(series):
        ts = np.arange(lo_us + s * 2_500_000, hi_us + 1, 10_000_000, dtype=np.int64)
        ts = ts[rng.random(len(ts)) > 0.1]
        index.append(np.full(len(ts), s))
        stamps.append(ts)
        values.append(np.round(rng.normal(50, 20, len(ts)), 3))
    labels = [{"s": str(s)} for s in range(series)]
    return RangeSamples(
        labels,
        np.concatenate(index),
        np.concatenate(stamps),
        np.concatenate(values),
        lo_us,
        hi_us - lo_us + 1,
    )


def _buckets(raw: RangeSamples, lo_us: int, hi_us: int, width_us: int) -> Buckets:
    """What the tiers hold: count, sum, min, max per series and bucket [lo + k w, lo + (k+1) w)."""
    series, columns = len(raw.labels), (hi_us - lo_us) // width_us
    count = np.zeros((series, columns), np.int64)
    total = np.zeros((series, columns))
    low, high = np.full((series, columns), np.nan), np.full((series, columns), np.nan)
    inside = (raw.ts_us >= lo_us) & (raw.ts_us < hi_us)
    row, col = raw.index[inside], (raw.ts_us[inside] - lo_us) // width_us
    v = raw.values[inside]
    np.add.at(count, (row, col), 1)
    np.add.at(total, (row, col), v)
    np.fmin.at(low, (row, col), v)
    np.fmax.at(high, (row, col), v)
    return Buckets(lo_us, width_us, count, total, low, high)


def _edge(raw: RangeSamples, ref_us: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    on = np.isin(raw.ts_us, ref_us)
    return raw.index[on], raw.ts_us[on], raw.values[on]


@pytest.mark.parametrize("name", sorted(buckets.BUCKETED))
@pytest.mark.parametrize(
    ("width_us", "range_us", "step_us"),
    [
        (HOUR, HOUR, HOUR),
        (HOUR, 3 * HOUR, HOUR),
        (MINUTE, 10 * MINUTE, MINUTE),
        (MINUTE, 15 * MINUTE, 5 * MINUTE),
    ],
)
def test_buckets_answer_what_the_raw_points_answer(
    name: str, width_us: int, range_us: int, step_us: int
) -> None:
    rng = np.random.default_rng(width_us + range_us + step_us)
    t0 = 1_765_000_000 // 3600 * 3600 * 1_000_000
    ref = np.arange(t0 + range_us, t0 + range_us + 12 * step_us, step_us, dtype=np.int64)
    lo, hi = int(ref.min()) - range_us, int(ref.max())
    raw = _raw(rng, 5, lo, hi)
    want, want_present = range_function(name, raw, ref, range_us, [])
    got = buckets.over_time(name, _buckets(raw, lo, hi, width_us), ref, range_us, _edge(raw, ref))
    assert got is not None
    values, present = got
    assert (present == want_present).all()
    np.testing.assert_allclose(values[present], want[present], rtol=1e-12)
    # the series with phase 0 has points on every window's closed end: they are counted
    assert _edge(raw, ref)[0].size > 0


def test_windows_that_do_not_line_up_with_buckets_are_not_bucketed() -> None:
    t0 = 1_765_000_000 // 3600 * 3600 * 1_000_000
    hourly = np.arange(t0, t0 + 5 * HOUR, HOUR, dtype=np.int64)
    assert tiers.for_windows(hourly, HOUR, horizon_us=0) == "1h"
    assert tiers.for_windows(hourly + MINUTE, HOUR, horizon_us=0) == "1m"
    assert tiers.for_windows(hourly + 1, HOUR, horizon_us=0) is None
    assert tiers.for_windows(hourly, HOUR + 1_000_000, horizon_us=0) is None
    assert tiers.for_windows(hourly, 5 * MINUTE, horizon_us=0) is None  # raw points as cheap
    # minutes before the raw horizon may be gone: only hours there
    assert tiers.for_windows(hourly + MINUTE, HOUR, horizon_us=t0 + HOUR) is None


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_non_finite_bucket_sends_the_query_to_the_raw_points(bad: float) -> None:
    """The tiers keep PostgreSQL's float semantics (a NaN makes max NaN), not Prometheus'."""
    count = np.array([[3, 3]])
    total = np.array([[1.0, bad]])
    high = np.array([[1.0, bad]])
    table = Buckets(0, HOUR, count, total, high.copy(), high)
    ref = np.array([2 * HOUR], dtype=np.int64)
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))
    assert buckets.over_time("max_over_time", table, ref, 2 * HOUR, empty) is None

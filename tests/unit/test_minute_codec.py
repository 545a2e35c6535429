"""The minute chunk codec (fleetpulse/samples.py): bit-exact round trips, and a reader's cut."""

from __future__ import annotations

import numpy as np
import pytest

from fleetpulse import samples

MINUTE_US = 60_000_000


def _minutes(n: int, width: int, seed: int = 1) -> samples.Minutes:
    rng = np.random.default_rng(seed)
    hour_us = 1_796_000_000 // 3600 * 3600 * 1_000_000
    buckets = hour_us + MINUTE_US * np.arange(n, dtype=np.int64)
    stats = [rng.normal(0, 1e6, (n, width)) for _ in range(4)]
    stats[0][0, 0], stats[1][1, 0], stats[2][2, 0] = np.nan, -np.inf, np.inf
    stats[3][3, 0] = -0.0
    return samples.Minutes(
        buckets,
        rng.integers(1, 7, n).astype(np.int64),
        buckets + rng.integers(0, MINUTE_US, n),
        *stats,
    )


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float64).view(np.int64)


def test_a_set_hour_round_trips_bit_for_bit() -> None:
    m = _minutes(60, 7)
    buckets, counts, last_ts, sums, extremes = samples.encode_minutes(m)
    assert len(sums) == len(extremes) == 7
    back = samples.decode_minutes(60, buckets, counts, last_ts, sums, extremes)
    for name in ("bucket_us", "count", "last_ts_us"):
        np.testing.assert_array_equal(getattr(back, name), getattr(m, name))
    for name in ("sum", "min", "max", "last"):
        np.testing.assert_array_equal(_bits(getattr(back, name)), _bits(getattr(m, name)))


def test_a_reader_decodes_only_its_columns_and_its_minutes() -> None:
    m = _minutes(60, 5)
    buckets, counts, last_ts, sums, extremes = samples.encode_minutes(m)
    wanted = [4, 1]  # columns, as set_members numbers them (0-based here)
    row = (
        [104, 101],
        60,
        buckets,
        counts,
        last_ts,
        [sums[c] for c in wanted],
        [extremes[c] for c in wanted],
    )
    lo, hi = int(m.bucket_us[10]), int(m.bucket_us[20])
    got = samples.chunk_minutes([row], lo, hi)
    assert got.series_id.tolist() == [104] * 10 + [101] * 10
    np.testing.assert_array_equal(got.minutes.bucket_us, np.tile(m.bucket_us[10:20], 2))
    np.testing.assert_array_equal(got.minutes.count, np.tile(m.count[10:20], 2))
    for name in ("sum", "min", "max", "last"):
        want = getattr(m, name)[10:20][:, wanted].T.reshape(-1, 1)
        np.testing.assert_array_equal(_bits(getattr(got.minutes, name)), _bits(want))
    assert len(samples.chunk_minutes([row], hi + 3600 * 10**6, hi + 7200 * 10**6).minutes) == 0


def test_a_chunk_that_does_not_hold_what_it_says_is_refused() -> None:
    m = _minutes(10, 2)
    buckets, counts, last_ts, sums, extremes = samples.encode_minutes(m)
    with pytest.raises(ValueError, match="says 11 rows and holds 10"):
        samples.decode_minutes(11, buckets, counts, last_ts, sums, extremes)
    with pytest.raises(ValueError, match="2 sums and 1 extremes"):
        samples.decode_minutes(10, buckets, counts, last_ts, sums, extremes[:1])

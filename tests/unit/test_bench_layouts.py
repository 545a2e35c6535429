"""The storage-layout benchmark's own pieces: codecs that must be lossless, and the parsing of a
node_exporter scrape (bench/layouts.py)."""

from __future__ import annotations

import numpy as np
import pytest

from fleetpulse.bench.layouts import CODECS, Samples, _series_complete, decode, encode, exposition


@pytest.mark.parametrize("codec", CODECS)
def test_codecs_round_trip_every_double_bit_for_bit(codec: str) -> None:
    rng = np.random.default_rng(7)
    values = np.cumsum(rng.normal(size=(50, 6)), axis=0)
    values[:, 1] = 42.0  # constant
    values[3, 2], values[4, 2], values[5, 2] = np.nan, np.inf, -np.inf
    values[6, 3] = -0.0
    values[:, 4] = np.arange(50) * 1024.0  # a counter
    stamps = 1_796_000_000_000_000 + np.arange(50, dtype=np.int64) * 1_000_000
    ts, vals = encode(codec, stamps, values)
    got_ts, got = decode(codec, ts, vals, values.shape[1])
    assert np.array_equal(got_ts, stamps)
    assert np.array_equal(got.view(np.uint64), values.view(np.uint64))


def test_a_scrape_becomes_one_value_per_series_key() -> None:
    body = (
        "# HELP node_load1 1m load average.\n"
        "# TYPE node_load1 gauge\n"
        "node_load1 0.25\n"
        "# TYPE node_cpu_seconds_total counter\n"
        'node_cpu_seconds_total{cpu="0",mode="idle"} 1234.5\n'
        'node_cpu_seconds_total{mode="user",cpu="0"} 6.5e+01\n'
    )
    assert exposition(body) == {
        "node_load1{}": 0.25,
        'node_cpu_seconds_total{"cpu": "0", "mode": "idle"}': 1234.5,
        'node_cpu_seconds_total{"cpu": "0", "mode": "user"}': 65.0,
    }


def test_only_series_present_in_every_collection_are_kept() -> None:
    values = np.array([[1.0, np.nan, 3.0], [1.0, 2.0, 3.0]])
    samples = _series_complete(Samples(["a", "b", "c"], np.array([1, 2]), values))
    assert samples.names == ["a", "c"] and samples.values.shape == (2, 2)

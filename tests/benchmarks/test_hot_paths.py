"""Micro-benchmarks of the hot functions (pytest-benchmark): measurements, never assertions on time.

The default test run executes them in a quick mode (see addopts in pyproject.toml) so that they
cannot rot; for figures worth quoting run

    pytest tests/benchmarks --benchmark-max-time=2 --benchmark-min-rounds=10 --benchmark-warmup=on

docs/performance.md keeps the latest figures and the command.
"""

from __future__ import annotations

import random
import time

import numpy as np
import psycopg
import pytest

from fleetpulse.agent.batch import CollectionEncoder
from fleetpulse.bench.encoder import BatchEncoder, ColumnarEncoder
from fleetpulse.bench.hostseries import host_series
from fleetpulse.copybuf import points_copy_buffer
from fleetpulse.ingest import keys
from fleetpulse.ingest.worker.decode import ChunkDecoder, labels_key
from fleetpulse.ingest.worker.series import SeriesResolver
from fleetpulse.proto import edge_pb2

SERIES_PER_AGENT = 200
BATCHES_PER_CHUNK = 200  # one worker read: 200 entries x 200 points = 40,000 points


def _samples() -> list[tuple[str, float, dict[str, str]]]:
    rng = random.Random(1)
    return [(name, rng.random() * 100, labels) for name, labels in host_series(SERIES_PER_AGENT)]


def _chunk_entries(form: str) -> list[tuple[str, str, dict[bytes, bytes]]]:
    """One worker read: 200 entries of 200 points, each from its own agent."""
    series = host_series(SERIES_PER_AGENT)
    entries = []
    for i in range(BATCHES_PER_CHUNK):
        agent = f"agent-{i:04d}"
        encoder = (
            ColumnarEncoder(agent, series) if form == "columnar" else BatchEncoder(agent, series)
        )
        raw = encoder.encode(1, 1, time.time_ns(), np.arange(SERIES_PER_AGENT, dtype=float))
        envelope = edge_pb2.AgentEnvelope.FromString(raw)
        payload = envelope.metric_columns if form == "columnar" else envelope.metrics
        entries.append(
            (
                keys.stream_key(0),
                f"{1_700_000_000_000 + i}-0",
                {
                    keys.FIELD_AGENT: agent.encode(),
                    keys.FIELD_EPOCH: b"1",
                    keys.FIELD_SEQUENCE: b"1",
                    keys.FIELD_RECEIVED_MS: b"1700000000000",
                    keys.FIELD_BATCH: payload,
                    keys.FIELD_FORM: keys.FORM_COLUMNS if form == "columnar" else keys.FORM_ROWS,
                },
            )
        )
    return entries


class _CountingResolver(SeriesResolver):
    """The real resolver with its cache pre-filled: no database round trip in a micro-benchmark."""

    def __init__(self) -> None:
        super().__init__(conn=None)  # type: ignore[arg-type]  # the cache path never queries

    def resolve(self, unique_keys):  # type: ignore[no-untyped-def]
        for key in unique_keys:
            self._ids.setdefault(key, len(self._ids) + 1)
        return super().resolve(unique_keys)


def test_agent_batch_encode(benchmark) -> None:  # type: ignore[no-untyped-def]
    """The project's agent: 200 samples into a serialized row-form batch (protobuf)."""
    samples = _samples()
    payload = benchmark(CollectionEncoder().encode, "host-1", 1, 1, samples, time.time_ns())
    assert len(payload) > SERIES_PER_AGENT * 20


def test_simulator_batch_encode(benchmark) -> None:  # type: ignore[no-untyped-def]
    """The fleet simulator: the same batch from a numpy template."""
    encoder = BatchEncoder("host-1", host_series(SERIES_PER_AGENT))
    values = np.random.default_rng(1).normal(size=SERIES_PER_AGENT)
    payload = benchmark(encoder.encode, 1, 1, time.time_ns(), values)
    assert len(payload) > SERIES_PER_AGENT * 20


@pytest.mark.parametrize("form", ["rows", "columnar"])
def test_decode_chunk_to_columns(benchmark, form: str) -> None:  # type: ignore[no-untyped-def]
    """Worker: 200 stream entries (40,000 points) decoded into columns with series ids.

    Steady state: the agents' series are known (rows: the series cache; columnar: the series-set
    cache, filled by the first call).
    """
    entries = _chunk_entries(form)
    decoder = ChunkDecoder(_CountingResolver())
    decoder.decode(entries)
    decoded = benchmark(decoder.decode, entries)
    assert len(decoded.ts_unix_us) == BATCHES_PER_CHUNK * SERIES_PER_AGENT
    assert not any(b.error for b in decoded.batches)


def test_copy_buffer_build(benchmark) -> None:  # type: ignore[no-untyped-def]
    """Worker: the binary COPY payload for 40,000 points."""
    n = BATCHES_PER_CHUNK * SERIES_PER_AGENT
    rng = np.random.default_rng(3)
    series_ids = rng.integers(1, 1_000_000, size=n, dtype=np.int32)
    ts = np.full(n, time.time_ns() // 1000, dtype=np.int64)
    values = rng.normal(size=n)
    buffer = benchmark(points_copy_buffer, series_ids, ts, values)
    assert len(buffer) == 19 + 34 * n + 2


def test_series_resolution_cached(benchmark) -> None:  # type: ignore[no-untyped-def]
    """Worker: series ids of a chunk's 40,000 distinct keys, all already in the process cache."""
    keys_ = [(f"agent-{i // 200}", "m", labels_key({"i": str(i)})) for i in range(40_000)]
    resolver = SeriesResolver(conn=None)  # type: ignore[arg-type]  # the cache path never queries
    resolver._ids.update({key: i for i, key in enumerate(keys_)})
    ids = benchmark(resolver.resolve, keys_)
    assert ids[:3] == [0, 1, 2]


@pytest.mark.integration
def test_series_resolution_new(benchmark, database_url: str) -> None:  # type: ignore[no-untyped-def]
    """Worker: 4,000 unseen series created and resolved with one set-based statement."""
    counter = iter(range(10**9))

    def setup():  # type: ignore[no-untyped-def]
        run = next(counter)
        keys_ = [(f"agent-{run}-{i // 200}", "m", labels_key({"i": str(i)})) for i in range(4_000)]
        return (SeriesResolver(conn), keys_), {}

    with psycopg.connect(database_url, autocommit=True) as conn:
        ids = benchmark.pedantic(
            lambda resolver, keys_: resolver.resolve(keys_), setup=setup, rounds=3
        )
    assert len(set(ids)) == 4_000

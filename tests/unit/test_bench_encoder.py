"""The simulator's numpy batch encoder produces exactly what protobuf would decode."""

from __future__ import annotations

import time

import numpy as np

from fleetpulse.bench.encoder import BatchEncoder
from fleetpulse.bench.hostseries import host_series
from fleetpulse.proto import agent_pb2, edge_pb2


def test_encoded_batch_decodes_to_the_same_points() -> None:
    series = host_series(200)
    encoder = BatchEncoder("bench-host-1", series)
    values = np.random.default_rng(3).normal(50, 20, size=len(series))
    values[0], values[1] = float("nan"), float("-inf")
    ts_ns = time.time_ns()
    raw = encoder.encode(epoch=1_700_000_000_123, sequence=300, ts_ns=ts_ns, values=values)

    message = agent_pb2.AgentMessage.FromString(raw)
    batch = message.metrics
    assert (batch.agent_id, batch.epoch, batch.sequence) == ("bench-host-1", 1_700_000_000_123, 300)
    assert len(batch.metrics) == 200
    for point, (name, labels), value in zip(batch.metrics, series, values, strict=True):
        assert point.name == name and dict(point.labels) == labels
        assert point.timestamp.seconds * 1_000_000_000 + point.timestamp.nanos == ts_ns
        assert np.array_equal(np.float64(point.value), value, equal_nan=True)
    # the front-end's view reads the identity without the points
    header = edge_pb2.BatchHeader.FromString(edge_pb2.AgentEnvelope.FromString(raw).metrics)
    assert (header.epoch, header.sequence) == (1_700_000_000_123, 300)


def test_each_batch_gets_its_own_values_and_timestamp() -> None:
    encoder = BatchEncoder("a", host_series(10))
    first = encoder.encode(1, 1, 1_000_000_000_000_000_001, np.zeros(10))
    second = encoder.encode(1, 2, 1_000_000_000_000_000_002, np.ones(10))
    a = agent_pb2.AgentMessage.FromString(first).metrics
    b = agent_pb2.AgentMessage.FromString(second).metrics
    assert [p.value for p in a.metrics] == [0.0] * 10 and [p.value for p in b.metrics] == [1.0] * 10
    assert a.metrics[0].timestamp.nanos + 1 == b.metrics[0].timestamp.nanos


def test_columnar_encoder_matches_protobuf() -> None:
    from fleetpulse.bench.encoder import ColumnarEncoder
    from fleetpulse.proto import metric_pb2

    series = host_series(200)
    encoder = ColumnarEncoder("bench-host-2", series)
    values = np.random.default_rng(4).normal(size=len(series))
    ts_ns = time.time_ns()
    raw = encoder.encode(epoch=77, sequence=5, ts_ns=ts_ns, values=values)
    batch = agent_pb2.AgentMessage.FromString(raw).metric_columns
    expected = metric_pb2.ColumnarBatch(
        agent_id="bench-host-2",
        epoch=77,
        sequence=5,
        series=metric_pb2.SeriesSet(
            entries=[metric_pb2.SeriesDef(name=n, labels=lab) for n, lab in series]
        ),
        values=values.tolist(),
        timestamps_ns=[ts_ns],
    )
    assert batch == expected
    header = edge_pb2.ColumnarHeader.FromString(
        edge_pb2.AgentEnvelope.FromString(raw).metric_columns
    )
    assert (header.agent_id, header.epoch, header.sequence) == ("bench-host-2", 77, 5)

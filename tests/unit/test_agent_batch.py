"""The agent's batch encoding (agent/batch.py): the hand-written bytes equal protobuf's own, and
the cached SeriesSet follows the series."""

from __future__ import annotations

from fleetpulse.agent.batch import CollectionEncoder
from fleetpulse.agent.collectors.sample import Sample
from fleetpulse.agent.collectors.scheduler import Scheduler


def _encode_uncached(
    agent_id: str, epoch: int, seq: int, samples: list[Sample], ts_ns: int
) -> bytes:
    from fleetpulse.proto import agent_pb2, metric_pb2

    batch = metric_pb2.ColumnarBatch(
        agent_id=agent_id,
        epoch=epoch,
        sequence=seq,
        series=metric_pb2.SeriesSet(
            entries=[metric_pb2.SeriesDef(name=name, labels=labels) for name, _, labels in samples]
        ),
        values=[value for _, value, _ in samples],
        timestamps_ns=[ts_ns],
    )
    return agent_pb2.AgentMessage(metric_columns=batch).SerializeToString()


def test_encode_batch_matches_the_protobuf_encoding() -> None:
    encoder = CollectionEncoder()
    scheduler = Scheduler()
    from fleetpulse.proto import agent_pb2

    samples, _ = scheduler.collect()
    for args in (
        ("host-1", 1_700_000_000_000, 1, samples, 1_700_000_000_123_456_789),
        ("host-1", 1_700_000_000_000, 2, samples, 1_700_000_001_000_000_000),  # cached series
        ("hôte", 2**64 - 1, 300, samples[:3], -5),
        ("", 0, 0, [], 0),  # proto3 zero values are left out
    ):
        cached = encoder.encode(*args)
        assert agent_pb2.AgentMessage.FromString(cached) == agent_pb2.AgentMessage.FromString(
            _encode_uncached(*args)
        )
        assert cached == _encode_uncached(*args)  # same bytes, too


def test_encode_batch_cache_follows_the_series() -> None:
    encoder = CollectionEncoder()
    from fleetpulse.proto import agent_pb2

    def series(payload: bytes) -> list[tuple[str, dict[str, str]]]:
        batch = agent_pb2.AgentMessage.FromString(payload).metric_columns
        return [(e.name, dict(e.labels)) for e in batch.series.entries]

    first: list[Sample] = [("load1", 0.5, {}), ("disk_bytes", 9.0, {"mountpoint": "/"})]
    assert series(encoder.encode("a", 1, 1, first, 1)) == [
        ("load1", {}),
        ("disk_bytes", {"mountpoint": "/"}),
    ]
    # same series, new values: the cached series, the new values
    again: list[Sample] = [("load1", 0.7, {}), ("disk_bytes", 8.0, {"mountpoint": "/"})]
    payload = encoder.encode("a", 1, 2, again, 2)
    assert list(agent_pb2.AgentMessage.FromString(payload).metric_columns.values) == [0.7, 8.0]
    # a label value changed, a series added: the cache is rebuilt
    changed: list[Sample] = [
        ("load1", 0.7, {}),
        ("disk_bytes", 8.0, {"mountpoint": "/data"}),
        ("load5", 0.1, {}),
    ]
    payload = encoder.encode("a", 1, 3, changed, 3)
    assert series(payload) == [
        ("load1", {}),
        ("disk_bytes", {"mountpoint": "/data"}),
        ("load5", {}),
    ]
    assert payload == _encode_uncached("a", 1, 3, changed, 3)
    # and back
    assert encoder.encode("a", 1, 4, first, 4) == _encode_uncached("a", 1, 4, first, 4)

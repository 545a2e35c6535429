"""One collection as the bytes of an ``AgentMessage`` carrying a ``ColumnarBatch``.

The columnar form lets the platform skip decoding points one by one (docs/architecture.md); the row
form (MetricBatch) stays accepted from agents that only know the original protocol.

Written by hand in the layout protobuf itself writes (fields in number order, proto3 zero values
left out, packed values): AgentMessage.metric_columns (4) holding agent_id (1), epoch (2), sequence
(3), series (4, the SeriesSet, cached while the series stay the same), values (5, packed doubles)
and timestamps_ns (6, packed sfixed64). The cached SeriesSet also keeps its bytes identical from
batch to batch, which is what the platform's cache keys on.
"""

from __future__ import annotations

import struct

from fleetpulse.agent.collectors.sample import Sample
from fleetpulse.proto import metric_pb2, wire

SeriesKey = tuple[tuple[str, tuple[tuple[str, str], ...]], ...]


class CollectionEncoder:
    """Encodes collections; keeps the series of the last one (names and labels, in column order)
    and their encoded SeriesSet. An agent's series rarely change between collections, so a batch
    is normally the cached SeriesSet bytes plus its packed values: no protobuf object per series."""

    def __init__(self) -> None:
        self._series_key: SeriesKey | None = None
        self._series_bytes = b""

    def encode(
        self, agent_id: str, epoch: int, seq: int, samples: list[Sample], ts_ns: int
    ) -> bytes:
        key = tuple((name, tuple(labels.items())) for name, _, labels in samples)
        if key != self._series_key:
            self._series_bytes = metric_pb2.SeriesSet(
                entries=[
                    metric_pb2.SeriesDef(name=name, labels=labels) for name, _, labels in samples
                ]
            ).SerializeToString()
            self._series_key = key
        parts = []
        if agent_id:
            parts.append(wire.field_bytes(1, agent_id.encode()))
        if epoch:
            parts.append(wire.field_varint(2, epoch))
        if seq:
            parts.append(wire.field_varint(3, seq))
        parts.append(wire.field_bytes(4, self._series_bytes))  # written even when empty
        if samples:
            values = struct.pack(f"<{len(samples)}d", *[v for _, v, _ in samples])
            parts.append(wire.field_bytes(5, values))
        parts.append(wire.field_bytes(6, struct.pack("<q", ts_ns)))
        return wire.field_bytes(4, b"".join(parts))

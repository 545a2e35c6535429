"""Serialized batches for simulated hosts, at numpy speed, in both forms of the protocol.

``ColumnarEncoder`` builds ``AgentMessage{metric_columns: ColumnarBatch}`` (the form the project's
agent sends); ``BatchEncoder`` builds the original row form ``AgentMessage{metrics: MetricBatch}``
(what an agent generated from the original plan's .proto files sends).

Row form:

Simulating thousands of agents on the machine under test must cost little CPU, so batches are not
built point by point with protobuf. Each host's batch is laid out once as a template in which every
point has the same fixed-width slots: the value (a fixed64 double) and the timestamp, whose
``seconds`` and ``nanos`` varints are written in 5 bytes each (a non-minimal varint, valid protobuf
wire format that every conforming parser accepts). Per batch, numpy scatters the new values and the
new timestamp into a copy of the template; only the small header (epoch, sequence) is encoded in
Python. ``tests/unit/test_bench_encoder.py`` checks the output against protobuf's own decoding.
"""

from __future__ import annotations

import numpy as np

from fleetpulse.bench.hostseries import Series
from fleetpulse.proto import wire

_VARINT5_SHIFTS = np.array([0, 7, 14, 21, 28], dtype=np.int64)


def _varint5(value: int) -> np.ndarray:
    digits = (np.int64(value) >> _VARINT5_SHIFTS) & 0x7F
    digits[:4] |= 0x80
    return digits.astype(np.uint8)


# MetricPoint.timestamp (field 3) holding Timestamp{seconds (1): varint5, nanos (2): varint5}.
_TIMESTAMP_PREFIX = bytes([0x1A, 12, 0x08])
_TIMESTAMP_LEN = 3 + 5 + 1 + 5
_VALUE_TAG = bytes([0x11])  # MetricPoint.value, field 2, fixed64


class BatchEncoder:
    """Encodes batches of one host's fixed series set; values and timestamp change per batch."""

    def __init__(self, agent_id: str, series: list[Series]) -> None:
        self.agent_id = agent_id
        self.points = len(series)
        template = bytearray()
        value_offsets = []
        timestamp_offsets = []
        for name, labels in series:
            body = bytearray(wire.field_bytes(1, name.encode()))
            for key, value in sorted(labels.items()):
                entry = wire.field_bytes(1, key.encode()) + wire.field_bytes(2, value.encode())
                body += wire.field_bytes(4, entry)
            value_at = len(body) + 1
            body += _VALUE_TAG + bytes(8)
            timestamp_at = len(body)
            body += _TIMESTAMP_PREFIX + bytes(5) + b"\x10" + bytes(5)
            header = wire.varint((2 << 3) | 2) + wire.varint(len(body))  # MetricBatch.metrics
            base = len(template) + len(header)
            value_offsets.append(base + value_at)
            timestamp_offsets.append(base + timestamp_at)
            template += header + body
        self._template = np.frombuffer(bytes(template), dtype=np.uint8)
        self._value_index = np.asarray(value_offsets)[:, None] + np.arange(8)
        self._timestamp_index = np.asarray(timestamp_offsets)[:, None] + np.arange(_TIMESTAMP_LEN)
        self._agent_field = wire.field_bytes(1, agent_id.encode())

    def encode(self, epoch: int, sequence: int, ts_ns: int, values: np.ndarray) -> bytes:
        """One serialized AgentMessage carrying the batch (all points share the timestamp)."""
        body = self._template.copy()
        body[self._value_index] = values.astype("<f8").view(np.uint8).reshape(-1, 8)
        stamp = np.empty(_TIMESTAMP_LEN, dtype=np.uint8)
        stamp[:3] = np.frombuffer(_TIMESTAMP_PREFIX, dtype=np.uint8)
        stamp[3:8] = _varint5(ts_ns // 1_000_000_000)
        stamp[8] = 0x10
        stamp[9:] = _varint5(ts_ns % 1_000_000_000)
        body[self._timestamp_index] = stamp
        batch = b"".join(
            (
                self._agent_field,
                body.tobytes(),
                b"\x18",
                wire.varint(epoch),  # MetricBatch.epoch
                b"\x20",
                wire.varint(sequence),  # MetricBatch.sequence
            )
        )
        return b"\x1a" + wire.varint(len(batch)) + batch  # AgentMessage.metrics


class ColumnarEncoder:
    """Encodes one host's batches in the columnar form (``AgentMessage.metric_columns``).

    The series set is serialized once; per batch only the identity, the packed values and the
    timestamp are written: a few byte-string joins, no per-point work at all.
    """

    def __init__(self, agent_id: str, series: list[Series]) -> None:
        from fleetpulse.proto import metric_pb2

        self.agent_id = agent_id
        self.points = len(series)
        series_set = metric_pb2.SeriesSet(
            entries=[metric_pb2.SeriesDef(name=name, labels=labels) for name, labels in series]
        ).SerializeToString()
        self._agent_field = wire.field_bytes(1, agent_id.encode())
        self._series_field = wire.field_bytes(4, series_set)
        self._values_header = wire.varint((5 << 3) | 2) + wire.varint(8 * len(series))
        self._timestamp_header = wire.varint((6 << 3) | 2) + wire.varint(8)

    def encode(self, epoch: int, sequence: int, ts_ns: int, values: np.ndarray) -> bytes:
        batch = b"".join(
            (
                self._agent_field,
                b"\x10",
                wire.varint(epoch),  # ColumnarBatch.epoch
                b"\x18",
                wire.varint(sequence),  # ColumnarBatch.sequence
                self._series_field,
                self._values_header,
                values.astype("<f8").tobytes(),
                self._timestamp_header,
                ts_ns.to_bytes(8, "little", signed=True),
            )
        )
        return b"\x22" + wire.varint(len(batch)) + batch  # AgentMessage.metric_columns

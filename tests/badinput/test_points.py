"""Points and labels at and past every documented limit, end to end: sent by an agent on a real
stream to a real `fleetpulse ingest` process, written by the worker code into PostgreSQL.

What docs/architecture.md ("Bad data") promises, per input class and for both batch forms (rows,
the original plan's MetricBatch, and columns, the project's ColumnarBatch):

| input | outcome |
|---|---|
| NaN, +Inf, -Inf (and -0.0, subnormals, the largest double) | stored exactly |
| label value of 1,024 chars / of 5 KB | stored / point rejected, `invalid_label_value` |
| 32 labels / 1,000 labels | stored / point rejected, `too_many_labels` |
| NUL in a metric name, label name, label value | point rejected (`invalid_metric_name`, `invalid_label_name`, `invalid_label_value`) |
| NUL in the agent id or another text field of register | stream refused, INVALID_ARGUMENT |
| invalid UTF-8 in a point's or series' strings | batch rejected whole, `undecodable_batch` |
| invalid UTF-8 in the batch's agent_id, in register | stream refused, INVALID_ARGUMENT |
| timestamps 10 years back or ahead, or at int64's ends | point rejected, `timestamp_out_of_window` |
| a label key twice in one map | the last value wins (protobuf's map rule) |
| empty metric name, empty label name | point rejected (`invalid_metric_name`, `invalid_label_name`) |

Every batch is acked, the valid points of a batch are stored, every rejected point or batch is
counted per reason (`rejects`, `agent_ingest.points_rejected`, `GET /agents/{id}`), and every
acked batch ends in the ledger: none is lost or dead-lettered.
"""

from __future__ import annotations

import math
import struct
import time
from collections.abc import Iterator
from typing import Any

import grpc
import orjson
import psycopg
import pytest

from fleetpulse.ingest.worker.consumer import Worker
from fleetpulse.proto import agent_pb2, common_pb2, metric_pb2
from tests.badinput import wire
from tests.badinput.conftest import (
    RawStream,
    assert_delivered,
    assert_documented_end,
    queued_identities,
)
from tests.integration.conftest import TOKEN
from tests.integration.test_edge import Edge
from tests.integration.test_frontend import register

pytestmark = pytest.mark.integration

YEAR_S = 365 * 86_400
INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)

Labels = dict[str, str]


def _now_s() -> int:
    return int(time.time())


def row_point(name: str, value: float = 1.0, labels: Labels | None = None, ts_s: int = 0) -> bytes:
    """One MetricPoint, encoded (so that tests can also build the ones no library would)."""
    return metric_pb2.MetricPoint(
        name=name,
        value=value,
        labels=labels or {},
        timestamp=common_pb2.Timestamp(seconds=ts_s or _now_s()),
    ).SerializeToString()


def rows(sequence: int, *points: bytes, epoch: int = 1) -> bytes:
    """An AgentMessage carrying a MetricBatch of already encoded points."""
    batch = (
        wire.field_varint(3, epoch)
        + wire.field_varint(4, sequence)
        + b"".join(wire.field_bytes(2, p) for p in points)
    )
    return wire.field_bytes(3, batch)


def series_def(name: str, labels: Labels | None = None) -> bytes:
    return metric_pb2.SeriesDef(name=name, labels=labels or {}).SerializeToString()


def columns(
    sequence: int,
    series: list[bytes],
    values: list[float],
    timestamps_ns: list[int] | None = None,
    epoch: int = 2,
) -> bytes:
    """An AgentMessage carrying a ColumnarBatch of already encoded series (one timestamp, now,
    unless given)."""
    stamps = timestamps_ns if timestamps_ns is not None else [time.time_ns()]
    packed_values = b"".join(struct.pack("<d", v) for v in values)
    packed_stamps = b"".join(struct.pack("<q", t) for t in stamps)
    batch = (
        wire.field_varint(2, epoch)
        + wire.field_varint(3, sequence)
        + wire.field_bytes(4, b"".join(wire.field_bytes(1, s) for s in series))
        + wire.field_bytes(5, packed_values)
        + wire.field_bytes(6, packed_stamps)
    )
    return wire.field_bytes(4, batch)


def send_accepted(edge: Edge, agent: str, *batches: bytes) -> None:
    """Register as ``agent`` and send ``batches``: each must be acked as accepted (queued).

    As an agent of the original protocol (no credential issued), so that a test may send as the
    same agent again with the enrollment token: the token cannot register an id that was issued
    a credential (ingest/credentials.py)."""
    stream = RawStream(edge.address, TOKEN)
    stream.send(register(agent, protocol=0), *batches)
    acks = [stream.wait_for("metric_ack") for _ in batches]
    stream.close()
    assert all(a is not None and a.success for a in acks), (acks, stream.details())  # type: ignore[attr-defined]


def refused(edge: Edge, *messages: bytes) -> RawStream:
    stream = RawStream(edge.address, TOKEN)
    stream.send(*messages)
    stream.wait_end()
    stream.close()
    assert_documented_end(stream)
    return stream


def stored(database_url: str, agent_id: str) -> dict[tuple[str, str], list[float]]:
    """Values per (name, labels as canonical JSON), in time order."""
    with psycopg.connect(database_url) as conn:
        found = conn.execute(
            "SELECT s.name, s.labels::text, array_agg(p.value ORDER BY p.ts)"
            " FROM series s JOIN all_points p USING (series_id) WHERE s.agent_id = %s"
            " GROUP BY 1, 2",
            (agent_id,),
        ).fetchall()
    return {(name, _canonical(labels)): values for name, labels, values in found}


def _canonical(labels: str | Labels) -> str:
    parsed = orjson.loads(labels) if isinstance(labels, str) else labels
    return orjson.dumps(parsed, option=orjson.OPT_SORT_KEYS).decode()


def key(name: str, labels: Labels | None = None) -> tuple[str, str]:
    return (name, _canonical(labels or {}))


def rejects(database_url: str, agent_id: str) -> dict[str, tuple[int, int]]:
    """(batches, points) rejected per reason."""
    with psycopg.connect(database_url) as conn:
        found = conn.execute(
            "SELECT reason, batches, points FROM rejects WHERE agent_id = %s", (agent_id,)
        ).fetchall()
    return {reason: (batches, points) for reason, batches, points in found}


def accounting(database_url: str, agent_id: str) -> tuple[int, int, int] | None:
    with psycopg.connect(database_url) as conn:
        return conn.execute(
            "SELECT batches_committed, points_committed, points_rejected FROM agent_ingest"
            " WHERE agent_id = %s",
            (agent_id,),
        ).fetchone()


@pytest.fixture
def deliver(edge: Edge, worker: Worker) -> Iterator[Any]:
    """Call to write what was queued; after the test, nothing acked may be missing."""

    def run() -> int:
        return assert_delivered(edge.redis, edge.database_url, worker)

    yield run
    run()


def test_nan_and_infinities_are_stored_exactly(edge: Edge, agent: str, deliver: Any) -> None:
    specials = [math.nan, math.inf, -math.inf, -0.0, 5e-324, 1.7976931348623157e308]
    send_accepted(
        edge,
        agent,
        rows(1, *(row_point(f"r{i}", v) for i, v in enumerate(specials))),
        columns(1, [series_def(f"c{i}") for i in range(len(specials))], specials),
    )
    assert deliver() == 2
    found = stored(edge.database_url, agent)
    for prefix in ("r", "c"):
        got = [found[key(f"{prefix}{i}")] for i in range(len(specials))]
        assert all(len(values) == 1 for values in got)
        for value, (stored_value,) in zip(specials, got, strict=True):
            # bit for bit: NaN is NaN, -0.0 keeps its sign, the extremes are not rounded
            assert struct.pack("<d", stored_value) == struct.pack("<d", value) or (
                math.isnan(value) and math.isnan(stored_value)
            ), (prefix, value, stored_value)
    assert accounting(edge.database_url, agent) == (2, 12, 0)
    assert rejects(edge.database_url, agent) == {}


def test_label_values_past_1024_chars_are_rejected_and_counted(
    edge: Edge, agent: str, deliver: Any
) -> None:
    longest, too_long = "v" * 1024, "w" * 5 * 1024
    send_accepted(
        edge,
        agent,
        rows(
            1,
            row_point("ok", 1.0, {"path": longest}),
            row_point("big", 2.0, {"path": too_long}),
            row_point("plain", 3.0),
        ),
        columns(
            1,
            [series_def("ok", {"path": longest}), series_def("big", {"path": too_long})],
            [4.0, 5.0],
        ),
    )
    deliver()
    assert stored(edge.database_url, agent) == {
        key("ok", {"path": longest}): [1.0, 4.0],
        key("plain"): [3.0],
    }
    assert rejects(edge.database_url, agent) == {"invalid_label_value": (0, 2)}
    assert accounting(edge.database_url, agent) == (2, 3, 2)


def test_more_than_32_labels_are_rejected_and_counted(edge: Edge, agent: str, deliver: Any) -> None:
    most = {f"l{i}": str(i) for i in range(32)}
    thousand = {f"l{i}": str(i) for i in range(1000)}
    send_accepted(
        edge,
        agent,
        rows(1, row_point("most", 1.0, most), row_point("many", 2.0, thousand)),
        columns(1, [series_def("most", most), series_def("many", thousand)], [3.0, 4.0]),
    )
    deliver()
    assert stored(edge.database_url, agent) == {key("most", most): [1.0, 3.0]}
    assert rejects(edge.database_url, agent) == {"too_many_labels": (0, 2)}
    assert accounting(edge.database_url, agent) == (2, 2, 2)


def test_nul_bytes_in_names_and_labels_are_rejected_and_counted(
    edge: Edge, agent: str, deliver: Any
) -> None:
    bad = [
        ("cpu\x00idle", {}),  # metric name
        ("cpu", {"mo\x00de": "idle"}),  # label name
        ("cpu", {"mode": "id\x00le"}),  # label value
        ("cpu", {"mode": "\x00"}),
    ]
    send_accepted(
        edge,
        agent,
        rows(
            1,
            row_point("cpu", 1.0, {"mode": "user"}),
            *(row_point(name, 2.0, labels) for name, labels in bad),
        ),
        columns(
            1,
            [
                series_def("cpu", {"mode": "user"}),
                *(series_def(name, labels) for name, labels in bad),
            ],
            [3.0, 4.0, 4.0, 4.0, 4.0],
        ),
    )
    deliver()
    assert stored(edge.database_url, agent) == {key("cpu", {"mode": "user"}): [1.0, 3.0]}
    assert rejects(edge.database_url, agent) == {
        "invalid_metric_name": (0, 2),
        "invalid_label_name": (0, 2),
        "invalid_label_value": (0, 4),
    }
    assert accounting(edge.database_url, agent) == (2, 2, 8)


@pytest.mark.parametrize("field", ["agent_id", "hostname", "ip", "os", "arch", "version"])
def test_nul_in_register_is_refused_and_writes_nothing(edge: Edge, agent: str, field: str) -> None:
    message = register(agent, "machine")
    setattr(message.register, field, "bad\x00value")
    stream = refused(edge, message.SerializeToString())
    assert stream.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in stream.details() and "NUL" in stream.details()
    with psycopg.connect(edge.database_url) as conn:
        found = conn.execute("SELECT count(*) FROM agents WHERE agent_id = %s", (agent,))
        assert found.fetchone() == (0,)


# Invalid UTF-8: a lone continuation byte, a truncated sequence, an encoded surrogate, an
# over-long encoding, bytes that never occur in UTF-8.
INVALID_UTF8 = [b"\x80", b"caf\xc3", b"\xed\xa0\x80", b"\xc0\x80", b"\xff\xfe"]


def _raw_point(name: bytes, label_key: bytes = b"mode", label_value: bytes = b"user") -> bytes:
    stamp = common_pb2.Timestamp(seconds=_now_s()).SerializeToString()
    return (
        wire.field_bytes(1, name)
        + wire.tag(2, wire.WIRE_I64)
        + struct.pack("<d", 1.0)
        + wire.field_bytes(3, stamp)
        + wire.map_entry(4, label_key, label_value)
    )


def _raw_series(name: bytes, label_key: bytes = b"mode", label_value: bytes = b"user") -> bytes:
    return wire.field_bytes(1, name) + wire.map_entry(2, label_key, label_value)


def test_invalid_utf8_in_points_rejects_the_batch_as_undecodable(
    edge: Edge, agent: str, deliver: Any
) -> None:
    batches = []
    for raw in INVALID_UTF8:
        for where in ("name", "key", "value"):
            parts = {"name": b"cpu", "label_key": b"mode", "label_value": b"user"}
            parts["name" if where == "name" else f"label_{where}"] = raw
            batches.append(rows(len(batches) + 1, _raw_point(**parts), row_point("good")))
            batches.append(columns(len(batches) + 1, [_raw_series(**parts)], [1.0]))
    valid = rows(len(batches) + 1, row_point("cpu", 5.0, {"mode": "user"}))
    send_accepted(edge, agent, *batches, valid)  # the front-end never decodes points
    assert deliver() == len(batches) + 1
    # each bad batch rejected whole (its valid point too), the valid batch of the chunk stored
    assert rejects(edge.database_url, agent) == {"undecodable_batch": (len(batches), 0)}
    assert stored(edge.database_url, agent) == {key("cpu", {"mode": "user"}): [5.0]}
    with psycopg.connect(edge.database_url) as conn:
        ledger = conn.execute(
            "SELECT count(*), sum(points) FROM batches WHERE agent_id = %s", (agent,)
        ).fetchone()
    assert ledger == (len(batches) + 1, 1)


@pytest.mark.parametrize("raw", INVALID_UTF8)
def test_invalid_utf8_in_identity_or_register_is_refused(
    edge: Edge, agent: str, raw: bytes
) -> None:
    register_bytes = register(agent).register.SerializeToString()
    bad_register = wire.field_bytes(1, register_bytes + wire.field_bytes(2, b"host" + raw))
    stream = refused(edge, bad_register)
    assert (stream.code(), stream.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "register does not decode",
    )
    batch = wire.field_bytes(1, agent.encode() + raw) + wire.field_bytes(2, row_point("cpu"))
    stream = refused(edge, register(agent).SerializeToString(), wire.field_bytes(3, batch))
    assert stream.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "MetricBatch does not decode" in stream.details()
    assert queued_identities(edge.redis) == []  # nothing queued


def test_timestamps_outside_the_window_are_rejected_and_counted(
    edge: Edge, agent: str, deliver: Any
) -> None:
    now_s = _now_s()
    far = [now_s - 10 * YEAR_S, now_s + 10 * YEAR_S, INT64_MAX, INT64_MIN, INT64_MIN + 1]
    far_ns = [(now_s - 10 * YEAR_S) * 10**9, (now_s + 10 * YEAR_S) * 10**9, INT64_MAX, INT64_MIN]
    send_accepted(
        edge,
        agent,
        rows(1, row_point("load1", 1.0, ts_s=now_s), *(row_point("load1", 9.0, ts_s=t) for t in far)),
        columns(1, [series_def("load5")], [2.0, *([9.0] * len(far_ns))], [time.time_ns(), *far_ns]),
    )  # fmt: skip
    assert deliver() == 2  # none dead-lettered: int64's ends included
    assert stored(edge.database_url, agent) == {key("load1"): [1.0], key("load5"): [2.0]}
    assert rejects(edge.database_url, agent) == {
        "timestamp_out_of_window": (0, len(far) + len(far_ns))
    }
    assert accounting(edge.database_url, agent) == (2, 2, len(far) + len(far_ns))


def test_a_label_key_given_twice_keeps_the_last_value(edge: Edge, agent: str, deliver: Any) -> None:
    def twice(number: int) -> bytes:
        return wire.map_entry(number, b"mode", b"user") + wire.map_entry(number, b"mode", b"system")

    point = (
        wire.field_bytes(1, b"cpu")
        + wire.tag(2, wire.WIRE_I64)
        + struct.pack("<d", 1.0)
        + wire.field_bytes(3, common_pb2.Timestamp(seconds=_now_s()).SerializeToString())
        + twice(4)  # MetricPoint.labels
    )
    series = wire.field_bytes(1, b"mem") + twice(2)  # SeriesDef.labels
    send_accepted(edge, agent, rows(1, point), columns(1, [series], [2.0]))
    deliver()
    assert stored(edge.database_url, agent) == {
        key("cpu", {"mode": "system"}): [1.0],
        key("mem", {"mode": "system"}): [2.0],
    }
    assert rejects(edge.database_url, agent) == {}


def test_empty_metric_and_label_names_are_rejected_and_counted(
    edge: Edge, agent: str, deliver: Any
) -> None:
    send_accepted(
        edge,
        agent,
        rows(1, row_point("", 1.0), row_point("cpu", 2.0, {"": "x"}), row_point("cpu", 3.0)),
        columns(1, [series_def(""), series_def("cpu", {"": "x"}), series_def("mem")], [4.0, 5.0, 6.0]),
    )  # fmt: skip
    deliver()
    assert stored(edge.database_url, agent) == {key("cpu"): [3.0], key("mem"): [6.0]}
    assert rejects(edge.database_url, agent) == {
        "invalid_metric_name": (0, 2),
        "invalid_label_name": (0, 2),
    }


def test_rejections_are_visible_in_the_api(edge: Edge, agent: str, deliver: Any) -> None:
    from fastapi.testclient import TestClient

    from fleetpulse.api.app import create_app
    from fleetpulse.settings import Settings

    send_accepted(
        edge,
        agent,
        rows(1, row_point("ok"), row_point(""), row_point("x", labels={"k": "v" * 5000})),
        rows(2, _raw_point(b"\xff")),
    )
    deliver()
    with TestClient(create_app(Settings(database_url=edge.database_url, api_open=True))) as api:
        detail = api.get(f"/agents/{agent}").json()
    assert detail["points_committed"] == 1 and detail["points_rejected"] == 2
    assert detail["rejected_by_reason"] == {
        "invalid_metric_name": 1,
        "invalid_label_value": 1,
        "undecodable_batch": 0,
    }


def test_out_of_range_batch_identity_is_refused_for_good(edge: Edge, agent: str) -> None:
    """An epoch or sequence the ledger (bigint) cannot hold: refused in its ack, never queued
    (it would otherwise fail in every worker and end dead-lettered)."""
    stream = RawStream(edge.address, TOKEN)
    batch = metric_pb2.MetricBatch(
        epoch=2**63, sequence=1, metrics=[metric_pb2.MetricPoint(name="cpu", value=1.0)]
    )
    stream.send(register(agent), agent_pb2.AgentMessage(metrics=batch))
    ack = stream.wait_for("metric_ack")
    stream.close()
    assert ack is not None and (ack.success, ack.retry_after_ms) == (False, 0)  # type: ignore[attr-defined]
    assert ack.error == "INVALID_ARGUMENT: epoch and sequence must be below 2^63"  # type: ignore[attr-defined]
    assert queued_identities(edge.redis) == []


@pytest.mark.parametrize(
    ("tags", "problem"),
    [
        ({"os": "linux"}, "one of the agent's own fields"),
        ({"bad-key": "x"}, "must be a label name"),
        ({"env": "x" * 257}, "at most 256 characters"),
    ],
)
def test_a_register_with_tags_that_are_not_tags_is_refused(
    edge: Edge, agent: str, tags: dict[str, str], problem: str
) -> None:
    message = register(agent)
    message.register.tags.update(tags)
    stream = refused(edge, message.SerializeToString())
    assert stream.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert stream.details().startswith("register: ") and problem in stream.details()
    with psycopg.connect(edge.database_url) as conn:
        row = conn.execute("SELECT 1 FROM agents WHERE agent_id = %s", (agent,)).fetchone()
    assert row is None  # refused before anything was stored

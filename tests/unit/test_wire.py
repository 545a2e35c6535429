"""The wire contract: generated code is fresh, the original plan's protocol is intact."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

from fleetpulse.proto import agent_pb2, common_pb2, edge_pb2, metric_pb2
from fleetpulse.proto.generate import main as generate_main


def test_generated_code_is_not_stale() -> None:
    assert generate_main(["--check"]) == 0, "run: python -m fleetpulse.proto.generate"


def test_generated_code_is_not_importable_as_bare_proto_package(repo_root: Path) -> None:
    # from anywhere but the repository root (where the folder itself is visible), `proto` is not ours
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import importlib.util as u; s = u.find_spec('proto'); print(s and s.origin)",
        ],
        capture_output=True,
        text=True,
        cwd="/",
        check=True,
    )
    assert "fleetpulse" not in result.stdout and str(repo_root) not in result.stdout


def _origin_descriptors(origin_dir: Path, tmp_path: Path) -> descriptor_pb2.FileDescriptorSet:
    out = tmp_path / "origin.pb"
    from grpc_tools import protoc

    assert (
        protoc.main(
            [
                "protoc",
                f"-I{origin_dir}",
                f"--descriptor_set_out={out}",
                *(str(p) for p in sorted((origin_dir / "proto").glob("*.proto"))),
            ]
        )
        == 0
    )
    return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def test_every_original_message_field_and_method_is_unchanged(
    repo_root: Path, tmp_path: Path
) -> None:
    origin = _origin_descriptors(repo_root / "tests" / "origin_proto", tmp_path)
    ours = {
        m.DESCRIPTOR.full_name: m.DESCRIPTOR
        for m in (
            common_pb2.Timestamp,
            common_pb2.Response,
            agent_pb2.AgentRegister,
            agent_pb2.Heartbeat,
            agent_pb2.ServerMessage,
            agent_pb2.AgentMessage,
            metric_pb2.MetricPoint,
            metric_pb2.MetricBatch,
        )
    }
    checked = 0
    for file in origin.file:
        assert file.package == "proto"
        for message in file.message_type:
            mine = ours[f"proto.{message.name}"]
            for field in message.field:
                f = mine.fields_by_number[field.number]
                repeated = field.label == descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
                assert (f.name, f.type, f.is_repeated) == (field.name, field.type, repeated), (
                    message.name,
                    field.name,
                )
                if field.HasField("oneof_index"):
                    oneof = message.oneof_decl[field.oneof_index].name
                    assert f.containing_oneof is not None and f.containing_oneof.name == oneof
                checked += 1
        for service in file.service:
            ours_service = agent_pb2.DESCRIPTOR.services_by_name[service.name]
            assert ours_service.full_name == "proto.AgentService"
            for method in service.method:
                m = ours_service.methods_by_name[method.name]
                assert m.input_type.full_name == "proto.AgentMessage"
                assert m.output_type.full_name == "proto.ServerMessage"
    assert checked >= 17


def test_fixed_extensions() -> None:
    assert agent_pb2.AgentMessage.DESCRIPTOR.fields_by_name["metrics"].number == 3
    assert (
        agent_pb2.AgentMessage.DESCRIPTOR.fields_by_name["metrics"].message_type.full_name
        == "proto.MetricBatch"
    )
    assert agent_pb2.ServerMessage.DESCRIPTOR.fields_by_name["metric_ack"].number == 3


def test_metric_ack_reads_as_a_response() -> None:
    ack = agent_pb2.MetricAck(
        success=True, message="accepted", error="", epoch=5, sequence=9, points=3
    )
    as_response = common_pb2.Response.FromString(ack.SerializeToString())
    assert (as_response.success, as_response.message) == (True, "accepted")


@pytest.mark.parametrize(
    ("envelope_case", "payload"),
    [
        (
            "register",
            agent_pb2.AgentMessage(register=agent_pb2.AgentRegister(agent_id="a", hostname="h")),
        ),
        ("heartbeat", agent_pb2.AgentMessage(heartbeat=agent_pb2.Heartbeat(agent_id="a"))),
        (
            "metrics",
            agent_pb2.AgentMessage(
                metrics=metric_pb2.MetricBatch(
                    agent_id="a",
                    epoch=7,
                    sequence=8,
                    metrics=[metric_pb2.MetricPoint(name="x", value=1.5, labels={"k": "v"})],
                )
            ),
        ),
    ],
)
def test_edge_views_match_the_public_messages(
    envelope_case: str, payload: agent_pb2.AgentMessage
) -> None:
    raw = payload.SerializeToString()
    envelope = edge_pb2.AgentEnvelope.FromString(raw)
    assert envelope.WhichOneof("message") == envelope_case
    inner = getattr(envelope, envelope_case)
    assert inner == getattr(payload, envelope_case).SerializeToString()
    if envelope_case == "metrics":
        header = edge_pb2.BatchHeader.FromString(inner)
        assert (header.agent_id, header.epoch, header.sequence) == ("a", 7, 8)


def test_columnar_view_matches_columnar_batch() -> None:
    view = edge_pb2.ColumnarView.DESCRIPTOR.fields_by_name
    header = edge_pb2.ColumnarHeader.DESCRIPTOR.fields_by_name
    batch = metric_pb2.ColumnarBatch.DESCRIPTOR.fields_by_name
    assert {n: f.number for n, f in view.items()} == {n: f.number for n, f in batch.items()}
    assert {n: f.number for n, f in header.items()} == {n: batch[n].number for n in header}
    # fixed-width packed fields: the view reads them as raw little-endian bytes
    assert batch["values"].type == batch["values"].TYPE_DOUBLE
    assert batch["timestamps_ns"].type == batch["timestamps_ns"].TYPE_SFIXED64
    assert agent_pb2.AgentMessage.DESCRIPTOR.fields_by_name["metric_columns"].number == 4


def test_edge_field_numbers_match() -> None:
    envelope = edge_pb2.AgentEnvelope.DESCRIPTOR.fields_by_name
    public = agent_pb2.AgentMessage.DESCRIPTOR.fields_by_name
    assert {n: envelope[n].number for n in envelope} == {n: public[n].number for n in public}
    header = edge_pb2.BatchHeader.DESCRIPTOR.fields_by_name
    batch = metric_pb2.MetricBatch.DESCRIPTOR.fields_by_name
    for name, field in header.items():
        assert batch[name].number == field.number
        # a sub-message may be viewed as bytes: both are length-delimited on the wire
        assert batch[name].type == field.type or (
            field.type == field.TYPE_BYTES and batch[name].type == field.TYPE_MESSAGE
        )


def test_grpc_tools_is_the_pinned_version() -> None:
    # The stale check compares against what this exact grpcio-tools emits.
    spec = importlib.util.find_spec("grpc_tools")
    assert spec is not None
    from importlib.metadata import version

    assert version("grpcio-tools") == "1.85.1"


@pytest.mark.parametrize("value", [1, 127, 128, 300, 16383, 16384, 2**32, 2**63 - 1])
def test_hand_written_fields_are_what_protobuf_writes(value: int) -> None:
    from fleetpulse.proto import wire

    assert wire.varint(0) == b"\x00"
    assert wire.field_varint(2, value) == edge_pb2.ColumnarView(epoch=value).SerializeToString()
    payload = b"x" * min(value, 20_000)
    expected = edge_pb2.ColumnarView(series=payload).SerializeToString()
    assert wire.field_bytes(4, payload) == expected

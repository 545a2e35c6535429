"""The ingest front-end as a real process, against real Redis and PostgreSQL."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import psycopg
import pytest

from fleetpulse.ingest import keys
from fleetpulse.proto import agent_pb2, agent_pb2_grpc, common_pb2, metric_pb2
from tests.integration.conftest import TOKEN, Ingest
from tests.origin_agent import run_origin_agent


def register(agent_id: str, machine_id: str = "", protocol: int = 1) -> agent_pb2.AgentMessage:
    return agent_pb2.AgentMessage(
        register=agent_pb2.AgentRegister(
            agent_id=agent_id,
            hostname="h",
            os="linux",
            arch="x86_64",
            version="t",
            machine_id=machine_id,
            protocol=protocol,
        )
    )


def heartbeat(agent_id: str = "") -> agent_pb2.AgentMessage:
    return agent_pb2.AgentMessage(
        heartbeat=agent_pb2.Heartbeat(
            agent_id=agent_id, timestamp=common_pb2.Timestamp(seconds=int(time.time()))
        )
    )


def metrics(agent_id: str, seq: int, points: int = 3) -> agent_pb2.AgentMessage:
    now = common_pb2.Timestamp(seconds=int(time.time()))
    return agent_pb2.AgentMessage(
        metrics=metric_pb2.MetricBatch(
            agent_id=agent_id,
            epoch=99,
            sequence=seq,
            metrics=[
                metric_pb2.MetricPoint(name="load1", value=float(i), timestamp=now)
                for i in range(points)
            ],
        )
    )


def exchange(
    address: str, messages: list, token: str | None = TOKEN
) -> tuple[list, grpc.RpcError | None]:
    """Send messages on one stream; return the responses and the final error, if any."""
    metadata = (("authorization", f"Bearer {token}"),) if token is not None else ()
    with grpc.insecure_channel(address) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        responses = []
        try:
            for response in stub.Connect(iter(messages), metadata=metadata, timeout=10):
                responses.append(response)
        except grpc.RpcError as exc:
            return responses, exc
    return responses, None


def queued(ingest: Ingest) -> int:
    return sum(ingest.redis.xlen(keys.stream_key(shard)) for shard in range(2))


def test_register_heartbeat_metrics_are_answered_and_queued(ingest: Ingest) -> None:
    responses, error = exchange(
        ingest.address, [register("fe-1"), heartbeat("fe-1"), metrics("fe-1", 1), metrics("", 2)]
    )
    assert error is None
    kinds = [r.WhichOneof("message") for r in responses]
    assert kinds == ["register_response", "credential", "heartbeat_ack", "metric_ack", "metric_ack"]
    assert responses[0].register_response.success
    assert responses[1].credential.agent_id == "fe-1"
    assert responses[1].credential.token.startswith("fpa_")
    acks = [r.metric_ack for r in responses[3:]]
    assert [(a.success, a.epoch, a.sequence) for a in acks] == [(True, 99, 1), (True, 99, 2)]
    assert queued(ingest) == 2  # acked means XADDed
    with psycopg.connect(ingest.database_url) as conn:
        row = conn.execute("SELECT hostname, os, ip FROM agents WHERE agent_id = 'fe-1'").fetchone()
    assert row == ("h", "linux", "127.0.0.1")  # ip taken from the peer when the agent sends none
    # the stream closed: the agent is marked offline at once
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with psycopg.connect(ingest.database_url) as conn:
            status = conn.execute(
                "SELECT status, last_heartbeat IS NOT NULL FROM agents WHERE agent_id='fe-1'"
            ).fetchone()
        if status[0] == "offline":
            break
        time.sleep(0.1)
    assert status == ("offline", True)


def test_columnar_batches_are_acked_and_queued_with_their_form(ingest: Ingest) -> None:
    columns = agent_pb2.AgentMessage(
        metric_columns=metric_pb2.ColumnarBatch(
            agent_id="fe-c",
            epoch=3,
            sequence=1,
            values=[1.0],
            timestamps_ns=[time.time_ns()],
            series=metric_pb2.SeriesSet(entries=[metric_pb2.SeriesDef(name="load1")]),
        )
    )
    responses, error = exchange(ingest.address, [register("fe-c"), columns])
    assert error is None
    ack = responses[2].metric_ack
    assert (ack.success, ack.epoch, ack.sequence) == (True, 3, 1)
    entries = [e for shard in range(2) for e in ingest.redis.xrange(keys.stream_key(shard))]
    assert [fields[keys.FIELD_FORM] for _, fields in entries] == [keys.FORM_COLUMNS]
    spoofed = agent_pb2.AgentMessage(
        metric_columns=metric_pb2.ColumnarBatch(agent_id="other", sequence=2)
    )
    _, error = exchange(ingest.address, [register("fe-c"), spoofed])
    assert error is not None and error.code() == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize(
    ("token", "messages", "code"),
    [
        (None, [register("x")], grpc.StatusCode.UNAUTHENTICATED),
        ("wrong-token", [register("x")], grpc.StatusCode.UNAUTHENTICATED),
        (TOKEN, [heartbeat("x")], grpc.StatusCode.FAILED_PRECONDITION),
        (TOKEN, [metrics("x", 1)], grpc.StatusCode.FAILED_PRECONDITION),
        (TOKEN, [register("")], grpc.StatusCode.INVALID_ARGUMENT),
        (TOKEN, [agent_pb2.AgentMessage()], grpc.StatusCode.INVALID_ARGUMENT),
        (TOKEN, [register("me"), metrics("someone-else", 1)], grpc.StatusCode.PERMISSION_DENIED),
        (TOKEN, [register("me"), heartbeat("someone-else")], grpc.StatusCode.PERMISSION_DENIED),
        (TOKEN, [register("me"), register("other")], grpc.StatusCode.PERMISSION_DENIED),
    ],
    ids=[
        "no-token",
        "wrong-token",
        "heartbeat-first",
        "metrics-first",
        "empty-id",
        "empty-message",
        "spoofed-batch",
        "spoofed-heartbeat",
        "re-register-as-other",
    ],
)
def test_protocol_errors_get_their_status_and_queue_nothing(
    ingest: Ingest, token: str | None, messages: list, code: grpc.StatusCode
) -> None:
    _, error = exchange(ingest.address, messages, token=token)
    assert error is not None and error.code() == code, error
    assert error.details()  # a one-line reason
    assert queued(ingest) == 0


def test_undecodable_bytes_are_invalid_argument(ingest: Ingest) -> None:
    with grpc.insecure_channel(ingest.address) as channel:
        raw = channel.stream_stream(
            "/proto.AgentService/Connect", request_serializer=None, response_deserializer=None
        )
        with pytest.raises(grpc.RpcError) as info:
            list(
                raw(
                    iter([b"\xff\xff\xff\xff"]),
                    metadata=(("authorization", f"Bearer {TOKEN}"),),
                    timeout=10,
                )
            )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_agent_generated_from_the_original_protos_alone(
    ingest: Ingest, repo_root: Path, tmp_path: Path
) -> None:
    """Wire compatibility: code generated from the original plan's three .proto files, no project code."""
    result = run_origin_agent(repo_root, ingest.address, TOKEN, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "register_response:True",
        "heartbeat_ack:True",
        "heartbeat_ack:True",
    ]
    with psycopg.connect(ingest.database_url) as conn:
        assert conn.execute(
            "SELECT hostname FROM agents WHERE agent_id = 'agent-001'"
        ).fetchone() == ("origin-host",)

"""What the front-end sends an agent (``ServerMessage``), serialized once here.

Responses leave the stream as bytes (the server has no response serializer): the frequent ones
are built once at import.
"""

from __future__ import annotations

from collections.abc import Iterable

from fleetpulse import errors
from fleetpulse.ingest.frontend import status
from fleetpulse.proto import agent_pb2, common_pb2

REGISTERED = agent_pb2.ServerMessage(
    register_response=common_pb2.Response(success=True, message="registered")
).SerializeToString()
HEARTBEAT_ACK = agent_pb2.ServerMessage(
    heartbeat_ack=common_pb2.Response(success=True, message="ok")
).SerializeToString()


def accepted(epoch: int, sequence: int, note: str | None = None) -> bytes:
    """The ack of a batch that is durably queued; ``note``: what the agent should know (its new
    series past its budget are refused, budgets.py)."""
    message = f"accepted; {note}" if note else "accepted"
    return agent_pb2.ServerMessage(
        metric_ack=agent_pb2.MetricAck(
            success=True, message=message, epoch=epoch, sequence=sequence
        )
    ).SerializeToString()


def refusal(epoch: int, sequence: int, error: errors.FleetpulseError) -> bytes:
    """A batch not taken: the agent keeps it (retryable, after ``retry_after_ms``) or drops it."""
    return agent_pb2.ServerMessage(
        metric_ack=agent_pb2.MetricAck(
            success=False,
            message="not accepted",
            error=f"{status.code(error).name}: {error.message}",
            epoch=epoch,
            sequence=sequence,
            retry_after_ms=status.retry_after_ms(error),
        )
    ).SerializeToString()


def credential(agent_id: str, token: str) -> bytes:
    return agent_pb2.ServerMessage(
        credential=agent_pb2.Credential(agent_id=agent_id, token=token)
    ).SerializeToString()


def committed(epoch: int, ranges: Iterable[tuple[int, int]]) -> bytes:
    return agent_pb2.ServerMessage(
        committed=agent_pb2.Committed(
            epoch=epoch,
            ranges=[agent_pb2.SequenceRange(first=a, last=b) for a, b in ranges],
        )
    ).SerializeToString()

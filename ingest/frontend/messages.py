"""Reading an agent's messages at the edge: the views that decode them, and the checks of the
fields that the front-end itself stores or relies on.

A batch is never parsed here: its ``BatchForm`` names the edge view (edge.proto) that reads its
identity without the points, and the bytes go to the queue untouched (docs/architecture.md, "Hot
path"). Every failed check raises ``errors.BadInput`` (or ``Forbidden`` for a foreign identity)
with a one-line message that names the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError

from fleetpulse import errors
from fleetpulse.agent import tags
from fleetpulse.ingest import keys
from fleetpulse.ingest.frontend import selfmetrics
from fleetpulse.proto import edge_pb2, metric_pb2

# Limits of the PostgreSQL columns that agent-sent numbers land in (bigint, integer).
MAX_BIGINT = 2**63 - 1
MAX_INTEGER = 2**31 - 1
MAX_AGENT_ID = 256
# Text fields of AgentRegister stored in the agents table (agent_id is checked on its own).
REGISTER_TEXT = ("hostname", "ip", "os", "arch", "version", "machine_id")


@dataclass(frozen=True)
class BatchForm:
    name: str
    header: Any  # the edge view that reads the identity without the points
    code: bytes  # how the worker tells the forms apart (keys.FIELD_FORM)


# The AgentMessage cases that carry a batch, and how each is handled.
BATCH_FORMS = {
    "metrics": BatchForm("MetricBatch", edge_pb2.BatchHeader, keys.FORM_ROWS),
    "metric_columns": BatchForm("ColumnarBatch", edge_pb2.ColumnarHeader, keys.FORM_COLUMNS),
}


def decode(message_type: Any, payload: bytes, what: str) -> Any:
    try:
        return message_type.FromString(payload)
    except DecodeError:
        raise errors.BadInput(f"{what} does not decode") from None


def refuse_nul(what: str, message: Any, names: tuple[str, ...]) -> None:
    """PostgreSQL text cannot hold NUL: such a field is bad input, not an internal error."""
    for name in names:
        value = getattr(message, name)
        if any("\x00" in text for text in ([value] if isinstance(value, str) else value)):
            raise errors.BadInput(f"{what}: {name} contains NUL")


def check_agent_id(agent_id: str) -> None:
    if "\x00" in agent_id or len(agent_id) > MAX_AGENT_ID:
        raise errors.BadInput(
            f"register: agent_id must be at most {MAX_AGENT_ID} characters, without NUL"
        )


def check_tags(register: Any) -> None:
    """The register's tags (agent.tags) follow agent/tags.py's rules, as its config did."""
    try:
        tags.check(register.tags)
    except ValueError as exc:
        raise errors.BadInput(f"register: {exc}") from None


def check_identity(agent_id: str, claimed: str) -> None:
    # An empty agent_id in a payload is fine: identity comes from the stream, not the payload.
    if claimed and claimed != agent_id:
        raise errors.Forbidden(
            f"payload agent_id {claimed!r} differs from the stream's identity {agent_id!r}"
        )


def check_settings_status(status: Any) -> None:
    refuse_nul("settings_status", status, ("error", "collectors"))
    if (
        status.version > MAX_BIGINT
        or status.collect_interval_ms > MAX_INTEGER
        or status.heartbeat_interval_ms > MAX_INTEGER
    ):
        raise errors.BadInput(
            "settings_status: version must be below 2^63 and intervals below 2^31 ms"
        )


def batch_problem(header: Any, case: str, batch: bytes) -> errors.BadInput | None:
    """Why a batch is refused for good (counted), or None. Not a stream's end: the agent drops it."""
    if _is_empty(header, case, batch):
        selfmetrics.REJECTS.labels("empty_batch").inc()
        return errors.BadInput("empty batch (no points)")
    if header.epoch > MAX_BIGINT or header.sequence > MAX_BIGINT:
        # The ledger could not name it (bigint): refused for good rather than dead-lettered.
        selfmetrics.REJECTS.labels("invalid_identity").inc()
        return errors.BadInput("epoch and sequence must be below 2^63")
    return None


def _is_empty(header: Any, case: str, batch: bytes) -> bool:
    if case == "metric_columns":
        if header.values:
            return False
        try:  # unpacked values (or none at all): the full parse tells
            return not metric_pb2.ColumnarBatch.FromString(batch).values
        except DecodeError:
            return False  # the worker counts it as an undecodable batch
    return not header.metrics

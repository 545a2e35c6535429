"""The simulated agent's side of the protocol, shared by every load generator of the bench.

``bench fleet`` (simulator.py), ``bench connections`` and ``bench ingest`` (ingestload.py) each
drive thousands of simulated agents with a load shape of their own; what an agent says on the
wire, and how it opens its stream, is here once, on the shared wire contract (proto/wire.py):

- ``session``: a channel of the agent's own (its own TCP connection, as a separate host has),
  the Connect stream with the bearer token, the register written and its answer read.
- ``SimulatedAgent``: the base of each generator's agent (its id, register and counters).
- ``register_message``, ``heartbeat_message``: the agent's messages besides its batches (those
  come from encoder.py, already serialized).
- ``stream_retry_after_s``: the delay a front-end asked for when it ended a stream.

The loops that write batches and read the answers stay in each load generator: there each reads
only the answers it needs, with no layer between the stream and its counters (the simulator's
CPU must stay small next to the platform's).

The simulated agents register with protocol 0 (``AgentRegister.protocol`` unset, the original
.proto files' agent): the front-end issues them no credential, sends no ``committed``
announcement and pushes no settings, so every run measures the same exchange.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from fleetpulse.proto import agent_pb2, common_pb2, wire

# grpc.use_local_subchannel_pool: channels do not share a subchannel, so each has its own TCP
# connection.
CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]


class StreamEnded(Exception):
    """The server ended the stream without an error status, or refused the register."""


class SimulatedAgent:
    """What every load generator's agent has: its id (``<kind>-<run id>-<index>``), its register
    message, and the counters of its client process (a shared array of which it owns a slice at
    ``offset``: the parent reads them live without a message per event)."""

    def __init__(self, kind: str, run_id: str, index: int, stats: Any, offset: int) -> None:
        self.agent_id = agent_id_for(kind, run_id, index)
        self._register = register_message(self.agent_id)
        self._stats = stats
        self._offset = offset

    def _count(self, counter: int, amount: int = 1) -> None:
        self._stats[self._offset + counter] += amount


def agent_id_for(kind: str, run_id: str, index: int) -> str:
    """The id of simulated agent ``index`` of a run: ``<kind>-<run id>-<index>``."""
    return f"{kind}-{run_id}-{index:05d}"


def agent_prefix(kind: str, run_id: str) -> str:
    """What every agent id of the run starts with (``LIKE prefix || '%'`` finds them)."""
    return f"{kind}-{run_id}-"


def register_message(agent_id: str) -> bytes:
    """The serialized register of a simulated agent (its hostname is its id)."""
    return agent_pb2.AgentMessage(
        register=agent_pb2.AgentRegister(
            agent_id=agent_id,
            hostname=agent_id,
            os="linux",
            arch="x86_64",
            version="bench",
        )
    ).SerializeToString()


def heartbeat_message(agent_id: str) -> bytes:
    """A serialized heartbeat, stamped now (whole seconds)."""
    return agent_pb2.AgentMessage(
        heartbeat=agent_pb2.Heartbeat(
            agent_id=agent_id, timestamp=common_pb2.Timestamp(seconds=int(time.time()))
        )
    ).SerializeToString()


@contextlib.asynccontextmanager
async def session(target: str, token: str, register: bytes) -> AsyncIterator[Any]:
    """A registered Connect stream (the call) on a channel of its own, closed on exit.

    Raises ``StreamEnded`` when the register is refused or the stream ends before its answer;
    a failed call raises its ``grpc.aio.AioRpcError`` (``stream_retry_after_s`` reads it)."""
    async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        connect = channel.stream_stream(
            wire.CONNECT_METHOD,
            request_serializer=None,
            response_deserializer=agent_pb2.ServerMessage.FromString,
        )
        call = connect(metadata=wire.bearer_metadata(token))
        await call.write(register)
        while True:
            message = await call.read()
            if message is grpc.aio.EOF:
                raise StreamEnded("stream ended before register_response")
            if message.WhichOneof("message") == "register_response":
                if not message.register_response.success:
                    raise StreamEnded("register refused")
                break
        yield call


def stream_retry_after_s(exc: grpc.aio.AioRpcError) -> float:
    """The delay the front-end asked for when it ended the stream (trailing metadata), or 0."""
    return wire.retry_after_s(exc.trailing_metadata())

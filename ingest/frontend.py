"""The gRPC edge: one bidirectional stream per agent, `proto.AgentService/Connect`.

Requests arrive as raw bytes (no request deserializer) and are parsed as the internal
``AgentEnvelope`` view: register and heartbeat are decoded, a metric batch stays bytes. Its identity
comes from the ``BatchHeader`` view, which skips the points, and the bytes are XADDed untouched:
the front-end never touches a point (docs/architecture.md, "Hot path").

Status codes: no or wrong bearer token UNAUTHENTICATED; a message that does not decode or carries no
known case INVALID_ARGUMENT; heartbeat or metrics before register FAILED_PRECONDITION; an agent_id
in a payload that differs from the registered one PERMISSION_DENIED; Redis refusing the XADD
UNAVAILABLE (retryable: the agent keeps the batch and resends it).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
import redis
import redis.asyncio
from google.protobuf.message import DecodeError
from psycopg_pool import AsyncConnectionPool

from fleetpulse.ingest import keys, queue
from fleetpulse.ingest.queue import BatchQueue
from fleetpulse.ingest.registry import AgentRegistry
from fleetpulse.proto import agent_pb2, common_pb2, edge_pb2
from fleetpulse.settings import Settings

log = logging.getLogger(__name__)

SERVICE_NAME = "proto.AgentService"
METHOD_NAME = "Connect"


@dataclass(frozen=True)
class BatchForm:
    name: str
    header: Any  # the edge view that reads the identity without the points
    code: bytes  # how the worker tells the forms apart (keys.FIELD_FORM)


# The AgentMessage cases that carry a batch, and how each is handled.
_BATCH_FORMS = {
    "metrics": BatchForm("MetricBatch", edge_pb2.BatchHeader, keys.FORM_ROWS),
    "metric_columns": BatchForm("ColumnarBatch", edge_pb2.ColumnarHeader, keys.FORM_COLUMNS),
}

_REGISTERED = agent_pb2.ServerMessage(
    register_response=common_pb2.Response(success=True, message="registered")
).SerializeToString()
_HEARTBEAT_ACK = agent_pb2.ServerMessage(
    heartbeat_ack=common_pb2.Response(success=True, message="ok")
).SerializeToString()


async def _abort(
    context: grpc.aio.ServicerContext, code: grpc.StatusCode, details: str
) -> NoReturn:
    await context.abort(code, details)
    raise AssertionError("context.abort returned")  # it always raises


def _bearer_token(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer ") :]
    return None


def _peer_ip(context: grpc.aio.ServicerContext) -> str:
    peer = context.peer() or ""  # "ipv4:127.0.0.1:53514", "ipv6:[::1]:53514", "unix:..."
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    if kind == "ipv6":
        return rest.rsplit(":", 1)[0].strip("[]")
    return ""


class AgentService:
    """Serves Connect streams; one instance per front-end process."""

    def __init__(self, enrollment_token: str, registry: AgentRegistry, batches: BatchQueue) -> None:
        self._token = enrollment_token.encode()
        self._registry = registry
        self._batches = batches
        # Open streams per agent: an agent is marked offline only when its last stream closes.
        self._open_streams: Counter[str] = Counter()

    def _authenticated(self, context: grpc.aio.ServicerContext) -> bool:
        presented = _bearer_token(context)
        return presented is not None and hmac.compare_digest(presented.encode(), self._token)

    async def connect(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        if not self._authenticated(context):
            await _abort(
                context,
                grpc.StatusCode.UNAUTHENTICATED,
                "missing or invalid credential: send metadata 'authorization: Bearer <enrollment token>'",
            )
        agent_id: str | None = None
        try:
            async for raw in requests:
                try:
                    envelope = edge_pb2.AgentEnvelope.FromString(raw)
                except DecodeError:
                    await _abort(
                        context, grpc.StatusCode.INVALID_ARGUMENT, "AgentMessage does not decode"
                    )
                case = envelope.WhichOneof("message")
                if case == "register":
                    register = self._decode(agent_pb2.AgentRegister, envelope.register)
                    if register is None or not register.agent_id:
                        await _abort(
                            context,
                            grpc.StatusCode.INVALID_ARGUMENT,
                            "register: agent_id is required",
                        )
                    if agent_id is not None and register.agent_id != agent_id:
                        await _abort(
                            context,
                            grpc.StatusCode.PERMISSION_DENIED,
                            f"stream is registered as {agent_id!r}, not {register.agent_id!r}",
                        )
                    await self._registry.register(register, register.ip or _peer_ip(context))
                    if agent_id is None:
                        agent_id = register.agent_id
                        self._open_streams[agent_id] += 1
                    yield _REGISTERED
                elif case == "heartbeat":
                    if agent_id is None:
                        await _abort(
                            context,
                            grpc.StatusCode.FAILED_PRECONDITION,
                            "heartbeat before register",
                        )
                    heartbeat = self._decode(agent_pb2.Heartbeat, envelope.heartbeat)
                    if heartbeat is None:
                        await _abort(
                            context, grpc.StatusCode.INVALID_ARGUMENT, "heartbeat does not decode"
                        )
                    await self._check_identity(context, agent_id, heartbeat.agent_id)
                    self._registry.heartbeat(agent_id)
                    yield _HEARTBEAT_ACK
                elif case in _BATCH_FORMS:
                    if agent_id is None:
                        await _abort(
                            context, grpc.StatusCode.FAILED_PRECONDITION, "metrics before register"
                        )
                    yield await self._accept_batch(
                        context, agent_id, getattr(envelope, case), _BATCH_FORMS[case]
                    )
                else:
                    await _abort(
                        context,
                        grpc.StatusCode.INVALID_ARGUMENT,
                        "AgentMessage carries no known message (register, heartbeat, metrics or metric_columns)",
                    )
        finally:
            if agent_id is not None:
                self._open_streams[agent_id] -= 1
                if self._open_streams[agent_id] <= 0:
                    del self._open_streams[agent_id]
                    await self._mark_disconnected(agent_id)

    async def _accept_batch(
        self, context: grpc.aio.ServicerContext, agent_id: str, batch: bytes, form: BatchForm
    ) -> bytes:
        header = self._decode(form.header, batch)
        if header is None:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"{form.name} does not decode")
        await self._check_identity(context, agent_id, header.agent_id)
        try:
            await self._batches.add(
                agent_id,
                header.epoch,
                header.sequence,
                batch,
                received_ms=int(time.time() * 1000),
                form=form.code,
            )
        except redis.RedisError as exc:
            log.warning("XADD failed, refusing batch of %s: %s", agent_id, exc)
            await _abort(
                context,
                grpc.StatusCode.UNAVAILABLE,
                "queue unavailable, retry later (batch not accepted)",
            )
        # Acked only now that the XADD succeeded: "accepted" means durably queued.
        return agent_pb2.ServerMessage(
            metric_ack=agent_pb2.MetricAck(
                success=True, message="accepted", epoch=header.epoch, sequence=header.sequence
            )
        ).SerializeToString()

    @staticmethod
    def _decode(message_type: Any, payload: bytes) -> Any:
        try:
            return message_type.FromString(payload)
        except DecodeError:
            return None

    @staticmethod
    async def _check_identity(
        context: grpc.aio.ServicerContext, agent_id: str, claimed: str
    ) -> None:
        # An empty agent_id in a payload is fine: identity comes from the stream, not the payload.
        if claimed and claimed != agent_id:
            await _abort(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                f"payload agent_id {claimed!r} differs from the registered agent {agent_id!r}",
            )

    async def _mark_disconnected(self, agent_id: str) -> None:
        try:
            await self._registry.disconnected(agent_id)
        except Exception:
            log.exception("could not mark %s offline", agent_id)


def build_server(service: AgentService, settings: Settings) -> grpc.aio.Server:
    handler = grpc.method_handlers_generic_handler(
        SERVICE_NAME,
        {
            METHOD_NAME: grpc.stream_stream_rpc_method_handler(
                service.connect,
                request_deserializer=None,  # raw bytes: see the module docstring
                response_serializer=None,  # responses are pre-serialized bytes
            )
        },
    )
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
        ]
    )
    server.add_generic_rpc_handlers((handler,))
    address = f"{settings.grpc_host}:{settings.grpc_port}"
    if server.add_insecure_port(address) == 0:
        raise OSError(f"cannot listen on {address}")
    return server


async def run(settings: Settings, ready: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM/SIGINT, then stop accepting, let open calls finish, flush liveness."""
    settings.require("database_url", "redis_url", "enrollment_token")
    assert settings.database_url and settings.redis_url and settings.enrollment_token
    shards = queue.ensure_layout(redis.Redis.from_url(settings.redis_url), settings.stream_shards)
    redis_client = redis.asyncio.Redis.from_url(settings.redis_url)
    pool = AsyncConnectionPool(settings.database_url, min_size=1, max_size=8, open=False)
    await pool.open(wait=True)
    registry = AgentRegistry(pool, settings.heartbeat_flush_interval_s)
    batches = BatchQueue(redis_client, shards)
    batches.start()
    service = AgentService(settings.enrollment_token.get_secret_value(), registry, batches)
    server = build_server(service, settings)
    await server.start()
    flusher = asyncio.create_task(registry.flush_forever())
    log.info(
        "ingest front-end listening on %s:%d (%d stream shards)",
        settings.grpc_host,
        settings.grpc_port,
        shards,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        log.info("ingest front-end stopping")
        await server.stop(grace=2.0)
        flusher.cancel()
        await batches.close()
        await registry.flush()
        await redis_client.aclose()
        await pool.close()
        log.info("ingest front-end stopped")


def main(settings: Settings) -> None:
    import uvloop

    from fleetpulse.lifecycle import raise_open_files_limit

    log.info("open files limit: %d (one per connected agent)", raise_open_files_limit())
    uvloop.run(run(settings))

"""The gRPC edge: one bidirectional stream per agent, `proto.AgentService/Connect`.

Requests arrive as raw bytes (no request deserializer) and are parsed as the internal
``AgentEnvelope`` view: register and heartbeat are decoded, a metric batch stays bytes. Its identity
comes from the ``BatchHeader`` view, which skips the points, and the bytes are XADDed untouched:
the front-end never touches a point (docs/architecture.md, "Hot path").

Each stream is a ``Session``: a reader task handles the agent's messages in order and puts the
answers in the session's outbox, which the stream writes out; the committed watermark, a newer
connection of the same agent and a revocation reach the session through the same outbox.

Identity: the stream's bearer token is either the enrollment token (the agent then names itself
at register and is issued its own credential, ingest/credentials.py) or an agent credential (the
identity is the credential's agent_id). Any agent_id in a payload must equal it. The enrollment
token names only ids without a credential in force (never enrolled, or revoked): an id is bound
to its credential from the moment it is issued, and a register that claims it with the token is
refused before anything the claimant sent is stored or any live session of the agent is touched.

Status codes that end a stream: no, wrong or revoked credential UNAUTHENTICATED; a message that
does not decode, carries no known case, or has a value its column cannot store (a NUL in text, a
number too large) INVALID_ARGUMENT; heartbeat or metrics before register
FAILED_PRECONDITION; an agent_id that differs from the stream's identity, or an enrolled agent_id
claimed with the enrollment token, PERMISSION_DENIED; a second machine claiming a connected agent
ALREADY_EXISTS; the stream replaced by a newer connection of the same agent ABORTED; a message over
the size limit RESOURCE_EXHAUSTED (gRPC's own check, naming the limit). A batch the platform cannot
take *now* (workers behind, the agent over its rate, Redis refusing the XADD) does not end the
stream: its ``MetricAck`` says success=false with ``retry_after_ms``, and nothing was queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import logging
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any

import grpc
import orjson
import redis
import redis.asyncio
from google.protobuf.message import DecodeError
from psycopg_pool import AsyncConnectionPool

from fleetpulse import datadir, lifecycle
from fleetpulse.errors import ConfigError
from fleetpulse.ingest import agentsettings, credentials, keys, queue, selfmetrics, watermark
from fleetpulse.ingest.queue import BatchQueue
from fleetpulse.ingest.registry import AgentRegistry
from fleetpulse.proto import agent_pb2, common_pb2, edge_pb2, metric_pb2
from fleetpulse.settings import Settings

log = logging.getLogger(__name__)

SERVICE_NAME = "proto.AgentService"
METHOD_NAME = "Connect"
BACKPRESSURE_CHECK_S = 0.5
# Shutdown: open calls get STOP_GRACE_S to finish; the whole shutdown SHUTDOWN_BUDGET_S (a step
# that overruns is logged and skipped); past the watchdog margin the process exits regardless.
# Nothing acked is at stake: an ack means the batch is in Redis already.
STOP_GRACE_S = 2.0
SHUTDOWN_BUDGET_S = 8.0
SHUTDOWN_WATCHDOG_MARGIN_S = 3.0
# AgentRegister.protocol from which an agent understands ServerMessage.credential and .committed.
PROTOCOL_CREDENTIALS = 1
# ... from which it understands ServerMessage.settings and answers SettingsStatus.
PROTOCOL_SETTINGS = 2
CONFLICT_RETRY_AFTER_MS = 60_000


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


class StreamEnd(Exception):
    """Ends one stream with a gRPC status (raised inside the session's reader)."""

    def __init__(self, code: grpc.StatusCode, details: str, retry_after_ms: int = 0) -> None:
        # One line, whatever an agent put in the ids and names the message quotes.
        details = _one_line(details)
        super().__init__(details)
        self.code = code
        self.details = details
        # Sent as trailing metadata `retry-after-ms`: the agent waits at least this long.
        self.retry_after_ms = retry_after_ms


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


# Limits of the PostgreSQL columns that agent-sent numbers land in (bigint, integer).
_MAX_BIGINT = 2**63 - 1
_MAX_INTEGER = 2**31 - 1
# Text fields of AgentRegister stored in the agents table (agent_id is checked on its own).
_REGISTER_TEXT = ("hostname", "ip", "os", "arch", "version", "machine_id")


def _refuse_nul(what: str, message: Any, names: tuple[str, ...]) -> None:
    """PostgreSQL text cannot hold NUL: such a field is bad input, not an internal error."""
    for name in names:
        value = getattr(message, name)
        if any("\x00" in text for text in ([value] if isinstance(value, str) else value)):
            raise StreamEnd(grpc.StatusCode.INVALID_ARGUMENT, f"{what}: {name} contains NUL")


def _one_line(text: str) -> str:
    return "\\n".join(text.splitlines())


def _refusal(epoch: int, sequence: int, error: str, retry_after_ms: int) -> bytes:
    return agent_pb2.ServerMessage(
        metric_ack=agent_pb2.MetricAck(
            success=False,
            message="not accepted",
            error=_one_line(error),
            epoch=epoch,
            sequence=sequence,
            retry_after_ms=retry_after_ms,
        )
    ).SerializeToString()


def _already_enrolled(agent_id: str) -> StreamEnd:
    return StreamEnd(
        grpc.StatusCode.PERMISSION_DENIED,
        f"agent {agent_id!r} is enrolled: connect with its credential, "
        f"or revoke it (fleetpulse agents revoke {agent_id}) to enroll again",
    )


def _log_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("could not mark an agent offline: %s", task.exception())


class TokenBucket:
    """Per-agent fairness: batch bytes per second with a burst; refused bytes cost nothing."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = burst
        self.updated = time.monotonic()

    def take(self, amount: float) -> float:
        """0.0 when taken, else the seconds until ``amount`` will be available."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if amount <= self.tokens:
            self.tokens -= amount
            return 0.0
        return (min(amount, self.burst) - self.tokens) / self.rate


@dataclass
class Session:
    """One agent stream: what the reader decided, written out in order."""

    id: int
    peer_ip: str
    enrolling: bool  # authenticated with the enrollment token
    agent_id: str | None = None
    machine_id: str = ""
    protocol: int = 0  # AgentRegister.protocol: 1 understands credential and committed
    outbox: asyncio.Queue[bytes | StreamEnd | None] = field(default_factory=asyncio.Queue)
    bucket: TokenBucket | None = None

    def send(self, message: bytes) -> None:
        self.outbox.put_nowait(message)

    def end(self, code: grpc.StatusCode, details: str) -> None:
        self.outbox.put_nowait(StreamEnd(code, details))


class AgentService:
    """Serves Connect streams; one instance per front-end process."""

    def __init__(
        self,
        settings: Settings,
        enrollment_token: str,
        registry: AgentRegistry,
        batches: BatchQueue,
        pool: AsyncConnectionPool,
        redis_client: redis.asyncio.Redis,
    ) -> None:
        self._settings = settings
        self._token = enrollment_token.encode()
        self._registry = registry
        self._batches = batches
        self._pool = pool
        self._redis = redis_client
        self._control_channel = keys.control_channel(redis_client)
        self._ids = itertools.count(1)
        self.front_end_id = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        # The live session of every agent connected to this process.
        self.sessions: dict[str, Session] = {}
        # Why metric batches are refused right now (workers behind), or None.
        self.backpressure: str | None = None
        self._shards = batches.shards
        self._control_out: asyncio.Queue[bytes] = asyncio.Queue(10_000)
        # Set when the front-end stops (run()): streams that end then are not failures.
        self.stopping = False
        # Offline marks under way (they may outlive their stream's task, cancelled by a shutdown).
        self._offline_marks: set[asyncio.Future[None]] = set()

    # -- the stream ------------------------------------------------------------------------------

    async def connect(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        session = Session(next(self._ids), _peer_ip(context), enrolling=False)
        reader = None
        try:
            try:
                await self._authenticate(context, session)
            except StreamEnd as end:
                selfmetrics.REJECTS.labels(end.code.name.lower()).inc()
                await context.abort(end.code, end.details)
            reader = asyncio.create_task(self._read(requests, session))
            while True:
                item = await session.outbox.get()
                if item is None:
                    break
                if isinstance(item, StreamEnd):
                    selfmetrics.REJECTS.labels(item.code.name.lower()).inc()
                    if item.retry_after_ms:
                        context.set_trailing_metadata(
                            (("retry-after-ms", str(item.retry_after_ms)),)
                        )
                    await context.abort(item.code, item.details)
                else:
                    yield item
        finally:
            if reader is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await lifecycle.cancel_and_wait([reader])
            await self._forget(session)

    async def _authenticate(self, context: grpc.aio.ServicerContext, session: Session) -> None:
        presented = _bearer_token(context)
        if presented is None:
            raise StreamEnd(
                grpc.StatusCode.UNAUTHENTICATED,
                "missing credential: send metadata 'authorization: Bearer <agent credential or enrollment token>'",
            )
        if hmac.compare_digest(presented.encode(), self._token):
            session.enrolling = True
            return
        identity = None
        if credentials.looks_like_credential(presented):
            async with self._pool.connection() as conn:
                identity = await credentials.lookup(conn, presented)
        if identity is None:
            raise StreamEnd(grpc.StatusCode.UNAUTHENTICATED, "invalid credential")
        if identity.revoked:
            raise StreamEnd(
                grpc.StatusCode.UNAUTHENTICATED,
                f"credential of {identity.agent_id!r} was revoked; enroll again with the enrollment token",
            )
        session.agent_id = identity.agent_id

    async def _read(self, requests: AsyncIterator[bytes], session: Session) -> None:
        registered = False
        try:
            async for raw in requests:
                selfmetrics.MESSAGES.inc()
                selfmetrics.BYTES.inc(len(raw))
                try:
                    envelope = edge_pb2.AgentEnvelope.FromString(raw)
                except DecodeError:
                    raise StreamEnd(
                        grpc.StatusCode.INVALID_ARGUMENT, "AgentMessage does not decode"
                    ) from None
                case = envelope.WhichOneof("message")
                if case == "register":
                    await self._register(session, envelope.register, registered)
                    registered = True
                elif case == "heartbeat":
                    self._heartbeat(session, envelope.heartbeat, registered)
                elif case in _BATCH_FORMS:
                    if not registered:
                        raise StreamEnd(
                            grpc.StatusCode.FAILED_PRECONDITION, "metrics before register"
                        )
                    session.send(await self._accept_batch(session, envelope, case))
                elif case == "settings_status":
                    await self._settings_status(session, envelope.settings_status, registered)
                elif case == "disconnect":
                    if registered and session.agent_id is not None:
                        reason = self._decode(agent_pb2.Disconnect, envelope.disconnect)
                        if reason is not None:
                            _refuse_nul("disconnect", reason, ("reason",))
                        await self._say_goodbye(session, reason.reason if reason else "")
                    break
                else:
                    raise StreamEnd(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        "AgentMessage carries no known message "
                        "(register, heartbeat, metrics, metric_columns, disconnect or settings_status)",
                    )
        except StreamEnd as end:
            session.outbox.put_nowait(end)
            return
        except asyncio.CancelledError:
            raise
        except grpc.aio.AbortError:
            # The call is over already (gRPC refused a message over the size limit, with its own
            # status): nothing left to answer, and no failure of this front-end.
            session.outbox.put_nowait(None)
            return
        except Exception:
            if self.stopping:  # the server ends every call as it stops: not a failure
                session.outbox.put_nowait(None)
                return
            log.exception("stream of %s failed", session.agent_id)
            session.outbox.put_nowait(
                StreamEnd(grpc.StatusCode.INTERNAL, "internal error; reconnect", 1000)
            )
            return
        session.outbox.put_nowait(None)  # the agent closed its side: end the stream with OK

    async def _register(self, session: Session, payload: bytes, registered: bool) -> None:
        register = self._decode(agent_pb2.AgentRegister, payload)
        if register is None:
            raise StreamEnd(grpc.StatusCode.INVALID_ARGUMENT, "register does not decode")
        if not register.agent_id:
            raise StreamEnd(grpc.StatusCode.INVALID_ARGUMENT, "register: agent_id is required")
        if session.agent_id is not None and register.agent_id != session.agent_id:
            raise StreamEnd(
                grpc.StatusCode.PERMISSION_DENIED,
                f"stream is authenticated as {session.agent_id!r}, not {register.agent_id!r}",
            )
        if "\x00" in register.agent_id or len(register.agent_id) > 256:
            raise StreamEnd(
                grpc.StatusCode.INVALID_ARGUMENT,
                "register: agent_id must be at most 256 characters, without NUL",
            )
        _refuse_nul("register", register, _REGISTER_TEXT)
        agent_id = register.agent_id
        issued = None
        if not registered:
            # Refusals come before the writes (the credential, the claim that replaces a live
            # session, the agents row): a refused claimant changes none of them.
            if session.enrolling:
                await self._refuse_enrolled(agent_id)
            session.agent_id = agent_id
            session.machine_id = register.machine_id
            session.protocol = register.protocol
            # A clone is refused before a credential is issued for it: issued and never
            # delivered, it would lock the id until a revoke.
            self._refuse_clone(session)
            if session.enrolling and register.protocol >= PROTOCOL_CREDENTIALS:
                issued = await self._enroll(agent_id)
            self._claim(session)
            self._announce(
                {
                    "kind": "claim",
                    "agent": agent_id,
                    "machine": session.machine_id,
                    "front_end": self.front_end_id,
                    "session": session.id,
                }
            )
        await self._registry.register(
            register, register.ip or session.peer_ip, self._session_key(session)
        )
        session.send(_REGISTERED)
        if issued is not None:
            session.send(
                agent_pb2.ServerMessage(
                    credential=agent_pb2.Credential(agent_id=agent_id, token=issued)
                ).SerializeToString()
            )
        if session.protocol >= PROTOCOL_SETTINGS:
            await self._push_settings(session)

    async def _refuse_enrolled(self, agent_id: str) -> None:
        """The enrollment token may not register an id whose credential is in force."""
        async with self._pool.connection() as conn:
            try:
                await credentials.ensure_claimable(conn, agent_id)
            except credentials.AlreadyEnrolled:
                raise _already_enrolled(agent_id) from None

    async def _enroll(self, agent_id: str) -> str:
        async with self._pool.connection() as conn:
            try:
                return await credentials.enroll(conn, agent_id)
            except credentials.AlreadyEnrolled:  # enrolled by another stream since the check
                raise _already_enrolled(agent_id) from None

    async def _push_settings(self, session: Session) -> None:
        """Send the agent its platform-side settings, if it has any (at register, on a change)."""
        assert session.agent_id is not None
        async with self._pool.connection() as conn:
            settings = await agentsettings.load_async(conn, session.agent_id)
        if settings is not None:
            session.send(agentsettings.to_message(settings))

    async def _settings_status(self, session: Session, payload: bytes, registered: bool) -> None:
        if not registered or session.agent_id is None:
            raise StreamEnd(grpc.StatusCode.FAILED_PRECONDITION, "settings_status before register")
        status = self._decode(agent_pb2.SettingsStatus, payload)
        if status is None:
            raise StreamEnd(grpc.StatusCode.INVALID_ARGUMENT, "settings_status does not decode")
        _refuse_nul("settings_status", status, ("error", "collectors"))
        if (
            status.version > _MAX_BIGINT
            or status.collect_interval_ms > _MAX_INTEGER
            or status.heartbeat_interval_ms > _MAX_INTEGER
        ):
            raise StreamEnd(
                grpc.StatusCode.INVALID_ARGUMENT,
                "settings_status: version must be below 2^63 and intervals below 2^31 ms",
            )
        if not status.applied:
            log.warning(
                "agent %s did not apply settings version %d: %s",
                session.agent_id,
                status.version,
                status.error,
            )
        async with self._pool.connection() as conn:
            await agentsettings.record_status(conn, session.agent_id, status)

    def _refuse_clone(self, session: Session) -> None:
        """Refuse ``session`` if another machine holds the agent's live session here."""
        assert session.agent_id is not None
        current = self.sessions.get(session.agent_id)
        if (
            current is not None
            and current is not session
            and not self._same_machine(current.machine_id, session.machine_id)
        ):
            self._conflict(session, current.machine_id)

    def _claim(self, session: Session) -> None:
        """Make ``session`` the agent's live session here, or refuse it (a second machine)."""
        assert session.agent_id is not None
        self._refuse_clone(session)  # again: the holder may have changed while enrolling
        current = self.sessions.get(session.agent_id)
        if current is not None and current is not session:
            current.end(grpc.StatusCode.ABORTED, "replaced by a newer connection of this agent")
        self.sessions[session.agent_id] = session
        selfmetrics.CONNECTED.set(len(self.sessions))

    @staticmethod
    def _same_machine(a: str, b: str) -> bool:
        return not a or not b or a == b  # an agent that sends none is taken at its word

    def _conflict(self, newcomer: Session, holder_machine: str) -> None:
        """A second machine claims a connected agent: refuse it, report it, keep the first."""
        agent_id = newcomer.agent_id
        assert agent_id is not None
        detail = (
            f"agent {agent_id!r} is connected from another machine ({holder_machine[:12]}); "
            f"this one is {newcomer.machine_id[:12]}: a cloned image? give each host its own agent id"
        )
        log.warning("identity conflict: %s", detail)
        asyncio.get_running_loop().create_task(self._registry.conflict(agent_id, detail))
        # The clone is told to stay away a while: it keeps being refused, but not in a tight loop.
        raise StreamEnd(grpc.StatusCode.ALREADY_EXISTS, detail, CONFLICT_RETRY_AFTER_MS)

    def _heartbeat(self, session: Session, payload: bytes, registered: bool) -> None:
        if not registered or session.agent_id is None:
            raise StreamEnd(grpc.StatusCode.FAILED_PRECONDITION, "heartbeat before register")
        heartbeat = self._decode(agent_pb2.Heartbeat, payload)
        if heartbeat is None:
            raise StreamEnd(grpc.StatusCode.INVALID_ARGUMENT, "heartbeat does not decode")
        self._check_identity(session.agent_id, heartbeat.agent_id)
        self._registry.heartbeat(session.agent_id)
        selfmetrics.HEARTBEATS.inc()
        session.send(_HEARTBEAT_ACK)

    async def _accept_batch(self, session: Session, envelope: Any, case: str) -> bytes:
        form = _BATCH_FORMS[case]
        batch = getattr(envelope, case)
        agent_id = session.agent_id
        assert agent_id is not None
        header = self._decode(form.header, batch)
        if header is None:
            raise StreamEnd(grpc.StatusCode.INVALID_ARGUMENT, f"{form.name} does not decode")
        self._check_identity(agent_id, header.agent_id)
        epoch, sequence = header.epoch, header.sequence
        if self._is_empty(header, case, batch):
            selfmetrics.REJECTS.labels("empty_batch").inc()
            return _refusal(epoch, sequence, "INVALID_ARGUMENT: empty batch (no points)", 0)
        if epoch > _MAX_BIGINT or sequence > _MAX_BIGINT:
            # The ledger could not name it (bigint): refused for good rather than dead-lettered.
            selfmetrics.REJECTS.labels("invalid_identity").inc()
            return _refusal(
                epoch, sequence, "INVALID_ARGUMENT: epoch and sequence must be below 2^63", 0
            )
        if self.backpressure is not None:
            selfmetrics.REJECTS.labels("backpressure").inc()
            return _refusal(
                epoch,
                sequence,
                f"RESOURCE_EXHAUSTED: {self.backpressure}; keep the batch and retry",
                self._settings.ingest_retry_after_ms,
            )
        if session.bucket is None:
            session.bucket = TokenBucket(
                self._settings.ingest_agent_bytes_per_s, self._settings.ingest_agent_burst_bytes
            )
        wait_s = session.bucket.take(len(batch))
        if wait_s:
            selfmetrics.REJECTS.labels("rate_limited").inc()
            return _refusal(
                epoch,
                sequence,
                f"RESOURCE_EXHAUSTED: over this agent's rate "
                f"({self._settings.ingest_agent_bytes_per_s:.0f} batch bytes/s)",
                max(1, int(wait_s * 1000)),
            )
        started = time.perf_counter()
        try:
            await self._batches.add(
                agent_id,
                epoch,
                sequence,
                batch,
                received_ms=int(time.time() * 1000),
                form=form.code,
            )
        except redis.RedisError as exc:
            log.warning("XADD failed, refusing batch of %s: %s", agent_id, exc)
            selfmetrics.REJECTS.labels("queue_unavailable").inc()
            return _refusal(
                epoch,
                sequence,
                "UNAVAILABLE: queue unavailable; keep the batch and retry",
                self._settings.ingest_retry_after_ms,
            )
        selfmetrics.XADD_SECONDS.observe(time.perf_counter() - started)
        selfmetrics.BATCHES.inc()
        # Acked only now that the XADD succeeded: "accepted" means durably queued.
        return agent_pb2.ServerMessage(
            metric_ack=agent_pb2.MetricAck(
                success=True, message="accepted", epoch=epoch, sequence=sequence
            )
        ).SerializeToString()

    @staticmethod
    def _is_empty(header: Any, case: str, batch: bytes) -> bool:
        if case == "metric_columns":
            if header.values:
                return False
            try:  # unpacked values (or none at all): the full parse tells
                return not metric_pb2.ColumnarBatch.FromString(batch).values
            except DecodeError:
                return False  # the worker counts it as an undecodable batch
        return not header.metrics

    @staticmethod
    def _decode(message_type: Any, payload: bytes) -> Any:
        try:
            return message_type.FromString(payload)
        except DecodeError:
            return None

    @staticmethod
    def _check_identity(agent_id: str, claimed: str) -> None:
        # An empty agent_id in a payload is fine: identity comes from the stream, not the payload.
        if claimed and claimed != agent_id:
            raise StreamEnd(
                grpc.StatusCode.PERMISSION_DENIED,
                f"payload agent_id {claimed!r} differs from the stream's identity {agent_id!r}",
            )

    def _session_key(self, session: Session) -> str:
        return f"{self.front_end_id}/{session.id}"

    def _announce(self, event: dict[str, Any]) -> None:
        """Queue a control message; one task publishes them in order on one connection, so a
        burst of registrations never needs a Redis connection each. Best effort: a claim that is
        lost only delays the detection of a duplicate on another front-end."""
        try:
            self._control_out.put_nowait(orjson.dumps(event))
        except asyncio.QueueFull:
            log.warning("control queue full; dropped %s", event.get("kind"))

    async def publish_control(self) -> None:
        while True:
            message = await self._control_out.get()
            try:
                await self._redis.publish(self._control_channel, message)
            except redis.RedisError as exc:
                log.warning("control message not published: %s", exc)

    async def _say_goodbye(self, session: Session, reason: str) -> None:
        assert session.agent_id is not None
        if self.sessions.get(session.agent_id) is session:
            del self.sessions[session.agent_id]
            selfmetrics.CONNECTED.set(len(self.sessions))
            await self._registry.disconnected(
                session.agent_id, reason or "shutdown", self._session_key(session)
            )

    async def _forget(self, session: Session) -> None:
        agent_id = session.agent_id
        if agent_id is None or self.sessions.get(agent_id) is not session:
            return
        del self.sessions[agent_id]
        selfmetrics.CONNECTED.set(len(self.sessions))
        # Shielded: the stream's task may be cancelled again while this runs (a mass
        # disconnect); the agent must still be marked offline.
        update = asyncio.ensure_future(
            self._registry.disconnected(agent_id, None, self._session_key(session))
        )
        self._offline_marks.add(update)
        update.add_done_callback(self._offline_marks.discard)
        try:
            await asyncio.shield(update)
        except asyncio.CancelledError:
            update.add_done_callback(_log_failure)
            raise
        except Exception:
            log.exception("could not mark %s offline", agent_id)

    async def forget_all(self) -> None:
        """At shutdown, before the pool closes: mark every agent still held offline, and let the
        marks under way finish (else they fail on the closed pool and the agents stay online)."""
        for session in list(self.sessions.values()):
            await self._forget(session)
        await asyncio.gather(*self._offline_marks, return_exceptions=True)

    # -- background tasks ------------------------------------------------------------------------

    async def watch_backpressure(self) -> None:
        """Refuse batches while the queue (entries not yet committed) is over its limit."""
        limit = self._settings.ingest_max_queued_entries
        resume = int(limit * 0.8)
        streams = [keys.stream_key(shard) for shard in range(self._shards)]
        while True:
            try:
                pipe = self._redis.pipeline(transaction=False)
                for stream in streams:
                    pipe.xlen(stream)
                queued = sum(int(n) for n in await pipe.execute())
                selfmetrics.QUEUED.set(queued)
                if self.backpressure is None and queued >= limit:
                    self.backpressure = (
                        f"workers are behind ({queued} batches queued, limit {limit})"
                    )
                    log.warning("backpressure on: %s", self.backpressure)
                elif self.backpressure is not None and queued < resume:
                    log.info("backpressure off: %d batches queued", queued)
                    self.backpressure = None
            except redis.RedisError as exc:
                self.backpressure = f"queue unreachable ({exc})"
            selfmetrics.BACKPRESSURE.set(0 if self.backpressure is None else 1)
            await asyncio.sleep(BACKPRESSURE_CHECK_S)

    async def relay_committed(self) -> None:
        """Tell each connected agent what the workers committed (ServerMessage.committed)."""
        feed = await watermark.AsyncCommittedFeed.start(self._redis)
        while True:
            try:
                announced = await feed.read(block_ms=1000)
            except redis.RedisError as exc:
                log.warning("committed feed unavailable: %s", exc)
                await asyncio.sleep(1.0)
                continue
            for committed in announced:
                session = self.sessions.get(committed.agent_id)
                if session is None or session.protocol < PROTOCOL_CREDENTIALS:
                    continue
                session.send(
                    agent_pb2.ServerMessage(
                        committed=agent_pb2.Committed(
                            epoch=committed.epoch,
                            ranges=[
                                agent_pb2.SequenceRange(first=a, last=b)
                                for a, b in committed.ranges
                            ],
                        )
                    ).SerializeToString()
                )
                selfmetrics.COMMITTED_RELAYED.inc()

    async def follow_control(self) -> None:
        """Claims, conflicts and revocations from the other front-ends and the CLI."""
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(self._control_channel)
        try:
            while True:
                try:
                    message = await pubsub.get_message(timeout=1.0)
                except redis.RedisError as exc:
                    # Redis restarting: retry; the reconnect subscribes again. Without this the
                    # task ended, and revocations and claims went unheard until a restart.
                    log.warning("control channel unavailable: %s", exc)
                    await asyncio.sleep(1.0)
                    continue
                if message is None:
                    continue
                try:
                    event = orjson.loads(message["data"])
                    await self._on_control(event)
                except Exception:
                    log.exception("bad control message %r", message.get("data"))
        finally:
            await pubsub.aclose()

    async def _on_control(self, event: dict[str, Any]) -> None:
        kind, agent_id = event.get("kind"), event.get("agent")
        if not isinstance(agent_id, str):
            return
        session = self.sessions.get(agent_id)
        if kind == "revoked" and session is not None:
            session.end(grpc.StatusCode.UNAUTHENTICATED, f"credential of {agent_id!r} revoked")
        elif kind == "settings" and session is not None and session.protocol >= PROTOCOL_SETTINGS:
            await self._push_settings(session)
        elif kind == "claim" and event.get("front_end") != self.front_end_id and session:
            if self._same_machine(session.machine_id, str(event.get("machine", ""))):
                session.end(
                    grpc.StatusCode.ABORTED,
                    "replaced by a newer connection of this agent (on another front-end)",
                )
            else:
                self._announce(
                    {
                        "kind": "conflict",
                        "agent": agent_id,
                        "front_end": event.get("front_end"),
                        "session": event.get("session"),
                        "holder_machine": session.machine_id,
                    }
                )
        elif (
            kind == "conflict"
            and event.get("front_end") == self.front_end_id
            and session is not None
            and session.id == event.get("session")
        ):
            try:
                self._conflict(session, str(event.get("holder_machine", "")))
            except StreamEnd as end:
                del self.sessions[agent_id]
                selfmetrics.CONNECTED.set(len(self.sessions))
                session.outbox.put_nowait(end)


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
            # Dead peers (a host that vanished without closing) are found by HTTP/2 keepalive:
            # a ping after 30 s without traffic, the connection dropped 10 s after no answer.
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
            # Only the processes of one `ingest --processes N` share a port (settings.py): gRPC
            # turns SO_REUSEPORT on by default, which let a second platform join a running one.
            ("grpc.so_reuseport", 1 if settings.grpc_reuse_port else 0),
        ]
    )
    server.add_generic_rpc_handlers((handler,))
    address = f"{settings.grpc_host}:{settings.grpc_port}"
    credentials_ = server_credentials(settings)
    try:
        if credentials_ is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials_)
    except RuntimeError:  # grpcio raises where it used to return 0
        port = 0
    if port == 0:
        holder = datadir.port_holder(settings.grpc_port)
        raise ConfigError(
            f"cannot listen on {address} (gRPC)"
            + (f": in use by {holder}" if holder else ": in use or not an address of this host")
        )
    return server


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS for the gRPC port when a certificate is configured, else None (plaintext)."""
    cert, key, client_ca = (
        settings.grpc_tls_cert_file,
        settings.grpc_tls_key_file,
        settings.grpc_tls_client_ca_file,
    )
    if cert is None and key is None:
        if client_ca is not None:
            raise ConfigError("FLEETPULSE_GRPC_TLS_CLIENT_CA_FILE needs a server certificate too")
        return None
    if cert is None or key is None:
        raise ConfigError(
            "FLEETPULSE_GRPC_TLS_CERT_FILE and FLEETPULSE_GRPC_TLS_KEY_FILE go together"
        )
    try:
        pair = (key.read_bytes(), cert.read_bytes())
        roots = client_ca.read_bytes() if client_ca is not None else None
    except OSError as exc:
        raise ConfigError(f"cannot read a TLS file: {exc}") from exc
    return grpc.ssl_server_credentials(
        [pair], root_certificates=roots, require_client_auth=roots is not None
    )


async def run(
    settings: Settings,
    ready: asyncio.Event | None = None,
    index: int = 1,
    watchdog: bool = False,
) -> None:
    """Serve until SIGTERM/SIGINT, then stop accepting, let open calls finish, flush liveness.

    ``watchdog`` (the process's own front-end): from SIGTERM on, the process ends if it has not
    exited within the budget and its margin; it stays armed through the event loop's own cleanup,
    which waits for every task left, and ends with the process."""
    settings.require("database_url", "redis_url", "enrollment_token")
    assert settings.database_url and settings.redis_url and settings.enrollment_token
    shards = queue.ensure_layout(
        redis.Redis.from_url(settings.redis_url, socket_timeout=queue.SOCKET_TIMEOUT_S),
        settings.stream_shards,
    )
    redis_client = redis.asyncio.Redis.from_url(
        settings.redis_url, socket_timeout=queue.SOCKET_TIMEOUT_S
    )
    pool = AsyncConnectionPool(settings.database_url, min_size=1, max_size=8, open=False)
    await pool.open(wait=True)
    registry = AgentRegistry(pool, settings.heartbeat_flush_interval_s)
    batches = BatchQueue(redis_client, shards)
    batches.start()
    service = AgentService(
        settings,
        settings.enrollment_token.get_secret_value(),
        registry,
        batches,
        pool,
        redis_client,
    )
    server = build_server(service, settings)
    await server.start()
    metrics_port = selfmetrics.serve(settings.grpc_host, settings.ingest_metrics_port, index)
    tasks = [
        asyncio.create_task(registry.flush_forever(), name="heartbeat-flush"),
        asyncio.create_task(service.watch_backpressure(), name="backpressure"),
        asyncio.create_task(service.relay_committed(), name="committed-relay"),
        asyncio.create_task(service.follow_control(), name="control"),
        asyncio.create_task(service.publish_control(), name="control-publish"),
    ]
    log.info(
        "ingest front-end listening on %s:%d (%d stream shards; metrics on port %s)",
        settings.grpc_host,
        settings.grpc_port,
        shards,
        metrics_port or "off",
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
        service.stopping = True
        if watchdog:
            lifecycle.exit_if_stuck(SHUTDOWN_BUDGET_S + SHUTDOWN_WATCHDOG_MARGIN_S)
        deadline = loop.time() + SHUTDOWN_BUDGET_S
        await _stage("stop the gRPC server", server.stop(grace=STOP_GRACE_S), deadline)
        await _stage("stop the background tasks", lifecycle.cancel_and_wait(tasks), deadline)
        await _stage("mark connected agents offline", service.forget_all(), deadline)
        await _stage("close the XADD pipeline", batches.close(), deadline)
        await _stage("flush heartbeats", registry.flush(), deadline)
        await _stage("close Redis", redis_client.aclose(), deadline)
        await _stage("close the PostgreSQL pool", pool.close(timeout=1.0), deadline)
        log.info("ingest front-end stopped")


async def _stage(name: str, step: Awaitable[Any], deadline: float) -> None:
    """One step of the shutdown, given what is left of its time budget; one that is stuck is
    named in the log, with every task's stack, and left behind so that the rest still runs."""
    task = asyncio.ensure_future(step)
    remaining = deadline - asyncio.get_running_loop().time()
    done, _ = await asyncio.wait({task}, timeout=max(remaining, 0.5))
    if not done:
        task.add_done_callback(_retrieve)
        task.cancel()
        log.error(
            "shutdown: %s did not finish within the %.0f s budget; going on. Tasks:\n%s",
            name,
            SHUTDOWN_BUDGET_S,
            lifecycle.task_stacks(),
        )
    elif not task.cancelled() and task.exception() is not None:
        log.error("shutdown: %s failed: %s", name, task.exception())


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # already logged by _stage; not "never retrieved" at exit


def main(settings: Settings, index: int = 1) -> None:
    import uvloop

    log.info("open files limit: %d (one per connected agent)", lifecycle.raise_open_files_limit())
    uvloop.run(run(settings, index=index, watchdog=True))

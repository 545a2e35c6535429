"""The gRPC edge: one bidirectional stream per agent, `proto.AgentService/Connect`.

Requests arrive as raw bytes (no request deserializer) and are parsed as the internal
``AgentEnvelope`` view: register and heartbeat are decoded, a metric batch stays bytes. Its identity
comes from the ``BatchHeader`` view, which skips the points, and the bytes are XADDed untouched:
the front-end never touches a point (docs/architecture.md, "Hot path").

The parts: who the agent is (auth.py), its session and the outbox its answers leave through
(session.py), the live sessions and the control plane (sessions.py), the checks of its messages
(messages.py), whether a batch is taken now (admission.py), what is sent back (replies.py), the
committed relay (relay.py), and the serving process (server.py). This module is the stream itself:
it reads the agent's messages in order and hands each to its part.

Errors are classified once (fleetpulse/errors.py) and become gRPC statuses only here, when the
stream ends (status.py): no, wrong or revoked credential UNAUTHENTICATED; a message that does not
decode, carries no known case, or has a value its column cannot store (a NUL in text, a number too
large) INVALID_ARGUMENT; heartbeat or metrics before register FAILED_PRECONDITION; an agent_id that
differs from the stream's identity, or an enrolled agent_id claimed with the enrollment token,
PERMISSION_DENIED; a second machine claiming a connected agent ALREADY_EXISTS; the stream replaced
by a newer connection of the same agent ABORTED; a message over the size limit RESOURCE_EXHAUSTED
(gRPC's own check, naming the limit). A batch the platform cannot take *now* (workers behind, the
agent over its rate, Redis refusing the XADD) does not end the stream: its ``MetricAck`` says
success=false with ``retry_after_ms``, and nothing was queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import psycopg_pool
import redis
from psycopg_pool import AsyncConnectionPool

from fleetpulse import errors, lifecycle, liveness
from fleetpulse.agent.remote import RemoteSettings
from fleetpulse.ingest import agentsettings
from fleetpulse.ingest.coalesce import Coalescer
from fleetpulse.ingest.frontend import admission, messages, replies, selfmetrics, status
from fleetpulse.ingest.frontend.admission import TokenBucket
from fleetpulse.ingest.frontend.auth import Authenticator
from fleetpulse.ingest.frontend.budgets import OverBudget
from fleetpulse.ingest.frontend.registry import AgentRegistry
from fleetpulse.ingest.frontend.session import Session, peer_ip
from fleetpulse.ingest.frontend.sessions import Sessions
from fleetpulse.ingest.queue import BatchQueue
from fleetpulse.proto import agent_pb2, edge_pb2, wire
from fleetpulse.settings import Settings

# A stream refused because the PostgreSQL pool stayed busy: come back after this many seconds
# (uniform), and how often the refusals are logged.
BUSY_RETRY_MIN_S = 5.0
BUSY_RETRY_MAX_S = 60.0
BUSY_LOG_INTERVAL_S = 10.0

log = logging.getLogger(__name__)


class AgentService:
    """Serves Connect streams; one instance per front-end process."""

    def __init__(
        self,
        settings: Settings,
        authenticator: Authenticator,
        registry: AgentRegistry,
        batches: BatchQueue,
        pool: AsyncConnectionPool,
        redis_client: redis.asyncio.Redis,
    ) -> None:
        self._settings = settings
        self._auth = authenticator
        self._registry = registry
        self._batches = batches
        self._pool = pool
        self._ids = itertools.count(1)
        self.sessions = Sessions(registry, redis_client, self._push_settings)
        self.backpressure = admission.backpressure(settings, redis_client, batches.shards)
        self.over_budget = OverBudget(pool)
        # Set when the front-end stops (server.run): streams that end then are not failures.
        self.stopping = False
        self._busy_refusals = 0
        self._busy_logged_at = -BUSY_LOG_INTERVAL_S
        self._jitter = random.Random()  # noqa: S311 - spreading reconnects, not cryptography
        # A rollout wave or a reconnecting fleet loads many agents' settings at once.
        self._settings_loads: Coalescer[str, RemoteSettings | None] = Coalescer(
            self._load_settings_many, name="settings-loads"
        )
        # Offline marks under way (they may outlive their stream's task, cancelled by a shutdown).
        self._offline_marks: set[asyncio.Future[None]] = set()

    # -- the stream ------------------------------------------------------------------------------

    async def connect(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        session = Session(next(self._ids), peer_ip(context), enrolling=False)
        reader = None
        try:
            try:
                identity = await self._auth.identify(context.invocation_metadata())
            except errors.FleetpulseError as refused:
                await self._end(context, refused)
                return
            session.enrolling, session.agent_id = identity.enrolling, identity.agent_id
            reader = asyncio.create_task(self._read(requests, session))
            while True:
                item = await session.outbox.get()
                if item is None:
                    break
                if isinstance(item, errors.FleetpulseError):
                    await self._end(context, item)
                    return
                yield item
        finally:
            if reader is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await lifecycle.cancel_and_wait([reader])
            await self._forget(session)

    @staticmethod
    async def _end(context: grpc.aio.ServicerContext, error: errors.FleetpulseError) -> None:
        """End the stream with the status of ``error`` (raises grpc's AbortError)."""
        code = status.code(error)
        selfmetrics.REJECTS.labels(code.name.lower()).inc()
        retry_after_ms = status.retry_after_ms(error)
        if retry_after_ms:
            context.set_trailing_metadata(((wire.RETRY_AFTER_KEY, str(retry_after_ms)),))
        await context.abort(code, error.message)

    async def _read(self, requests: AsyncIterator[bytes], session: Session) -> None:
        registered = False
        try:
            async for raw in requests:
                selfmetrics.MESSAGES.inc()
                selfmetrics.BYTES.inc(len(raw))
                envelope = messages.decode(edge_pb2.AgentEnvelope, raw, "AgentMessage")
                case = envelope.WhichOneof("message")
                if case == "register":
                    await self._register(session, envelope.register, registered)
                    registered = True
                elif case == "heartbeat":
                    self._heartbeat(session, envelope.heartbeat, registered)
                elif case in messages.BATCH_FORMS:
                    if not registered:
                        raise errors.OutOfOrder("metrics before register")
                    session.send(await self._accept_batch(session, envelope, case))
                elif case == "settings_status":
                    await self._settings_status(session, envelope.settings_status, registered)
                elif case == "disconnect":
                    if registered and session.agent_id is not None:
                        await self._say_goodbye(session, _goodbye_reason(envelope.disconnect))
                    break
                else:
                    raise errors.BadInput(
                        "AgentMessage carries no known message "
                        "(register, heartbeat, metrics, metric_columns, disconnect or settings_status)"
                    )
        except errors.FleetpulseError as refused:
            session.end(refused)
            return
        except asyncio.CancelledError:
            raise
        except psycopg_pool.PoolTimeout:
            # Every PostgreSQL connection of this process stayed busy for the pool's timeout: a
            # registration burst past what the database path takes (4,132 of 50,000 agents in a
            # 250 per second ramp before registrations were coalesced, docs/performance.md). Retryable, and said so, with a delay
            # spread so the refused do not come back together; one line per 10 s, not a stack
            # per stream.
            self._busy_refusals += 1
            now = time.monotonic()
            if now - self._busy_logged_at >= BUSY_LOG_INTERVAL_S:
                log.warning(
                    "PostgreSQL pool busy: %d streams refused for now (UNAVAILABLE, retry later)",
                    self._busy_refusals,
                )
                self._busy_logged_at, self._busy_refusals = now, 0
            session.end(
                errors.Unavailable(
                    "the platform is busy (database): try again after the delay given",
                    retry_after_s=self._jitter.uniform(BUSY_RETRY_MIN_S, BUSY_RETRY_MAX_S),
                )
            )
            return
        except grpc.aio.AbortError:
            # The call is over already (gRPC refused a message over the size limit, with its own
            # status): nothing left to answer, and no failure of this front-end.
            session.end()
            return
        except Exception:
            if self.stopping:  # the server ends every call as it stops: not a failure
                session.end()
                return
            log.exception("stream of %s failed", session.agent_id)
            session.end(status.INTERNAL)
            return
        session.end()  # the agent closed its side: end the stream with OK

    async def _register(self, session: Session, payload: bytes, registered: bool) -> None:
        register = messages.decode(agent_pb2.AgentRegister, payload, "register")
        if not register.agent_id:
            raise errors.BadInput("register: agent_id is required")
        if session.agent_id is not None and register.agent_id != session.agent_id:
            raise errors.Forbidden(
                f"stream is authenticated as {session.agent_id!r}, not {register.agent_id!r}"
            )
        messages.check_agent_id(register.agent_id)
        messages.refuse_nul("register", register, messages.REGISTER_TEXT)
        messages.check_tags(register)
        agent_id = register.agent_id
        issued = None
        if not registered:
            # Refusals come before the writes (the credential, the claim that replaces a live
            # session, the agents row): a refused claimant changes none of them.
            if session.enrolling:
                await self._auth.refuse_enrolled(agent_id)
            session.agent_id = agent_id
            session.machine_id = register.machine_id
            session.protocol = register.protocol
            # A clone is refused before a credential is issued for it: issued and never
            # delivered, it would lock the id until a revoke.
            self.sessions.refuse_clone(session)
            if session.enrolling and register.protocol >= wire.PROTOCOL_CREDENTIALS:
                issued = await self._auth.enroll(agent_id)
            self.sessions.claim(session)
        await self._registry.register(
            register, register.ip or session.peer_ip, self.sessions.key(session)
        )
        session.send(replies.REGISTERED)
        if issued is not None:
            session.send(replies.credential(agent_id, issued))
        if session.protocol >= wire.PROTOCOL_SETTINGS:
            await self._push_settings(session)

    async def _push_settings(self, session: Session) -> None:
        """Send the agent its platform-side settings, if it has any (at register, on a change)."""
        assert session.agent_id is not None
        settings = await self._settings_loads.submit(session.agent_id)
        if settings is not None:
            session.send(agentsettings.to_message(settings))

    async def _load_settings_many(self, agent_ids: list[str]) -> list[RemoteSettings | None]:
        async with self._pool.connection() as conn:
            return await agentsettings.load_many_async(conn, agent_ids)

    async def _settings_status(self, session: Session, payload: bytes, registered: bool) -> None:
        if not registered or session.agent_id is None:
            raise errors.OutOfOrder("settings_status before register")
        status_ = messages.decode(agent_pb2.SettingsStatus, payload, "settings_status")
        messages.check_settings_status(status_)
        if not status_.applied:
            log.warning(
                "agent %s did not apply settings version %d: %s",
                session.agent_id,
                status_.version,
                status_.error,
            )
        async with self._pool.connection() as conn:
            await agentsettings.record_status(conn, session.agent_id, status_)

    def _heartbeat(self, session: Session, payload: bytes, registered: bool) -> None:
        if not registered or session.agent_id is None:
            raise errors.OutOfOrder("heartbeat before register")
        heartbeat = messages.decode(agent_pb2.Heartbeat, payload, "heartbeat")
        messages.check_identity(session.agent_id, heartbeat.agent_id)
        self._registry.heartbeat(session.agent_id)
        selfmetrics.HEARTBEATS.inc()
        session.send(replies.HEARTBEAT_ACK)

    async def _accept_batch(self, session: Session, envelope: Any, case: str) -> bytes:
        form = messages.BATCH_FORMS[case]
        batch = getattr(envelope, case)
        agent_id = session.agent_id
        assert agent_id is not None
        header = messages.decode(form.header, batch, form.name)
        messages.check_identity(agent_id, header.agent_id)
        epoch, sequence = header.epoch, header.sequence
        if session.bucket is None:
            session.bucket = TokenBucket(
                self._settings.ingest_agent_bytes_per_s, self._settings.ingest_agent_burst_bytes
            )
        refused = (
            messages.batch_problem(header, case, batch)
            or admission.refused(self.backpressure)
            or admission.over_rate(session.bucket, len(batch))
        )
        if refused is not None:
            return replies.refusal(epoch, sequence, refused)
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
            unavailable = errors.Unavailable(
                "queue unavailable; keep the batch and retry",
                self._settings.ingest_retry_after_ms / 1000,
            )
            return replies.refusal(epoch, sequence, unavailable)
        selfmetrics.XADD_SECONDS.observe(time.perf_counter() - started)
        selfmetrics.BATCHES.inc()
        self._registry.batch(agent_id)
        # Acked only now that the XADD succeeded: "accepted" means durably queued.
        return replies.accepted(epoch, sequence, self.over_budget.note(agent_id))

    async def _say_goodbye(self, session: Session, reason: str) -> None:
        if self.sessions.release(session):
            assert session.agent_id is not None
            await self._registry.disconnected(
                session.agent_id,
                self.sessions.key(session),
                liveness.DISCONNECTED,
                reason or "shutdown",
                reason=reason or "shutdown",
            )

    async def _forget(self, session: Session) -> None:
        if not self.sessions.release(session):
            return
        agent_id = session.agent_id
        assert agent_id is not None
        # Shielded: the stream's task may be cancelled again while this runs (a mass
        # disconnect); the agent must still be marked offline.
        cause, detail = liveness.cause_of_end(session.ended_by, self.stopping)
        update = asyncio.ensure_future(
            self._registry.disconnected(agent_id, self.sessions.key(session), cause, detail)
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

    def send_away(self, rate_per_s: float) -> int:
        """At shutdown: end every registered stream with UNAVAILABLE and a delay to come back
        after, drawn uniformly over (streams / ``rate_per_s``) seconds. A fleet that lost its
        front-ends at once otherwise returns at once: 50,000 agents within about 30 s of backoff,
        six times what the restarted front-ends register, and the herd never converged
        (docs/performance.md, "50,000 agents"). Returns how many were sent away."""
        sessions = self.sessions.all()
        spread_s = len(sessions) / rate_per_s
        for session in sessions:
            session.end(
                errors.Unavailable(
                    "the front-end is stopping: reconnect after the delay given",
                    retry_after_s=self._jitter.uniform(0.0, spread_s),
                )
            )
        return len(sessions)

    async def forget_all(self) -> None:
        """At shutdown, before the pool closes: mark every agent still held offline, and let the
        marks under way finish (else they fail on the closed pool and the agents stay online)."""
        await asyncio.gather(
            *(self._forget(session) for session in self.sessions.all()), return_exceptions=True
        )
        await asyncio.gather(*self._offline_marks, return_exceptions=True)


def _goodbye_reason(payload: bytes) -> str:
    """The reason an agent gave for leaving ("" if its Disconnect does not decode)."""
    try:
        reason = messages.decode(agent_pb2.Disconnect, payload, "disconnect")
    except errors.BadInput:
        return ""
    messages.refuse_nul("disconnect", reason, ("reason",))
    return str(reason.reason)


def _log_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("could not mark an agent offline: %s", task.exception())

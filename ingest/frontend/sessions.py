"""The live sessions of this front-end process, and its side of the control plane.

One live session per agent: a newer connection from the same machine replaces the old one (ABORTED),
a connection from another machine is refused (ALREADY_EXISTS: a cloned image) and recorded. Across
front-ends the same rules hold through the control channel (ingest/control.py): a claim made here is
published, and a claim made elsewhere ends or contests the session held here. Revocations and
settings changes from the API and the CLI arrive the same way.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import Awaitable, Callable

import redis
import redis.asyncio

from fleetpulse import errors
from fleetpulse.ingest import control, keys
from fleetpulse.ingest.frontend import selfmetrics
from fleetpulse.ingest.frontend.registry import AgentRegistry
from fleetpulse.ingest.frontend.session import Session
from fleetpulse.proto import wire

log = logging.getLogger(__name__)

# A clone is told to stay away a while: it keeps being refused, but not in a tight loop.
CONFLICT_RETRY_AFTER_S = 60.0
CONTROL_QUEUE = 10_000


class Sessions:
    """The agents connected to this process, each with its one live session."""

    def __init__(
        self,
        registry: AgentRegistry,
        redis_client: redis.asyncio.Redis,
        push_settings: Callable[[Session], Awaitable[None]],
    ) -> None:
        self.front_end_id = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._live: dict[str, Session] = {}
        self._registry = registry
        self._redis = redis_client
        self._channel = keys.control_channel(redis_client)
        self._push_settings = push_settings
        self._control_out: asyncio.Queue[bytes] = asyncio.Queue(CONTROL_QUEUE)

    def __len__(self) -> int:
        return len(self._live)

    def get(self, agent_id: str) -> Session | None:
        return self._live.get(agent_id)

    def all(self) -> list[Session]:
        return list(self._live.values())

    def key(self, session: Session) -> str:
        """The session's name across front-ends (the registry's liveness rows)."""
        return f"{self.front_end_id}/{session.id}"

    def refuse_clone(self, session: Session) -> None:
        """Refuse ``session`` if another machine holds the agent's live session here."""
        assert session.agent_id is not None
        current = self._live.get(session.agent_id)
        if (
            current is not None
            and current is not session
            and not _same_machine(current.machine_id, session.machine_id)
        ):
            self._conflict(session, current.machine_id)

    def claim(self, session: Session) -> None:
        """Make ``session`` the agent's live session here, or refuse it (a second machine), and
        tell the other front-ends."""
        assert session.agent_id is not None
        self.refuse_clone(session)  # again: the holder may have changed while enrolling
        current = self._live.get(session.agent_id)
        if current is not None and current is not session:
            current.end(errors.Superseded("replaced by a newer connection of this agent"))
        self._live[session.agent_id] = session
        selfmetrics.CONNECTED.set(len(self._live))
        self._announce(
            control.Claim(session.agent_id, session.machine_id, self.front_end_id, session.id)
        )

    def release(self, session: Session) -> bool:
        """Forget ``session`` if it is its agent's live one; True if it was."""
        agent_id = session.agent_id
        if agent_id is None or self._live.get(agent_id) is not session:
            return False
        del self._live[agent_id]
        selfmetrics.CONNECTED.set(len(self._live))
        return True

    def _conflict(self, newcomer: Session, holder_machine: str) -> None:
        """A second machine claims a connected agent: refuse it, report it, keep the first."""
        agent_id = newcomer.agent_id
        assert agent_id is not None
        detail = (
            f"agent {agent_id!r} is connected from another machine ({holder_machine[:12]}); "
            f"this one is {newcomer.machine_id[:12]}: a cloned image? give each host its own agent id"
        )
        log.warning("identity conflict: %s", detail)
        selfmetrics.CONFLICTS.inc()
        asyncio.get_running_loop().create_task(self._registry.conflict(agent_id, detail))
        raise errors.Conflict(detail, CONFLICT_RETRY_AFTER_S)

    # -- the control channel ---------------------------------------------------------------------

    def _announce(self, message: control.Message) -> None:
        """Queue a control message; one task publishes them in order on one connection, so a
        burst of registrations never needs a Redis connection each. Best effort: a claim that is
        lost only delays the detection of a duplicate on another front-end."""
        try:
            self._control_out.put_nowait(control.encode(message))
        except asyncio.QueueFull:
            log.warning("control queue full; dropped %s", message.kind)

    async def publish_control(self) -> None:
        while True:
            message = await self._control_out.get()
            try:
                await self._redis.publish(self._channel, message)
            except redis.RedisError as exc:
                log.warning("control message not published: %s", exc)

    async def follow_control(self) -> None:
        """Claims, conflicts and revocations from the other front-ends and the CLI."""
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(self._channel)
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
                    event = control.decode(message["data"])
                    if event is not None:
                        await self._on_control(event)
                except Exception:
                    log.exception("bad control message %r", message.get("data"))
        finally:
            await pubsub.aclose()

    async def _on_control(self, event: control.Message) -> None:
        session = self._live.get(event.agent)
        if session is None:
            return
        if isinstance(event, control.Revoked):
            session.end(errors.Unauthenticated(f"credential of {event.agent!r} revoked"))
        elif isinstance(event, control.SettingsChanged):
            if session.protocol >= wire.PROTOCOL_SETTINGS:
                await self._push_settings(session)
        elif isinstance(event, control.Claim) and event.front_end != self.front_end_id:
            if _same_machine(session.machine_id, event.machine):
                session.end(
                    errors.Superseded(
                        "replaced by a newer connection of this agent (on another front-end)"
                    )
                )
            else:
                self._announce(
                    control.Conflict(
                        event.agent, event.front_end, event.session, session.machine_id
                    )
                )
        elif (
            isinstance(event, control.Conflict)
            and event.front_end == self.front_end_id
            and session.id == event.session
        ):
            try:
                self._conflict(session, event.holder_machine)
            except errors.Conflict as refused:
                self.release(session)
                session.end(refused)


def _same_machine(a: str, b: str) -> bool:
    return not a or not b or a == b  # an agent that sends none is taken at its word

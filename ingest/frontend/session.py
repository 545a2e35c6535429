"""One agent stream: what the front-end knows of it, and the outbox its answers leave through.

A reader task handles the agent's messages in order and puts the answers in the session's outbox,
which the stream writes out; the committed watermark, a newer connection of the same agent and a
revocation reach the session through the same outbox. An error put there ends the stream with the
status its class maps to (status.py), ``None`` ends it with OK.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import grpc

from fleetpulse import errors
from fleetpulse.ingest.frontend.admission import TokenBucket

Outgoing = bytes | errors.FleetpulseError | None


@dataclass
class Session:
    id: int
    peer_ip: str
    enrolling: bool  # authenticated with the enrollment token
    agent_id: str | None = None
    machine_id: str = ""
    protocol: int = 0  # AgentRegister.protocol (proto/wire.py)
    outbox: asyncio.Queue[Outgoing] = field(default_factory=asyncio.Queue)
    bucket: TokenBucket | None = None
    # What the front-end ended the stream with (the liveness cause of its going offline).
    ended_by: errors.FleetpulseError | None = None

    def send(self, message: bytes) -> None:
        self.outbox.put_nowait(message)

    def end(self, error: errors.FleetpulseError | None = None) -> None:
        """End the stream: with the status of ``error``, or OK."""
        if error is not None and self.ended_by is None:
            self.ended_by = error
        self.outbox.put_nowait(error)


def peer_ip(context: grpc.aio.ServicerContext) -> str:
    peer = context.peer() or ""  # "ipv4:127.0.0.1:53514", "ipv6:[::1]:53514", "unix:..."
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    if kind == "ipv6":
        return rest.rsplit(":", 1)[0].strip("[]")
    return ""

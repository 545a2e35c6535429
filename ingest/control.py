"""The control plane: the messages the front-ends, the API and the CLI publish to each other.

One Redis pub/sub channel per database (``keys.control_channel``) carries them to every front-end:

- ``Claim``: a front-end took an agent's stream; the others end theirs (same machine: replaced) or
  answer with a ``Conflict`` (another machine holds it: a cloned image).
- ``Conflict``: sent to the claiming front-end, which refuses its newcomer.
- ``Revoked``: an agent's credential was revoked (``fleetpulse agents revoke``); its streams end.
- ``SettingsChanged``: an agent's remote settings changed (API or CLI); the front-end that holds
  its stream pushes them.

Each message is one JSON object with a ``kind`` and the agent's id; the encoding is the wire
contract between processes of different versions during an upgrade, so fields are only added.
Delivery is best effort (pub/sub): a lost claim only delays the detection of a duplicate, a lost
settings push is made at the agent's next register.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import orjson
import redis
import redis.asyncio

from fleetpulse.ingest import keys


@dataclass(frozen=True)
class Claim:
    kind: ClassVar[str] = "claim"
    agent: str
    machine: str
    front_end: str
    session: int


@dataclass(frozen=True)
class Conflict:
    kind: ClassVar[str] = "conflict"
    agent: str
    front_end: str  # the claiming front-end, which refuses its session
    session: int
    holder_machine: str


@dataclass(frozen=True)
class Revoked:
    kind: ClassVar[str] = "revoked"
    agent: str


@dataclass(frozen=True)
class SettingsChanged:
    kind: ClassVar[str] = "settings"
    agent: str


Message = Claim | Conflict | Revoked | SettingsChanged
_KINDS: dict[str, Any] = {m.kind: m for m in (Claim, Conflict, Revoked, SettingsChanged)}


def encode(message: Message) -> bytes:
    return orjson.dumps({"kind": message.kind, **asdict(message)})


def decode(data: bytes | str) -> Message | None:
    """The message, or None for one this version does not know (or a malformed one)."""
    try:
        event = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(event, dict):
        return None
    kind = _KINDS.get(event.get("kind"))  # type: ignore[arg-type]
    if kind is None or not isinstance(event.get("agent"), str):
        return None
    if kind is Claim:
        return Claim(
            event["agent"],
            str(event.get("machine", "")),
            str(event.get("front_end", "")),
            _int(event.get("session")),
        )
    if kind is Conflict:
        return Conflict(
            event["agent"],
            str(event.get("front_end", "")),
            _int(event.get("session")),
            str(event.get("holder_machine", "")),
        )
    return kind(event["agent"])


def _int(value: Any) -> int:
    return value if isinstance(value, int) else -1


def publish(client: redis.Redis, message: Message) -> None:
    """Publish to every front-end of ``client``'s database."""
    client.publish(keys.control_channel(client), encode(message))


def publish_many(client: redis.Redis, messages: list[Message]) -> None:
    """Publish each, in one round trip (a rollout's wave announces thousands of agents)."""
    channel = keys.control_channel(client)
    pipe = client.pipeline(transaction=False)
    for message in messages:
        pipe.publish(channel, encode(message))
    pipe.execute()


async def publish_many_async(client: redis.asyncio.Redis, messages: list[Message]) -> None:
    channel = keys.control_channel(client)
    pipe = client.pipeline(transaction=False)
    for message in messages:
        pipe.publish(channel, encode(message))
    await pipe.execute()


async def publish_async(client: redis.asyncio.Redis, message: Message) -> None:
    await client.publish(keys.control_channel(client), encode(message))

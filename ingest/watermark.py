"""The committed watermark: what the workers publish after each commit, and how to read it.

After a chunk's transaction committed, the worker adds one entry to ``keys.COMMITTED_STREAM`` in
the same Redis transaction (MULTI) as its XACK, so a chunk is announced exactly when it is
acknowledged. The entry lists, per agent and epoch, the committed sequence numbers as closed
ranges: ``[[agent_id, epoch, [[first, last], ...]], ...]`` (orjson). Batches that the ledger
already held (a redelivery) are announced again: "committed" means final in PostgreSQL, whichever
delivery made it so. The front-ends read the stream (``CommittedFeed``) and relay it to the agents
they hold, which free their spool on it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import redis
import redis.asyncio

from fleetpulse.ingest import keys


@dataclass(frozen=True)
class Committed:
    """Batches of one agent and epoch, committed: sequences first..last, inclusive, per range."""

    agent_id: str
    epoch: int
    ranges: tuple[tuple[int, int], ...]

    def sequences(self) -> Iterator[int]:
        for first, last in self.ranges:
            yield from range(first, last + 1)


def encode(identities: Iterable[tuple[str, int, int]]) -> bytes:
    """(agent_id, epoch, sequence) triples (any order, repeats allowed) -> one entry's payload."""
    grouped: dict[tuple[str, int], set[int]] = {}
    for agent_id, epoch, sequence in identities:
        grouped.setdefault((agent_id, epoch), set()).add(sequence)
    payload: list[Any] = []
    for (agent_id, epoch), sequences in sorted(grouped.items()):
        ranges: list[list[int]] = []
        for sequence in sorted(sequences):
            if ranges and sequence == ranges[-1][1] + 1:
                ranges[-1][1] = sequence
            else:
                ranges.append([sequence, sequence])
        payload.append([agent_id, epoch, ranges])
    return orjson.dumps(payload)


def decode(payload: bytes) -> list[Committed]:
    return [
        Committed(agent_id, int(epoch), tuple((int(a), int(b)) for a, b in ranges))
        for agent_id, epoch, ranges in orjson.loads(payload)
    ]


def publish(pipe: redis.client.Pipeline, identities: Iterable[tuple[str, int, int]]) -> None:
    """Queue the announcement on ``pipe`` (the worker's XACK transaction)."""
    pipe.xadd(
        keys.COMMITTED_STREAM,
        {keys.FIELD_COMMITTED: encode(identities)},
        maxlen=keys.COMMITTED_MAXLEN,
        approximate=True,
    )


def _entries(response: Any, last_id: str) -> tuple[list[Committed], str]:
    """The announcements of an XREAD reply, and the id to read on from."""
    found: list[Committed] = []
    for _, items in response or ():
        for entry_id, fields in items:
            last_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
            found.extend(decode(fields[keys.FIELD_COMMITTED]))
    return found, last_id


class CommittedFeed:
    """Follows the watermark stream from now on (or from ``last_id``), without a consumer group:
    every front-end sees every announcement and keeps the ones for the agents it holds."""

    def __init__(self, client: redis.Redis, last_id: str | None = None) -> None:
        self._redis = client
        if last_id is None:
            # Resolve "now" once: XREAD with "$" in every call would miss what came in between.
            newest: Any = client.xrevrange(keys.COMMITTED_STREAM, count=1)
            last_id = newest[0][0].decode() if newest else "0-0"
        self.last_id = last_id

    def read(self, block_ms: int | None = 1000, count: int = 1000) -> list[Committed]:
        response: Any = self._redis.xread(
            {keys.COMMITTED_STREAM: self.last_id}, count=count, block=block_ms
        )
        found, self.last_id = _entries(response, self.last_id)
        return found


class AsyncCommittedFeed:
    """``CommittedFeed`` for the front-end's event loop."""

    def __init__(self, client: redis.asyncio.Redis, last_id: str) -> None:
        self._redis = client
        self.last_id = last_id

    @classmethod
    async def start(cls, client: redis.asyncio.Redis) -> AsyncCommittedFeed:
        newest: Any = await client.xrevrange(keys.COMMITTED_STREAM, count=1)
        return cls(client, newest[0][0].decode() if newest else "0-0")

    async def read(self, block_ms: int = 1000, count: int = 1000) -> list[Committed]:
        response: Any = await self._redis.xread(
            {keys.COMMITTED_STREAM: self.last_id}, count=count, block=block_ms
        )
        found, self.last_id = _entries(response, self.last_id)
        return found

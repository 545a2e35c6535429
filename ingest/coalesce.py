"""Many concurrent calls made as few round trips: the front-end's group commit.

Thousands of streams each need the same small thing from Redis or PostgreSQL at once (an XADD, a
register upsert, an offline mark): one round trip each is a query per item, and a mass reconnect of
50,000 agents queued 100,000 of them behind 8 PostgreSQL connections until the pool timed out
(docs/performance.md, "50,000 agents"). A ``Coalescer`` runs one call at a time; what is submitted
while it runs waits and goes together in the next call, up to ``max_batch`` items. When idle an
item waits for one round trip only, so nothing is added to a single call's latency.

The waiting room is bounded (``max_pending``): when it is full, ``submit`` waits, which holds the
caller (an agent's stream) instead of growing memory. An item whose caller gave up while it waited
is not sent. Items with the same ``key`` never share a call (one statement cannot upsert a row
twice): the later waits for the next call.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Generic, TypeVar

from fleetpulse import lifecycle

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger(__name__)

# Items per call unless a caller says otherwise: large enough for a reconnecting fleet (a few hundred
# registrations in one statement), small enough that one statement stays a few milliseconds.
MAX_BATCH = 500


class Coalescer(Generic[T, R]):
    """``await submit(item)`` returns ``call([... item ...])``'s result for the item.

    ``call`` gets the items in submission order and returns one result per item, in order; a
    result that is an exception is raised to that item's caller alone. If ``call`` raises, every
    item of that call gets the exception."""

    def __init__(
        self,
        call: Callable[[list[T]], Awaitable[Sequence[R | BaseException]]],
        *,
        name: str,
        max_batch: int = MAX_BATCH,
        max_pending: int = 0,
        key: Callable[[T], Hashable] | None = None,
    ) -> None:
        self._call = call
        self._name = name
        self._max_batch = max_batch
        self._key = key
        self._pending: asyncio.Queue[tuple[T, asyncio.Future[R]]] = asyncio.Queue(max_pending)
        # left for the next call: past max_batch, or with the key of an item already in the call
        self._held: list[tuple[T, asyncio.Future[R]]] = []
        self._runner: asyncio.Task[None] | None = None
        self._closed: BaseException | None = None

    async def submit(self, item: T) -> R:
        if self._closed is not None:
            raise self._closed
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        await self._pending.put((item, future))
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run(), name=self._name)
        return await future

    async def close(self, error: BaseException) -> None:
        """Stop calling; the items still waiting get ``error``, and so does every later submit."""
        self._closed = error
        if self._runner is not None:
            await lifecycle.cancel_and_wait([self._runner])
        waiting = self._held
        self._held = []
        while not self._pending.empty():
            waiting.append(self._pending.get_nowait())
        for _, future in waiting:
            if not future.done():
                future.set_exception(error)

    def _next_batch(self) -> list[tuple[T, asyncio.Future[R]]]:
        candidates = self._held
        self._held = []
        while len(candidates) < self._max_batch and not self._pending.empty():
            candidates.append(self._pending.get_nowait())
        batch: list[tuple[T, asyncio.Future[R]]] = []
        keys: set[Hashable] = set()
        for entry in candidates:
            item, future = entry
            if future.done():  # its caller gave up while it waited
                continue
            if len(batch) >= self._max_batch:
                self._held.append(entry)
                continue
            if self._key is not None:
                key = self._key(item)
                if key in keys:
                    self._held.append(entry)
                    continue
                keys.add(key)
            batch.append(entry)
        return batch

    async def _run(self) -> None:
        """Call while there is something to call; ends when nothing waits (submit restarts it)."""
        while self._held or not self._pending.empty():
            batch = self._next_batch()
            if not batch:
                continue
            try:
                results: Sequence[R | BaseException] = await self._call([i for i, _ in batch])
            except asyncio.CancelledError:
                for _, future in batch:
                    future.cancel()
                raise
            except Exception as exc:
                results = [exc] * len(batch)
            if len(results) != len(batch):
                problem = RuntimeError(
                    f"{self._name}: {len(results)} results for {len(batch)} items"
                )
                log.error("%s", problem)
                results = [problem] * len(batch)
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)

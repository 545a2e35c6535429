"""Stopping a task that talks to a real Redis: one cancel can be lost, cancel_and_wait is not."""

from __future__ import annotations

import asyncio
import random

import redis.asyncio

from fleetpulse.connections import REDIS_SOCKET_TIMEOUT_S as SOCKET_TIMEOUT_S
from fleetpulse.lifecycle import cancel_and_wait

ROUNDS = 40


async def ping_forever(client: redis.asyncio.Redis) -> None:
    while True:
        await client.ping()


def test_cancel_and_wait_ends_tasks_that_survive_a_single_cancel(redis_url: str) -> None:
    async def scenario() -> tuple[int, int]:
        client = redis.asyncio.Redis.from_url(redis_url, socket_timeout=SOCKET_TIMEOUT_S)
        survived_one_cancel = ended = 0
        try:
            for _ in range(ROUNDS):
                task = asyncio.create_task(ping_forever(client))
                await asyncio.sleep(random.uniform(0.0, 0.005))
                task.cancel()
                await asyncio.wait({task}, timeout=0.2)
                survived_one_cancel += not task.done()
                # A task that survives its cancels PINGs forever: any bound catches it. Not a
                # tight one: a cancel cannot cut redis-py's connection handshake short, which ends
                # at its socket timeout when Redis stalls (seen in CI: an AOF fsync on a busy
                # disk held the embedded Redis past 5 s, and the task ended in ConnectionError).
                async with asyncio.timeout(3 * SOCKET_TIMEOUT_S):
                    await cancel_and_wait([task])
                ended += task.done()
        finally:
            await client.aclose()
        return survived_one_cancel, ended

    survived_one_cancel, ended = asyncio.run(scenario())
    print(f"{survived_one_cancel} of {ROUNDS} tasks survived one cancel")  # shown by -rP
    assert ended == ROUNDS

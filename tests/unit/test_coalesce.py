"""The front-end's group commit (ingest/coalesce.py): calls under way make the next ones wait and
go together; each caller gets its own result or error."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Sequence

import pytest

from fleetpulse.ingest.coalesce import Coalescer


def in_loop(test: Callable[[], Awaitable[None]]) -> Callable[[], None]:
    @functools.wraps(test)
    def run() -> None:
        asyncio.run(test())  # type: ignore[arg-type]

    return run


class Recorder:
    """A ``call`` that records each group it gets and answers item * 10, after a tick."""

    def __init__(self, fail: set[int] | None = None, raise_on: int | None = None) -> None:
        self.calls: list[list[int]] = []
        self.fail = fail or set()
        self.raise_on = raise_on
        self.release = asyncio.Event()
        self.release.set()

    async def __call__(self, items: list[int]) -> list[int | BaseException]:
        self.calls.append(list(items))
        await self.release.wait()
        await asyncio.sleep(0)
        if self.raise_on in items:
            raise ConnectionError("database gone")
        return [ValueError(f"bad {i}") if i in self.fail else i * 10 for i in items]


async def one_in_call(c: Coalescer[int, int], call: Recorder, item: int) -> asyncio.Task[int]:
    """Submit ``item`` and return once its call is under way, held there until call.release."""
    call.release.clear()
    task = asyncio.create_task(c.submit(item))
    await asyncio.sleep(0.01)
    return task


@in_loop
async def test_concurrent_items_share_calls_and_get_their_own_results() -> None:
    call = Recorder()
    c: Coalescer[int, int] = Coalescer(call, name="t", max_batch=100)
    first = await one_in_call(c, call, 0)
    rest = [asyncio.create_task(c.submit(i)) for i in range(1, 50)]
    await asyncio.sleep(0.01)
    call.release.set()
    assert await asyncio.gather(first, *rest) == [i * 10 for i in range(50)]
    # The first item went alone (nothing else was waiting); the rest waited for it, together.
    assert call.calls == [[0], list(range(1, 50))]


@in_loop
async def test_a_lone_item_is_called_at_once() -> None:
    call = Recorder()
    c: Coalescer[int, int] = Coalescer(call, name="t", max_batch=100)
    assert await c.submit(7) == 70
    assert await c.submit(8) == 80
    assert call.calls == [[7], [8]]


@in_loop
async def test_groups_are_at_most_max_batch() -> None:
    call = Recorder()
    c: Coalescer[int, int] = Coalescer(call, name="t", max_batch=4)
    results = await asyncio.gather(*(c.submit(i) for i in range(11)))
    assert results == [i * 10 for i in range(11)]
    assert call.calls == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]


@in_loop
async def test_same_key_never_shares_a_call() -> None:
    call = Recorder()
    c: Coalescer[int, int] = Coalescer(call, name="t", max_batch=100, key=lambda i: i % 3)
    results = await asyncio.gather(*(c.submit(i) for i in range(7)))
    assert results == [i * 10 for i in range(7)]
    for group in call.calls:
        assert len({i % 3 for i in group}) == len(group)
    assert sorted(i for group in call.calls for i in group) == list(range(7))


@in_loop
async def test_an_item_error_reaches_its_caller_alone() -> None:
    call = Recorder(fail={3})
    c: Coalescer[int, int] = Coalescer(call, name="t", max_batch=100)
    results = await asyncio.gather(*(c.submit(i) for i in range(6)), return_exceptions=True)
    assert [r for i, r in enumerate(results) if i != 3] == [0, 10, 20, 40, 50]
    assert isinstance(results[3], ValueError) and str(results[3]) == "bad 3"


@in_loop
async def test_a_failed_call_fails_its_group_and_the_next_group_goes_on() -> None:
    call = Recorder(raise_on=2)
    c: Coalescer[int, int] = Coalescer(call, name="t", max_batch=3)
    results = await asyncio.gather(*(c.submit(i) for i in range(7)), return_exceptions=True)
    # groups: [0, 1, 2] (fails), [3, 4, 5], [6]
    assert call.calls == [[0, 1, 2], [3, 4, 5], [6]]
    assert all(isinstance(r, ConnectionError) for r in results[:3])
    assert results[3:] == [30, 40, 50, 60]


@in_loop
async def test_a_failed_call_does_not_stop_the_coalescer() -> None:
    call = Recorder(raise_on=0)
    c: Coalescer[int, int] = Coalescer(call, name="t", max_batch=3)
    with pytest.raises(ConnectionError):
        await c.submit(0)
    results = [await c.submit(i) for i in range(1, 4)]
    assert results == [10, 20, 30]


@in_loop
async def test_an_item_whose_caller_gave_up_is_not_sent() -> None:
    call = Recorder()
    c: Coalescer[int, int] = Coalescer(call, name="t", max_batch=100)
    first = await one_in_call(c, call, 1)
    given_up = asyncio.create_task(c.submit(2))
    kept = asyncio.create_task(c.submit(3))
    await asyncio.sleep(0.01)
    given_up.cancel()
    call.release.set()
    assert await first == 10
    assert await kept == 30
    assert call.calls == [[1], [3]]


@in_loop
async def test_a_full_waiting_room_holds_the_submitter() -> None:
    call = Recorder()
    c: Coalescer[int, int] = Coalescer(call, name="t", max_batch=100, max_pending=2)
    first = await one_in_call(c, call, 0)
    tasks = [first] + [asyncio.create_task(c.submit(i)) for i in range(1, 5)]
    await asyncio.sleep(0.01)
    # 0 is in its call; 1 and 2 fill the waiting room; 3 and 4 are held in submit.
    assert call.calls == [[0]]
    assert c._pending.qsize() == 2
    assert not any(t.done() for t in tasks)
    call.release.set()
    assert await asyncio.gather(*tasks) == [0, 10, 20, 30, 40]


@in_loop
async def test_close_fails_the_waiting_and_later_submits() -> None:
    call = Recorder()
    c: Coalescer[int, int] = Coalescer(call, name="t", max_batch=100)
    in_call = await one_in_call(c, call, 1)
    waiting = asyncio.create_task(c.submit(2))
    await asyncio.sleep(0.01)
    await c.close(ConnectionError("stopping"))
    with pytest.raises(asyncio.CancelledError):
        await in_call
    with pytest.raises(ConnectionError, match="stopping"):
        await waiting
    with pytest.raises(ConnectionError, match="stopping"):
        await c.submit(3)


@in_loop
async def test_wrong_result_count_is_an_error_for_every_item() -> None:
    async def short(items: list[int]) -> Sequence[int | BaseException]:
        return items[:-1]

    c: Coalescer[int, int] = Coalescer(short, name="t", max_batch=100)
    results = await asyncio.gather(*(c.submit(i) for i in range(3)), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) and "2 results for 3 items" in str(r) for r in results)

"""A registration burst that outruns the front-end's event loop: every call waits its turn.

gRPC keeps a call it received in a queue until the event loop takes it up, and by default cancels
calls past 1,000 waiting (at random; all past 3,000) or older than 30 s: agents saw CANCELLED, or
INTERNAL "Internal error from Core" when their register write met the cancelled call, and every
retry cost the front-end another handshake (docs/performance.md, "50,000 agents"). Here the
server is the front-end's own (``build_server``, with its options); its handler is a small fake
of the agent service that answers each stream's first message. Its event loop is held busy for
3 s while a client in another process opens 4,000 streams: all of them must be answered.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from fleetpulse.ingest.frontend.server import build_server
from fleetpulse.proto import wire
from fleetpulse.settings import Settings
from tests.processes import free_port

STREAMS = 4_000  # more than gRPC's default hard limit of 3,000 waiting calls


class EchoFirst:
    """The agent service's one method, answering the first message of each stream."""

    async def connect(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        async for message in requests:
            yield message
            return


def open_streams(target: str, count: int, results: Any) -> None:
    """In a process of its own: ``count`` streams on one connection, each writes and reads one
    message; the outcomes counted."""

    async def one(channel: grpc.aio.Channel) -> str:
        call = channel.stream_stream(wire.CONNECT_METHOD)()
        try:
            await call.write(b"register")
            await call.read()
            return "answered"
        except grpc.aio.AioRpcError as exc:
            return exc.code().name

    async def run() -> Counter[str]:
        async with grpc.aio.insecure_channel(target) as channel:
            return Counter(await asyncio.gather(*(one(channel) for _ in range(count))))

    results.put(asyncio.run(run()))


def test_calls_that_outrun_the_event_loop_wait_instead_of_being_cancelled(
    repo_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(repo_root))  # the client process imports this module

    async def scenario() -> Counter[str]:
        port = free_port()
        settings = Settings(grpc_host="127.0.0.1", grpc_port=port)
        server = build_server(EchoFirst(), settings)  # type: ignore[arg-type]
        await server.start()
        context = multiprocessing.get_context("spawn")
        results = context.Queue()
        client = context.Process(target=open_streams, args=(f"127.0.0.1:{port}", STREAMS, results))
        client.start()
        time.sleep(3.0)  # noqa: ASYNC251  # on purpose: the loop takes up no call, they queue in gRPC
        while results.empty():  # a multiprocessing queue cannot be awaited
            assert client.is_alive() or not results.empty(), "the client process died"
            await asyncio.sleep(0.1)
        outcome: Counter[str] = results.get()
        client.join(10)
        await server.stop(0)
        return outcome

    assert asyncio.run(scenario()) == Counter({"answered": STREAMS})

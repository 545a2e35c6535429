"""Simulated agents: thousands per process, each on its own gRPC channel and stream.

Every simulated agent speaks the real protocol as the project's agent does: its stream as
simagent.py opens it (a channel of its own, bearer enrollment token, register), heartbeats, metric
batches with (epoch, sequence) identity, replay of what was not acknowledged after a broken stream,
a batch refused for now (``retry_after_ms``: workers behind, queue unavailable) kept and sent
again after that delay on the same stream. Batches come from `encoder.BatchEncoder` (numpy
templates), so the simulator's own CPU stays small next to the platform's.

Modes: ``realistic`` sends one batch per agent every ``interval_s`` (phases spread at random);
``saturate`` sends the next batch as soon as the previous one is acknowledged (``window`` batches
in flight per agent).

A process reports live counters through a shared array and, at the end, one ``AgentResult`` per
agent (what it sent, and when) through a queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from multiprocessing.sharedctypes import SynchronizedArray
from typing import Any

import grpc
import numpy as np

from fleetpulse.bench import simagent
from fleetpulse.bench.encoder import BatchEncoder, ColumnarEncoder
from fleetpulse.bench.hostseries import HostModel, host_series

log = logging.getLogger(__name__)

AGENT_KIND = "bench"  # its agents are bench-<run id>-<n> (simagent.agent_id_for)
# Live counters, one row of NFIELDS per simulator process.
SENT_BATCHES, SENT_POINTS, ACKED_BATCHES, ACKED_POINTS, CONNECTED, STREAM_ERRORS, REFUSED = range(7)
NFIELDS = 7
DRAIN_TIMEOUT_S = 30.0
VALUE_BLOCK = 32


@dataclass(frozen=True)
class SimConfig:
    target: str
    token: str
    mode: str  # "realistic" | "saturate"
    run_id: str
    epoch: int
    series_per_agent: int
    interval_s: float
    heartbeat_interval_s: float
    ramp_s: float
    window: int = 1
    form: str = "columnar"  # "columnar" (the project's agent) | "rows" (the original protocol)
    values: str = "host"  # "host" (bench/hostseries.py) | "walk" (full-precision random walks)


@dataclass
class AgentResult:
    agent_id: str
    epoch: int
    points_per_batch: int
    batches_sent: int
    batches_acked: int
    last_seq: int
    send_ns: np.ndarray  # first-send time of batch seq, at index seq - 1
    # by reason: the status code and details of each
    stream_failures: Counter[str] = field(default_factory=Counter)


class SimAgent(simagent.SimulatedAgent):
    def __init__(self, config: SimConfig, index: int, stats: Any, offset: int) -> None:
        super().__init__(AGENT_KIND, config.run_id, index, stats, offset)
        self.config = config
        series = host_series(config.series_per_agent)
        encoder_type = ColumnarEncoder if config.form == "columnar" else BatchEncoder
        self.encoder = encoder_type(self.agent_id, series)
        self._rng = np.random.default_rng(index)
        self._model = HostModel(1, len(series), self._rng, time.time(), noise=self._rng)
        self._values = self._rng.uniform(0, 100, size=len(series))
        self._block = np.empty((len(series), 0))  # host values of the next batches, by column
        self._next_seq = 1
        self._last_ts_ns = 0
        self._unacked: OrderedDict[int, bytes] = OrderedDict()
        # Refused for now on the current stream (retry_after_ms): sent again on it at _retry_at.
        self._deferred: set[int] = set()
        self._retry_at: float | None = None
        # Set by the reader (an answer arrived) and by wake(): the sender looks again.
        self._wakeup = asyncio.Event()
        self.send_ns: list[int] = []
        self.batches_acked = 0
        self.drain_deadline = float("inf")  # set when the run stops: give up replaying after it
        self._failures: Counter[str] = Counter()

    def _new_batch(self) -> tuple[int, bytes]:
        seq = self._next_seq
        self._next_seq += 1
        values = self._next_values()
        # Strictly increasing per agent at microsecond resolution (what PostgreSQL stores), so that
        # (series, ts) identifies a point and duplicates are detectable.
        now_ns = max(time.time_ns(), self._last_ts_ns + 1000)
        self._last_ts_ns = now_ns
        payload = self.encoder.encode(self.config.epoch, seq, now_ns, values)
        self._unacked[seq] = payload
        self.send_ns.append(now_ns)
        self._count(SENT_BATCHES)
        self._count(SENT_POINTS, self.encoder.points)
        return seq, payload

    def _next_values(self) -> np.ndarray:
        if self.config.values == "walk":
            self._values += self._rng.normal(0, 1, size=len(self._values))
            return self._values
        if not self._block.shape[1]:
            # VALUE_BLOCK batches' values at once (numpy's cost is per call), one interval apart.
            times = time.time() + self.config.interval_s * np.arange(VALUE_BLOCK)
            self._block = self._model.values(times)
        values, self._block = self._block[:, 0], self._block[:, 1:]
        return values

    async def run(self, start_delay_s: float, stopping: asyncio.Event) -> None:
        await asyncio.sleep(start_delay_s)
        while not (stopping.is_set() and not self._unacked):
            try:
                await self._session(stopping)
            except (grpc.aio.AioRpcError, simagent.StreamEnded, asyncio.InvalidStateError) as exc:
                # InvalidStateError: the call ended (its front-end went away) while the sender was
                # writing; write() says so instead of raising the call's status. Either way the
                # stream is gone: reconnect and replay what was not acknowledged.
                self._count(STREAM_ERRORS)
                self._failures[_failure_reason(exc)] += 1
                log.debug("%s: stream failed: %s", self.agent_id, exc)
                await asyncio.sleep(random.uniform(0.1, 1.0))
            if stopping.is_set() and time.monotonic() > self.drain_deadline:
                return

    async def _session(self, stopping: asyncio.Event) -> None:
        async with simagent.session(self.config.target, self.config.token, self._register) as call:
            self._count(CONNECTED)
            reader = asyncio.create_task(self._read_acks(call))
            reader.add_done_callback(lambda _: self._wakeup.set())  # a broken stream wakes us
            try:
                await self._send_loop(call, reader, stopping)
            finally:
                reader.cancel()
                if reader.done() and not reader.cancelled():
                    reader.exception()  # retrieved: the stream's error was handled as a whole
                self._count(CONNECTED, -1)

    async def _send_loop(
        self, call: Any, reader: asyncio.Task[None], stopping: asyncio.Event
    ) -> None:
        # A new stream has seen nothing: replay everything not acknowledged (what was deferred on
        # the old stream included); the ledger makes a batch the platform already has a no-op.
        self._deferred.clear()
        self._retry_at = None
        for payload in list(self._unacked.values()):
            await call.write(payload)
        config = self.config
        now = time.monotonic()
        next_heartbeat = now + config.heartbeat_interval_s
        next_send = now + (
            random.uniform(0, config.interval_s) if config.mode == "realistic" else 0
        )
        while True:
            # Cleared before looking, so that an answer arriving while a write awaits wakes us.
            self._wakeup.clear()
            if reader.done():
                reader.result()
                raise grpc.aio.AioRpcError(
                    grpc.StatusCode.UNAVAILABLE, None, None, "server closed the stream"
                )
            now = time.monotonic()
            if self._retry_at is not None and now >= self._retry_at:
                # Taken before the writes: a refusal answered meanwhile defers its batch anew.
                due, self._deferred, self._retry_at = sorted(self._deferred), set(), None
                for seq in due:
                    payload = self._unacked.get(seq)
                    if payload is not None:
                        await call.write(payload)
            if stopping.is_set():
                if not self._unacked:
                    await call.done_writing()
                    return
            elif config.mode == "saturate":
                while len(self._unacked) < config.window:
                    await call.write(self._new_batch()[1])
            elif now >= next_send:
                await call.write(self._new_batch()[1])
                next_send += config.interval_s
            if now >= next_heartbeat:
                await call.write(simagent.heartbeat_message(self.agent_id))
                next_heartbeat = now + config.heartbeat_interval_s
            wake_at = (
                next_heartbeat
                if config.mode == "saturate" or stopping.is_set()
                else min(next_send, next_heartbeat)
            )
            if self._retry_at is not None:
                wake_at = min(wake_at, self._retry_at)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._wakeup.wait(), timeout=max(0.0, wake_at - time.monotonic())
                )

    async def _read_acks(self, call: Any) -> None:
        while True:
            response = await call.read()
            if response is grpc.aio.EOF:
                return
            if response.WhichOneof("message") != "metric_ack":
                continue
            ack = response.metric_ack
            if not ack.success:
                self._count(REFUSED)
                if ack.retry_after_ms:
                    # Not now (workers behind, queue unavailable, over the agent's rate): keep
                    # it and send it again after the delay, as the project's agent does.
                    self._deferred.add(ack.sequence)
                    retry_at = time.monotonic() + ack.retry_after_ms / 1000
                    self._retry_at = max(self._retry_at or 0.0, retry_at)
                elif self._unacked.pop(ack.sequence, None) is not None:
                    # Refused for good: never stored (verification reports it missing).
                    log.warning("%s: batch %d refused: %s", self.agent_id, ack.sequence, ack.error)
                self._wakeup.set()
                continue
            if self._unacked.pop(ack.sequence, None) is not None:
                self.batches_acked += 1
                self._count(ACKED_BATCHES)
                self._count(ACKED_POINTS, self.encoder.points)
                self._wakeup.set()

    def wake(self) -> None:
        self._wakeup.set()

    def result(self) -> AgentResult:
        return AgentResult(
            agent_id=self.agent_id,
            epoch=self.config.epoch,
            points_per_batch=self.encoder.points,
            batches_sent=self._next_seq - 1,
            batches_acked=self.batches_acked,
            last_seq=self._next_seq - 1,
            send_ns=np.asarray(self.send_ns, dtype=np.int64),
            stream_failures=self._failures,
        )


def _failure_reason(exc: Exception) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"[:120]
    if isinstance(exc, simagent.StreamEnded):  # reported as the status of a failed call
        return f"{grpc.StatusCode.UNKNOWN.name}: {exc}"[:120]
    return f"{type(exc).__name__}: {exc}"[:120]


async def _simulate(
    config: SimConfig, indexes: range, stats: Any, offset: int, stop: Any, parent_pid: int
) -> list[AgentResult] | None:
    """Run the agents until ``stop`` is set, then let them drain; None if the bench died."""
    agents = [SimAgent(config, index, stats, offset) for index in indexes]
    stopping = asyncio.Event()
    spread_s = config.ramp_s / max(1, len(agents))
    tasks = [
        asyncio.create_task(agent.run(i * spread_s, stopping)) for i, agent in enumerate(agents)
    ]
    # `stop` is a multiprocessing.Event set by the parent process: it cannot be awaited.
    while not stop.is_set():
        if os.getppid() != parent_pid:  # the bench is gone (killed): nobody to report to
            for task in tasks:
                task.cancel()
            return None
        await asyncio.sleep(0.1)
    stopping.set()
    for agent in agents:
        agent.drain_deadline = time.monotonic() + DRAIN_TIMEOUT_S
        agent.wake()  # so that a sender waiting for an ack sees `stopping`
    done, pending = await asyncio.wait(tasks, timeout=DRAIN_TIMEOUT_S + 5)
    for task in pending:
        task.cancel()
    for agent, task in zip(agents, tasks, strict=True):
        if task in done and not task.cancelled() and task.exception() is not None:
            log.error("%s failed", agent.agent_id, exc_info=task.exception())
    return [agent.result() for agent in agents]


def simulator_main(
    config: SimConfig,
    indexes: range,
    stats: SynchronizedArray[Any],
    process_index: int,
    stop: Any,
    results: Any,
) -> None:
    """Entry point of one simulator process (multiprocessing target)."""
    from fleetpulse.lifecycle import raise_open_files_limit, set_process_title

    set_process_title(f"fleetpulse bench simulator {process_index + 1}")
    raise_open_files_limit()  # one socket per simulated agent
    # The bench process decides when to stop (through `stop`), also on a Ctrl-C sent to the whole
    # process group: here it would only cut the drain short.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import uvloop

    outcome = uvloop.run(
        _simulate(config, indexes, stats, process_index * NFIELDS, stop, os.getppid())
    )
    if outcome is not None:
        results.put(outcome)

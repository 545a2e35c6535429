"""1,000 agents lose their front-end at the same moment: their reconnects spread over the backoff
window instead of arriving together (issue 6, "no thundering herd")."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import numpy as np

from fleetpulse.agent.backoff import Backoff
from fleetpulse.agent.config import AgentConfig
from fleetpulse.agent.daemon import AgentDaemon
from fleetpulse.proto import wire
from tests.integration.conftest import TOKEN, ingest_env
from tests.integration.test_edge import Stream
from tests.integration.test_frontend import register
from tests.processes import fleetpulse_process, free_port, stop, wait_for_port

AGENTS = 1000


class CountingAgent(AgentDaemon):
    """The real daemon, noting when each connection attempt starts."""

    def __init__(self, config: AgentConfig) -> None:
        super().__init__(config)
        self.attempts: list[float] = []
        self.ended: list[float] = []
        self.delays: list[tuple[float, float]] = []  # (when chosen, delay chosen)
        agent = self

        class RecordingBackoff(Backoff):
            def next_delay_s(self, floor_s: float = 0.0) -> float:
                delay = super().next_delay_s(floor_s)
                agent.delays.append((time.monotonic(), delay))
                return delay

        self.backoff_factory = RecordingBackoff

    async def _session(self, channel):  # type: ignore[no-untyped-def]
        self.attempts.append(time.monotonic())
        try:
            return await super()._session(channel)
        finally:
            self.ended.append(time.monotonic())


def test_a_thousand_agents_spread_their_reconnects(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    port = free_port()
    env = ingest_env(database_url, redis_url, port)

    async def scenario(kill_front_end) -> tuple[float, list[CountingAgent]]:  # type: ignore[no-untyped-def]
        agents = [
            CountingAgent(
                AgentConfig(
                    server_address=f"127.0.0.1:{port}",
                    agent_id=f"herd-{i}",
                    enrollment_token=TOKEN,
                    collect_interval_s=3600,  # idle: only the connection matters here
                    heartbeat_interval_s=3600,
                    state_dir=tmp_path / "agents" / str(i),
                    collectors=frozenset({"load"}),
                )
            )
            for i in range(AGENTS)
        ]
        for agent in agents:
            agent._loop = asyncio.get_running_loop()
        tasks = [asyncio.create_task(agent._connect_forever()) for agent in agents]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(a.attempts for a in agents):  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        # connected long enough to count as a stable session (STABLE_SESSION_S = 10 s)
        await asyncio.sleep(max(a.attempts[-1] for a in agents) + 11 - time.monotonic())
        killed_at = time.monotonic()
        kill_front_end()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not all(  # noqa: ASYNC110
            any(t > killed_at for t in a.attempts) for a in agents
        ):
            await asyncio.sleep(0.2)
        for agent in agents:
            agent._stopping.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return killed_at, agents

    with fleetpulse_process(["ingest"], env, tmp_path / "ingest.log") as proc:
        wait_for_port(port, proc)
        killed_at, agents = asyncio.run(scenario(proc.kill))

    # The delay each agent's backoff chose after its stream to the dead front-end failed, and
    # when its retry reached the (dead) address.
    delays, arrivals = [], []
    for agent in agents:
        delays.append(next(d for t, d in agent.delays if t > killed_at))
        retry = next(t for t in agent.attempts if t > killed_at)
        arrivals.append(retry - killed_at)
    delays_s, arrivals_s = np.array(delays), np.array(arrivals)
    window = 0.5  # Backoff.base_s: after a stable session the first retry is uniform in [0, 0.5 s]
    assert delays_s.max() <= window
    counts, _ = np.histogram(delays_s, bins=10, range=(0, window))
    # uniform: each tenth of the window gets 10 % +- 5 % of the fleet
    assert counts.min() >= AGENTS * 0.05 and counts.max() <= AGENTS * 0.15, counts
    # and the address sees them spread out. Their arrival times are blurred by running 1,000
    # agents in one event loop (it stalls for a few hundred ms while handling 1,000 failures, then
    # releases a burst), so only the spread is checked there, not the shape.
    assert np.percentile(arrivals_s, 95) - np.percentile(arrivals_s, 5) >= 0.35


def test_a_stopping_front_end_spreads_its_agents_return(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    """SIGTERM: each registered stream ends UNAVAILABLE with a retry-after drawn over (agents /
    ingest_reconnect_rate) seconds, the delay the agents wait before coming back."""
    port = free_port()
    env = {**ingest_env(database_url, redis_url, port), "FLEETPULSE_INGEST_RECONNECT_RATE": "4"}
    streams = []
    with fleetpulse_process(["ingest"], env, tmp_path / "ingest.log") as proc:
        wait_for_port(port, proc)
        for n in range(20):
            stream = Stream(f"127.0.0.1:{port}", TOKEN)
            stream.send(register(f"away-{n}", f"m{n}"))
            stream.wait_for("register_response")
            streams.append(stream)
        stop(proc)
    delays = []
    for stream in streams:
        error = stream.wait_closed()
        assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE, error
        assert "front-end is stopping" in (error.details() or "")
        delays.append(wire.retry_after_s(error.trailing_metadata()))
    # 20 agents at 4 per second: spread over 5 s, not all at once
    assert all(0 <= d <= 5.0 for d in delays), delays
    assert max(delays) - min(delays) >= 1.0, delays

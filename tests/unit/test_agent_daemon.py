"""The agent daemon's answer to a refused enrollment, against an in-process stand-in platform (a
gRPC server that ends every stream with one status): stop and say what to do when it never
enrolled, keep retrying when it had."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import pytest

from fleetpulse.agent.backoff import Backoff
from fleetpulse.agent.config import AgentConfig
from fleetpulse.agent.daemon import AgentDaemon
from fleetpulse.agent.spool import Spool

# Guards against a hang, not timings under test.
GUARD_S = 30.0


class RefusingPlatform:
    """Answers every Connect stream with ``code`` and ``details``, counting the streams.
    Created inside the event loop it serves on."""

    def __init__(self, code: grpc.StatusCode, details: str, streams_awaited: int = 1) -> None:
        self.code, self.details = code, details
        self.streams = 0
        self.awaited = asyncio.Event()  # set at the streams_awaited-th stream
        self.server = grpc.aio.server()

        async def connect(requests: object, context: grpc.aio.ServicerContext) -> None:
            self.streams += 1
            if self.streams >= streams_awaited:
                self.awaited.set()
            await context.abort(self.code, self.details)

        handler = grpc.stream_stream_rpc_method_handler(connect)
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("proto.AgentService", {"Connect": handler}),)
        )
        self.port = self.server.add_insecure_port("127.0.0.1:0")


def config(state_dir: Path, port: int, token: str | None) -> AgentConfig:
    return AgentConfig(
        server_address=f"127.0.0.1:{port}",
        agent_id="web-1",
        enrollment_token=token,
        collect_interval_s=60.0,
        state_dir=state_dir,
        collectors=frozenset({"load"}),
    )


def run_until_refused(
    state_dir: Path, token: str | None, code: grpc.StatusCode, details: str
) -> tuple[AgentDaemon, int]:
    """Run a daemon against a platform refusing with ``code``; the daemon and the streams seen."""

    async def scenario() -> tuple[AgentDaemon, int]:
        platform = RefusingPlatform(code, details)
        daemon = AgentDaemon(config(state_dir, platform.port, token))
        await platform.server.start()
        try:
            await asyncio.wait_for(daemon.run(handle_signals=False), GUARD_S)
        finally:
            await platform.server.stop(None)
        return daemon, platform.streams

    return asyncio.run(scenario())


@pytest.mark.parametrize(
    ("token", "details", "expected"),
    [
        ("wrong", "invalid credential", "the enrollment token was refused"),
        (None, "missing credential", "no enrollment token is set"),
    ],
)
def test_a_first_enrollment_refused_as_unauthenticated_stops_and_names_the_token(
    tmp_path: Path, token: str | None, details: str, expected: str
) -> None:
    daemon, streams = run_until_refused(tmp_path, token, grpc.StatusCode.UNAUTHENTICATED, details)

    assert streams == 1  # no retry
    assert daemon.refusal is not None
    assert f"(UNAUTHENTICATED: {details})" in daemon.refusal
    assert "FLEETPULSE_ENROLLMENT_TOKEN" in daemon.refusal
    assert f"no credential at {tmp_path / 'credential'}" in daemon.refusal
    assert expected in daemon.refusal
    assert "\n" not in daemon.refusal
    # stopped as a normal stop does: the collected batch kept, the account written
    kept = Spool(tmp_path / "spool", max_bytes=1 << 20).pending()
    (account,) = json.loads((tmp_path / "sent.json").read_text())["epochs"].values()
    assert len(kept) == account["batches_sent"] == 1


def test_a_first_enrollment_of_a_taken_id_stops_and_names_revoke(tmp_path: Path) -> None:
    daemon, streams = run_until_refused(
        tmp_path, "right", grpc.StatusCode.PERMISSION_DENIED, "agent 'web-1' is enrolled"
    )

    assert streams == 1
    assert daemon.refusal is not None
    assert "fleetpulse agents revoke web-1" in daemon.refusal
    assert "agent.id" in daemon.refusal


@pytest.mark.parametrize(
    "code", [grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED]
)
def test_an_agent_enrolled_before_keeps_retrying(tmp_path: Path, code: grpc.StatusCode) -> None:
    (tmp_path / "credential").write_text("fpa_issued-by-a-platform-now-restarting\n")

    async def scenario() -> AgentDaemon:
        platform = RefusingPlatform(code, "refused", streams_awaited=3)
        daemon = AgentDaemon(config(tmp_path, platform.port, None))
        daemon.backoff_factory = lambda: Backoff(base_s=0.01, cap_s=0.05)
        await platform.server.start()
        running = asyncio.create_task(daemon.run(handle_signals=False))
        try:
            await asyncio.wait_for(platform.awaited.wait(), GUARD_S)  # refused three times
            assert not running.done()
            daemon.stop_threadsafe()
            await asyncio.wait_for(running, GUARD_S)
        finally:
            running.cancel()
            await platform.server.stop(None)
        return daemon

    daemon = asyncio.run(scenario())
    assert daemon.refusal is None
    assert (tmp_path / "credential").exists()  # kept: no token to enroll again with

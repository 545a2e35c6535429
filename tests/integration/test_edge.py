"""The front-end as a real process (issue 5): credentials and identity, replacement and cloned
images, backpressure, fairness, empty and oversized input, committed relay, disconnect, /metrics."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import psycopg
import pytest
import redis

from fleetpulse import liveness
from fleetpulse.bench.ports import free_ports
from fleetpulse.ingest import keys, watermark
from fleetpulse.proto import agent_pb2, agent_pb2_grpc, common_pb2, metric_pb2
from fleetpulse.settings import Settings
from tests.integration.conftest import TOKEN, ingest_env
from tests.integration.test_frontend import heartbeat, register
from tests.processes import fleetpulse_process, free_port, wait_for_port


@dataclass
class Edge:
    address: str
    database_url: str
    redis_url: str
    redis: redis.Redis
    metrics_port: int


def start_edge(database_url: str, redis_url: str, tmp_path: Path, **extra: str) -> Iterator[Edge]:
    port, metrics_port = free_port(), free_port()
    env = ingest_env(database_url, redis_url, port, metrics_port=metrics_port)
    env.update(extra)
    with fleetpulse_process(["ingest"], env, tmp_path / "ingest.log") as proc:
        wait_for_port(port, proc)
        client = redis.Redis.from_url(redis_url)
        yield Edge(f"127.0.0.1:{port}", database_url, redis_url, client, metrics_port)
        client.close()


@pytest.fixture
def edge(database_url: str, redis_url: str, tmp_path: Path) -> Iterator[Edge]:
    yield from start_edge(database_url, redis_url, tmp_path)


class Stream:
    """One open Connect stream: send messages whenever, collect what comes back."""

    def __init__(self, address: str, token: str) -> None:
        # its own connection, as a separate agent would have (channels otherwise share one)
        self._channel = grpc.insecure_channel(
            address, options=[("grpc.use_local_subchannel_pool", 1)]
        )
        self._outgoing: queue.Queue[agent_pb2.AgentMessage | None] = queue.Queue()
        self.received: list[agent_pb2.ServerMessage] = []
        self.error: grpc.RpcError | None = None
        self.done = threading.Event()
        stub = agent_pb2_grpc.AgentServiceStub(self._channel)
        self._call = stub.Connect(
            iter(self._outgoing.get, None), metadata=(("authorization", f"Bearer {token}"),)
        )
        threading.Thread(target=self._collect, daemon=True).start()

    def _collect(self) -> None:
        try:
            for message in self._call:
                self.received.append(message)
        except grpc.RpcError as exc:
            self.error = exc
        finally:
            self.done.set()

    def send(self, *messages: agent_pb2.AgentMessage) -> None:
        for message in messages:
            self._outgoing.put(message)

    def wait_for(self, kind: str, count: int = 1, timeout_s: float = 10.0) -> list:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = [getattr(m, kind) for m in self.received if m.WhichOneof("message") == kind]
            if len(found) >= count:
                return found
            if self.done.is_set():
                break
            time.sleep(0.02)
        raise AssertionError(f"no {count} x {kind}; got {self.received}, error {self.error}")

    def wait_closed(self, timeout_s: float = 10.0) -> grpc.RpcError | None:
        assert self.done.wait(timeout_s), "the stream stayed open"
        return self.error

    def close(self) -> None:
        self._outgoing.put(None)
        self.done.wait(5)
        self._channel.close()


def columns(agent_id: str, seq: int, values: int = 3) -> agent_pb2.AgentMessage:
    now = time.time_ns()
    return agent_pb2.AgentMessage(
        metric_columns=metric_pb2.ColumnarBatch(
            agent_id=agent_id,
            epoch=7,
            sequence=seq,
            values=[float(i) for i in range(values)],
            timestamps_ns=[now] if values else [],
            series=metric_pb2.SeriesSet(
                entries=[metric_pb2.SeriesDef(name=f"m{i}") for i in range(values)]
            ),
        )
    )


def wait_for_history(edge: Edge, agent_id: str, count: int) -> list[tuple[str, str, str]]:
    """The agent's liveness transitions (state, cause, detail), oldest first, once there are
    ``count`` of them."""
    deadline = time.monotonic() + 10
    while True:
        with psycopg.connect(edge.database_url) as conn:
            rows = conn.execute(
                "SELECT state, cause, detail FROM agent_liveness WHERE agent_id = %s ORDER BY id",
                (agent_id,),
            ).fetchall()
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def enroll(edge: Edge, agent_id: str, machine_id: str = "m1") -> str:
    stream = Stream(edge.address, TOKEN)
    stream.send(register(agent_id, machine_id))
    credential = stream.wait_for("credential")[0]
    stream.close()
    assert credential.agent_id == agent_id
    return credential.token


def queued(edge: Edge) -> int:
    return sum(edge.redis.xlen(keys.stream_key(shard)) for shard in range(2))


def agent_row(edge: Edge, agent_id: str, columns_: str) -> tuple:
    with psycopg.connect(edge.database_url) as conn:
        return conn.execute(
            f"SELECT {columns_} FROM agents WHERE agent_id = %s", (agent_id,)
        ).fetchone()


def test_enrollment_issues_a_credential_that_becomes_the_identity(edge: Edge) -> None:
    token = enroll(edge, "id-1")
    with psycopg.connect(edge.database_url) as conn:
        stored = conn.execute(
            "SELECT token_hash FROM agent_credentials WHERE agent_id = 'id-1'"
        ).fetchone()[0]
    assert token.encode() not in bytes(stored)  # only its hash is kept

    stream = Stream(edge.address, token)
    stream.send(register("id-1", "m1"), heartbeat("id-1"), columns("id-1", 1))
    assert stream.wait_for("metric_ack")[0].success
    stream.close()

    # The enrollment token can no longer claim the id (tests/badinput/test_enrollment_binding.py)...
    thief = Stream(edge.address, TOKEN)
    thief.send(register("id-1", "m2"))
    assert thief.wait_closed().code() == grpc.StatusCode.PERMISSION_DENIED
    # ...and the credential names one agent only.
    other = Stream(edge.address, token)
    other.send(register("id-2", "m1"))
    error = other.wait_closed()
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED and "id-1" in error.details()
    wrong = Stream(edge.address, "fpa_not-a-real-credential")
    wrong.send(register("id-1"))
    assert wrong.wait_closed().code() == grpc.StatusCode.UNAUTHENTICATED
    assert queued(edge) == 1


def test_revoked_credential_closes_the_stream_and_is_refused(edge: Edge, tmp_path: Path) -> None:
    token = enroll(edge, "rv-1")
    stream = Stream(edge.address, token)
    stream.send(register("rv-1", "m1"))
    stream.wait_for("register_response")
    env = {"FLEETPULSE_DATABASE_URL": edge.database_url, "FLEETPULSE_REDIS_URL": edge.redis_url}
    result = subprocess.run(
        [sys.executable, "-m", "fleetpulse", "agents", "revoke", "rv-1"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    error = stream.wait_closed()
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED and "revoked" in error.details()
    # its history says why it went offline
    assert wait_for_history(edge, "rv-1", 4)[-1][:2] == ("offline", liveness.REVOKED)
    again = Stream(edge.address, token)
    again.send(register("rv-1", "m1"))
    assert again.wait_closed().code() == grpc.StatusCode.UNAUTHENTICATED
    assert enroll(edge, "rv-1") != token  # enrolling again after a revocation is allowed


def test_second_connection_of_the_same_machine_replaces_the_first(edge: Edge) -> None:
    first = Stream(edge.address, TOKEN)
    first.send(register("rp-1", "same", protocol=0))
    first.wait_for("register_response")
    second = Stream(edge.address, TOKEN)
    second.send(register("rp-1", "same", protocol=0))
    second.wait_for("register_response")
    error = first.wait_closed()
    assert error.code() == grpc.StatusCode.ABORTED and "replaced" in error.details()
    second.send(columns("rp-1", 1))
    assert second.wait_for("metric_ack")[0].success
    second.close()
    # online, replaced (still online: the old stream's end marks nothing), then closed
    assert [row[:2] for row in wait_for_history(edge, "rp-1", 3)] == [
        ("online", liveness.REGISTERED),
        ("online", liveness.REPLACED),
        ("offline", liveness.STREAM_CLOSED),
    ]


def test_a_cloned_machine_is_refused_and_reported_not_flapped(edge: Edge) -> None:
    original = Stream(edge.address, TOKEN)
    original.send(register("cl-1", "machine-a", protocol=0))
    original.wait_for("register_response")
    for _ in range(3):  # the clone keeps retrying: refused each time, the original stays
        clone = Stream(edge.address, TOKEN)
        clone.send(register("cl-1", "machine-b", protocol=0))
        error = clone.wait_closed()
        assert error.code() == grpc.StatusCode.ALREADY_EXISTS
        assert "another machine" in error.details()
        assert ("retry-after-ms", "60000") in tuple(error.trailing_metadata())
    original.send(heartbeat("cl-1"))
    assert original.wait_for("heartbeat_ack")
    assert not original.done.is_set()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        row = agent_row(edge, "cl-1", "conflicts, conflict")
        if row[0] == 3:
            break
        time.sleep(0.1)
    assert row[0] == 3 and "cloned image" in row[1]
    original.close()


def test_api_shows_identity_conflicts_and_credentials(edge: Edge) -> None:
    from fastapi.testclient import TestClient

    from fleetpulse.api.app import create_app
    from fleetpulse.settings import Settings

    token = enroll(edge, "api-1", "machine-a")
    holder = Stream(edge.address, token)
    holder.send(register("api-1", "machine-a"))
    holder.wait_for("register_response")
    clone = Stream(edge.address, TOKEN)
    clone.send(register("api-1", "machine-b", protocol=0))
    assert clone.wait_closed().code() == grpc.StatusCode.PERMISSION_DENIED  # enrolled id
    clone = Stream(edge.address, token)  # a cloned image carries the credential file too
    clone.send(register("api-1", "machine-b"))
    assert clone.wait_closed().code() == grpc.StatusCode.ALREADY_EXISTS
    time.sleep(0.3)
    with TestClient(create_app(Settings(database_url=edge.database_url, api_open=True))) as api:
        detail = api.get("/agents/api-1").json()
    assert detail["conflicts"] == 1 and "another machine" in detail["conflict"]
    assert detail["credential_active"] is True and detail["machine_id"] == "machine-a"
    holder.close()


def test_empty_batch_is_refused_for_good_and_not_queued(edge: Edge) -> None:
    stream = Stream(edge.address, TOKEN)
    stream.send(register("em-1"), columns("em-1", 1, values=0), columns("em-1", 2))
    acks = stream.wait_for("metric_ack", 2)
    assert (acks[0].success, acks[0].retry_after_ms) == (False, 0)
    assert "empty" in acks[0].error
    assert acks[1].success
    assert queued(edge) == 1
    stream.close()


def test_oversized_message_ends_only_that_stream(edge: Edge) -> None:
    bystander = Stream(edge.address, TOKEN)
    bystander.send(register("ok-1"))
    bystander.wait_for("register_response")
    big = Stream(edge.address, TOKEN)
    big.send(register("big-1"), columns("big-1", 1, values=600_000))  # ~5 MB > 4 MiB limit
    error = big.wait_closed()
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "4194304" in error.details()  # the limit is named
    bystander.send(columns("ok-1", 1))
    assert bystander.wait_for("metric_ack")[0].success
    bystander.close()


def test_committed_announcements_are_relayed_to_the_agent(edge: Edge) -> None:
    stream = Stream(edge.address, TOKEN)
    stream.send(register("cm-1"))
    stream.wait_for("register_response")
    time.sleep(0.5)  # the relay follows the stream from its start
    pipe = edge.redis.pipeline(transaction=True)
    watermark.publish(pipe, [("cm-1", 7, 1), ("cm-1", 7, 2), ("cm-1", 7, 4), ("other", 1, 1)])
    pipe.execute()
    committed = stream.wait_for("committed")[0]
    assert committed.epoch == 7
    assert [(r.first, r.last) for r in committed.ranges] == [(1, 2), (4, 4)]
    stream.close()
    assert len([m for m in stream.received if m.WhichOneof("message") == "committed"]) == 1


def test_disconnect_message_marks_the_agent_offline_with_its_reason(edge: Edge) -> None:
    stream = Stream(edge.address, TOKEN)
    stream.send(
        register("dc-1"),
        agent_pb2.AgentMessage(disconnect=agent_pb2.Disconnect(reason="maintenance")),
    )
    assert stream.wait_closed() is None  # ended with OK
    assert agent_row(edge, "dc-1", "status, disconnect_reason") == ("offline", "maintenance")


def test_self_metrics_are_served(edge: Edge) -> None:
    stream = Stream(edge.address, TOKEN)
    stream.send(register("pm-1"), heartbeat("pm-1"), columns("pm-1", 1))
    stream.wait_for("metric_ack")
    url = f"http://127.0.0.1:{edge.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    assert "fleetpulse_ingest_connected_agents 1.0" in text
    assert "fleetpulse_ingest_batches_accepted_total 1.0" in text
    assert "fleetpulse_ingest_xadd_seconds_count 1.0" in text
    assert "fleetpulse_ingest_backpressure 0.0" in text
    stream.close()


def test_backpressure_refuses_with_a_retry_delay_and_recovers(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    for edge in start_edge(
        database_url, redis_url, tmp_path, FLEETPULSE_INGEST_MAX_QUEUED_ENTRIES="3"
    ):
        stream = Stream(edge.address, TOKEN)
        stream.send(register("bp-1"), *(columns("bp-1", seq) for seq in (1, 2, 3)))
        assert all(a.success for a in stream.wait_for("metric_ack", 3))
        time.sleep(1.2)  # the queue is checked every 0.5 s
        stream.send(columns("bp-1", 4))
        refused = stream.wait_for("metric_ack", 4)[3]
        assert (refused.success, refused.sequence) == (False, 4)
        assert refused.retry_after_ms > 0 and "workers are behind" in refused.error
        assert queued(edge) == 3  # never acked what it did not XADD
        for shard in range(2):  # the workers catch up (entries acknowledged and deleted)
            edge.redis.delete(keys.stream_key(shard))
        time.sleep(1.2)
        stream.send(columns("bp-1", 4))
        assert stream.wait_for("metric_ack", 5)[4].success
        stream.close()


def test_one_agent_over_its_rate_does_not_starve_another(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    for edge in start_edge(
        database_url,
        redis_url,
        tmp_path,
        FLEETPULSE_INGEST_AGENT_BYTES_PER_S="2000",
        FLEETPULSE_INGEST_AGENT_BURST_BYTES="3000",
    ):
        noisy, quiet = Stream(edge.address, TOKEN), Stream(edge.address, TOKEN)
        noisy.send(register("noisy"), *(columns("noisy", seq, values=50) for seq in range(1, 11)))
        quiet.send(register("quiet"), columns("quiet", 1, values=50))
        acks = noisy.wait_for("metric_ack", 10)
        refused = [a for a in acks if not a.success]
        assert refused and all(a.retry_after_ms > 0 and "rate" in a.error for a in refused)
        assert quiet.wait_for("metric_ack")[0].success
        noisy.close()
        quiet.close()


def test_heartbeats_are_answered_on_an_open_stream(edge: Edge) -> None:
    """The reader and the outbox keep answering in order on a long-lived stream."""
    stream = Stream(edge.address, TOKEN)
    stream.send(register("hb-1"), heartbeat("hb-1"))
    assert stream.wait_for("heartbeat_ack")[0].success
    stream.send(
        agent_pb2.AgentMessage(
            heartbeat=agent_pb2.Heartbeat(
                agent_id="hb-1", timestamp=common_pb2.Timestamp(seconds=int(time.time()))
            )
        )
    )
    assert len(stream.wait_for("heartbeat_ack", 2)) == 2
    stream.close()


def test_several_front_end_processes_share_one_port(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    import psutil

    port, metrics_port = free_port(), free_ports(2)  # one metrics port per process
    env = ingest_env(database_url, redis_url, port, metrics_port=metrics_port)
    with fleetpulse_process(["ingest", "--processes", "2"], env, tmp_path / "ingest.log") as proc:
        wait_for_port(port, proc)

        def titles() -> list[str]:
            children = psutil.Process(proc.pid).children()
            return sorted(" ".join(c.cmdline()).strip() for c in children)

        # the second process starts and binds the same port a moment later (later under load)
        deadline = time.monotonic() + 20
        while titles() != ["fleetpulse ingest 1/2", "fleetpulse ingest 2/2"]:
            assert time.monotonic() < deadline, titles()
            time.sleep(0.1)
        for index in (1, 2):
            wait_for_port(metrics_port + index - 1, proc)  # each serves once it is ready
        streams = [Stream(f"127.0.0.1:{port}", TOKEN) for _ in range(20)]
        for i, stream in enumerate(streams):
            stream.send(register(f"rp-{i}", protocol=0))
        for stream in streams:
            stream.wait_for("register_response")
        connected = []
        for index in (0, 1):
            url = f"http://127.0.0.1:{metrics_port + index}/metrics"
            text = urllib.request.urlopen(url, timeout=5).read().decode()
            line = next(x for x in text.splitlines() if x.startswith("fleetpulse_ingest_connected"))
            connected.append(float(line.split()[-1]))
        assert sum(connected) == 20 and all(connected)  # the kernel spread the connections
        for stream in streams:
            stream.close()


def test_an_agent_that_stops_heartbeating_is_offline_within_the_bound(edge: Edge) -> None:
    """A hung agent keeps its stream open but sends nothing: the API shows it offline once
    offline_after_heartbeats x heartbeat_interval_s passed since its last heartbeat."""
    from fastapi.testclient import TestClient

    from fleetpulse.api.app import create_app
    from fleetpulse.settings import Settings

    settings = Settings(
        database_url=edge.database_url,
        heartbeat_interval_s=0.5,
        offline_after_heartbeats=3,
        heartbeat_flush_interval_s=0.2,  # the front-end's (ingest_env)
        api_open=True,
    )
    stream = Stream(edge.address, TOKEN)
    stream.send(register("hung-1"), heartbeat("hung-1"))
    stream.wait_for("heartbeat_ack")
    last_heartbeat = time.monotonic()
    with TestClient(create_app(settings)) as api:
        time.sleep(0.4)  # the front-end flushes heartbeats every 0.2 s here
        assert api.get("/agents/hung-1").json()["status"] == "online"
        deadline = last_heartbeat + 10
        while time.monotonic() < deadline:
            if api.get("/agents/hung-1").json()["status"] == "offline":
                break
            time.sleep(0.1)
        went_offline_after = time.monotonic() - last_heartbeat
    assert not stream.done.is_set()  # its stream is still open: only the bound made it offline
    assert 1.2 <= went_offline_after <= 1.7 + 1.0, went_offline_after  # the bound: 1.5 s + a flush
    stream.close()


def test_a_closed_old_stream_never_marks_a_reconnected_agent_offline(database_url: str) -> None:
    """Stream 1 closes after the agent already registered on stream 2 (elsewhere): stays online."""
    import asyncio

    from psycopg_pool import AsyncConnectionPool

    from fleetpulse.ingest.frontend.registry import AgentRegistry

    async def scenario() -> list[str]:
        async with AsyncConnectionPool(database_url, min_size=1, max_size=2) as pool:
            registry = AgentRegistry(pool, Settings(database_url=database_url))
            message = register("moved").register
            await registry.register(message, "10.0.0.1", "front-end-a/1")
            await registry.register(message, "10.0.0.2", "front-end-b/7")
            registry.heartbeat("moved")  # a heartbeat flush never flips status back to online
            await registry.disconnected("moved", "front-end-a/1", liveness.STREAM_CLOSED)
            states = [agent_status()]
            await registry.disconnected("moved", "front-end-b/7", liveness.STREAM_CLOSED)
            states.append(agent_status())
            return states

    def agent_status() -> str:
        with psycopg.connect(database_url) as conn:
            return conn.execute("SELECT status FROM agents WHERE agent_id = 'moved'").fetchone()[0]

    assert asyncio.run(scenario()) == ["online", "offline"]
    # the history says what happened: the second stream replaced the open first one, whose close
    # changed nothing, and then the second closed
    with psycopg.connect(database_url) as conn:
        history = conn.execute(
            "SELECT state, cause, detail FROM agent_liveness WHERE agent_id = 'moved' ORDER BY id"
        ).fetchall()
    assert history == [
        ("online", liveness.REGISTERED, ""),
        ("online", liveness.REPLACED, "replaced the open stream front-end-a/1"),
        ("offline", liveness.STREAM_CLOSED, ""),
    ]

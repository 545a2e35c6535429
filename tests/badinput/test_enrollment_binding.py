"""The enrollment token cannot take an enrolled agent's identity (issue 14, point 7).

An agent_id is bound to its credential from the moment the credential is issued
(ingest/credentials.py), not from its first use. The enrollment token then registers only ids that
never enrolled or whose credential was revoked; a register that claims any other id with it is
PERMISSION_DENIED with a one-line reason naming the revoke command, and nothing the claimant sent
is stored: not its register (the agents row keeps the real agent's hostname and ip), not its
heartbeats or settings status or goodbye, not the batches it pipelined behind the register.

Checked for every state of the real agent (credential issued and not used yet, or used; the agent
connected or not), on the front-end that holds the agent and on a second one sharing its
PostgreSQL and Redis, for three claimants: the project's protocol (2), the original protocol
spoken with our code (0, batches included), and an agent generated from the original .proto files
alone (tests/origin_agent.py). Then the ids the token may still register (never enrolled,
revoked), enrollments of one new id racing, and the real agent daemon under all of it, audited
from its own sent.json.
"""

from __future__ import annotations

import hashlib
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest

from fleetpulse.agent.config import AgentConfig
from fleetpulse.audit import audit
from fleetpulse.ingest.worker.consumer import Worker
from fleetpulse.proto import agent_pb2, common_pb2, metric_pb2
from tests.badinput.conftest import RawStream, assert_documented_end, drain, queued_identities
from tests.integration.conftest import TOKEN
from tests.integration.test_agent import account, wait_for
from tests.integration.test_agent_settings import Running
from tests.integration.test_edge import Edge, start_edge
from tests.origin_agent import run_origin_agent

pytestmark = pytest.mark.integration

REAL_EPOCH = 5
THIEF_EPOCH = 666
THIEF_METRIC = "thief_load"
CLAIMANTS = ("protocol-2", "protocol-0", "origin")


@pytest.fixture(scope="module")
def edge_b(
    shared_database_url: str, shared_redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Edge]:
    """A second front-end on the same PostgreSQL and Redis (another host, or `--processes 2`)."""
    yield from start_edge(shared_database_url, shared_redis_url, tmp_path_factory.mktemp("edge-b"))


def _register(
    agent_id: str, protocol: int = 2, machine_id: str = "real-machine"
) -> agent_pb2.AgentMessage:
    return agent_pb2.AgentMessage(
        register=agent_pb2.AgentRegister(
            agent_id=agent_id,
            hostname="real-host",
            ip="10.0.0.5",
            os="linux",
            arch="x86_64",
            version="real",
            machine_id=machine_id,
            protocol=protocol,
        )
    )


def _batch(agent_id: str, sequence: int, epoch: int = REAL_EPOCH, name: str = "load1") -> Any:
    return agent_pb2.AgentMessage(
        metric_columns=metric_pb2.ColumnarBatch(
            agent_id=agent_id,
            epoch=epoch,
            sequence=sequence,
            series=metric_pb2.SeriesSet(entries=[metric_pb2.SeriesDef(name=name)]),
            values=[float(sequence)],
            timestamps_ns=[1_700_000_000_000_000_000 + sequence],
        )
    )


def _heartbeat(agent_id: str) -> agent_pb2.AgentMessage:
    return agent_pb2.AgentMessage(
        heartbeat=agent_pb2.Heartbeat(agent_id=agent_id, timestamp=common_pb2.Timestamp(seconds=1))
    )


def _goodbye(reason: str) -> agent_pb2.AgentMessage:
    return agent_pb2.AgentMessage(disconnect=agent_pb2.Disconnect(reason=reason))


def _thief_messages(agent_id: str, protocol: int) -> list[agent_pb2.AgentMessage]:
    """Everything a claimant could have stored, pipelined behind its register. No machine id: an
    agent that sends none is taken at its word, so an accepted register would even replace the
    real agent's live stream."""
    register = agent_pb2.AgentMessage(
        register=agent_pb2.AgentRegister(
            agent_id=agent_id,
            hostname="thief-host",
            ip="10.6.6.6",
            os="plan9",
            arch="mips",
            version="thief",
            protocol=protocol,
        )
    )
    rows = agent_pb2.AgentMessage(
        metrics=metric_pb2.MetricBatch(
            agent_id=agent_id,
            epoch=THIEF_EPOCH,
            sequence=1,
            metrics=[metric_pb2.MetricPoint(name=THIEF_METRIC, value=6.0)],
        )
    )
    status = agent_pb2.AgentMessage(
        settings_status=agent_pb2.SettingsStatus(
            version=9, applied=True, collect_interval_ms=1000, heartbeat_interval_ms=1000
        )
    )
    return [
        register,
        _heartbeat(agent_id),
        rows,
        _batch(agent_id, 2, THIEF_EPOCH, THIEF_METRIC),
        status,
        _goodbye("thief"),
    ]


def _claim(edge: Edge, agent_id: str, claimant: str, tmp_path: Path, repo_root: Path) -> None:
    """Claim ``agent_id`` with the enrollment token: refused at register, nothing answered."""
    reason = (
        f"agent {agent_id!r} is enrolled: connect with its credential, "
        f"or revoke it (fleetpulse agents revoke {agent_id}) to enroll again"
    )
    if claimant == "origin":
        result = run_origin_agent(repo_root, edge.address, TOKEN, tmp_path, agent_id)
        assert (result.returncode, result.stdout.split()) == (3, ["end:PERMISSION_DENIED"]), (
            result.stdout,
            result.stderr,
        )
        assert reason in result.stderr.splitlines(), result.stderr
        return
    stream = RawStream(edge.address, TOKEN)
    stream.send(*_thief_messages(agent_id, 2 if claimant == "protocol-2" else 0))
    assert stream.wait_end() == grpc.StatusCode.PERMISSION_DENIED, stream.details()
    stream.close()
    assert_documented_end(stream)
    assert stream.received == []  # no register_response, credential, heartbeat or metric ack
    assert stream.details() == reason


def _settle(edge: Edge) -> None:
    """Make the front-end write out what it holds in memory (heartbeats are flushed in batches):
    it flushes them before it marks a departing agent offline, so a goodbye it has answered is
    the barrier after which a recorded heartbeat would be in PostgreSQL."""
    barrier = RawStream(edge.address, TOKEN)
    barrier.send(_register("settle-barrier", protocol=0), _goodbye("barrier"))
    assert barrier.wait_end() == grpc.StatusCode.OK, barrier.details()
    barrier.close()


def _footprint(edge: Edge, agent_id: str) -> dict[str, Any]:
    """What the platform holds for the agent outside the ledger."""
    with psycopg.connect(edge.database_url) as conn:
        row = conn.execute(
            "SELECT to_jsonb(a) FROM agents a WHERE agent_id = %s", (agent_id,)
        ).fetchone()
        credential = conn.execute(
            "SELECT to_jsonb(c) FROM agent_credentials c WHERE agent_id = %s", (agent_id,)
        ).fetchone()
    return {
        "agent": row[0] if row else None,
        "credential": credential[0] if credential else None,
        "queued": sorted(q for q in queued_identities(edge.redis) if q[0] == agent_id),
    }


def _ledger(edge: Edge, agent_id: str) -> tuple[set[tuple[int, int]], set[str]]:
    with psycopg.connect(edge.database_url) as conn:
        batches = conn.execute(
            "SELECT epoch, seq FROM batches WHERE agent_id = %s", (agent_id,)
        ).fetchall()
        names = conn.execute("SELECT name FROM series WHERE agent_id = %s", (agent_id,)).fetchall()
    return {(e, s) for e, s in batches}, {n for (n,) in names}


def _enroll(edge: Edge, agent_id: str) -> tuple[RawStream, str]:
    """Enroll with the token; the enrolling stream stays open (as the agent's does)."""
    stream = RawStream(edge.address, TOKEN)
    stream.send(_register(agent_id))
    credential = stream.wait_for("credential")
    assert isinstance(credential, agent_pb2.Credential), stream.details()
    return stream, credential.token


@pytest.mark.parametrize("claimant", CLAIMANTS)
@pytest.mark.parametrize(
    "state", ["issued-connected", "issued-disconnected", "used-connected", "used-disconnected"]
)
def test_the_token_cannot_claim_an_enrolled_id(
    edge: Edge,
    edge_b: Edge,
    worker: Worker,
    agent: str,
    state: str,
    claimant: str,
    tmp_path: Path,
    repo_root: Path,
) -> None:
    held, credential = _enroll(edge, agent)
    # the stream that enrolled keeps working once the credential is issued
    held.send(_batch(agent, 1), _heartbeat(agent))
    ack = held.wait_for("metric_ack", sequence=1)
    assert ack is not None and ack.success, held.details()  # type: ignore[attr-defined]
    assert held.wait_for("heartbeat_ack") is not None
    sent = 1
    if state.startswith("used"):
        held.send(_goodbye("reconnecting"))
        assert held.wait_end() == grpc.StatusCode.OK
        held.close()
        held = RawStream(edge.address, credential)
        sent += 1
        held.send(_register(agent), _batch(agent, sent))
        ack = held.wait_for("metric_ack", sequence=sent)
        assert ack is not None and ack.success, held.details()  # type: ignore[attr-defined]
    if state.endswith("disconnected"):
        # a goodbye, so that the agent is offline before the snapshot (a closed stream's
        # offline mark may land a moment after the client sees the end)
        held.send(_goodbye("stopped"))
        assert held.wait_end() == grpc.StatusCode.OK
        held.close()
    _settle(edge)
    _settle(edge_b)
    before = _footprint(edge, agent)
    assert before["agent"]["hostname"] == "real-host"
    assert (before["credential"]["last_used_at"] is None) == state.startswith("issued")

    for front_end in (edge, edge_b):  # the one that holds the agent, and another
        _claim(front_end, agent, claimant, tmp_path, repo_root)
        _settle(front_end)
    assert _footprint(edge, agent) == before

    # The real agent is untouched: still connected, its stream works; disconnected, its
    # credential does.
    if state.endswith("disconnected"):
        held = RawStream(edge.address, credential)
        held.send(_register(agent))
    else:
        assert not held.done.is_set(), held.details()
    sent += 1
    held.send(_batch(agent, sent), _heartbeat(agent))
    ack = held.wait_for("metric_ack", sequence=sent)
    assert ack is not None and ack.success, held.details()  # type: ignore[attr-defined]
    assert held.wait_for("heartbeat_ack") is not None
    held.close()
    drain(worker)
    batches, names = _ledger(edge, agent)
    assert batches == {(REAL_EPOCH, s) for s in range(1, sent + 1)}
    assert names == {"load1"}


def _revoke(edge: Edge, agent_id: str) -> None:
    env = {"FLEETPULSE_DATABASE_URL": edge.database_url, "FLEETPULSE_REDIS_URL": edge.redis_url}
    result = subprocess.run(
        [sys.executable, "-m", "fleetpulse", "agents", "revoke", agent_id],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def _original_protocol_registers(edge: Edge, agent_id: str) -> None:
    stream = RawStream(edge.address, TOKEN)
    stream.send(_register(agent_id, protocol=0), _heartbeat(agent_id), _goodbye("done"))
    assert stream.wait_end() == grpc.StatusCode.OK, stream.details()
    stream.close()
    kinds = [m.WhichOneof("message") for m in stream.received]
    assert kinds == ["register_response", "heartbeat_ack"]  # and no credential


def test_the_token_registers_ids_never_enrolled_or_revoked(
    edge: Edge, edge_b: Edge, agent: str, tmp_path: Path, repo_root: Path
) -> None:
    # Never enrolled: an original-protocol agent uses the token as often as it likes, on any
    # front-end, and that binds nothing.
    for front_end in (edge, edge_b):
        _original_protocol_registers(front_end, agent)
    with psycopg.connect(edge.database_url) as conn:
        assert (
            conn.execute("SELECT 1 FROM agent_credentials WHERE agent_id = %s", (agent,)).fetchone()
            is None
        )
    # The project's agent may enroll such an id; from then on neither protocol claims it.
    enrolling, first = _enroll(edge_b, agent)
    enrolling.close()
    for front_end in (edge, edge_b):
        for claimant in CLAIMANTS:
            _claim(front_end, agent, claimant, tmp_path, repo_root)
    # Revoked: the id is open to the token again, with either protocol...
    _revoke(edge, agent)
    _original_protocol_registers(edge, agent)
    enrolling, second = _enroll(edge_b, agent)
    assert second != first
    # ...and the new credential binds it at once, while its enrolling stream is still open.
    for claimant in CLAIMANTS:
        _claim(edge, agent, claimant, tmp_path, repo_root)
    enrolling.send(_heartbeat(agent))
    assert enrolling.wait_for("heartbeat_ack") is not None, enrolling.details()
    enrolling.close()
    for token, code in ((first, grpc.StatusCode.UNAUTHENTICATED), (second, grpc.StatusCode.OK)):
        stream = RawStream(edge.address, token)
        stream.send(_register(agent), _goodbye("done"))
        assert stream.wait_end() == code, stream.details()
        stream.close()


def test_of_enrollments_of_one_new_id_at_once_exactly_one_is_issued(
    edge: Edge, edge_b: Edge, agent: str
) -> None:
    streams = [RawStream(e.address, TOKEN) for e in (edge, edge_b, edge, edge_b, edge, edge_b)]
    for stream in streams:  # all open before any register is sent
        stream.send(_register(agent))
    issued = []
    for stream in streams:
        credential = stream.wait_for("credential")
        if credential is None:
            assert stream.code() == grpc.StatusCode.PERMISSION_DENIED, stream.details()
            assert stream.received == []
        else:
            issued.append((stream, credential.token))  # type: ignore[attr-defined]
    assert len(issued) == 1, [s.details() for s in streams]
    [(winner, token)] = issued
    with psycopg.connect(edge.database_url) as conn:
        stored = conn.execute(
            "SELECT token_hash FROM agent_credentials WHERE agent_id = %s", (agent,)
        ).fetchone()
    assert stored == (hashlib.sha256(token.encode()).digest(),)
    winner.send(_heartbeat(agent))
    assert winner.wait_for("heartbeat_ack") is not None, winner.details()
    for stream in streams:
        stream.close()


def test_a_clone_of_an_original_protocol_agent_is_refused_before_it_is_issued_a_credential(
    edge: Edge, agent: str
) -> None:
    """An id that never enrolled, held by an original-protocol agent: another machine enrolling it
    with the token is a clone (ALREADY_EXISTS), refused before a credential is issued. Issued and
    never delivered, that credential would have bound the id to no one until a revoke."""
    holder = RawStream(edge.address, TOKEN)
    holder.send(_register(agent, protocol=0, machine_id="machine-a"))
    assert holder.wait_for("register_response") is not None, holder.details()
    clone = RawStream(edge.address, TOKEN)
    clone.send(_register(agent, protocol=2, machine_id="machine-b"))
    assert clone.wait_end() == grpc.StatusCode.ALREADY_EXISTS, clone.details()
    clone.close()
    assert clone.received == []
    with psycopg.connect(edge.database_url) as conn:
        assert (
            conn.execute("SELECT 1 FROM agent_credentials WHERE agent_id = %s", (agent,)).fetchone()
            is None
        )
    holder.send(_heartbeat(agent), _goodbye("done"))
    assert holder.wait_end() == grpc.StatusCode.OK, holder.details()
    holder.close()
    assert [m.WhichOneof("message") for m in holder.received] == [
        "register_response",
        "heartbeat_ack",
    ]
    _original_protocol_registers(edge, agent)  # the id is as open to the token as before


def test_the_real_agent_keeps_its_identity_and_its_account_stays_exact(
    edge: Edge, edge_b: Edge, worker: Worker, agent: str, tmp_path: Path, repo_root: Path
) -> None:
    """The issue's case: the project's agent enrolls, and agents holding only the token claim its
    id while it streams on the stream that enrolled it, after it stopped, after it reconnected with
    its credential, and after it stopped again. Its audit then finds exactly what it sent."""
    state_dir = tmp_path / "state"
    config = AgentConfig(
        server_address=edge.address,
        agent_id=agent,
        enrollment_token=TOKEN,
        collect_interval_s=0.1,
        heartbeat_interval_s=0.5,
        state_dir=state_dir,
        collectors=frozenset({"load"}),
    )

    def claims() -> None:
        for front_end in (edge, edge_b):
            for claimant in CLAIMANTS:
                _claim(front_end, agent, claimant, tmp_path, repo_root)

    def acked(daemon: Any) -> int:
        current = account(daemon)
        return current.batches_acked if current else 0

    def last_used(conn: psycopg.Connection[Any]) -> object:
        row = conn.execute(
            "SELECT last_used_at FROM agent_credentials WHERE agent_id = %s", (agent,)
        ).fetchone()
        return row[0] if row else None

    with Running(config) as daemon:
        wait_for(lambda: daemon.credential_path.exists() and acked(daemon) >= 2, 20, "enrolled")
        claims()
        so_far = acked(daemon)
        wait_for(lambda: acked(daemon) >= so_far + 2, 20, "acks after the claims")
        with psycopg.connect(edge.database_url) as conn:
            assert last_used(conn) is None  # still on the stream that enrolled it
    claims()
    with Running(config) as daemon:
        wait_for(lambda: acked(daemon) >= 2, 20, "acks with the credential")
        with psycopg.connect(edge.database_url) as conn:
            assert last_used(conn) is not None
        claims()
        so_far = acked(daemon)
        wait_for(lambda: acked(daemon) >= so_far + 2, 20, "acks after the claims")
    claims()

    drain(worker)
    (result,) = audit(edge.database_url, [state_dir])
    assert result.batches_sent >= 8
    assert (result.missing, result.unexpected, result.points_duplicated) == ([], [], 0)
    assert result.ok, result
    batches, names = _ledger(edge, agent)
    assert THIEF_EPOCH not in {epoch for epoch, _ in batches}
    assert THIEF_METRIC not in names
    with psycopg.connect(edge.database_url) as conn:
        row = conn.execute(
            "SELECT hostname, ip, os FROM agents WHERE agent_id = %s", (agent,)
        ).fetchone()
    assert row == (socket.gethostname(), "127.0.0.1", platform.system().lower())  # its own

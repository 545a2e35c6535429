"""Identity at the edge (docs/architecture.md, "Enrollment and credentials"): the stream's
credential decides who an agent is, never the payload.

tests/integration/test_frontend.py and test_edge.py cover the basic refusals (no token, a wrong
token, another id in a batch or heartbeat on an enrollment-token stream, a credential naming
another id at register, a revoked credential). Added here: payload ids that only *look* like the
stream's identity, on a credential stream, for every message that carries an id; that a refused
spoof writes nothing and leaves the victim's own stream alone; credentials that are almost right;
the old credential after a revocation and a new enrollment; and refusals that stay one line when
the ids and machine ids they quote contain line breaks.
"""

from __future__ import annotations

import os
import subprocess
import sys
import unicodedata

import grpc
import psycopg
import pytest

from fleetpulse.proto import agent_pb2, common_pb2, metric_pb2
from tests.badinput.conftest import RawStream, assert_documented_end, queued_identities
from tests.integration.conftest import TOKEN
from tests.integration.test_edge import Edge, enroll
from tests.integration.test_frontend import register

pytestmark = pytest.mark.integration


def _batch_rows(agent_id: str, sequence: int = 1) -> agent_pb2.AgentMessage:
    return agent_pb2.AgentMessage(
        metrics=metric_pb2.MetricBatch(
            agent_id=agent_id,
            epoch=5,
            sequence=sequence,
            metrics=[metric_pb2.MetricPoint(name="load1", value=1.0)],
        )
    )


def _batch_columns(agent_id: str, sequence: int = 1) -> agent_pb2.AgentMessage:
    return agent_pb2.AgentMessage(
        metric_columns=metric_pb2.ColumnarBatch(
            agent_id=agent_id,
            epoch=5,
            sequence=sequence,
            series=metric_pb2.SeriesSet(entries=[metric_pb2.SeriesDef(name="load1")]),
            values=[1.0],
            timestamps_ns=[1],
        )
    )


def _heartbeat(agent_id: str) -> agent_pb2.AgentMessage:
    return agent_pb2.AgentMessage(
        heartbeat=agent_pb2.Heartbeat(agent_id=agent_id, timestamp=common_pb2.Timestamp(seconds=1))
    )


def _register(agent_id: str) -> agent_pb2.AgentMessage:
    return register(agent_id, "machine-a", protocol=2)


def _lookalikes(agent_id: str) -> list[str]:
    """Ids that a careless comparison (case, whitespace, Unicode normalization, a terminator)
    would take for ``agent_id``, and one that is plainly another agent."""
    return [
        "someone-else",
        agent_id.upper(),
        f"{agent_id} ",
        f" {agent_id}",
        f"{agent_id}\n",
        f"{agent_id}\x00",
        f"{agent_id}\u200b",  # zero-width space
        unicodedata.normalize("NFD", agent_id),  # the same text, decomposed
        agent_id.replace("o", "\u043e"),  # Cyrillic o
        agent_id[:-1],
    ]


def _end(stream: RawStream) -> tuple[grpc.StatusCode, str]:
    stream.wait_end()
    stream.close()
    assert_documented_end(stream)
    return stream.code(), stream.details()


def _snapshot(database_url: str) -> dict[str, list[tuple]]:
    with psycopg.connect(database_url) as conn:
        return {
            "agents": conn.execute(
                "SELECT agent_id, hostname, os, machine_id, disconnect_reason FROM agents"
                " ORDER BY 1"
            ).fetchall(),
            "batches": conn.execute("SELECT * FROM batches ORDER BY 1, 2, 3").fetchall(),
            "credentials": conn.execute(
                "SELECT agent_id, token_hash, revoked_at FROM agent_credentials ORDER BY 1"
            ).fetchall(),
        }


@pytest.mark.parametrize("kind", ["rows", "columns", "heartbeat", "register"])
def test_payload_ids_that_only_look_like_the_identity_are_permission_denied(
    edge: Edge, agent: str, kind: str
) -> None:
    agent = f"{agent}-h\u00f4te"  # an accented id, so that normalization could matter
    victim = "someone-else"
    token = enroll(edge, agent, "machine-a")
    message = {
        "rows": _batch_rows,
        "columns": _batch_columns,
        "heartbeat": _heartbeat,
        "register": _register,
    }[kind]
    before = _snapshot(edge.database_url)
    for claimed in _lookalikes(agent):
        assert claimed != agent
        stream = RawStream(edge.address, token)
        first = [] if kind == "register" else [_register(agent)]
        stream.send(*first, message(claimed))
        code, details = _end(stream)
        assert code == grpc.StatusCode.PERMISSION_DENIED, (claimed, details)
        assert repr(claimed) in details, details  # names the claimed id, escaped
    real = RawStream(edge.address, token)  # the agent itself is still welcome
    real.send(_register(agent), _batch_columns(agent, 1))
    ack = real.wait_for("metric_ack")
    assert ack is not None and ack.success, real.details()  # type: ignore[attr-defined]
    real.close()
    after = _snapshot(edge.database_url)
    assert after["credentials"] == before["credentials"]
    assert [a for a in after["agents"] if a[0] != agent] == [
        a for a in before["agents"] if a[0] != agent
    ]
    assert victim not in {a[0] for a in after["agents"]}  # nothing written under another id
    assert not {q[0] for q in queued_identities(edge.redis)} & {victim, *_lookalikes(agent)}


def test_a_refused_spoof_leaves_the_victims_stream_alone(edge: Edge, agent: str) -> None:
    victim, attacker = f"{agent}-victim", f"{agent}-attacker"
    victim_token, attacker_token = enroll(edge, victim), enroll(edge, attacker, "machine-b")
    held = RawStream(edge.address, victim_token)
    held.send(_register(victim), _batch_rows(victim, 1))
    assert held.wait_for("metric_ack", sequence=1) is not None
    for message in (
        _register(victim),
        _heartbeat(victim),
        _batch_rows(victim, 2),
        _batch_columns(victim, 2),
    ):
        spoof = RawStream(edge.address, attacker_token)
        first = [] if message.HasField("register") else [register(attacker, "machine-b")]
        spoof.send(*first, message)
        assert _end(spoof)[0] == grpc.StatusCode.PERMISSION_DENIED
    # the enrollment token cannot claim the enrolled victim either
    spoof = RawStream(edge.address, TOKEN)
    spoof.send(register(victim, "machine-b"))
    assert _end(spoof)[0] == grpc.StatusCode.PERMISSION_DENIED
    held.send(_batch_rows(victim, 3), _heartbeat(victim))
    ack = held.wait_for("metric_ack", sequence=3)
    assert ack is not None and ack.success  # type: ignore[attr-defined]
    assert held.wait_for("heartbeat_ack") is not None
    assert not held.done.is_set()
    held.close()
    queued = {q for q in queued_identities(edge.redis) if q[0] in (victim, attacker)}
    assert queued == {(victim, 5, 1), (victim, 5, 3)}


def _near_misses(credential: str) -> list[tuple[str, tuple[tuple[str, str], ...]]]:
    flipped = credential[:-1] + ("A" if credential[-1] != "A" else "B")
    return [
        ("no metadata", ()),
        ("empty bearer", (("authorization", "Bearer "),)),
        ("other scheme", (("authorization", f"Basic {credential}"),)),
        ("no scheme", (("authorization", credential),)),
        ("two spaces", (("authorization", f"Bearer  {credential}"),)),
        ("last char changed", (("authorization", f"Bearer {flipped}"),)),
        ("truncated", (("authorization", f"Bearer {credential[:-4]}"),)),
        ("suffixed", (("authorization", f"Bearer {credential}x"),)),
        ("prefix only", (("authorization", "Bearer fpa_"),)),
        ("sql", (("authorization", "Bearer fpa_' OR '1'='1"),)),
        ("enrollment token, spaced", (("authorization", f"Bearer {TOKEN} "),)),
        ("enrollment token, prefix", (("authorization", f"Bearer {TOKEN[:-1]}"),)),
        ("long", (("authorization", "Bearer fpa_" + "x" * 4000),)),
        ("in another key", (("x-authorization", f"Bearer {credential}"),)),
    ]


def test_credentials_that_are_almost_right_are_unauthenticated(edge: Edge, agent: str) -> None:
    credential = enroll(edge, agent)
    before = _snapshot(edge.database_url)
    for label, metadata in _near_misses(credential):
        stream = RawStream(edge.address, None, metadata)
        stream.send(_register(agent), _batch_rows(agent))
        code, details = _end(stream)
        assert code == grpc.StatusCode.UNAUTHENTICATED, (label, code, details)
    assert _snapshot(edge.database_url) == before
    assert not [q for q in queued_identities(edge.redis) if q[0] == agent]
    stream = RawStream(edge.address, credential)  # and the real one still works
    stream.send(_register(agent), _heartbeat(agent))
    assert stream.wait_for("heartbeat_ack") is not None
    stream.close()


def test_the_old_credential_stays_invalid_after_revocation_and_a_new_enrollment(
    edge: Edge, agent: str
) -> None:
    old = enroll(edge, agent)
    stream = RawStream(edge.address, old)
    stream.send(_register(agent))
    assert stream.wait_for("register_response") is not None
    stream.close()
    env = {"FLEETPULSE_DATABASE_URL": edge.database_url, "FLEETPULSE_REDIS_URL": edge.redis_url}
    result = subprocess.run(
        [sys.executable, "-m", "fleetpulse", "agents", "revoke", agent],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    new = enroll(edge, agent)
    for token, code in ((old, grpc.StatusCode.UNAUTHENTICATED), (new, grpc.StatusCode.OK)):
        stream = RawStream(edge.address, token)
        stream.send(_register(agent), _heartbeat(agent))
        if code == grpc.StatusCode.OK:
            assert stream.wait_for("heartbeat_ack") is not None, stream.details()
            stream.close()
        else:
            assert _end(stream)[0] == code


def test_refusals_stay_one_line_whatever_the_ids_contain(edge: Edge, agent: str) -> None:
    """Agent ids may contain any character but NUL, machine ids anything: the reasons that quote
    them are still one line (a log line, a status message)."""
    odd = f"{agent}\nsecond line\r\u2028third"
    credential = enroll(edge, odd, "machine\none")
    used = RawStream(edge.address, credential)
    used.send(register(odd, "machine\none"))
    assert used.wait_for("register_response") is not None
    claim = RawStream(edge.address, TOKEN)  # the enrollment token cannot claim it any more
    claim.send(register(odd, "machine\ntwo"))
    assert _end(claim)[0] == grpc.StatusCode.PERMISSION_DENIED
    clone = RawStream(edge.address, credential)  # a cloned machine, while the first holds it
    clone.send(register(odd, "machine\ntwo"))
    assert _end(clone)[0] == grpc.StatusCode.ALREADY_EXISTS
    spoof = RawStream(edge.address, credential)
    spoof.send(register(odd, "machine\none"), _batch_rows(f"{odd}\nmore"))
    assert _end(spoof)[0] == grpc.StatusCode.PERMISSION_DENIED
    used.close()


def test_control_messages_of_another_redis_database_are_not_heard(edge: Edge, agent: str) -> None:
    """Pub/sub ignores the database index: a revocation published by a platform on another
    database of the same Redis server (a staging next to a production) must not close this one's
    agent. Only the control channel of the front-end's own database counts."""
    import orjson
    import redis

    from fleetpulse.ingest import agentsettings, control, keys

    token = enroll(edge, agent)
    held = RawStream(edge.address, token)
    held.send(_register(agent))
    assert held.wait_for("register_response") is not None
    own = edge.redis.connection_pool
    other_db = (own.connection_kwargs.get("db", 0) + 1) % 16
    pool = redis.ConnectionPool(
        connection_class=own.connection_class, **{**own.connection_kwargs, "db": other_db}
    )
    revoked = orjson.dumps({"kind": "revoked", "agent": agent})
    with redis.Redis(connection_pool=pool) as other:
        assert keys.control_channel(other) != keys.control_channel(edge.redis)
        other.publish(keys.control_channel(other), revoked)
        other.publish(keys.CONTROL_CHANNEL, revoked)  # the database-less name, too
    pool.disconnect()
    # A settings announcement on the own channel, published after them: the front-end handles
    # control messages in order, so the agent gets its settings only if neither revocation
    # ended its stream first.
    with psycopg.connect(edge.database_url, autocommit=True) as conn:
        version = agentsettings.update(conn, agent, {"collect_interval_ms": 5000}, "test").version
    control.publish(edge.redis, control.SettingsChanged(agent))
    assert held.wait_for("settings", version=version) is not None, held.details()
    edge.redis.publish(keys.control_channel(edge.redis), revoked)
    assert _end(held) == (grpc.StatusCode.UNAUTHENTICATED, f"credential of {agent!r} revoked")

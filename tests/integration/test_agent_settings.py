"""Remote settings and TLS, with a real front-end process, a real agent daemon and the real CLI."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
import trustme

from fleetpulse.agent.config import AgentConfig
from fleetpulse.agent.daemon import AgentDaemon
from fleetpulse.ingest import control, keys
from fleetpulse.proto import metric_pb2
from tests.integration.conftest import TOKEN, ingest_env
from tests.integration.test_agent import account, wait_for
from tests.processes import fleetpulse_process, free_port, wait_for_port


def agent_config(port: int, state_dir: Path, agent_id: str, **overrides: Any) -> AgentConfig:
    values: dict[str, Any] = {
        "server_address": f"127.0.0.1:{port}",
        "agent_id": agent_id,
        "enrollment_token": TOKEN,
        "collect_interval_s": 0.2,
        "heartbeat_interval_s": 0.5,
        "state_dir": state_dir,
        "collectors": frozenset({"load", "memory"}),
        **overrides,
    }
    return AgentConfig(**values)


class Running:
    """An AgentDaemon on its own thread and event loop, stopped on exit."""

    def __init__(self, config: AgentConfig) -> None:
        self.daemon = AgentDaemon(config)
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self.daemon.run(handle_signals=False))
        )

    def __enter__(self) -> AgentDaemon:
        self._thread.start()
        return self.daemon

    def __exit__(self, *exc: object) -> None:
        self.daemon.stop_threadsafe()
        self._thread.join(15)
        assert not self._thread.is_alive()


def cli(args: list[str], database_url: str, redis_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FLEETPULSE_DATABASE_URL": database_url, "FLEETPULSE_REDIS_URL": redis_url}
    return subprocess.run(
        [sys.executable, "-m", "fleetpulse", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def queued_batches(client: redis.Redis, agent_id: str) -> list[metric_pb2.ColumnarBatch]:
    return [
        metric_pb2.ColumnarBatch.FromString(fields[keys.FIELD_BATCH])
        for _, fields in client.xrange(keys.stream_key(0))
        if fields[keys.FIELD_AGENT] == agent_id.encode()
    ]


def reported(database_url: str, agent_id: str) -> tuple[Any, ...] | None:
    with psycopg.connect(database_url) as conn:
        return conn.execute(
            "SELECT settings_version, settings_applied, settings_error, collect_interval_ms,"
            " heartbeat_interval_ms, collectors FROM agents WHERE agent_id = %s",
            (agent_id,),
        ).fetchone()


@pytest.fixture
def front_end(database_url: str, redis_url: str, tmp_path: Path) -> Iterator[int]:
    port = free_port()
    env = ingest_env(database_url, redis_url, port, shards=1)
    with fleetpulse_process(["ingest"], env, tmp_path / "ingest.log") as proc:
        wait_for_port(port, proc)
        yield port


def test_settings_from_the_cli_are_applied_live_and_reported(
    front_end: int, database_url: str, redis_url: str, tmp_path: Path
) -> None:
    client = redis.Redis.from_url(redis_url)
    config = agent_config(front_end, tmp_path / "state", "tuned")
    with Running(config) as daemon:
        wait_for(lambda: account(daemon) and account(daemon).batches_acked >= 2, 20, "first acks")
        # At register the agent says what is in effect: its file's settings, no platform version.
        wait_for(
            lambda: (
                reported(database_url, "tuned") is not None
                and reported(database_url, "tuned")[0] == 0
            ),
            10,
            "first report",
        )
        assert reported(database_url, "tuned") == (0, True, None, 200, 500, ["load", "memory"])

        done = cli(
            [
                "agents",
                "config",
                "tuned",
                "--collect-interval",
                "1",
                "--heartbeat-interval",
                "2",
                "--collectors",
                "load",
            ],
            database_url,
            redis_url,
        )
        assert done.returncode == 0, done.stderr
        assert "platform settings version 1" in done.stdout
        # pushed through the front-end holding the stream: applied without a restart
        wait_for(lambda: daemon.settings_version == 1, 10, "settings applied")
        first_new_seq = daemon._next_seq
        assert (daemon.collect_interval_s, daemon.heartbeat_interval_s) == (1.0, 2.0)
        assert daemon.collectors == frozenset({"load"})
        wait_for(
            lambda: reported(database_url, "tuned") == (1, True, None, 1000, 2000, ["load"]),
            10,
            "the agent's answer recorded",
        )
        wait_for(lambda: daemon._next_seq >= first_new_seq + 3, 10, "batches at the new interval")
        wait_for(
            lambda: (
                len([b for b in queued_batches(client, "tuned") if b.sequence >= first_new_seq])
                >= 3
            ),
            10,
            "new batches queued",
        )
        new = [b for b in queued_batches(client, "tuned") if b.sequence >= first_new_seq]
        names = {entry.name for batch in new for entry in batch.series.entries}
        assert "load1" in names and "memory_bytes" not in names  # only the collectors it was given
        stamps = [batch.timestamps_ns[0] for batch in sorted(new, key=lambda b: b.sequence)]
        gaps_s = [(b - a) / 1e9 for a, b in itertools.pairwise(stamps)]
        assert all(gap >= 0.9 for gap in gaps_s), gaps_s  # every second now, not every 0.2 s

        shown = cli(["agents", "config", "tuned"], database_url, redis_url)
        assert "agent reported version 1: applied" in shown.stdout

        # A version this agent cannot apply (a collector it does not have: a newer platform):
        # refused as a whole, with the reason, and what was in effect stays.
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                "UPDATE agent_settings SET version = 2, collect_interval_ms = 5000,"
                " collectors = '{load,gpu}' WHERE agent_id = 'tuned'"
            )
        control.publish(client, control.SettingsChanged("tuned"))
        wait_for(lambda: (reported(database_url, "tuned") or (0,))[0] == 2, 10, "refusal recorded")
        _, applied, error, collect_ms, _, collectors = reported(database_url, "tuned")  # type: ignore[misc]
        assert applied is False and "unknown collectors gpu" in error
        assert (collect_ms, collectors) == (1000, ["load"])
        assert daemon.collect_interval_s == 1.0 and daemon.settings_version == 1
    client.close()

    # A restart keeps the last applied settings before it even connects.
    restarted = AgentDaemon(config)
    assert (restarted.settings_version, restarted.collect_interval_s) == (1, 1.0)
    assert restarted.collectors == frozenset({"load"})
    assert json.loads(restarted.settings_path.read_text())["version"] == 1
    assert restarted.settings_path.stat().st_mode & 0o777 == 0o600
    restarted.spool.close()


def test_settings_cli_refuses_bad_values_and_unknown_agents(
    database_url: str, redis_url: str
) -> None:
    bad = cli(["agents", "config", "x", "--collect-interval", "0.01"], database_url, redis_url)
    assert bad.returncode == 2
    assert "collect interval must be between 1 s and 86400 s" in bad.stderr
    unknown = cli(["agents", "config", "x", "--collectors", "cpu,gpu"], database_url, redis_url)
    assert unknown.returncode == 2 and "unknown collectors gpu" in unknown.stderr
    missing = cli(["agents", "config", "ghost", "--collect-interval", "5"], database_url, redis_url)
    assert missing.returncode == 1 and "no such agent" in missing.stderr


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A throwaway CA, a server certificate for 127.0.0.1 and an agent's client certificate."""
    folder = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    agent = ca.issue_cert("agent-tls.fleet.example")
    files = {
        "ca": folder / "ca.pem",
        "server_cert": folder / "server.pem",
        "server_key": folder / "server.key",
        "agent_cert": folder / "agent.pem",
        "agent_key": folder / "agent.key",
    }
    ca.cert_pem.write_to_path(str(files["ca"]))
    server.private_key_pem.write_to_path(str(files["server_key"]))
    server.cert_chain_pems[0].write_to_path(str(files["server_cert"]))
    for pem in server.cert_chain_pems[1:]:
        pem.write_to_path(str(files["server_cert"]), append=True)
    agent.private_key_pem.write_to_path(str(files["agent_key"]))
    agent.cert_chain_pems[0].write_to_path(str(files["agent_cert"]))
    return files


def tls_front_end_env(
    database_url: str, redis_url: str, port: int, certs: dict[str, Path], mutual: bool
) -> dict[str, str]:
    env = ingest_env(database_url, redis_url, port, shards=1)
    env["FLEETPULSE_GRPC_TLS_CERT_FILE"] = str(certs["server_cert"])
    env["FLEETPULSE_GRPC_TLS_KEY_FILE"] = str(certs["server_key"])
    if mutual:
        env["FLEETPULSE_GRPC_TLS_CLIENT_CA_FILE"] = str(certs["ca"])
    return env


def test_agent_speaks_tls_with_a_ca_file_or_the_system_cas(
    database_url: str,
    redis_url: str,
    tmp_path: Path,
    certificates: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = free_port()
    env = tls_front_end_env(database_url, redis_url, port, certificates, mutual=False)
    with fleetpulse_process(["ingest"], env, tmp_path / "ingest.log") as proc:
        wait_for_port(port, proc)
        with_file = agent_config(
            port, tmp_path / "a", "tls-file", server_tls=True, tls_ca_file=str(certificates["ca"])
        )
        with Running(with_file) as daemon:
            wait_for(lambda: account(daemon) and account(daemon).batches_acked >= 2, 20, "acks")
        # No CA file: the system's CAs, as OpenSSL finds them (SSL_CERT_FILE points there).
        monkeypatch.setenv("SSL_CERT_FILE", str(certificates["ca"]))
        system = agent_config(port, tmp_path / "b", "tls-system", server_tls=True)
        with Running(system) as daemon:
            wait_for(lambda: account(daemon) and account(daemon).batches_acked >= 2, 20, "acks")
        # A CA that did not sign the server's certificate: no connection, nothing accepted.
        monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "none.pem"))
        (tmp_path / "none.pem").write_bytes(trustme.CA().cert_pem.bytes())
        untrusted = agent_config(port, tmp_path / "c", "tls-untrusted", server_tls=True)
        with Running(untrusted) as daemon:
            wait_for(lambda: len(daemon.spool) >= 5, 10, "batches spooled")
            assert account(daemon).batches_acked == 0
            assert not daemon.credential_path.exists()


def test_mutual_tls_needs_the_agents_client_certificate(
    database_url: str, redis_url: str, tmp_path: Path, certificates: dict[str, Path]
) -> None:
    port = free_port()
    env = tls_front_end_env(database_url, redis_url, port, certificates, mutual=True)
    with fleetpulse_process(["ingest"], env, tmp_path / "ingest.log") as proc:
        wait_for_port(port, proc)
        without = agent_config(
            port, tmp_path / "a", "no-cert", server_tls=True, tls_ca_file=str(certificates["ca"])
        )
        with Running(without) as daemon:
            wait_for(lambda: len(daemon.spool) >= 5, 10, "batches spooled")
            assert account(daemon).batches_acked == 0
        with_cert = agent_config(
            port,
            tmp_path / "b",
            "with-cert",
            server_tls=True,
            tls_ca_file=str(certificates["ca"]),
            tls_cert_file=str(certificates["agent_cert"]),
            tls_key_file=str(certificates["agent_key"]),
        )
        with Running(with_cert) as daemon:
            wait_for(lambda: account(daemon) and account(daemon).batches_acked >= 2, 20, "acks")
    with psycopg.connect(database_url) as conn:
        known = conn.execute("SELECT agent_id FROM agents ORDER BY agent_id").fetchall()
    assert known == [("with-cert",)]

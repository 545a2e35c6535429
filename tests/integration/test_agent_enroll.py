"""A refused enrollment, with a real front-end and the real `fleetpulse agent` process: an agent
that never enrolled stops with status 2 and says what to do; one enrolled before keeps retrying."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

from fleetpulse.agent.config import AgentConfig
from fleetpulse.agent.daemon import AgentDaemon
from fleetpulse.agent.spool import Spool
from tests.integration.conftest import TOKEN, ingest_env
from tests.integration.test_agent import wait_for
from tests.processes import fleetpulse_process, free_port, log_tail, wait_for_port

# Guards against a hang, not timings under test.
EXIT_TIMEOUT_S = 60.0


def write_config(tmp_path: Path, port: int, agent_id: str, state_dir: Path) -> Path:
    path = tmp_path / f"{agent_id}.yaml"
    path.write_text(
        "server:\n"
        f'  address: "127.0.0.1:{port}"\n'
        "agent:\n"
        f"  id: {agent_id}\n"
        "  collect_interval: 0.2\n"
        "  heartbeat_interval: 0.5\n"
        f"  state_dir: {state_dir}\n"
        "  collectors: [load]\n"
    )
    return path


def run_agent_to_exit(config: Path, token: str, log: Path) -> tuple[int, str]:
    """`fleetpulse agent --config` until it exits by itself: (status, its output)."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fleetpulse", "agent", "--config", str(config)],
            env={**os.environ, "FLEETPULSE_ENROLLMENT_TOKEN": token},
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        try:
            status = proc.wait(EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(
                f"the agent did not exit; its log ends:\n{log_tail(log)}"
            ) from None
    return status, log.read_text()


def refusal_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if "enrollment refused" in line]


def test_a_wrong_token_and_no_credential_exit_2_naming_the_token_and_keep_the_spool(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    port = free_port()
    env = ingest_env(database_url, redis_url, port, shards=1)
    state_dir = tmp_path / "state"
    config = write_config(tmp_path, port, "newcomer", state_dir)
    with fleetpulse_process(["ingest"], env, tmp_path / "ingest.log") as ingest:
        wait_for_port(port, ingest)
        status, output = run_agent_to_exit(config, "not-the-token", tmp_path / "agent.log")

    assert status == 2, output
    (line,) = refusal_lines(output)  # said once, in one line
    assert "UNAUTHENTICATED" in line
    assert "FLEETPULSE_ENROLLMENT_TOKEN" in line
    assert str(state_dir / "credential") in line
    assert "Traceback" not in output
    assert not (state_dir / "credential").exists()
    # nothing lost: what it collected is still spooled, and its account says it was sent,
    # none of it accepted
    spooled = Spool(state_dir / "spool", max_bytes=64 * 1024 * 1024).pending()
    (account,) = json.loads((state_dir / "sent.json").read_text())["epochs"].values()
    assert len(spooled) >= 1
    assert account["batches_sent"] == len(spooled)
    assert account["batches_acked"] == 0 and account["batches_dropped"] == 0


def test_no_token_at_all_exits_2_and_says_none_is_set(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    port = free_port()
    env = ingest_env(database_url, redis_url, port, shards=1)
    config = write_config(tmp_path, port, "tokenless", tmp_path / "state")
    with fleetpulse_process(["ingest"], env, tmp_path / "ingest.log") as ingest:
        wait_for_port(port, ingest)
        status, output = run_agent_to_exit(config, "", tmp_path / "agent.log")
    assert status == 2, output
    (line,) = refusal_lines(output)
    assert "no enrollment token is set" in line and "FLEETPULSE_ENROLLMENT_TOKEN" in line


def test_an_agent_with_a_credential_file_keeps_retrying_a_refusal(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    port = free_port()
    env = ingest_env(database_url, redis_url, port, shards=1)
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    # Enrolled before (the platform may be mid-restart, or lost it): a credential it does not know.
    (state_dir / "credential").write_text("fpa_not-a-credential-the-platform-issued\n")
    config = write_config(tmp_path, port, "veteran", state_dir)
    log = tmp_path / "agent.log"
    with fleetpulse_process(["ingest"], env, tmp_path / "ingest.log") as ingest:
        wait_for_port(port, ingest)
        agent_env = {"FLEETPULSE_ENROLLMENT_TOKEN": "not-the-token"}
        with fleetpulse_process(["agent", "--config", str(config)], agent_env, log) as agent:
            # its credential refused, it falls back to the (wrong) token, and then retries
            wait_for(
                lambda: (
                    log.read_text().count("retrying, since this agent was enrolled before") >= 2
                ),
                EXIT_TIMEOUT_S,
                "two refused reconnects",
            )
            assert agent.poll() is None, log_tail(log)
        # (leaving the block stopped it with SIGTERM)
        assert agent.returncode == 0, log_tail(log)
    output = log.read_text()
    assert "credential refused; enrolling again with the enrollment token" in output
    assert "FLEETPULSE_ENROLLMENT_TOKEN" in output


def test_an_agent_id_enrolled_by_another_credential_exits_2_naming_revoke(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    port = free_port()
    env = ingest_env(database_url, redis_url, port, shards=1)
    first_state = tmp_path / "first"
    with fleetpulse_process(["ingest"], env, tmp_path / "ingest.log") as ingest:
        wait_for_port(port, ingest)
        # The id's first host enrolls and then connects with its credential (in use).
        settings = AgentConfig(
            server_address=f"127.0.0.1:{port}",
            agent_id="taken",
            enrollment_token=TOKEN,
            collect_interval_s=0.2,
            heartbeat_interval_s=0.5,
            state_dir=first_state,
            collectors=frozenset({"load"}),
        )
        for _ in range(2):
            first = AgentDaemon(settings)
            thread = threading.Thread(
                target=lambda d=first: asyncio.run(d.run(handle_signals=False))
            )
            thread.start()
            wait_for(
                lambda d=first: (
                    (acked := d.report.epochs.get(d.epoch)) is not None and acked.batches_acked >= 1
                ),
                EXIT_TIMEOUT_S,
                "a batch accepted",
            )
            first.stop_threadsafe()
            thread.join(EXIT_TIMEOUT_S)
        assert (first_state / "credential").exists()

        # A second host with the same id and the right token, but no credential of its own.
        config = write_config(tmp_path, port, "taken", tmp_path / "second")
        status, output = run_agent_to_exit(config, TOKEN, tmp_path / "agent.log")
    assert status == 2, output
    (line,) = refusal_lines(output)
    assert "PERMISSION_DENIED" in line and "fleetpulse agents revoke taken" in line

"""The audit log (issue 18): every operator action with its time, the named key or user that made
it, and its target, through the API (``GET /audit``) and the CLI (``fleetpulse actions``)."""

from __future__ import annotations

import getpass
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient

from fleetpulse.agent.config import AgentConfig
from fleetpulse.api.app import create_app
from fleetpulse.settings import Settings
from tests.integration.conftest import TOKEN, Ingest
from tests.integration.test_agent import wait_for
from tests.integration.test_agent_settings import Running
from tests.integration.test_agent_settings import cli as run_cli
from tests.integration.test_api import HEARTBEAT_INTERVAL_S, add_agent

READ = {"authorization": "Bearer grafana-secret"}
OPS = {"authorization": "Bearer ops-secret"}


@pytest.fixture
def api(database_url: str) -> Iterator[TestClient]:
    settings = Settings(
        database_url=database_url,
        heartbeat_interval_s=HEARTBEAT_INTERVAL_S,
        api_keys="grafana:grafana-secret,plain-read-key",  # type: ignore[arg-type]
        api_admin_key="ops:ops-secret",  # type: ignore[arg-type]
    )
    with TestClient(create_app(settings), headers=READ) as client:
        yield client


def test_api_writes_are_logged_with_the_keys_name(api: TestClient, database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as db:
        add_agent(db, "audited")
    assert api.get("/agents", headers={"authorization": "Bearer plain-read-key"}).status_code == 200
    api.put(
        "/agents/audited/config", json={"collect_interval_s": 5}, headers=OPS
    ).raise_for_status()
    api.patch("/agents/audited/tags", json={"role": "db"}, headers=OPS).raise_for_status()
    # Refused writes change nothing and log nothing.
    assert api.patch("/agents/audited/tags", json={"os": "x"}, headers=OPS).status_code == 422
    assert api.patch("/agents/audited/tags", json={"role": "x"}).status_code == 401

    entries = api.get("/audit", params={"target": "audited"}).json()
    assert [(e["actor"], e["action"], e["target"]) for e in entries] == [
        ("key:ops", "tags.change", "audited"),
        ("key:ops", "settings.change", "audited"),
    ]
    assert entries[0]["detail"] == {"patch": {"role": "db"}}
    assert entries[1]["detail"]["version"] == 1
    assert entries[1]["detail"]["changes"]["collect_interval_ms"] == 5000
    assert entries[0]["id"] > entries[1]["id"] and entries[0]["at"] >= entries[1]["at"]
    only = api.get("/audit", params={"action": "settings.change"}).json()
    assert [e["action"] for e in only] == ["settings.change"]
    older = api.get("/audit", params={"before": entries[0]["id"], "limit": 1}).json()
    assert [e["id"] for e in older] == [entries[1]["id"]]
    assert api.get("/audit", params={"actor": "key:grafana"}).json() == []
    assert api.get("/audit", params={"limit": 0}).status_code == 422


def test_enrollment_and_cli_actions_are_logged(
    ingest: Ingest, database_url: str, redis_url: str, tmp_path: Path
) -> None:
    config = AgentConfig(
        server_address=ingest.address,
        agent_id="audited-agent",
        enrollment_token=TOKEN,
        collect_interval_s=0.5,
        heartbeat_interval_s=0.5,
        state_dir=tmp_path / "state",
        collectors=frozenset({"load"}),
    )
    with Running(config):
        wait_for(lambda: (tmp_path / "state" / "credential").exists(), 20, "the enrollment")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(list(args), database_url, redis_url)

    assert cli("agents", "tag", "audited-agent", "env=prod").returncode == 0
    assert cli("agents", "config", "audited-agent", "--collect-interval", "2").returncode == 0
    revoked = cli("agents", "revoke", "audited-agent")
    assert revoked.returncode == 0, revoked.stderr
    assert cli("agents", "revoke", "audited-agent").returncode == 1  # nothing left: not logged

    listing = cli("actions", "--target", "audited-agent")
    assert listing.returncode == 0, listing.stderr
    user = f"cli:{getpass.getuser()}"
    assert [line.split()[1:4] for line in listing.stdout.splitlines()] == [
        [user, "credential.revoke", "audited-agent"],
        [user, "settings.change", "audited-agent"],
        [user, "tags.change", "audited-agent"],
        ["enrollment-token", "agent.enroll", "audited-agent"],
    ]
    only = cli("actions", "--action", "agent.enroll", "--limit", "5")
    assert [line.split()[3] for line in only.stdout.splitlines()] == ["audited-agent"]

"""Agent tags (issue 18, groups): a real agent's config tags arrive with its register, an
operator's tags are set and removed through the API and the CLI, and tags filter the agents list
and the fleet summary."""

from __future__ import annotations

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
from tests.integration.test_api import (
    ADMIN_KEY,
    HEARTBEAT_INTERVAL_S,
    READ_AUTH,
    READ_KEY,
    add_agent,
)

ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def api(database_url: str) -> Iterator[TestClient]:
    settings = Settings(
        database_url=database_url,
        heartbeat_interval_s=HEARTBEAT_INTERVAL_S,
        api_keys=READ_KEY,  # type: ignore[arg-type]  # pydantic makes it a SecretStr
        api_admin_key=ADMIN_KEY,  # type: ignore[arg-type]
    )
    with TestClient(create_app(settings), headers=READ_AUTH) as client:
        yield client


def ids(response: object) -> list[str]:
    body = response.json()  # type: ignore[attr-defined]
    assert isinstance(body, list), body
    return sorted(agent["agent_id"] for agent in body)


def test_tags_filter_agents_and_summary_and_an_operator_overrides(
    api: TestClient, db: psycopg.Connection
) -> None:
    for agent in ("t-db-1", "t-db-2", "t-web-1", "t-bare"):
        add_agent(db, agent)
    db.execute(
        "UPDATE agents SET config_tags = CASE"
        ' WHEN agent_id LIKE \'t-db-%%\' THEN \'{"env": "prod", "role": "db"}\'::jsonb'
        ' WHEN agent_id = \'t-web-1\' THEN \'{"env": "staging", "role": "web"}\'::jsonb'
        " ELSE '{}'::jsonb END WHERE agent_id LIKE 't-%%'"
    )
    assert ids(api.get("/agents", params={"tag": "role=db"})) == ["t-db-1", "t-db-2"]
    assert ids(api.get("/agents", params=[("tag", "env=prod"), ("tag", "role=web")])) == []
    assert ids(api.get("/agents", params={"tag": "env=staging"})) == ["t-web-1"]
    agents = {a["agent_id"]: a for a in api.get("/agents", params={"q": "t-"}).json()}
    assert agents["t-web-1"]["tags"] == {"env": "staging", "role": "web"}
    assert agents["t-bare"]["tags"] == {}

    summary = api.get("/fleet/summary", params={"tag": "env=prod"}).json()
    assert summary["agents"] == 2
    assert summary["by_tag"] == {"env": {"prod": 2}, "role": {"db": 2}}
    everyone = api.get("/fleet/summary").json()
    assert everyone["by_tag"]["role"] == {"db": 2, "web": 1}

    # The operator's tags: only with the admin key; they override the config's on a shared key.
    assert api.patch("/agents/t-web-1/tags", json={"role": "cache"}).status_code == 401
    patched = api.patch("/agents/t-web-1/tags", json={"role": "cache", "rack": "r7"}, headers=ADMIN)
    assert patched.status_code == 200, patched.text
    assert patched.json() == {
        "agent_id": "t-web-1",
        "tags": {"env": "staging", "role": "cache", "rack": "r7"},
        "config": {"env": "staging", "role": "web"},
        "operator": {"role": "cache", "rack": "r7"},
    }
    assert ids(api.get("/agents", params={"tag": "role=cache"})) == ["t-web-1"]
    assert ids(api.get("/agents", params={"tag": "role=web"})) == []
    # null removes the operator's tag: the config's value shows again.
    api.patch("/agents/t-web-1/tags", json={"role": None}, headers=ADMIN).raise_for_status()
    tags = api.get("/agents/t-web-1/tags").json()
    assert tags["tags"] == {"env": "staging", "role": "web", "rack": "r7"}
    assert api.get("/agents/t-web-1").json()["tags"] == tags["tags"]

    # Bad input: one line naming the problem, and nothing stored.
    for body, problem in (
        ({"os": "x"}, "agent's own fields"),
        ({"9lives": "x"}, "must be a label name"),
        ({"env": 3}, "a value is text"),
        ({"env": "x" * 300}, "at most 256 characters"),
        ({f"k{i}": "v" for i in range(40)}, "at most 32 tags"),
    ):
        refused = api.patch("/agents/t-bare/tags", json=body, headers=ADMIN)
        assert refused.status_code == 422, refused.text
        assert problem in refused.json()["detail"], refused.text
    assert api.get("/agents/t-bare/tags").json()["operator"] == {}
    assert api.patch("/agents/nobody/tags", json={"a": "b"}, headers=ADMIN).status_code == 404
    bad_filter = api.get("/agents", params={"tag": "no-equals"})
    assert bad_filter.status_code == 422 and "key=value" in bad_filter.text


def test_a_real_agents_config_tags_arrive_and_the_cli_tags_it(
    ingest: Ingest, database_url: str, redis_url: str, tmp_path: Path
) -> None:
    config = AgentConfig(
        server_address=ingest.address,
        agent_id="tagged-agent",
        enrollment_token=TOKEN,
        collect_interval_s=0.2,
        heartbeat_interval_s=0.5,
        state_dir=tmp_path / "state",
        collectors=frozenset({"load"}),
        tags={"env": "prod", "role": "db"},
    )
    with Running(config):

        def stored() -> object:
            with psycopg.connect(database_url) as conn:
                row = conn.execute(
                    "SELECT config_tags FROM agents WHERE agent_id = 'tagged-agent'"
                ).fetchone()
            return row and row[0]

        wait_for(lambda: stored() == {"env": "prod", "role": "db"}, 20, "the config tags")

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return run_cli(["agents", *args], database_url, redis_url)

        tagged = cli("tag", "tagged-agent", "role=cache", "rack=r7")
        assert tagged.returncode == 0, tagged.stderr
        assert tagged.stdout.splitlines()[0] == "tagged-agent: env=prod rack=r7 role=cache"
        listing = cli("list", "--tag", "rack=r7")
        assert listing.returncode == 0, listing.stderr
        assert [line.split()[0] for line in listing.stdout.splitlines()[1:-1]] == ["tagged-agent"]
        assert "env=prod,rack=r7,role=cache" in listing.stdout
        removed = cli("tag", "tagged-agent", "role-")
        assert removed.returncode == 0, removed.stderr
        assert "set by an operator    rack=r7" in removed.stdout
        refused = cli("tag", "tagged-agent", "os=x")
        assert refused.returncode == 2 and "agent's own fields" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
        assert cli("tag", "nobody", "a=b").returncode == 1
        assert cli("list", "--tag", "bad").returncode == 2

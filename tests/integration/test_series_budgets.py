"""Series budgets (issue 18, point 4): an agent that invents a new series per sample gets its
budget's worth stored and the rest refused and counted, another agent's series keep flowing, the
flooding agent is told in its acks, and an operator raises or sets budgets per agent and per tag
through the CLI and the API."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient

from fleetpulse.api.app import create_app
from fleetpulse.ingest import seriesbudgets
from fleetpulse.proto import agent_pb2, metric_pb2
from fleetpulse.settings import Settings
from tests.integration.conftest import TOKEN
from tests.integration.test_agent import wait_for
from tests.integration.test_agent_settings import cli
from tests.integration.test_edge import Edge, Stream, start_edge
from tests.integration.test_frontend import register
from tests.processes import fleetpulse_process

BUDGET = 1_000
FLOOD_BATCHES = 50
NEW_PER_BATCH = 2_000  # 100,000 new series in all, sent within seconds (more than 100,000/min)
STEADY_SERIES = 20
ADMIN_KEY = "budget-admin-key"


@pytest.fixture
def platform(database_url: str, redis_url: str, tmp_path: Path) -> Iterator[Edge]:
    env = {
        "FLEETPULSE_DATABASE_URL": database_url,
        "FLEETPULSE_REDIS_URL": redis_url,
        "FLEETPULSE_STREAM_SHARDS": "2",
        "FLEETPULSE_SERIES_BUDGET": str(BUDGET),
    }
    with fleetpulse_process(["worker"], env, tmp_path / "worker.log"):
        yield from start_edge(
            database_url, redis_url, tmp_path, FLEETPULSE_SERIES_BUDGET=str(BUDGET)
        )


def batch(agent_id: str, seq: int, names: list[str]) -> agent_pb2.AgentMessage:
    return agent_pb2.AgentMessage(
        metric_columns=metric_pb2.ColumnarBatch(
            agent_id=agent_id,
            epoch=1,
            sequence=seq,
            values=[float(seq)] * len(names),
            timestamps_ns=[time.time_ns()],
            series=metric_pb2.SeriesSet(
                entries=[
                    metric_pb2.SeriesDef(name="requests", labels={"request_id": n}) for n in names
                ]
            ),
        )
    )


def stored(edge: Edge, query: str, *params: object) -> int:
    with psycopg.connect(edge.database_url) as conn:
        row = conn.execute(query, params).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def committed(edge: Edge, agent_id: str) -> int:
    return stored(edge, "SELECT count(*) FROM batches WHERE agent_id = %s", agent_id)


def test_a_flood_of_new_series_is_held_to_the_budget_and_others_flow(platform: Edge) -> None:
    flood, steady = Stream(platform.address, TOKEN), Stream(platform.address, TOKEN)
    flood.send(register("flood-1", "m1", protocol=1))
    steady.send(register("steady-1", "m2", protocol=1))
    flood.wait_for("register_response")
    steady.wait_for("register_response")
    names = [f"s{i}" for i in range(STEADY_SERIES)]
    for seq in range(1, FLOOD_BATCHES + 1):
        fresh = [f"r{seq}-{i}" for i in range(NEW_PER_BATCH)]
        flood.send(batch("flood-1", seq, fresh))
        steady.send(batch("steady-1", seq, names))
    assert all(a.success for a in flood.wait_for("metric_ack", FLOOD_BATCHES, timeout_s=60))
    assert all(a.success for a in steady.wait_for("metric_ack", FLOOD_BATCHES, timeout_s=60))
    wait_for(lambda: committed(platform, "flood-1") == FLOOD_BATCHES, 60, "the flood committed")
    wait_for(lambda: committed(platform, "steady-1") == FLOOD_BATCHES, 60, "steady committed")

    # the table grew by the budget, every other new series was refused and counted
    series_of = "SELECT count(*) FROM series WHERE agent_id = %s"
    assert stored(platform, series_of, "flood-1") == BUDGET
    refused = "SELECT points FROM rejects WHERE agent_id = %s AND reason = %s"
    assert stored(platform, refused, "flood-1", seriesbudgets.REASON) == (
        FLOOD_BATCHES * NEW_PER_BATCH - BUDGET
    )
    # the steady agent lost nothing
    assert stored(platform, series_of, "steady-1") == STEADY_SERIES
    points = "SELECT points_committed FROM agent_ingest WHERE agent_id = %s"
    assert stored(platform, points, "steady-1") == FLOOD_BATCHES * STEADY_SERIES
    assert stored(platform, refused, "steady-1", seriesbudgets.REASON) == 0

    # the flooding agent is told in its acks (the front-end reads the refusals every 10 s)
    seq = FLOOD_BATCHES

    def told() -> bool:
        nonlocal seq
        seq += 1
        flood.send(batch("flood-1", seq, ["s0"]))
        time.sleep(0.5)
        acks = flood.wait_for("metric_ack", seq)
        return seriesbudgets.REASON in acks[-1].message

    wait_for(told, 30, "an ack saying series_budget")
    assert "accepted; series_budget: " in flood.wait_for("metric_ack", seq)[-1].message
    steady.send(batch("steady-1", FLOOD_BATCHES + 1, names))
    assert steady.wait_for("metric_ack", FLOOD_BATCHES + 1)[-1].message == "accepted"

    # an operator raises the agent's budget (CLI): new series are taken again, up to it
    done = cli(["agents", "budget", "flood-1", "1500"], platform.database_url, platform.redis_url)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"flood-1: {BUDGET} series of a budget of 1500"
    told_batches = seq - FLOOD_BATCHES  # one new series each, refused
    seq += 1
    flood.send(batch("flood-1", seq, [f"late-{i}" for i in range(NEW_PER_BATCH)]))
    assert flood.wait_for("metric_ack", seq)[-1].success
    wait_for(lambda: stored(platform, series_of, "flood-1") == 1500, 30, "500 more series")

    # the API shows it at its limit; a tag's budget applies to the agents carrying it
    settings = Settings(
        database_url=platform.database_url,
        api_admin_key=ADMIN_KEY,  # type: ignore[arg-type]  # pydantic makes it a SecretStr
        series_budget=BUDGET,
    )
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    with TestClient(create_app(settings), headers=admin) as api:
        use = api.get("/agents/flood-1/series-budget").json()
        assert use == {
            "agent_id": "flood-1",
            "series": 1500,
            "budget": 1500,
            "at_budget": True,
            "points_refused": FLOOD_BATCHES * NEW_PER_BATCH
            - BUDGET
            + told_batches
            + NEW_PER_BATCH
            - 500,
        }
        assert api.patch("/agents/steady-1/tags", json={"tier": "small"}).status_code == 200
        answer = api.put("/series-budgets", json={"tag": "tier=small", "budget": 10})
        assert answer.status_code == 200, answer.text
        assert answer.json() == {
            "default": BUDGET,
            "budgets": [
                {"agent_id": "flood-1", "tag": None, "budget": 1500},
                {"agent_id": None, "tag": "tier=small", "budget": 10},
            ],
        }
        use = api.get("/agents/steady-1/series-budget").json()
        assert (use["series"], use["budget"], use["at_budget"]) == (STEADY_SERIES, 10, True)
        refusals = [
            api.put("/series-budgets", json={"budget": 5}),
            api.put("/series-budgets", json={"agent_id": "x", "tag": "a=b", "budget": 5}),
            api.put("/series-budgets", json={"tag": "agent_id=b", "budget": 5}),
            api.put("/series-budgets", json={"agent_id": "flood-1", "budget": -1}),
        ]
        assert [r.status_code for r in refusals] == [422, 422, 422, 422]
        assert api.put("/series-budgets", json={"agent_id": "nobody", "budget": 5}).status_code == (
            404
        )
        actions = api.get("/audit", params={"action": "series_budget.change"}).json()
        assert [(a["actor"], a["target"]) for a in actions] == [
            ("key:admin", "tag:tier=small"),
            (actions[1]["actor"], "flood-1"),
        ]
        assert actions[1]["actor"].startswith("cli:")
    # over a tag's budget its known series keep flowing
    steady.send(batch("steady-1", FLOOD_BATCHES + 2, names))
    wait_for(lambda: committed(platform, "steady-1") == FLOOD_BATCHES + 2, 30, "steady flows")
    assert stored(platform, points, "steady-1") == (FLOOD_BATCHES + 2) * STEADY_SERIES
    # the CLI lists and removes them
    urls = (platform.database_url, platform.redis_url)
    listed = cli(["agents", "budget"], *urls)
    assert listed.stdout.splitlines() == ["default  10000", "flood-1  1500", "tag:tier=small  10"]
    removed = cli(["agents", "budget", "--tag", "tier=small", "-"], *urls)
    assert removed.stdout.strip() == "tag:tier=small: removed"
    bad = cli(["agents", "budget", "flood-1", "lots"], *urls)
    assert bad.returncode != 0 and "'lots'" in bad.stderr
    flood.close()
    steady.close()

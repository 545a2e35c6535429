"""Liveness that says what it knows (issue 18, point 3): a real front-end records every transition
of an agent (online, data_stale, stale, offline) with its time and cause; the API, the fleet summary
and PromQL's fleetpulse_agent_* series answer from that history."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient

from fleetpulse import liveness
from fleetpulse.api.app import create_app
from fleetpulse.proto import agent_pb2
from fleetpulse.settings import Settings
from tests.integration.conftest import TOKEN
from tests.integration.test_agent_settings import cli
from tests.integration.test_edge import Edge, Stream, columns, start_edge
from tests.integration.test_frontend import heartbeat, register

# Short intervals: a heartbeat is late after 2 s, gone after 4 s, batches after 3 s.
INTERVALS = {
    "FLEETPULSE_HEARTBEAT_INTERVAL_S": "1",
    "FLEETPULSE_STALE_AFTER_HEARTBEATS": "2",
    "FLEETPULSE_OFFLINE_AFTER_HEARTBEATS": "4",
    "FLEETPULSE_DATA_STALE_AFTER_S": "3",
    "FLEETPULSE_LIVENESS_CHECK_INTERVAL_S": "0.2",
}


@pytest.fixture
def edge(database_url: str, redis_url: str, tmp_path: Path) -> Iterator[Edge]:
    yield from start_edge(database_url, redis_url, tmp_path, **INTERVALS)


def history(edge: Edge, agent_id: str) -> list[tuple[datetime, str, str, str]]:
    with psycopg.connect(edge.database_url) as conn:
        return conn.execute(
            "SELECT at, state, cause, detail FROM agent_liveness WHERE agent_id = %s ORDER BY id",
            (agent_id,),
        ).fetchall()


def keep_until(
    edge: Edge, stream: Stream, agent_id: str, state: str, heartbeats: bool, batches: bool
) -> None:
    """Send heartbeats and batches (each if asked) every 0.3 s until the agent's last recorded
    state is ``state``."""
    deadline = time.monotonic() + 15
    seq = int(time.time() * 1000)
    while time.monotonic() < deadline:
        if heartbeats:
            stream.send(heartbeat(agent_id))
        if batches:
            seq += 1
            stream.send(columns(agent_id, seq))
        rows = history(edge, agent_id)
        if rows and rows[-1][1] == state:
            return
        time.sleep(0.3)
    raise AssertionError(f"{agent_id} never became {state}: {history(edge, agent_id)}")


def test_every_transition_is_recorded_with_its_cause_and_read_by_api_and_promql(
    edge: Edge,
) -> None:
    message = register("lv-1", "m1", protocol=0)
    message.register.tags["env"] = "test"
    stream = Stream(edge.address, TOKEN)
    stream.send(message)
    stream.wait_for("register_response")
    keep_until(edge, stream, "lv-1", "online", heartbeats=True, batches=True)
    # heartbeats on time, batches stop: its data is stale, the agent is not
    keep_until(edge, stream, "lv-1", "data_stale", heartbeats=True, batches=False)
    keep_until(edge, stream, "lv-1", "online", heartbeats=True, batches=True)
    # then silence, the stream still open: late first, gone after that
    keep_until(edge, stream, "lv-1", "offline", heartbeats=False, batches=False)
    keep_until(edge, stream, "lv-1", "online", heartbeats=True, batches=True)
    stream.send(agent_pb2.AgentMessage(disconnect=agent_pb2.Disconnect(reason="maintenance")))
    assert stream.wait_closed() is None
    deadline = time.monotonic() + 10
    while history(edge, "lv-1")[-1][1] != "offline" and time.monotonic() < deadline:
        time.sleep(0.1)

    rows = history(edge, "lv-1")
    assert [(state, cause) for _, state, cause, _ in rows] == [
        ("online", liveness.REGISTERED),
        ("data_stale", liveness.BATCHES_LATE),
        ("online", liveness.BATCHES_RESUMED),
        ("stale", liveness.HEARTBEAT_LATE),
        ("offline", liveness.HEARTBEAT_TIMEOUT),
        ("online", liveness.HEARTBEATS_RESUMED),
        ("offline", liveness.DISCONNECTED),
    ]
    assert rows[-1][3] == "maintenance"
    times = [at for at, *_ in rows]
    assert times == sorted(times)
    # late and gone are dated from the same last heartbeat: 2 and 4 intervals after it
    assert times[4] - times[3] == timedelta(seconds=2)

    settings = Settings(database_url=edge.database_url, api_open=True, **settings_of(INTERVALS))
    with TestClient(create_app(settings)) as api:
        listed = api.get("/agents/lv-1/liveness").json()
        assert [(c["state"], c["cause"]) for c in listed] == [
            (state, cause) for _, state, cause, _ in reversed(rows)
        ]
        older = api.get("/agents/lv-1/liveness", params={"before": listed[2]["id"], "limit": 2})
        assert [c["id"] for c in older.json()] == [c["id"] for c in listed[3:5]]
        assert api.get("/agents/nobody/liveness").status_code == 404
        agent = api.get("/agents/lv-1").json()
        assert (agent["status"], agent["status_cause"], agent["status_detail"]) == (
            "offline",
            liveness.DISCONNECTED,
            "maintenance",
        )
        summary = api.get("/fleet/summary").json()
        assert summary["by_status"]["offline"] == 1
        assert summary["changes_last_hour"]["offline"] == {
            liveness.HEARTBEAT_TIMEOUT: 1,
            liveness.DISCONNECTED: 1,
        }

        # PromQL reads the same history: at the middle of each recorded state, that state
        for (start, state, _, _), end in zip(
            rows, [*times[1:], times[-1] + timedelta(1)], strict=True
        ):
            at = str((start + (end - start) / 2).timestamp())
            assert promql(api, "fleetpulse_agent_up", at) == [
                ({"__name__": "fleetpulse_agent_up", "agent_id": "lv-1"}, state != "offline")
            ]
            states = promql(api, "fleetpulse_agent_state == 1", at)
            assert [labels["state"] for labels, _ in states] == [state]
        # the info series joins the agent's tags onto any of its series
        info = promql(api, "fleetpulse_agent_info", str(time.time()))
        assert info == [
            (
                {
                    "__name__": "fleetpulse_agent_info",
                    "agent_id": "lv-1",
                    "hostname": "h",
                    "ip": "127.0.0.1",
                    "os": "linux",
                    "arch": "x86_64",
                    "version": "t",
                    "env": "test",
                },
                1,
            )
        ]
        joined = promql(
            api,
            "count by (env) (fleetpulse_agent_up * on(agent_id) group_left(env)"
            " fleetpulse_agent_info)",
            str(time.time()),
        )
        assert joined == [({"env": "test"}, 1)]
        # a range query over it all
        span = api.get(
            "/api/v1/query_range",
            params={
                "query": "fleetpulse_agent_up",
                "start": str(times[0].timestamp()),
                "end": str(times[-1].timestamp() + 2),
                "step": "0.5",
            },
        ).json()
        assert span["status"] == "success"
        values = [float(v) for _, v in span["data"]["result"][0]["values"]]
        assert values[0] == 1.0 and values[-1] == 0.0  # online at the start, offline at the end

    # the CLI reads the same history
    done = cli(["agents", "history", "lv-1"], edge.database_url, edge.redis_url)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split()[1:3] for line in lines] == [
        [state, cause] for _, state, cause, _ in reversed(rows)
    ]
    assert lines[0].endswith("maintenance")
    missing = cli(["agents", "history", "nobody"], edge.database_url, edge.redis_url)
    assert missing.returncode != 0 and "nobody" in missing.stderr


def promql(api: TestClient, query: str, at: str) -> list[tuple[dict[str, str], float]]:
    body = api.get("/api/v1/query", params={"query": query, "time": at}).json()
    assert body["status"] == "success", body
    return [(r["metric"], float(r["value"][1])) for r in body["data"]["result"]]


def settings_of(env: dict[str, str]) -> dict[str, float]:
    return {key.removeprefix("FLEETPULSE_").lower(): float(value) for key, value in env.items()}

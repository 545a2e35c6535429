"""The read API against a real, migrated PostgreSQL (embedded and external), through TestClient."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np
import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg import sql

from fleetpulse.api.app import create_app
from fleetpulse.errors import ConfigError
from fleetpulse.ingest.worker.copier import write_points
from fleetpulse.settings import Settings
from tests.processes import free_port

HEARTBEAT_INTERVAL_S = 10.0  # with the default 3 intervals, offline after 30 s without a heartbeat
MAX_POINTS = 5
READ_KEY = "test-read-key"
READ_AUTH = {"authorization": f"Bearer {READ_KEY}"}

NASTY_STRINGS = [
    "x' OR '1'='1",
    "'; DROP TABLE agents; --",
    "a\x00b",
    "%",
    "_",
    "%s",
    "%(agent_id)s",
    "\\",
    '"',
    "' UNION SELECT agent_id, 1, 1 FROM agents --",
    "ü🚀",
    "a" * 5000,
]


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def client(database_url: str) -> Iterator[TestClient]:
    settings = Settings(
        database_url=database_url,
        api_max_points=MAX_POINTS,
        heartbeat_interval_s=HEARTBEAT_INTERVAL_S,
        api_keys=READ_KEY,  # type: ignore[arg-type]  # pydantic makes it a SecretStr
    )
    with TestClient(create_app(settings), headers=READ_AUTH) as test_client:
        yield test_client


def add_agent(
    db: psycopg.Connection,
    agent_id: str,
    *,
    status: str = "online",
    heartbeat_age_s: float | None = 0.0,
    hostname: str = "host",
) -> None:
    db.execute(
        "INSERT INTO agents (agent_id, hostname, ip, os, arch, version, status, last_heartbeat)"
        " VALUES (%s, %s, '10.0.0.1', 'linux', 'amd64', '1.2.3', %s,"
        " CASE WHEN %s::float8 IS NULL THEN NULL ELSE now() - make_interval(secs => %s) END)",
        (agent_id, hostname, status, heartbeat_age_s, heartbeat_age_s),
    )


def add_series(db: psycopg.Connection, agent_id: str, name: str, labels: str = "{}") -> int:
    row = db.execute(
        "INSERT INTO series (agent_id, name, labels) VALUES (%s, %s, %s::jsonb) RETURNING series_id",
        (agent_id, name, labels),
    ).fetchone()
    assert row is not None
    series_id: int = row[0]
    return series_id


def add_points(
    db: psycopg.Connection, series_id: int, points: list[tuple[datetime, float]]
) -> None:
    write_points(
        db,
        np.full(len(points), series_id),
        np.asarray([round(ts.timestamp() * 1_000_000) for ts, _ in points], dtype=np.int64),
        np.asarray([value for _, value in points], dtype=np.float64),
    )


def recent_base() -> datetime:
    """A whole second about half an hour ago: inside the default window and today's partitions."""
    return (datetime.now(UTC) - timedelta(minutes=30)).replace(microsecond=0)


def test_healthz_ok(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_healthz_503_while_the_database_refuses_connections_then_recovers(
    client: TestClient, db: psycopg.Connection, backend: Any
) -> None:
    assert client.get("/healthz").status_code == 200
    name = sql.Identifier(db.info.dbname)
    # A database cannot refuse connections to itself, hence the admin database.
    with psycopg.connect(backend.admin_database_url, autocommit=True) as admin:
        admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(name))
        try:
            db.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            response = client.get("/healthz")
            assert response.status_code == 503
            body = response.json()
            assert body["status"] == "unavailable"
            assert body["error"]
            assert "\n" not in body["error"]
        finally:
            admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(name))
    deadline = time.monotonic() + 30
    while client.get("/healthz").status_code != 200:
        assert time.monotonic() < deadline, "the pool did not reconnect"
        time.sleep(0.2)


def test_docs_and_openapi_are_served(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {
        "/healthz",
        "/agents",
        "/agents/{agent_id}",
        "/agents/{agent_id}/series",
        "/agents/{agent_id}/points",
    } <= set(paths)


def test_list_agents_empty(client: TestClient) -> None:
    response = client.get("/agents")
    assert response.status_code == 200
    assert response.json() == []


def test_list_agents_computes_status_from_heartbeat_age(
    client: TestClient, db: psycopg.Connection
) -> None:
    add_agent(db, "d-online-recent", heartbeat_age_s=1)
    add_agent(db, "c-online-stale", heartbeat_age_s=3600)
    add_agent(db, "b-offline-recent", status="offline", heartbeat_age_s=1)
    add_agent(db, "a-online-never", heartbeat_age_s=None)
    add_agent(db, "e-online-late", heartbeat_age_s=25)  # one heartbeat missed: stale
    add_agent(db, "f-online-no-data", heartbeat_age_s=1)
    db.execute(  # connected 200 s ago, heartbeats on time, no batch since: data_stale
        "UPDATE agents SET connected_at = now() - interval '200 seconds'"
        " WHERE agent_id = 'f-online-no-data'"
    )
    db.execute(
        "INSERT INTO agent_ingest (agent_id, batches_committed, points_committed)"
        " VALUES ('d-online-recent', 3, 120)"
    )

    response = client.get("/agents")

    assert response.status_code == 200
    agents = response.json()
    assert [a["agent_id"] for a in agents] == [
        "a-online-never",
        "b-offline-recent",
        "c-online-stale",
        "d-online-recent",
        "e-online-late",
        "f-online-no-data",
    ]
    by_id = {a["agent_id"]: a for a in agents}
    assert {agent_id: (a["status"], a["status_cause"]) for agent_id, a in by_id.items()} == {
        "d-online-recent": ("online", "observed"),  # never recorded (as before schema 15)
        "c-online-stale": ("offline", "heartbeat_timeout"),
        "b-offline-recent": ("offline", "stream_closed"),
        "a-online-never": ("offline", "stream_closed"),
        "e-online-late": ("stale", "heartbeat_late"),
        "f-online-no-data": ("data_stale", "batches_late"),
    }
    # a timeout starts when the heartbeats ran out: 3 intervals of 10 s after the last one, and
    # one flush of heartbeats (2 s by default) a heartbeat may take to reach PostgreSQL
    late = by_id["c-online-stale"]
    since = datetime.fromisoformat(late["status_since"]) - datetime.fromisoformat(
        late["last_heartbeat"]
    )
    assert since == timedelta(seconds=30 + 2)
    assert "every 10" in by_id["e-online-late"]["status_detail"]
    stale = client.get("/agents", params={"status": "stale"}).json()
    assert [a["agent_id"] for a in stale] == ["e-online-late"]
    summary = client.get("/fleet/summary").json()
    assert summary["by_status"] == {"online": 1, "stale": 1, "data_stale": 1, "offline": 3}
    assert by_id["a-online-never"]["last_heartbeat"] is None
    assert (
        by_id["d-online-recent"]["batches_committed"],
        by_id["d-online-recent"]["points_committed"],
    ) == (3, 120)
    assert (
        by_id["c-online-stale"]["batches_committed"],
        by_id["c-online-stale"]["points_committed"],
    ) == (0, 0)
    agent = by_id["d-online-recent"]
    assert set(agent) == {
        "agent_id",
        "hostname",
        "ip",
        "os",
        "arch",
        "version",
        "status",
        "status_since",
        "status_cause",
        "status_detail",
        "last_heartbeat",
        "created_at",
        "updated_at",
        "batches_committed",
        "points_committed",
        "cpu_percent",
        "memory_percent",
        "tags",
    }
    assert (agent["hostname"], agent["ip"], agent["os"], agent["arch"], agent["version"]) == (
        "host",
        "10.0.0.1",
        "linux",
        "amd64",
        "1.2.3",
    )
    heartbeat = datetime.fromisoformat(agent["last_heartbeat"])
    assert heartbeat.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - heartbeat) < timedelta(minutes=1)


def test_get_agent_detail_with_ingest_accounting_and_rejects(
    client: TestClient, db: psycopg.Connection
) -> None:
    add_agent(db, "web-1", hostname="web-1.example")
    add_agent(db, "web-2", status="offline")
    db.execute(
        "INSERT INTO agent_ingest (agent_id, batches_committed, points_committed, points_rejected,"
        " last_epoch, last_seq, last_commit_at) VALUES ('web-1', 7, 700, 13, 2, 41, now())"
    )
    db.execute(
        "INSERT INTO rejects (agent_id, reason, points) VALUES"
        " ('web-1', 'too_old', 10), ('web-1', 'too_far_ahead', 3), ('web-2', 'too_old', 99)"
    )

    response = client.get("/agents/web-1")

    assert response.status_code == 200
    agent = response.json()
    assert agent["agent_id"] == "web-1"
    assert agent["hostname"] == "web-1.example"
    assert agent["status"] == "online"
    assert agent["batches_committed"] == 7
    assert agent["points_committed"] == 700
    assert agent["points_rejected"] == 13
    assert (agent["last_epoch"], agent["last_seq"]) == (2, 41)
    assert abs(datetime.now(UTC) - datetime.fromisoformat(agent["last_commit_at"])) < timedelta(
        minutes=1
    )
    assert agent["rejected_by_reason"] == {"too_old": 10, "too_far_ahead": 3}

    bare = client.get("/agents/web-2").json()
    assert bare["status"] == "offline"
    assert (bare["batches_committed"], bare["points_committed"], bare["points_rejected"]) == (
        0,
        0,
        0,
    )
    assert (bare["last_epoch"], bare["last_seq"], bare["last_commit_at"]) == (None, None, None)
    assert bare["rejected_by_reason"] == {"too_old": 99}


def test_get_agent_unknown_is_404(client: TestClient) -> None:
    response = client.get("/agents/nope")
    assert response.status_code == 404
    assert response.json() == {"detail": "agent 'nope' not found"}


def test_list_agent_series_ordered_and_filtered_by_name(
    client: TestClient, db: psycopg.Connection
) -> None:
    add_agent(db, "a1")
    add_agent(db, "a2")
    cpu1 = add_series(db, "a1", "cpu", '{"core": "1"}')
    mem = add_series(db, "a1", "mem")
    cpu0 = add_series(db, "a1", "cpu", '{"core": "0"}')
    add_series(db, "a2", "cpu")

    response = client.get("/agents/a1/series")

    assert response.status_code == 200
    assert response.json() == [
        {"series_id": cpu1, "name": "cpu", "labels": {"core": "1"}},
        {"series_id": cpu0, "name": "cpu", "labels": {"core": "0"}},
        {"series_id": mem, "name": "mem", "labels": {}},
    ]
    assert [
        s["series_id"] for s in client.get("/agents/a1/series", params={"name": "cpu"}).json()
    ] == [
        cpu1,
        cpu0,
    ]
    assert client.get("/agents/a1/series", params={"name": "disk"}).json() == []
    assert client.get("/agents/nope/series").status_code == 404


def test_get_agent_points_in_range_grouped_by_series(
    client: TestClient, db: psycopg.Connection
) -> None:
    add_agent(db, "a1")
    add_agent(db, "a2")
    cpu0 = add_series(db, "a1", "cpu", '{"core": "0"}')
    cpu1 = add_series(db, "a1", "cpu", '{"core": "1"}')
    add_series(db, "a1", "cpu", '{"core": "2"}')  # no points in range: left out
    mem = add_series(db, "a1", "mem")
    other_agent = add_series(db, "a2", "cpu", '{"core": "0"}')
    base = recent_base()
    at = [base + timedelta(seconds=10 * i) for i in range(5)]
    add_points(db, cpu1, [(at[2], 2.5), (at[0], 0.5)])  # stored out of order
    add_points(db, cpu0, [(at[1], 1.0), (at[3], 3.0), (at[4], 4.0)])  # at[4] is the excluded end
    add_points(db, cpu0, [(base - timedelta(seconds=1), -1.0)])  # before start
    add_points(db, mem, [(at[1], 99.0)])
    add_points(db, other_agent, [(at[1], 99.0)])

    response = client.get(
        "/agents/a1/points",
        params={"name": "cpu", "start": at[0].isoformat(), "end": at[4].isoformat()},
    )

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["agent_id"] == "a1"
    assert body["name"] == "cpu"
    assert datetime.fromisoformat(body["start"]) == at[0]
    assert datetime.fromisoformat(body["end"]) == at[4]
    assert [s["series_id"] for s in body["series"]] == [cpu0, cpu1]
    assert body["series"][0]["labels"] == {"core": "0"}
    assert body["series"][1]["labels"] == {"core": "1"}

    def parsed(points: list[list[Any]]) -> list[tuple[datetime, float]]:
        return [(datetime.fromisoformat(ts), value) for ts, value in points]

    assert parsed(body["series"][0]["points"]) == [(at[1], 1.0), (at[3], 3.0)]
    assert parsed(body["series"][1]["points"]) == [(at[0], 0.5), (at[2], 2.5)]


def test_get_agent_points_defaults_to_the_last_hour(
    client: TestClient, db: psycopg.Connection
) -> None:
    add_agent(db, "a1")
    cpu = add_series(db, "a1", "cpu")
    now = datetime.now(UTC)
    add_points(db, cpu, [(now - timedelta(minutes=90), 1.0), (now - timedelta(minutes=30), 2.0)])

    body = client.get("/agents/a1/points", params={"name": "cpu"}).json()

    end = datetime.fromisoformat(body["end"])
    assert datetime.fromisoformat(body["start"]) == end - timedelta(hours=1)
    assert abs(end - datetime.now(UTC)) < timedelta(minutes=1)
    assert [value for _, value in body["series"][0]["points"]] == [2.0]

    # only start given: end is now; only end given: start is an hour before it
    start = (now - timedelta(minutes=100)).isoformat()
    body = client.get("/agents/a1/points", params={"name": "cpu", "start": start}).json()
    assert [value for _, value in body["series"][0]["points"]] == [1.0, 2.0]
    end_param = (now - timedelta(minutes=40)).isoformat()
    body = client.get("/agents/a1/points", params={"name": "cpu", "end": end_param}).json()
    assert [value for _, value in body["series"][0]["points"]] == [1.0]


def test_get_agent_points_takes_a_naive_datetime_as_utc(
    client: TestClient, db: psycopg.Connection
) -> None:
    add_agent(db, "a1")
    cpu = add_series(db, "a1", "cpu")
    base = recent_base()
    add_points(db, cpu, [(base, 1.0)])
    naive_start = base.replace(tzinfo=None).isoformat()
    naive_end = (base + timedelta(seconds=1)).replace(tzinfo=None).isoformat()

    body = client.get(
        "/agents/a1/points", params={"name": "cpu", "start": naive_start, "end": naive_end}
    ).json()

    assert datetime.fromisoformat(body["start"]) == base
    assert [value for _, value in body["series"][0]["points"]] == [1.0]
    # the same instant written with another offset selects the same point
    shifted = base.astimezone(datetime.fromisoformat("2000-01-01T00:00:00+05:30").tzinfo)
    body = client.get(
        "/agents/a1/points",
        params={
            "name": "cpu",
            "start": shifted.isoformat(),
            "end": (shifted + timedelta(seconds=1)).isoformat(),
        },
    ).json()
    assert datetime.fromisoformat(body["start"]) == base
    assert [value for _, value in body["series"][0]["points"]] == [1.0]


def test_get_agent_points_non_finite_values_are_null(
    client: TestClient, db: psycopg.Connection
) -> None:
    add_agent(db, "a1")
    cpu = add_series(db, "a1", "cpu")
    base = recent_base()
    add_points(
        db,
        cpu,
        [
            (base, math.nan),
            (base + timedelta(seconds=1), math.inf),
            (base + timedelta(seconds=2), -math.inf),
            (base + timedelta(seconds=3), 1.5),
        ],
    )

    response = client.get(
        "/agents/a1/points",
        params={
            "name": "cpu",
            "start": base.isoformat(),
            "end": (base + timedelta(minutes=1)).isoformat(),
        },
    )

    assert response.status_code == 200
    assert b"NaN" not in response.content and b"Infinity" not in response.content
    assert [value for _, value in response.json()["series"][0]["points"]] == [None, None, None, 1.5]


def test_get_agent_points_start_not_before_end_is_400(
    client: TestClient, db: psycopg.Connection
) -> None:
    add_agent(db, "a1")
    moment = recent_base().isoformat()
    for start, end in [
        (moment, moment),
        (moment, (recent_base() - timedelta(hours=1)).isoformat()),
    ]:
        response = client.get(
            "/agents/a1/points", params={"name": "cpu", "start": start, "end": end}
        )
        assert response.status_code == 400
        detail = response.json()["detail"]
        assert "before" in detail and "\n" not in detail
    # a start in the future with the default end (now) is the same mistake
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert (
        client.get("/agents/a1/points", params={"name": "cpu", "start": future}).status_code == 400
    )
    # an end at the very beginning of time leaves no room for the default hour before it
    response = client.get(
        "/agents/a1/points", params={"name": "cpu", "end": "0001-01-01T00:30:00Z"}
    )
    assert response.status_code == 400


def test_get_agent_points_over_the_limit_is_422(client: TestClient, db: psycopg.Connection) -> None:
    add_agent(db, "a1")
    cpu = add_series(db, "a1", "cpu")
    base = recent_base()
    add_points(db, cpu, [(base + timedelta(seconds=i), float(i)) for i in range(MAX_POINTS + 1)])
    params = {"name": "cpu", "start": base.isoformat()}

    at_limit = client.get(
        "/agents/a1/points",
        params={**params, "end": (base + timedelta(seconds=MAX_POINTS)).isoformat()},
    )
    assert at_limit.status_code == 200
    assert len(at_limit.json()["series"][0]["points"]) == MAX_POINTS

    over = client.get(
        "/agents/a1/points", params={**params, "end": (base + timedelta(minutes=1)).isoformat()}
    )
    assert over.status_code == 422
    assert over.json() == {"detail": f"more than {MAX_POINTS} points in range; narrow start/end"}


def test_get_agent_points_bad_requests(client: TestClient, db: psycopg.Connection) -> None:
    add_agent(db, "a1")
    assert client.get("/agents/a1/points").status_code == 422  # name is required
    assert (
        client.get("/agents/a1/points", params={"name": "cpu", "start": "yesterday"}).status_code
        == 422
    )
    unknown = client.get("/agents/nope/points", params={"name": "cpu"})
    assert unknown.status_code == 404
    assert unknown.json() == {"detail": "agent 'nope' not found"}
    assert client.get("/agents/a1/points", params={"name": "cpu"}).json()["series"] == []


def test_injection_looking_input_is_only_ever_data(
    client: TestClient, db: psycopg.Connection
) -> None:
    add_agent(db, "real")
    cpu = add_series(db, "real", "cpu")
    add_points(db, cpu, [(recent_base(), 1.0)])
    for text in NASTY_STRINGS:
        path = f"/agents/{quote(text, safe='')}"
        for url in (path, f"{path}/series"):
            response = client.get(url)
            assert response.status_code == 404, (text, response.text)
        response = client.get(f"{path}/points", params={"name": "cpu"})
        assert response.status_code == 404, (text, response.text)
        response = client.get("/agents/real/series", params={"name": text})
        assert (response.status_code, response.json()) == (200, []), text
        response = client.get("/agents/real/points", params={"name": text})
        assert response.status_code == 200, (text, response.text)
        assert response.json()["series"] == []
        assert response.json()["name"] == text
    assert [a["agent_id"] for a in client.get("/agents").json()] == ["real"]
    assert db.execute("SELECT count(*) FROM all_points").fetchone() == (1,)


def test_serve_answers_then_exits_cleanly_on_sigterm(database_url: str) -> None:
    port = free_port()
    env = {
        **os.environ,
        "FLEETPULSE_DATABASE_URL": database_url,
        "FLEETPULSE_API_PORT": str(port),
        "FLEETPULSE_API_KEYS": READ_KEY,
    }
    code = "from fleetpulse.api.app import serve; from fleetpulse.settings import Settings; serve(Settings())"
    proc = subprocess.Popen(
        [sys.executable, "-c", code], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the API never answered"
                time.sleep(0.1)
        assert response.json() == {"status": "ok"}
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # uvicorn shuts down gracefully, then re-raises the signal so the exit status reports it
    assert proc.returncode in (0, -signal.SIGTERM), stderr
    assert "Traceback" not in stderr, stderr


ADMIN_KEY = "test-admin-key"


@pytest.fixture
def admin_client(database_url: str) -> Iterator[TestClient]:
    settings = Settings(
        database_url=database_url,
        heartbeat_interval_s=HEARTBEAT_INTERVAL_S,
        api_admin_key=ADMIN_KEY,  # type: ignore[arg-type]  # pydantic makes it a SecretStr
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_agent_config_writes_need_the_admin_key(
    client: TestClient, admin_client: TestClient, db: psycopg.Connection
) -> None:
    add_agent(db, "cfg")
    body = {"collect_interval_s": 30}
    read_only = client.put("/agents/cfg/config", json=body)
    assert read_only.status_code == 403
    assert "FLEETPULSE_API_ADMIN_KEY" in read_only.json()["detail"]
    assert admin_client.put("/agents/cfg/config", json=body).status_code == 401
    wrong = {"authorization": "Bearer not-the-key"}
    assert admin_client.put("/agents/cfg/config", json=body, headers=wrong).status_code == 401
    assert db.execute("SELECT count(*) FROM agent_settings").fetchone() == (0,)


def test_agent_config_put_stores_versions_and_get_shows_what_the_agent_reported(
    admin_client: TestClient, db: psycopg.Connection
) -> None:
    add_agent(db, "cfg")
    auth = {"authorization": f"Bearer {ADMIN_KEY}"}
    fresh = admin_client.get("/agents/cfg/config", headers=auth).json()
    assert fresh["version"] == 0 and fresh["reported_version"] is None
    put = admin_client.put(
        "/agents/cfg/config", json={"collect_interval_s": 30, "collectors": ["cpu"]}, headers=auth
    )
    assert put.status_code == 200, put.text
    assert put.json()["version"] == 1
    assert put.json()["collect_interval_s"] == 30.0
    assert put.json()["heartbeat_interval_s"] is None  # the agent's own file decides
    assert put.json()["in_sync"] is False  # the agent has not answered yet
    # PUT replaces: what is left out goes back to the agent
    second = admin_client.put("/agents/cfg/config", json={"heartbeat_interval_s": 5}, headers=auth)
    assert second.json()["version"] == 2
    assert second.json()["collect_interval_s"] is None and second.json()["collectors"] is None
    assert db.execute(
        "SELECT version, collect_interval_ms, heartbeat_interval_ms, collectors"
        " FROM agent_settings WHERE agent_id = 'cfg'"
    ).fetchone() == (2, None, 5000, None)
    # what a front-end records when the agent answers (SettingsStatus)
    db.execute(
        "UPDATE agents SET settings_version = 2, settings_applied = true,"
        " collect_interval_ms = 10000, heartbeat_interval_ms = 5000, collectors = '{cpu,load}'"
        " WHERE agent_id = 'cfg'"
    )
    shown = admin_client.get("/agents/cfg/config", headers=auth).json()
    assert shown["in_sync"] is True
    assert shown["effective_heartbeat_interval_s"] == 5.0
    assert shown["effective_collectors"] == ["cpu", "load"]
    detail = admin_client.get("/agents/cfg", headers=auth).json()
    assert detail["settings_desired_version"] == 2 and detail["heartbeat_interval_ms"] == 5000


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"collect_interval_s": 0.1}, "collect interval must be between"),
        ({"heartbeat_interval_s": 100_000}, "heartbeat interval must be between"),
        ({"collectors": ["cpu", "nope"]}, "unknown collectors nope"),
        ({"collectors": []}, "name at least one"),
    ],
)
def test_agent_config_put_refuses_bad_settings_with_the_reason(
    admin_client: TestClient, db: psycopg.Connection, body: dict[str, Any], detail: str
) -> None:
    add_agent(db, "cfg")
    auth = {"authorization": f"Bearer {ADMIN_KEY}"}
    response = admin_client.put("/agents/cfg/config", json=body, headers=auth)
    assert response.status_code == 422
    assert detail in response.json()["detail"]
    assert db.execute("SELECT count(*) FROM agent_settings").fetchone() == (0,)


def test_agent_config_of_an_unknown_agent_is_404(admin_client: TestClient) -> None:
    auth = {"authorization": f"Bearer {ADMIN_KEY}"}
    assert admin_client.get("/agents/ghost/config", headers=auth).status_code == 404
    assert admin_client.put("/agents/ghost/config", json={}, headers=auth).status_code == 404


def test_liveness_follows_the_heartbeat_interval_the_agent_reported(
    client: TestClient, db: psycopg.Connection
) -> None:
    # 40 s without a heartbeat: offline by the platform default (3 x 10 s), online for an agent
    # that reported heartbeating every 60 s (remote settings changed it).
    add_agent(db, "slow", heartbeat_age_s=40)
    add_agent(db, "default", heartbeat_age_s=40)
    db.execute("UPDATE agents SET heartbeat_interval_ms = 60000 WHERE agent_id = 'slow'")
    status = {a["agent_id"]: a["status"] for a in client.get("/agents").json()}
    assert status == {"slow": "online", "default": "offline"}


def test_every_path_but_healthz_needs_a_key(database_url: str, db: psycopg.Connection) -> None:
    add_agent(db, "a1")
    settings = Settings(
        database_url=database_url,
        api_keys="k1, k2",  # type: ignore[arg-type]
        api_cors_origins="https://grafana.example",
    )
    with TestClient(create_app(settings)) as anonymous:
        assert anonymous.get("/healthz").status_code == 200
        for path in ("/agents", "/agents/a1", "/agents/a1/series", "/agents/a1/config"):
            response = anonymous.get(path)
            assert response.status_code == 401, path
            assert response.headers["www-authenticate"] == "Bearer"
        wrong = anonymous.get("/agents", headers={"authorization": "Bearer k3"})
        assert wrong.status_code == 401
        assert anonymous.get("/agents", headers={"authorization": "Basic k1"}).status_code == 401
        # Basic auth, as promtool and Grafana send a key given in the URL: the password is the
        # key, whatever the user name; a wrong password or none is refused.
        assert anonymous.get("/agents", auth=("fleetpulse", "k1")).status_code == 200
        assert anonymous.get("/agents", auth=("", "k2")).status_code == 200
        assert anonymous.get("/agents", auth=("k1", "")).status_code == 401
        assert anonymous.get("/agents", auth=("fleetpulse", "k3")).status_code == 401
        for key in ("k1", "k2"):  # either read key
            assert anonymous.get("/agents", headers={"authorization": f"Bearer {key}"}).json()
        anonymous.cookies.set("fleetpulse_key", "k2")  # what the dashboard's login sets
        assert anonymous.get("/agents").status_code == 200
        preflight = anonymous.options(
            "/agents",
            headers={
                "origin": "https://grafana.example",
                "access-control-request-method": "GET",
                "access-control-request-headers": "authorization",
            },
        )
        assert preflight.headers["access-control-allow-origin"] == "https://grafana.example"
        other = anonymous.get("/agents", headers={"origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_the_api_refuses_to_start_without_any_key(database_url: str) -> None:
    with pytest.raises(ConfigError, match="FLEETPULSE_API_KEYS"):
        create_app(Settings(database_url=database_url))

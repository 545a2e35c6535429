"""The Prometheus-compatible API against a real PostgreSQL: PromQL results checked against a
straightforward reference implementation, against the native endpoint, and through promtool."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import psycopg
import pytest
from fastapi.testclient import TestClient

from fleetpulse.api.app import create_app
from fleetpulse.api.promql.storage import forget_horizons
from fleetpulse.settings import Settings
from tests.integration.test_api import READ_AUTH, READ_KEY, add_agent, add_series
from tests.integration.test_prom_api import OWN, OWN_LABELS
from tests.integration.test_query import LAYOUTS, roll_up, write
from tests.processes import free_port

STEP_S = 10


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def client(database_url: str) -> Iterator[TestClient]:
    settings = Settings(database_url=database_url, api_keys=READ_KEY)  # type: ignore[arg-type]
    with TestClient(create_app(settings), headers=READ_AUTH) as test_client:
        yield test_client


@pytest.fixture(params=LAYOUTS)
def data(db: psycopg.Connection, request: pytest.FixtureRequest) -> dict[str, Any]:
    """Two hours ending 3 hours ago (whole hours), every 10 s at :05, :15, ...: CPU gauges per
    mode and a byte counter with a reset, for two agents."""
    rng = np.random.default_rng(11)
    end = (math.floor(time.time() / 3600) - 3) * 3600
    start = end - 2 * 3600
    ts = [float(start + 5 + STEP_S * i) for i in range((end - start) // STEP_S)]
    out: dict[str, Any] = {"start": start, "end": end, "ts": np.array(ts), "series": {}}
    for agent in ("p1", "p2"):
        add_agent(db, agent)
        for mode in ("user", "system"):
            sid = add_series(db, agent, "cpu_usage_percent", f'{{"mode": "{mode}"}}')
            values = np.round(rng.uniform(0, 100, len(ts)), 3)
            write(db, sid, ts, values.tolist())
            out["series"][(agent, "cpu_usage_percent", mode)] = values
        counter = np.cumsum(rng.integers(1000, 5000, len(ts))).astype(float)
        counter[len(ts) // 2 :] -= counter[len(ts) // 2 - 1] - 500  # the host rebooted: a reset
        sid = add_series(db, agent, "net_bytes_total", '{"interface": "eth0", "direction": "rx"}')
        write(db, sid, ts, counter.tolist())
        out["series"][(agent, "net_bytes_total", "rx")] = counter
    roll_up(db, compress=request.param == "compressed")
    return out


def reference_rate(ts: np.ndarray, v: np.ndarray, t: float, r: float, is_rate: bool) -> float:
    """Prometheus 2.x extrapolatedRate for one window (t - r, t], written plainly."""
    mask = (ts > t - r) & (ts <= t)
    s_t, s_v = ts[mask], v[mask]
    if len(s_t) < 2:
        return math.nan
    result = s_v[-1] - s_v[0]
    prev = s_v[0]
    for value in s_v:
        if value < prev:
            result += prev
        prev = value
    to_start, to_end = s_t[0] - (t - r), t - s_t[-1]
    sampled = s_t[-1] - s_t[0]
    average = sampled / (len(s_t) - 1)
    if result > 0 and s_v[0] >= 0:
        to_start = min(to_start, sampled * (s_v[0] / result))
    threshold = average * 1.1
    interval = sampled + (to_start if to_start < threshold else average / 2)
    interval += to_end if to_end < threshold else average / 2
    result *= interval / sampled
    return result / r if is_rate else result


def query_range(client: TestClient, query: str, start: float, end: float, step: float) -> list[Any]:
    response = client.post(
        "/api/v1/query_range",
        data={"query": query, "start": str(start), "end": str(end), "step": str(step)},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "success" and body["data"]["resultType"] == "matrix"
    result: list[Any] = body["data"]["result"]
    return result


@pytest.mark.parametrize("func", ["rate", "increase"])
def test_rate_and_increase_match_prometheus_extrapolation_across_a_reset(
    client: TestClient, data: dict[str, Any], func: str
) -> None:
    start, end = data["start"] + 600, data["end"] - 600
    result = query_range(client, f'{func}(net_bytes_total{{agent_id="p1"}}[2m])', start, end, 30)
    (series,) = result
    assert series["metric"] == {"agent_id": "p1", "interface": "eth0", "direction": "rx"}
    v = data["series"][("p1", "net_bytes_total", "rx")]
    for t, value in series["values"]:
        expected = reference_rate(data["ts"], v, t, 120, func == "rate")
        assert float(value) == pytest.approx(expected, rel=1e-9), t
    assert len(series["values"]) == (end - start) // 30 + 1
    assert all(float(value) >= 0 for _, value in series["values"])  # the reset is corrected


@pytest.mark.parametrize(
    ("func", "reduce"),
    [
        ("avg_over_time", np.mean),
        ("min_over_time", np.min),
        ("max_over_time", np.max),
        ("sum_over_time", np.sum),
        ("count_over_time", len),
        ("last_over_time", lambda v: v[-1]),
    ],
)
def test_over_time_functions(
    client: TestClient, data: dict[str, Any], func: str, reduce: Any
) -> None:
    start, end = data["start"] + 300, data["start"] + 1500
    result = query_range(
        client, f'{func}(cpu_usage_percent{{agent_id="p2",mode="user"}}[95s])', start, end, 20
    )
    (series,) = result
    v, ts = data["series"][("p2", "cpu_usage_percent", "user")], data["ts"]
    for t, value in series["values"]:
        window = v[(ts >= t - 95) & (ts <= t)]  # Prometheus 2.x: both edges included
        assert float(value) == pytest.approx(float(reduce(window)), rel=1e-9)


def test_a_long_coarse_range_answers_as_prometheus(
    client: TestClient, data: dict[str, Any]
) -> None:
    """Seven days at an hour's step (windows on the hour tier's buckets: read from them and the
    points on the windows' ends) and seven hours at a minute's (too short for buckets: raw
    points): every window's average of the raw points, both edges included, not of the tiers'
    one sample per bucket."""
    ts = data["ts"]
    values = data["series"][("p1", "cpu_usage_percent", "user")]
    selector = 'cpu_usage_percent{mode="user",agent_id="p1"}'
    for days, step in ((7, 3600), (7 / 24, 60)):
        start, end = data["end"] - days * 86400, data["end"] + step
        (series,) = query_range(client, f"avg_over_time({selector}[{step}s])", start, end, step)
        got = {float(t): float(v) for t, v in series["values"]}
        want = {}
        for t in np.arange(start, end + 1, step, dtype=float):
            window = values[(ts >= t - step) & (ts <= t)]
            if len(window):
                want[float(t)] = float(window.mean())
        assert got.keys() == want.keys()
        assert all(got[t] == pytest.approx(want[t], rel=1e-12) for t in want), (days, step)


def _drop_raw_before(db: psycopg.Connection, before: float) -> None:
    """What retention does to raw points, here to the hours before ``before`` (compressed
    layout: the horizon is the oldest compressed hour)."""
    db.execute("DELETE FROM sample_chunks WHERE hour < to_timestamp(%s)", (before,))
    forget_horizons()


def test_the_tiers_stand_in_where_raw_points_are_gone(
    client: TestClient, db: psycopg.Connection, data: dict[str, Any]
) -> None:
    """Before the raw horizon, the minute tier's last samples; from it, raw points again."""
    if db.execute("SELECT count(*) FROM sample_chunks").fetchone() == (0,):
        pytest.skip("hot rows: retention drops whole days of them, not hours")
    first_hour = data["start"]
    horizon = first_hour + 3600
    _drop_raw_before(db, horizon)
    ts, values = data["ts"], data["series"][("p1", "cpu_usage_percent", "user")]
    minute_last = ts[np.r_[np.diff(ts // 60) > 0, True]]  # each minute's last sample time
    start, end = data["end"] - 7 * 3600, data["end"]
    selector = 'cpu_usage_percent{mode="user",agent_id="p1"}'
    (series,) = query_range(client, f"avg_over_time({selector}[5m])", start, end, 60)
    got = {float(t): float(v) for t, v in series["values"]}
    for t in np.arange(first_hour + 300, end + 1, 60.0):
        if t - 300 < horizon:  # windows before the horizon: the minutes' last samples only
            stamps = minute_last[(minute_last >= t - 300) & (minute_last <= t)]
            window = values[np.isin(ts, stamps) & (ts < horizon)]
            window = np.r_[window, values[(ts >= horizon) & (ts <= t)]]
        else:
            window = values[(ts >= t - 300) & (ts <= t)]
        assert got[float(t)] == pytest.approx(float(window.mean()), rel=1e-12), t


def test_the_minute_tier_falls_back_to_the_hour_tier_where_its_minutes_are_gone(
    client: TestClient, db: psycopg.Connection, data: dict[str, Any]
) -> None:
    """The minute tier is kept for less time than the hour tier, and both longer than raw
    points: where raw points and minutes are gone, the hour tier's sample (the hour's last, at
    its time) stands in, seen through a lookback widened by two minutes."""
    if db.execute("SELECT count(*) FROM sample_chunks").fetchone() == (0,):
        pytest.skip("hot rows: retention drops whole days of them, not hours")
    first_hour = data["start"]
    _drop_raw_before(db, first_hour + 3600)
    db.execute("DELETE FROM set_rollup_1m WHERE bucket < to_timestamp(%s)", (first_hour + 3600,))
    db.execute("DELETE FROM minute_chunks WHERE hour < to_timestamp(%s)", (first_hour + 3600,))
    start, end = data["end"] - 7 * 3600, data["end"]
    selector = 'cpu_usage_percent{mode="user",agent_id="p1"}'
    (series,) = query_range(client, selector, start, end, 60)
    got = {float(t): float(v) for t, v in series["values"]}
    ts, values = data["ts"], data["series"][("p1", "cpu_usage_percent", "user")]
    last_of_first_hour = float(values[ts < first_hour + 3600][-1])
    assert got[float(first_hour + 3600)] == last_of_first_hour
    assert not [t for t in got if t < first_hour + 3600 - 60]  # no minutes inside that hour
    # from the horizon on, raw points: the newest sample within 5 minutes
    for t in np.arange(first_hour + 3660, end + 1, 60.0):
        assert got[float(t)] == float(values[ts <= t][-1]), t


def test_max_source_resolution_lets_a_query_read_the_tiers_within_the_raw_retention(
    client: TestClient, data: dict[str, Any]
) -> None:
    """Thanos' parameter: ``1m`` (or ``auto`` at a step of 5 minutes) reads the minute tier's
    last samples where raw points are stored too, a downsampling; the default reads raw points."""
    ts, values = data["ts"], data["series"][("p1", "cpu_usage_percent", "user")]
    minute_last = np.r_[np.diff(ts // 60) > 0, True]
    start, end = data["end"] - 7 * 3600, data["end"]
    query = 'avg_over_time(cpu_usage_percent{mode="user",agent_id="p1"}[5m])'
    for resolution, step in (("1m", 60), ("auto", 300), ("0s", 60)):
        response = client.get(
            "/api/v1/query_range",
            params={"query": query, "start": start, "end": end, "step": step}
            | {"max_source_resolution": resolution},
        )
        assert response.status_code == 200, response.text
        (series,) = response.json()["data"]["result"]
        got = {float(t): float(v) for t, v in series["values"]}
        for t in np.arange(data["start"] + 300, end + 1, step, dtype=float):
            in_window = (ts >= t - 300) & (ts <= t)
            window = values[in_window & minute_last] if resolution != "0s" else values[in_window]
            assert got[t] == pytest.approx(float(window.mean()), rel=1e-12), (resolution, t)


def test_max_source_resolution_refuses_what_is_not_a_resolution(client: TestClient) -> None:
    response = client.get(
        "/api/v1/query",
        params={"query": "cpu_usage_percent", "max_source_resolution": "fine"},
    )
    assert response.status_code == 400
    assert response.json()["errorType"] == "bad_data"
    assert "max_source_resolution" in response.json()["error"]


def test_aggregations_topk_and_arithmetic(client: TestClient, data: dict[str, Any]) -> None:
    t0 = data["start"] + 900
    ts, series = data["ts"], data["series"]

    def at(agent: str, mode: str) -> float:
        v = series[(agent, "cpu_usage_percent", mode)]
        return float(v[(ts <= t0) & (ts > t0 - 300)][-1])  # instant selector: newest of 5 min

    def instant(query: str) -> list[Any]:
        body = client.get("/api/v1/query", params={"query": query, "time": str(t0)}).json()
        assert body["status"] == "success", body
        return sorted(body["data"]["result"], key=lambda r: sorted(r["metric"].items()))

    got = instant("sum by (agent_id) (cpu_usage_percent)")
    assert [(r["metric"], float(r["value"][1])) for r in got] == [
        ({"agent_id": a}, pytest.approx(at(a, "user") + at(a, "system"))) for a in ("p1", "p2")
    ]
    (avg,) = instant('avg(cpu_usage_percent{mode="user"})')
    assert avg["metric"] == {} and float(avg["value"][1]) == pytest.approx(
        (at("p1", "user") + at("p2", "user")) / 2
    )
    got = instant("max without (agent_id) (cpu_usage_percent)")
    assert [r["metric"] for r in got] == [
        {"mode": "system"},
        {"mode": "user"},
    ]
    assert float(instant("count(cpu_usage_percent)")[0]["value"][1]) == 4
    top = instant("topk(1, cpu_usage_percent)")
    best = max((at(a, m), a, m) for a in ("p1", "p2") for m in ("user", "system"))
    assert [(r["metric"]["agent_id"], r["metric"]["mode"]) for r in top] == [(best[1], best[2])]
    assert top[0]["metric"]["__name__"] == "cpu_usage_percent"
    bottom = instant("bottomk(2, cpu_usage_percent)")
    assert len(bottom) == 2
    (scaled,) = instant('cpu_usage_percent{agent_id="p1",mode="user"} / 100 * 2 - 1')
    assert "__name__" not in scaled["metric"]
    assert float(scaled["value"][1]) == pytest.approx(at("p1", "user") / 50 - 1)
    body = client.get("/api/v1/query", params={"query": "1 / 0", "time": str(t0)}).json()
    assert body["data"] == {"resultType": "scalar", "result": [t0, "+Inf"]}


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("", "no expression found"),
        ("rate(cpu_usage_percent)", "expected type"),
        ('cpu_usage_percent{mode=~"("}', "regex"),
        ("cpu_usage_percent{", "parse error"),
        ('{__name__=~".*"}', "at least one non-empty matcher"),
        ("no_such_function(cpu_usage_percent)", "unknown function"),
        ("sort_by_label(cpu_usage_percent)", "unknown function"),  # newer than 2.42
        ("1 == 1", "BOOL"),
        ("cpu_usage_percent[5m]", "range vector"),  # fine for an instant query, not a range
    ],
)
def test_errors_in_prometheus_format(
    client: TestClient, data: dict[str, Any], query: str, message: str
) -> None:
    response = client.get(
        "/api/v1/query_range",
        params={"query": query, "start": str(data["start"]), "end": str(data["end"]), "step": "60"},
    )
    assert response.status_code == 400
    body = response.json()
    assert body["status"] == "error" and body["errorType"] == "bad_data"
    assert message in body["error"]


def test_range_limits_and_bad_parameters(client: TestClient) -> None:
    for params, message in (
        (
            {"query": "up", "start": "0", "end": "100000", "step": "1"},
            "exceeded maximum resolution",
        ),
        ({"query": "up", "start": "10", "end": "0", "step": "1"}, "must not be before"),
        (
            {"query": "up", "start": "x", "end": "0", "step": "1"},
            "neither Unix seconds nor RFC 3339",
        ),
        ({"query": "up", "end": "0", "step": "1"}, "missing parameter 'start'"),
    ):
        body = client.get("/api/v1/query_range", params=params).json()
        assert body["errorType"] == "bad_data" and message in body["error"], params


def test_metadata_endpoints(client: TestClient, data: dict[str, Any]) -> None:
    assert client.get("/api/v1/labels").json()["data"] == sorted(
        ["__name__", "agent_id", "direction", "interface", "mode", *OWN_LABELS]
    )
    values = client.get("/api/v1/label/__name__/values").json()["data"]
    assert values == sorted(["cpu_usage_percent", "net_bytes_total", *OWN])
    assert client.get("/api/v1/label/mode/values").json()["data"] == ["system", "user"]
    assert client.get("/api/v1/label/agent_id/values").json()["data"] == ["p1", "p2"]
    assert client.get("/api/v1/label/nope/values").json()["data"] == []
    found = client.post(
        "/api/v1/series", data={"match[]": 'net_bytes_total{agent_id=~"p2|p3"}'}
    ).json()
    assert found["data"] == [
        {"__name__": "net_bytes_total", "agent_id": "p2", "interface": "eth0", "direction": "rx"}
    ]
    only = client.get("/api/v1/labels", params={"match[]": "net_bytes_total"}).json()["data"]
    assert only == ["__name__", "agent_id", "direction", "interface"]
    assert client.get("/api/v1/series").json()["errorType"] == "bad_data"


def test_nan_is_spelled_as_prometheus_does(client: TestClient, db: psycopg.Connection) -> None:
    add_agent(db, "n")
    sid = add_series(db, "n", "odd")
    now = time.time()
    write(db, sid, [now - 30, now - 20, now - 10], [math.nan, math.inf, -math.inf])
    result = query_range(client, "odd", now - 25, now, 10)
    assert [v for _, v in result[0]["values"]] == ["NaN", "+Inf", "-Inf"]


@pytest.mark.skipif(
    shutil.which("promtool") is None and not os.environ.get("CI"),
    reason="promtool (Debian's prometheus) is not installed",
)
def test_promtool_query_range_returns_what_the_native_endpoint_returns(
    database_url: str, data: dict[str, Any], tmp_path: Any
) -> None:
    """A real Prometheus client against a real API process: promtool's values for
    `AGG by (agent_id) (AGG_over_time(m[1m]))` equal the native endpoint's for agg=AGG, step 60
    (the native window [t, t+60) is PromQL's (t, t+60] at t+60; no sample sits on a minute)."""
    port = free_port()
    env = {
        **os.environ,
        "FLEETPULSE_DATABASE_URL": database_url,
        "FLEETPULSE_API_PORT": str(port),
        "FLEETPULSE_API_KEYS": READ_KEY,
    }
    log = (tmp_path / "api.log").open("wb")
    api = subprocess.Popen(
        [sys.executable, "-m", "fleetpulse", "api"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert api.poll() is None and time.monotonic() < deadline, "the API did not start"
            time.sleep(0.1)
        start, end = data["start"], data["start"] + 3600
        for agg in ("max", "min", "avg"):
            promql = f'{agg} by (agent_id) ({agg}_over_time(cpu_usage_percent{{mode="user"}}[1m]))'
            done = subprocess.run(
                [
                    "promtool",
                    "query",
                    "range",
                    "-o",
                    "json",
                    f"--header=Authorization=Bearer {READ_KEY}",
                    f"--start={start + 60}",
                    f"--end={end}",
                    "--step=1m",
                    base,
                    promql,
                ],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert done.returncode == 0, done.stderr
            from_promtool = {
                r["metric"]["agent_id"]: {float(t) - 60: float(v) for t, v in r["values"]}
                for r in json.loads(done.stdout)
            }
            native = httpx.get(
                f"{base}/query/range",
                params={
                    "metric": "cpu_usage_percent",
                    "match": "mode=user",
                    "agg": agg,
                    "by": "agent_id",
                    "step": "60",
                    "start": str(start),
                    "end": str(end),
                },
                headers=READ_AUTH,
            ).json()
            assert (
                native["tier"] == "1m"
            )  # the native side reads the rollups, PromQL the raw points
            from_native = {
                s["labels"]["agent_id"]: dict(map(tuple, s["points"])) for s in native["series"]
            }
            assert from_promtool.keys() == from_native.keys() == {"p1", "p2"}
            for agent, points in from_native.items():
                assert len(points) == 60
                assert from_promtool[agent].keys() == points.keys()
                for t, value in points.items():
                    assert from_promtool[agent][t] == pytest.approx(value, rel=1e-12), (
                        agg,
                        agent,
                        t,
                    )
    finally:
        api.terminate()
        api.wait(15)
        log.close()

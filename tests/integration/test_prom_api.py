"""The Prometheus HTTP API besides queries, against a real PostgreSQL: what Grafana asks before it
shows anything (buildinfo, metadata, exemplars, rules, alerts, format_query), series and labels
with any selector, every error under /api/v1 in Prometheus' format, and promtool authenticating
with HTTP basic auth in the URL against a real API process. The expected answers are what a real
Prometheus 2.42 answers to the same requests (messages included, where fleetpulse makes the same
check); docs/api.md lists where fleetpulse differs on purpose."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient

from fleetpulse import __version__
from fleetpulse.api import prom
from fleetpulse.api.app import create_app
from fleetpulse.api.promql import fleetseries
from fleetpulse.settings import Settings
from tests.integration.test_api import READ_AUTH, READ_KEY, add_agent, add_series
from tests.integration.test_query import write
from tests.processes import fleetpulse_process, free_port

EMPTY = "match[] must contain at least one non-empty matcher"


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def client(database_url: str) -> Iterator[TestClient]:
    settings = Settings(database_url=database_url, api_keys=READ_KEY)  # type: ignore[arg-type]
    with TestClient(create_app(settings), headers=READ_AUTH) as test_client:
        yield test_client


def seed(db: psycopg.Connection) -> float:
    """Two agents: CPU per mode on both, a byte counter on a1, load and a histogram bucket on
    a2; one sample each, 30 s ago (what it returns)."""
    at = time.time() - 30
    series = [
        ("a1", "cpu_usage_percent", '{"mode": "user"}', 12.5),
        ("a1", "cpu_usage_percent", '{"mode": "system"}', 3.0),
        ("a1", "net_bytes_total", '{"interface": "eth0", "direction": "rx"}', 1e6),
        ("a2", "cpu_usage_percent", '{"mode": "user"}', 40.0),
        ("a2", "load1", "{}", 0.5),
        ("a2", "request_seconds_bucket", '{"le": "0.1"}', 7.0),
    ]
    for agent in ("a1", "a2"):
        add_agent(db, agent)
    for agent, name, labels, value in series:
        write(db, add_series(db, agent, name, labels), [at], [value])
    return at


@pytest.fixture
def fleet(db: psycopg.Connection) -> float:
    return seed(db)


def ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["status"] == "success", body
    return body["data"]


def refused(response: httpx.Response, status: int = 400, kind: str = "bad_data") -> str:
    """The reason of a refusal in Prometheus' format (and nothing else in the body)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body.keys() == {"status", "errorType", "error"}, body
    assert body["status"] == "error" and body["errorType"] == kind, body
    reason: str = body["error"]
    assert len(reason.splitlines()) == 1, reason
    return reason


# -- what Grafana asks first -------------------------------------------------------------------


def test_buildinfo_answers_as_prometheus_2_42(client: TestClient) -> None:
    assert ok(client.get("/api/v1/status/buildinfo")) == {
        "version": "2.42.0",
        "revision": f"fleetpulse {__version__}",
        "branch": "",
        "buildUser": "",
        "buildDate": "",
        "goVersion": "",
    }
    refused(client.post("/api/v1/status/buildinfo"), 405, "method_not_allowed")


def test_metadata_types_metrics_by_their_names(client: TestClient, fleet: float) -> None:
    gauge, counter = (
        [{"type": "gauge", "help": "", "unit": ""}],
        [{"type": "counter", "help": "", "unit": ""}],
    )
    everything = {
        "cpu_usage_percent": gauge,
        "load1": gauge,
        "net_bytes_total": counter,
        "request_seconds_bucket": counter,
    } | {  # the platform's own series of each agent (api/promql/fleetseries.py)
        name: [{"type": "gauge", "help": text, "unit": ""}]
        for name, text in fleetseries.HELP.items()
    }
    assert ok(client.get("/api/v1/metadata")) == everything
    assert ok(client.get("/api/v1/metadata", params={"limit": "-1"})) == everything
    assert ok(client.get("/api/v1/metadata", params={"limit": "0"})) == {}
    assert ok(client.get("/api/v1/metadata", params={"limit": "+2"})) == {
        "cpu_usage_percent": gauge,
        "fleetpulse_agent_info": everything["fleetpulse_agent_info"],
    }
    one = ok(client.get("/api/v1/metadata", params={"metric": "net_bytes_total"}))
    assert one == {"net_bytes_total": counter}
    for metric in ("nope", "a\x00b", "cpu_usage"):
        assert ok(client.get("/api/v1/metadata", params={"metric": metric})) == {}
    for limit in ("x", "1.5", " 1", "1_0", "9" * 20, "\u0661"):  # Go's Atoi takes none of them
        reason = refused(client.get("/api/v1/metadata", params={"limit": limit}))
        assert reason == "limit must be a number", limit
    refused(client.post("/api/v1/metadata"), 405, "method_not_allowed")


def test_query_exemplars_are_none_and_their_parameters_are_checked(client: TestClient) -> None:
    for method in ("GET", "POST"):
        params = {"query": 'sum by (mode) (rate(cpu_usage_percent{agent_id="a1"}[5m]))'}
        if method == "GET":
            assert ok(client.get("/api/v1/query_exemplars", params=params)) == []
        else:
            assert ok(client.post("/api/v1/query_exemplars", data=params)) == []
    # no selector in the query: Prometheus answers 204, without a body
    for query in ("1", "time()"):
        answer = client.get("/api/v1/query_exemplars", params={"query": query})
        assert answer.status_code == 204 and answer.content == b""
    q = {"query": "up"}
    for params, reason in (
        ({}, "parse error: no expression found in input"),
        ({"query": "sum(up"}, "parse error"),
        ({"query": '{__name__=~".*"}'}, "vector selector must contain at least one non-empty"),
        (
            {**q, "start": "x"},
            "invalid parameter \"start\": Invalid time value for 'start': "
            'cannot parse "x" to a valid timestamp',
        ),
        (
            {**q, "end": "2023-13-01T00:00:00Z"},
            "invalid parameter \"end\": Invalid time value for 'end': "
            'cannot parse "2023-13-01T00:00:00Z" to a valid timestamp',
        ),
        ({**q, "start": "10", "end": "5"}, "end timestamp must not be before start timestamp"),
    ):
        assert reason in refused(client.get("/api/v1/query_exemplars", params=params)), params
    assert ok(client.get("/api/v1/query_exemplars", params={**q, "start": "5", "end": "5"})) == []


def test_format_query_writes_the_query_as_prometheus_does(client: TestClient) -> None:
    query = "sum(rate(up[5m]))by(job)"
    assert ok(client.get("/api/v1/format_query", params={"query": query})) == (
        "sum by (job) (rate(up[5m]))"
    )
    assert ok(client.post("/api/v1/format_query", data={"query": "up offset 5m @ 100"})) == (
        "up @ 100.000 offset 5m"
    )
    # long enough to be split over lines: what Prometheus 2.42's /format_query answered
    long = (
        "histogram_quantile(0.9, sum by (le, job) (rate(request_seconds_bucket"
        '{handler="/api/v1/query", code=~"2.."}[5m]))) > 0.5 and on(job) up == 1'
    )
    assert ok(client.get("/api/v1/format_query", params={"query": long})).splitlines() == [
        "    histogram_quantile(",
        "      0.9,",
        '      sum by (le, job) (rate(request_seconds_bucket{code=~"2..",handler="/api/v1/query"}[5m]))',
        "    )",
        "  >",
        "    0.5",
        "and on (job)",
        "  up == 1",
    ]
    for params, reason in (
        ({}, 'invalid parameter "query": parse error: no expression found in input'),
        ({"query": "sum(up"}, 'invalid parameter "query": parse error'),
        ({"query": "sort_by_label(up)"}, "unknown function"),  # newer than 2.42
    ):
        assert reason in refused(client.get("/api/v1/format_query", params=params)), params


def test_rules_and_alerts_in_prometheus_shapes_before_any_evaluation(client: TestClient) -> None:
    # The built-in fleet rules are in force (api/rules/fleet.yml); nothing evaluated them here.
    groups = ok(client.get("/api/v1/rules"))["groups"]
    assert [g["name"] for g in groups] == ["fleet-agents", "fleet-hosts", "fleet-platform"]
    offline = groups[0]["rules"][0]
    assert (offline["name"], offline["type"], offline["health"], offline["state"]) == (
        "AgentOffline",
        "alerting",
        "unknown",
        "inactive",
    )
    assert offline["lastEvaluation"] == "0001-01-01T00:00:00Z" and offline["alerts"] == []
    for kind in ("alert", "ALERT", ""):
        assert ok(client.get("/api/v1/rules", params={"type": kind}))["groups"] == groups
    assert ok(client.get("/api/v1/rules", params={"type": "record"})) == {"groups": []}
    named = ok(client.get("/api/v1/rules", params={"rule_name[]": "FilesystemAlmostFull"}))
    assert [g["name"] for g in named["groups"]] == ["fleet-hosts"]
    reason = refused(client.get("/api/v1/rules", params={"type": "foo"}))
    assert reason == 'invalid parameter "type": not supported value "foo"'
    assert ok(client.get("/api/v1/alerts")) == {"alerts": []}
    for path in ("/api/v1/rules", "/api/v1/alerts"):
        refused(client.post(path), 405, "method_not_allowed")


# -- series and labels, with any selector ------------------------------------------------------


# The platform's own series of each agent (api/promql/fleetseries.py) and the labels they add.
OWN = sorted(fleetseries.HELP)
OWN_LABELS = ["arch", "hostname", "ip", "os", "state", "version"]


def stored(found: list[dict[str, str]]) -> list[dict[str, str]]:
    """The series of a listing that agents sent (not the platform's own of each agent)."""
    return [s for s in found if s["__name__"] not in OWN]


def series(client: TestClient, method: str, *selectors: str, **extra: str) -> httpx.Response:
    params: dict[str, Any] = {"match[]": list(selectors), **extra}
    if method == "GET":
        return client.get("/api/v1/series", params=params)
    return client.post("/api/v1/series", data=params)


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_series_of_any_selector_with_or_without_a_metric_name(
    client: TestClient, fleet: float, method: str
) -> None:
    a2 = [
        {"__name__": "cpu_usage_percent", "agent_id": "a2", "mode": "user"},
        {"__name__": "load1", "agent_id": "a2"},
        {"__name__": "request_seconds_bucket", "agent_id": "a2", "le": "0.1"},
    ]
    # what Grafana's variable queries send: no metric name
    everything = ok(series(client, method, '{agent_id="a2"}'))
    assert stored(everything) == a2
    # and the platform's own series of the agent: up, info and one per liveness state
    assert sorted(s["__name__"] for s in everything if s["__name__"] in OWN) == [
        "fleetpulse_agent_info",
        *["fleetpulse_agent_state"] * 4,
        "fleetpulse_agent_up",
    ]
    answer = ok(series(client, method, '{agent_id=~"a2|zz"}', start="0", end=str(time.time())))
    assert stored(answer) == a2
    user = ok(series(client, method, '{mode="user"}'))
    assert [s["agent_id"] for s in user] == ["a1", "a2"]
    # several selectors: their union, each series once, sorted by label set as Prometheus does
    union = ok(series(client, method, "load1", '{mode="user"}', '{agent_id="a2",mode=~"u.*"}'))
    assert union == [
        {"__name__": "cpu_usage_percent", "agent_id": "a1", "mode": "user"},
        {"__name__": "cpu_usage_percent", "agent_id": "a2", "mode": "user"},
        {"__name__": "load1", "agent_id": "a2"},
    ]
    assert ok(series(client, method, '{__name__=~"net_.*",direction!="tx"}')) == [
        {"__name__": "net_bytes_total", "agent_id": "a1", "interface": "eth0", "direction": "rx"}
    ]
    # a label a series does not have matches "" (Prometheus: an absent label is empty)
    assert len(ok(series(client, method, '{__name__="load1",mode=""}'))) == 1
    assert ok(series(client, method, '{agent_id="nope"}')) == []
    assert ok(series(client, method, '{mode="a\\x00b"}')) == []


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_series_refuses_as_prometheus_does(client: TestClient, fleet: float, method: str) -> None:
    param = 'invalid parameter "match[]": '
    assert refused(series(client, method)) == "no match[] parameter provided"
    for selector in ('{__name__=~".*"}', "{}", '{mode=""}', '{mode=~".*",agent_id!~".+"}'):
        assert refused(series(client, method, selector)) == param + EMPTY, selector
    for selector in ("up[5m]", "sum(up)", "1", "up{", ""):
        assert refused(series(client, method, selector)).startswith(param + "parse error")
    # one bad selector among good ones refuses the request
    assert refused(series(client, method, "load1", "{}")) == param + EMPTY
    reason = refused(series(client, method, "load1", start="yesterday"))
    assert reason == (
        "invalid parameter \"start\": Invalid time value for 'start': "
        'cannot parse "yesterday" to a valid timestamp'
    )
    assert refused(series(client, method, "load1", end="1e99")).startswith(
        'invalid parameter "end": '
    )
    # start after end is no error (Prometheus answers what it has; so does fleetpulse)
    assert len(ok(series(client, method, "load1", start="20", end="10"))) == 1


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_label_names_of_any_selector(client: TestClient, fleet: float, method: str) -> None:
    def names(**params: Any) -> Any:
        if method == "GET":
            return client.get("/api/v1/labels", params=params)
        return client.post("/api/v1/labels", data=params)

    assert ok(names()) == sorted(
        ["__name__", "agent_id", "direction", "interface", "le", "mode", *OWN_LABELS]
    )
    assert ok(names(**{"match[]": '{agent_id="a2"}'})) == sorted(
        ["__name__", "agent_id", "le", "mode", *OWN_LABELS]
    )
    assert ok(names(**{"match[]": ["load1", "net_bytes_total"]})) == [
        "__name__",
        "agent_id",
        "direction",
        "interface",
    ]
    assert ok(names(**{"match[]": "nothing_here"})) == []
    assert ok(names(start="2023-01-01T00:00:00.123456789Z", end=str(time.time()))) != []
    assert refused(names(**{"match[]": '{__name__=~".*"}'})) == EMPTY  # no "invalid parameter"
    assert refused(names(**{"match[]": "up{"})).startswith("parse error")
    assert refused(names(start="x")).startswith('invalid parameter "start"')


def test_label_values_of_any_selector(client: TestClient, fleet: float) -> None:
    def values(name: str, *selectors: str, **extra: str) -> httpx.Response:
        return client.get(f"/api/v1/label/{name}/values", params={"match[]": selectors, **extra})

    assert ok(values("agent_id")) == ["a1", "a2"]
    assert ok(values("agent_id", '{mode="system"}')) == ["a1"]
    assert ok(values("__name__", '{agent_id="a2"}')) == sorted(
        ["cpu_usage_percent", "load1", "request_seconds_bucket", *OWN]
    )
    assert ok(values("__name__", '{agent_id="a1",__name__=~"cpu.*|net.*"}')) == [
        "cpu_usage_percent",
        "net_bytes_total",
    ]
    assert ok(values("mode")) == ["system", "user"]
    assert ok(values("mode", '{agent_id="a2"}', "net_bytes_total")) == ["user"]
    assert ok(values("nope")) == []
    assert ok(values("mode", start="1", end="2")) == ["system", "user"]
    assert refused(values("mode", '{__name__=~".*"}')) == EMPTY
    assert refused(values("mode", "up[5m]")).startswith("parse error")
    assert refused(values("mode", end="x")).startswith('invalid parameter "end"')
    for name in ("foo bar", "1x", "ü", "a-b"):
        assert refused(values(name)) == f'invalid label name: "{name}"'
    # GET only, as in Prometheus
    refused(client.post("/api/v1/label/mode/values"), 405, "method_not_allowed")


def test_a_bad_regular_expression_is_bad_data(client: TestClient, fleet: float) -> None:
    # the parser takes it (Go's and Rust's syntax) but PostgreSQL's regular expressions refuse it
    selector = '{mode=~"\\\\pL"}'
    for response in (
        series(client, "GET", selector),
        client.get("/api/v1/labels", params={"match[]": selector}),
        client.get("/api/v1/label/mode/values", params={"match[]": selector}),
    ):
        assert refused(response).startswith("invalid regular expression: "), response.text


def test_long_lists_are_cut_with_a_warning(
    client: TestClient, fleet: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prom, "MAX_SERIES_LISTED", 2)
    monkeypatch.setattr(prom, "MAX_VALUES_LISTED", 2)
    body = client.get("/api/v1/series", params={"match[]": '{__name__=~".+"}'}).json()
    assert len(body["data"]) == 2 and body["warnings"] == [
        "only the first 2 results are listed: narrow match[]"
    ]
    body = client.get("/api/v1/label/__name__/values").json()
    assert body["data"] == ["cpu_usage_percent", "fleetpulse_agent_info"]
    assert len(body["warnings"]) == 1
    assert len(client.get("/api/v1/labels").json()["warnings"]) == 1
    assert len(client.get("/api/v1/metadata").json()["warnings"]) == 1
    # a limit the client asked for is no cut to warn about
    assert "warnings" not in client.get("/api/v1/metadata", params={"limit": "1"}).json()
    assert "warnings" not in client.get("/api/v1/label/agent_id/values").json()


# -- errors FastAPI answers itself, and keys ---------------------------------------------------


def test_every_error_under_api_v1_is_in_prometheus_format(client: TestClient) -> None:
    for path in ("/api/v1/nope", "/api/v1/", "/api/v1", "/api/v1/status/nope", "/api/v1/label/x"):
        refused(client.get(path), 404, "not_found")
    answer = client.put("/api/v1/query", params={"query": "1"})
    refused(answer, 405, "method_not_allowed")
    assert answer.headers["allow"] == "GET, POST"  # Starlette alone names one of the two
    refused(client.delete("/api/v1/series"), 405, "method_not_allowed")
    # outside /api/v1, FastAPI's own format stays
    missing = client.get("/nope")
    assert missing.status_code == 404 and missing.json() == {"detail": "Not Found"}
    assert client.put("/healthz").json() == {"detail": "Method Not Allowed"}


def test_missing_or_wrong_keys_are_refused_in_prometheus_format(
    database_url: str, fleet: float
) -> None:
    settings = Settings(database_url=database_url, api_keys=READ_KEY)  # type: ignore[arg-type]
    with TestClient(create_app(settings)) as anonymous:
        for auth in (None, ("promtool", "wrong"), (READ_KEY, "")):
            answer = anonymous.get("/api/v1/labels", auth=auth)
            reason = refused(answer, 401, "unauthorized")
            assert "basic auth" in reason and answer.headers["www-authenticate"] == "Bearer"
        wrong = anonymous.get("/api/v1/labels", headers={"authorization": "Bearer nope"})
        refused(wrong, 401, "unauthorized")
        # the key as the basic-auth password, whatever the user name (promtool's URL), or bearer
        for auth in (("promtool", READ_KEY), ("", READ_KEY)):
            assert "mode" in ok(anonymous.get("/api/v1/labels", auth=auth))
        assert ok(anonymous.get("/api/v1/status/buildinfo", headers=READ_AUTH))
        # outside /api/v1, FastAPI's own format stays
        assert anonymous.get("/agents").json().keys() == {"detail"}


def test_validation_errors_and_bugs_under_api_v1_are_in_prometheus_format(
    database_url: str,
) -> None:
    """No /api/v1 endpoint lets FastAPI validate its parameters or fails today; an endpoint that
    will is answered in Prometheus' format all the same."""
    settings = Settings(database_url=database_url, api_keys=READ_KEY)  # type: ignore[arg-type]
    app = create_app(settings)

    @app.get("/api/v1/typed")
    async def typed(n: int) -> int:
        return n

    @app.get("/api/v1/broken")
    async def broken() -> None:
        raise RuntimeError("a bug\nwith two lines")

    @app.get("/typed")
    async def typed_elsewhere(n: int) -> int:
        return n

    with TestClient(app, headers=READ_AUTH, raise_server_exceptions=False) as client:
        reason = refused(client.get("/api/v1/typed", params={"n": "x"}))
        assert reason.startswith('invalid parameter "n": ')
        assert refused(client.get("/api/v1/broken"), 500, "internal") == "RuntimeError: a bug"
        assert client.get("/typed", params={"n": "x"}).status_code == 422
        assert "detail" in client.get("/typed", params={"n": "x"}).json()


# -- promtool, a real Prometheus client --------------------------------------------------------


@pytest.mark.skipif(
    shutil.which("promtool") is None and not os.environ.get("CI"),
    reason="promtool (Debian's prometheus) is not installed",
)
def test_promtool_queries_with_the_key_in_the_url(
    database_url: str, db: psycopg.Connection, tmp_path: Path
) -> None:
    """Debian's promtool 2.42 has --header only on `query range`; `query labels`, `query series`
    and `query instant` send the credentials given in the URL as HTTP basic auth."""
    at = seed(db)
    port = free_port()
    env = {
        "FLEETPULSE_DATABASE_URL": database_url,
        "FLEETPULSE_API_PORT": str(port),
        "FLEETPULSE_API_KEYS": READ_KEY,
    }
    with fleetpulse_process(["api"], env, tmp_path / "api.log") as api:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert api.poll() is None and time.monotonic() < deadline, "the API did not start"
            time.sleep(0.1)

        def promtool(*args: str, key: str = READ_KEY) -> subprocess.CompletedProcess[str]:
            server = f"http://promtool:{key}@127.0.0.1:{port}"
            command, rest = args[0], args[1:]
            return subprocess.run(
                ["promtool", "query", command, "-o", "json", server, *rest],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )

        done = promtool("labels", "mode")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == ["system", "user"]

        done = promtool("series", "--match", '{agent_id="a2",__name__!~"load1|fleetpulse_.*"}')
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == [
            {"__name__": "cpu_usage_percent", "agent_id": "a2", "mode": "user"},
            {"__name__": "request_seconds_bucket", "agent_id": "a2", "le": "0.1"},
        ]

        done = promtool("instant", 'cpu_usage_percent{mode="user"}')
        assert done.returncode == 0, done.stderr
        vector = json.loads(done.stdout)
        assert {r["metric"]["agent_id"]: float(r["value"][1]) for r in vector} == {
            "a1": 12.5,
            "a2": 40.0,
        }
        assert all(r["metric"]["__name__"] == "cpu_usage_percent" for r in vector)
        assert all(0 <= float(r["value"][0]) - at < 120 for r in vector)

        # the default output, as a person reads it
        done = subprocess.run(
            [
                "promtool",
                "query",
                "labels",
                f"http://promtool:{READ_KEY}@127.0.0.1:{port}",
                "agent_id",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0 and done.stdout.split() == ["a1", "a2"], done.stderr

        wrong = promtool("labels", "mode", key="wrong")
        assert wrong.returncode != 0 and "401" in wrong.stderr

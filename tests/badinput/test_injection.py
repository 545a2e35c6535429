"""SQL-looking strings are data, everywhere (docs/architecture.md, "SQL": every statement is a
constant with bind parameters).

An agent sends them through a real front-end (as its id, hostname, label values; as label and
metric names, which the naming rules reject and count), the worker code stores them, and then every
filter and query parameter of a real `fleetpulse api` process gets them: the answer is a 4xx or
the correct result (the series whose label value *is* that string, or nothing), never a 5xx, and
afterwards every table is still there with the same number of rows.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import psycopg
import pytest

from fleetpulse.ingest.worker.consumer import Worker
from fleetpulse.ingest.worker.validate import series_problem
from tests.badinput.conftest import READ_KEY, Api, assert_delivered
from tests.badinput.test_points import columns, row_point, rows, send_accepted, series_def
from tests.integration.test_edge import Edge

pytestmark = pytest.mark.integration

HOSTILE = [
    "'; DROP TABLE points; --",
    '" OR 1=1 --',
    "' OR '1'='1",
    "') OR ('1'='1",
    "$$",
    "$$; DROP TABLE series; $$",
    "$tag$ x $tag$",
    "\\",
    "\\'",
    "\\\\'; DROP TABLE agents; --",
    "''",
    "%",
    "_",
    "%s",
    "%(agent_id)s",
    "{}",
    ":name",
    "?",
    "1; SELECT pg_sleep(5)",
    "*/ SELECT 1 /*",
    "E'\\x41'",
    '"; DROP TABLE "points',
    "\u2019; DROP TABLE agents; --",  # right single quotation mark
    "\u02bc OR 1=1 --",  # modifier letter apostrophe
    "\uff07 OR \uff071\uff07=\uff071",  # fullwidth apostrophes
    "\u201c OR 1=1 --",  # left double quotation mark
    "x' UNION SELECT series_id, name, agent_id, labels FROM series --",
    "ü🚀",
]
METRIC = "inj_values"
# Sent as label and metric names too: all but the two that are valid names ("_", ":name").
AS_NAMES = [t for t in HOSTILE if series_problem(t, {}) and series_problem(METRIC, {t: "x"})]
LABEL = "v"
HOSTNAME = "\" OR 1=1 --'; DROP TABLE agents; --"

TABLES = (
    "agents",
    "series",
    "points",
    "batches",
    "agent_ingest",
    "rejects",
    "agent_credentials",
    "agent_settings",
    "rollup_1m",
    "rollup_1h",
    "rollup_dirty",
    "rollup_log",
    "schema_migrations",
)


def _census(database_url: str) -> dict[str, int]:
    with psycopg.connect(database_url) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        ).fetchone()
        counts = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}  # type: ignore[index]
    return {"tables": tables[0], **counts}  # type: ignore[index]


def _promql_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@pytest.fixture(scope="module")
def stored(edge: Edge, worker: Worker) -> dict[str, Any]:
    """What the hostile agents sent, stored: agents named by each string, one series per string
    as a label value, and (rejected) series with the strings as label and metric names."""
    agents = [f"inj-{i}-{text}" for i, text in enumerate(HOSTILE)]
    for agent in agents:
        send_accepted(edge, agent, rows(1, row_point("up", 1.0)))
    main = agents[0]
    send_accepted(
        edge,
        main,
        rows(2, *(row_point(METRIC, float(i), {LABEL: t}) for i, t in enumerate(HOSTILE))),
        columns(
            3,
            [series_def(f"{METRIC}_c", {LABEL: t}) for t in HOSTILE],
            [float(i) for i in range(len(HOSTILE))],
        ),
        rows(4, *(row_point(METRIC, 1.0, {t: "x"}) for t in AS_NAMES)),  # invalid label names
        rows(5, *(row_point(t, 1.0) for t in AS_NAMES)),  # invalid metric names
    )
    assert_delivered(edge.redis, edge.database_url, worker)
    at = time.time()  # every point is at or before this
    with psycopg.connect(edge.database_url) as conn:
        conn.execute("UPDATE agents SET hostname = %s WHERE agent_id = %s", (HOSTNAME, main))
    return {"agents": agents, "main": main, "at": at}


@pytest.fixture
def client(api: Api) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=api.url, headers={"authorization": f"Bearer {READ_KEY}"}, timeout=60
    ) as c:
        yield c


def _ok(response: httpx.Response, *allowed: int) -> Any:
    assert response.status_code < 500, (response.request.url, response.text)
    if allowed:
        assert response.status_code in allowed, (response.request.url, response.text)
    return (
        response.json()
        if response.headers.get("content-type", "").startswith("application/json")
        else None
    )


def test_agents_store_hostile_strings_verbatim(edge: Edge, stored: dict[str, Any]) -> None:
    with psycopg.connect(edge.database_url) as conn:
        ids = {r[0] for r in conn.execute("SELECT agent_id FROM agents").fetchall()}
        labels = conn.execute(
            "SELECT labels->>%s FROM series WHERE agent_id = %s AND name = %s AND labels ? %s",
            (LABEL, stored["main"], METRIC, LABEL),
        ).fetchall()
        reasons = dict(
            conn.execute(
                "SELECT reason, points FROM rejects WHERE agent_id = %s", (stored["main"],)
            ).fetchall()
        )
    assert set(stored["agents"]) <= ids
    assert sorted(v for (v,) in labels) == sorted(HOSTILE)
    # as names, they break the naming rules: rejected and counted, never executed
    assert len(AS_NAMES) == len(HOSTILE) - 2
    assert reasons == {"invalid_label_name": len(AS_NAMES), "invalid_metric_name": len(AS_NAMES)}


def test_every_api_parameter_takes_hostile_strings_as_data(
    edge: Edge, api: Api, client: httpx.Client, stored: dict[str, Any]
) -> None:
    before = _census(edge.database_url)
    main, agents = stored["main"], stored["agents"]
    # Windows that hold the stored points however long this test takes, read from raw points
    # (the worker here computes no rollups).
    at = stored["at"]
    raw = {"start": str(at - 600), "end": str(at + 1), "step": "5"}
    window = {"window": "3599"}
    quoted_main = quote(main, safe="")
    for i, text in enumerate(HOSTILE):
        q = quote(text, safe="")
        # -- fleet: filters are data (q is a literal substring, case-insensitive)
        for name in ("os", "arch", "version"):
            assert _ok(client.get("/agents", params={name: text}), 200) == []
        expected = {a for a in agents if text.lower() in a.lower()}
        if text.lower() in HOSTNAME.lower():
            expected.add(main)
        listed = _ok(client.get("/agents", params={"q": text, "limit": 1000}), 200)
        assert {a["agent_id"] for a in listed} == expected, text
        for name in ("status", "sort", "limit", "offset"):
            _ok(client.get("/agents", params={name: text}), 422)
        if "/" in agents[i]:  # a path segment cannot hold it (docs/api.md): not found
            _ok(client.get(f"/agents/{quote(agents[i], safe='')}"), 404)
        else:
            detail = _ok(client.get(f"/agents/{quote(agents[i], safe='')}"), 200)
            assert detail["agent_id"] == agents[i]
        for path in (f"/agents/{q}", f"/agents/{q}/series", f"/agents/{q}/config"):
            _ok(client.get(path), 404)
        assert _ok(client.get(f"/agents/{quoted_main}/series", params={"name": text}), 200) == []
        points = _ok(client.get(f"/agents/{quoted_main}/points", params={"name": text}), 200)
        assert points["series"] == [] and points["name"] == text
        for name in ("start", "end"):
            params = {"name": METRIC, name: text}
            _ok(client.get(f"/agents/{quoted_main}/points", params=params), 422)
        assert _ok(client.get("/catalog/metrics", params={"agent_id": text}), 200) == []
        _ok(client.get("/catalog/metrics", params={"limit": text}), 422)
        assert _ok(client.get("/catalog/labels", params={"metric": text}), 200)["labels"] == {}

        # -- native queries: the matcher finds exactly the series whose value is the string
        found = _ok(
            client.get(
                "/query/range",
                params={"metric": METRIC, "match": f"{LABEL}={text}", "by": LABEL, **raw},
            ),
            200,
        )
        assert [s["labels"] for s in found["series"]] == [{LABEL: text}], text
        for params in (
            {"metric": text},
            {"metric": METRIC, "match": f"{LABEL}=nothing{text}"},
            {"metric": METRIC, "match": f"{LABEL}={text}", "by": text},
        ):
            body = _ok(client.get("/query/range", params=params), 200)
            assert len(body["series"]) <= 1, (params, body)
        for params in (
            {"metric": METRIC, "match": f"{LABEL}!={text}"},
            {"metric": METRIC, "match": f"{LABEL}=~{text}"},
            {"metric": METRIC, "match": f"{LABEL}!~{text}"},
        ):
            _ok(client.get("/query/range", params=params), 200, 422)  # a regex may not compile
        for name in ("match", "agg", "step", "start", "end"):
            params = {"metric": METRIC, name: text}
            _ok(client.get("/query/range", params=params), 422)
        top = _ok(
            client.get(
                "/query/top",
                params={"metric": METRIC, "match": f"{LABEL}={text}", "by": LABEL, **window},
            ),
            200,
        )
        assert [g["labels"] for g in top["groups"]] == [{LABEL: text}], text
        assert _ok(client.get("/query/top", params={"metric": text}), 200)["groups"] == []
        for name in ("k", "window", "agg", "order", "match"):
            _ok(client.get("/query/top", params={"metric": METRIC, name: text}), 422)

        # -- PromQL: the string as a label value in a selector, and everywhere else
        selector = f"{METRIC}{{{LABEL}={_promql_string(text)}}}"
        for method in ("GET", "POST"):
            call = client.get if method == "GET" else client.post
            key = "params" if method == "GET" else "data"
            instant = {"query": selector, "time": str(at)}
            vector = _ok(call("/api/v1/query", **{key: instant}), 200)  # type: ignore[operator]
            assert [r["metric"][LABEL] for r in vector["data"]["result"]] == [text], text
            series = _ok(call("/api/v1/series", **{key: {"match[]": selector}}), 200)  # type: ignore[operator]
            assert [s[LABEL] for s in series["data"]] == [text]
            for query in (
                text,
                f'{METRIC}{{{text}="x"}}',
                f"sum by ({text}) ({METRIC})",
                f"{METRIC}{{{LABEL}=~{_promql_string(text)}}}",
                f"{METRIC} + {text}",
            ):
                answer = call("/api/v1/query", **{key: {"query": query}})  # type: ignore[operator]
                _ok(answer, 200, 400)
            for name in ("time",):
                params = {"query": selector, name: text}
                _ok(call("/api/v1/query", **{key: params}), 400)  # type: ignore[operator]
            for name in ("start", "end", "step"):
                params = {"query": selector, "start": "0", "end": "60", "step": "15", name: text}
                _ok(call("/api/v1/query_range", **{key: params}), 400)  # type: ignore[operator]
            for path in ("/api/v1/series", "/api/v1/labels"):
                # refused, or (a string that is a valid metric name) matching nothing
                body = _ok(call(path, **{key: {"match[]": text}}), 200, 400)  # type: ignore[operator]
                assert body.get("data", []) == [], (path, text, body)
        if "/" in text:  # no label name holds one; the path does not route
            _ok(client.get(f"/api/v1/label/{q}/values"), 404)
        elif series_problem(METRIC, {text: "x"}) is None:  # a valid label name: nothing has it
            assert _ok(client.get(f"/api/v1/label/{q}/values"), 200)["data"] == []
        else:  # refused as Prometheus refuses it, as an invalid label name
            assert _ok(client.get(f"/api/v1/label/{q}/values"), 400)["errorType"] == "bad_data"
    values = _ok(client.get(f"/api/v1/label/{LABEL}/values"), 200)["data"]
    assert sorted(values) == sorted(HOSTILE)
    assert _census(edge.database_url) == before
    assert "Traceback" not in api.log()

"""The read API against its own OpenAPI schema, with schemathesis: every operation of a real
`fleetpulse api` process, with generated (valid and invalid) parameters and bodies, never answers
with a server error. The database holds a few agents and series, written through a real front-end.

The Prometheus endpoints take their parameters from the query string or a form body, which the
schema cannot describe (as in Prometheus), so generated PromQL is sent to them separately.

Examples per operation and mode: FLEETPULSE_SCHEMA_EXAMPLES (default 20; 22 operations).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import httpx
import hypothesis.strategies as st
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from fleetpulse.ingest.worker.consumer import Worker
from tests.badinput.conftest import ADMIN_KEY, READ_KEY, Api, assert_delivered
from tests.badinput.test_points import columns, row_point, rows, send_accepted, series_def
from tests.integration.test_edge import Edge

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("FLEETPULSE_SCHEMA_EXAMPLES", "20"))


@pytest.fixture(scope="module")
def api_schema(api: Api, edge: Edge, worker: Worker) -> Any:
    for agent in ("host-1", "host-2"):
        send_accepted(
            edge,
            agent,
            rows(1, row_point("cpu_usage_percent", 12.5, {"mode": "idle"})),
            columns(2, [series_def("memory_bytes", {"state": s}) for s in ("total", "used")], [8.0, 2.0]),
        )  # fmt: skip
    assert_delivered(edge.redis, edge.database_url, worker)
    return schemathesis.openapi.from_url(f"{api.url}/openapi.json")


def test_no_operation_answers_a_server_error(api_schema: Any, api: Api) -> None:
    """Every operation, with data that fits its schema and data that does not (schemathesis'
    positive and negative modes). Driven from here rather than through schemathesis' pytest
    plugin, whose lazy loader does not run on this pytest (it sets a Node attribute pytest 9
    no longer has)."""
    cases = 0
    for result in api_schema.get_all_operations():
        operation = result.ok()
        takes_input = any(operation.iter_parameters()) or len(operation.body)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            if mode == GenerationMode.NEGATIVE and not takes_input:
                continue  # nothing to make invalid

            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def call(case: Any) -> None:
                nonlocal cases
                cases += 1
                key = ADMIN_KEY if case.method == "PUT" else READ_KEY  # writes need the admin key
                case.call_and_validate(
                    headers={"authorization": f"Bearer {key}"},
                    checks=[not_a_server_error],
                    timeout=60,
                )

            try:
                call()
            except Unsatisfiable:
                # every invalid value of a free-text parameter is still a string (a path
                # segment, a query value): negative mode cannot generate one for some operations
                assert mode == GenerationMode.NEGATIVE, operation.path
    print(f"schemathesis: {cases} requests, no server error")  # shown with -rP
    assert cases >= EXAMPLES
    assert "Traceback" not in api.log()


# -- PromQL, which the schema does not describe -----------------------------------------------

_NAMES = st.sampled_from(["cpu_usage_percent", "memory_bytes", "nothing", "__name__", "mode"])
_VALUES = st.one_of(st.sampled_from(["idle", "", ".*", "(", "\\", "'", '"']), st.text(max_size=8))
_MATCHER = st.builds(
    lambda k, op, v: f"{k}{op}{v!r}".replace("'", '"', 2),
    st.sampled_from(["mode", "state", "agent_id", "__name__", "x"]),
    st.sampled_from(["=", "!=", "=~", "!~"]),
    _VALUES,
)
_SELECTOR = st.builds(
    lambda name, matchers, rng: f"{name}{{{','.join(matchers)}}}{rng}",
    _NAMES,
    st.lists(_MATCHER, max_size=3),
    st.sampled_from(["", "[5m]", "[1s]", "[0s]", "[99999d]", "[1y]", "[5m:1m]"]),
)
_FUNCTIONS = ["rate", "irate", "increase", "avg_over_time", "count_over_time", "abs", "nope"]
_EXPRESSION = st.recursive(
    st.one_of(_SELECTOR, st.sampled_from(["1", "-1e308", "NaN", "Inf", "0x1F", "1/0", "()", ""])),
    lambda inner: st.one_of(
        st.builds(lambda f, e: f"{f}({e})", st.sampled_from(_FUNCTIONS), inner),
        st.builds(
            lambda op, by, e: f"{op} {by} ({e})",
            st.sampled_from(["sum", "avg", "min", "max", "count"]),
            st.sampled_from(["by (mode)", "without (mode)", "by ()", "by (__name__)", ""]),
            inner,
        ),
        st.builds(
            lambda k, e: f"topk({k}, {e})", st.sampled_from(["1", "0", "-1", "1e9", "x"]), inner
        ),
        st.builds(lambda a, op, b: f"{a} {op} {b}", inner, st.sampled_from("+-*/%^"), inner),
    ),
    max_leaves=6,
)
_QUERY = st.one_of(_EXPRESSION, st.text(max_size=40))
_TIME = st.one_of(
    st.sampled_from(["now", "0", "-1", "1e20", "nan", "inf", "2026-01-01T00:00:00Z", "", "1.5"]),
    st.integers(-(2**40), 2**40).map(str),
)
_STEP = st.sampled_from(["1", "15", "60s", "1h", "0", "-5", "0.0001", "9" * 30, "x", ""])


@pytest.fixture
def client(api: Api, api_schema: Any) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=api.url, headers={"authorization": f"Bearer {READ_KEY}"}, timeout=60
    ) as c:
        yield c


def test_generated_promql_never_answers_a_server_error(client: httpx.Client, api: Api) -> None:
    @settings(
        max_examples=EXAMPLES * 5,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        query=_QUERY,
        start=_TIME,
        end=_TIME,
        step=_STEP,
        method=st.sampled_from(["GET", "POST"]),
        path=st.sampled_from(["query", "query_range", "series", "labels"]),
    )
    def case(query: str, start: str, end: str, step: str, method: str, path: str) -> None:
        params = {"query": query, "match[]": query, "time": end, "start": start, "end": end}
        params["step"] = step
        if method == "GET":
            response = client.get(f"/api/v1/{path}", params=params)
        else:
            response = client.post(f"/api/v1/{path}", data=params)
        assert response.status_code < 500, (path, params, response.text)
        if response.status_code != 200:
            body = response.json()
            assert body["status"] == "error" and body["errorType"] == "bad_data", body
            assert len(body["error"].splitlines()) == 1, body

    case()
    assert "Traceback" not in api.log()


# Found by the runs above (each was a 500 before its fix): numbers past what the API can use.
OUT_OF_RANGE = [
    ("/agents", {"offset": str(2**64)}, 422),
    ("/query/range", {"metric": "cpu_usage_percent", "step": "9" * 400}, 422),
    ("/query/range", {"metric": "m", "start": "-32503680000", "step": "9" * 20}, 422),
    ("/query/top", {"metric": "cpu_usage_percent", "window": "9" * 400}, 422),
    ("/api/v1/query", {"query": "cpu_usage_percent[99999999999999d]"}, 400),
    ("/api/v1/query", {"query": "rate(cpu_usage_percent[99999999999999d])"}, 400),
    ("/api/v1/query", {"query": "topk(NaN, cpu_usage_percent)"}, 422),  # Prometheus: execution
    ("/api/v1/query", {"query": "(" * 2000 + "1" + ")" * 2000}, 400),
]


@pytest.mark.parametrize(("path", "params", "status"), OUT_OF_RANGE)
def test_numbers_out_of_range_are_refused_with_the_reason(
    client: httpx.Client, path: str, params: dict[str, str], status: int
) -> None:
    response = client.get(path, params=params)
    assert response.status_code == status, response.text
    body = response.json()
    reason = body["error"] if path.startswith("/api/v1") else str(body["detail"])
    assert len(reason.splitlines()) == 1, reason

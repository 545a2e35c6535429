"""fleetpulse's PromQL against a real Prometheus 2.42 holding the same samples (issue 16, point 4).

One test per query of ``promql_reference.QUERIES``, on each database backend: the query is asked
of both servers as instant and range queries (``promql_reference.forms``) and every answer must
be Prometheus' (``promql_reference.compare``). Queries fleetpulse does not answer as Prometheus
does yet are strict xfails (``KNOWN_DIFFERENCES``), so ``pytest -rxX`` lists what is equal, what
is known to differ, and what started to pass.

Both data stores are filled once: Prometheus once per module, fleetpulse once per module and
backend, in a database rolled up as in production. The selectors and range functions run a second
time on a database whose hours are compressed, the layout every hour ends up in (the other
queries read storage no differently, and the module must stay well under two minutes). Prometheus'
answers do not depend on the backend and are asked once.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg.conninfo import make_conninfo

from fleetpulse.api.app import create_app
from fleetpulse.migrate import migrate
from fleetpulse.settings import Settings
from tests.conftest import Backend
from tests.integration.promql_reference import (
    AGENTS,
    KNOWN_DIFFERENCES,
    QUERIES,
    RANGE_FUNCTIONS,
    SELECTORS,
    Answer,
    DataSet,
    Form,
    compare,
    data_set,
    forms,
    is_ordered,
    openmetrics,
    render,
    report,
)
from tests.integration.test_api import READ_AUTH, READ_KEY, add_agent, add_series
from tests.integration.test_query import roll_up, write
from tests.processes import free_port, log_tail, stop

pytestmark = pytest.mark.skipif(
    (shutil.which("prometheus") is None or shutil.which("promtool") is None)
    and not os.environ.get("CI"),
    reason="prometheus and promtool (Debian's prometheus) are not installed",
)


@pytest.fixture(scope="module")
def data() -> DataSet:
    return data_set()


@dataclass
class Prometheus:
    client: httpx.Client
    answers: dict[tuple[str, str], Answer] = field(default_factory=dict)

    def answer(self, query: str, form: Form) -> Answer:
        key = (query, form.name)
        if key not in self.answers:
            response = self.client.post(form.path, data={"query": query, **form.params})
            self.answers[key] = Answer(response.status_code, response.json())
        return self.answers[key]


@pytest.fixture(scope="module")
def prometheus(data: DataSet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    """The real Prometheus on a TSDB backfilled with the data set, no scrape jobs."""
    work = tmp_path_factory.mktemp("prometheus")
    source, tsdb, log_path = work / "data.om", work / "tsdb", work / "prometheus.log"
    with source.open("w") as out:
        out.writelines(openmetrics(data))
    done = subprocess.run(
        ["promtool", "tsdb", "create-blocks-from", "openmetrics", str(source), str(tsdb)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    # The evaluation interval is a subquery's default step: named here, though it is the default.
    config = work / "prometheus.yml"
    config.write_text("global:\n  evaluation_interval: 1m\n")
    port = free_port()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={config}",
                f"--storage.tsdb.path={tsdb}",
                "--storage.tsdb.retention.time=3650d",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if client.get("/-/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert proc.poll() is None and time.monotonic() < deadline, (
                    "Prometheus did not get ready; its log ends:\n" + log_tail(log_path)
                )
                time.sleep(0.1)
            yield Prometheus(client)
    finally:
        stop(proc, log_path=log_path)


def _fleetpulse(backend: Backend, data: DataSet, compress: bool) -> Iterator[TestClient]:
    """fleetpulse's API, in this process, on a database of its own holding the data set, rolled
    up (and, with ``compress``, compressed) as in production."""
    name = f"fleetpulse_promql_reference_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(backend.admin_database_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = make_conninfo(backend.admin_database_url, dbname=name)
    try:
        migrate(url)
        with psycopg.connect(url, autocommit=True) as db:
            for agent in AGENTS:
                add_agent(db, agent)
            for s in data.series:
                labels = {k: v for k, v in s.labels.items() if k != "agent_id"}
                series_id = add_series(db, s.agent_id, s.name, json.dumps(labels))
                write(db, series_id, (s.ts_ms / 1000).tolist(), s.values.tolist())
            roll_up(db, compress=compress)
        settings = Settings(database_url=url, api_keys=READ_KEY)  # type: ignore[arg-type]
        # A crash is a difference like any other: answered as HTTP 500, not raised here.
        app = create_app(settings)
        with TestClient(app, headers=READ_AUTH, raise_server_exceptions=False) as client:
            yield client
    finally:
        with psycopg.connect(backend.admin_database_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def fleetpulse(backend: Backend, data: DataSet) -> Iterator[TestClient]:
    yield from _fleetpulse(backend, data, compress=False)


@pytest.fixture(scope="module")
def fleetpulse_compressed(backend: Backend, data: DataSet) -> Iterator[TestClient]:
    yield from _fleetpulse(backend, data, compress=True)


def ask(client: TestClient, query: str, form: Form) -> Answer:
    response = client.post(form.path, data={"query": query, **form.params})
    try:
        body = response.json()
    except ValueError:
        body = response.text
    return Answer(response.status_code, body)


def _param(query: str) -> object:
    marks = []
    if query in KNOWN_DIFFERENCES:
        marks.append(pytest.mark.xfail(strict=True, reason=KNOWN_DIFFERENCES[query]))
    return pytest.param(query, id=query or "<empty query>", marks=marks)


def test_known_differences_are_queries_of_the_set() -> None:
    assert set(KNOWN_DIFFERENCES) <= set(QUERIES)
    assert len(set(QUERIES)) == len(QUERIES)


def assert_same_answers(
    query: str, data: DataSet, prometheus: Prometheus, client: TestClient
) -> None:
    """Ask both servers ``query`` in every form; fail with what differed."""
    text = render(query, data)
    found = []
    for form in forms(data):
        want = prometheus.answer(text, form)
        got = ask(client, text, form)
        difference = compare(want, got, ordered=form.instant and is_ordered(text))
        if difference:
            found.append((form.name, difference))
    if found:
        pytest.fail(f"{text}\n{report(found)}", pytrace=False)


@pytest.mark.parametrize("query", [_param(q) for q in QUERIES])
def test_same_answer_as_prometheus(
    query: str, data: DataSet, prometheus: Prometheus, fleetpulse: TestClient
) -> None:
    assert_same_answers(query, data, prometheus, fleetpulse)


@pytest.mark.parametrize("query", [_param(q) for q in [*SELECTORS, *RANGE_FUNCTIONS]])
def test_same_answer_from_compressed_hours(
    query: str, data: DataSet, prometheus: Prometheus, fleetpulse_compressed: TestClient
) -> None:
    """The queries that read storage in every way, on hours compressed into chunks (raw points
    and the minute tier then come from chunks): the answers must not change."""
    assert_same_answers(query, data, prometheus, fleetpulse_compressed)


def test_the_comparisons_are_not_vacuous(data: DataSet, prometheus: Prometheus) -> None:
    """Equal answers prove little if most are empty: most of Prometheus' successful answers in
    the set must hold samples, and most queries must succeed (the rest are the error cases)."""
    answered = with_data = 0
    for query in QUERIES:
        for form in forms(data):
            body = prometheus.answer(render(query, data), form).body
            if body["status"] != "success":
                continue
            answered += 1
            result = body["data"]["result"]
            if body["data"]["resultType"] in ("scalar", "string") or len(result) > 0:
                with_data += 1
    total = len(QUERIES) * len(forms(data))
    assert answered >= 0.85 * total, (answered, total)
    assert with_data >= 0.9 * answered, (with_data, answered)

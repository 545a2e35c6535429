"""POST /api/v1/write against real PostgreSQL and Redis with a real worker (issue 19, point 6): a
request is stored once, the same request again (a client's retry, also after part of it was
queued) stores nothing more, series land on the agents the mapping label names with every label
as sent, what the workers refuse is counted, and every refusal is the answer Prometheus' client
acts on (401, 403, 400; 429 and 503 with Retry-After)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cramjam
import psycopg
import pytest
import redis
from fastapi.testclient import TestClient

from fleetpulse.api.app import create_app
from fleetpulse.ingest import keys, queue, remotewrite
from fleetpulse.ingest.remotewrite import AgentMapping, RequestDecoder
from fleetpulse.settings import Settings
from tests.integration.test_agent import wait_for
from tests.processes import fleetpulse_process, free_port
from tests.unit.test_remotewrite import body, scrape, series

pytestmark = pytest.mark.integration

READ_KEY, WRITE_KEY, ADMIN_KEY = "rw-read-key", "rw-write-key", "rw-admin-key"
HEADERS = {
    "content-type": "application/x-protobuf",
    "content-encoding": "snappy",
    "x-prometheus-remote-write-version": "0.1.0",
}
SHARDS = 2


def settings_for(database_url: str, redis_url: str, **more: Any) -> Settings:
    return Settings(
        database_url=database_url,
        redis_url=redis_url,
        stream_shards=SHARDS,
        api_keys=READ_KEY,  # type: ignore[arg-type]  # pydantic makes them SecretStr
        api_write_keys=f"prometheus:{WRITE_KEY}",  # type: ignore[arg-type]
        api_admin_key=ADMIN_KEY,  # type: ignore[arg-type]
        **more,
    )


def post(client: TestClient, data: bytes, key: str | None = WRITE_KEY, **headers: str) -> Any:
    sent = {**HEADERS, **headers}
    auth = ("prometheus", key) if key is not None else None
    return client.post("/api/v1/write", content=data, headers=sent, auth=auth)


@pytest.fixture
def worker(database_url: str, redis_url: str, tmp_path: Path) -> Iterator[None]:
    env = {
        "FLEETPULSE_DATABASE_URL": database_url,
        "FLEETPULSE_REDIS_URL": redis_url,
        "FLEETPULSE_STREAM_SHARDS": str(SHARDS),
        "FLEETPULSE_ROLLUPS": "false",
        "FLEETPULSE_COMPRESS": "false",
    }
    with fleetpulse_process(["worker"], env, tmp_path / "worker.log"):
        yield


@pytest.fixture
def client(database_url: str, redis_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(settings_for(database_url, redis_url))) as test_client:
        yield test_client


def queued(redis_url: str) -> int:
    client = redis.Redis.from_url(redis_url)
    try:
        return sum(int(client.xlen(keys.stream_key(shard))) for shard in range(SHARDS))
    finally:
        client.close()


def drained(redis_url: str) -> None:
    """Every queued entry committed (workers delete an entry only after its COMMIT)."""
    wait_for(lambda: queued(redis_url) == 0, 60, "the queue drained by the worker")


def count(database_url: str, query: str, *params: object) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(query, params).fetchone()
    assert row is not None
    return int(row[0] or 0)


def points(database_url: str) -> int:
    return count(database_url, "SELECT count(*) FROM all_points")


def ledger(database_url: str) -> int:
    return count(database_url, "SELECT count(*) FROM batches WHERE epoch = %s", remotewrite.EPOCH)


def now_ms() -> int:
    return int(time.time() * 1000) - 60_000


def test_a_request_is_stored_once_and_its_retry_stores_nothing_more(
    worker: None, client: TestClient, database_url: str, redis_url: str
) -> None:
    stamp = now_ms()
    data = body(*scrape(1000, stamp), *scrape(1000, stamp + 15_000))
    expected = RequestDecoder(AgentMapping(), 1 << 25).decode(data)
    assert len(expected.batches) > 2

    answer = post(client, data)
    assert answer.status_code == 204, answer.text
    assert answer.content == b""
    drained(redis_url)
    assert points(database_url) == 2000
    assert ledger(database_url) == len(expected.batches)

    for _ in range(2):  # Prometheus resends the same bytes after a timeout or a 5xx
        assert post(client, data).status_code == 204
    drained(redis_url)
    assert points(database_url) == 2000
    assert ledger(database_url) == len(expected.batches)
    # The agent's own account (agent_ingest: what the agent sent) leaves platform batches out.
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT 1 FROM agent_ingest WHERE agent_id = 'h'").fetchone()
    assert row is None


def test_a_request_partly_queued_before_a_failure_is_completed_once_by_its_retry(
    worker: None, client: TestClient, database_url: str, redis_url: str
) -> None:
    data = body(*scrape(2000, now_ms()))
    decoded = RequestDecoder(AgentMapping(), 1 << 25).decode(data)
    assert len(decoded.batches) >= 4
    # What a request that failed halfway left in the queue: its first batches, then 503.
    raw = redis.Redis.from_url(redis_url)
    shards = queue.ensure_layout(raw, SHARDS)
    for batch in decoded.batches[:2]:
        fields = queue.entry_fields(
            batch.agent_id, remotewrite.EPOCH, batch.sequence, batch.payload, 0, keys.FORM_COLUMNS
        )
        raw.xadd(keys.stream_key(keys.shard_for(batch.agent_id, shards)), fields)  # type: ignore[arg-type]
    raw.close()
    drained(redis_url)
    partial = sum(b.samples for b in decoded.batches[:2])
    assert points(database_url) == partial < 2000

    assert post(client, data).status_code == 204
    drained(redis_url)
    assert points(database_url) == 2000
    assert ledger(database_url) == len(decoded.batches)


def test_series_land_on_their_agents_with_every_label_and_read_back_with_promql(
    worker: None, client: TestClient, database_url: str, redis_url: str
) -> None:
    stamp = now_ms()
    data = body(
        series("node_load1", {"instance": "web-1:9100", "job": "node"}, [(stamp, 0.25)]),
        series("node_load1", {"instance": "web-2:9100", "job": "node"}, [(stamp, 1.5)]),
        series("up", {"instance": "web-1:9100", "job": "node"}, [(stamp, 1)]),
        series("cluster_total", {"job": "federate"}, [(stamp, 7)]),
        series("bad-name", {"instance": "web-1:9100"}, [(stamp, 1)]),
        series("ok", {"instance": "web-1:9100", "bad-label": "x"}, [(stamp, 1)]),
    )
    assert post(client, data).status_code == 204
    drained(redis_url)

    found = client.get(
        "/api/v1/query",
        params={"query": "node_load1", "time": stamp / 1000},
        headers={"authorization": f"Bearer {READ_KEY}"},
    ).json()
    assert found["status"] == "success"
    assert sorted(
        ((r["metric"], r["value"][1]) for r in found["data"]["result"]),
        key=lambda pair: pair[0]["agent_id"],
    ) == [
        (
            {
                "__name__": "node_load1",
                "agent_id": "web-1",
                "instance": "web-1:9100",
                "job": "node",
            },
            "0.25",
        ),
        (
            {
                "__name__": "node_load1",
                "agent_id": "web-2",
                "instance": "web-2:9100",
                "job": "node",
            },
            "1.5",
        ),
    ]
    unowned = client.get(
        "/api/v1/query",
        params={"query": "cluster_total", "time": stamp / 1000},
        headers={"authorization": f"Bearer {READ_KEY}"},
    ).json()["data"]["result"]
    assert [r["value"][1] for r in unowned] == ["7"]
    assert count(database_url, "SELECT count(*) FROM series WHERE agent_id = ''") == 1

    # The worker's validation refused the two invalid series and counted them under their agent.
    with psycopg.connect(database_url) as conn:
        rejects = dict(
            conn.execute("SELECT reason, points FROM rejects WHERE agent_id = 'web-1'").fetchall()
        )
    assert rejects == {"invalid_metric_name": 1, "invalid_label_name": 1}
    assert points(database_url) == 4


def test_keys(client: TestClient, database_url: str, redis_url: str) -> None:
    data = body(series("up", {"instance": "a:1"}, [(now_ms(), 1)]))
    answer = post(client, data, key=None)
    assert answer.status_code == 401 and answer.headers["www-authenticate"] == "Bearer"
    assert "write key" in answer.text
    assert post(client, data, key="wrong").status_code == 401
    answer = post(client, data, key=READ_KEY)
    assert answer.status_code == 403
    assert answer.text == "this API key may read, not write: send a write key\n"
    assert post(client, data, key=ADMIN_KEY).status_code == 204
    bearer = client.post(
        "/api/v1/write", content=data, headers={**HEADERS, "authorization": f"Bearer {WRITE_KEY}"}
    )
    assert bearer.status_code == 204
    # A write key does not read.
    read = client.get("/api/v1/query", params={"query": "up"}, auth=("x", WRITE_KEY))
    assert read.status_code == 401
    assert queued(redis_url) == 2


def test_without_write_keys_remote_write_is_off(database_url: str, redis_url: str) -> None:
    settings = Settings(
        database_url=database_url,
        redis_url=redis_url,
        api_keys=READ_KEY,  # type: ignore[arg-type]
        api_open=True,
    )
    with TestClient(create_app(settings)) as open_client:
        answer = post(open_client, body(), key=None)
    assert answer.status_code == 403
    assert "FLEETPULSE_API_WRITE_KEYS" in answer.text


@pytest.mark.parametrize(
    ("data", "headers", "message"),
    [
        (None, {"content-type": "application/json"}, "Content-Type must be application/x-protobuf"),
        (None, {"content-encoding": "gzip"}, "Content-Encoding must be snappy"),
        (
            None,
            {"x-prometheus-remote-write-version": "2.0.0"},
            "only 0.1.x (remote write 1.0) is taken",
        ),
        (
            None,
            {"content-type": "application/x-protobuf;proto=io.prometheus.write.v2.Request"},
            "only remote write 1.0",
        ),
        (b"plainly not snappy", {}, "body is not snappy-compressed"),
        (bytes(cramjam.snappy.compress_raw(b"\x0a\xff\xff")), {}, "not a protobuf WriteRequest"),
    ],
)
def test_bad_input_is_400_with_one_line_naming_the_problem(
    client: TestClient, redis_url: str, data: bytes | None, headers: dict[str, str], message: str
) -> None:
    sent = data if data is not None else body(series("up", {"instance": "a:1"}, [(now_ms(), 1)]))
    answer = post(client, sent, **headers)
    assert answer.status_code == 400, answer.text
    assert message in answer.text and answer.text.count("\n") == 1
    assert queued(redis_url) == 0


def test_a_body_over_the_limit_is_400(database_url: str, redis_url: str) -> None:
    settings = settings_for(database_url, redis_url, remote_write_max_bytes=4096)
    with TestClient(create_app(settings)) as small:
        answer = post(small, body(*scrape(200, now_ms())))
    assert answer.status_code == 400
    assert "over the limit of 4096" in answer.text


def test_workers_behind_is_429_with_retry_after_then_taken_again(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    # No worker yet: what is queued stays queued, and a limit of 2 entries is reached at once.
    settings = settings_for(
        database_url, redis_url, ingest_max_queued_entries=2, ingest_retry_after_ms=3000
    )
    with TestClient(create_app(settings)) as client:
        assert post(client, body(*scrape(2000, now_ms()))).status_code == 204
        assert queued(redis_url) >= 2
        answers: list[Any] = []

        def refused() -> bool:
            answers.append(post(client, body(*scrape(10, now_ms() + len(answers)))))
            return answers[-1].status_code == 429

        wait_for(refused, 10, "backpressure seen by the endpoint")
        assert all(a.status_code == 204 for a in answers[:-1])
        assert answers[-1].headers["retry-after"] == "3"
        assert "workers are behind" in answers[-1].text
        taken_before = queued(redis_url)
        env = {
            "FLEETPULSE_DATABASE_URL": database_url,
            "FLEETPULSE_REDIS_URL": redis_url,
            "FLEETPULSE_STREAM_SHARDS": str(SHARDS),
        }
        with fleetpulse_process(["worker"], env, tmp_path / "worker.log"):
            drained(redis_url)
            wait_for(
                lambda: post(client, body(*scrape(10, now_ms() + 999))).status_code == 204,
                10,
                "writes taken again once the workers caught up",
            )
    assert taken_before >= 2


def test_redis_unreachable_is_503_with_retry_after(database_url: str) -> None:
    settings = settings_for(
        database_url, f"redis://127.0.0.1:{free_port()}/0", ingest_retry_after_ms=1500
    )
    with TestClient(create_app(settings)) as client:
        answer = post(client, body(series("up", {"instance": "a:1"}, [(now_ms(), 1)])))
        assert answer.status_code == 503
        assert answer.headers["retry-after"] == "2"
        assert answer.text.startswith("queue unavailable")
        # reads do not need Redis
        health = client.get("/healthz")
        assert health.status_code == 200


def test_an_empty_admin_key_setting_lets_no_empty_key_in(database_url: str, redis_url: str) -> None:
    # What docker-compose.yml passes when FLEETPULSE_API_ADMIN_KEY is unset: "", which is no key.
    settings = Settings(
        database_url=database_url,
        redis_url=redis_url,
        api_keys=READ_KEY,  # type: ignore[arg-type]
        api_write_keys="",  # type: ignore[arg-type]
        api_admin_key="",  # type: ignore[arg-type]
    )
    with TestClient(create_app(settings)) as client:
        empty = {**HEADERS, "authorization": "Bearer "}
        answer = client.post("/api/v1/write", content=body(), headers=empty)
        assert answer.status_code == 403 and "remote write is off" in answer.text
        assert client.get("/agents", headers={"authorization": "Bearer "}).status_code == 401

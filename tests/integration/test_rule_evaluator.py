"""The rule evaluator against real PostgreSQL, Redis and workers: recording rules stored once per
evaluation timestamp (also when a slot is evaluated twice), alert state that survives a restart
of the evaluator, one evaluator at a time, and the rules and alerts API answering from it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psycopg
import pytest
import redis
from fastapi.testclient import TestClient
from pydantic import SecretStr

from fleetpulse.api.app import create_app
from fleetpulse.api.deps import configure_connection
from fleetpulse.api.rules import evaluator as evaluator_module
from fleetpulse.api.rules.evaluator import Evaluator, RuleSet
from fleetpulse.ingest import keys, platformbatches, queue
from fleetpulse.ingest.worker.consumer import Worker
from fleetpulse.settings import Settings

RULES = """
groups:
  - name: load
    interval: 1s
    rules:
      - record: agent:load1:double
        expr: load1 * 2
      - record: fleet:load1:sum
        expr: sum(load1)
      - alert: LoadHigh
        expr: load1 > 1
        for: 3s
        labels:
          severity: page
        annotations:
          summary: "{{ $labels.agent_id }} load is {{ $value }}"
"""


@pytest.fixture
def settings(database_url: str, redis_url: str, tmp_path: Path) -> Settings:
    rules = tmp_path / "rules.yml"
    rules.write_text(RULES)
    return Settings(
        database_url=database_url,
        redis_url=redis_url,
        stream_shards=2,
        rule_files=str(rules),
        rules_evaluate=True,
        api_open=True,
    )


@pytest.fixture
def worker(settings: Settings) -> Iterator[Worker]:
    w = Worker(settings, "rules-test")
    yield w
    w.close()


def drain(worker: Worker) -> None:
    while entries := worker._read(">", None):
        worker.process(entries)


def send_load(settings: Settings, worker: Worker, agents: dict[str, float]) -> None:
    """Each agent's load1 now, stored through the queue and the worker like an agent's batch."""
    assert settings.redis_url is not None
    client = redis.Redis.from_url(settings.redis_url)
    shards = queue.ensure_layout(client, settings.stream_shards)
    now_ns = time.time_ns()
    for agent, value in agents.items():
        data = platformbatches.encode(
            agent, 1, now_ns // 1_000_000, [("load1", {})], np.array([now_ns]), np.array([value])
        )
        client.xadd(
            keys.stream_key(keys.shard_for(agent, shards)),
            queue.entry_fields(
                agent, 1, now_ns // 1_000_000, data, now_ns // 1_000_000, keys.FORM_COLUMNS
            ),  # type: ignore[arg-type]
        )
    client.close()
    drain(worker)


async def run_for(evaluator: Evaluator, seconds: float) -> None:
    task = asyncio.create_task(evaluator.run())
    await asyncio.sleep(seconds)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def evaluator_of(settings: Settings) -> Evaluator:
    ruleset = RuleSet(settings)
    assert ruleset.reload() is None
    return Evaluator(settings, ruleset)


def points(database_url: str, name: str) -> list[tuple[str, int, int]]:
    """(agent, timestamps, distinct timestamps) of each agent's series called ``name``."""
    with psycopg.connect(database_url) as conn:
        return conn.execute(
            "SELECT s.agent_id, count(*), count(DISTINCT p.ts) FROM all_points p"
            " JOIN series s USING (series_id) WHERE s.name = %s GROUP BY 1 ORDER BY 1",
            (name,),
        ).fetchall()


def alert_rows(database_url: str) -> list[tuple[str, str, float, float | None]]:
    with psycopg.connect(database_url) as conn:
        return conn.execute(
            "SELECT labels->>'agent_id', state, extract(epoch FROM active_at)::float8,"
            " extract(epoch FROM fired_at)::float8 FROM alerts ORDER BY 1"
        ).fetchall()


def test_recording_rules_write_once_per_slot_and_alerts_keep_their_state_across_a_restart(
    settings: Settings, worker: Worker, database_url: str
) -> None:
    send_load(settings, worker, {"a1": 2.0, "a2": 0.5})
    asyncio.run(run_for(evaluator_of(settings), 2.5))
    [(agent, state, active_at, fired_at)] = alert_rows(database_url)
    assert (agent, state, fired_at) == ("a1", "pending", None)

    # A new evaluator (a restart) takes the group where the first left it: the pending alert
    # keeps its start, and fires 3 s after it, not 3 s after the restart.
    asyncio.run(run_for(evaluator_of(settings), 3.5))
    [(agent, state, active_again, fired_at)] = alert_rows(database_url)
    assert (agent, state, active_again) == ("a1", "firing", active_at)
    assert fired_at is not None and 3.0 <= fired_at - active_at < 4.0

    drain(worker)
    doubled = points(database_url, "agent:load1:double")
    assert [a for a, _, _ in doubled] == ["a1", "a2"]  # under the agent the result names
    for _, count, distinct in doubled:
        assert count == distinct >= 4  # one point per slot, none twice
    [(agent, count, distinct)] = points(database_url, "fleet:load1:sum")
    assert agent == platformbatches.PLATFORM_AGENT and count == distinct
    with psycopg.connect(database_url) as conn:
        slots = conn.execute(
            "SELECT DISTINCT extract(epoch FROM p.ts)::float8 FROM all_points p JOIN series s"
            " USING (series_id) WHERE s.name = 'fleet:load1:sum' ORDER BY 1"
        ).fetchall()
    gaps = np.diff([s for (s,) in slots])
    assert np.allclose(gaps, np.round(gaps))  # whole intervals apart: the group's slots


def test_a_slot_evaluated_twice_is_stored_once(
    settings: Settings, worker: Worker, database_url: str
) -> None:
    send_load(settings, worker, {"a1": 3.0})
    first, second = evaluator_of(settings), evaluator_of(settings)

    async def twice() -> None:
        from fleetpulse import connections

        assert settings.redis_url is not None and settings.database_url is not None
        client = connections.redis_async(settings.redis_url)
        batches = queue.BatchQueue(client, 2)
        pool = connections.pg_pool_async(
            settings.database_url, min_size=1, max_size=2, name="t", configure=configure_connection
        )
        await pool.open()
        conn = await connections.pg_connect_async(settings.database_url, autocommit=True)
        group = first.ruleset.groups[0]
        ts_ms = (int(time.time()) + 1) * 1000  # after the load point
        for ev in (first, second):  # the second is a restarted evaluator on the same slot
            states = {
                r.key: evaluator_module.AlertState(r) for r in group.rules if r.kind == "alert"
            }
            await ev._round(group, ts_ms, 0, states, {}, conn, pool, batches)
        await conn.close()
        await pool.close()
        await batches.close()
        await client.aclose()

    asyncio.run(twice())
    drain(worker)
    assert points(database_url, "agent:load1:double") == [("a1", 1, 1)]
    with psycopg.connect(database_url) as conn:
        value = conn.execute(
            "SELECT p.value FROM all_points p JOIN series s USING (series_id)"
            " WHERE s.name = 'agent:load1:double'"
        ).fetchone()
    assert value == (6.0,)


def test_one_evaluator_at_a_time_and_the_next_takes_over(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(evaluator_module, "LOCK_RETRY_S", 0.2)

    async def scenario() -> None:
        a, b = evaluator_of(settings), evaluator_of(settings)
        ta, tb = asyncio.create_task(a.run()), asyncio.create_task(b.run())
        await asyncio.sleep(1.5)
        assert [a.leading, b.leading].count(True) == 1
        leader, other = (ta, b) if a.leading else (tb, a)
        leader.cancel()
        await asyncio.gather(leader, return_exceptions=True)
        for _ in range(50):
            if other.leading:
                break
            await asyncio.sleep(0.1)
        assert other.leading
        for task in (ta, tb):
            task.cancel()
        await asyncio.gather(ta, tb, return_exceptions=True)

    asyncio.run(scenario())


def test_rules_and_alerts_api_and_a_reload_that_fails_keeps_the_rules(
    settings: Settings, worker: Worker, tmp_path: Path
) -> None:
    send_load(settings, worker, {"a1": 2.0})
    asyncio.run(run_for(evaluator_of(settings), 1.6))
    app = create_app(
        settings.model_copy(update={"rules_evaluate": False, "api_admin_key": SecretStr("adm")})
    )
    with TestClient(app, headers={"Authorization": "Bearer adm"}) as client:
        body = client.get("/api/v1/rules").json()
        assert body["status"] == "success", body
        [group] = body["data"]["groups"]
        assert (group["name"], group["interval"]) == ("load", 1.0)
        record, _, alert = group["rules"]
        assert (record["type"], record["health"], record["query"]) == (
            "recording",
            "ok",
            "load1 * 2",
        )
        assert (alert["type"], alert["state"], alert["duration"]) == ("alerting", "pending", 3.0)
        [listed] = alert["alerts"]
        assert listed["labels"] == {"agent_id": "a1", "alertname": "LoadHigh", "severity": "page"}
        assert listed["annotations"] == {"summary": "a1 load is 2"}
        assert listed["value"] == "2e+00"
        only = client.get("/api/v1/rules", params={"type": "record"}).json()["data"]["groups"]
        assert [r["type"] for r in only[0]["rules"]] == ["recording", "recording"]
        assert client.get("/api/v1/alerts").json()["data"]["alerts"] == [listed]

        Path(settings.rule_files).write_text(RULES.replace("for: 3s", "for: 3q"))
        refused = client.post("/-/reload")
        assert refused.status_code == 500
        assert refused.json()["detail"] == (
            f'failed to reload rules: {settings.rule_files}: group "load", rule 3 '
            '(alert LoadHigh): for: not a valid duration string: "3q"'
        )
        assert len(client.get("/api/v1/rules").json()["data"]["groups"][0]["rules"]) == 3
        assert client.post("/-/reload", headers={"Authorization": "Bearer no"}).status_code == 401
        Path(settings.rule_files).write_text(RULES.replace("for: 3s", "for: 4s"))
        assert client.post("/-/reload").status_code == 200
        rules = client.get("/api/v1/rules").json()["data"]["groups"][0]["rules"]
        assert rules[2]["duration"] == 4.0

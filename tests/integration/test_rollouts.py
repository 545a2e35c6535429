"""Staged rollouts with a health gate (issue 18, point 2), end to end: real agent processes, a real
front-end and worker (whose rollout job moves the waves), the API and the CLI.

The canary's host is broken the way a real host is: its kernel's PSI file says something the
pressure collector cannot parse (a mount namespace of its own, where a file is bind-mounted over
/proc/pressure/cpu). A rollout that turns the pressure collector on makes its collector fail, so
the gate stops the rollout at the first wave and gives the canary its settings back; the other
agents are never touched. A harmless rollout reaches every agent, through a pause, a restart of
the worker and a resume.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from fleetpulse.api.app import create_app
from fleetpulse.settings import Settings
from tests.integration.conftest import TOKEN, ingest_env
from tests.integration.test_agent_settings import cli
from tests.processes import fleetpulse_process, free_port, stop, wait_for_port

ADMIN_KEY = "rollout-admin-key"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
SPEED = {
    "FLEETPULSE_HEARTBEAT_INTERVAL_S": "1",
    "FLEETPULSE_ROLLOUT_CHECK_INTERVAL_S": "0.5",
    "FLEETPULSE_LIVENESS_CHECK_INTERVAL_S": "0.5",
}
# Text the pressure collector cannot parse (total= must be a number): a kernel that says so.
BAD_PSI = "some avg10=0.00 avg60=0.00 avg300=0.00 total=garbled\n"


def _can_isolate_mounts() -> bool:
    if shutil.which("unshare") is None or not Path("/proc/pressure/cpu").exists():
        return False
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "true"], capture_output=True, check=False
    )
    return probe.returncode == 0


def agent_ids(prefix: str) -> list[str]:
    """Three ids in the order rollouts put them in (md5 of the id): the first is the canary."""
    return sorted(
        (f"{prefix}-{n}" for n in range(3)), key=lambda a: hashlib.md5(a.encode()).hexdigest()
    )


class Platform:
    def __init__(self, database_url: str, redis_url: str, tmp_path: Path) -> None:
        self.database_url, self.redis_url, self.tmp_path = database_url, redis_url, tmp_path
        self.port = free_port()
        self.env = {
            **ingest_env(database_url, redis_url, self.port),
            **SPEED,
            "FLEETPULSE_API_ADMIN_KEY": ADMIN_KEY,
        }
        self.stack = ExitStack()
        self.worker: subprocess.Popen[bytes] | None = None
        self.api = TestClient(
            create_app(
                Settings(
                    database_url=database_url,
                    redis_url=redis_url,
                    api_admin_key=ADMIN_KEY,
                    heartbeat_interval_s=1,
                )
            ),
            headers=ADMIN,  # the admin key reads too
        )

    def start_worker(self, name: str = "worker") -> None:
        self.worker = self.stack.enter_context(
            fleetpulse_process(["worker"], self.env, self.tmp_path / f"{name}.log")
        )

    def agent(self, agent_id: str, broken_psi: bool = False) -> None:
        state = self.tmp_path / agent_id
        state.mkdir()
        config = state / "agent.yaml"
        config.write_text(
            f"server: {{address: '127.0.0.1:{self.port}', tls: false,"
            f" enrollment_token: {TOKEN}}}\n"
            f"agent: {{id: {agent_id}, collect_interval: 0.5, heartbeat_interval: 1,"
            f" state_dir: '{state}', collectors: [load, memory]}}\n"
        )
        command = [sys.executable, "-m", "fleetpulse", "agent", "--config", str(config)]
        if broken_psi:
            bad = state / "psi-cpu"
            bad.write_text(BAD_PSI)
            command = [
                "unshare", "--mount", "--propagation", "private", "sh", "-c",
                f'mount --bind "{bad}" /proc/pressure/cpu && exec "$@"', "agent", *command,
            ]  # fmt: skip
        log = (self.tmp_path / f"{agent_id}.log").open("wb")
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=os.environ)
        self.stack.callback(lambda: (stop(proc), log.close()))

    def execute(self, sql: str, *params: Any) -> None:
        with psycopg.connect(self.database_url) as conn:
            conn.execute(sql, params)

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.database_url) as conn:
            return conn.execute(sql, params).fetchall()

    def rollout(self, rollout_id: int) -> dict[str, Any]:
        answer = self.api.get(f"/rollouts/{rollout_id}")
        assert answer.status_code == 200, answer.text
        return answer.json()  # type: ignore[no-any-return]


def until(what: str, check: Callable[[], Any], timeout_s: float = 60) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def platform(database_url: str, redis_url: str, tmp_path: Path) -> Iterator[Platform]:
    running = Platform(database_url, redis_url, tmp_path)
    with running.stack, running.api:
        ingest = running.stack.enter_context(
            fleetpulse_process(["ingest"], running.env, tmp_path / "ingest.log")
        )
        wait_for_port(running.port, ingest)
        running.start_worker()
        yield running


def healthy(platform: Platform, ids: list[str]) -> Callable[[], bool]:
    """Every agent online with health samples stored: figures from before exist."""

    def check() -> bool:
        answer = platform.api.get("/agents")
        assert answer.status_code == 200, answer.text
        rows = answer.json()
        online = {a["agent_id"] for a in rows if a["status"] == "online"}
        stored = platform.query(
            "SELECT count(DISTINCT agent_id) FROM series"
            " WHERE agent_id = ANY(%s) AND name = 'agent_collector_errors'",
            ids,
        )[0][0]
        return online >= set(ids) and stored == len(ids)

    return check


@pytest.mark.skipif(
    not os.environ.get("CI") and not _can_isolate_mounts(),
    reason="needs unshare --mount (root) and /proc/pressure to break a canary's host",
)
def test_a_rollout_that_breaks_the_canary_stops_and_reverts_before_the_second_wave(
    platform: Platform,
) -> None:
    canary, *others = ids = agent_ids("psi")
    platform.agent(canary, broken_psi=True)
    for agent_id in others:
        platform.agent(agent_id)
    until("three agents online with figures", healthy(platform, ids))

    plan = platform.api.post(
        "/rollouts",
        json={
            "selector": {"agents": ids},
            "settings": {"collectors": ["load", "memory", "pressure"]},
            "waves": [1, "100%"],
            "dry_run": True,
        },
        headers=ADMIN,
    )
    assert plan.status_code == 200, plan.text
    assert [w["agents"] for w in plan.json()["waves"]] == [[canary], others]

    created = platform.api.post(
        "/rollouts",
        json={
            "selector": {"agents": ids},
            "settings": {"collectors": ["load", "memory", "pressure"]},
            "waves": [1, "100%"],
            "soak_s": 3,
        },
        headers=ADMIN,
    )
    assert created.status_code == 201, created.text
    rollout_id = created.json()["id"]
    # one rollout per agent: a second one over the same agents is refused while this one runs
    second = platform.api.post(
        "/rollouts",
        json={"selector": {"agents": others}, "settings": {"collect_interval_s": 2}},
        headers=ADMIN,
    )
    assert second.status_code == 409, second.text
    assert f"in rollout {rollout_id}" in second.json()["detail"]
    hand = platform.api.put(
        f"/agents/{canary}/config", json={"collect_interval_s": 2}, headers=ADMIN
    )
    assert hand.status_code == 409, hand.text

    failed = until(
        "the rollout to fail",
        lambda: (r := platform.rollout(rollout_id))["state"] == "failed" and r,
    )
    first, second_wave = failed["waves"]
    assert first["state"] == "failed"
    assert canary in first["reason"] and "collectors failing rose from 0 to 1" in first["reason"]
    assert second_wave["state"] == "pending" and second_wave["started_at"] is None
    assert failed["reason"] == first["reason"]

    agents = {a["agent_id"]: a for a in platform.api.get(f"/rollouts/{rollout_id}/agents").json()}
    assert agents[canary]["state"] == "failed"
    assert agents[canary]["before"]["collector_errors"] == 0
    assert agents[canary]["since"]["collector_errors"] == 1
    assert {agents[a]["state"] for a in others} == {"pending"}
    # the others were never given the change; the canary got its settings from before back
    assert (
        platform.query("SELECT agent_id FROM agent_settings WHERE agent_id = ANY(%s)", others) == []
    )
    reverted_version = platform.query(
        "SELECT version, collectors FROM agent_settings WHERE agent_id = %s", canary
    )[0]
    assert reverted_version == (2, None)
    until(
        "the canary to run its own collectors again",
        lambda: (
            platform.query(
                "SELECT settings_version, settings_applied, collectors FROM agents"
                " WHERE agent_id = %s",
                canary,
            )[0]
            == (2, True, ["load", "memory"])
        ),
        timeout_s=20,
    )
    # the audit log: who started it, and that the platform stopped it and why
    entries = platform.api.get("/audit", params={"target": f"rollout:{rollout_id}"}).json()
    assert [(e["action"], e["actor"]) for e in entries] == [
        ("rollout.fail", "platform"),
        ("rollout.create", "key:admin"),
    ]
    assert entries[0]["detail"]["failed"] == {canary: agents[canary]["reason"]}
    # a finished rollout cannot be resumed, and frees its agents
    assert platform.api.post(f"/rollouts/{rollout_id}/resume", headers=ADMIN).status_code == 409
    assert platform.api.put(f"/agents/{canary}/config", json={}, headers=ADMIN).status_code == 200


def test_a_good_rollout_reaches_every_agent_through_pause_restart_and_resume(
    platform: Platform,
) -> None:
    ids = agent_ids("good")
    for agent_id in ids:
        platform.agent(agent_id)
    until("three agents online with figures", healthy(platform, ids))
    platform.execute(
        "INSERT INTO agent_tags (agent_id, tags) SELECT unnest(%s::text[]), %s::jsonb",
        ids,
        '{"ring": "r1"}',
    )

    started = cli(
        ["rollout", "start", "--tag", "ring=r1", "--collect-interval", "1", "--waves", "1,100%",
         "--soak", "2"],
        platform.database_url,
        platform.redis_url,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    rollout_id = int(started.stdout.split()[1])
    paused = cli(["rollout", "pause", str(rollout_id)], platform.database_url, platform.redis_url)
    assert paused.returncode == 0, paused.stderr
    # paused: the canary wave is still checked and passes, the next one does not start
    until(
        "the first wave to pass",
        lambda: platform.rollout(rollout_id)["waves"][0]["state"] == "passed",
    )
    time.sleep(1.5)  # three rounds of the job
    held = platform.rollout(rollout_id)
    assert held["state"] == "paused" and held["waves"][1]["state"] == "pending"

    # the rollout is rows: a new worker process takes it up where they say
    assert platform.worker is not None
    stop(platform.worker)
    platform.start_worker("worker-2")
    resumed = cli(["rollout", "resume", str(rollout_id)], platform.database_url, platform.redis_url)
    assert resumed.returncode == 0, resumed.stderr
    done = until(
        "the rollout to complete",
        lambda: (r := platform.rollout(rollout_id))["state"] == "completed" and r,
    )
    assert [(w["state"], w["agents"], w["passed"]) for w in done["waves"]] == [
        ("passed", 1, 1),
        ("passed", 2, 2),
    ]
    until(
        "every agent to run the new interval",
        lambda: (
            {
                r[0]
                for r in platform.query(
                    "SELECT agent_id FROM agents WHERE agent_id = ANY(%s)"
                    " AND settings_applied AND collect_interval_ms = 1000",
                    ids,
                )
            }
            == set(ids)
        ),
        timeout_s=10,
    )
    shown = cli(
        ["rollout", "show", str(rollout_id), "--agents"], platform.database_url, platform.redis_url
    )
    assert shown.returncode == 0, shown.stderr
    assert "completed" in shown.stdout and shown.stdout.count(" passed") >= 3
    actions = [
        (e["action"], e["actor"].split(":")[0])
        for e in platform.api.get("/audit", params={"target": f"rollout:{rollout_id}"}).json()
    ]
    assert actions == [
        ("rollout.complete", "platform"),
        ("rollout.resume", "cli"),
        ("rollout.pause", "cli"),
        ("rollout.create", "cli"),
    ]
    # abort of a finished rollout is refused, with a one-line reason
    aborted = cli(["rollout", "abort", str(rollout_id)], platform.database_url, platform.redis_url)
    assert aborted.returncode == 2 and "is completed" in aborted.stderr


def test_abort_gives_every_changed_agent_its_previous_settings_back(platform: Platform) -> None:
    ids = agent_ids("abort")
    for agent_id in ids:
        platform.agent(agent_id)
    until("three agents online with figures", healthy(platform, ids))
    platform.execute(  # a setting from before: kept by the rollout, and by the revert
        "INSERT INTO agent_settings (agent_id, version, heartbeat_interval_ms) VALUES (%s, 7, 1000)",
        ids[0],
    )
    created = platform.api.post(
        "/rollouts",
        json={
            "selector": {"agents": ids},
            "settings": {"collect_interval_s": 2},
            "waves": ["100%"],
            "soak_s": 600,
        },
        headers=ADMIN,
    )
    assert created.status_code == 201, created.text
    rollout_id = created.json()["id"]
    until(
        "every agent to apply it",
        lambda: platform.rollout(rollout_id)["waves"][0]["applied"] == 3,
    )
    aborted = platform.api.post(f"/rollouts/{rollout_id}/abort", headers=ADMIN)
    assert aborted.status_code == 200, aborted.text
    assert aborted.json()["state"] == "aborted"
    assert aborted.json()["waves"][0]["reverted"] == 3
    rows = dict(
        (r[0], r[1:])
        for r in platform.query(
            "SELECT agent_id, version, collect_interval_ms, heartbeat_interval_ms"
            " FROM agent_settings WHERE agent_id = ANY(%s)",
            ids,
        )
    )
    assert rows[ids[0]] == (9, None, 1000)
    assert rows[ids[1]] == rows[ids[2]] == (2, None, None)
    until(
        "the agents to run their own interval again",
        lambda: (
            platform.query(
                "SELECT count(*) FROM agents WHERE agent_id = ANY(%s) AND collect_interval_ms = 500",
                ids,
            )[0][0]
            == 3
        ),
        timeout_s=20,
    )

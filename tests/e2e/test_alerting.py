"""Alerts end to end, with Debian's Alertmanager (0.25): a real agent stops, its offline alert
reaches Alertmanager within the rule's ``for`` plus one evaluation interval (judged on the alert's
own timestamps), the agent starts again and the alert resolves there."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect, sync_playwright

from tests.e2e.test_dashboard import CHROMIUM, skip_without_chromium
from tests.e2e.test_up import api_key, get_json, start_up, stop_and_check_no_orphans, wait_until
from tests.processes import free_port, log_tail, wait_for_port

pytestmark = pytest.mark.e2e

ALERTMANAGER = "/usr/bin/prometheus-alertmanager"
AGENT_ID = "alerted-host"
FOR_S, INTERVAL_S = 2.0, 1.0
RULES = f"""
groups:
  - name: e2e-agents
    interval: {INTERVAL_S:g}s
    rules:
      - alert: AgentOffline
        expr: fleetpulse_agent_up == 0
        for: {FOR_S:g}s
        labels:
          severity: critical
        annotations:
          summary: "Agent {{{{ $labels.agent_id }}}} is offline"
"""


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp_path = tmp_path_factory.mktemp("alertmanager")
    if not os.path.exists(ALERTMANAGER):
        if os.environ.get("CI"):
            pytest.fail(f"{ALERTMANAGER} (Debian's prometheus-alertmanager) is not installed")
        pytest.skip("Debian's prometheus-alertmanager is not installed")
    config = tmp_path / "alertmanager.yml"
    config.write_text(
        "route:\n  receiver: log\n  group_wait: 1s\n  group_interval: 1s\nreceivers:\n  - name: log\n"
    )
    port = free_port()
    log = tmp_path / "alertmanager.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                ALERTMANAGER,
                f"--config.file={config}",
                f"--storage.path={tmp_path / 'am-data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--cluster.listen-address=",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(port, proc)  # type: ignore[arg-type]
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
        print(log_tail(log, 20))


def am_alerts(url: str) -> list[dict[str, Any]]:
    """Alertmanager's active alerts (its v2 API leaves resolved ones out)."""
    with urllib.request.urlopen(f"{url}/api/v2/alerts", timeout=5) as response:
        alerts: list[dict[str, Any]] = json.loads(response.read())
    return [a for a in alerts if a["labels"].get("agent_id") == AGENT_ID]


def start_agent(tmp_path: Path, grpc_port: int, token: str) -> subprocess.Popen[bytes]:
    config = tmp_path / "agent.yaml"
    config.write_text(
        "server:\n"
        f'  address: "127.0.0.1:{grpc_port}"\n'
        "agent:\n"
        f"  id: {AGENT_ID}\n"
        "  collect_interval: 1\n"
        "  heartbeat_interval: 0.5\n"
        f"  state_dir: {tmp_path / 'agent-state'}\n"
        "  collectors: [load]\n"
    )
    with (tmp_path / "agent.log").open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "fleetpulse", "agent", "--config", str(config)],
            env={**os.environ, "FLEETPULSE_ENROLLMENT_TOKEN": token},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


@dataclass
class Platform:
    api: str
    key: str
    grpc_port: int
    worker_metrics_port: int
    token: str
    tmp_path: Path


@pytest.fixture(scope="module")
def platform(alertmanager: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """`fleetpulse up` with rules on, Alertmanager configured, and the processes' own metrics
    stored every second."""
    tmp_path = tmp_path_factory.mktemp("platform")
    rules = tmp_path / "rules.yml"
    rules.write_text(RULES)
    worker_metrics_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETPULSE_")}
    env.update(
        FLEETPULSE_RULE_FILES=str(rules),
        FLEETPULSE_RULES_EVALUATE="true",
        FLEETPULSE_ALERTMANAGER_URLS=alertmanager,
        FLEETPULSE_ALERT_RESEND_DELAY_S="2",
        FLEETPULSE_INGEST_METRICS_PORT=str(free_port()),
        FLEETPULSE_WORKER_METRICS_PORT=str(worker_metrics_port),
        FLEETPULSE_SELF_METRICS_INTERVAL_S="1",
    )
    api_port, grpc_port = free_port(), free_port()
    data_dir = tmp_path / "data"
    args = ["--data-dir", str(data_dir), "--api-port", str(api_port), "--grpc-port", str(grpc_port)]
    proc = start_up([*args, "--agents", "0", "--workers", "1"], env, tmp_path / "up.log")
    try:
        wait_for_port(api_port, proc, timeout_s=60)
        yield Platform(
            f"http://127.0.0.1:{api_port}",
            api_key(data_dir),
            grpc_port,
            worker_metrics_port,
            (data_dir / "enrollment_token").read_text().strip(),
            tmp_path,
        )
    finally:
        stop_and_check_no_orphans(proc, 40)


def test_an_offline_agent_alerts_in_alertmanager_and_resolves(
    platform: Platform, alertmanager: str
) -> None:
    api, key, tmp_path = platform.api, platform.key, platform.tmp_path
    agent = start_agent(tmp_path, platform.grpc_port, platform.token)
    try:

        def online() -> bool:
            agents = get_json(f"{api}/agents", key)
            return any(a["agent_id"] == AGENT_ID and a["status"] == "online" for a in agents)

        wait_until(online, 30, "the agent online")
        time.sleep(2 * INTERVAL_S)
        assert am_alerts(alertmanager) == []  # online: nothing alerts

        agent.send_signal(signal.SIGTERM)  # a clean stop: offline at once, with its reason
        agent.wait(15)
        stopped_at = time.time()
        [alert] = wait_until(
            lambda: am_alerts(alertmanager) or None, 30, "the alert in Alertmanager"
        )
        assert alert["labels"] == {
            "alertname": "AgentOffline",
            "agent_id": AGENT_ID,
            "severity": "critical",
        }
        assert alert["annotations"] == {"summary": f"Agent {AGENT_ID} is offline"}
        assert alert["status"]["state"] == "active"
        # startsAt is the evaluation at which it fired: within `for` plus one interval of the
        # stop (and a second for the offline mark to reach PostgreSQL).
        starts = _unix(alert["startsAt"])
        assert starts - stopped_at <= FOR_S + INTERVAL_S + 1.0, (starts, stopped_at)
        assert starts - stopped_at >= FOR_S - INTERVAL_S
        # Prometheus' API of fleetpulse lists it firing, and the rule with it.
        firing = get_json(f"{api}/api/v1/alerts", key)["data"]["alerts"]
        assert [(a["labels"]["agent_id"], a["state"]) for a in firing] == [(AGENT_ID, "firing")]
        check_dashboard_lists_it(api, key)

        agent = start_agent(tmp_path, platform.grpc_port, platform.token)
        wait_until(online, 30, "the agent online again")
        wait_until(lambda: am_alerts(alertmanager) == [], 30, "the alert resolved in Alertmanager")
        assert get_json(f"{api}/api/v1/alerts", key)["data"]["alerts"] == []
    finally:
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            agent.wait(15)


def test_every_process_serves_its_metrics_and_stores_them_as_series(platform: Platform) -> None:
    with urllib.request.urlopen(
        f"http://127.0.0.1:{platform.worker_metrics_port}/metrics", timeout=5
    ) as response:
        worker_text = response.read().decode()
    assert "fleetpulse_worker_chunks_committed_total" in worker_text
    assert 'fleetpulse_queue_oldest_age_seconds{shard="0"}' in worker_text
    request = urllib.request.Request(
        f"{platform.api}/metrics", headers={"Authorization": f"Bearer {platform.key}"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        api_text = response.read().decode()
    assert 'fleetpulse_api_requests_total{method="GET",route="/agents",status="200"}' in api_text
    assert "fleetpulse_rule_evaluator_leading 1.0" in api_text

    def jobs() -> set[str] | None:
        body = get_json(
            f"{platform.api}/api/v1/query?query="
            + urllib.parse.quote('count by (job, instance) ({job=~"fleetpulse-.*"})'),
            platform.key,
        )
        got = {r["metric"]["job"] for r in body["data"]["result"]}
        return got if len(got) == 3 else None

    assert wait_until(jobs, 30, "the three roles' own series") == {
        "fleetpulse-ingest",
        "fleetpulse-worker",
        "fleetpulse-api",
    }
    # They belong to no agent: no agent_id label, as a scrape of the platform would show them.
    body = get_json(
        f"{platform.api}/api/v1/query?query=fleetpulse_worker_chunks_committed_total", platform.key
    )
    [series] = body["data"]["result"]
    assert "agent_id" not in series["metric"]
    assert series["metric"]["job"] == "fleetpulse-worker" and float(series["value"][1]) > 0


def check_dashboard_lists_it(base: str, key: str) -> None:
    """The fleet page lists the firing alert with a link to its host, whose page lists it too."""
    skip_without_chromium()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"]
        )
        try:
            page = browser.new_context().new_page()
            page.set_default_timeout(15_000)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{base}/login?next=%2Fui%2F")
            page.fill("#key", key)
            page.click("button[type=submit]")
            page.wait_for_url(f"{base}/ui/")
            item = page.locator("#alerts li[data-alertname=AgentOffline]")
            expect(page.locator("#alerts")).to_be_visible()
            expect(page.locator("#alert-count")).to_have_text("1")
            expect(item).to_contain_text(f"Agent {AGENT_ID} is offline")
            expect(item.locator(".badge")).to_have_text("critical")
            item.locator("a").click()
            page.wait_for_url(f"{base}/ui/host?agent={AGENT_ID}")
            expect(page.locator("#alerts li[data-alertname=AgentOffline]")).to_contain_text(
                f"Agent {AGENT_ID} is offline"
            )
            assert errors == []
        finally:
            browser.close()


def _unix(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()

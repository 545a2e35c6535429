"""The dashboard in a real browser: `fleetpulse up --agents 2`, headless Chromium, login to charts.

Drives Debian's Chromium (``/usr/bin/chromium``, or ``FLEETPULSE_TEST_CHROMIUM``) through the
``playwright`` package without ``playwright install``. Screenshots of the fleet page, the host
page and the rollouts page are saved under ``test-artifacts/`` at the repository root.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import secrets
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from playwright.sync_api import ConsoleMessage, Page, Request, expect, sync_playwright

from fleetpulse.proto import agent_pb2, agent_pb2_grpc, common_pb2, metric_pb2
from tests.conftest import Backend
from tests.e2e.test_up import api_key, get_json, start_up, stop_and_check_no_orphans, wait_until
from tests.processes import free_port

pytestmark = pytest.mark.e2e

CHROMIUM = Path(os.environ.get("FLEETPULSE_TEST_CHROMIUM", "/usr/bin/chromium"))
ROWS = "#agents tbody tr"


def row_ids(page: Page) -> list[str]:
    return page.eval_on_selector_all(ROWS, "rows => rows.map(r => r.dataset.agentId)")


def wait_for_rows(page: Page, expected: list[str], timeout_s: float = 10) -> None:
    """Until the table shows exactly these agents in this order."""
    page.wait_for_function(
        "ids => JSON.stringify([...document.querySelectorAll('#agents tbody tr')]"
        ".map(r => r.dataset.agentId)) === JSON.stringify(ids)",
        arg=expected,
        timeout=timeout_s * 1000,
    )


def skip_without_chromium() -> None:
    # Under CI (which installs chromium) a missing browser is a failure, not a skip.
    if not CHROMIUM.exists() and not os.environ.get("CI"):
        pytest.skip(
            f"no Chromium at {CHROMIUM} (apt-get install chromium, or set FLEETPULSE_TEST_CHROMIUM)"
        )


def platform_env(backend: Backend, request: pytest.FixtureRequest) -> dict[str, str]:
    """The environment `fleetpulse up` runs in: only the test's own FLEETPULSE_ settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETPULSE_")}
    if backend.name == "external":
        env["FLEETPULSE_DATABASE_URL"] = request.getfixturevalue("database_url")
        env["FLEETPULSE_REDIS_URL"] = request.getfixturevalue("redis_url")
    env["FLEETPULSE_INGEST_METRICS_PORT"] = str(free_port())
    return env


def raw_request(
    base: str, method: str, path: str, body: str | None = None, key: str | None = None
) -> tuple[int, dict[str, str]]:
    """One request, redirects not followed: (status, lower-cased headers)."""
    connection = http.client.HTTPConnection(base.removeprefix("http://"), timeout=5)
    headers = {"Content-Type": "application/x-www-form-urlencoded"} if body is not None else {}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}
    finally:
        connection.close()


def post_json(url: str, body: Any, key: str) -> tuple[int, Any]:
    """POST a JSON body with a key: (status, the JSON answer)."""
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, json.loads(response.read())


def check_pages_and_login_over_http(base: str, key: str) -> None:
    """What the browser part does not see: redirects, the assets' key, no open redirect."""
    status, headers = raw_request(base, "GET", "/ui/host?agent=a%201")
    assert (status, headers["location"]) == (303, "/login?next=%2Fui%2Fhost%3Fagent%3Da%25201")
    status, headers = raw_request(base, "GET", "/ui/rollouts")
    assert (status, headers["location"]) == (303, "/login?next=%2Fui%2Frollouts")
    for page in ("/ui/", "/ui/rollouts"):
        status, headers = raw_request(base, "GET", page, key=key)
        assert status == 200 and "script-src 'self'" in headers["content-security-policy"], page
    assert raw_request(base, "GET", "/ui/static/app.js")[0] == 401  # assets need the key too
    status, headers = raw_request(base, "GET", "/ui/static/vendor/uPlot.iife.min.js", key=key)
    assert status == 200 and headers["content-type"].startswith("text/javascript")
    for path in ("/ui/static/../ui.py", "/ui/static/%2e%2e/ui.py", "/ui/static/vendor/LICENSE"):
        assert raw_request(base, "GET", path, key=key)[0] == 404, path
    form = f"key={urllib.parse.quote(key)}&next=//evil.example/ui/"
    status, headers = raw_request(base, "POST", "/login", body=form)
    assert (status, headers["location"]) == (303, "/ui/")  # never off this server
    assert "httponly" in headers["set-cookie"].lower()
    status, headers = raw_request(base, "POST", "/login", body=f"key={key}x&next=/ui/")
    assert status == 401 and "set-cookie" not in headers


def test_vendored_uplot_matches_vendored_md(repo_root: Path) -> None:
    """The vendored files are the ones VENDORED.md names (an edit or an update without it fails)."""
    vendor = repo_root / "api" / "static" / "vendor"
    doc = (vendor / "VENDORED.md").read_text()
    assert "| version | **1.6.32** (exact) |" in doc
    listed = dict(re.findall(r"^\| `([^`]+)` \| `[^`]+` \| `([0-9a-f]{64})` \|$", doc, re.M))
    assert set(listed) == {"uPlot.iife.min.js", "uPlot.min.css", "LICENSE"}
    for name, digest in listed.items():
        assert hashlib.sha256((vendor / name).read_bytes()).hexdigest() == digest, name
    assert (
        (vendor / "uPlot.iife.min.js")
        .read_text()
        .startswith("/*! https://github.com/leeoniya/uPlot (v1.6.32) */")
    )


def x_axis(page: Page, chart: str) -> dict[str, float]:
    """The x scale uPlot drew a chart with, and the first x of its data (Unix seconds)."""
    return page.evaluate(
        "name => { const u = window.fleetpulseCharts.get(name).plot;"
        " return {min: u.scales.x.min, max: u.scales.x.max,"
        " first: u.data[0][0]}; }",
        chart,
    )


def legend(page: Page, chart: str) -> list[str]:
    labels = page.locator(f".chart[data-chart='{chart}'] .u-legend .u-series .u-label")
    return labels.all_inner_texts()[1:]  # the first is the time axis


def test_dashboard_fleet_and_host_pages_in_chromium(
    backend: Backend, request: pytest.FixtureRequest, tmp_path: Path, repo_root: Path
) -> None:
    skip_without_chromium()
    env = platform_env(backend, request)
    # A read key and an admin key (to start a rollout); with an admin key set, `up` generates
    # no read key of its own.
    key, admin_key = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    env["FLEETPULSE_API_KEYS"] = key
    env["FLEETPULSE_API_ADMIN_KEY"] = admin_key
    env["FLEETPULSE_ROLLOUT_CHECK_INTERVAL_S"] = "0.5"
    api_port, grpc_port = free_port(), free_port()
    data_dir = tmp_path / "data"
    base = f"http://127.0.0.1:{api_port}"
    artifacts = repo_root / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    fleet_png = artifacts / f"dashboard-fleet-{backend.name}.png"
    host_png = artifacts / f"dashboard-host-{backend.name}.png"
    rollouts_png = artifacts / f"dashboard-rollouts-{backend.name}.png"
    for old in (fleet_png, host_png, rollouts_png):
        old.unlink(missing_ok=True)

    proc = start_up(
        [
            *("--data-dir", str(data_dir), "--api-port", str(api_port)),
            *("--grpc-port", str(grpc_port), "--agents", "2"),
            *("--collect-interval", "1", "--heartbeat-interval", "1"),
        ],
        env,
        tmp_path / "up.log",
    )
    try:

        def two_online_with_cpu() -> list[dict[str, Any]] | None:
            agents = get_json(f"{base}/agents", key)
            ok = len(agents) == 2 and all(
                a["status"] == "online" and a["cpu_percent"] is not None for a in agents
            )
            return agents if ok else None

        agents = wait_until(two_online_with_cpu, 45, "2 online agents with a CPU value")
        ids = sorted(a["agent_id"] for a in agents)
        check_pages_and_login_over_http(base, key)

        # A staged rollout over both agents (one, then the rest), moving while the pages below
        # are checked; the rollouts page is checked last. Up's agents collect every second.
        status, started = post_json(
            f"{base}/rollouts",
            {
                "selector": {"all": True},
                "settings": {"collect_interval_s": 2},
                "waves": [1, "100%"],
                "soak_s": 1,
            },
            admin_key,
        )
        assert status == 201, started
        assert started["agents"] == 2 and started["state"] == "running", started
        assert [(w["step"], w["agents"]) for w in started["waves"]] == [("1", 1), ("100%", 1)]
        rollout_id = started["id"]

        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"]
            )
            try:
                context = browser.new_context(viewport={"width": 1400, "height": 900})
                page = context.new_page()
                page.set_default_timeout(15_000)
                errors: list[str] = []
                elsewhere: list[str] = []
                page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))

                def on_console(message: ConsoleMessage) -> None:
                    # The refused login's 401 is the one error the browser is expected to log.
                    refused_login = (
                        "401" in message.text and message.location["url"] == f"{base}/login"
                    )
                    if message.type == "error" and not refused_login:
                        errors.append(f"console: {message.text} at {message.location}")

                def on_request(req: Request) -> None:
                    if not req.url.startswith(base + "/") and not req.url.startswith("data:"):
                        elsewhere.append(req.url)

                page.on("console", on_console)
                page.on("request", on_request)

                # No cookie: / → /ui/ → the login form (not a bare 401).
                page.goto(f"{base}/")
                assert page.url == f"{base}/login?next=%2Fui%2F"
                # A wrong key is refused with 401 and the form again.
                page.fill("#key", "not-the-key")
                with page.expect_response(
                    lambda r: r.url.startswith(f"{base}/login") and r.request.method == "POST"
                ) as refused:
                    page.click("button[type=submit]")
                assert refused.value.status == 401
                expect(page.locator(".error")).to_contain_text("not a configured API key")
                assert not [c for c in context.cookies() if c["name"] == "fleetpulse_key"]
                # The right key: an HttpOnly, SameSite=Strict cookie and the fleet page.
                page.fill("#key", key)
                page.click("button[type=submit]")
                page.wait_for_url(f"{base}/ui/")
                (cookie,) = [c for c in context.cookies() if c["name"] == "fleetpulse_key"]
                assert cookie["httpOnly"] and cookie["sameSite"] == "Strict", cookie
                assert cookie["path"] == "/"
                assert "fleetpulse_key" not in page.evaluate("document.cookie")

                # Fleet page: both agents online, each with a CPU and a memory value.
                wait_for_rows(page, ids, timeout_s=15)
                page.wait_for_function(
                    "() => [...document.querySelectorAll('#agents tbody tr')].every(r =>"
                    " r.querySelector('.status').textContent === 'online'"
                    " && r.querySelector('.cpu').dataset.value !== ''"
                    " && r.querySelector('.memory').dataset.value !== '')"
                )
                # One snapshot of the table (it is re-rendered every 5 s).
                rows = page.eval_on_selector_all(
                    ROWS,
                    """rows => rows.map(r => Object.fromEntries(
                        ['hostname', 'status', 'os', 'version', 'last-seen', 'cpu', 'memory']
                        .map(c => [c, r.querySelector('.' + c).textContent])
                        .concat([['id', r.dataset.agentId],
                                 ['cpu_value', r.querySelector('.cpu').dataset.value],
                                 ['memory_value', r.querySelector('.memory').dataset.value]])))""",
                )
                by_id = {a["agent_id"]: a for a in agents}
                assert [r["id"] for r in rows] == ids
                for row in rows:
                    agent = by_id[row["id"]]
                    assert row["hostname"] == agent["hostname"]
                    assert row["status"] == "online"
                    assert row["os"] == f"{agent['os']} / {agent['arch']}"
                    assert row["version"] == agent["version"]
                    assert re.fullmatch(r"\d+ s ago", row["last-seen"]), row
                    cpu, memory = float(row["cpu_value"]), float(row["memory_value"])
                    assert 0 <= cpu <= 100 and 0 < memory < 100, row
                    for column, value in (("cpu", cpu), ("memory", memory)):
                        shown = re.fullmatch(r"(\d+\.\d) %", row[column])
                        assert shown and abs(float(shown[1]) - value) <= 0.051, row
                expect(page.locator("#sum-total")).to_have_text("2")
                expect(page.locator("#sum-status")).to_contain_text("2 online")
                expect(page.locator("#sum-changes")).to_contain_text("online: registered")
                expect(page.locator("#page-info")).to_have_text("1\u20132 of 2")
                expect(page.locator("#nav-rollouts")).to_have_attribute("href", "/ui/rollouts")

                # Sorting (server-side): agent descending, then CPU descending.
                agent_header = page.locator("th[data-sort='agent_id']")
                expect(agent_header).to_have_attribute("aria-sort", "ascending")
                agent_header.click()
                wait_for_rows(page, ids[::-1])
                expect(agent_header).to_have_attribute("aria-sort", "descending")
                assert "sort=-agent_id" in page.url
                page.locator("th[data-sort='cpu_percent']").click()
                expect(page.locator("th[data-sort='cpu_percent']")).to_have_attribute(
                    "aria-sort", "descending"
                )
                page.wait_for_function("() => location.search.includes('sort=-cpu_percent')")
                page.wait_for_function(
                    "() => { const v = [...document.querySelectorAll('#agents tbody tr .cpu')]"
                    ".map(c => Number(c.dataset.value)); return v.length === 2 && v[0] >= v[1]; }"
                )
                page.locator("th[data-sort='agent_id']").click()
                wait_for_rows(page, ids)

                # Filtering: one agent by id, then by status.
                page.fill("#filter", ids[1])
                wait_for_rows(page, [ids[1]])
                expect(page.locator("#page-info")).to_have_text("1\u20131 of 1")
                page.fill("#filter", "")
                wait_for_rows(page, ids)
                page.select_option("#status-filter", "offline")
                wait_for_rows(page, [])
                expect(page.locator("#empty")).to_be_visible()
                page.select_option("#status-filter", "")
                wait_for_rows(page, ids)

                # Tags: an operator tags one agent (the CLI, through the data dir); the summary
                # counts it, a click on its chip or the tag filter narrows the page to it.
                tagged = subprocess.run(
                    [sys.executable, "-m", "fleetpulse", "agents", "tag", ids[0], "role=db"],
                    env={**env, "FLEETPULSE_DATA_DIR": str(data_dir)},
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
                assert tagged.returncode == 0, tagged.stderr
                expect(page.locator("#sum-tags")).to_contain_text("1 role=db", timeout=15_000)
                expect(page.locator(f"{ROWS}[data-agent-id='{ids[0]}'] .tags")).to_have_text(
                    "role=db"
                )
                page.locator("#sum-tags .chip", has_text="role=db").click()
                wait_for_rows(page, [ids[0]])
                assert "tag=role%3Ddb" in page.url
                expect(page.locator("#tag-filter")).to_have_value("role=db")
                expect(page.locator("#sum-total")).to_have_text("1")
                page.fill("#tag-filter", "role=web")
                wait_for_rows(page, [])
                page.fill("#tag-filter", "")
                wait_for_rows(page, ids)
                expect(page.locator("#sum-total")).to_have_text("2")

                # Live: a refresh without reloading brings a newer heartbeat.
                stamp = page.locator("#refreshed-at")
                refreshes = int(stamp.get_attribute("data-refreshes") or "0")
                last_seen = page.locator(f"{ROWS}[data-agent-id='{ids[0]}'] .last-seen")
                heartbeat = last_seen.get_attribute("data-ts")
                page.evaluate("window.__sameDocument = true")
                page.wait_for_function(
                    "([n, id, ts]) => Number(document.getElementById('refreshed-at')"
                    ".dataset.refreshes) > n && document.querySelector("
                    "`#agents tbody tr[data-agent-id='${id}'] .last-seen`).dataset.ts !== ts",
                    arg=[refreshes, ids[0], heartbeat],
                    timeout=15_000,
                )
                assert page.evaluate("window.__sameDocument") is True  # not a reload
                wait_for_rows(page, ids)
                page.screenshot(path=str(fleet_png), full_page=True)

                # Host page: header and the charts over the last 15 minutes.
                page.locator(f"{ROWS}[data-agent-id='{ids[0]}'] a").click()
                page.wait_for_url(f"{base}/ui/host?agent={ids[0]}*")
                expect(page.locator("#agent-id")).to_have_text(ids[0])
                expect(page.locator("#agent-status")).to_have_text("online")
                # Its tags, and the audit log of the tag the operator set above (the agent's
                # enrollment too: up's agents enroll with the token).
                expect(page.locator("#agent-facts")).to_contain_text("role=db")
                tagging = page.locator("#actions tr[data-action='tags.change']")
                expect(tagging.locator(".actor")).to_have_text(re.compile(r"^cli:"))
                expect(tagging.locator(".detail")).to_have_text('{"patch":{"role":"db"}}')
                expect(page.locator("#actions tr[data-action='agent.enroll'] .actor")).to_have_text(
                    "enrollment-token"
                )
                # Its liveness history: it registered and is online
                registered = page.locator("#liveness tr[data-cause='registered']").first
                expect(registered.locator(".state")).to_have_text("online")
                # Its series against its series budget (the default)
                expect(page.locator("#series-budget")).to_have_text(
                    re.compile(r"^[\d,]+ of a budget of 10,000$")
                )
                page.click("#ranges button[data-range='900']")
                expect(page.locator("#ranges button[data-range='900']")).to_have_attribute(
                    "aria-pressed", "true"
                )
                charts = ["cpu", "memory", "disk", "network"]
                page.wait_for_function(
                    "names => names.every(n => Number(document.querySelector("
                    "`.chart[data-chart='${n}']`).dataset.points) > 0)",
                    arg=charts,
                    timeout=30_000,
                )
                # Agents seconds old: the x axis starts at their first point, not 15 minutes back.
                axis = x_axis(page, "cpu")
                assert axis["max"] - axis["min"] < 900 - 60, axis
                assert axis["min"] <= axis["first"], axis
                expect(page.locator("#range-info")).to_contain_text(
                    "the agent is younger than the range"
                )
                legends: dict[str, list[str]] = {}
                for name in [*charts, "diskio"]:
                    section = page.locator(f".chart[data-chart='{name}']")
                    if name == "diskio" and section.get_attribute("data-series") == "0":
                        # A machine without block devices the agent reports: said so, no chart.
                        expect(section.locator(".note")).to_contain_text("No such metric")
                        continue
                    canvas = section.locator("canvas")
                    expect(canvas).to_have_count(1)
                    box = canvas.bounding_box()
                    assert box is not None and box["width"] > 200 and box["height"] > 100, box
                    legends[name] = legend(page, name)
                    assert legends[name], f"{name}: no series in the legend"
                assert {"user", "system", "idle"} <= set(legends["cpu"]), legends["cpu"]
                assert {"total", "used", "available", "cached"} <= set(legends["memory"])
                assert all(label.startswith("/") for label in legends["disk"]), legends["disk"]
                directions = {label.rsplit(" ", 1)[-1] for label in legends["network"]}
                assert directions == {"rx", "tx"}, legends["network"]
                # The legend (no cursor on the chart) shows each line's latest value.
                cpu_user = page.locator(".chart[data-chart='cpu'] .u-legend .u-series").nth(1)
                expect(cpu_user.locator(".u-value")).to_have_text(re.compile(r"^\d+(\.\d+)? %$"))
                page.screenshot(path=str(host_png), full_page=True)

                # Rollouts page, from the host page's header: the rollout started above ends
                # completed, both its waves passed (the first one agent, then the other).
                page.click("#nav-rollouts")
                page.wait_for_url(f"{base}/ui/rollouts")
                expect(page.locator("#readonly-note")).to_contain_text("Read only")
                card = page.locator(f".rollout[data-rollout-id='{rollout_id}']")
                expect(card).to_have_attribute("data-state", "completed", timeout=60_000)
                expect(card.locator(".rollout-state")).to_have_text("completed")
                expect(card.locator(".wave-of")).to_have_text("wave 2 of 2")
                expect(card.locator(".agent-count")).to_have_text("2 agents")
                expect(card.locator(".selector")).to_have_text("all agents")
                expect(card.locator(".settings")).to_have_text("collect_interval_s: 2")
                expect(card.locator(".rollout-reason")).to_have_count(0)
                expect(card.locator(".wave")).to_have_count(2)
                for number, step in ((1, "1"), (2, "100%")):
                    wave = card.locator(f".wave[data-wave='{number}']")
                    expect(wave).to_have_attribute("data-state", "passed")
                    expect(wave).to_have_class(re.compile(r"\bstate-passed\b"))
                    expect(wave.locator(".wave-step")).to_have_text(step)
                    expect(wave.locator(".wave-agents")).to_have_text("1 agent")
                    expect(wave.locator(".wave-state")).to_have_text("passed")
                    # Only the counts that are not zero.
                    expect(wave.locator(".wave-counts")).to_have_text("1 passed")
                    expect(wave.locator(".wave-reason")).to_have_count(0)
                    green = wave.evaluate("w => getComputedStyle(w).backgroundColor")
                    assert green == "rgb(220, 252, 231)", green  # --online-bg
                # A click on the rollout shows its agents, each linking to its host page.
                card.locator(".rollout-head h2").click()
                expect(card.locator(".agents-toggle")).to_have_attribute("aria-expanded", "true")
                agent_rows = card.locator(".rollout-agents tbody tr")
                expect(agent_rows).to_have_count(2)
                listed = agent_rows.evaluate_all(
                    "rows => rows.map(r => ({id: r.dataset.agentId, state: r.dataset.state,"
                    " wave: r.dataset.wave, badge: r.querySelector('.state').textContent,"
                    " href: r.querySelector('a').getAttribute('href'),"
                    " errors: r.querySelector('.collector-errors').dataset.since}))"
                )
                assert sorted(r["id"] for r in listed) == ids, listed
                assert sorted(r["wave"] for r in listed) == ["1", "2"], listed
                for row in listed:
                    assert row["state"] == row["badge"] == "passed", row
                    assert row["href"] == f"/ui/host?agent={urllib.parse.quote(row['id'])}", row
                    assert row["errors"] != "", row  # its figures since the change are shown
                assert f"open={rollout_id}" in page.url
                # The rollout as the API has it: what the page showed.
                shown = get_json(f"{base}/rollouts/{rollout_id}", key)
                assert shown["state"] == "completed", shown
                assert [w["state"] for w in shown["waves"]] == ["passed", "passed"], shown
                page.screenshot(path=str(rollouts_png), full_page=True)
                # A second click hides them again.
                card.locator(".agents-toggle").click()
                expect(card.locator(".rollout-agents")).to_have_count(0)
                expect(card.locator(".agents-toggle")).to_have_attribute("aria-expanded", "false")

                assert not errors, errors
                assert not elsewhere, f"requests to other origins: {elsewhere}"
            finally:
                browser.close()
        stop_and_check_no_orphans(proc, timeout_s=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    print(f"screenshots: {fleet_png} {host_png} {rollouts_png}")


REPLAYED = "replayed-agent"
HISTORY_S = 600
EVERY_S = 10
CPU_BUSY_PERCENT = 25.0


def replay_history(address: str, token: str) -> tuple[int, int]:
    """An agent that collected for HISTORY_S while the platform was out of its reach, sends it all
    on its first connection and is gone: registered now, its first point HISTORY_S back, offline.
    Of its two interfaces, eth0 moves bytes and docker0 (a bridge nothing used) never does.

    Returns the first point's time (Unix seconds) and the number of points sent."""
    now = int(time.time())
    stamps = range(now - HISTORY_S, now + 1, EVERY_S)
    points = []
    for i, ts in enumerate(stamps):
        at = common_pb2.Timestamp(seconds=ts)
        values: list[tuple[str, float, dict[str, str]]] = [
            ("cpu_usage_percent", CPU_BUSY_PERCENT - 5, {"mode": "user"}),
            ("cpu_usage_percent", 5.0, {"mode": "system"}),
            ("cpu_usage_percent", 100.0 - CPU_BUSY_PERCENT, {"mode": "idle"}),
            ("memory_bytes", 8 * 2.0**30, {"state": "total"}),
            ("memory_bytes", 6 * 2.0**30, {"state": "available"}),
        ]
        for direction in ("rx", "tx"):
            values.append(
                ("net_bytes_total", 1e6 + i * 50_000, {"interface": "eth0", "direction": direction})
            )
            values.append(
                ("net_bytes_total", 4096.0, {"interface": "docker0", "direction": direction})
            )
        points += [
            metric_pb2.MetricPoint(name=name, value=value, timestamp=at, labels=labels)
            for name, value, labels in values
        ]
    messages = [
        agent_pb2.AgentMessage(
            register=agent_pb2.AgentRegister(
                agent_id=REPLAYED, hostname="replayed-host", os="linux", arch="x86_64", version="t"
            )
        ),
        agent_pb2.AgentMessage(
            heartbeat=agent_pb2.Heartbeat(
                agent_id=REPLAYED, timestamp=common_pb2.Timestamp(seconds=now)
            )
        ),
        agent_pb2.AgentMessage(
            metrics=metric_pb2.MetricBatch(agent_id=REPLAYED, metrics=points, epoch=1, sequence=1)
        ),
    ]
    with grpc.insecure_channel(address) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        # The request stream ends after the batch: the agent disconnects once it is acknowledged.
        responses = list(
            stub.Connect(
                iter(messages), metadata=(("authorization", f"Bearer {token}"),), timeout=20
            )
        )
    (ack,) = [r.metric_ack for r in responses if r.WhichOneof("message") == "metric_ack"]
    assert ack.success, ack
    return stamps[0], len(points)


def test_dashboard_offline_young_agent_and_idle_interfaces_in_chromium(
    backend: Backend, request: pytest.FixtureRequest, tmp_path: Path, repo_root: Path
) -> None:
    """What a user meets with an agent that is gone, one younger than the range, and interfaces
    that carried nothing: a grey last value and since when, an axis from the agent's first point,
    and a legend of the interfaces that moved until the idle ones are asked for."""
    skip_without_chromium()
    env = platform_env(backend, request)
    api_port, grpc_port = free_port(), free_port()
    data_dir = tmp_path / "data"
    base = f"http://127.0.0.1:{api_port}"
    artifacts = repo_root / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    fleet_png = artifacts / f"dashboard-offline-{backend.name}.png"
    host_png = artifacts / f"dashboard-young-host-{backend.name}.png"
    idle_png = artifacts / f"dashboard-idle-shown-{backend.name}.png"
    for old in (fleet_png, host_png, idle_png):
        old.unlink(missing_ok=True)

    proc = start_up(
        [
            *("--data-dir", str(data_dir), "--api-port", str(api_port)),
            *("--grpc-port", str(grpc_port), "--agents", "1"),
            *("--collect-interval", "1", "--heartbeat-interval", "1"),
        ],
        env,
        tmp_path / "up.log",
    )
    try:

        def one_online_with_cpu() -> list[dict[str, Any]] | None:
            agents = get_json(f"{base}/agents", api_key(data_dir))
            ok = len(agents) == 1 and agents[0]["status"] == "online"
            return agents if ok and agents[0]["cpu_percent"] is not None else None

        (live,) = wait_until(one_online_with_cpu, 45, "1 online agent with a CPU value")
        token = (data_dir / "enrollment_token").read_text().strip()
        first_ts, sent = replay_history(f"127.0.0.1:{grpc_port}", token)
        key = api_key(data_dir)

        def replayed_stored_and_offline() -> dict[str, Any] | None:
            agent = get_json(f"{base}/agents/{REPLAYED}", key)
            ok = agent["status"] == "offline" and agent["points_committed"] == sent
            return agent if ok and agent["cpu_percent"] is not None else None

        gone = wait_until(replayed_stored_and_offline, 30, "the replayed agent stored and offline")
        assert gone["cpu_percent"] == CPU_BUSY_PERCENT  # its last value, still within 5 minutes

        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"]
            )
            try:
                page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
                page.set_default_timeout(15_000)
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
                page.on(
                    "console",
                    lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None,
                )
                page.goto(f"{base}/login?next=%2Fui%2F")
                page.fill("#key", key)
                page.click("button[type=submit]")
                page.wait_for_url(f"{base}/ui/")

                # Fleet page: the offline agent's CPU bar is grey and its row says since when.
                wait_for_rows(page, sorted([live["agent_id"], REPLAYED]), timeout_s=15)
                offline_row = page.locator(f"{ROWS}[data-agent-id='{REPLAYED}']")
                online_row = page.locator(f"{ROWS}[data-agent-id='{live['agent_id']}']")
                expect(offline_row.locator(".status .badge")).to_have_text("offline")
                since = offline_row.locator(".status .status-since")
                expect(since).to_have_text(re.compile(r"^since \d{1,2}:\d{2}"))
                # When and why it went offline, as recorded (its stream closed without a goodbye)
                shown_since = datetime.fromisoformat(since.get_attribute("data-ts") or "")
                assert shown_since == datetime.fromisoformat(gone["status_since"])
                assert since.get_attribute("data-cause") == gone["status_cause"] == "stream_closed"
                expect(offline_row.locator(".status")).to_contain_text("offline since")
                offline_cpu = offline_row.locator(".cpu")
                expect(offline_cpu).to_have_class(re.compile(r"\bstale\b"))
                # Its last value stays readable (what the host was doing when it went).
                expect(offline_cpu).to_have_text(f"{CPU_BUSY_PERCENT:.1f} %")
                expect(offline_cpu).to_have_attribute("title", re.compile("not live"))
                expect(online_row.locator(".cpu")).not_to_have_class(re.compile(r"\bstale\b"))
                expect(online_row.locator(".status .status-since")).to_have_count(0)

                def bar_color(row: Any) -> str:
                    return row.locator(".cpu .bar").evaluate(
                        "bar => getComputedStyle(bar).backgroundColor"
                    )

                grey, live_blue = bar_color(offline_row), bar_color(online_row)
                assert grey == "rgb(209, 213, 219)", grey  # --stale-bar
                assert live_blue == "rgb(147, 197, 253)", live_blue  # --bar
                page.screenshot(path=str(fleet_png), full_page=True)

                # Host page over the default hour: the agent registered a moment ago with ten
                # minutes of history, so every chart's x axis starts at its first point.
                offline_row.locator("a").click()
                page.wait_for_url(f"{base}/ui/host?agent={REPLAYED}*")
                expect(page.locator("#ranges button[data-range='3600']")).to_have_attribute(
                    "aria-pressed", "true"
                )
                page.wait_for_function(
                    "names => names.every(n => Number(document.querySelector("
                    "`.chart[data-chart='${n}']`).dataset.points) > 0)",
                    arg=["cpu", "memory", "network"],
                    timeout=30_000,
                )
                for chart in ("cpu", "memory", "network"):
                    axis = x_axis(page, chart)
                    range_start = axis["max"] - 3600
                    assert range_start < first_ts - EVERY_S, (chart, axis, first_ts)
                    # Not the range's start, but its first point's step (the query's windows are
                    # labelled by their start), with the whole history on show.
                    assert first_ts - EVERY_S <= axis["min"] <= first_ts, (chart, axis, first_ts)
                    assert axis["min"] <= axis["first"], (chart, axis)
                expect(page.locator("#range-info")).to_contain_text(
                    "the agent is younger than the range"
                )

                # Network: docker0 stayed at 0, so it is not in the legend until asked for.
                assert legend(page, "network") == ["eth0 rx", "eth0 tx"]
                toggle = page.locator(".chart[data-chart='network'] .idle-toggle")
                expect(toggle).to_be_visible()
                expect(toggle).to_have_text("show 1 idle interface")
                expect(toggle).to_have_attribute("aria-pressed", "false")
                page.screenshot(path=str(host_png), full_page=True)
                toggle.click()
                expect(toggle).to_have_text("hide 1 idle interface")
                expect(toggle).to_have_attribute("aria-pressed", "true")
                assert legend(page, "network") == ["docker0 rx", "docker0 tx", "eth0 rx", "eth0 tx"]
                page.locator(".chart[data-chart='network']").screenshot(path=str(idle_png))
                toggle.click()
                expect(toggle).to_have_text("show 1 idle interface")
                assert legend(page, "network") == ["eth0 rx", "eth0 tx"]

                assert not errors, errors
            finally:
                browser.close()
        stop_and_check_no_orphans(proc, timeout_s=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    print(f"screenshots: {fleet_png} {host_png} {idle_png}")

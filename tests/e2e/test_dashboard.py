"""The dashboard in a real browser: `fleetpulse up --agents 2`, headless Chromium, login to charts.

Drives Debian's Chromium (``/usr/bin/chromium``, or ``FLEETPULSE_TEST_CHROMIUM``) through the
``playwright`` package without ``playwright install``. Screenshots of the fleet page and the host
page are saved under ``test-artifacts/`` at the repository root.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import ConsoleMessage, Page, Request, expect, sync_playwright

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


def check_pages_and_login_over_http(base: str, key: str) -> None:
    """What the browser part does not see: redirects, the assets' key, no open redirect."""
    status, headers = raw_request(base, "GET", "/ui/host?agent=a%201")
    assert (status, headers["location"]) == (303, "/login?next=%2Fui%2Fhost%3Fagent%3Da%25201")
    status, headers = raw_request(base, "GET", "/ui/", key=key)
    assert status == 200 and "script-src 'self'" in headers["content-security-policy"]
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


def test_dashboard_fleet_and_host_pages_in_chromium(
    backend: Backend, request: pytest.FixtureRequest, tmp_path: Path, repo_root: Path
) -> None:
    # Under CI (which installs chromium) a missing browser is a failure, not a skip.
    if not CHROMIUM.exists() and not os.environ.get("CI"):
        pytest.skip(
            f"no Chromium at {CHROMIUM} (apt-get install chromium, or set FLEETPULSE_TEST_CHROMIUM)"
        )
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETPULSE_")}
    if backend.name == "external":
        env["FLEETPULSE_DATABASE_URL"] = request.getfixturevalue("database_url")
        env["FLEETPULSE_REDIS_URL"] = request.getfixturevalue("redis_url")
    env["FLEETPULSE_INGEST_METRICS_PORT"] = str(free_port())
    api_port, grpc_port = free_port(), free_port()
    data_dir = tmp_path / "data"
    base = f"http://127.0.0.1:{api_port}"
    artifacts = repo_root / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    fleet_png = artifacts / f"dashboard-fleet-{backend.name}.png"
    host_png = artifacts / f"dashboard-host-{backend.name}.png"
    for old in (fleet_png, host_png):
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
            agents = get_json(f"{base}/agents", api_key(data_dir))
            ok = len(agents) == 2 and all(
                a["status"] == "online" and a["cpu_percent"] is not None for a in agents
            )
            return agents if ok else None

        agents = wait_until(two_online_with_cpu, 45, "2 online agents with a CPU value")
        ids = sorted(a["agent_id"] for a in agents)
        key = api_key(data_dir)
        check_pages_and_login_over_http(base, key)

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
                expect(page.locator("#page-info")).to_have_text("1\u20132 of 2")

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
                    labels = section.locator(".u-legend .u-series .u-label").all_inner_texts()
                    legends[name] = labels[1:]  # the first is the time axis
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

                assert not errors, errors
                assert not elsewhere, f"requests to other origins: {elsewhere}"
            finally:
                browser.close()
        stop_and_check_no_orphans(proc, timeout_s=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    print(f"screenshots: {fleet_png} {host_png}")

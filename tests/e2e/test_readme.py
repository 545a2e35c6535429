"""The README's quick start, run as pasted: `fleetpulse up --agents 3` as its first command says,
then every command of the "from another terminal" block, and promtool's, against it. Nothing is
rewritten (not the ports, not the key's path, not the agent ids), so the README cannot drift
from what the product does: a changed banner line, path, port or agent id fails here.

The install half of the first command (`python3 -m venv .venv && pip install ...`) is what every
test run has done already; the test runs in a directory whose ``.venv`` is this interpreter's.
It needs the default ports (8000, 9090, 9464) free, as a new user's machine has them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.test_up import get_json, wait_until
from tests.processes import log_tail

pytestmark = pytest.mark.e2e

MARKER = "@@@ next command @@@"


def blocks(readme: str, after: str) -> list[tuple[str, str]]:
    """The fenced blocks (language, text) of the README from the line ``after`` on."""
    text = readme[readme.index(after) :]
    return re.findall(r"^ *```(\w*)\n(.*?)^ *```", text, flags=re.S | re.M)


def commands(block: str) -> list[str]:
    lines = [line.strip() for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def banner_labels(text: str) -> list[str]:
    """Each banner line's label: what precedes its value (labels line up in one column)."""
    return [line[:19].strip() for line in text.strip().splitlines()]


def test_the_readme_quick_start_works_as_pasted(repo_root: Path, tmp_path: Path) -> None:
    readme = (repo_root / "README.md").read_text()
    run_line = commands(blocks(readme, "**Run it**")[0][1])[0]
    up_command = run_line.split(" && ")[-1]
    assert up_command == ".venv/bin/fleetpulse up --agents 3", run_line
    (_, sample_banner), (lang, terminal), *_ = blocks(readme, "## What you see")
    assert lang == "sh"
    promtool_block = next(b for _, b in blocks(readme, "## What you see") if "promtool query" in b)

    for port in (8000, 9090, 9464):
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                pytest.fail(f"port {port} is in use: the README's defaults need it free")

    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    (work / ".venv").symlink_to(Path(sys.prefix))
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("FLEETPULSE_") and k != "XDG_DATA_HOME"
    }
    env["HOME"] = str(home)
    data_dir = home / ".local" / "share" / "fleetpulse"
    out_path, log_path = tmp_path / "up.out", tmp_path / "up.log"
    with out_path.open("wb") as out, log_path.open("wb") as log:
        up = subprocess.Popen(
            ["bash", "-c", up_command],
            cwd=work,
            env=env,
            stdout=out,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
    try:
        banner = wait_until(
            lambda: "Press Ctrl-C" in out_path.read_text() and out_path.read_text(),
            90,
            "the banner",
        )
        assert banner_labels(banner) == banner_labels(sample_banner), banner
        hostname = socket.gethostname()
        agent_ids = [f"{hostname}-local-{n}" for n in (1, 2, 3)]
        assert f"  local agents     {', '.join(agent_ids)}" in banner
        assert f"  data dir         {data_dir}" in banner
        key = (data_dir / "api-key").read_text().strip()
        assert f"  API key          {key}" in banner

        def committing() -> bool:
            agents = get_json("http://127.0.0.1:8000/agents", key)
            return sorted(a["agent_id"] for a in agents if a["points_committed"] > 0) == agent_ids

        wait_until(committing, 90, "three agents committing points")

        # Each command as pasted; curl told to fail on an HTTP error (the README's -s alone
        # would print a 401 body and succeed).
        lines = commands(terminal)
        script = ["set -euo pipefail", 'curl() { command curl --fail-with-body "$@"; }']
        for line in lines:
            script += [line, f"echo '{MARKER}'"]
        ran = subprocess.run(
            ["bash", "-c", "\n".join(script)],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert ran.returncode == 0, f"{ran.stderr}\n{ran.stdout}"
        outputs = dict(zip(lines, ran.stdout.split(MARKER + "\n"), strict=False))
        assert len(outputs) == len(lines)

        def output(prefix: str) -> str:
            return next(out for line, out in outputs.items() if line.startswith(prefix))

        listing = output(".venv/bin/fleetpulse agents list")
        assert all(agent_id in listing for agent_id in agent_ids), listing
        assert "3 agents, 3 online" in listing, listing
        assert "agents             3 (3 online, 0 offline)" in output(".venv/bin/fleetpulse status")
        curls = [out for line, out in outputs.items() if line.startswith("curl")]
        everyone, one, series, points, promql = (json.loads(out) for out in curls)
        assert sorted(a["agent_id"] for a in everyone) == agent_ids
        assert one["agent_id"] == agent_ids[0] and one["points_committed"] > 0
        assert "load1" in {s["name"] for s in series}
        assert points["series"] and points["series"][0]["points"]
        assert promql["status"] == "success"
        assert sorted(r["metric"]["agent_id"] for r in promql["data"]["result"]) == agent_ids

        if shutil.which("promtool") is None and not os.environ.get("CI"):
            pytest.skip("promtool (Debian's prometheus) is not installed; the rest passed")
        (promtool_line,) = commands(promtool_block)
        key_line = next(line for line in lines if line.startswith("KEY="))
        ran = subprocess.run(
            ["bash", "-c", f"set -euo pipefail\n{key_line}\n{promtool_line}"],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert ran.returncode == 0, ran.stderr
        answered = [line for line in ran.stdout.splitlines() if line.startswith("load1{")]
        assert len(answered) == 3 and all(f'agent_id="{a}"' in ran.stdout for a in agent_ids)
    except BaseException:
        print(log_tail(log_path))
        raise
    finally:
        if up.poll() is None:
            up.send_signal(signal.SIGTERM)
            try:
                up.wait(60)
            except subprocess.TimeoutExpired:
                up.kill()
                up.wait()

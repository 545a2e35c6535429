"""The command line as a user meets it: clear one-line errors and exit status 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleetpulse", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("server:\n  address: localhost:9090\n", "agent.id"),
        ("agent:\n  id: a\n  collect_interval: abc\n", "agent.collect_interval"),
        ("agent: [unclosed\n", "not valid YAML"),
    ],
)
def test_agent_config_errors_are_one_line_with_status_2(
    tmp_path: Path, content: str, needle: str
) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(content)
    result = run_cli("agent", "--config", str(config))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr


def test_missing_config_file_is_status_2(tmp_path: Path) -> None:
    result = run_cli("agent", "--config", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2 and "nope.yaml" in result.stderr


@pytest.mark.parametrize("role", ["ingest", "worker", "api", "migrate"])
def test_standalone_roles_need_urls(role: str) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp"}
    result = run_cli(role, env=env)
    assert result.returncode == 2
    assert (
        "FLEETPULSE_DATABASE_URL is not set" in result.stderr
        or "FLEETPULSE_REDIS_URL" in result.stderr
    )


def test_invalid_setting_names_it() -> None:
    result = run_cli(
        "migrate", env={"PATH": "/usr/bin:/bin", "HOME": "/tmp", "FLEETPULSE_GRPC_PORT": "99999"}
    )
    assert result.returncode == 2 and "grpc_port" in result.stderr


def test_ray_engine_without_ray_names_the_extra() -> None:
    # `ray` made unimportable in this interpreter only (the dev install has it).
    code = (
        "import sys; sys.modules['ray'] = None; from fleetpulse.cli import main;"
        " sys.exit(main(['worker', '--engine', 'ray', '--processes', '2']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"},
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "fleetpulse worker: the ray engine needs the 'ray' extra: pip install 'fleetpulse[ray]'"
    ]


def test_agent_once_prints_one_collection_as_a_table() -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "fleetpulse", "agent", "--once"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["metric", "labels", "value", "unit"]
    assert any(line.startswith("load1 ") for line in lines)
    (memory_total,) = [
        line for line in lines if line.startswith("memory_bytes ") and "=total" in line
    ]
    assert memory_total.split()[-1] in {"MiB", "GiB", "TiB"}
    count = int(lines[-1].split()[0])
    assert count == len(lines) - 2 and count > 20


def test_agent_once_into_a_pipe_closed_early_exits_quietly() -> None:
    # As `fleetpulse agent --once | head -1` when head has gone before the table is written: the
    # reader closes its end first (the agent spends half a second measuring CPU before it prints).
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleetpulse", "agent", "--once"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    with proc.stderr:
        stderr = proc.stderr.read().decode()
    status = proc.wait(60)
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr
    assert status == 0, stderr


def test_api_keys_may_be_named() -> None:
    from fleetpulse.settings import Settings

    settings = Settings(
        api_keys=" grafana:g-key , bare-key,,ops2:o:k ",  # type: ignore[arg-type]
        api_admin_key="root-key",  # type: ignore[arg-type]
    )
    assert settings.named_read_keys() == [
        ("grafana", "g-key"),
        ("read-2", "bare-key"),
        ("ops2", "o:k"),
    ]
    assert settings.read_keys() == ["g-key", "bare-key", "o:k"]
    assert settings.named_admin_key() == ("admin", "root-key")

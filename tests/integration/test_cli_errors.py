"""A management command meeting a server error: one line saying what was saved, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import psycopg
import pytest

pytestmark = pytest.mark.integration

# Nothing listens on port 1: every connection is refused at once.
UNREACHABLE_REDIS = "redis://127.0.0.1:1/0"


def fleetpulse(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETPULSE_")}
    return subprocess.run(
        [sys.executable, "-m", "fleetpulse", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_redis_error_is_one_line_that_says_what_was_saved(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO agents (agent_id) VALUES ('cli-1')")
        conn.execute(
            "INSERT INTO agent_credentials (agent_id, token_hash) VALUES ('cli-1', '\\x00')"
        )
    servers = ["--database-url", database_url, "--redis-url", UNREACHABLE_REDIS]
    config = fleetpulse("agents", "config", "cli-1", "--collect-interval", "5", *servers)
    assert config.returncode == 1
    (line,) = config.stderr.strip().splitlines()
    assert line.startswith("cli-1: settings saved (version 1), but not pushed to the agent now")
    assert "Redis" in line and "Traceback" not in config.stderr
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT collect_interval_ms FROM agent_settings WHERE agent_id = 'cli-1'"
        ).fetchone()
    assert row == (5000,)  # saved, as the line says

    revoke = fleetpulse("agents", "revoke", "cli-1", *servers)
    assert revoke.returncode == 1
    (line,) = revoke.stderr.strip().splitlines()
    assert line.startswith("cli-1: credential revoked (new streams are refused), but its open")
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT revoked_at IS NOT NULL FROM agent_credentials WHERE agent_id = 'cli-1'"
        ).fetchone()
    assert row == (True,)


def test_an_unreachable_database_is_one_line() -> None:
    listing = fleetpulse("agents", "list", "--database-url", "postgresql://postgres@127.0.0.1:1/x")
    assert listing.returncode == 1
    (line,) = listing.stderr.strip().splitlines()
    assert line.startswith("fleetpulse agents: PostgreSQL: OperationalError: connection failed")

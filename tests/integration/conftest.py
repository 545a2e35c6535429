"""Fixtures for integration tests that need a running ingest front-end."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from tests.processes import fleetpulse_process, free_port, wait_for_port

TOKEN = "test-enrollment-token"


@dataclass
class Ingest:
    address: str
    database_url: str
    redis: redis.Redis


def ingest_env(
    database_url: str, redis_url: str, port: int, shards: int = 2, metrics_port: int = 0
) -> dict[str, str]:
    """The environment of a `fleetpulse ingest` process under test."""
    return {
        "FLEETPULSE_DATABASE_URL": database_url,
        "FLEETPULSE_REDIS_URL": redis_url,
        "FLEETPULSE_ENROLLMENT_TOKEN": TOKEN,
        "FLEETPULSE_GRPC_PORT": str(port),
        "FLEETPULSE_STREAM_SHARDS": str(shards),
        "FLEETPULSE_HEARTBEAT_FLUSH_INTERVAL_S": "0.2",
        "FLEETPULSE_INGEST_METRICS_PORT": str(metrics_port),
    }


@pytest.fixture
def ingest(database_url: str, redis_url: str, tmp_path: Path) -> Iterator[Ingest]:
    port = free_port()
    env = ingest_env(database_url, redis_url, port)
    with fleetpulse_process(["ingest"], env, tmp_path / "ingest.log") as proc:
        wait_for_port(port, proc)
        client = redis.Redis.from_url(redis_url)
        yield Ingest(f"127.0.0.1:{port}", database_url, client)
        client.close()

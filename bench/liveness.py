"""``fleetpulse bench liveness``: the liveness rule and the agents' own PromQL series at fleet size.

A throwaway database (on ``--database-url``'s server, else an embedded PostgreSQL) holds
``--agents`` agents and three liveness transitions each; then, timed (median of ``--repeat``):
the front-ends' sweep (fleetpulse/liveness.py) with nothing to record and with 10 % of the agents
gone stale, the API's agent page and fleet summary (their handlers, on one connection), and
fleet-wide and one-agent PromQL over ``fleetpulse_agent_up``/``_state``/``_info``
(api/promql/fleetseries.py). The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from fleetpulse import liveness
from fleetpulse.bench import report
from fleetpulse.embedded import EmbeddedPostgres
from fleetpulse.migrate import migrate
from fleetpulse.settings import load_settings

_AGENTS = """
INSERT INTO agents (agent_id, hostname, os, arch, version, status, last_heartbeat, connected_at,
    last_batch_at, liveness, liveness_since, liveness_cause, created_at)
SELECT 'a' || lpad(i::text, 6, '0'), 'h' || i, 'linux', 'x86_64', '1', 'online',
    now() - (i %% 5) * interval '1 second', now() - interval '2 hours', now(), 'online',
    now() - interval '2 hours', 'registered', now() - interval '3 hours'
FROM generate_series(1, %s) i
"""
_HISTORY = """
INSERT INTO agent_liveness (agent_id, at, state, cause)
SELECT 'a' || lpad(i::text, 6, '0'), now() - interval '2 hours' - k * interval '10 minutes',
    CASE k WHEN 2 THEN 'offline' ELSE 'online' END, 'registered'
FROM generate_series(1, %s) i, generate_series(1, 3) k
"""
_GO_STALE = "UPDATE agents SET last_heartbeat = now() - interval '25 seconds' WHERE id % 10 = 0"

QUERIES = (
    "sum(fleetpulse_agent_up)",
    "count(fleetpulse_agent_info)",
    "sum by (state) (fleetpulse_agent_state)",
    'fleetpulse_agent_up{agent_id="a000042"}',
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--agents", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=5, help="timed calls per measure")
    parser.add_argument("--database-url", help="a server to create the throwaway database on")


async def _median_ms(call: Callable[[], Awaitable[Any]], repeat: int) -> float:
    await call()  # warm
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        await call()
        times.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(times), 1)


async def _reads(url: str, args: argparse.Namespace) -> dict[str, float]:
    import orjson
    from fastapi import Response
    from psycopg.types.json import set_json_loads

    from fleetpulse.api import agents, fleet
    from fleetpulse.api.promql import evaluate

    settings = load_settings(database_url=url)
    params = liveness.params(settings)
    found: dict[str, float] = {}
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        set_json_loads(orjson.loads, conn)  # as the API's pool does

        async def page() -> None:
            await agents.list_agents(
                conn, settings, Response(), None, None, None, None, None, None, "agent_id", 100, 0
            )

        found["agents_page_ms"] = await _median_ms(page, args.repeat)
        found["fleet_summary_ms"] = await _median_ms(
            lambda: fleet.fleet_summary(conn, settings), args.repeat
        )

        def instant(query: str) -> Callable[[], Awaitable[Any]]:
            now = time.time()
            return lambda: evaluate(conn, query, now, now, 1.0, True, 0.0, params)

        for query in QUERIES:
            found[f"instant {query} ms"] = await _median_ms(instant(query), args.repeat)
        now = time.time()
        found["range 1h/60s sum(fleetpulse_agent_up) ms"] = await _median_ms(
            lambda: evaluate(
                conn, "sum(fleetpulse_agent_up)", now - 3600, now, 60.0, False, 0.0, params
            ),
            args.repeat,
        )
    return found


def run(args: argparse.Namespace) -> int:
    settings = load_settings(database_url=args.database_url)
    temp_dir = tempfile.mkdtemp(prefix="fleetpulse-bench-liveness-")
    pg = None
    name = f"fleetpulse_bench_liveness_{secrets.token_hex(3)}"
    try:
        server = settings.database_url
        if server is None:
            pg = EmbeddedPostgres(Path(temp_dir))
            server = pg.start()
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        url = make_conninfo(server, dbname=name)
        migrate(url)
        summary: dict[str, Any] = {"agents": args.agents}
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(_AGENTS, (args.agents,))
            conn.execute(_HISTORY, (args.agents,))
            conn.execute("ANALYZE")
            params = liveness.params(load_settings(database_url=url))
            started = time.perf_counter()
            conn.execute(liveness.SWEEP, params)
            summary["sweep_nothing_to_record_ms"] = round((time.perf_counter() - started) * 1000, 1)
            conn.execute(_GO_STALE)
            started = time.perf_counter()
            moved = conn.execute(liveness.SWEEP, params).rowcount
            summary["sweep_10pct_stale_ms"] = round((time.perf_counter() - started) * 1000, 1)
            summary["sweep_10pct_stale_recorded"] = moved
        summary.update(asyncio.run(_reads(url, args)))
        summary["machine"] = report.machine()
    finally:
        if settings.database_url is not None:
            with psycopg.connect(settings.database_url, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if pg is not None:
            pg.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)
    sys.stderr.write(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary))
    return 0

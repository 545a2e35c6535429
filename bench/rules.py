"""``fleetpulse bench rules``: the built-in rules (api/rules/fleet.yml) at fleet size, round by round.

A throwaway database (on ``--database-url``'s server, else an embedded PostgreSQL) and Redis (an
embedded one, or ``--redis-url``'s database, which must be empty: the bench drains its streams)
get ``--agents`` agents and what the built-in rules read:

- **liveness**: the agents rows and their history (what ``fleetpulse_agent_up`` and
  ``fleetpulse_agent_state`` are computed from, api/promql/fleetseries.py): 98 % online, 1 %
  offline, 0.5 % stale, 0.5 % data_stale, the others' transitions spread over the evaluated
  window, so that alerts start pending and fire during the rounds;
- **series**: each agent's collection every 10 s, ``--series`` wide as an agent's (its set rows
  are what a rule reads, whatever series it names): ``agent_dropped_batches_total`` (0.5 % of
  the agents dropping), ``disk_bytes{state, mountpoint, device, fstype}`` of three filesystems
  (1 % of the agents with one above 90 %, 0.33 % with one crossing 90 % in the window), the
  rest the simulated host's (bench/hostseries.py). Offline and data_stale agents' data stops
  where they went so. It takes the real path: one ColumnarBatch per agent holding its
  collections (ingest/platformbatches.py), XADDed to its shard and drained by a Worker in this
  process (ingest/worker/consumer.py), then ``ANALYZE``. Loading is timed apart.

Then the rules: every group evaluates ``--warmup`` rounds (not measured) and ``--rounds``
measured ones, at its own slots (``k * interval + offset``) up to the newest collection (the
warm-up rounds first, then the measured ones in timestamp order across groups), each round
through the evaluator's own `Evaluator._round` (the PromQL engine on the evaluator's pool,
alert states, the recording rules' batches if any, the notifier, and the round's state saved
in one transaction) with the state carried from round to round as its group loop carries it.
Rounds run back to back rather than on the wall clock: each is timed alone, as a group loop
runs it when rounds do not overlap (under 10 % of the interval, the target, they do not); the
slots and the data are fixed before the first round, so the figures do not depend on how long
the load took.

Reported per group: its interval, median/p90/max round time and their ratio to the interval
(the target: every round within 10 %), the alerts pending and firing after the last round, and
per rule its evaluation time as the evaluator records it (rule_health, read after each round)
and its health (``rules_in_error``: a rule that fails is fast, and its group's times then say
nothing of it); CPU of this process (per round, and psutil's) and of PostgreSQL and Redis during
the rounds (bench/resources.py). The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import redis
from psycopg.conninfo import make_conninfo

from fleetpulse import connections, locks
from fleetpulse.api.deps import configure_connection
from fleetpulse.api.rules.alerts import AlertState
from fleetpulse.api.rules.evaluator import POOL_MAX_SIZE, Evaluator, RuleSet
from fleetpulse.api.rules.files import Group
from fleetpulse.bench import report, stats
from fleetpulse.bench.hostseries import HostModel, host_specs
from fleetpulse.bench.resources import ResourceSampler, processes_named
from fleetpulse.embedded import EmbeddedPostgres, EmbeddedRedis
from fleetpulse.ingest import keys, platformbatches, queue
from fleetpulse.ingest.worker.consumer import Worker
from fleetpulse.migrate import migrate
from fleetpulse.settings import Settings, load_settings

STREAM_SHARDS = 4
STEP_S = 10  # an agent's collection interval
# The longest range or lookback the built-in rules read (increase(...[10m])): the data reaches
# this far before the first evaluated slot.
RANGE_S = 600
MIN_SPAN_S = 900  # at least the last 15 minutes of data
LOAD_CHUNK = 250  # agents generated, queued and drained at a time
TARGET_RATIO = 0.10  # the target: each round within 10 % of its interval
# Series of each agent the built-in rules read; the rest of its collection is the host's.
FILESYSTEMS = (
    {"mountpoint": "/", "device": "/dev/nvme0n1p2", "fstype": "ext4"},
    {"mountpoint": "/var", "device": "/dev/nvme0n1p3", "fstype": "xfs"},
    {"mountpoint": "/boot", "device": "/dev/nvme0n1p1", "fstype": "ext4"},
)
RULE_SERIES: list[tuple[str, dict[str, str]]] = [("agent_dropped_batches_total", {})] + [
    ("disk_bytes", {**fs, "state": state})
    for fs in FILESYSTEMS
    for state in ("total", "used", "free")
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument(
        "--series",
        type=int,
        default=200,
        help=f"series per agent's collection (at least {len(RULE_SERIES)}: the rules' own), the"
        " width of the rows a rule reads; an agent sends about 200",
    )
    parser.add_argument("--rounds", type=int, default=12, help="measured rounds of each group")
    parser.add_argument(
        "--warmup", type=int, default=1, help="rounds of each group before the measured ones"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--database-url", help="a server to create the throwaway database on")
    parser.add_argument(
        "--redis-url", help="an empty Redis database to use (default: an embedded Redis)"
    )


# --- the fleet ------------------------------------------------------------------------------


@dataclass
class Agent:
    index: int
    agent_id: str
    liveness: str  # online, stale, data_stale, offline
    since: float  # when it entered that state (Unix seconds)
    data_until: float  # its last collection at or before this
    dropping: bool
    full_fs: bool  # /var above 90 %
    filling_fs: bool  # / crossing 90 % in the window
    phase_s: float  # its collections' offset in the 10 s


@dataclass
class Fleet:
    agents: list[Agent]
    t_end: float  # the newest collection time (of the grid; each agent a phase earlier)
    grid: np.ndarray  # collection times, Unix seconds, oldest first
    first_slot: float

    def count(self, **where: Any) -> int:
        return sum(all(getattr(a, k) == v for k, v in where.items()) for a in self.agents)


def _fleet(count: int, t_end: float, first_slot: float, settings: Settings, seed: int) -> Fleet:
    """Who is in which state since when, and whose spool or disk is in trouble."""
    rng = np.random.default_rng(seed)
    window = t_end - first_slot
    span = max(MIN_SPAN_S, window + RANGE_S + 2 * STEP_S)
    steps = math.ceil(span / STEP_S)
    grid = t_end - STEP_S * np.arange(steps, -1, -1, dtype=np.float64)
    agents = []
    for i in range(1, count + 1):
        liveness = (
            "offline"
            if i % 100 == 50
            else "stale"
            if i % 200 == 25
            else "data_stale"
            if i % 200 == 125
            else "online"
        )
        since, data_until = t_end - 7200.0, t_end
        if liveness == "offline":
            # from two minutes before the first slot on: some fire at once, some go during it
            since = t_end - rng.uniform(0, window + 120)
            data_until = since
        elif liveness == "stale":
            since = t_end - rng.uniform(0, window + 300)
        elif liveness == "data_stale":
            since = t_end - rng.uniform(0, window + 300)
            data_until = since - settings.data_stale_after_s
        agents.append(
            Agent(
                index=i,
                agent_id="a" + str(i).zfill(6),
                liveness=liveness,
                since=since,
                data_until=data_until,
                dropping=i % 200 == 77,
                full_fs=i % 100 == 13,
                filling_fs=i % 300 == 150,
                phase_s=float(rng.uniform(0, STEP_S)),
            )
        )
    return Fleet(agents, t_end, grid, first_slot)


_AGENT_COLUMNS = (
    "agent_id, hostname, os, arch, version, status, last_heartbeat, connected_at, last_batch_at,"
    " liveness, liveness_since, liveness_cause, created_at, updated_at"
)
_CAUSES = {
    "online": "registered",
    "offline": "stream_closed",
    "stale": "heartbeat_late",
    "data_stale": "batches_late",
}


def _write_agents(conn: psycopg.Connection[Any], fleet: Fleet) -> None:
    """The agents rows and their liveness history, as the front-ends and their sweep leave them."""

    def ts(seconds: float) -> datetime:
        return datetime.fromtimestamp(seconds, UTC)

    registered = fleet.t_end - 7200.0
    with conn.cursor() as cur:
        with cur.copy(f"COPY agents ({_AGENT_COLUMNS}) FROM STDIN") as copy:
            for a in fleet.agents:
                offline = a.liveness == "offline"
                copy.write_row(
                    (
                        a.agent_id,
                        f"host-{a.index}",
                        "linux",
                        "x86_64",
                        "1.4.0",
                        "offline" if offline else "online",
                        ts(a.since - 3 if offline else fleet.t_end),
                        ts(registered),
                        ts(a.data_until),
                        a.liveness,
                        ts(registered if a.liveness == "online" else a.since),
                        _CAUSES[a.liveness],
                        ts(registered - 3600),
                        ts(a.since if offline else fleet.t_end),
                    )
                )
        with cur.copy("COPY agent_liveness (agent_id, at, state, cause) FROM STDIN") as copy:
            for a in fleet.agents:
                copy.write_row((a.agent_id, ts(registered), "online", "registered"))
                if a.liveness != "online":
                    copy.write_row((a.agent_id, ts(a.since), a.liveness, _CAUSES[a.liveness]))
    conn.commit()


def _heartbeats(conn: psycopg.Connection[Any], settings: Settings) -> None:
    """The heartbeats of now, as the front-ends flush them: on time, except the stale agents'
    (late by more than stale_after_heartbeats intervals, not yet offline)."""
    flush = settings.heartbeat_flush_interval_s
    late_s = (
        settings.heartbeat_interval_s
        * (settings.stale_after_heartbeats + settings.offline_after_heartbeats)
        / 2
        + flush
    )
    conn.execute(
        "UPDATE agents SET last_heartbeat = CASE liveness WHEN 'stale'"
        " THEN now() - make_interval(secs => %s) ELSE now() - (id %% 3) * interval '1 second' END,"
        " last_batch_at = CASE liveness WHEN 'online' THEN now() ELSE last_batch_at END"
        " WHERE status = 'online'",
        (late_s,),
    )
    conn.commit()


def _rule_values(a: Agent, grid: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The rules' series of one agent at the grid's times: shape (len(RULE_SERIES), times)."""
    n = len(grid)
    out = np.empty((len(RULE_SERIES), n))
    dropped = float((a.index % 7 == 0) * (a.index % 13) * 10)  # some dropped long ago
    out[0] = dropped + (np.floor((grid - grid[0]) / 30.0) if a.dropping else 0.0)
    totals = (
        rng.choice((100, 250, 500, 1000)) * 1e9,
        rng.choice((50, 200, 500)) * 1e9,
        1.0e9,
    )
    for k, total in enumerate(totals):
        if k == 0 and a.filling_fs:
            fraction = np.linspace(0.885, 0.915, n)
        elif k == 1 and a.full_fs:
            fraction = np.full(n, rng.uniform(0.92, 0.98))
        else:
            fraction = np.full(n, rng.uniform(0.1, 0.75))
        # a few MB written and removed between collections
        used = np.floor(total * fraction + np.cumsum(rng.normal(0, 2e6, n)))
        out[1 + 3 * k] = total
        out[2 + 3 * k] = used
        out[3 + 3 * k] = total - used
    return out


@dataclass
class Load:
    seconds: float = 0.0
    drain_s: float = 0.0
    batches: int = 0
    points: int = 0


def _load(
    fleet: Fleet, width: int, worker: Worker, client: redis.Redis, shards: int, seed: int
) -> Load:
    """Every agent's collections as one ColumnarBatch, queued and drained a chunk at a time."""
    filler = width - len(RULE_SERIES)
    # The host's series without its own disk_bytes (the rules' filesystems replace them).
    specs = host_specs(filler + 3) if filler else []
    keep = [k for k, s in enumerate(specs) if s.name != "disk_bytes"][:filler]
    series = RULE_SERIES + [(specs[k].name, specs[k].labels) for k in keep]
    assert len(series) == width
    load = Load()
    started = time.perf_counter()
    agents = fleet.agents
    for first in range(0, len(agents), LOAD_CHUNK):
        chunk = agents[first : first + LOAD_CHUNK]
        rng = np.random.default_rng((seed, first))
        host = None
        if filler:
            model = HostModel(len(chunk), len(specs), rng, fleet.t_end, noise=rng)
            host = model.values(fleet.grid).reshape(len(chunk), len(specs), -1)[:, keep]
        pipe = client.pipeline(transaction=False)
        for k, a in enumerate(chunk):
            values = _rule_values(a, fleet.grid, rng)
            if host is not None:
                values = np.concatenate((values, host[k]))
            times = fleet.grid - a.phase_s
            taken = times <= a.data_until
            if not taken.any():
                continue
            stamps = (times[taken] * 1e9).astype(np.int64)
            epoch = int((fleet.t_end - 7200) * 1000)  # the agent's start, in ms
            data = platformbatches.encode(a.agent_id, epoch, 1, series, stamps, values[:, taken].T)
            fields = queue.entry_fields(
                a.agent_id, epoch, 1, data, int(time.time() * 1000), keys.FORM_COLUMNS
            )
            pipe.xadd(keys.stream_key(keys.shard_for(a.agent_id, shards)), fields)
            load.batches += 1
            load.points += int(taken.sum()) * width
        pipe.execute()
        drain_started = time.perf_counter()
        while entries := worker._read(">", None):
            worker.process(entries)
        load.drain_s += time.perf_counter() - drain_started
        report.progress(
            f"loaded {first + len(chunk):,}/{len(agents):,} agents, {load.points:,} points,"
            f" {time.perf_counter() - started:.0f} s"
        )
    load.seconds = time.perf_counter() - started
    return load


# --- the rounds -----------------------------------------------------------------------------


def _slots(group: Group, t_end: float, count: int) -> list[int]:
    """The group's last ``count`` evaluation timestamps (ms) at or before ``t_end``."""
    interval_ms, offset_ms = round(group.interval_s * 1000), round(group.offset_s * 1000)
    last = (int(t_end * 1000) - offset_ms) // interval_ms * interval_ms + offset_ms
    return [last - (count - 1 - k) * interval_ms for k in range(count)]


@dataclass
class GroupRun:
    group: Group
    slots: list[int]
    states: dict[str, AlertState] = field(default_factory=dict)
    written: dict[tuple[str, str], tuple[Any, ...]] = field(default_factory=dict)
    durations_s: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)
    rule_s: dict[str, list[float]] = field(default_factory=dict)
    rule_errors: dict[str, list[str]] = field(default_factory=dict)


_HEALTH = (
    "SELECT rule_key, health, last_error, eval_duration_s FROM rule_health WHERE group_key = %s"
)
_ALERTS = "SELECT group_key, rule_key, state, count(*) FROM alerts GROUP BY 1, 2, 3"


async def _rounds(
    settings: Settings,
    ruleset: RuleSet,
    runs: list[GroupRun],
    warmup: int,
    components: Callable[[], dict[str, tuple[list[int], bool]]],
) -> tuple[dict[str, dict[str, float]], float, dict[tuple[str, str, str], int]]:
    """Every group's rounds in timestamp order through the evaluator; returns the resources
    used during the measured ones, their wall time and the alerts saved after the last."""
    assert settings.database_url is not None and settings.redis_url is not None
    url = settings.database_url
    evaluator = Evaluator(settings, ruleset)
    client = connections.redis_async(settings.redis_url)
    batches = queue.BatchQueue(client, STREAM_SHARDS)
    pool = connections.pg_pool_async(
        url, min_size=1, max_size=POOL_MAX_SIZE, name="rules", configure=configure_connection
    )
    await pool.open(wait=True)
    conn = await connections.pg_connect_async(url, autocommit=True)
    probe = await connections.pg_connect_async(url, autocommit=True)
    try:
        # The evaluator's own connection holds the platform's one-evaluator lock, as in run().
        cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (locks.RULES,))
        row = await cur.fetchone()
        assert row is not None and row[0], "another rule evaluator holds the lock"
        for run in runs:
            run.states = {r.key: AlertState(r) for r in run.group.rules if r.kind == "alert"}
        # Each group's rounds in its slots' order; every warm-up round before the measured ones.
        order = sorted(
            (k >= warmup, ts, n, k) for n, run in enumerate(runs) for k, ts in enumerate(run.slots)
        )
        sampler = ResourceSampler(components, interval_s=0.5)
        wall_started = time.perf_counter()
        for done, (measured, ts_ms, n, _) in enumerate(order, start=1):
            run = runs[n]
            if measured and not sampler.is_alive():
                sampler.sample()  # the baseline: the measured rounds only
                sampler.start()
                wall_started = time.perf_counter()
            cpu0, started = time.process_time(), time.perf_counter()
            await evaluator._round(
                run.group, ts_ms, 0, run.states, run.written, conn, pool, batches
            )
            took, cpu = time.perf_counter() - started, time.process_time() - cpu0
            cur = await probe.execute(_HEALTH, (run.group.key,))
            health = await cur.fetchall()
            if not measured:
                continue
            run.durations_s.append(took)
            run.cpu_s.append(cpu)
            for rule_key, state, error, seconds in health:
                run.rule_s.setdefault(rule_key, []).append(seconds)
                if state != "ok":
                    run.rule_errors.setdefault(rule_key, []).append(error)
            report.progress(
                f"round {done}/{len(order)}: {run.group.name} at"
                f" {datetime.fromtimestamp(ts_ms / 1000, UTC):%H:%M:%S} took {took * 1000:.0f} ms"
            )
        wall = time.perf_counter() - wall_started
        resources = sampler.stop()
        cur = await probe.execute(_ALERTS)
        alerts = {(g, r, s): int(c) for g, r, s, c in await cur.fetchall()}
    finally:
        await probe.close()
        await conn.close()
        await pool.close()
        await batches.close()
        await client.aclose()
    return resources, wall, alerts


def _group_summary(run: GroupRun, alerts: dict[tuple[str, str, str], int]) -> dict[str, Any]:
    interval = run.group.interval_s
    took = run.durations_s

    def ratio(seconds: float | None) -> float | None:
        return None if seconds is None else round(seconds / interval, 4)

    median, p90 = stats.percentile(took, 50), stats.percentile(took, 90)
    worst = round(max(took), 4) if took else None
    rules: dict[str, Any] = {}
    for rule in run.group.rules:
        seconds = run.rule_s.get(rule.key, [])
        errors = run.rule_errors.get(rule.key, [])
        entry: dict[str, Any] = {
            "median_ms": stats.ms(stats.percentile(seconds, 50)),
            "p90_ms": stats.ms(stats.percentile(seconds, 90)),
            "max_ms": stats.ms(max(seconds)) if seconds else None,
            "rounds_in_error": len(errors),
        }
        if errors:
            entry["last_error"] = errors[-1]
        if rule.kind == "alert":
            for state in ("pending", "firing"):
                entry[state] = alerts.get((run.group.key, rule.key, state), 0)
        rules[rule.name if rule.name not in rules else rule.key] = entry
    return {
        "interval_s": interval,
        "rounds": len(took),
        "median_s": median,
        "p90_s": p90,
        "max_s": worst,
        "median_ratio": ratio(median),
        "p90_ratio": ratio(p90),
        "max_ratio": ratio(worst),
        "rounds_within_10pct": sum(t <= TARGET_RATIO * interval for t in took),
        "cpu_s_per_round_median": stats.percentile(run.cpu_s, 50),
        "alerts_pending": sum(v.get("pending", 0) for v in rules.values()),
        "alerts_firing": sum(v.get("firing", 0) for v in rules.values()),
        "rules": rules,
    }


# --- the run --------------------------------------------------------------------------------


def _redis(given: str | None, temp_dir: str) -> tuple[str, EmbeddedRedis | None]:
    if given is None:
        embedded = EmbeddedRedis(Path(temp_dir))
        return embedded.start(), embedded
    client = connections.redis_client(given)
    try:
        keys_held = int(client.dbsize())
    finally:
        client.close()
    if keys_held:
        raise SystemExit(
            f"bench rules: the Redis database of --redis-url holds {keys_held} keys; give an empty"
            " one (its streams are drained into the bench's database)"
        )
    return given, None


def _clean_redis(url: str) -> None:
    """What the run left in a Redis database that was empty before it (every key is ours)."""
    client = connections.redis_client(url)
    try:
        for key in client.scan_iter(match=f"{keys.PREFIX}:*", count=1000):
            client.delete(key)
    finally:
        client.close()


def run(args: argparse.Namespace) -> int:
    if args.series < len(RULE_SERIES):
        raise SystemExit(f"bench rules: --series must be at least {len(RULE_SERIES)}")
    if args.rounds < 1 or args.warmup < 0 or args.agents < 1:
        raise SystemExit("bench rules: --agents and --rounds at least 1, --warmup at least 0")
    env = load_settings(database_url=args.database_url, redis_url=args.redis_url)
    temp_dir = tempfile.mkdtemp(prefix="fleetpulse-bench-rules-")
    pg: EmbeddedPostgres | None = None
    rd: EmbeddedRedis | None = None
    redis_url: str | None = None
    name = f"fleetpulse_bench_rules_{secrets.token_hex(3)}"
    try:
        server = env.database_url
        if server is None:
            pg = EmbeddedPostgres(Path(temp_dir))
            server = pg.start()
        redis_url, rd = _redis(env.redis_url, temp_dir)
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        url = make_conninfo(server, dbname=name)
        migrate(url)
        # The built-in rules, as they ship; no Alertmanager: alerts are evaluated, sent nowhere.
        settings = env.model_copy(
            update={
                "database_url": url,
                "redis_url": redis_url,
                "stream_shards": STREAM_SHARDS,
                "rule_files": "",
                "alertmanager_urls": "",
            }
        )
        ruleset = RuleSet(settings)
        problem = ruleset.reload()
        if problem is not None:
            raise SystemExit(f"bench rules: {problem}")
        t_end = time.time() // STEP_S * STEP_S - STEP_S
        count = args.warmup + args.rounds
        runs = [GroupRun(g, _slots(g, t_end, count)) for g in ruleset.groups]
        first_slot = min(r.slots[0] for r in runs) / 1000
        fleet = _fleet(args.agents, t_end, first_slot, settings, args.seed)

        worker = Worker(settings, "bench-rules")
        client = connections.redis_client(redis_url)
        try:
            with psycopg.connect(url) as conn:
                _write_agents(conn, fleet)
            load = _load(fleet, args.series, worker, client, STREAM_SHARDS, args.seed)
            analyze_started = time.perf_counter()
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("ANALYZE")
                row = conn.execute(
                    "SELECT (SELECT count(*) FROM series),"
                    " (SELECT coalesce(sum(points_committed), 0)::int8 FROM agent_ingest)"
                ).fetchone()
                assert row is not None
                series_stored, points_stored = int(row[0]), int(row[1])
            analyze_s = time.perf_counter() - analyze_started
        finally:
            worker.close()
            client.close()
        report.progress(
            f"loaded in {load.seconds:.1f} s ({load.drain_s:.1f} s draining); evaluating", True
        )
        with psycopg.connect(url) as conn:
            _heartbeats(conn, settings)

        def components() -> dict[str, tuple[list[int], bool]]:
            return {
                "bench": ([os.getpid()], False),
                "postgres": ([pg.pid], True)
                if pg is not None and pg.pid
                else (processes_named("postgres"), False),
                "redis": ([rd.pid], False)
                if rd is not None and rd.pid
                else (processes_named("redis-server"), False),
            }

        resources, wall, alerts = asyncio.run(
            _rounds(settings, ruleset, runs, args.warmup, components)
        )
        groups = {run.group.name: _group_summary(run, alerts) for run in runs}
        measured = sum(len(r.durations_s) for r in runs)
        summary: dict[str, Any] = {
            "agents": args.agents,
            "series_per_agent": args.series,
            "rounds": args.rounds,
            "warmup_rounds": args.warmup,
            "data": {
                "online": fleet.count(liveness="online"),
                "offline": fleet.count(liveness="offline"),
                "stale": fleet.count(liveness="stale"),
                "data_stale": fleet.count(liveness="data_stale"),
                "dropping_batches": fleet.count(dropping=True),
                "filesystems_above_90pct": fleet.count(full_fs=True),
                "filesystems_crossing_90pct": fleet.count(filling_fs=True),
                "span_s": round(float(fleet.grid[-1] - fleet.grid[0]), 1),
                "step_s": STEP_S,
            },
            "load_s": round(load.seconds, 2),
            "load_drain_s": round(load.drain_s, 2),
            "load_analyze_s": round(analyze_s, 2),
            "load_batches": load.batches,
            "load_points": load.points,
            "load_points_per_s": round(load.points / max(load.seconds, 1e-9)),
            "series_stored": series_stored,
            "stored_equals_queued": points_stored == load.points,
            "groups": groups,
            "all_rounds_within_10pct": all(
                g["rounds_within_10pct"] == g["rounds"] for g in groups.values()
            ),
            # A rule that fails is fast: its group's times say nothing of it (the target needs
            # both: every round within 10 % and no rule in error).
            "rules_in_error": {
                f"{group}/{rule}": entry["last_error"]
                for group, g in groups.items()
                for rule, entry in g["rules"].items()
                if entry["rounds_in_error"]
            },
            "rounds_wall_s": round(wall, 3),
            "bench_cpu_s": resources.get("bench", {}).get("cpu_s"),
            "bench_cpu_s_per_round": round(sum(sum(r.cpu_s) for r in runs) / max(measured, 1), 4),
            "postgres_cpu_s": resources.get("postgres", {}).get("cpu_s"),
            "redis_cpu_s": resources.get("redis", {}).get("cpu_s"),
            "resources": resources,
            "database": "external PostgreSQL" if pg is None else "embedded PostgreSQL",
            "machine": report.machine(),
        }
    finally:
        if env.database_url is not None:
            with psycopg.connect(env.database_url, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if rd is None and redis_url is not None:
            _clean_redis(redis_url)
        if rd is not None:
            rd.stop()
        if pg is not None:
            pg.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)
    sys.stderr.write(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary))
    return 0

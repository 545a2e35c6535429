"""The platform's one rule evaluator, and the rules in force in each process.

**One evaluator.** Every process that may evaluate (each ``fleetpulse api`` with
``rules_evaluate``, and ``fleetpulse rules run``) asks for one PostgreSQL advisory lock
(fleetpulse/locks.py ``RULES``) on a connection of its own; the holder evaluates, the others
retry every `LOCK_RETRY_S`. The lock lives as long as that connection, so a holder that dies
frees it at once; each round's state is written on that same connection, so a holder that lost
it (its connection broke) fails its next write and stops, rather than evaluate beside a new one.

**A round** of a group is one evaluation timestamp, a slot ``k * interval + offset`` (the offset
spreads groups over the interval, as Prometheus does); a late evaluator skips to the latest slot
and counts the ones it missed. Each rule runs through the API's PromQL engine at that time:

- a recording rule's samples become one batch per agent (ingest/platformbatches.py), named by the group and the
  slot, and go through the queue, the workers and the ledger like an agent's batch: written
  twice (a crash before the round's state was saved), they are stored once;
- an alerting rule's samples move its alerts (api/rules/alerts.py); those due are sent to
  Alertmanager (api/rules/notifier.py).

Then the round's state (the group's slot, the rules' health, the alerts that changed) is saved
in one transaction (api/rules/store.py), and the next evaluator resumes from it.

Within a group, a rule that reads an earlier rule's recorded series sees it once the workers
have committed it (usually by the next round), not in the same round as in Prometheus. Prometheus'
``ALERTS`` series is not written (yet): /api/v1/alerts and the alerts table are where alerts are.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import redis
import redis.asyncio
from prometheus_client import Counter, Gauge
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from fleetpulse import connections, liveness, locks
from fleetpulse.api.deps import configure_connection
from fleetpulse.api.promql import PromQLError, Range, Scalar, String, Vector, evaluate
from fleetpulse.api.promql.model import without_name
from fleetpulse.api.rules import files, store
from fleetpulse.api.rules.alerts import AlertState, LabelsetError
from fleetpulse.api.rules.files import Group, Rule
from fleetpulse.api.rules.notifier import Notifier, generator_url, payload
from fleetpulse.errors import FleetpulseError
from fleetpulse.ingest import keys, platformbatches, queue
from fleetpulse.settings import Settings

log = logging.getLogger(__name__)

BUILTIN_RULES = Path(__file__).with_name("fleet.yml")

LEADING = Gauge("fleetpulse_rule_evaluator_leading", "1 while this process is the one evaluator")
GROUP_SECONDS = Gauge(
    "fleetpulse_rule_group_last_duration_seconds",
    "How long the group's last round took",
    ["rule_group"],
)
GROUP_INTERVAL = Gauge(
    "fleetpulse_rule_group_interval_seconds", "The group's evaluation interval", ["rule_group"]
)
MISSED = Counter(
    "fleetpulse_rule_group_iterations_missed",
    "Slots skipped because a round came late",
    ["rule_group"],
)
FAILURES = Counter(
    "fleetpulse_rule_evaluation_failures",
    "Rules whose evaluation failed, per round",
    ["rule_group"],
)
LOCK_RETRY_S = 5.0
# After a failed write of a round's results, the same slot is tried again this much later.
RETRY_S = 1.0
POOL_MAX_SIZE = 4
# A rule covers the fleet by design (``disk_bytes{state="used"}`` is 3 series per host): its
# selectors are not held to a person's query limit of 20,000 series. The samples limit of every
# query (api/promql/storage.py) still bounds its memory.
RULE_MAX_SERIES = 2_000_000


class RuleSet:
    """The rule groups in force in this process. `reload` replaces them only when every file
    loads; otherwise they stay as they were and the error is kept (and returned)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.groups: list[Group] = []
        self.version = 0
        self.last_error: str | None = None
        self.changed = asyncio.Event()

    @property
    def paths(self) -> list[str]:
        return self._settings.rule_paths() or [str(BUILTIN_RULES)]

    def reload(self) -> str | None:
        try:
            groups = files.load(self.paths, self._settings.rule_evaluation_interval_s)
        except FleetpulseError as exc:
            self.last_error = exc.message
            log.error("rules not reloaded, the rules in force stay: %s", exc.message)
            return exc.message
        self.groups, self.last_error = groups, None
        self.version += 1
        self.changed.set()
        rules = sum(len(g.rules) for g in groups)
        log.info("rules loaded: %d groups, %d rules from %s", len(groups), rules, self.paths)
        return None


Sample = tuple[dict[str, str], float]


def samples_of(value: Any) -> list[Sample]:
    """A rule's result at its one evaluation time: each sample's labels (``__name__`` included,
    for alert templates) and value."""
    if isinstance(value, Scalar):
        return [({}, float(value.values[0]))]
    if isinstance(value, Vector):
        rows = np.flatnonzero(value.present[:, 0]).tolist()
        return [(value.labels[i], float(value.values[i, 0])) for i in rows]
    kind = (
        "string"
        if isinstance(value, String)
        else "range vector"
        if isinstance(value, Range)
        else "?"
    )
    raise PromQLError(f"rule result is not a vector or scalar: {kind}", "execution")


@dataclass
class _Round:
    """What one round of a group writes: per agent, its series and their values."""

    series: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = field(
        default_factory=dict
    )

    def add(self, name: str, labels: dict[str, str], value: float) -> bool:
        """False when the group already wrote this series this round."""
        labels = {k: v for k, v in labels.items() if v != ""}
        agent = labels.pop("agent_id", platformbatches.PLATFORM_AGENT)
        key = (name, tuple(sorted(labels.items())))
        of_agent = self.series.setdefault(agent, {})
        if key in of_agent:
            return False
        of_agent[key] = value
        return True


def _snapshot(alert: Any) -> tuple[Any, ...]:
    return (
        alert.state,
        alert.active_at,
        alert.fired_at,
        alert.resolved_at,
        alert.keep_firing_since,
        alert.last_sent_at,
        alert.valid_until,
        alert.value,
        alert.annotations,
        alert.labels,
    )


class Evaluator:
    def __init__(
        self,
        settings: Settings,
        ruleset: RuleSet,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.ruleset = ruleset
        self.identity = f"{socket.gethostname()}:{os.getpid()}"
        self.leading = False
        self.notifier = Notifier(
            settings.alertmanagers(), capacity=settings.notification_queue_capacity
        )
        self._clock = clock
        self._liveness = liveness.params(settings)
        self._write_lock = asyncio.Lock()

    async def run(self) -> None:
        """Compete for the lock and evaluate while holding it, until cancelled."""
        url = self.settings.database_url
        assert url is not None and self.settings.redis_url is not None
        shards = await asyncio.to_thread(self._layout)
        redis_client = connections.redis_async(self.settings.redis_url)
        batches = queue.BatchQueue(redis_client, shards)
        pool: AsyncConnectionPool[AsyncConnection[Any]] = connections.pg_pool_async(
            url, min_size=1, max_size=POOL_MAX_SIZE, name="rules", configure=configure_connection
        )
        sender = asyncio.create_task(self.notifier.run(), name="notifier")
        try:
            await pool.open(wait=False)
            while True:
                try:
                    await self._hold_and_lead(url, pool, batches)
                except (psycopg.Error, redis.RedisError, OSError) as exc:
                    log.warning(
                        "rule evaluator: %s; trying again",
                        str(exc).splitlines()[0] if str(exc) else exc,
                    )
                await asyncio.sleep(LOCK_RETRY_S)
        finally:
            sender.cancel()
            await batches.close()
            await pool.close()
            await redis_client.aclose()

    def _layout(self) -> int:
        assert self.settings.redis_url is not None
        client = connections.redis_client(self.settings.redis_url)
        try:
            return queue.ensure_layout(client, self.settings.stream_shards)
        finally:
            client.close()

    async def _hold_and_lead(
        self,
        url: str,
        pool: AsyncConnectionPool[AsyncConnection[Any]],
        batches: queue.BatchQueue,
    ) -> None:
        conn = await connections.pg_connect_async(url, autocommit=True)
        try:
            cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (locks.RULES,))
            row = await cur.fetchone()
            if not row or not row[0]:
                return
            self.leading = True
            LEADING.set(1)
            log.info("rule evaluator %s: evaluating", self.identity)
            await self._lead(conn, pool, batches)
        finally:
            self.leading = False
            LEADING.set(0)
            await conn.close()

    async def _lead(
        self,
        conn: AsyncConnection[Any],
        pool: AsyncConnectionPool[AsyncConnection[Any]],
        batches: queue.BatchQueue,
    ) -> None:
        while True:
            self.ruleset.changed.clear()
            stop = asyncio.Event()
            tasks = [
                asyncio.create_task(self._group_loop(g, conn, pool, batches, stop), name=g.key)
                for g in self.ruleset.groups
            ]
            reload = asyncio.create_task(self.ruleset.changed.wait())
            try:
                done, _ = await asyncio.wait([*tasks, reload], return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task is not reload:
                        task.result()  # a group's loop ends only by raising: leadership is lost
                stop.set()  # rules reloaded: each group finishes its round, then starts over
                await asyncio.gather(*tasks)
            finally:
                reload.cancel()
                for task in tasks:
                    task.cancel()

    async def _group_loop(
        self,
        group: Group,
        conn: AsyncConnection[Any],
        pool: AsyncConnectionPool[AsyncConnection[Any]],
        batches: queue.BatchQueue,
        stop: asyncio.Event,
    ) -> None:
        async with self._write_lock:
            last = await store.last_evaluation(conn, group.key)
            saved = await store.load_alerts(conn, group.key)
        states = {
            r.key: AlertState(r, {a.fingerprint: a for a in saved.get(r.key, [])})
            for r in group.rules
            if r.kind == "alert"
        }
        written = {
            (key, a.fingerprint): _snapshot(a) for key, alerts in saved.items() for a in alerts
        }
        interval_ms, offset_ms = round(group.interval_s * 1000), round(group.offset_s * 1000)

        def slot(t_ms: int) -> int:
            return (t_ms - offset_ms) // interval_ms * interval_ms + offset_ms

        now_ms = int(self._clock() * 1000)
        due = slot(now_ms) if last is None else round(last * 1000) + interval_ms
        while not stop.is_set():
            wait_s = (due - self._clock() * 1000) / 1000
            if wait_s > 0:
                try:
                    await asyncio.wait_for(stop.wait(), wait_s)
                    return
                except TimeoutError:
                    pass
            latest = slot(int(self._clock() * 1000))
            missed = max(0, (latest - due) // interval_ms)
            due = max(due, latest)
            try:
                await self._round(group, due, missed, states, written, conn, pool, batches)
            except (redis.RedisError, OSError) as exc:
                log.warning(
                    "rules %s: round at %d not written (%s); trying it again", group.key, due, exc
                )
                await asyncio.sleep(RETRY_S)
                continue
            due += interval_ms

    async def _round(
        self,
        group: Group,
        ts_ms: int,
        missed: int,
        states: dict[str, AlertState],
        written: dict[tuple[str, str], tuple[Any, ...]],
        conn: AsyncConnection[Any],
        pool: AsyncConnectionPool[AsyncConnection[Any]],
        batches: queue.BatchQueue,
    ) -> None:
        ts = ts_ms / 1000
        started = time.perf_counter()
        out = _Round()
        outcomes: list[store.RuleOutcome] = []
        to_send: list[dict[str, Any]] = []
        for rule in group.rules:
            rule_started = time.perf_counter()
            error = ""
            try:
                samples = await self._query(pool, rule.expr, ts)
                if rule.kind == "record":
                    error = self._record(rule, samples, group.limit, out)
                else:
                    state = states[rule.key]
                    state.step(
                        ts, samples, external_url=self.settings.public_url(), limit=group.limit
                    )
            except (FleetpulseError, LabelsetError, psycopg.Error) as exc:
                error = exc.message if isinstance(exc, FleetpulseError) else str(exc).strip()
                error = error.splitlines()[0] if error else type(exc).__name__
            if rule.kind == "alert":
                to_send.extend(self._due(rule, states[rule.key], ts, group.interval_s))
            outcomes.append(
                store.RuleOutcome(
                    rule.key, "err" if error else "ok", error, time.perf_counter() - rule_started
                )
            )
        await self._publish(group, ts_ms, out, batches)
        self.notifier.send(to_send)
        kept = [(k, a) for k, s in states.items() for a in s.active.values()]
        changed = [(k, a) for k, a in kept if written.get((k, a.fingerprint)) != _snapshot(a)]
        async with self._write_lock:
            await store.save_round(
                conn,
                group.key,
                ts,
                time.perf_counter() - started,
                missed,
                self.identity,
                outcomes,
                kept,
                changed,
            )
        written.clear()
        written.update({(k, a.fingerprint): _snapshot(a) for k, a in kept})
        GROUP_SECONDS.labels(group.name).set(time.perf_counter() - started)
        GROUP_INTERVAL.labels(group.name).set(group.interval_s)
        MISSED.labels(group.name).inc(missed)
        FAILURES.labels(group.name).inc(sum(o.health == "err" for o in outcomes))

    async def _query(
        self, pool: AsyncConnectionPool[AsyncConnection[Any]], expr: str, ts: float
    ) -> list[Sample]:
        async with pool.connection() as conn:
            result = await evaluate(
                conn, expr, ts, ts, 1.0, True, 0.0, self._liveness, max_series=RULE_MAX_SERIES
            )
        return samples_of(result.value)

    @staticmethod
    def _record(rule: Rule, samples: list[Sample], limit: int, out: _Round) -> str:
        if limit and len(samples) > limit:
            return f"exceeded limit of {limit} with {len(samples)} series"
        seen: set[tuple[tuple[str, str], ...]] = set()
        samples = [(without_name(labels), value) for labels, value in samples]
        for labels, _ in samples:
            key = tuple(sorted((k, v) for k, v in {**labels, **rule.labels}.items() if v))
            if key in seen:
                return "vector contains metrics with the same labelset after applying rule labels"
            seen.add(key)
        duplicates = 0
        for labels, value in samples:
            if not out.add(rule.name, {**labels, **rule.labels}, value):
                duplicates += 1
        if duplicates:
            return f"{duplicates} series already written by an earlier rule of the group this round"
        return ""

    def _due(
        self, rule: Rule, state: AlertState, ts: float, interval_s: float
    ) -> list[dict[str, Any]]:
        """The rule's alerts to send now, marked sent (Prometheus' sendAlerts)."""
        resend = self.settings.alert_resend_delay_s
        due = []
        link = generator_url(self.settings.public_url(), rule.expr)
        for alert in state.active.values():
            if not alert.needs_sending(ts, resend):
                continue
            alert.last_sent_at = ts
            alert.valid_until = ts + 4 * max(resend, interval_s)
            due.append(payload(alert, link))
        return due

    async def _publish(
        self, group: Group, ts_ms: int, out: _Round, batches: queue.BatchQueue
    ) -> None:
        epoch = platformbatches.epoch("rules", group.key)
        now_ms = int(self._clock() * 1000)
        stamps = np.array([ts_ms * 1_000_000], dtype=np.int64)
        adds: list[Awaitable[None]] = []
        for agent, series in out.series.items():
            if not series:
                continue
            defs = [(name, dict(labels)) for name, labels in series]
            data = platformbatches.encode(
                agent, epoch, ts_ms, defs, stamps, np.fromiter(series.values(), np.float64)
            )
            adds.append(batches.add(agent, epoch, ts_ms, data, now_ms, keys.FORM_COLUMNS))
        await asyncio.gather(*adds)

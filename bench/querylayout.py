"""What the dataset of ``bench queries`` holds, generated and written in the storage layout the
platform leaves once its jobs have run (ingest/worker/rollups.py, ingest/worker/compress.py):
closed hours compressed, only the open hour hot. querydata.py decides what to write (a seed, a
top-up) and keeps the catalogs; this module makes the values and writes them.

- ``--agents`` (2,000) hosts with ``--series-per-agent`` (50) series each, one point every 10 s.
  The series and their values are bench/hostseries.py's (what the agent sends, in the order a
  smaller ``--series-per-agent`` keeps the dashboard's; gauges with a daily cycle and noise,
  monotonic counters, the kernel's precision); each host has its own phase within the 10 s
  grid, as real agents do. Each agent has one series set holding all its series in series_id
  order (past ``MAX_SET_WIDTH`` series, one set per ``MAX_SET_WIDTH`` of them, as the workers
  split a collection), created once (ingest/worker/series.py SetResolver); a top-up finds them again.
- Raw points: the last ``--raw-hours`` (28 h: 1,008,000,000 points by default, 10,080 per
  series). Those of every closed hour are in ``sample_chunks`` (one row per set and hour, the
  hour's timestamps and one pcodec blob per column: ``samples.encode_chunk``, what
  ingest/worker/compress.py writes; the first hour of the window holds its rows from the window's
  start only); those of the open hour (the hour of the raw end) are hot ``samples`` rows, one
  per set and timestamp, as a worker stores a collection.
- The minute tier, one row per set and minute (count and latest time per set, sum, min, max and
  last per series): the minutes of every closed hour from the hour boundary 24 h before the raw
  end (or the raw window's first hour, when earlier) are in ``minute_chunks`` (one row per set
  and hour, ``samples.encode_minutes``); the closed minutes of the open hour are
  ``set_rollup_1m`` rows. The hour tier: ``set_rollup_1h``, one row per set and closed hour of
  the last 7 days. The open minute and hour are left out of their tier, as the rollup job leaves
  them, so readers take them from the finer tier.
- Minutes and hours are computed here in numpy from the same 10 s values as the raw points, as
  the rollup job computes them (ingest/worker/rollups.py ``reduce_minute``, ``reduce_hour``: a set's
  count and latest time, its series' sum in time order, min, max, and last = the value at the
  latest time), so over the raw window they equal a rollup of the stored points. Minutes before
  the raw window (the minute tier reaches back 24 h) are those of values never stored; hours
  older than the minute tier are synthesised from one value per minute (count 360, sum 6x those
  values' sum), which the 7-day chart cannot tell apart.
- Generation is bounded in memory: values are drawn 10 minutes at a time for a group of agents
  (``GROUP_VALUES``: a group's hour is at most 8.4M values, 64 MB, whatever the fleet's size),
  each (group, 10 minutes) from its own seeded generator (``Fleet.values`` gives any value
  again); a closed hour is encoded group by group (pcodec in ``ENCODE_THREADS`` threads), the
  open hour written 10 minutes at a time for the whole fleet (48 MB of values at the default
  sizes). A thread COPYs meanwhile, in time order as the workers and the jobs write: hours
  oldest first, hot rows time by time with every set at each time, minutes bucket by bucket.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from fleetpulse import samples
from fleetpulse.bench.hostseries import HostModel, host_specs
from fleetpulse.connections import pg_connect
from fleetpulse.copybuf import samples_copy_buffer, set_rollup_buffer
from fleetpulse.ingest.worker.compress import (
    CHUNK_TYPES,
    COPY_CHUNKS,
    COPY_MINUTE_CHUNKS,
    MINUTE_CHUNK_TYPES,
)
from fleetpulse.ingest.worker.rollups import COPY_SET_ROLLUPS, TIER_HOUR, TIER_MINUTE

STEP_S = 10
MINUTE_POINTS = 60 // STEP_S
HOUR_POINTS = 3600 // STEP_S
SLICE_S = 600  # values are drawn, and hot rows written, 10 minutes at a time
# A group of agents has at most this many values in an hour (64 MB as float64): the matrix a
# closed hour is encoded from; the fleet is cut into equal groups under it. The values depend on
# the groups and slices (each has its own generators): changing either changes the dataset.
GROUP_VALUES = 1 << 23
ENCODE_THREADS = max(1, min(4, os.cpu_count() or 1))  # pcodec releases the GIL
ONLINE_SHARE = 0.98
SEED = 20240601


def utc(seconds: float) -> datetime:
    """Unix seconds as an aware UTC datetime."""
    return datetime.fromtimestamp(seconds, UTC)


OPERATING_SYSTEMS = (
    ("linux", "ubuntu-22.04"),
    ("linux", "ubuntu-24.04"),
    ("linux", "debian-12"),
    ("linux", "rhel-9"),
    ("linux", "amzn-2023"),
)
AGENT_VERSIONS = ("0.9.4", "0.9.5", "1.0.0", "1.0.1")
_ROLES = ("web", "api", "db", "cache", "batch", "k8s-node", "edge", "search")
_REGIONS = ("eu-west", "eu-central", "us-east", "us-west", "ap-south")


class Fleet:
    """Every host's parameters and every series' values, reproducible from SEED and the sizes, so
    a top-up continues the same series and a test can generate any stored value again.

    Series are numbered agent-major (an agent's ``series_per_agent`` series in the catalog's
    order). The agents are cut into ``groups`` (consecutive, of equal size, each at most
    ``GROUP_VALUES`` values an hour); a group's host parameters are drawn from a generator of its
    own, and its values of a 10-minute slice (``slice_values``) from another, seeded by the group
    and the slice."""

    def __init__(self, agents: int, series_per_agent: int, epoch0: float) -> None:
        rng = np.random.default_rng(SEED)
        self.agents = agents
        self.series_per_agent = series_per_agent
        self.epoch0 = epoch0
        self.agent_ids = [f"agent-{i:05d}" for i in range(1, agents + 1)]
        self.hostnames = [
            f"{_ROLES[i % len(_ROLES)]}-{_REGIONS[(i // 7) % len(_REGIONS)]}-{i:05d}.example.internal"
            for i in range(1, agents + 1)
        ]
        self.os_index = rng.choice(len(OPERATING_SYSTEMS), agents, p=(0.3, 0.25, 0.25, 0.12, 0.08))
        self.arm = rng.random(agents) < 0.15
        self.version_index = rng.choice(len(AGENT_VERSIONS), agents, p=(0.05, 0.15, 0.3, 0.5))
        self.online = rng.random(agents) < ONLINE_SHARE
        # Each host collects at its own phase within the 10 s grid, in whole microseconds.
        self.offset_us = rng.integers(0, STEP_S * 1_000_000, agents)
        self.specs = host_specs(series_per_agent)
        per_group = max(1, GROUP_VALUES // (series_per_agent * HOUR_POINTS))
        count = -(-agents // per_group)
        size = -(-agents // count)
        self.groups = [(a, min(a + size, agents)) for a in range(0, agents, size)]
        total = agents * series_per_agent
        self.agent_of = np.repeat(np.arange(agents, dtype=np.int64), series_per_agent)
        self.series_ids = np.zeros(total, dtype=np.int32)  # set once the series rows exist
        # The series sets (_load_sets, once the series ids are known): the series in set column
        # order (indices into the arrays above: agent-major, series_id order within an agent),
        # and per set its id, its agent, its width (its columns, consecutive in that order) and
        # its first column; per group its sets (a range) and its series in set column order
        # (indices into its slice_values' rows).
        self.set_order = np.arange(total, dtype=np.int64)
        self.set_ids = np.zeros(0, dtype=np.int32)
        self.set_agent = np.zeros(0, dtype=np.int64)
        self.set_width = np.zeros(0, dtype=np.int64)
        self.set_col = np.zeros(1, dtype=np.int64)
        self.group_sets: list[tuple[int, int]] = []
        self.group_order: list[np.ndarray] = []

    @property
    def series(self) -> int:
        return self.agents * self.series_per_agent

    def _model(self, group: int, *noise_key: int) -> HostModel:
        a0, a1 = self.groups[group]
        return HostModel(
            a1 - a0,
            self.series_per_agent,
            np.random.default_rng((SEED, 1, group)),
            self.epoch0,
            noise=np.random.default_rng((SEED, 2, group, *noise_key)),
        )

    def slice_values(self, group: int, start: float) -> np.ndarray:
        """The group's series (agent-major) at the 10 s grid times of the 10-minute slice from
        ``start`` (a multiple of SLICE_S): (series of the group, SLICE_S / STEP_S)."""
        times = start + STEP_S * np.arange(SLICE_S // STEP_S, dtype=np.float64)
        return self._model(group, 0, int(start)).values(times)

    def minute_values(self, group: int, hour: float) -> np.ndarray:
        """One value per minute of ``hour`` for the group's series (agent-major), at each
        minute's 50th second: what the hours older than the minute tier are synthesised from."""
        times = hour + 60.0 * np.arange(60) + 50.0
        return self._model(group, 1, int(hour)).values(times)

    def values(self, times: np.ndarray) -> np.ndarray:
        """Every series (agent-major) at unix seconds ``times`` (on the 10 s grid), as the seeding
        writes them: shape (series, times). For tests and checks: each call draws whole slices."""
        times = np.asarray(times, dtype=np.float64)
        if np.any(times % STEP_S):
            raise ValueError("times off the 10 s grid")
        out = np.empty((self.series, len(times)))
        starts = times // SLICE_S * SLICE_S
        n = self.series_per_agent
        for start in np.unique(starts):
            cols = np.flatnonzero(starts == start)
            at = ((times[cols] - start) // STEP_S).astype(np.int64)
            for group, (a0, a1) in enumerate(self.groups):
                out[a0 * n : a1 * n, cols] = self.slice_values(group, float(start))[:, at]
        return out

    def block(self, group: int, lo: float, hi: float) -> np.ndarray:
        """The group's values at 10 s in [lo, hi) (within one hour), its series in set column
        order: (series of the group, times)."""
        first = lo // SLICE_S * SLICE_S
        parts = [self.slice_values(group, s) for s in np.arange(first, hi, SLICE_S)]
        whole = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
        cut = whole[:, int(lo - first) // STEP_S : int(hi - first) // STEP_S]
        return cut[self.group_order[group]]


class Writer:
    """COPYs on its own connection in a thread, while the next hour or slice is generated: a
    binary COPY payload (bytes), or rows of the given types (psycopg builds the payload)."""

    def __init__(self, database_url: str) -> None:
        self._conn = pg_connect(database_url, autocommit=True)
        self._conn.execute("SET synchronous_commit = off")
        self._queue: queue.Queue[tuple[str, bytes | list[tuple[Any, ...]], list[str]] | None] = (
            queue.Queue(maxsize=3)
        )
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="copy", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is not None:
                continue
            statement, payload, types = item
            try:
                with self._conn.cursor().copy(statement) as copy:
                    if isinstance(payload, bytes):
                        copy.write(payload)
                    else:
                        copy.set_types(types)
                        for row in payload:
                            copy.write_row(row)
            except BaseException as exc:
                self._error = exc

    def put(self, statement: str, payload: bytes) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put((statement, payload, []))

    def put_rows(self, statement: str, types: list[str], rows: list[tuple[Any, ...]]) -> None:
        if self._error is not None:
            raise self._error
        if rows:
            self._queue.put((statement, rows, types))

    def close(self) -> None:
        """Wait for everything queued to be written; raise what failed."""
        self._queue.put(None)
        self._thread.join()
        self._conn.close()
        if self._error is not None:
            raise self._error


@dataclass
class Written:
    """What one generate() call wrote."""

    points: int = 0  # raw points (in chunks or hot rows)
    set_minutes: int = 0  # a set's minutes (in minute chunks or set_rollup_1m rows)
    set_hours: int = 0  # set_rollup_1h rows
    # Hours whose rows two runs wrote hot (a top-up completed them): to finish (querydata.py).
    to_finish: list[float] = field(default_factory=list)


def _minutes(block: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per series and minute of ``block`` (series, times in whole minutes): the sum (in time
    order, as the rollup job adds a minute's rows), min, max and last value: (series, minutes)."""
    n, t = block.shape
    per = block.reshape(n, t // MINUTE_POINTS, MINUTE_POINTS)
    total = per[:, :, 0] + per[:, :, 1]
    for k in range(2, MINUTE_POINTS):
        total += per[:, :, k]
    return total, per.min(axis=2), per.max(axis=2), np.ascontiguousarray(per[:, :, -1])


def _hour_of_minutes(
    total: np.ndarray, low: np.ndarray, high: np.ndarray, last: np.ndarray
) -> list[np.ndarray]:
    """The hour's sum (the minutes' in time order), min, max and last per series, from its
    minutes (series, minutes)."""
    hour_sum = total[:, 0].copy()
    for m in range(1, total.shape[1]):
        hour_sum += total[:, m]
    return [hour_sum, low.min(axis=1), high.max(axis=1), last[:, -1].copy()]


def _set_rows(fleet: Fleet, sets: range, stats: list[np.ndarray]) -> list[list[np.ndarray]]:
    """Each set's slice of per-series statistics (series in set column order, from the first of
    ``sets``): the arrays of its set_rollup row."""
    base = int(fleet.set_col[sets.start])
    out = []
    for s in sets:
        c0, c1 = int(fleet.set_col[s]) - base, int(fleet.set_col[s + 1]) - base
        out.append([a[c0:c1] for a in stats])
    return out


def _encode_sets(
    fleet: Fleet,
    hour: float,
    sets: range,
    block: np.ndarray,
    minutes: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    raw_from: int,
    base: int,
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The sample_chunks rows (points from column ``raw_from`` of ``block`` on) and minute_chunks
    rows of the closed ``hour`` of these sets (block and minutes: series in set column order from
    column ``base``)."""
    at = samples.at_us(int(hour) * 1_000_000)
    grid_us = (int(hour) + STEP_S * np.arange(HOUR_POINTS, dtype=np.int64)) * 1_000_000
    buckets_us = (int(hour) + 60 * np.arange(60, dtype=np.int64)) * 1_000_000
    counts = np.full(60, MINUTE_POINTS, dtype=np.int64)
    total, low, high, last = minutes
    chunks, minute_chunks = [], []
    for s in sets:
        c0, c1 = int(fleet.set_col[s]) - base, int(fleet.set_col[s + 1]) - base
        set_id = int(fleet.set_ids[s])
        phase = int(fleet.offset_us[fleet.set_agent[s]])
        if raw_from < HOUR_POINTS:
            ts = grid_us[raw_from:] + phase
            ts_blob, blobs = samples.encode_chunk(ts, block[c0:c1, raw_from:].T)
            chunks.append(
                (
                    set_id,
                    at,
                    len(ts),
                    c1 - c0,
                    samples.at_us(int(ts[0])),
                    samples.at_us(int(ts[-1])),
                    ts_blob,
                    blobs,
                )
            )
        m = samples.Minutes(
            buckets_us,
            counts,
            buckets_us + (60 - STEP_S) * 1_000_000 + phase,
            total[c0:c1].T,
            low[c0:c1].T,
            high[c0:c1].T,
            last[c0:c1].T,
        )
        minute_chunks.append((set_id, at, 60, c1 - c0, *samples.encode_minutes(m)))
    return chunks, minute_chunks


def _closed_hour(
    fleet: Fleet,
    writer: Writer,
    pool: ThreadPoolExecutor,
    hour: float,
    raw_start: float,
    written: Written,
) -> None:
    """A closed hour, group by group: its raw points from ``raw_start`` on as sample chunks, its
    minutes as minute chunks, its hour rows."""
    raw_from = max(0, int(raw_start - hour) // STEP_S)
    hour_us = int(hour) * 1_000_000
    for group in range(len(fleet.groups)):
        block = fleet.block(group, hour, hour + 3600)
        minutes = _minutes(block)
        first, end = fleet.group_sets[group]
        base = int(fleet.set_col[first])
        parts = np.array_split(np.arange(first, end), min(ENCODE_THREADS, end - first))
        jobs = [
            pool.submit(
                _encode_sets,
                fleet,
                hour,
                range(int(p[0]), int(p[-1]) + 1),
                block,
                minutes,
                raw_from,
                base,
            )
            for p in parts
            if len(p)
        ]
        chunks: list[tuple[Any, ...]] = []
        minute_chunks: list[tuple[Any, ...]] = []
        for job in jobs:
            c, m = job.result()
            chunks += c
            minute_chunks += m
        writer.put_rows(COPY_CHUNKS, CHUNK_TYPES, chunks)
        writer.put_rows(COPY_MINUTE_CHUNKS, MINUTE_CHUNK_TYPES, minute_chunks)
        sets = range(first, end)
        n = len(sets)
        phase = fleet.offset_us[fleet.set_agent[first:end]]
        writer.put(
            COPY_SET_ROLLUPS[TIER_HOUR],
            set_rollup_buffer(
                fleet.set_ids[first:end],
                np.full(n, hour_us, dtype=np.int64),
                np.full(n, HOUR_POINTS, dtype=np.int64),
                hour_us + (3600 - STEP_S) * 1_000_000 + phase,
                _set_rows(fleet, sets, _hour_of_minutes(*minutes)),
            ),
        )
        written.points += max(0, HOUR_POINTS - raw_from) * block.shape[0]
        written.set_minutes += 60 * n
        written.set_hours += n


def _hot(
    fleet: Fleet, writer: Writer, lo: float, hi: float, raw_start: float, written: Written
) -> None:
    """[lo, hi) of the open hour (or of one a top-up completes), 10 minutes at a time for the
    whole fleet: samples rows from ``raw_start`` on (time by time, every set at each time) and
    set_rollup_1m rows (minute by minute, every set)."""
    sets = range(len(fleet.set_ids))
    phase = fleet.offset_us[fleet.set_agent]
    start = lo
    while start < hi:
        end = min(hi, (start // SLICE_S + 1) * SLICE_S)
        block = np.concatenate([fleet.block(g, start, end) for g in range(len(fleet.groups))])
        grid = start + STEP_S * np.arange(round((end - start) / STEP_S), dtype=np.float64)
        raw_cols = np.flatnonzero(grid >= raw_start)
        if len(raw_cols):
            times = len(raw_cols)
            row_start = np.zeros(len(sets) * times + 1, dtype=np.int64)
            np.cumsum(np.tile(fleet.set_width, times), out=row_start[1:])
            row_ts_us = (grid[raw_cols].astype(np.int64) * 1_000_000)[:, None] + phase[None, :]
            writer.put(
                samples.COPY_SAMPLES,
                samples_copy_buffer(
                    np.tile(fleet.set_ids, times),
                    row_start,
                    row_ts_us.ravel(),
                    block[:, raw_cols].T.ravel(),
                ),
            )
            written.points += block.shape[0] * times
        total, low, high, last = _minutes(block)
        count = total.shape[1]
        rows: list[list[np.ndarray]] = []
        for m in range(count):
            rows += _set_rows(fleet, sets, [total[:, m], low[:, m], high[:, m], last[:, m]])
        buckets_us = (int(start) + 60 * np.arange(count, dtype=np.int64)) * 1_000_000
        last_ts_us = (buckets_us + (60 - STEP_S) * 1_000_000)[:, None] + phase[None, :]
        writer.put(
            COPY_SET_ROLLUPS[TIER_MINUTE],
            set_rollup_buffer(
                np.tile(fleet.set_ids, count),
                np.repeat(buckets_us, len(sets)),
                np.full(count * len(sets), MINUTE_POINTS, dtype=np.int64),
                last_ts_us.ravel(),
                rows,
            ),
        )
        written.set_minutes += count * len(sets)
        start = end


def generate(
    fleet: Fleet, writer: Writer, start: float, end: float, raw_start: float, progress: bool
) -> Written:
    """Write [start, end) (minute-aligned): every hour whole in it compressed (_closed_hour), the
    rest hot (_hot); raw points from ``raw_start`` on, minutes and hours of all of it. A closed
    hour only partly in it (a top-up completing the hour that was open) is written hot and
    listed in ``to_finish``."""
    written = Written()
    began = time.monotonic()
    with ThreadPoolExecutor(ENCODE_THREADS, thread_name_prefix="encode") as pool:
        hour = start // 3600 * 3600
        while hour < end:
            lo, hi = max(start, hour), min(end, hour + 3600)
            if lo == hour and hi == hour + 3600:
                _closed_hour(fleet, writer, pool, hour, raw_start, written)
            else:
                _hot(fleet, writer, lo, hi, raw_start, written)
                if hi == hour + 3600:
                    written.to_finish.append(hour)
                    written.set_hours += len(fleet.set_ids)
            hour += 3600
            if progress:
                elapsed = time.monotonic() - began
                sys.stderr.write(
                    f"  {utc(lo):%Y-%m-%d %H:%M} to {utc(hi):%H:%M}: {written.points:,} points"
                    f" in {elapsed:.0f} s ({written.points / max(elapsed, 1e-9):,.0f} points/s)\n"
                )
    return written


def old_hours(fleet: Fleet, writer: Writer, start: float, end: float) -> int:
    """Hours older than the minute tier, as set_rollup_1h rows: one value per minute stands for
    its six points."""
    rows = 0
    bucket = start
    phase = fleet.offset_us[fleet.set_agent]
    while bucket < end:
        hour_us = int(bucket) * 1_000_000
        for group in range(len(fleet.groups)):
            values = fleet.minute_values(group, bucket)[fleet.group_order[group]]
            first, last_set = fleet.group_sets[group]
            sets = range(first, last_set)
            stats = [6 * values.sum(axis=1), values.min(axis=1), values.max(axis=1), values[:, -1]]
            writer.put(
                COPY_SET_ROLLUPS[TIER_HOUR],
                set_rollup_buffer(
                    fleet.set_ids[first:last_set],
                    np.full(len(sets), hour_us, dtype=np.int64),
                    np.full(len(sets), HOUR_POINTS, dtype=np.int64),
                    hour_us + (3600 - STEP_S) * 1_000_000 + phase[first:last_set],
                    _set_rows(fleet, sets, stats),
                ),
            )
            rows += len(sets)
        bucket += 3600
    return rows

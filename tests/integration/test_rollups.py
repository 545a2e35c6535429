"""Rollup tiers against real PostgreSQL: equal to aggregates of the raw points, corrected by late
data, never double counted, and exact when a chunk commits while the job is running."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import numpy as np
import psycopg
import pytest

from fleetpulse.ingest.worker.copier import ChunkWriter
from fleetpulse.ingest.worker.decode import BatchRef, Decoded
from fleetpulse.ingest.worker.rollups import RollupJob

MINUTE_US = 60_000_000


@pytest.fixture
def conns(database_url: str) -> Iterator[tuple[psycopg.Connection, psycopg.Connection]]:
    with (
        psycopg.connect(database_url) as conn,
        psycopg.connect(database_url, autocommit=True) as ddl,
    ):
        yield conn, ddl


def make_series(conn: psycopg.Connection, count: int) -> list[int]:
    ids = [
        row[0]
        for row in conn.execute(
            "INSERT INTO series (agent_id, name, labels)"
            " SELECT 'r', 'm', jsonb_build_object('i', i::text) FROM generate_series(1, %s) i"
            " RETURNING series_id",
            (count,),
        )
    ]
    conn.commit()
    return ids


class Batches:
    """Writes points through the real ChunkWriter, one new batch identity per call."""

    def __init__(self, conn: psycopg.Connection, ddl: psycopg.Connection) -> None:
        self.writer = ChunkWriter(conn, ddl, retention_days=7, max_future_s=3600)
        self.seq = 0

    def decoded(self, series: np.ndarray, ts_us: np.ndarray, values: np.ndarray) -> Decoded:
        self.seq += 1
        return Decoded(
            batches=[BatchRef("s", f"{self.seq}-0", "r", 1, self.seq)],
            batch_index=np.zeros(len(series), dtype=np.int32),
            series_ids=series.astype(np.int32),
            ts_unix_us=ts_us.astype(np.int64),
            values=values.astype(np.float64),
        )

    def write(self, series: np.ndarray, ts_us: np.ndarray, values: np.ndarray) -> Decoded:
        decoded = self.decoded(series, ts_us, values)
        self.writer.write(decoded)
        return decoded


def expected(series: np.ndarray, ts_us: np.ndarray, values: np.ndarray, width_us: int) -> dict:
    """Aggregates computed in Python from the points themselves, independent of SQL."""
    groups: dict[tuple[int, int], list[tuple[int, float]]] = {}
    for s, t, v in zip(series.tolist(), ts_us.tolist(), values.tolist(), strict=True):
        groups.setdefault((s, t - t % width_us), []).append((t, v))
    result = {}
    for key, pts in groups.items():
        vals = [v for _, v in pts]
        last_ts = max(t for t, _ in pts)
        last = max(v for t, v in pts if t == last_ts)
        result[key] = (len(vals), sum(vals), min(vals), max(vals), last, last_ts)
    return result


def stored(conn: psycopg.Connection, table: str) -> dict:
    rows = conn.execute(
        f"SELECT series_id, (extract(epoch FROM bucket) * 1e6)::int8, count, sum, min, max, last,"
        f" (extract(epoch FROM last_ts) * 1e6)::int8 FROM all_{table}"
    ).fetchall()
    conn.commit()
    return {(r[0], r[1]): tuple(r[2:]) for r in rows}


def assert_same(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for key, (count, total, low, high, last, last_ts) in want.items():
        g = got[key]
        assert (g[0], g[2], g[3], g[4], g[5]) == (count, low, high, last, last_ts), key
        assert g[1] == pytest.approx(total, rel=1e-12), key  # summation order may differ


def hour_start_us(now: datetime, hours_ago: int) -> int:
    start = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=hours_ago)
    return int(start.timestamp()) * 1_000_000


def random_points(rng: np.random.Generator, series: list[int], start_us: int, span_us: int, n: int):
    s = rng.choice(np.array(series), size=n)
    # whole milliseconds, so timestamps round-trip exactly; some repeat (same-ts tie-break)
    ts = start_us + rng.integers(0, span_us // 1000, size=n) * 1000
    ts[: n // 20] = ts[n // 20 : 2 * (n // 20)]
    v = np.round(rng.normal(50, 20, size=n), 3)
    return s, ts, v


def test_rollups_equal_aggregates_of_the_raw_points(conns) -> None:
    conn, ddl = conns
    rng = np.random.default_rng(7)
    series = make_series(conn, 40)
    now = datetime.now(UTC)
    start = hour_start_us(now, 3)  # three closed hours
    batches = Batches(conn, ddl)
    all_s, all_t, all_v = [], [], []
    for _ in range(6):  # several chunks, each spread over the whole span
        s, t, v = random_points(rng, series, start, 3 * 3600 * 1_000_000, 5_000)
        batches.write(s, t, v)
        all_s.append(s), all_t.append(t), all_v.append(v)
    s, t, v = np.concatenate(all_s), np.concatenate(all_t), np.concatenate(all_v)

    result = RollupJob(ddl).catch_up()

    assert result.minutes == 180 and result.hours == 3
    assert_same(stored(conn, "rollup_1m"), expected(s, t, v, MINUTE_US))
    assert_same(stored(conn, "rollup_1h"), expected(s, t, v, 60 * MINUTE_US))
    # ...and to what SQL computes over the raw table for any minute
    raw = conn.execute(
        "SELECT count(*), min(value), max(value) FROM all_points WHERE ts >= %s AND ts < %s",
        (datetime.fromtimestamp(start / 1e6, UTC), datetime.fromtimestamp(start / 1e6 + 60, UTC)),
    ).fetchone()
    rolled = conn.execute(
        "SELECT sum(count), min(min), max(max) FROM all_rollup_1m WHERE bucket = %s",
        (datetime.fromtimestamp(start / 1e6, UTC),),
    ).fetchone()
    assert raw == rolled


def test_late_points_correct_closed_buckets(conns) -> None:
    conn, ddl = conns
    series = make_series(conn, 2)
    start = hour_start_us(datetime.now(UTC), 2)
    batches = Batches(conn, ddl)
    ts = np.array([start, start + 10_000_000, start + 70_000_000])
    batches.write(np.array([series[0]] * 3), ts, np.array([1.0, 2.0, 3.0]))
    job = RollupJob(ddl)
    job.catch_up()
    first_minute = (series[0], start)
    assert stored(conn, "rollup_1m")[first_minute][:5] == (2, 3.0, 1.0, 2.0, 2.0)

    # A point for that minute arrives an hour late (an agent replaying its spool).
    batches.write(np.array([series[0]]), np.array([start + 50_000_000]), np.array([-5.0]))
    job.catch_up()
    assert stored(conn, "rollup_1m")[first_minute][:5] == (3, -2.0, -5.0, 2.0, -5.0)
    assert stored(conn, "rollup_1h")[(series[0], start)][:5] == (4, 1.0, -5.0, 3.0, 3.0)


def test_redelivered_batch_is_not_counted_twice(conns) -> None:
    conn, ddl = conns
    series = make_series(conn, 1)
    start = hour_start_us(datetime.now(UTC), 1)
    batches = Batches(conn, ddl)
    decoded = batches.decoded(np.array(series * 3), start + np.arange(3) * 1_000_000, np.ones(3))
    batches.writer.write(decoded)
    RollupJob(ddl).catch_up()
    batches.writer.write(decoded)  # the same batch again: the ledger makes it a no-op
    # nothing new was written, so nothing was marked (the closed hour's mark was consumed too)
    assert conn.execute("SELECT count(*) FROM rollup_dirty WHERE tier < 3").fetchone() == (0,)
    conn.commit()
    RollupJob(ddl).catch_up()
    assert stored(conn, "rollup_1m")[(series[0], start)][0] == 3


def test_open_minute_waits_until_it_closes(conns) -> None:
    conn, ddl = conns
    series = make_series(conn, 1)
    now_us = int(datetime.now(UTC).timestamp() * 1_000_000)
    # the minute after this one is still open for the whole test
    open_minute = now_us - now_us % MINUTE_US + MINUTE_US
    Batches(conn, ddl).write(np.array(series), np.array([open_minute + 1]), np.array([1.0]))
    RollupJob(ddl).catch_up()
    assert stored(conn, "rollup_1m") == {}
    assert conn.execute("SELECT count(*) FROM rollup_dirty WHERE tier = 1").fetchone() == (1,)


def test_chunk_committing_during_a_round_is_rolled_up_next_round(conns, database_url: str) -> None:
    """The race the marks are designed for: points for a minute commit after the job has taken
    that minute's marks and read its points. The late chunk's own mark brings the minute back."""
    conn, ddl = conns
    series = make_series(conn, 1)
    start = hour_start_us(datetime.now(UTC), 1)
    Batches(conn, ddl).write(np.array(series), np.array([start]), np.array([1.0]))

    with (
        psycopg.connect(database_url) as other,
        psycopg.connect(database_url, autocommit=True) as d2,
    ):
        late = Batches(other, d2)
        late.seq = 100
        # The late chunk's transaction is open (points and mark written, not committed) while the
        # job takes the committed mark and recomputes without it.
        decoded = late.decoded(np.array(series), np.array([start + 1_000_000]), np.array([9.0]))
        with other.transaction():
            late.writer.write(decoded)
            RollupJob(ddl).run_round()
            assert stored(conn, "rollup_1m")[(series[0], start)][0] == 1
    RollupJob(ddl).catch_up()
    assert stored(conn, "rollup_1m")[(series[0], start)][:4] == (2, 10.0, 1.0, 9.0)


def test_worker_keeps_rollups_current(database_url: str, redis_url: str) -> None:
    """The whole path: batches through Redis, a worker with its rollup thread, rollups appear."""
    import threading
    import time

    import redis

    from fleetpulse.ingest.worker.consumer import Worker
    from fleetpulse.settings import Settings
    from tests.integration.test_worker import make_batch, xadd

    settings = Settings(
        database_url=database_url,
        redis_url=redis_url,
        stream_shards=2,
        rollup_interval_s=0.1,
        rollup_settle_s=0.2,
        worker_block_ms=100,
    )
    client = redis.Redis.from_url(redis_url)
    two_minutes_ago = time.time() - 120
    for seq in range(1, 4):
        xadd(client, "rw", 1, seq, make_batch("rw", 1, seq, 5, ts_s=two_minutes_ago), shards=2)
    worker = Worker(settings, "rollup-test")
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        with psycopg.connect(database_url, autocommit=True) as conn:
            while time.monotonic() < deadline:
                row = conn.execute("SELECT coalesce(sum(count), 0) FROM all_rollup_1m").fetchone()
                if row == (15,):
                    break
                time.sleep(0.1)
            assert row == (15,)
            logged = conn.execute("SELECT tier, rows, lag_s >= 0 FROM rollup_log").fetchall()
            assert (1, 1, True) in logged  # one row: the set of the batches' 5 series
    finally:
        worker.stop()
        thread.join(10)
        worker.close()
        client.close()

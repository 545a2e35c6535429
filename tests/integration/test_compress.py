"""Compression of closed hours (ingest/worker/compress.py) against real PostgreSQL: an hour's ``samples``
rows become one ``sample_chunks`` row per series set and hour, every point is read back bit for bit
and exactly once (``samples.read_points``), the rollup tiers stay as they were, late rows into a
compressed hour are rolled up with the chunk and merged into it, an hour whose minutes wait for
their rollup is left alone, emptied day partitions are given back, and one process compresses at a
time.

Points are written through the worker's ChunkWriter (so the minutes are marked as a worker marks
them); the rollup job and the compression job run to completion with ``catch_up``."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import numpy as np
import psycopg
import pytest

from fleetpulse import locks, partitions, samples
from fleetpulse.ingest.worker import compress
from fleetpulse.ingest.worker.compress import CompressJob
from fleetpulse.ingest.worker.copier import ChunkWriter
from fleetpulse.ingest.worker.decode import BatchRef, Decoded
from fleetpulse.ingest.worker.rollups import RollupJob
from tests.integration.test_samples import assert_aggregates_equal, pg_aggregate, rollup_rows, us

SECOND_US = 1_000_000
MINUTE_US = 60 * SECOND_US
HOUR_US = 60 * MINUTE_US
NAN, INF = float("nan"), float("inf")
ODD = [NAN, INF, -INF, -0.0, 5e-324, 1.7976931348623157e308, -2.5]
EVERYTHING = (datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection]:
    """Autocommit, UTC: the test's queries and both jobs."""
    with psycopg.connect(database_url, autocommit=True, options="-c TimeZone=UTC") as conn:
        yield conn


class Writer:
    """Writes batches through the worker's ChunkWriter (samples rows and the minutes' dirty marks
    in one transaction), one new batch identity per call, and remembers every point written."""

    def __init__(self, database_url: str) -> None:
        self.conn = psycopg.connect(database_url)
        self.ddl = psycopg.connect(database_url, autocommit=True)
        self.chunks = ChunkWriter(self.conn, self.ddl, retention_days=7, max_future_s=3600)
        self.seq = 0
        self.sent: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def close(self) -> None:
        self.conn.close()
        self.ddl.close()

    def series(self, agent: str, count: int, prefix: str = "") -> list[int]:
        ids = [
            row[0]
            for row in self.ddl.execute(
                "INSERT INTO series (agent_id, name, labels)"
                " SELECT %s, 'm', jsonb_build_object('i', %s || i::text)"
                " FROM generate_series(1, %s) i RETURNING series_id",
                (agent, prefix, count),
            )
        ]
        return sorted(ids)

    def write(self, agent: str, series, ts_us, values) -> None:
        """One batch of points (series, µs, value), in any order."""
        series = np.asarray(series, dtype=np.int32)
        ts_us = np.asarray(ts_us, dtype=np.int64)
        values = np.asarray(values, dtype=np.float64)
        self.seq += 1
        decoded = Decoded(
            batches=[BatchRef("s", f"{self.seq}-0", agent, 1, self.seq)],
            batch_index=np.zeros(len(series), dtype=np.int32),
            series_ids=series,
            ts_unix_us=ts_us,
            values=values,
        )
        result = self.chunks.write(decoded)
        assert result.points_committed == len(series)
        self.sent.append((series.astype(np.int64), ts_us, values))

    def collections(self, agent: str, series: list[int], ts_us, matrix) -> None:
        """One batch of collections: at each timestamp, one value per series (a samples row)."""
        ts_us = np.asarray(ts_us, dtype=np.int64)
        matrix = np.asarray(matrix, dtype=np.float64).reshape(len(ts_us), len(series))
        self.write(
            agent, np.tile(series, len(ts_us)), np.repeat(ts_us, len(series)), matrix.ravel()
        )

    def expected(self, lo_us: int | None = None, hi_us: int | None = None) -> Counter:
        if not self.sent:
            return Counter()
        s, t, v = (np.concatenate(column) for column in zip(*self.sent, strict=True))
        keep = np.ones(len(t), dtype=bool)
        if lo_us is not None:
            keep &= t >= lo_us
        if hi_us is not None:
            keep &= t < hi_us
        return multiset(s[keep], t[keep], v[keep])

    def all_series(self) -> list[int]:
        return sorted({int(x) for s, _, _ in self.sent for x in np.unique(s)})


@pytest.fixture
def writer(database_url: str) -> Iterator[Writer]:
    w = Writer(database_url)
    yield w
    w.close()


def multiset(series: np.ndarray, ts_us: np.ndarray, values: np.ndarray) -> Counter:
    """Points as a multiset of (series, µs, the value's 64 bits): NaN, -0.0 and every other
    value compared bit for bit."""
    bits = np.ascontiguousarray(values, dtype=np.float64).view(np.int64)
    return Counter(
        zip(
            np.asarray(series, np.int64).tolist(),
            np.asarray(ts_us, np.int64).tolist(),
            bits.tolist(),
            strict=True,
        )
    )


def read_back(db: psycopg.Connection, ids: list[int], lo=None, hi=None) -> Counter:
    lo = EVERYTHING[0] if lo is None else lo
    hi = EVERYTHING[1] if hi is None else hi
    points = samples.read_points(db, ids, lo, hi)
    return multiset(points.series_id, points.ts_unix_us, points.value)


def at(ts_us: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=ts_us)


def hour_start_us(hours_ago: int) -> int:
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    return int((now - timedelta(hours=hours_ago)).timestamp()) * SECOND_US


def day_start_us(day: date) -> int:
    return int(partitions.day_start(day).timestamp()) * SECOND_US


def hot_rows(db: psycopg.Connection, lo_us: int, hi_us: int) -> int:
    row = db.execute(
        "SELECT count(*) FROM samples WHERE ts >= %s AND ts < %s", (at(lo_us), at(hi_us))
    ).fetchone()
    return row[0]


def hot_shape(db: psycopg.Connection, lo_us: int, hi_us: int) -> tuple[int, int]:
    """(samples rows, distinct (set, hour)) in [lo, hi): what compression turns into chunks."""
    return db.execute(
        "SELECT count(*), count(DISTINCT (set_id, date_trunc('hour', ts))) FROM samples"
        " WHERE ts >= %s AND ts < %s",
        (at(lo_us), at(hi_us)),
    ).fetchone()


def hot_minutes(db: psycopg.Connection, lo_us: int, hi_us: int) -> int:
    row = db.execute(
        "SELECT count(*) FROM set_rollup_1m WHERE bucket >= %s AND bucket < %s",
        (at(lo_us), at(hi_us)),
    ).fetchone()
    return row[0]


def minute_chunk_sets(db: psycopg.Connection, lo_us: int, hi_us: int) -> set[tuple[int, int]]:
    """(set, hour µs) of the minute chunks of hours in [lo, hi)."""
    return set(
        db.execute(
            f"SELECT set_id, {us('hour')} FROM minute_chunks WHERE hour >= %s AND hour < %s",
            (at(lo_us), at(hi_us)),
        ).fetchall()
    )


def chunk_rows(db: psycopg.Connection, lo_us: int, hi_us: int) -> list[tuple[int, int, int]]:
    """(set, hour µs, rows) of the chunks of hours in [lo, hi)."""
    return db.execute(
        f"SELECT set_id, {us('hour')}, rows FROM sample_chunks"
        " WHERE hour >= %s AND hour < %s ORDER BY 1, 2",
        (at(lo_us), at(hi_us)),
    ).fetchall()


def set_rollups(db: psycopg.Connection) -> set[tuple]:
    """Every per-set rollup row, hot or in a minute chunk, its arrays as their values' bits (so NaN
    and -0.0 compare exactly)."""

    def bits(values: np.ndarray) -> tuple[int, ...]:
        return tuple(np.ascontiguousarray(values, dtype=np.float64).view(np.int64).tolist())

    found = set()
    for table in ("set_rollup_1m", "set_rollup_1h"):
        with db.cursor(binary=True) as cur:
            rows = cur.execute(
                f"SELECT set_id, {us('bucket')}, count::int8, {us('last_ts')}, array_send(sum),"
                f" array_send(min), array_send(max), array_send(last) FROM {table}"
            ).fetchall()
        for row in rows:
            m = samples.minute_rows([row])
            found.add((table[-2:], row[0], row[1], row[2], row[3], *(bits(a[0]) for a in stats(m))))
    with db.cursor(binary=True) as cur:
        chunks = cur.execute(
            "SELECT set_id, minutes, buckets, counts, last_ts, sum, min_max_last FROM minute_chunks"
        ).fetchall()
    for set_id, *blobs in chunks:
        m = samples.decode_minutes(*blobs)
        for i in range(len(m)):
            found.add(
                (
                    "1m",
                    set_id,
                    int(m.bucket_us[i]),
                    int(m.count[i]),
                    int(m.last_ts_us[i]),
                    *(bits(a[i]) for a in stats(m)),
                )
            )
    return found


def stats(m: samples.Minutes) -> tuple[np.ndarray, ...]:
    return m.sum, m.min, m.max, m.last


def tier_marks(db: psycopg.Connection, tier: int) -> list[int]:
    return [
        row[0]
        for row in db.execute(
            f"SELECT DISTINCT {us('bucket')} FROM rollup_dirty WHERE tier = %s ORDER BY 1", (tier,)
        )
    ]


def aggregates(db: psycopg.Connection, ids: list[int], width_us: int, lo=None, hi=None) -> dict:
    """Per (series, bucket), PostgreSQL's aggregates of the raw points as read_points reads them
    (hot rows and chunks), computed in Python (test_samples.pg_aggregate)."""
    lo = EVERYTHING[0] if lo is None else lo
    hi = EVERYTHING[1] if hi is None else hi
    points = samples.read_points(db, ids, lo, hi)
    groups: dict[tuple[int, int], list[tuple[int, float]]] = {}
    for s, t, v in zip(
        points.series_id.tolist(), points.ts_unix_us.tolist(), points.value.tolist(), strict=True
    ):
        groups.setdefault((s, t - t % width_us), []).append((t, v))
    return {bucket: pg_aggregate(pts) for bucket, pts in groups.items()}


# --- Tests ----------------------------------------------------------------------------------


def test_closed_hours_are_compressed_and_read_back_exactly(
    db: psycopg.Connection, writer: Writer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two closed hours either side of the midnight that began yesterday: two day partitions.
    midnight = day_start_us(datetime.now(UTC).date() - timedelta(days=1))
    h0, h1 = midnight - HOUR_US, midnight
    lo, hi = h0, h1 + HOUR_US
    rng = np.random.default_rng(2024)

    # A steady agent: 6 series collected every 15 s over both hours (one set), full-precision
    # values and every odd one, in several batches.
    steady = writer.series("steady", 6)
    stamps = np.arange(h0, h1 + HOUR_US, 15 * SECOND_US)
    matrix = rng.standard_normal((len(stamps), len(steady))) * 1e6
    matrix[:2].flat[: len(ODD)] = ODD
    matrix[-2:].flat[-len(ODD) :] = ODD
    matrix[len(stamps) // 2, :] = ODD[: len(steady)]
    for part in np.array_split(np.arange(len(stamps)), 5):
        writer.collections("steady", steady, stamps[part], matrix[part])

    # A batch across midnight, and a series with two points at one timestamp (a second row of
    # its own: another set), also in a row with another series.
    night = writer.series("night", 3)
    across = np.arange(midnight - 30 * SECOND_US, midnight + 30 * SECOND_US, 7 * SECOND_US)
    writer.collections("night", night[:2], across, rng.normal(0, 1, (len(across), 2)))
    twice = h0 + 5 * MINUTE_US + 123_456
    writer.write(
        "night",
        [night[2], night[2], night[1], night[2]],
        [twice, twice, twice, twice + SECOND_US],
        [1.5, NAN, -0.0, 2.5],
    )

    # An agent whose series set changes with every batch (ten sets, some repeated).
    shifty = writer.series("shifty", 8)
    for k in range(12):
        members = shifty[k % 5 : k % 5 + 1 + k % 4]
        when = h0 + k * 9 * MINUTE_US + np.arange(3) * 13 * SECOND_US + k
        writer.collections("shifty", members, when, rng.normal(k, 1, (3, len(members))))

    ids = writer.all_series()
    want = writer.expected()
    assert sum(want.values()) == len(stamps) * 6 + len(across) * 2 + 4 + sum(
        3 * len(shifty[k % 5 : k % 5 + 1 + k % 4]) for k in range(12)
    )
    assert read_back(db, ids) == want

    rolled = RollupJob(db).catch_up()
    assert rolled.hours == 2
    assert tier_marks(db, compress.TIER_COMPRESS) == [h0, h1]
    tiers = set_rollups(db)
    minutes, hours = rollup_rows(db, "rollup_1m", ids), rollup_rows(db, "rollup_1h", ids)
    rows, set_hours = hot_shape(db, lo, hi)
    assert set_hours >= 12  # several sets in each hour
    minute_rows = hot_minutes(db, lo, hi)
    assert minute_rows > set_hours

    # Small transactions: an hour takes several batches of sets.
    job = CompressJob(db)
    monkeypatch.setattr(compress, "BATCH_VALUES", 1)  # one set per batch
    result = job.catch_up()

    assert (result.hours, result.deferred, result.rows, result.chunks) == (2, 0, rows, set_hours)
    # The minute tier went with them: one minute chunk per set and hour, no minute row left.
    assert (result.minute_rows, result.minute_chunks) == (minute_rows, set_hours)
    assert hot_minutes(db, lo, hi) == 0
    assert minute_chunk_sets(db, lo, hi) == {(s, h) for s, h, _ in chunk_rows(db, lo, hi)}
    assert result.days == {at(h0).date(), at(h1).date()}
    assert hot_rows(db, lo, hi) == 0
    chunks = chunk_rows(db, lo, hi)
    assert len(chunks) == set_hours == len({(s, h) for s, h, _ in chunks})
    assert {h for _, h, _ in chunks} == {h0, h1}
    assert sum(n for _, _, n in chunks) == rows
    assert tier_marks(db, compress.TIER_COMPRESS) == []

    # Every point exactly once, bit for bit; and any window of them.
    assert read_back(db, ids) == want
    for a, b in [
        (h0 + 10 * MINUTE_US, h1 + 20 * MINUTE_US),
        (midnight - 14 * SECOND_US, midnight + 14 * SECOND_US),
        (twice, twice + 1),
        (h0, h0 + 15 * SECOND_US),
    ]:
        assert read_back(db, ids, at(a), at(b)) == writer.expected(a, b), (a, b)
    got = samples.read_points(db, [night[2]], at(twice), at(twice + 1))
    assert sorted(got.value.view(np.int64).tolist()) == sorted(
        np.array([1.5, NAN]).view(np.int64).tolist()
    )

    # The rollup tiers are untouched, and nothing is left for the rollup job to redo.
    assert set_rollups(db) == tiers
    assert rollup_rows(db, "rollup_1m", ids).keys() == minutes.keys()
    assert rollup_rows(db, "rollup_1h", ids).keys() == hours.keys()
    again = RollupJob(db).catch_up()
    assert (again.minutes, again.hours) == (0, 0)
    assert set_rollups(db) == tiers
    # ...and they still equal the raw points, now read from the chunks.
    assert_aggregates_equal(rollup_rows(db, "rollup_1m", ids), aggregates(db, ids, MINUTE_US))
    assert_aggregates_equal(rollup_rows(db, "rollup_1h", ids), aggregates(db, ids, HOUR_US))
    # A second pass finds nothing to do.
    assert CompressJob(db).catch_up().hours == 0
    assert read_back(db, ids) == want


def test_late_rows_into_a_compressed_hour_are_rolled_up_and_merged(
    db: psycopg.Connection, writer: Writer
) -> None:
    hour = hour_start_us(3)
    end = hour + HOUR_US
    a, b = writer.series("late", 4, "a"), writer.series("late", 2, "b")
    new = writer.series("late", 1, "new")
    every20 = hour + np.arange(0, HOUR_US, 20 * SECOND_US)
    writer.collections("late", a, every20, np.arange(len(every20) * 4) % 97 - 40.5)
    first10 = hour + np.arange(0, 10 * MINUTE_US, 30 * SECOND_US)
    writer.collections("late", b, first10, np.arange(len(first10) * 2) * 0.25)
    # Set c gets no late rows: its minutes stay compressed, and the hour's recompute reads them
    # from its minute chunk.
    c = writer.series("late", 2, "c")
    writer.collections("late", c, every20, np.arange(len(every20) * 2) * -1.5)
    RollupJob(db).catch_up()
    assert CompressJob(db).catch_up().hours == 1
    assert hot_rows(db, hour, end) == 0
    before = {s: n for s, _, n in chunk_rows(db, hour, end)}
    assert len(before) == 3
    (c_set,) = {
        s for (s,) in db.execute("SELECT set_id FROM set_members WHERE series_id = %s", (c[0],))
    }
    ids = a + b + new + c

    # Late batches: set a again (a timestamp of the chunk again, tying the minute's last; a new
    # last of a minute; a new last of the hour, with a NaN), set b in a minute it had no rows in,
    # and a new set holding one of a's series and a new series.
    writer.collections("late", a, [hour + 3 * MINUTE_US + 40 * SECOND_US], [[99.0, -99.0, 0.5, 7]])
    writer.collections("late", a, [hour + 7 * MINUTE_US + 50 * SECOND_US], [[1, 2, 3, 4]])
    writer.collections("late", a, [end - 1], [[NAN, INF, -0.0, -1e300]])
    writer.collections("late", b, [hour + 45 * MINUTE_US + 1], [[-3.0, 3.0]])
    writer.collections(
        "late",
        [a[0], new[0]],
        [hour + 3 * MINUTE_US + 5 * SECOND_US, hour + 30 * MINUTE_US],
        [[-1000.0, 8.0], [1000.0, 9.0]],
    )
    marked = tier_marks(db, 1)
    assert marked == sorted(
        hour + m * MINUTE_US for m in (3, 7, 59, 45, 30)
    )  # the closed minutes again
    assert hot_rows(db, hour, end) == 6
    # Read back while hot and compressed at once: each point once.
    assert read_back(db, ids) == writer.expected()

    RollupJob(db).catch_up()
    lo, hi = at(hour), at(end)
    assert_aggregates_equal(
        rollup_rows(db, "rollup_1m", ids), aggregates(db, ids, MINUTE_US, lo, hi)
    )
    assert_aggregates_equal(rollup_rows(db, "rollup_1h", ids), aggregates(db, ids, HOUR_US, lo, hi))
    # a bucket by hand: a[0] in minute 3 had 3 points (the last, at 3:40, tied by 99.0), plus
    # -1000.0 from the new set
    minute3 = rollup_rows(db, "rollup_1m", [a[0]])[(a[0], hour + 3 * MINUTE_US)]
    assert minute3[0] == 5 and minute3[2] == -1000.0 and minute3[4] == 99.0
    assert minute3[5] == hour + 3 * MINUTE_US + 40 * SECOND_US
    assert tier_marks(db, 1) == [] and tier_marks(db, 2) == []
    assert tier_marks(db, compress.TIER_COMPRESS) == [hour]
    # Both sets got late rows: their minute chunks went back to set_rollup_1m, whole (the
    # minutes without late rows too), and the new set's minutes are rows of their own.
    assert minute_chunk_sets(db, hour, end) == {(c_set, hour)}
    assert hot_minutes(db, hour, end) == 60 + 11 + 2
    tiers = set_rollups(db)

    result = CompressJob(db).catch_up()
    assert (result.hours, result.rows, result.deferred) == (1, 6, 0)
    assert hot_rows(db, hour, end) == 0
    after = chunk_rows(db, hour, end)
    assert len(after) == len({s for s, _, _ in after}) == 4  # one chunk per set and hour
    merged = {s: n for s, _, n in after}
    assert {s: merged[s] for s in before} == {
        s: n + (0 if s == c_set else 3 if n == len(every20) else 1) for s, n in before.items()
    }
    assert read_back(db, ids) == writer.expected()
    assert set_rollups(db) == tiers
    assert hot_minutes(db, hour, end) == 0
    assert minute_chunk_sets(db, hour, end) == {(s, hour) for s in merged}
    assert_aggregates_equal(
        rollup_rows(db, "rollup_1m", ids), aggregates(db, ids, MINUTE_US, lo, hi)
    )


def test_an_hour_whose_minutes_wait_for_their_rollup_is_not_compressed(
    db: psycopg.Connection, writer: Writer
) -> None:
    hour = hour_start_us(2)
    end = hour + HOUR_US
    series = writer.series("wait", 3)
    stamps = hour + np.arange(0, HOUR_US, 60 * SECOND_US) + 17
    writer.collections("wait", series, stamps, np.arange(len(stamps) * 3) / 8)
    RollupJob(db).catch_up()
    rows = hot_rows(db, hour, end)
    assert rows == len(stamps)

    # A minute of the hour marked again (as a worker marks it), its rollup not yet run.
    db.execute(
        "INSERT INTO rollup_dirty (tier, bucket) VALUES (1, %s)", (at(hour + 12 * MINUTE_US),)
    )
    result = CompressJob(db).catch_up()
    assert (result.hours, result.deferred, result.rows) == (0, 1, 0)
    assert hot_rows(db, hour, end) == rows and chunk_rows(db, hour, end) == []
    assert tier_marks(db, compress.TIER_COMPRESS) == [hour]  # kept for a later round
    RollupJob(db).catch_up()
    result = CompressJob(db).catch_up()
    assert (result.hours, result.deferred, result.rows) == (1, 0, rows)
    assert hot_rows(db, hour, end) == 0 and len(chunk_rows(db, hour, end)) == 1

    # Late rows written (and their minutes marked) between the hour's rollup and its compression:
    # the rows stay hot until their minute is rolled up.
    writer.collections("wait", series, [hour + 20 * MINUTE_US + 1], [[5.0, 6.0, 7.0]])
    RollupJob(db).catch_up()  # the minute and the hour: the hour is marked for compression
    writer.collections("wait", series, [hour + 40 * MINUTE_US + 1], [[-5.0, -6.0, -7.0]])
    result = CompressJob(db).catch_up()
    assert (result.hours, result.deferred) == (0, 1)
    assert hot_rows(db, hour, end) == 2
    assert read_back(db, series) == writer.expected()
    RollupJob(db).catch_up()
    result = CompressJob(db).catch_up()
    assert (result.hours, result.deferred, result.rows) == (1, 0, 2)
    assert hot_rows(db, hour, end) == 0
    assert [n for _, _, n in chunk_rows(db, hour, end)] == [rows + 2]
    assert read_back(db, series) == writer.expected()
    assert_aggregates_equal(rollup_rows(db, "rollup_1m", series), aggregates(db, series, MINUTE_US))


def partition_size(db: psycopg.Connection, day: date, table: str = "samples") -> int:
    row = db.execute(
        "SELECT pg_total_relation_size(%s)", (partitions.partition_name(day, table),)
    ).fetchone()
    return row[0]


def test_emptied_day_partitions_are_released(db: psycopg.Connection, writer: Writer) -> None:
    today = datetime.now(UTC).date()
    emptied, kept = today - timedelta(days=4), today - timedelta(days=3)
    series = writer.series("days", 300)  # wide: the minute rows fill pages too
    # Day `emptied`: one hour of rows (an index of many pages); day `kept`: two hours, of which
    # only the first is compressed (the horizon below leaves the other open).
    h_emptied = day_start_us(emptied) + 2 * HOUR_US
    h_kept, h_open = day_start_us(kept) + HOUR_US, day_start_us(kept) + 5 * HOUR_US
    dense = h_emptied + np.arange(0, HOUR_US, 600_000)
    for part in np.array_split(np.arange(len(dense)), 3):
        writer.collections("days", series, dense[part], np.ones((len(part), 300)))
    sparse = np.arange(0, HOUR_US, 10 * SECOND_US)
    writer.collections("days", series, h_kept + sparse, np.zeros((len(sparse), 300)))
    writer.collections("days", series, h_open + sparse, np.full((len(sparse), 300), 2.0))
    RollupJob(db).catch_up()

    job = CompressJob(db)
    result = job.catch_up(horizon=at(h_open + 30 * MINUTE_US))
    assert result.hours == 2 and result.days == {emptied, kept}
    assert hot_rows(db, h_emptied, h_emptied + HOUR_US) == 0
    assert hot_rows(db, h_open, h_open + HOUR_US) == len(sparse)
    assert hot_minutes(db, h_emptied, h_emptied + HOUR_US) == 0
    full = {table: partition_size(db, emptied, table) for table in ("samples", "set_rollup_1m")}
    assert min(full.values()) > 65_536  # their dead rows' heap and index pages

    released = job.release_empty_days(result.days)

    assert sorted(released) == sorted(partitions.partition_name(emptied, t) for t in full)
    for table, size in full.items():
        assert partition_size(db, emptied, table) < size
        assert partition_size(db, emptied, table) <= 65_536
        assert emptied in partitions.existing_days(db, table)  # emptied, not dropped
    assert partition_size(db, kept) > 0  # (its VACUUM may add a free space map: no upper bound)
    assert hot_rows(db, h_open, h_open + HOUR_US) == len(sparse)
    assert hot_minutes(db, h_open, h_open + HOUR_US) == 60  # left hot by the horizon, like its rows
    assert read_back(db, series) == writer.expected()
    assert_aggregates_equal(rollup_rows(db, "rollup_1m", series), aggregates(db, series, MINUTE_US))
    # nothing more to give back
    assert job.release_empty_days({emptied, kept}) == []


def test_one_process_compresses_at_a_time(
    db: psycopg.Connection, writer: Writer, database_url: str
) -> None:
    with pytest.raises(ValueError, match="autocommit"), psycopg.connect(database_url) as plain:
        CompressJob(plain)
    hour = hour_start_us(2)
    series = writer.series("lock", 2)
    stamps = hour + np.arange(0, HOUR_US, 30 * SECOND_US)
    writer.collections("lock", series, stamps, np.ones((len(stamps), 2)))
    RollupJob(db).catch_up()

    with psycopg.connect(database_url, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (locks.COMPRESS,))
        assert CompressJob(db).run_round(0.0) is None
        assert hot_rows(db, hour, hour + HOUR_US) == len(stamps)
        assert tier_marks(db, compress.TIER_COMPRESS) == [hour]
        other.execute("SELECT pg_advisory_unlock(%s)", (locks.COMPRESS,))
    result = CompressJob(db).run_round(0.0)
    assert result is not None and result.hours == 1
    assert hot_rows(db, hour, hour + HOUR_US) == 0
    assert read_back(db, series) == writer.expected()

"""Storage v2 (``samples``: one row per series set and timestamp) on late, out-of-order and odd
data, against real Redis and PostgreSQL through a real Worker and RollupJob: every point is stored
exactly once, in the right day, read back bit for bit, and rolled up exactly like the raw points."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import numpy as np
import psycopg
import pytest
import redis
from psycopg import sql

from fleetpulse import partitions, samples
from fleetpulse.ingest.worker.consumer import Worker
from fleetpulse.ingest.worker.rollups import RollupJob
from fleetpulse.proto import common_pb2, metric_pb2
from fleetpulse.settings import Settings
from tests.integration.test_worker import run_until_empty, xadd, xadd_columns

SHARDS = 2
EPOCH = 1
SECOND_NS = 1_000_000_000
US_NS = 1_000
MINUTE_US = 60_000_000
HOUR_US = 60 * MINUTE_US
NAN, INF = float("nan"), float("inf")

# A series as the tests name it: (metric name, sorted label items).
Key = tuple[str, tuple[tuple[str, str], ...]]
Series = tuple[str, dict[str, str]]
# One point as sent: (series, µs since the epoch, value).
Point = tuple[Key, int, float]


def key(name: str, labels: dict[str, str]) -> Key:
    return name, tuple(sorted(labels.items()))


def us(column: str) -> str:
    """SQL for a timestamptz column as exact integer microseconds since the epoch."""
    return f"(extract(epoch FROM {column}) * 1000000)::int8"


def vkey(value: float) -> object:
    """A value as a dict/Counter key: NaN equal to NaN."""
    return "NaN" if math.isnan(value) else value


def ns_of(dt: datetime) -> int:
    return int(dt.timestamp()) * SECOND_NS


def whole_second_ns(offset_s: int = 0) -> int:
    now = datetime.now(UTC).replace(microsecond=0)
    return ns_of(now) + offset_s * SECOND_NS


def hour_start(hours_ago: int) -> datetime:
    return datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=hours_ago)


class Agent:
    """Builds one agent's batches, queues them as the front-end does, and remembers every point
    sent (as the source of truth the stored data is compared with)."""

    def __init__(self, client: redis.Redis, agent_id: str) -> None:
        self.client = client
        self.id = agent_id
        self.sent: list[Point] = []
        self.payloads: dict[int, tuple[bytes, bool]] = {}  # seq -> (payload, columnar)

    def columns(
        self, seq: int, series: list[Series], values: list[float], ts_ns: list[int]
    ) -> None:
        """A ColumnarBatch (values timestamp-major), queued."""
        assert len(values) == len(series) * len(ts_ns)
        payload = metric_pb2.ColumnarBatch(
            agent_id=self.id,
            epoch=EPOCH,
            sequence=seq,
            series=metric_pb2.SeriesSet(
                entries=[metric_pb2.SeriesDef(name=n, labels=lab) for n, lab in series]
            ),
            values=values,
            timestamps_ns=ts_ns,
        ).SerializeToString()
        for t, stamp in enumerate(ts_ns):
            for c, (name, labels) in enumerate(series):
                self.sent.append((key(name, labels), stamp // US_NS, values[t * len(series) + c]))
        self.payloads[seq] = (payload, True)
        self.queue(seq)

    def rows(self, seq: int, points: list[tuple[str, dict[str, str], int, float]]) -> None:
        """A row-form MetricBatch (the original protocol), points in the order given, queued."""
        payload = metric_pb2.MetricBatch(
            agent_id=self.id,
            epoch=EPOCH,
            sequence=seq,
            metrics=[
                metric_pb2.MetricPoint(
                    name=name,
                    value=value,
                    timestamp=common_pb2.Timestamp(
                        seconds=ts_ns // SECOND_NS, nanos=ts_ns % SECOND_NS
                    ),
                    labels=labels,
                )
                for name, labels, ts_ns, value in points
            ],
        ).SerializeToString()
        for name, labels, ts_ns, value in points:
            self.sent.append((key(name, labels), ts_ns // US_NS, value))
        self.payloads[seq] = (payload, False)
        self.queue(seq)

    def queue(self, seq: int) -> None:
        """Queue a batch (again: a redelivery, which must store nothing new)."""
        payload, columnar = self.payloads[seq]
        if columnar:
            xadd_columns(self.client, self.id, EPOCH, seq, payload, shards=SHARDS)
        else:
            xadd(self.client, self.id, EPOCH, seq, payload, shards=SHARDS)

    def expected(self) -> Counter[tuple[Key, int, object]]:
        return Counter((k, t, vkey(v)) for k, t, v in self.sent)


@pytest.fixture
def settings(database_url: str, redis_url: str) -> Settings:
    return Settings(
        database_url=database_url,
        redis_url=redis_url,
        stream_shards=SHARDS,
        worker_read_count=50,
    )


@pytest.fixture
def worker(settings: Settings) -> Iterator[Worker]:
    w = Worker(settings, "samples-1")
    yield w
    w.close()


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(database_url, autocommit=True, options="-c TimeZone=UTC") as conn:
        yield conn


def series_of(db: psycopg.Connection, agent_id: str) -> dict[int, Key]:
    return {
        sid: key(name, labels)
        for sid, name, labels in db.execute(
            "SELECT series_id, name, labels FROM series WHERE agent_id = %s", (agent_id,)
        )
    }


def stored(db: psycopg.Connection, agent_id: str) -> Counter[tuple[Key, int, object]]:
    """Every stored point of the agent, through the all_points view (both layouts)."""
    names = series_of(db, agent_id)
    rows = db.execute(
        f"SELECT series_id, {us('ts')}, value FROM all_points WHERE series_id = ANY(%s)",
        (list(names),),
    ).fetchall()
    return Counter((names[sid], ts, vkey(value)) for sid, ts, value in rows)


def read_back(db: psycopg.Connection, agent_id: str) -> Counter[tuple[Key, int, object]]:
    """Every stored point of the agent, through the readers' SQL (samples.points_sql)."""
    names = series_of(db, agent_id)
    query = f"SELECT series_id, {us('ts')}, value FROM ({samples.points_sql()}) p"
    rows = db.execute(
        query,
        {
            "ids": list(names),
            "lo": datetime(2000, 1, 1, tzinfo=UTC),
            "hi": datetime(2100, 1, 1, tzinfo=UTC),
        },
    ).fetchall()
    return Counter((names[sid], ts, vkey(value)) for sid, ts, value in rows)


def assert_stored_exactly(db: psycopg.Connection, agent: Agent) -> None:
    expected = agent.expected()
    assert stored(db, agent.id) == expected
    assert read_back(db, agent.id) == expected


def assert_layout_consistent(db: psycopg.Connection) -> None:
    """The layout's invariants, over the whole database."""
    too_wide_or_repeating = db.execute(
        "SELECT set_id, cardinality(series_ids) FROM series_sets"
        " WHERE cardinality(series_ids) > %s"
        "    OR cardinality(series_ids) <> (SELECT count(DISTINCT x) FROM unnest(series_ids) x)",
        (samples.MAX_SET_WIDTH,),
    ).fetchall()
    assert too_wide_or_repeating == []
    members = set(db.execute("SELECT series_id, set_id, col FROM set_members").fetchall())
    columns = set(
        db.execute(
            "SELECT u.series_id, ss.set_id, u.col FROM series_sets ss"
            " CROSS JOIN LATERAL unnest(ss.series_ids) WITH ORDINALITY AS u(series_id, col)"
        ).fetchall()
    )
    assert members == columns
    foreign = db.execute(
        "SELECT count(*) FROM series_sets ss CROSS JOIN LATERAL unnest(ss.series_ids) AS u(sid)"
        " JOIN series s ON s.series_id = u.sid WHERE s.agent_id <> ss.agent_id"
    ).fetchone()
    assert foreign == (0,)
    misshapen = db.execute(
        "SELECT count(*) FROM samples s LEFT JOIN series_sets ss USING (set_id)"
        " WHERE ss.set_id IS NULL OR cardinality(s.vals) <> cardinality(ss.series_ids)"
    ).fetchone()
    assert misshapen == (0,)


def ledger(db: psycopg.Connection, agent_id: str) -> list[tuple[int, int, int]]:
    return db.execute(
        "SELECT seq, points, rejected FROM batches WHERE agent_id = %s ORDER BY seq", (agent_id,)
    ).fetchall()


def accounting(db: psycopg.Connection, agent_id: str) -> tuple[int, int, int]:
    return db.execute(
        "SELECT batches_committed, points_committed, points_rejected FROM agent_ingest"
        " WHERE agent_id = %s",
        (agent_id,),
    ).fetchone()


def samples_rows(db: psycopg.Connection, agent_id: str) -> int:
    return db.execute(
        "SELECT count(*) FROM samples JOIN series_sets USING (set_id) WHERE agent_id = %s",
        (agent_id,),
    ).fetchone()[0]


# --- Aggregates -----------------------------------------------------------------------------

Aggregate = tuple[int, float, float, float, float, int]  # count, sum, min, max, last, last_ts µs


def pg_aggregate(points: list[tuple[int, float]]) -> Aggregate:
    """PostgreSQL's float8 semantics: NaN makes sum and max NaN, min skips NaN unless all are,
    `last` is the value at the latest timestamp, a tie broken by the greater value, NaN greatest."""
    values = [v for _, v in points]
    numbers = [v for v in values if not math.isnan(v)]
    last_ts = max(t for t, _ in points)
    at_last = [v for t, v in points if t == last_ts]
    return (
        len(values),
        sum(values),
        min(numbers) if numbers else NAN,
        max(values) if len(numbers) == len(values) else NAN,
        NAN if any(math.isnan(v) for v in at_last) else max(at_last),
        last_ts,
    )


def python_aggregates(
    points: list[Point], ids: dict[Key, int], width_us: int
) -> dict[tuple[int, int], Aggregate]:
    groups: dict[tuple[int, int], list[tuple[int, float]]] = {}
    for k, ts, value in points:
        groups.setdefault((ids[k], ts - ts % width_us), []).append((ts, value))
    return {bucket: pg_aggregate(pts) for bucket, pts in groups.items()}


def sql_aggregates(
    db: psycopg.Connection, series_ids: list[int], unit: str
) -> dict[tuple[int, int], Aggregate]:
    """The aggregates computed in SQL from all_points (the connection's TimeZone is UTC)."""
    assert unit in ("minute", "hour")
    bucket = us(f"date_trunc('{unit}', ts)")
    rows = db.execute(
        f"SELECT series_id, {bucket}, count(*), sum(value), min(value),"
        f" max(value), (array_agg(value ORDER BY ts DESC, value DESC))[1], {us('max(ts)')}"
        " FROM all_points WHERE series_id = ANY(%s) GROUP BY 1, 2",
        (series_ids,),
    ).fetchall()
    return {(row[0], row[1]): tuple(row[2:]) for row in rows}


_COMBINE = """
SELECT series_id, bucket, sum(count)::int8, sum(sum), min(min), max(max),
       (array_agg(last ORDER BY last_ts DESC, last DESC))[1], max(last_ts)
FROM read_minutes GROUP BY series_id, bucket
"""


def rollup_rows(
    db: psycopg.Connection, table: str, series_ids: list[int]
) -> dict[tuple[int, int], Aggregate]:
    """Per (series, bucket µs) of a tier, its rows of both layouts combined per series as
    readers combine them (the views all_rollup_1m/1h do it in SQL); the minute tier's compressed
    hours included (read by samples.read_minutes, combined by the same SQL over a temp table)."""
    assert table in ("rollup_1m", "rollup_1h")
    if table == "rollup_1h":
        rows = db.execute(
            f"SELECT series_id, {us('bucket')}, count, sum, min, max, last, {us('last_ts')}"
            f" FROM all_{table} WHERE series_id = ANY(%s)",  # both layouts, combined per series
            (series_ids,),
        ).fetchall()
        return {(row[0], row[1]): tuple(row[2:]) for row in rows}
    got = samples.read_minutes(
        db, series_ids, datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)
    )
    m = got.minutes
    with db.transaction():
        db.execute(
            "CREATE TEMP TABLE read_minutes (series_id int8, bucket int8, count int8, sum float8,"
            " min float8, max float8, last float8, last_ts int8) ON COMMIT DROP"
        )
        with db.cursor().copy("COPY read_minutes FROM STDIN") as copy:
            for row in zip(
                got.series_id.tolist(),
                m.bucket_us.tolist(),
                m.count.tolist(),
                m.sum[:, 0].tolist(),
                m.min[:, 0].tolist(),
                m.max[:, 0].tolist(),
                m.last[:, 0].tolist(),
                m.last_ts_us.tolist(),
                strict=True,
            ):
                copy.write_row(row)
        rows = db.execute(_COMBINE).fetchall()
    return {(row[0], row[1]): tuple(row[2:]) for row in rows}


def same_float(got: float, want: float, rel: float = 0.0) -> bool:
    if math.isnan(want):
        return math.isnan(got)
    if math.isinf(want) or not rel:
        return got == want
    return math.isclose(got, want, rel_tol=rel, abs_tol=1e-12)


def assert_aggregates_equal(
    got: dict[tuple[int, int], Aggregate], want: dict[tuple[int, int], Aggregate]
) -> None:
    assert sorted(got) == sorted(want)
    for bucket, w in want.items():
        g = got[bucket]
        ok = (
            g[0] == w[0]
            and same_float(g[1], w[1], rel=1e-9)  # summation order may differ
            and all(same_float(g[i], w[i]) for i in (2, 3, 4))
            and g[5] == w[5]
        )
        assert ok, (bucket, g, w)


# --- Tests ----------------------------------------------------------------------------------


def test_a_series_named_twice_in_one_set_keeps_both_points(
    worker: Worker, r: redis.Redis, db: psycopg.Connection
) -> None:
    agent = Agent(r, "twice")
    series: list[Series] = [
        ("cpu", {"mode": "user"}),
        ("cpu", {"mode": "system"}),
        ("cpu", {"mode": "user"}),  # the same series again
        ("load1", {}),
    ]
    t0 = whole_second_ns(-30)
    agent.columns(1, series, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0], [t0, t0 + SECOND_NS])
    run_until_empty(worker)
    # the same set again: its cached decoding takes the same path
    agent.columns(2, series, [9.0, 10.0, 11.0, 12.0], [t0 + 2 * SECOND_NS])
    run_until_empty(worker)

    assert_stored_exactly(db, agent)
    user = key("cpu", {"mode": "user"})
    at_t0 = sorted(
        v for k, t, v in stored(db, agent.id).elements() if k == user and t == t0 // US_NS
    )
    assert at_t0 == [1.0, 3.0]  # both points of the series at that timestamp
    assert sum(stored(db, agent.id).values()) == 12
    assert len(series_of(db, agent.id)) == 3
    assert ledger(db, agent.id) == [(1, 8, 0), (2, 4, 0)]
    assert accounting(db, agent.id) == (2, 12, 0)
    assert_layout_consistent(db)


def test_a_set_wider_than_a_row_is_split_and_read_back_exactly(
    worker: Worker, r: redis.Redis, db: psycopg.Connection
) -> None:
    width = 1500
    agent = Agent(r, "wide")
    series: list[Series] = [("disk_bytes", {"device": f"d{i}"}) for i in range(width)]
    rng = np.random.default_rng(11)
    values = (rng.standard_normal(2 * width) * 1e6).tolist()  # full-precision doubles
    t0 = whole_second_ns(-20)
    agent.columns(1, series, values, [t0, t0 + 500 * US_NS * 1000])
    run_until_empty(worker)

    assert_stored_exactly(db, agent)
    assert sum(stored(db, agent.id).values()) == 2 * width
    sets = db.execute(
        "SELECT series_ids FROM series_sets WHERE agent_id = %s", (agent.id,)
    ).fetchall()
    widths = [len(ids) for (ids,) in sets]
    assert len(sets) == math.ceil(width / samples.MAX_SET_WIDTH)
    assert max(widths) <= samples.MAX_SET_WIDTH
    assert sum(widths) == width
    every = [sid for (ids,) in sets for sid in ids]
    assert sorted(every) == sorted(series_of(db, agent.id))  # each series in exactly one set
    assert samples_rows(db, agent.id) == 2 * len(sets)
    assert ledger(db, agent.id) == [(1, 2 * width, 0)]
    assert_layout_consistent(db)


def test_a_changing_series_set_is_stored_once_and_redelivery_adds_nothing(
    worker: Worker, settings: Settings, r: redis.Redis, db: psycopg.Connection
) -> None:
    agent = Agent(r, "shifty")
    t0 = whole_second_ns(-60)
    lists: dict[int, list[Series]] = {}
    for k in range(10):  # batch k has k + 1 series: a new series set every time
        lists[k + 1] = [("m", {"i": str(j)}) for j in range(k + 1)]
        values = [float(100 * k + j) for j in range(k + 1)]
        agent.columns(k + 1, lists[k + 1], values, [t0 + k * SECOND_NS])
        if k == 4:
            run_until_empty(worker)  # in two chunks: the second sees sets the first made
    # an earlier series list again (its set is reused), in new batches
    agent.columns(11, lists[3], [-1.0, -2.0, -3.0], [t0 + 10 * SECOND_NS])
    agent.columns(12, lists[10], [float(-j) for j in range(10)], [t0 + 11 * SECOND_NS])
    run_until_empty(worker)

    def check() -> None:
        assert_stored_exactly(db, agent)
        assert sum(stored(db, agent.id).values()) == 55 + 3 + 10
        ids = {k: sid for sid, k in series_of(db, agent.id).items()}
        want = sorted(tuple(sorted(ids[key(n, lab)] for n, lab in lst)) for lst in lists.values())
        got = sorted(
            tuple(sorted(s))
            for (s,) in db.execute(
                "SELECT series_ids FROM series_sets WHERE agent_id = %s", (agent.id,)
            )
        )
        assert got == want  # one set per distinct series list
        assert samples_rows(db, agent.id) == 12
        assert [seq for seq, _, _ in ledger(db, agent.id)] == list(range(1, 13))
        assert accounting(db, agent.id) == (12, 68, 0)
        assert_layout_consistent(db)

    check()
    marks = db.execute("SELECT count(*) FROM rollup_dirty").fetchone()
    # Redelivery of everything, to a worker that starts with empty caches.
    for seq in range(1, 13):
        agent.queue(seq)
    again = Worker(settings, "samples-2")
    try:
        run_until_empty(again)
    finally:
        again.close()
    check()
    assert db.execute("SELECT count(*) FROM rollup_dirty").fetchone() == marks  # nothing marked


ODD = [NAN, INF, -INF, -0.0, 5e-324, 1.7976931348623157e308, -2.5]


def test_nan_and_infinities_are_stored_and_read_back(
    worker: Worker, r: redis.Redis, db: psycopg.Connection
) -> None:
    columnar, rows = Agent(r, "odd-cols"), Agent(r, "odd-rows")
    series: list[Series] = [("odd", {"i": str(i)}) for i in range(len(ODD))]
    t0 = whole_second_ns(-10)
    columnar.columns(1, series, ODD + ODD[::-1], [t0, t0 + SECOND_NS])
    rows.rows(1, [(n, lab, t0, v) for (n, lab), v in zip(series, ODD, strict=True)])
    run_until_empty(worker)

    for agent in (columnar, rows):
        assert_stored_exactly(db, agent)
        names = series_of(db, agent.id)
        got = {
            (names[sid][1][0][1], ts): value
            for sid, ts, value in db.execute(
                f"SELECT series_id, {us('ts')}, value FROM all_points WHERE series_id = ANY(%s)",
                (list(names),),
            )
        }
        assert len(got) == (2 if agent is columnar else 1) * len(ODD)
        first = [got[(str(i), t0 // US_NS)] for i in range(len(ODD))]
        assert math.isnan(first[0])
        assert first[1] == INF and first[2] == -INF
        assert first[3] == 0.0 and math.copysign(1.0, first[3]) == -1.0
        assert first[4] == 5e-324 and first[5] == 1.7976931348623157e308 and first[6] == -2.5
        if agent is columnar:
            second = [got[(str(i), t0 // US_NS + 1_000_000)] for i in range(len(ODD))]
            assert second[0] == -2.5 and second[3] == 0.0 and second[4] == -INF
            assert second[5] == INF and second[2] == 5e-324
            assert math.isnan(second[6])
        assert ledger(db, agent.id) == [(1, len(agent.sent), 0)]
    assert_layout_consistent(db)


def test_row_form_duplicates_and_out_of_order_points_are_all_stored(
    worker: Worker, r: redis.Redis, db: psycopg.Connection
) -> None:
    agent = Agent(r, "rows")
    a, b = ("temp", {"zone": "a"}), ("temp", {"zone": "b"})
    t = [whole_second_ns(-40) + i * SECOND_NS + 250_000 * US_NS for i in range(4)]
    agent.rows(
        1,
        [
            (*a, t[2], 1.0),
            (*b, t[3], 7.0),
            (*a, t[0], 2.0),
            (*a, t[2], 3.0),  # a's second point at t2
            (*b, t[1], 5.0),
            (*a, t[2], 3.0),  # and a third, equal to the second
            (*a, t[1], 4.0),
            (*b, t[0], 6.0),
        ],
    )
    # a later batch of the same chunk repeats a timestamp of the first one, earlier than its last
    agent.rows(2, [(*a, t[1], 8.0), (*b, t[0], 6.0)])
    run_until_empty(worker)

    assert_stored_exactly(db, agent)
    at = stored(db, agent.id)
    assert sum(at.values()) == 10
    assert at[(key(*a), t[2] // US_NS, 3.0)] == 2 and at[(key(*a), t[2] // US_NS, 1.0)] == 1
    assert at[(key(*b), t[0] // US_NS, 6.0)] == 2
    assert ledger(db, agent.id) == [(1, 8, 0), (2, 2, 0)]
    assert accounting(db, agent.id) == (2, 10, 0)
    assert_layout_consistent(db)


def test_a_batch_across_midnight_lands_in_both_day_partitions(
    worker: Worker, r: redis.Redis, db: psycopg.Connection
) -> None:
    # The midnight that began yesterday (24 to 48 hours ago): in the past, within retention; the
    # day before it has no partition yet (migrate makes yesterday onwards).
    day = datetime.now(UTC).date() - timedelta(days=1)
    before_day = day - timedelta(days=1)
    midnight = ns_of(partitions.day_start(day))
    agent = Agent(r, "night")
    series: list[Series] = [("uptime", {}), ("load1", {})]
    stamps = [midnight - US_NS, midnight, midnight + SECOND_NS]
    agent.columns(1, series, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], stamps)
    agent.rows(
        2, [("uptime", {}, midnight + US_NS, 7.0), ("uptime", {}, midnight - SECOND_NS, 8.0)]
    )
    run_until_empty(worker)

    assert_stored_exactly(db, agent)

    def partition(d: date) -> Counter[tuple[int, tuple[float, ...]]]:
        query = sql.SQL("SELECT {}, vals FROM {}").format(
            sql.SQL(us("ts")), sql.Identifier(partitions.partition_name(d))
        )
        return Counter((ts, tuple(sorted(vals))) for ts, vals in db.execute(query))

    m = midnight // US_NS
    assert partition(before_day) == Counter({(m - 1, (1.0, 2.0)): 1, (m - 1_000_000, (8.0,)): 1})
    assert partition(day) == Counter(
        {(m, (3.0, 4.0)): 1, (m + 1_000_000, (5.0, 6.0)): 1, (m + 1, (7.0,)): 1}
    )
    assert {before_day, day} <= partitions.existing_days(db, "rollup_1m")
    assert ledger(db, agent.id) == [(1, 6, 0), (2, 2, 0)]
    assert_layout_consistent(db)


def test_late_points_for_a_rolled_up_minute_are_counted(
    worker: Worker, r: redis.Redis, db: psycopg.Connection
) -> None:
    hour = hour_start(1)  # closed, so both tiers are computed
    minute = ns_of(hour) + 7 * 60 * SECOND_NS
    agent = Agent(r, "late")
    x, y, z = ("m", {"s": "x"}), ("m", {"s": "y"}), ("m", {"s": "z"})
    agent.columns(
        1, [x, y], [1.0, 10.0, 2.0, 20.0], [minute + 10 * SECOND_NS, minute + 20 * SECOND_NS]
    )
    run_until_empty(worker)
    job = RollupJob(db)
    job.catch_up()
    ids = {k: sid for sid, k in series_of(db, agent.id).items()}
    first = rollup_rows(db, "rollup_1m", list(ids.values()))
    assert first[(ids[key(*x)], minute // US_NS)] == (
        2,
        3.0,
        1.0,
        2.0,
        2.0,
        (minute + 20 * SECOND_NS) // US_NS,
    )
    assert_aggregates_equal(first, python_aggregates(agent.sent, ids, MINUTE_US))

    # Later batches for that minute: another series set holding x (with a new series z), a point
    # before the minute's rolled-up ones and a new last; and a row-form point tying that last.
    agent.columns(
        2, [z, x], [5.0, -4.0, 6.0, 0.5], [minute + 5 * SECOND_NS, minute + 50 * SECOND_NS]
    )
    agent.rows(3, [(*x, minute + 50 * SECOND_NS, 0.75)])
    run_until_empty(worker)
    pending = db.execute(
        f"SELECT DISTINCT {us('bucket')} FROM rollup_dirty WHERE tier = 1"
    ).fetchall()
    assert pending == [(minute // US_NS,)]  # the late chunks marked the closed minute again
    job.catch_up()

    ids = {k: sid for sid, k in series_of(db, agent.id).items()}
    minutes = rollup_rows(db, "rollup_1m", list(ids.values()))
    end = (minute + 50 * SECOND_NS) // US_NS
    assert minutes[(ids[key(*x)], minute // US_NS)] == (5, 0.25, -4.0, 2.0, 0.75, end)
    assert_aggregates_equal(minutes, python_aggregates(agent.sent, ids, MINUTE_US))
    hours = rollup_rows(db, "rollup_1h", list(ids.values()))
    assert hours[(ids[key(*x)], ns_of(hour) // US_NS)] == (5, 0.25, -4.0, 2.0, 0.75, end)
    assert_aggregates_equal(hours, python_aggregates(agent.sent, ids, HOUR_US))
    assert db.execute("SELECT count(*) FROM rollup_dirty WHERE tier < 3").fetchone() == (0,)


def test_rollups_equal_the_raw_aggregates_on_mixed_layouts_and_odd_values(
    worker: Worker, r: redis.Redis, db: psycopg.Connection
) -> None:
    second_hour = ns_of(hour_start(1))
    first_hour = second_hour - 3600 * SECOND_NS  # both closed
    m1 = first_hour + 3 * 60 * SECOND_NS
    m2 = m1 + 60 * SECOND_NS
    m3 = second_hour + 30 * 60 * SECOND_NS
    s = SECOND_NS
    agent = Agent(r, "mixed")
    a, b, c, d, e = (("g", {"s": name}) for name in "abcde")
    f = ("g", {"s": "f"})  # only in the layout before samples

    # a in three sets ([a,b,c], [a,d] and, from a repeated column, [a,b] + [a]) in minute m1
    agent.columns(1, [a, b, c], [1.0, NAN, INF, 2.0, 3.0, -INF], [m1 + s, m1 + 2 * s])
    agent.columns(2, [a, d], [0.5, NAN, 5.0, NAN], [m1 + s // 2, m1 + 2 * s])  # ties a's t2
    agent.columns(3, [a, b, a], [7.0, -1.0, NAN], [m1 + 30 * s])  # a's last: NaN wins the tie
    agent.rows(4, [(*b, m1 + 40 * s, 4.0), (*b, m1 + 40 * s, 9.0), (*e, m1 + 41 * s, -3.0)])
    # the agent sends batch 1's data again under a new identity: rows repeated in the same set
    agent.columns(5, [a, b, c], [1.0, NAN, INF, 2.0, 3.0, -INF], [m1 + s, m1 + 2 * s])
    agent.columns(6, [a, b, c], [1.5, 2.5, 3.5], [m2 + 10 * s])
    agent.rows(7, [(*e, m2 + 20 * s, 2.0), (*e, m2 + 5 * s, 1.0)])
    agent.columns(8, [a, b], [11.0, 12.0, 13.0, 14.0], [m3 + s, m3 + 59 * s])
    run_until_empty(worker)
    ids = {k: sid for sid, k in series_of(db, agent.id).items()}
    ids[key(*f)] = db.execute(
        "INSERT INTO series (agent_id, name, labels) VALUES (%s, %s, %s::jsonb)"
        " RETURNING series_id",
        (agent.id, f[0], '{"s": "f"}'),
    ).fetchone()[0]

    # Points of the layout before samples, in the same minutes (a partition made by hand).
    legacy = [
        (key(*a), (m1 + 30 * s) // US_NS, 8.0),  # a third value at a's last timestamp
        (key(*b), (m1 + 2 * s) // US_NS, NAN),
        (key(*e), (m2 + 59 * s + 999_999 * US_NS) // US_NS, -INF),  # e's new last
        (key(*c), (m2 + 10 * s) // US_NS, 3.5),  # equal to c's samples value at that time
        (key(*f), (m3 + s) // US_NS, 3.25),
        (key(*f), (m3 + s) // US_NS, 3.0),
    ]
    for day in sorted({datetime.fromtimestamp(ts / 1e6, UTC).date() for _, ts, _ in legacy}):
        db.execute(
            sql.SQL("CREATE TABLE {} PARTITION OF points FOR VALUES FROM ({}) TO ({})").format(
                sql.Identifier(partitions.partition_name(day, "points")),
                sql.Literal(partitions.day_start(day)),
                sql.Literal(partitions.day_start(day + timedelta(days=1))),
            )
        )
    with db.cursor() as cur:
        cur.executemany(
            "INSERT INTO points (series_id, ts, value) VALUES (%s, %s, %s)",
            [(ids[k], datetime.fromtimestamp(ts / 1e6, UTC), v) for k, ts, v in legacy],
        )
    agent.sent += legacy
    # The worker marked every minute it wrote (legacy rows lie in those minutes too).
    result = RollupJob(db).catch_up()
    assert (result.minutes, result.hours) == (3, 2)

    assert_stored_exactly(db, agent)
    everything = list(ids.values())
    raw_minutes = sql_aggregates(db, everything, "minute")
    raw_hours = sql_aggregates(db, everything, "hour")
    # the SQL over all_points is itself right (against the points as sent)
    assert_aggregates_equal(raw_minutes, python_aggregates(agent.sent, ids, MINUTE_US))
    assert_aggregates_equal(raw_hours, python_aggregates(agent.sent, ids, HOUR_US))
    assert_aggregates_equal(rollup_rows(db, "rollup_1m", everything), raw_minutes)
    assert_aggregates_equal(rollup_rows(db, "rollup_1h", everything), raw_hours)

    # a few buckets by hand, so that a shared mistake cannot hide
    got = rollup_rows(db, "rollup_1m", everything)
    a_m1 = got[(ids[key(*a)], m1 // US_NS)]
    assert a_m1[0] == 9 and math.isnan(a_m1[1]) and a_m1[2] == 0.5 and math.isnan(a_m1[3])
    assert math.isnan(a_m1[4]) and a_m1[5] == (m1 + 30 * s) // US_NS
    b_m1 = got[(ids[key(*b)], m1 // US_NS)]
    assert b_m1[0] == 8 and b_m1[2] == -1.0 and b_m1[4] == 9.0
    c_m1 = got[(ids[key(*c)], m1 // US_NS)]
    assert c_m1[0] == 4 and math.isnan(c_m1[1]) and (c_m1[2], c_m1[3], c_m1[4]) == (-INF, INF, -INF)
    d_m1 = got[(ids[key(*d)], m1 // US_NS)]
    assert d_m1[0] == 2 and all(math.isnan(v) for v in d_m1[1:5])  # all NaN: min is NaN too
    assert got[(ids[key(*e)], m2 // US_NS)][0] == 3 and got[(ids[key(*e)], m2 // US_NS)][4] == -INF
    assert got[(ids[key(*f)], m3 // US_NS)] == (2, 6.25, 3.0, 3.25, 3.25, (m3 + s) // US_NS)
    assert_layout_consistent(db)

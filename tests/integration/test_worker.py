"""The worker against real Redis and PostgreSQL: exactly-once, rejects, identity-less batches."""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator

import psycopg
import pytest
import redis

from fleetpulse.ingest import keys, queue
from fleetpulse.ingest.watermark import CommittedFeed
from fleetpulse.ingest.worker.consumer import Worker
from fleetpulse.proto import common_pb2, metric_pb2
from fleetpulse.settings import Settings


def make_batch(
    agent_id: str, epoch: int, seq: int, points: int, ts_s: float | None = None
) -> bytes:
    now = time.time() if ts_s is None else ts_s
    stamp = common_pb2.Timestamp(seconds=int(now), nanos=int((now % 1) * 1e9))
    return metric_pb2.MetricBatch(
        agent_id=agent_id,
        epoch=epoch,
        sequence=seq,
        metrics=[
            metric_pb2.MetricPoint(
                name="cpu_usage_percent",
                value=float(i),
                timestamp=stamp,
                labels={"mode": f"m{i}", "host": agent_id},
            )
            for i in range(points)
        ],
    ).SerializeToString()


def xadd(
    client: redis.Redis, agent_id: str, epoch: int, seq: int, payload: bytes, shards: int
) -> None:
    """A row-form entry as the first front-end version wrote it: no form field (still read)."""
    client.xadd(
        keys.stream_key(keys.shard_for(agent_id, shards)),
        {
            keys.FIELD_AGENT: agent_id,
            keys.FIELD_EPOCH: epoch,
            keys.FIELD_SEQUENCE: seq,
            keys.FIELD_RECEIVED_MS: int(time.time() * 1000),
            keys.FIELD_BATCH: payload,
        },
    )


def run_until_empty(worker: Worker) -> int:
    rounds = 0
    while entries := worker._read(">", None):
        worker.process(entries)
        rounds += 1
    return rounds


@pytest.fixture
def settings(database_url: str, redis_url: str) -> Settings:
    return Settings(
        database_url=database_url, redis_url=redis_url, stream_shards=2, worker_read_count=50
    )


@pytest.fixture
def worker(settings: Settings) -> Iterator[Worker]:
    w = Worker(settings, "test-1")
    yield w
    w.close()


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def stored(database_url: str, agent_id: str) -> tuple[int, int, int]:
    with psycopg.connect(database_url) as conn:
        points = conn.execute(
            "SELECT count(*) FROM all_points JOIN series USING (series_id) WHERE agent_id = %s",
            (agent_id,),
        ).fetchone()[0]
        series = conn.execute(
            "SELECT count(*) FROM series WHERE agent_id = %s", (agent_id,)
        ).fetchone()[0]
        batches = conn.execute(
            "SELECT count(*) FROM batches WHERE agent_id = %s", (agent_id,)
        ).fetchone()[0]
    return points, series, batches


def test_batches_are_stored_once_and_streams_emptied(
    worker: Worker, r: redis.Redis, database_url: str
) -> None:
    for seq in range(1, 121):
        xadd(r, "a1", 1000, seq, make_batch("a1", 1000, seq, 5), shards=2)
    assert run_until_empty(worker) >= 3  # 120 entries in chunks of at most 50
    assert stored(database_url, "a1") == (600, 5, 120)
    # acknowledged entries are deleted; nothing pending
    for shard in range(2):
        assert r.xlen(keys.stream_key(shard)) == 0
        assert r.xpending(keys.stream_key(shard), keys.CONSUMER_GROUP)["pending"] == 0
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT batches_committed, points_committed, last_epoch, last_seq FROM agent_ingest WHERE agent_id='a1'"
        ).fetchone()
    assert row == (120, 600, 1000, 120)


def test_redelivered_batch_is_a_no_op(worker: Worker, r: redis.Redis, database_url: str) -> None:
    payload = make_batch("a2", 7, 1, 10)
    xadd(r, "a2", 7, 1, payload, shards=2)
    run_until_empty(worker)
    # the agent never got the ack and resends the same batch; it is queued again
    xadd(r, "a2", 7, 1, payload, shards=2)
    xadd(r, "a2", 7, 1, payload, shards=2)  # twice in one chunk as well
    run_until_empty(worker)
    assert stored(database_url, "a2") == (10, 10, 1)


def test_crash_between_commit_and_ack_is_healed_on_restart(
    settings: Settings, r: redis.Redis, database_url: str
) -> None:
    xadd(r, "a3", 1, 1, make_batch("a3", 1, 1, 4), shards=2)
    first = Worker(settings, "crashy")
    entries = first._read(">", None)
    first._writer.write(first._decoder.decode(entries))
    first.close()  # committed, never acknowledged
    second = Worker(settings, "crashy")  # same consumer name: finds its pending entry
    entries = second._read("0", None)
    assert len(entries) == 1
    second.process(entries)
    second.close()
    assert stored(database_url, "a3") == (4, 4, 1)
    assert r.xpending(keys.stream_key(keys.shard_for("a3", 2)), keys.CONSUMER_GROUP)["pending"] == 0


def test_identity_less_batches_are_each_stored(
    worker: Worker, r: redis.Redis, database_url: str
) -> None:
    # A third-party agent that sends no epoch/sequence: each queued entry is its own batch.
    for _ in range(3):
        xadd(r, "plain", 0, 0, make_batch("plain", 0, 0, 2), shards=2)
    run_until_empty(worker)
    assert stored(database_url, "plain") == (6, 2, 3)


def test_bad_batches_are_counted_not_stored_and_do_not_block(
    worker: Worker, r: redis.Redis, database_url: str
) -> None:
    xadd(r, "bad", 1, 1, b"\xff\xff\xff not protobuf", shards=2)
    xadd(r, "bad", 1, 2, make_batch("bad", 1, 2, 3, ts_s=time.time() - 30 * 86400), shards=2)
    xadd(r, "bad", 1, 3, make_batch("bad", 1, 3, 2), shards=2)
    run_until_empty(worker)
    assert stored(database_url, "bad")[0] == 2
    with psycopg.connect(database_url) as conn:
        rejects = dict(
            ((reason), (batches, points))
            for reason, batches, points in conn.execute(
                "SELECT reason, batches, points FROM rejects WHERE agent_id = 'bad'"
            )
        )
        accounting = conn.execute(
            "SELECT batches_committed, points_committed, points_rejected FROM agent_ingest WHERE agent_id='bad'"
        ).fetchone()
    assert rejects == {"undecodable_batch": (1, 0), "timestamp_out_of_window": (0, 3)}
    assert accounting == (2, 2, 3)


def test_group_sees_entries_added_before_it_existed(
    settings: Settings, r: redis.Redis, database_url: str
) -> None:
    r.delete(keys.SHARDS_KEY)
    r.set(keys.SHARDS_KEY, 2)
    xadd(r, "early", 1, 1, make_batch("early", 1, 1, 1), shards=2)  # stream exists, group does not
    assert queue.ensure_layout(r, 2) == 2
    w = Worker(settings, "late")
    run_until_empty(w)
    w.close()
    assert stored(database_url, "early") == (1, 1, 1)


def make_columns(
    agent_id: str,
    epoch: int,
    seq: int,
    series: list[tuple[str, dict[str, str]]],
    values: list[float],
    timestamps_s: list[float] | None = None,
) -> bytes:
    stamps = [int((t if t is not None else time.time()) * 1e9) for t in (timestamps_s or [None])]
    return metric_pb2.ColumnarBatch(
        agent_id=agent_id,
        epoch=epoch,
        sequence=seq,
        series=metric_pb2.SeriesSet(
            entries=[metric_pb2.SeriesDef(name=n, labels=lab) for n, lab in series]
        ),
        values=values,
        timestamps_ns=stamps,
    ).SerializeToString()


def xadd_columns(
    client: redis.Redis, agent_id: str, epoch: int, seq: int, payload: bytes, shards: int = 2
) -> None:
    fields = queue.entry_fields(
        agent_id, epoch, seq, payload, int(time.time() * 1000), keys.FORM_COLUMNS
    )
    client.xadd(keys.stream_key(keys.shard_for(agent_id, shards)), fields)


SERIES = [
    ("cpu_usage_percent", {"mode": "user"}),
    ("cpu_usage_percent", {"mode": "system"}),
    ("load1", {}),
]


def test_columnar_batches_are_stored_like_rows(
    worker: Worker, r: redis.Redis, database_url: str
) -> None:
    now = time.time()
    xadd_columns(r, "col", 5, 1, make_columns("col", 5, 1, SERIES, [1.0, 2.0, 3.0], [now]))
    # two timestamps in one batch: values are timestamp-major
    xadd_columns(
        r,
        "col",
        5,
        2,
        make_columns("col", 5, 2, SERIES, [4.0, 5.0, 6.0, 7.0, 8.0, 9.0], [now + 1, now + 2]),
    )
    xadd(r, "col", 5, 3, make_batch("col", 5, 3, 2, ts_s=now + 3), shards=2)  # rows, same agent
    run_until_empty(worker)
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT s.name, s.labels->>'mode', p.ts, p.value FROM all_points p JOIN series s USING (series_id)"
            " WHERE s.agent_id = 'col' AND NOT s.labels ? 'host' ORDER BY p.ts, s.name, 2"  # columnar only
        ).fetchall()
    values = sorted(row[3] for row in rows)
    assert values == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]
    assert stored(database_url, "col")[0] == 9 + 2
    # the user series got values 1 (t0), 4 (t1), 7 (t2)
    user = [row[3] for row in rows if row[1] == "user"]
    assert user == [1.0, 4.0, 7.0]


def test_columnar_redelivery_and_cached_series_set(
    worker: Worker, r: redis.Redis, database_url: str
) -> None:
    payload = make_columns("col2", 1, 1, SERIES, [1.0, 2.0, 3.0])
    xadd_columns(r, "col2", 1, 1, payload)
    xadd_columns(r, "col2", 1, 1, payload)  # delivered twice
    xadd_columns(r, "col2", 1, 2, make_columns("col2", 1, 2, SERIES, [4.0, 5.0, 6.0]))
    run_until_empty(worker)
    # a changed series set (a new disk appeared) is resolved once and cached too
    xadd_columns(
        r,
        "col2",
        1,
        3,
        make_columns(
            "col2", 1, 3, [*SERIES, ("disk_bytes", {"device": "sdb"})], [7.0, 8.0, 9.0, 10.0]
        ),
    )
    run_until_empty(worker)
    assert stored(database_url, "col2") == (10, 4, 3)


def test_bad_columnar_batches_are_rejected_alone(
    worker: Worker, r: redis.Redis, database_url: str
) -> None:
    xadd_columns(
        r, "colbad", 1, 1, make_columns("colbad", 1, 1, SERIES, [1.0, 2.0])
    )  # 2 values, 3 series
    xadd_columns(r, "colbad", 1, 2, b"\x0a\xff\xff")  # not protobuf
    xadd_columns(r, "colbad", 1, 3, make_columns("colbad", 1, 3, SERIES, [1.0, 2.0, 3.0]))
    run_until_empty(worker)
    assert stored(database_url, "colbad")[0] == 3
    with psycopg.connect(database_url) as conn:
        rejects = conn.execute(
            "SELECT reason, batches FROM rejects WHERE agent_id = 'colbad'"
        ).fetchall()
    assert rejects == [("undecodable_batch", 2)]


def test_unpacked_columnar_encoding_is_accepted(
    worker: Worker, r: redis.Redis, database_url: str
) -> None:
    """Repeated scalars may legally arrive unpacked (one tag per element); the view falls back."""
    series_set = metric_pb2.SeriesSet(
        entries=[metric_pb2.SeriesDef(name=n, labels=lab) for n, lab in SERIES]
    )
    body = b"\x0a\x04cols" + b"\x10\x01" + b"\x18\x01"
    body += b"\x22" + bytes([len(series_set.SerializeToString())]) + series_set.SerializeToString()
    for value in (1.0, 2.0, 3.0):
        body += b"\x29" + struct.pack("<d", value)  # field 5, wire type 1 (fixed64), unpacked
    body += b"\x31" + struct.pack("<q", time.time_ns())  # field 6, wire type 1, unpacked
    assert list(metric_pb2.ColumnarBatch.FromString(body).values) == [1.0, 2.0, 3.0]
    xadd_columns(r, "cols", 1, 1, body)
    run_until_empty(worker)
    assert stored(database_url, "cols")[0] == 3


def test_poison_entry_is_isolated_and_dead_lettered(
    settings: Settings, r: redis.Redis, database_url: str
) -> None:
    """An entry that breaks the worker itself (here: written by something else, no agent field)."""
    w = Worker(settings.model_copy(update={"worker_max_deliveries": 2}), "poisoned")
    for seq in range(1, 4):
        xadd(r, "good", 1, seq, make_batch("good", 1, seq, 2), shards=2)
    poison_stream = keys.stream_key(keys.shard_for("good", 2))
    r.xadd(poison_stream, {b"not": b"a batch"})
    for seq in range(4, 7):
        xadd(r, "good", 1, seq, make_batch("good", 1, seq, 2), shards=2)
    assert w.handle(w._read(">", None)) is False  # the chunk is split; the poison stays pending
    assert stored(database_url, "good") == (12, 2, 6)  # everything else committed
    assert w.handle(w._read("0", None)) is True  # second failure: dead-lettered
    w.close()
    ((_, fields),) = r.xrange(keys.DEAD_LETTER_STREAM)
    assert fields[b"not"] == b"a batch" and fields[b"attempts"] == b"2"  # kept as it came
    assert fields[b"stream"] == poison_stream.encode() and b"KeyError" in fields[b"error"]
    for shard in range(2):
        assert r.xlen(keys.stream_key(shard)) == 0
        assert r.xpending(keys.stream_key(shard), keys.CONSUMER_GROUP)["pending"] == 0
    assert r.hlen(keys.ATTEMPTS_KEY) == 0


BAD_SERIES = [
    ("ok_metric", {"k": "v"}, None),
    ("bad-name", {}, "invalid_metric_name"),
    ("", {}, "invalid_metric_name"),
    ("m", {"k": "a\x00b"}, "invalid_label_value"),
    ("m", {"k": "x" * 5000}, "invalid_label_value"),
    ("m", {"bad-key": "v"}, "invalid_label_name"),
    ("m", {f"k{i}": "v" for i in range(1000)}, "too_many_labels"),
]


def test_invalid_series_are_rejected_per_point_and_counted(
    worker: Worker, r: redis.Redis, database_url: str
) -> None:
    stamp = common_pb2.Timestamp(seconds=int(time.time()))
    rows = metric_pb2.MetricBatch(
        agent_id="v-rows",
        epoch=1,
        sequence=1,
        metrics=[
            metric_pb2.MetricPoint(name=n, value=1.0, timestamp=stamp, labels=lab)
            for n, lab, _ in BAD_SERIES
        ],
    ).SerializeToString()
    xadd(r, "v-rows", 1, 1, rows, shards=2)
    columns = make_columns(
        "v-cols", 1, 1, [(n, lab) for n, lab, _ in BAD_SERIES], [float("nan")] * len(BAD_SERIES)
    )
    xadd_columns(r, "v-cols", 1, 1, columns)
    run_until_empty(worker)
    expected = {
        "invalid_metric_name": 2,
        "invalid_label_value": 2,
        "invalid_label_name": 1,
        "too_many_labels": 1,
    }
    with psycopg.connect(database_url) as conn:
        for agent in ("v-rows", "v-cols"):
            assert stored(database_url, agent)[:2] == (1, 1)  # the valid series, NaN value included
            reasons = dict(
                conn.execute(
                    "SELECT reason, points FROM rejects WHERE agent_id = %s", (agent,)
                ).fetchall()
            )
            assert reasons == expected, (agent, reasons)
            accounting = conn.execute(
                "SELECT batches_committed, points_committed, points_rejected FROM agent_ingest WHERE agent_id = %s",
                (agent,),
            ).fetchone()
            assert accounting == (1, 1, 6)
        value = conn.execute(
            "SELECT value FROM all_points JOIN series USING (series_id) WHERE agent_id = 'v-cols'"
        ).fetchone()[0]
    assert value != value  # NaN is stored as it is


def test_entries_of_a_dead_consumer_are_reclaimed(
    settings: Settings, r: redis.Redis, database_url: str
) -> None:
    for seq in range(1, 6):
        xadd(r, "orphan", 1, seq, make_batch("orphan", 1, seq, 2), shards=2)
    dead = Worker(settings, "dead-consumer")
    assert len(dead._read(">", None)) == 5  # read, never committed nor acknowledged: it "died"
    dead.close()
    alive = Worker(settings.model_copy(update={"worker_reclaim_idle_ms": 50}), "alive-consumer")
    assert alive._read(">", None) == []  # nothing new: the entries belong to the dead consumer
    time.sleep(0.1)
    assert alive.reclaim() == 5
    alive.close()
    assert stored(database_url, "orphan") == (10, 2, 5)
    shard = keys.stream_key(keys.shard_for("orphan", 2))
    assert r.xpending(shard, keys.CONSUMER_GROUP)["pending"] == 0


def test_series_set_cache_bound_does_not_lose_points(
    worker: Worker, r: redis.Redis, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fleetpulse.ingest.worker import decode

    monkeypatch.setattr(decode, "MAX_CACHED_SERIES_SETS", 2)
    for round_ in range(3):
        for agent in range(4):  # more distinct series sets than the cache holds
            agent_id = f"many-{agent}"
            xadd_columns(
                r,
                agent_id,
                1,
                round_ + 1,
                make_columns(agent_id, 1, round_ + 1, SERIES, [1.0, 2.0, 3.0]),
            )
        run_until_empty(worker)
    for agent in range(4):
        assert stored(database_url, f"many-{agent}") == (9, 3, 3)


def test_committed_batches_are_announced_after_commit(
    worker: Worker, r: redis.Redis, database_url: str
) -> None:
    feed = CommittedFeed(r)
    for seq in (1, 2, 3, 5):
        xadd(r, "w1", 4, seq, make_batch("w1", 4, seq, 2), shards=2)
    xadd(r, "w2", 9, 1, make_batch("w2", 9, 1, 2), shards=2)
    run_until_empty(worker)
    announced = {(c.agent_id, c.epoch, s) for c in feed.read(block_ms=None) for s in c.sequences()}
    assert announced == {("w1", 4, 1), ("w1", 4, 2), ("w1", 4, 3), ("w1", 4, 5), ("w2", 9, 1)}

    # A redelivered batch is final already: it is announced again (the agent may have missed it).
    xadd(r, "w1", 4, 2, make_batch("w1", 4, 2, 2), shards=2)
    run_until_empty(worker)
    again = feed.read(block_ms=None)
    assert [(c.agent_id, c.epoch, c.ranges) for c in again] == [("w1", 4, ((2, 2),))]
    assert stored(database_url, "w1") == (8, 2, 4)  # points, series, batches: once each


def test_nothing_is_announced_for_a_chunk_that_did_not_commit(
    settings: Settings, r: redis.Redis
) -> None:
    feed = CommittedFeed(r)
    xadd(r, "w3", 1, 1, make_batch("w3", 1, 1, 2), shards=2)
    crashing = Worker(settings, "announcer")
    entries = crashing._read(">", None)
    crashing.close_database()  # the database goes away before the chunk is written
    with pytest.raises(psycopg.OperationalError):
        crashing.process(entries)
    crashing.close()
    assert feed.read(block_ms=None) == []


def test_worker_prefers_its_own_shards_and_helps_when_they_are_empty(
    settings: Settings, r: redis.Redis, database_url: str
) -> None:
    agents = {
        shard: next(f"s{i}" for i in range(100) if keys.shard_for(f"s{i}", 2) == shard)
        for shard in (0, 1)
    }
    for agent in agents.values():
        for seq in (1, 2):
            xadd(r, agent, 1, seq, make_batch(agent, 1, seq, 2), shards=2)
    first = Worker(settings.model_copy(update={"worker_read_count": 10}), "own-1", slot=(1, 2))
    try:
        chunk = first._read(">", None)
        assert {stream for stream, _, _ in chunk} == {keys.stream_key(0)}  # its own shard only
        first.process(chunk)
        chunk = first._read(">", None)  # its shard is empty: it takes the other one's work
        assert {stream for stream, _, _ in chunk} == {keys.stream_key(1)}
        first.process(chunk)
    finally:
        first.close()
    assert stored(database_url, agents[1]) == (4, 2, 2)


def test_a_read_blocked_longer_than_the_default_socket_timeout_waits_it_out(
    database_url: str, redis_url: str
) -> None:
    """redis-py 8 times a socket out after 5 s by default; a worker told to block 6 s must not
    see every idle read fail with a timeout."""
    slow = Settings(database_url=database_url, redis_url=redis_url, worker_block_ms=6000)
    w = Worker(slow, "test-blocking")
    try:
        began = time.monotonic()
        assert w._read(">", slow.worker_block_ms) == []
        assert time.monotonic() - began >= 5.5
    finally:
        w.close()

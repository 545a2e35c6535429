"""Compression faults: the process compressing an hour SIGKILLed in the middle of a batch
(failpoint ``mid-compress``: inside the batch's transaction, after its rows and minute rows were
deleted from ``samples`` and ``set_rollup_1m`` and their chunks written, before COMMIT). Under load from real agents and the bench's
simulated fleet, ending with `fleetpulse audit` and the fleet's own verification; the hours
compressed are seeded by the test: every point read back exactly once (hot rows and chunks), none
left hot, the minute tier equal to the raw points."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from pathlib import Path

import numpy as np
import psycopg
import pytest

from fleetpulse.errors import ConfigError
from fleetpulse.ingest.worker import rollups
from fleetpulse.ingest.worker.copier import write_points
from fleetpulse.settings import load_settings
from tests.faults.conftest import READY_LINE_WORKER, Harness, wait_for
from tests.faults.test_rollups import FAST_ROLLUPS, written
from tests.integration.test_compress import (
    HOUR_US,
    MINUTE_US,
    SECOND_US,
    aggregates,
    at,
    chunk_rows,
    hot_minutes,
    hot_rows,
    hour_start_us,
    minute_chunk_sets,
    multiset,
    read_back,
)
from tests.integration.test_samples import assert_aggregates_equal, rollup_rows
from tests.processes import free_port

pytestmark = [pytest.mark.faults, pytest.mark.timeout(240)]

# A round every 0.5 s. The hours compressed are those closed an hour before (so an hour that
# closes during the test, holding the load's points, stays hot and the audit reads it as usual):
# the two seeded hours, which closed two and three hours ago.
COMPRESS = {"compress_after_s": 3600, "compress_interval_s": 0.5}
SEED_AGENT = "seed-compress"
SEED_SERIES = 24
SEED_SETS = 70  # series sets, each in both hours


def seed(database_url: str) -> tuple[list[int], int, int, int, Counter]:
    """Points of SEED_AGENT in the hours that began three and two hours ago, written as the tools
    write them (write_points), with their minutes marked for the rollup job as a worker marks
    them; returns (series ids, first hour µs, end µs, samples rows written, the points as a
    multiset)."""
    rng = np.random.default_rng(31)
    first = hour_start_us(3)
    end = first + 2 * HOUR_US
    with psycopg.connect(database_url, autocommit=True) as conn:
        ids = sorted(
            row[0]
            for row in conn.execute(
                "INSERT INTO series (agent_id, name, labels)"
                " SELECT %s, 'seeded', jsonb_build_object('i', i::text)"
                " FROM generate_series(1, %s) i RETURNING series_id",
                (SEED_AGENT, SEED_SERIES),
            )
        )
        series, stamps = [], []
        # a collection every 5 s, of one of SEED_SETS series lists in turn (one set each)
        for k, ts in enumerate(range(first + 250_000, end, 5 * SECOND_US)):
            n = k % SEED_SETS
            start, width = n % SEED_SERIES, 1 + n % 7  # (start, width) distinct for n < 168
            series += [ids[(start + j) % SEED_SERIES] for j in range(width)]
            stamps += [ts] * width
        s, t = np.asarray(series), np.asarray(stamps, dtype=np.int64)
        v = rng.normal(0, 1e3, len(s))
        v[::97] = np.nan
        v[5::101] = np.inf
        v[7::103] = -np.inf
        v[11::107] = -0.0
        # a few series with a second point at the same timestamp
        twice = np.arange(0, len(s), 211)
        s, t = np.concatenate([s, s[twice]]), np.concatenate([t, t[twice]])
        v = np.concatenate([v, v[twice] + 0.5])
        rows = write_points(conn, s, t, v)
        conn.execute(rollups.MARK_MINUTES, (rollups.minute_starts(t),))
    return ids, first, end, rows, multiset(s, t, v)


def compressed(database_url: str, first: int, end: int) -> bool:
    """No seeded row left hot, and no mark left on the seeded hours."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        marks = conn.execute(
            "SELECT count(*) FROM rollup_dirty WHERE bucket >= %s AND bucket < %s",
            (at(first), at(end)),
        ).fetchone()
        return hot_rows(conn, first, end) == 0 and marks == (0,)


def test_compression_killed_in_the_middle_of_a_batch(harness: Harness, tmp_path: Path) -> None:
    marker = tmp_path / "failpoint-mid-compress"
    port = free_port()
    ingest = harness.start_ingest(port)
    harness.start_fleet(port)
    agents = harness.add_agents(3, port)
    # The failpoint (ingest/worker/failpoints.py): the worker whose compression thread writes a batch of
    # chunks first SIGKILLs itself once, before that batch's COMMIT, and writes the hour into the
    # marker file.
    pool = harness.start_workers(2, failpoint=f"mid-compress:{marker}", **FAST_ROLLUPS, **COMPRESS)
    harness.wait_flowing(agents)

    # Two closed hours of points: the rollup threads recompute their minutes and hours (which
    # marks the hours for compression), then a compression thread takes them.
    ids, first, end, rows, want = seed(harness.database_url)
    text = wait_for(
        lambda: written(marker),
        60,
        "the failpoint to fire (the seeded hours rolled up, their compression begun)",
        every_s=0.2,
    )
    killed = datetime.fromisoformat(text.strip())
    assert killed in (at(first), at(first + HOUR_US)), (killed, at(first))
    wait_for(lambda: "exited with status -9" in pool.log_text(), 10, "the pool to see the kill")
    # The pool restarts the killed worker (after its 1 s delay); it reads its streams again.
    harness.wait_logged(pool, READY_LINE_WORKER, 3, 30)
    harness.wait_workers(pool, 2)
    # The killed batch rolled back whole (its rows are hot again, its chunks gone, the hour still
    # marked): a compression thread (the other worker's or the restarted one's) does it again.
    wait_for(
        lambda: compressed(harness.database_url, first, end),
        60,
        "the seeded hours compressed after the kill",
        every_s=0.2,
    )

    with psycopg.connect(harness.database_url, autocommit=True) as db:
        assert hot_rows(db, first, end) == 0
        chunks = chunk_rows(db, first, end)
        assert {h for _, h, _ in chunks} == {first, first + HOUR_US}
        assert len(chunks) == len({(s, h) for s, h, _ in chunks})  # one per set and hour
        assert len({s for s, _, _ in chunks}) >= SEED_SETS
        assert sum(n for _, _, n in chunks) == rows
        # the minute tier compressed with them: a minute chunk per chunk, no minute row left
        assert hot_minutes(db, first, end) == 0
        assert minute_chunk_sets(db, first, end) == {(s, h) for s, h, _ in chunks}
        # every seeded point exactly once, bit for bit
        assert read_back(db, ids) == want
        assert read_back(db, ids, at(first), at(end)) == want
        # the minute and hour tiers equal the raw points (now read from the chunks)
        lo, hi = at(first), at(end)
        assert_aggregates_equal(
            rollup_rows(db, "rollup_1m", ids), aggregates(db, ids, MINUTE_US, lo, hi)
        )
        assert_aggregates_equal(
            rollup_rows(db, "rollup_1h", ids), aggregates(db, ids, HOUR_US, lo, hi)
        )

    harness.wait_flowing(agents)
    harness.finish(ingest, pool)
    assert pool.count_in_log("exited with status -9") == 1  # once: the marker disarmed it
    print(
        f"compression: hour {killed:%H:%M} killed mid-batch; {rows:,} seeded rows "
        f"({sum(want.values()):,} points) in {len(chunks)} chunks, each point read back once, "
        "the minute tier equal to the raw points"
    )


def test_mid_compress_failpoint_takes_a_marker_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETPULSE_FAILPOINT", "mid-compress:/tmp/marker")
    monkeypatch.setenv("FLEETPULSE_COMPRESS_AFTER_S", str(COMPRESS["compress_after_s"]))
    monkeypatch.setenv("FLEETPULSE_COMPRESS_INTERVAL_S", str(COMPRESS["compress_interval_s"]))
    settings = load_settings()
    assert settings.failpoint == "mid-compress:/tmp/marker"
    assert (settings.compress_after_s, settings.compress_interval_s) == (3600.0, 0.5)
    monkeypatch.setenv("FLEETPULSE_FAILPOINT", "mid-compress")  # no marker file: refused
    with pytest.raises(ConfigError, match="failpoint"):
        load_settings()

"""Rollup faults: the process running the rollup job SIGKILLed in the middle of recomputing a minute
(failpoint ``mid-rollup``: inside the minute's transaction, after its rows were COPYed, before
COMMIT). Under load from real agents and the bench's simulated fleet, ending with
`fleetpulse audit` and the fleet's own verification; then the rollup tier is checked against the raw
points: every closed minute exact, the killed one recomputed after the kill, no mark left behind."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from fleetpulse.errors import ConfigError
from fleetpulse.settings import load_settings
from tests.faults.conftest import READY_LINE_WORKER, Harness, wait_for
from tests.processes import free_port

# The test waits for a minute boundary (wall clock): the first closed minute is the one killed.
pytestmark = [pytest.mark.faults, pytest.mark.timeout(240)]

# A round every 0.5 s, and a closed minute recomputed once its marks have settled for 0.5 s
# (defaults 2 s, 2 s, 10 s): the kill comes about a second after the first minute closes, and
# minutes are recomputed more than once while their last batches still arrive.
FAST_ROLLUPS = {"rollup_interval_s": 0.5, "rollup_settle_s": 0.5, "rollup_max_delay_s": 5}

# Per closed minute: its (series, minute) rows, and those where the minute tier differs from the
# aggregates of the raw points (all_points: both layouts) or exists on one side only; a few of them
# as examples. `last` breaks a tie of timestamps by the greater value (ingest/worker/rollups.py). The
# session's TimeZone is UTC.
_COMPARE = """
WITH want AS (
    SELECT series_id, date_trunc('minute', ts) AS bucket, count(*) AS count, sum(value) AS sum,
           min(value) AS min, max(value) AS max,
           (array_agg(value ORDER BY ts DESC, value DESC))[1] AS last, max(ts) AS last_ts
    FROM all_points WHERE ts < %(closed)s
    GROUP BY 1, 2
), got AS (
    SELECT series_id, bucket, count, sum, min, max, last, last_ts FROM all_rollup_1m
    WHERE bucket < %(closed)s
), compared AS (
    SELECT bucket, series_id, want, got,
           want.count IS DISTINCT FROM got.count
           OR want.last_ts IS DISTINCT FROM got.last_ts
           OR want.min IS DISTINCT FROM got.min
           OR want.max IS DISTINCT FROM got.max
           OR want.last IS DISTINCT FROM got.last
           OR NOT coalesce(
               want.sum = got.sum
               OR abs(want.sum - got.sum) <= 1e-9 * greatest(abs(want.sum), abs(got.sum)) + 1e-12,
               false) AS wrong
    FROM want FULL JOIN got USING (series_id, bucket)
)
SELECT bucket, count(*) FILTER (WHERE (want).count IS NOT NULL), count(*) FILTER (WHERE wrong),
       (array_agg(format('series %%s: want %%s, got %%s', series_id,
                         coalesce(want::text, 'none'), coalesce(got::text, 'none')))
           FILTER (WHERE wrong))[1:3]
FROM compared GROUP BY bucket ORDER BY bucket
"""


def written(marker: Path) -> str | None:
    """The marker file's content once whole (the failpoint writes one line, then fsyncs)."""
    try:
        text = marker.read_text()
    except FileNotFoundError:
        return None
    return text if text.endswith("\n") else None


def recomputed_since(database_url: str, bucket: datetime, since: datetime) -> int:
    """Recomputes of the minute ``bucket`` logged (committed) after ``since``."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM rollup_log WHERE tier = 1 AND bucket = %s AND done_at > %s",
            (bucket, since),
        ).fetchone()
    return row[0] if row else 0


def closed_marks(database_url: str, closed: datetime) -> int:
    """Dirty marks of minutes before ``closed`` (closed minutes) not yet taken by the job."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM rollup_dirty WHERE tier = 1 AND bucket < %s", (closed,)
        ).fetchone()
    return row[0] if row else 0


def compare_minutes(database_url: str, closed: datetime) -> dict[datetime, tuple[int, int, Any]]:
    """Per closed minute before ``closed``: (series with points, rows wrong, examples). The minute
    tier per series is the view all_rollup_1m where it exists (schema 0010: the per-set rows
    expanded, combined with the per-series rows of the layout before), else rollup_1m."""
    with psycopg.connect(database_url) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        rows = conn.execute(_COMPARE, {"closed": closed}).fetchall()
    return {bucket: (series, wrong, examples) for bucket, series, wrong, examples in rows}


def test_rollup_job_killed_in_the_middle_of_a_minute(harness: Harness, tmp_path: Path) -> None:
    marker = tmp_path / "failpoint-mid-rollup"
    port = free_port()
    ingest = harness.start_ingest(port)
    harness.start_fleet(port)
    agents = harness.add_agents(3, port)
    # The failpoint (ingest/worker/failpoints.py): the worker whose rollup thread recomputes a minute first
    # SIGKILLs itself once, between the COPY of that minute's rows and the COMMIT, and writes the
    # minute into the marker file.
    pool = harness.start_workers(2, failpoint=f"mid-rollup:{marker}", **FAST_ROLLUPS)
    harness.wait_flowing(agents)

    # The first minute with points closes within a minute, and is recomputed about a second later.
    text = wait_for(
        lambda: written(marker),
        90,
        "the failpoint to fire (a minute closes and its recompute begins)",
        every_s=0.2,
    )
    killed = datetime.fromisoformat(text.strip())
    # Written just before the kill, on the clock the database reads (the same machine).
    fired_at = datetime.fromtimestamp(marker.stat().st_mtime, UTC)
    wait_for(lambda: "exited with status -9" in pool.log_text(), 10, "the pool to see the kill")
    # The pool restarts the killed worker (after its 1 s delay); it reads its streams again.
    harness.wait_logged(pool, READY_LINE_WORKER, 3, 30)
    harness.wait_workers(pool, 2)
    # The killed transaction rolled back its mark deletions with the rest: the job (the other
    # worker's thread or the restarted one's) recomputes the minute again.
    wait_for(
        lambda: recomputed_since(harness.database_url, killed, fired_at),
        30,
        "the killed minute recomputed after the kill",
        every_s=0.2,
    )
    harness.wait_flowing(agents)
    harness.finish(ingest, pool)
    assert pool.count_in_log("exited with status -9") == 1  # once: the marker disarmed it

    # The load has stopped: the job catches up on every closed minute (settle 0.5 s, round 0.5 s).
    closed = harness.db_now().replace(second=0, microsecond=0)
    wait_for(
        lambda: closed_marks(harness.database_url, closed) == 0,
        30,
        "no mark left on a closed minute",
        every_s=0.2,
    )
    minutes = compare_minutes(harness.database_url, closed)
    wrong = {bucket: (n, examples) for bucket, (_, n, examples) in minutes.items() if n}
    assert not wrong, f"the minute tier differs from the raw points (rows wrong, examples): {wrong}"
    with_points = sorted(bucket for bucket, (series, _, _) in minutes.items() if series)
    assert killed in with_points, (killed, with_points)
    assert closed_marks(harness.database_url, closed) == 0
    print(
        f"rollups: minute {killed:%H:%M} killed mid-recompute; {len(with_points)} closed minutes, "
        f"{sum(minutes[b][0] for b in with_points):,} series rows, each equal to the raw points"
    )


def test_mid_rollup_failpoint_takes_a_marker_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETPULSE_FAILPOINT", "mid-rollup:/tmp/marker")
    assert load_settings().failpoint == "mid-rollup:/tmp/marker"
    monkeypatch.setenv("FLEETPULSE_FAILPOINT", "mid-rollup")  # no marker file: refused
    with pytest.raises(ConfigError, match="failpoint"):
        load_settings()

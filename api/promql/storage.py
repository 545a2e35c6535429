"""Samples of a selector's series over a time range, from every layout and tier, as numpy arrays.

Raw points wherever they are stored; the rollup tiers only stand in before the raw horizon, where
retention has dropped the raw points (``retention_days``, 7 by default, against 35 for minutes and
400 for hours). So every query over the raw retention answers as Prometheus does on the same
samples, however long its range: the tiers' one sample per bucket would be a downsampling
(``avg_over_time`` of one sample an hour is not the hour's average), so they are used for
reach, and for speed only where the client allows it (Thanos' ``max_source_resolution``,
api/prom.py: then a tier stands in up to its newest final bucket, ``downsample``). Past the horizon, the stand-in is the minute tier's ``last`` sample (one
per series and minute, at its real timestamp), or the hour tier's at steps of an hour when every
range of the query spans at least four hours; the minute tier falls back to the hour tier where
its minutes are gone too.

The raw horizon is the oldest raw data of any series (the oldest compressed hour, else the day
of the oldest non-empty raw partition), found in the catalog and the oldest partitions once a
minute per database (`raw_horizon_us`): the tiers are computed from raw points, so before
retention drops a day there is nothing older in them either.

Where a query's windows line up with a tier's buckets, ``sum``/``count``/``avg``/``min``/
``max_over_time`` read the buckets' exact aggregates instead (api/promql/buckets.py:
`Reader.buckets`, `Reader.samples_at`).

One query reads hot rows (raw points of hours not yet compressed, and the tiers' samples where
they stand in); compressed hours come as chunks, read in the same snapshot and decoded with one
pcodec call per wanted column (fleetpulse/samples.py). The result is sorted by (series, time),
what `RangeSamples` needs.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from psycopg import AsyncConnection, sql

from fleetpulse import liveness, samples
from fleetpulse.api.promql import fleetseries
from fleetpulse.api.promql.errors import PromQLError
from fleetpulse.api.selectors import ALL, MAX_MATCHED_SERIES, Matcher, Series, select_series
from fleetpulse.api.tiers import TIER_SPACING_S, splits
from fleetpulse.api.windows import read_windows
from fleetpulse.settings import Settings

MAX_SAMPLES_PER_QUERY = 20_000_000

_EPOCH_US = "(extract(epoch FROM {col}) * 1000000)::int8"
_RAW_POINTS = samples.points_sql("ids", "split_m", "end", hi_inclusive=True)
# The hour tier up to hours_end: split_h, or for the minute tier split_m too, where it stands in
# for hours whose minutes are gone (the minute tier is kept for less time than the hour tier).
_HOURS = samples.rollup_sql("1h", "ids", "start", "hours_end")
_MINUTES = samples.rollup_sql("1m", "ids", "split_h", "split_m")
# One row of four byte strings (series ids, times, values, tiers), each big-endian binary: a
# COPY sends one message per row, which psycopg reads one Python iteration at a time (39,600
# iterations and 110 ms of a 2,000-series top-N query); one row of aggregated bytes is read as
# four numpy buffers. The tiers' parts are left out of the statement where they stand in for
# nothing (the usual case: the whole range is within the raw retention).
_TIER_PARTS = {
    "hours": f"""SELECT series_id, {_EPOCH_US.format(col="last_ts")} AS ts, last AS value,
        2::int2 AS tier FROM ({_HOURS}) hours""",  # noqa: S608  # constants only
    "minutes": f"""SELECT series_id, {_EPOCH_US.format(col="last_ts")}, last, 1::int2
        FROM ({_MINUTES}) minutes""",  # noqa: S608  # constants only
}
_RAW_PART = f"""SELECT series_id, {_EPOCH_US.format(col="ts")} AS ts, value AS value,
    0::int2 AS tier FROM ({_RAW_POINTS}) raw"""  # noqa: S608  # constants only


def _fetch_sql(hours: bool, minutes: bool) -> str:
    parts = [
        *([_TIER_PARTS["hours"]] if hours else []),
        *([_TIER_PARTS["minutes"]] if minutes else []),
        _RAW_PART,
    ]
    union = "\n    UNION ALL\n    ".join(parts)
    return f"""
SELECT string_agg(int4send(series_id::int4), ''), string_agg(int8send(ts), ''),
       string_agg(float8send(value), ''), string_agg(int2send(tier), '')
FROM (
    {union}
) fetched
"""  # noqa: S608  # constants only


_FETCH = {(h, m): _fetch_sql(h, m) for h in (False, True) for m in (False, True)}
_FIELDS = ("sid", "ts", "v", "tier")  # tier: 0 raw, 1 minute, 2 hour
_ROW = np.dtype(list(zip(_FIELDS, (np.int64, np.int64, np.float64, np.int16), strict=True)))
_HOUR_US = 3_600_000_000
US = 1_000_000
# Raw points and minutes of compressed hours, read in the same snapshot as _FETCH.
_CHUNKS = samples.chunks_sql("ids", "split_m", "end")
_MINUTE_CHUNKS = samples.minute_chunks_sql("ids", "split_h", "split_m")


# Exact windows from the tiers (api/promql/buckets.py): the raw points at the windows' closed
# ends, and whether a bucket of the range still waits for the rollup job.
_AT_POINTS = f"""
SELECT string_agg(int4send(series_id::int4), ''), string_agg(int8send(ts), ''),
       string_agg(float8send(value), '')
FROM (SELECT series_id, {_EPOCH_US.format(col="ts")} AS ts, value
      FROM ({samples.points_at_sql("ids", "times")}) p) fetched
"""  # noqa: S608  # constants only
_AT_CHUNKS = samples.chunks_at_sql("ids", "hours")
_LATEST = f"""
SELECT string_agg(int4send(series_id::int4), ''), string_agg(int8send(ts), ''),
       string_agg(float8send(value), '')
FROM (SELECT series_id, {_EPOCH_US.format(col="ts")} AS ts, value
      FROM ({samples.latest_points_sql("ids", "lo", "hi")}) p) fetched
"""  # noqa: S608  # constants only
# An hour is compressed no sooner than this after it closed (Settings.compress_after_s' least).
_HOURS_HOT_AFTER_CLOSE_US = 300_000_000
_DIRTY = """
SELECT EXISTS (SELECT FROM rollup_dirty WHERE tier IN (1, 2) AND bucket >= %s AND bucket < %s)
"""


@dataclass(frozen=True)
class Buckets:
    """Per series (rows) and bucket (columns, the first at ``first_us``, ``width_us`` apart):
    sample count, sum, min and max (NaN where empty), exact aggregates of the raw points."""

    first_us: int
    width_us: int
    count: np.ndarray
    sum: np.ndarray
    min: np.ndarray
    max: np.ndarray


def _hours_without_minutes(
    rows: np.ndarray, minute_rows: np.ndarray, chunked: samples.SeriesMinutes | None
) -> np.ndarray:
    """Which COPY rows to keep when the minute tier is read: all but the hour-tier rows of a
    series and hour that has minute samples (hot or compressed)."""
    sid = np.concatenate(
        [minute_rows["sid"].astype(np.int64)]
        + ([chunked.series_id.astype(np.int64)] if chunked is not None else [])
    )
    ts = np.concatenate(
        [minute_rows["ts"].astype(np.int64)]
        + ([chunked.minutes.last_ts_us.astype(np.int64)] if chunked is not None else [])
    )
    hour = (ts // _HOUR_US).astype(np.int64)
    covered = np.unique(sid * (1 << 32) + hour)
    is_hour = rows["tier"] == 2
    h_key = rows["sid"].astype(np.int64) * (1 << 32) + rows["ts"].astype(np.int64) // _HOUR_US
    position = np.clip(np.searchsorted(covered, h_key), 0, max(len(covered) - 1, 0))
    hit = (covered[position] == h_key) if len(covered) else np.zeros(len(rows), bool)
    return ~(is_hour & hit)


def _at(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1e6, UTC)


# -- the raw horizon -----------------------------------------------------------------------------

NO_RAW_US = 1 << 62  # no raw data at all: the tiers stand in everywhere
_HORIZON_TTL_S = 60.0
_horizons: dict[tuple[str, int, str], tuple[float, int]] = {}
_PARTITIONS = """
SELECT p.relname, c.relname FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent
WHERE p.relname IN ('sample_chunks', 'samples', 'points')
"""


async def raw_horizon_us(conn: AsyncConnection[Any]) -> int:
    """Where raw data begins (µs), as of at most a minute ago (module docstring)."""
    key = (conn.info.host, conn.info.port, conn.info.dbname)
    now = time.monotonic()
    cached = _horizons.get(key)
    if cached is not None and now - cached[0] < _HORIZON_TTL_S:
        return cached[1]
    horizon = await _find_horizon(conn)
    # "No raw data yet" is not kept: the first points arrive any moment on a new platform, and a
    # query made before them (the rule evaluator's first round) must not hide them for a minute.
    if horizon != NO_RAW_US:
        _horizons[key] = (now, horizon)
    return horizon


def forget_horizons() -> None:
    """Drop the cached horizons (tests that drop raw data)."""
    _horizons.clear()


async def _find_horizon(conn: AsyncConnection[Any]) -> int:
    days: dict[str, list[tuple[datetime, str]]] = {}
    for table, name in await (await conn.execute(_PARTITIONS)).fetchall():
        try:
            day = datetime.strptime(name, f"{table}_%Y%m%d").replace(tzinfo=UTC)
        except ValueError:
            continue  # a partition someone attached by hand; not ours to interpret
        days.setdefault(table, []).append((day, name))
    found: list[int] = []
    for _day, name in sorted(days.get("sample_chunks", [])):
        query = sql.SQL("SELECT min(hour) FROM {}").format(sql.Identifier(name))
        (oldest,) = await (await conn.execute(query)).fetchone() or (None,)
        if oldest is not None:
            found.append(round(oldest.timestamp() * 1e6))
            break
    for table in ("samples", "points"):
        for day, name in sorted(days.get(table, [])):
            query = sql.SQL("SELECT EXISTS (SELECT FROM {})").format(sql.Identifier(name))
            (any_row,) = await (await conn.execute(query)).fetchone() or (False,)
            if any_row:
                found.append(round(day.timestamp() * 1e6))
                break
    return min(found, default=NO_RAW_US)


class Reader:
    """Fetches for one query: it counts what the query read against the limit. ``tier`` is the
    tier that stands in before the raw horizon (module docstring)."""

    def __init__(
        self,
        conn: AsyncConnection[Any],
        tier: str,
        downsample: bool = False,
        liveness_params: dict[str, Any] | None = None,
        max_series: int = MAX_MATCHED_SERIES,
    ) -> None:
        self.conn = conn
        self.max_series = max_series
        self.liveness = liveness_params or liveness.params(Settings())
        self.tier = tier
        self.downsample = downsample
        self.fetched = 0
        self.now = datetime.now(UTC).timestamp()  # one "now" for every read of the query
        self._horizon_us: int | None = None

    async def horizon_us(self) -> int:
        """Where raw points take over from the tier: the raw horizon, or when downsampling the
        tier's newest final bucket (as the native endpoints read it, api/query.py)."""
        if self._horizon_us is None:
            horizon = await raw_horizon_us(self.conn)
            if self.downsample:
                final_s = splits("1m", 0.0, math.inf, self.now)[1]
                horizon = max(horizon, round(final_s * 1e6))
            self._horizon_us = horizon
        return self._horizon_us

    async def series(self, matchers: list[Matcher]) -> list[Series]:
        """The matching series, by id."""
        series = await select_series(self.conn, matchers, ALL, self.max_series)
        series.sort(key=lambda s: s.series_id)
        return series

    async def buckets(
        self, series: list[Series], tier: str, lo_us: int, hi_us: int
    ) -> Buckets | None:
        """The tier's buckets in [lo_us, hi_us) (multiples of its width), as exact as the native
        endpoints read them (tier rows where final, raw points after); None while a bucket of
        the range waits for the rollup job (a late batch: the tier is not exact there yet)."""
        width_us = round(TIER_SPACING_S[tier] * US)
        final_m = splits("1m", 0.0, math.inf, self.now)[1]
        cur = await self.conn.execute(
            _DIRTY, (_at(lo_us // _HOUR_US * _HOUR_US), _at(min(hi_us, round(final_m * US))))
        )
        if (await cur.fetchone() or (True,))[0]:
            return None
        ids = [s.series_id for s in series]
        windows = await read_windows(
            self.conn, ids, lo_us / US, hi_us / US, width_us / US, tier, last=False
        )
        columns = (hi_us - lo_us) // width_us
        row = np.searchsorted(np.array(ids, dtype=np.int64), windows["series_id"].to_numpy())
        col = windows["k"].to_numpy() - lo_us // width_us
        shape = (len(series), columns)
        count = np.zeros(shape, np.int64)
        total = np.zeros(shape)
        low, high = np.full(shape, np.nan), np.full(shape, np.nan)
        inside = (col >= 0) & (col < columns)
        at = (row[inside], col[inside])
        count[at] = windows["n"].to_numpy()[inside]
        total[at] = windows["s"].to_numpy()[inside]
        low[at] = windows["lo"].to_numpy()[inside]
        high[at] = windows["hi"].to_numpy()[inside]
        self._count(int(inside.sum()))
        return Buckets(lo_us, width_us, count, total, low, high)

    async def samples_at(
        self, series: list[Series], times_us: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The raw points at exactly the times ``times_us``: per point its series' index in
        ``series``, its time and value."""
        ids = [s.series_id for s in series]
        times = np.unique(np.asarray(times_us, dtype=np.int64))
        hours = np.unique(times // _HOUR_US * _HOUR_US)
        params = {
            "ids": ids,
            "times": [_at(int(t)) for t in times],
            "hours": [_at(int(h)) for h in hours],
        }
        async with samples.snapshot_async(self.conn):
            cur = await self.conn.execute(_AT_POINTS, params, binary=True)
            hot = await cur.fetchone()
            cur = await self.conn.execute(_AT_CHUNKS, params, binary=True)
            chunked = await cur.fetchall()
        sids, stamps, values = [], [], []
        if hot is not None and hot[0] is not None:
            sids.append(np.frombuffer(hot[0], ">i4").astype(np.int64))
            stamps.append(np.frombuffer(hot[1], ">i8").astype(np.int64))
            values.append(np.frombuffer(hot[2], ">f8").astype(np.float64))
        if chunked:
            points = samples.chunk_points(
                chunked, int(times[0]), int(times[-1]), hi_inclusive=True, at_us=times
            )
            sids.append(points.series_id.astype(np.int64))
            stamps.append(points.ts_unix_us.astype(np.int64))
            values.append(points.value.astype(np.float64))
        if not sids:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
        sid, ts, value = np.concatenate(sids), np.concatenate(stamps), np.concatenate(values)
        self._count(len(ts))
        return np.searchsorted(np.array(ids, dtype=np.int64), sid), ts, value

    def _count(self, read: int) -> None:
        self.fetched += read
        if self.fetched > MAX_SAMPLES_PER_QUERY:
            raise PromQLError(
                "query processing would load too many samples into memory in query execution "
                f"(more than {MAX_SAMPLES_PER_QUERY}); narrow it",
                "execution",
            )

    async def fetch(
        self, matchers: list[Matcher], lo_us: int, hi_us: int
    ) -> tuple[list[Series], np.ndarray, np.ndarray, np.ndarray]:
        """The matching series (by id) and their samples in [lo_us, hi_us]: per sample its series'
        index in that list, its time (µs) and value, sorted by (series, time)."""
        series = await self.series(matchers)
        if not series:
            return series, np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0)
        own = fleetseries.virtual(series)
        sids, stamps, values = [], [], []
        if own:
            sid, ts, value = await fleetseries.samples(
                self.conn, own, lo_us, hi_us, MAX_SAMPLES_PER_QUERY - self.fetched, self.liveness
            )
            sids.append(sid)
            stamps.append(ts)
            values.append(value)
        if len(own) < len(series):
            sid, ts, value = await self._stored(series[len(own) :], lo_us, hi_us)
            sids.append(sid)
            stamps.append(ts)
            values.append(value)
        sid, ts, value = np.concatenate(sids), np.concatenate(stamps), np.concatenate(values)
        order = np.lexsort((ts, sid))
        sid, ts, value = sid[order], ts[order], value[order]
        self._count(len(ts))
        ids = np.array([s.series_id for s in series], dtype=np.int64)
        return series, np.searchsorted(ids, sid), ts, value

    async def fetch_latest(
        self, matchers: list[Matcher], lo_us: int, hi_us: int
    ) -> tuple[list[Series], np.ndarray, np.ndarray, np.ndarray]:
        """`fetch` for a selector of a one-step query: at least each series' newest sample in
        [lo_us, hi_us], not every sample (select_instant takes the newest). Read from hot rows
        alone where they hold the whole range (raw data there, and an hour too recent to be
        compressed); else as `fetch`."""
        hour_start_us = lo_us // _HOUR_US * _HOUR_US
        compressible_us = hour_start_us + _HOUR_US + _HOURS_HOT_AFTER_CLOSE_US
        if lo_us < await self.horizon_us() or compressible_us <= round(self.now * US):
            return await self.fetch(matchers, lo_us, hi_us)
        series = await self.series(matchers)
        own = fleetseries.virtual(series)
        if own:  # the platform's own series of each agent: computed, not read
            return await self.fetch(matchers, lo_us, hi_us)
        if not series:
            return series, np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0)
        ids = [s.series_id for s in series]
        params = {"ids": ids, "lo": _at(lo_us), "hi": _at(hi_us)}
        cur = await self.conn.execute(_LATEST, params, binary=True)
        fetched = await cur.fetchone()
        if fetched is None or fetched[0] is None:
            return series, np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0)
        sid = np.frombuffer(fetched[0], ">i4").astype(np.int64)
        ts = np.frombuffer(fetched[1], ">i8").astype(np.int64)
        value = np.frombuffer(fetched[2], ">f8").astype(np.float64)
        order = np.lexsort((ts, sid))
        sid, ts, value = sid[order], ts[order], value[order]
        self._count(len(ts))
        return series, np.searchsorted(np.array(ids, dtype=np.int64), sid), ts, value

    async def _stored(
        self, series: list[Series], lo_us: int, hi_us: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The stored samples of ``series`` in [lo_us, hi_us]: per sample its series id, time
        and value."""
        # raw points from split_m; before it, minutes from split_h and hours up to hours_end
        split_m_us = min(max(lo_us, await self.horizon_us()), hi_us + 1)
        split_h_us = lo_us
        if self.tier == "1h":
            split_h_us = max(lo_us, split_m_us // _HOUR_US * _HOUR_US)
            if self.downsample:  # hours up to the newest final one, minutes after it
                final_h_s = splits("1h", 0.0, math.inf, self.now)[0]
                split_h_us = max(lo_us, min(split_h_us, round(final_h_s * 1e6)))
        hours_end_us = split_m_us if self.tier == "1m" else split_h_us
        params = {
            "ids": [s.series_id for s in series],
            "start": _at(lo_us),
            "split_h": _at(split_h_us),
            "split_m": _at(split_m_us),
            "hours_end": _at(hours_end_us),
            "end": _at(hi_us),
        }
        statement = _FETCH[hours_end_us > lo_us, split_m_us > split_h_us]
        chunked: list[tuple[Any, ...]] = []
        minutes: list[tuple[Any, ...]] = []
        async with samples.snapshot_async(self.conn):  # hot rows and chunks in one view
            cur = await self.conn.execute(statement, params, binary=True)
            fetched = await cur.fetchone()
            if split_m_us <= hi_us:
                cur = await self.conn.execute(_CHUNKS, params, binary=True)
                chunked = await cur.fetchall()
            if split_h_us < split_m_us:
                cur = await self.conn.execute(_MINUTE_CHUNKS, params, binary=True)
                minutes = await cur.fetchall()
        rows = np.zeros(0 if fetched is None or fetched[0] is None else len(fetched[0]) // 4, _ROW)
        if len(rows):
            assert fetched is not None
            for name, blob, kind in zip(
                _FIELDS, fetched, (">i4", ">i8", ">f8", ">i2"), strict=True
            ):
                rows[name] = np.frombuffer(blob, dtype=kind)
        decoded = samples.chunk_minutes(minutes, split_h_us, split_m_us) if minutes else None
        if self.tier == "1m":  # hour rows only where a series' hour has no minute
            rows = rows[_hours_without_minutes(rows, rows[rows["tier"] == 1], decoded)]
        sids = [rows["sid"].astype(np.int64)]
        stamps = [rows["ts"].astype(np.int64)]
        values = [rows["v"].astype(np.float64)]
        if chunked:
            points = samples.chunk_points(chunked, split_m_us, hi_us, hi_inclusive=True)
            sids.append(points.series_id.astype(np.int64))
            stamps.append(points.ts_unix_us.astype(np.int64))
            values.append(points.value.astype(np.float64))
        if decoded is not None:
            sids.append(decoded.series_id.astype(np.int64))
            stamps.append(decoded.minutes.last_ts_us.astype(np.int64))
            values.append(decoded.minutes.last[:, 0].astype(np.float64))
        sid, ts, value = np.concatenate(sids), np.concatenate(stamps), np.concatenate(values)
        # the tiers' buckets hold their last sample's real time, which may precede lo
        keep = (ts >= lo_us) & (ts <= hi_us)
        return sid[keep], ts[keep], value[keep]


__all__ = [
    "MAX_SAMPLES_PER_QUERY",
    "NO_RAW_US",
    "Buckets",
    "Reader",
    "forget_horizons",
    "raw_horizon_us",
]

"""Samples of a selector's series over a time range, from every layout and tier, as numpy arrays.

One binary ``COPY`` reads hot rows (raw points of open hours, and the rollup tiers' ``last``
sample per series and minute or hour where the query reads a tier); compressed hours come as
chunks, read in the same snapshot and decoded with one pcodec call per wanted column
(fleetpulse/samples.py). The result is sorted by (series, time), what `RangeSamples` needs.

Tiers: long ranges at coarse steps read the rollup tiers' ``last`` samples (one per series and
minute or hour, at its real timestamp) instead of raw points, when every range in the query spans
at least four of them: ``1m`` for steps of at least 1 minute over more than 6 hours, ``1h`` for
steps of at least 1 hour over more than 7 days. Counters keep their ``rate`` exact on those samples
(but for resets inside a bucket); ``*_over_time`` of a gauge then works on one sample per bucket,
a downsampling (the native ``/query/range`` reads exact averages from the rollups).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
from psycopg import AsyncConnection

from fleetpulse import samples
from fleetpulse.api.promql.errors import PromQLError
from fleetpulse.api.query import Matcher, Series, _splits, select_series

MAX_SAMPLES_PER_QUERY = 20_000_000
TIER_SPACING_S = {"raw": 0.0, "1m": 60.0, "1h": 3600.0}

_EPOCH_US = "(extract(epoch FROM {col}) * 1000000)::int8"
_RAW_POINTS = samples.points_sql("ids", "split_m", "end", hi_inclusive=True)
# The hour tier up to hours_end: split_h, or for the minute tier split_m too, where it stands in
# for hours whose minutes are gone (the minute tier is kept for less time than the hour tier).
_HOURS = samples.rollup_sql("1h", "ids", "start", "hours_end")
_MINUTES = samples.rollup_sql("1m", "ids", "split_h", "split_m")
# One row of four byte strings (series ids, times, values, tiers), each big-endian binary: a
# COPY sends one message per row, which psycopg reads one Python iteration at a time (39,600
# iterations and 110 ms of a 2,000-series top-N query); one row of aggregated bytes is read as
# four numpy buffers.
_FETCH = f"""
SELECT string_agg(int4send(series_id::int4), ''), string_agg(int8send(ts), ''),
       string_agg(float8send(value), ''), string_agg(int2send(tier), '')
FROM (
    SELECT series_id, {_EPOCH_US.format(col="last_ts")} AS ts, last AS value, 2::int2 AS tier
    FROM ({_HOURS}) hours
    UNION ALL
    SELECT series_id, {_EPOCH_US.format(col="last_ts")}, last, 1::int2 FROM ({_MINUTES}) minutes
    UNION ALL
    SELECT series_id, {_EPOCH_US.format(col="ts")}, value, 0::int2 FROM ({_RAW_POINTS}) raw
) fetched
"""  # noqa: S608  # constants only
_FIELDS = ("sid", "ts", "v", "tier")  # tier: 0 raw, 1 minute, 2 hour
_ROW = np.dtype(list(zip(_FIELDS, (np.int64, np.int64, np.float64, np.int16), strict=True)))
_HOUR_US = 3_600_000_000
# Raw points and minutes of compressed hours, read in the same snapshot as _FETCH.
_CHUNKS = samples.chunks_sql("ids", "split_m", "end")
_MINUTE_CHUNKS = samples.minute_chunks_sql("ids", "split_h", "split_m")


def labels_of(series: Series) -> dict[str, str]:
    return {"__name__": series.name, "agent_id": series.agent_id, **series.labels}


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


class Reader:
    """Fetches for one query: it counts what the query read against the limit."""

    def __init__(self, conn: AsyncConnection[Any], tier: str) -> None:
        self.conn = conn
        self.tier = tier
        self.fetched = 0

    async def fetch(
        self, matchers: list[Matcher], lo_us: int, hi_us: int
    ) -> tuple[list[Series], np.ndarray, np.ndarray, np.ndarray]:
        """The matching series (by id) and their samples in [lo_us, hi_us]: per sample its series'
        index in that list, its time (µs) and value, sorted by (series, time)."""
        series = await select_series(self.conn, matchers)
        series.sort(key=lambda s: s.series_id)
        if not series:
            return series, np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0)
        now = datetime.now(UTC).timestamp()
        split_h, split_m = _splits(self.tier, lo_us / 1e6, hi_us / 1e6, now)
        split_h_us, split_m_us = round(split_h * 1e6), round(split_m * 1e6)
        params = {
            "ids": [s.series_id for s in series],
            "start": _at(lo_us),
            "split_h": _at(split_h_us),
            "split_m": _at(split_m_us),
            "hours_end": _at(split_m_us if self.tier == "1m" else split_h_us),
            "end": _at(hi_us),
        }
        chunked: list[tuple[Any, ...]] = []
        minutes: list[tuple[Any, ...]] = []
        async with samples.snapshot_async(self.conn):  # hot rows and chunks in one view
            cur = await self.conn.execute(_FETCH, params, binary=True)
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
        sid, ts, value = sid[keep], ts[keep], value[keep]
        order = np.lexsort((ts, sid))
        sid, ts, value = sid[order], ts[order], value[order]
        self.fetched += len(ts)
        if self.fetched > MAX_SAMPLES_PER_QUERY:
            raise PromQLError(
                "query processing would load too many samples into memory in query execution "
                f"(more than {MAX_SAMPLES_PER_QUERY}); narrow it",
                "execution",
            )
        ids = np.array([s.series_id for s in series], dtype=np.int64)
        return series, np.searchsorted(ids, sid), ts, value


__all__ = ["MAX_SAMPLES_PER_QUERY", "TIER_SPACING_S", "Reader", "labels_of"]

"""The raw-sample layout: one ``samples`` row per series set and timestamp (schema 0009).

A row is ``(set_id, ts, vals float8[])``: ``vals[i]`` belongs to the set's i-th series
(``series_sets.series_ids``). The agent sends one collection as one ``ColumnarBatch`` (about 200
series, one timestamp), so a collection is one COPYed row and one index entry, where the layout
before paid both per point (87.6 against 9.5 bytes per point, and 380,000 against 39.7 million
points/s of COPY: ``fleetpulse bench layouts``, docs/architecture.md "Storage v2").

Closed hours leave ``samples`` for ``sample_chunks`` (schema 0011, written by ingest/worker/compress.py):
one row per set and hour, its timestamps and its (rows x width) matrix, column by column, each
compressed with pcodec. A row is in exactly one of the two tables at any time (it moves in one
transaction), so a reader reads both in one snapshot (``snapshot``): the SQL for the rows still
hot, and ``chunks_sql`` with ``chunk_points`` for the compressed ones.

This module is the layout's one home: how rows are shaped from points (writers; the binary COPY
payload is fleetpulse/copybuf.py's), the chunk codec, and the SQL that reads them back as points
(readers), which also reads ``points``, the layout before, until retention has dropped it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import psycopg
from pcodec import ChunkConfig, standalone

from fleetpulse.copybuf import ARRAY_ELEMENT, ARRAY_HEADER_BYTES

# At most this many series per set: 960 doubles (7,680 bytes) and the row's headers fit a heap
# page, so a row is never moved out of line (TOAST). A wider collection spans several sets.
MAX_SET_WIDTH = 960

COPY_SAMPLES = "COPY samples (set_id, ts, vals) FROM STDIN (FORMAT BINARY)"


@dataclass(frozen=True)
class Rows:
    """Points grouped into rows: row r holds points ``start[r]:start[r + 1]`` (one timestamp,
    distinct series, at most MAX_SET_WIDTH of them)."""

    start: np.ndarray  # int64, nrows + 1 bounds into the point arrays
    ts_unix_us: np.ndarray  # int64, one per row

    def __len__(self) -> int:
        return len(self.ts_unix_us)


def rows_of(row_ids: np.ndarray, ts_unix_us: np.ndarray) -> Rows:
    """Rows of points whose row ids are contiguous runs (the decoder's order)."""
    if not len(row_ids):
        return Rows(np.zeros(1, np.int64), np.zeros(0, np.int64))
    bounds = np.flatnonzero(row_ids[1:] != row_ids[:-1]) + 1
    start = np.concatenate(([0], bounds, [len(row_ids)])).astype(np.int64)
    return Rows(start, ts_unix_us[start[:-1]])


def row_members(series_ids: np.ndarray, rows: Rows) -> list[bytes]:
    """Each row's series ids as bytes (little-endian int32): its set's key (ingest/worker/series.py)."""
    blob = series_ids.astype("<i4", copy=False).tobytes()
    bounds = (rows.start * 4).tolist()
    return [blob[bounds[r] : bounds[r + 1]] for r in range(len(rows))]


def shape(
    group: np.ndarray, ts_unix_us: np.ndarray, series_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """For points in any order: (order, row id of each point taken in that order); rows are
    contiguous in that order and numbered from 0.

    A row holds points of one group (a batch), one timestamp and distinct series; a series' second
    point at the same timestamp goes to another row (both are kept, as the layout before kept
    both), and no row is wider than MAX_SET_WIDTH. Sorts the points: for the row form and for
    tools, not for the columnar form, which arrives shaped (ingest/worker/decode.py)."""
    n = len(ts_unix_us)
    if not n:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    order = np.lexsort((series_ids, ts_unix_us, group))
    g, ts, sid = group[order], ts_unix_us[order], series_ids[order]
    at = np.arange(n)
    new_key = np.concatenate(
        ([True], (g[1:] != g[:-1]) | (ts[1:] != ts[:-1]) | (sid[1:] != sid[:-1]))
    )
    # rank of a point among the points of its (group, timestamp, series): 0 for the first
    rank = at - np.maximum.accumulate(np.where(new_key, at, 0))
    if rank.any():
        reorder = np.lexsort((sid, rank, ts, g))
        order, g, ts, rank = order[reorder], g[reorder], ts[reorder], rank[reorder]
    new_group = np.concatenate(
        ([True], (g[1:] != g[:-1]) | (ts[1:] != ts[:-1]) | (rank[1:] != rank[:-1]))
    )
    position = at - np.maximum.accumulate(np.where(new_group, at, 0))
    new_row = new_group | (position % MAX_SET_WIDTH == 0)
    return order, np.cumsum(new_row) - 1


def decode_arrays(blobs: list[bytes]) -> np.ndarray:
    """``array_send()`` of equally wide float8 arrays (the rows of one set) as a (rows, width)
    matrix; the width is the array header's."""
    width = int.from_bytes(blobs[0][12:16], "big")  # header: ndim, has-nulls, oid, length, lbound
    body = b"".join(blob[ARRAY_HEADER_BYTES:] for blob in blobs)
    return np.frombuffer(body, dtype=ARRAY_ELEMENT)["value"].astype(np.float64).reshape(-1, width)


def _check_names(*names: str) -> None:
    for name in names:
        if not name.isidentifier():
            raise ValueError(f"not a parameter name: {name!r}")


def _wanted_sets(ids: str) -> str:
    """The sets holding the series ``%(ids)s``: per set, the wanted series and their columns."""
    return (
        "SELECT set_id, array_agg(series_id) AS sids, array_agg(col) AS cols"  # noqa: S608  # a checked parameter name
        f" FROM set_members WHERE series_id = ANY(%({ids})s) GROUP BY set_id"
    )


def _wanted_blobs(column: str) -> str:
    """A chunk's blobs (``column``, a bytea[] of one per column) of the wanted columns, in the
    order of ``w.cols`` (``_wanted_sets``)."""
    return (
        f"(SELECT array_agg({column}[u.col] ORDER BY u.o)"  # noqa: S608  # a code constant
        " FROM unnest(w.cols) WITH ORDINALITY AS u(col, o))"
    )


def points_sql(ids: str = "ids", lo: str = "lo", hi: str = "hi", hi_inclusive: bool = False) -> str:
    """``SELECT series_id, ts, value`` of the series ``%(ids)s`` with ``%(lo)s <= ts < %(hi)s``
    (``<=`` when ``hi_inclusive``), from both layouts. The arguments are parameter names (code
    constants); values are always bound.

    Each wanted series' membership (set_members) joins its set's rows in the range, and takes
    its column: one output row per (row, wanted series), no per-row function call (the top-N's
    5 minutes of 2,000 sets: 51 against 79 ms with the sets' wanted columns unnested per row)."""
    _check_names(ids, lo, hi)
    upper = "<=" if hi_inclusive else "<"
    return f"""
    SELECT series_id, ts, value FROM points
    WHERE series_id = ANY(%({ids})s) AND ts >= %({lo})s AND ts {upper} %({hi})s
    UNION ALL
    SELECT m.series_id, s.ts, s.vals[m.col]
    FROM set_members m
    JOIN samples s ON s.set_id = m.set_id
    WHERE m.series_id = ANY(%({ids})s) AND s.ts >= %({lo})s AND s.ts {upper} %({hi})s
    """  # noqa: S608  # parameter names checked above; no value is formatted in


def latest_points_sql(ids: str = "ids", lo: str = "lo", hi: str = "hi") -> str:
    """``points_sql``'s newest point of each series in ``[%(lo)s, %(hi)s]`` only, from hot rows
    and the layout before (not from chunks: the caller makes sure no chunk can hold the range).

    Every row of a set holds every member, so a set's newest row in the range is each member's
    newest point there: one backward index probe per set (samples_set_ts) instead of every row of
    the range. A series in two sets (its agent's series changed) gets one point per set; the
    newest is the caller's to take. What an instant query's selectors need: the rule evaluator's
    fleet-wide selectors read one row per agent instead of the 30 of a 5-minute lookback."""
    _check_names(ids, lo, hi)
    return f"""
    SELECT series_id, ts, value FROM (
        SELECT DISTINCT ON (series_id) series_id, ts, value FROM points
        WHERE series_id = ANY(%({ids})s) AND ts >= %({lo})s AND ts <= %({hi})s
        ORDER BY series_id, ts DESC) old
    UNION ALL
    SELECT * FROM (
        WITH m AS (SELECT series_id, set_id, col FROM set_members WHERE series_id = ANY(%({ids})s))
        SELECT m.series_id, l.ts, l.vals[m.col]
        FROM (SELECT DISTINCT set_id FROM m) w
        CROSS JOIN LATERAL (
            SELECT s.ts, s.vals FROM samples s
            WHERE s.set_id = w.set_id AND s.ts >= %({lo})s AND s.ts <= %({hi})s
            ORDER BY s.ts DESC LIMIT 1) l
        JOIN m ON m.set_id = w.set_id) hot
    """  # noqa: S608  # parameter names checked above; no value is formatted in


def points_at_sql(ids: str = "ids", times: str = "times") -> str:
    """``points_sql`` for the points at exactly the times ``%(times)s`` (a timestamptz array):
    hot rows only (chunks: ``chunks_at_sql``).

    The times are joined as a relation: with ``ts = ANY(times)`` beside the set, PostgreSQL
    chose the BRIN index on ``ts`` once per wanted series (the 7-day chart's 168 hours: 147 ms;
    joined: 2.8 ms)."""
    _check_names(ids, times)
    return f"""
    SELECT series_id, ts, value FROM points
    WHERE series_id = ANY(%({ids})s) AND ts = ANY(%({times})s)
    UNION ALL
    SELECT m.series_id, s.ts, s.vals[m.col]
    FROM (SELECT DISTINCT set_id FROM set_members WHERE series_id = ANY(%({ids})s)) w
    CROSS JOIN unnest(%({times})s::timestamptz[]) AS t(ts)
    JOIN samples s ON s.set_id = w.set_id AND s.ts = t.ts
    JOIN set_members m ON m.set_id = s.set_id AND m.series_id = ANY(%({ids})s)
    """  # noqa: S608  # parameter names checked above; no value is formatted in


ROLLUP_TABLES = {"1m": ("rollup_1m", "set_rollup_1m"), "1h": ("rollup_1h", "set_rollup_1h")}


def rollup_sql(tier: str, ids: str = "ids", lo: str = "lo", hi: str = "hi") -> str:
    """``SELECT series_id, bucket, count, sum, min, max, last, last_ts`` of tier ``1m`` or ``1h``
    for the series ``%(ids)s`` with ``%(lo)s <= bucket < %(hi)s``, from both layouts: the set rows
    (schema 0010) expanded to the wanted columns, and the per-series rows of the layout before.

    A series may have several rows in one bucket (one per set it was in): readers aggregate per
    series and window, as they do raw points."""
    _check_names(ids, lo, hi)
    per_series, per_set = ROLLUP_TABLES[tier]
    return f"""
    SELECT series_id, bucket, count, sum, min, max, last, last_ts FROM {per_series}
    WHERE series_id = ANY(%({ids})s) AND bucket >= %({lo})s AND bucket < %({hi})s
    UNION ALL
    SELECT u.series_id, r.bucket, r.count, r.sum[u.col], r.min[u.col], r.max[u.col],
           r.last[u.col], r.last_ts
    FROM ({_wanted_sets(ids)}) w
    JOIN {per_set} r ON r.set_id = w.set_id
    CROSS JOIN LATERAL unnest(w.sids, w.cols) AS u(series_id, col)
    WHERE r.bucket >= %({lo})s AND r.bucket < %({hi})s
    """  # noqa: S608  # table and parameter names are code constants; no value is formatted in


# -- compressed hours (schema 0011) ------------------------------------------------------------

# pcodec, one call per column (series): on this host's agent data 0.74 bytes per value against
# 1.30 for one call over the whole matrix (series of unlike scales, half of them constant:
# docs/architecture.md "Storage v2"); on the simulator's random walks 6.35 against 6.24. Level 4:
# the ratio of the default level 8 at half its encoding time (204 against 422 ns per value on
# 360-value integer columns; a call costs 6.6 µs). One blob per column also lets a reader decode
# only the series it wants.
_CODEC = ChunkConfig(compression_level=4)


def encode_chunk(ts_unix_us: np.ndarray, values: np.ndarray) -> tuple[bytes, list[bytes]]:
    """A set's rows, in time order, as (timestamps, one blob per column): ``values`` is
    (rows x width)."""
    columns = np.ascontiguousarray(values.T, dtype=np.float64)
    return (
        standalone.simple_compress(np.ascontiguousarray(ts_unix_us, dtype=np.int64), _CODEC),
        [standalone.simple_compress(column, _CODEC) for column in columns],
    )


def decode_int64(n: int, blob: bytes) -> np.ndarray:
    """An int64 blob of ``n`` values (a chunk's timestamps, a minute chunk's buckets, counts or
    latest times)."""
    ints: np.ndarray = standalone.simple_decompress(blob)
    if len(ints) != n:
        raise ValueError(f"a chunk says {n} rows and holds {len(ints)} values")
    return ints


def decode_timestamps(rows: int, ts_blob: bytes) -> np.ndarray:
    """A chunk's timestamps (µs)."""
    return decode_int64(rows, ts_blob)


def decode_columns(rows: int, blobs: list[bytes]) -> np.ndarray:
    """Columns of a chunk as a (rows x len(blobs)) matrix."""
    out = np.empty((len(blobs), rows), dtype=np.float64)
    for i, blob in enumerate(blobs):
        out[i] = standalone.simple_decompress(blob)
    return out.T


def decode_chunk(
    rows: int, width: int, ts_blob: bytes, vals: list[bytes]
) -> tuple[np.ndarray, np.ndarray]:
    """``encode_chunk`` undone: (timestamps in µs, (rows x width) values)."""
    if len(vals) != width:
        raise ValueError(f"a chunk says {width} columns and holds {len(vals)}")
    return decode_timestamps(rows, ts_blob), decode_columns(rows, vals)


def chunks_sql(ids: str = "ids", lo: str = "lo", hi: str = "hi") -> str:
    """``SELECT sids, rows, ts, vals``: the chunks of the sets holding the series ``%(ids)s`` that
    may hold points in [``%(lo)s``, ``%(hi)s``], with the wanted series and their columns' blobs
    (only those, in the same order); ``chunk_points`` expands them."""
    _check_names(ids, lo, hi)
    return f"""
    SELECT w.sids, c.rows, c.ts,
           {_wanted_blobs("c.vals")}
    FROM ({_wanted_sets(ids)}) w
    JOIN sample_chunks c ON c.set_id = w.set_id
    WHERE c.hour > %({lo})s - interval '1 hour' AND c.hour <= %({hi})s
        AND c.last_ts >= %({lo})s AND c.first_ts <= %({hi})s
    """  # noqa: S608  # parameter names checked above; no value is formatted in


def chunks_at_sql(ids: str = "ids", hours: str = "hours") -> str:
    """``chunks_sql`` for the chunks of the hours ``%(hours)s`` (a timestamptz array)."""
    _check_names(ids, hours)
    return f"""
    SELECT w.sids, c.rows, c.ts,
           {_wanted_blobs("c.vals")}
    FROM ({_wanted_sets(ids)}) w
    JOIN sample_chunks c ON c.set_id = w.set_id
    WHERE c.hour = ANY(%({hours})s)
    """  # noqa: S608  # parameter names checked above; no value is formatted in


@dataclass(frozen=True)
class Points:
    """Points as arrays, in no particular order."""

    series_id: np.ndarray  # int64
    ts_unix_us: np.ndarray  # int64
    value: np.ndarray  # float64

    def __len__(self) -> int:
        return len(self.ts_unix_us)


def chunk_points(
    rows: list[tuple[Any, ...]],
    lo_us: int,
    hi_us: int,
    hi_inclusive: bool = False,
    at_us: np.ndarray | None = None,
) -> Points:
    """The wanted series' points in [lo, hi) (``]`` when ``hi_inclusive``) of ``chunks_sql`` rows,
    and only those at the times ``at_us`` when given: one decode per wanted column of a chunk
    with points kept (its timestamps decide), one slice per chunk; no work per point in Python."""
    sids, stamps, values = [], [], []
    for wanted_ids, n, ts_blob, blobs in rows:
        ts = decode_timestamps(n, ts_blob)
        keep = (ts >= lo_us) & ((ts <= hi_us) if hi_inclusive else (ts < hi_us))
        if at_us is not None:
            keep &= np.isin(ts, at_us)
        if not keep.any():
            continue
        at = ts[keep]
        picked = decode_columns(n, blobs)[keep]  # (points, wanted)
        sids.append(np.repeat(np.asarray(wanted_ids, dtype=np.int64), len(at)))
        stamps.append(np.tile(at, len(wanted_ids)))
        values.append(picked.T.ravel())
    if not sids:
        empty = np.zeros(0, np.int64)
        return Points(empty, empty, np.zeros(0, np.float64))
    return Points(np.concatenate(sids), np.concatenate(stamps), np.concatenate(values))


# -- compressed minutes (schema 0012) ----------------------------------------------------------


@dataclass(frozen=True)
class Minutes:
    """Minute-tier rows (one per set or series and minute), as arrays: ``count`` and ``last_ts``
    per row, and per row and column the sum, min, max and last value ((rows x columns) each)."""

    bucket_us: np.ndarray  # int64
    count: np.ndarray  # int64
    last_ts_us: np.ndarray  # int64
    sum: np.ndarray
    min: np.ndarray
    max: np.ndarray
    last: np.ndarray

    def __len__(self) -> int:
        return len(self.bucket_us)

    def take(self, index: np.ndarray) -> Minutes:
        """These rows (a boolean mask or indices)."""
        return Minutes(*(getattr(self, f.name)[index] for f in fields(self)))

    @staticmethod
    def concat(parts: list[Minutes]) -> Minutes:
        """Rows of several, in order (an empty list: no rows of one column)."""
        if not parts:
            no_ints, no_values = np.zeros(0, np.int64), np.zeros((0, 1), np.float64)
            return Minutes(no_ints, no_ints, no_ints, no_values, no_values, no_values, no_values)
        return Minutes(
            *(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(Minutes))
        )


def encode_minutes(m: Minutes) -> tuple[bytes, bytes, bytes, list[bytes], list[bytes]]:
    """A set's minute rows, in time order, as (buckets, counts, latest times, one sum blob per
    column, one min|max|last blob per column): the three statistics of one scale share a blob."""
    ints = [
        standalone.simple_compress(np.ascontiguousarray(a, dtype=np.int64), _CODEC)
        for a in (m.bucket_us, m.count, m.last_ts_us)
    ]
    sums = np.ascontiguousarray(m.sum.T, dtype=np.float64)
    extremes = np.ascontiguousarray(np.concatenate([m.min, m.max, m.last]).T, dtype=np.float64)
    return (
        ints[0],
        ints[1],
        ints[2],
        [standalone.simple_compress(column, _CODEC) for column in sums],
        [standalone.simple_compress(column, _CODEC) for column in extremes],
    )


def decode_minutes(
    minutes: int,
    buckets: bytes,
    counts: bytes,
    last_ts: bytes,
    sums: list[bytes],
    extremes: list[bytes],
) -> Minutes:
    """``encode_minutes`` undone, for the columns whose blobs are given (all, or the wanted)."""
    if len(sums) != len(extremes):
        raise ValueError(f"a minute chunk with {len(sums)} sums and {len(extremes)} extremes")
    ints = [decode_int64(minutes, blob) for blob in (buckets, counts, last_ts)]
    total = decode_columns(minutes, sums)
    low_high_last = decode_columns(3 * minutes, extremes)
    return Minutes(
        ints[0],
        ints[1],
        ints[2],
        total,
        low_high_last[:minutes],
        low_high_last[minutes : 2 * minutes],
        low_high_last[2 * minutes :],
    )


def minute_rows(rows: list[tuple[Any, ...]]) -> Minutes:
    """set_rollup_1m rows ``(set_id, bucket µs, count, last_ts µs, sum, min, max, last)`` of one
    set (the arrays as array_send() gives them) as ``Minutes``."""
    return Minutes(
        np.asarray([r[1] for r in rows], dtype=np.int64),
        np.asarray([r[2] for r in rows], dtype=np.int64),
        np.asarray([r[3] for r in rows], dtype=np.int64),
        *(decode_arrays([r[4 + k] for r in rows]) for k in range(4)),
    )


def minute_chunks_sql(ids: str = "ids", lo: str = "lo", hi: str = "hi") -> str:
    """``SELECT sids, minutes, buckets, counts, last_ts, sum, min_max_last``: the minute chunks of
    the sets holding the series ``%(ids)s`` whose hour overlaps [``%(lo)s``, ``%(hi)s``), with
    the wanted series and only their columns' blobs; ``chunk_minutes`` expands them."""
    _check_names(ids, lo, hi)
    return f"""
    SELECT w.sids, c.minutes, c.buckets, c.counts, c.last_ts,
           {_wanted_blobs("c.sum")}, {_wanted_blobs("c.min_max_last")}
    FROM ({_wanted_sets(ids)}) w
    JOIN minute_chunks c ON c.set_id = w.set_id
    WHERE c.hour > %({lo})s - interval '1 hour' AND c.hour < %({hi})s
    """  # noqa: S608  # parameter names checked above; no value is formatted in


@dataclass(frozen=True)
class SeriesMinutes:
    """Minute-tier rows per series, as arrays (the shape ``rollup_sql`` reads)."""

    series_id: np.ndarray  # int64
    minutes: Minutes  # one column each


def chunk_minutes(rows: list[tuple[Any, ...]], lo_us: int, hi_us: int) -> SeriesMinutes:
    """The wanted series' minutes with ``lo <= bucket < hi`` of ``minute_chunks_sql`` rows: one
    decode per wanted column of a chunk; no work per minute in Python."""
    parts: list[tuple[np.ndarray, Minutes]] = []
    for wanted_ids, n, *blobs in rows:
        m = decode_minutes(n, *blobs)
        keep = (m.bucket_us >= lo_us) & (m.bucket_us < hi_us)
        if not keep.any():
            continue
        k = len(wanted_ids)
        rep = int(keep.sum())
        parts.append(
            (
                np.repeat(np.asarray(wanted_ids, dtype=np.int64), rep),
                Minutes(
                    np.tile(m.bucket_us[keep], k),
                    np.tile(m.count[keep], k),
                    np.tile(m.last_ts_us[keep], k),
                    *(a[keep].T.reshape(-1, 1) for a in (m.sum, m.min, m.max, m.last)),
                ),
            )
        )
    return SeriesMinutes(
        np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64),
        Minutes.concat([p[1] for p in parts]),
    )


# Hot rows and chunks are read by two statements; a compression committing between them would
# show a row twice or not at all. One REPEATABLE READ transaction gives both statements one view.
_SNAPSHOT = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"


@contextmanager
def snapshot(conn: psycopg.Connection) -> Iterator[None]:
    """A read-only transaction in which every statement sees the same committed data."""
    with conn.transaction():
        conn.execute(_SNAPSHOT)
        yield


@asynccontextmanager
async def snapshot_async(conn: psycopg.AsyncConnection[Any]) -> AsyncIterator[None]:
    """``snapshot`` for an async connection."""
    async with conn.transaction():
        await conn.execute(_SNAPSHOT)
        yield


_EPOCH_US = "(extract(epoch FROM ts) * 1000000)::int8"


def read_points(conn: psycopg.Connection, ids: list[int], lo: datetime, hi: datetime) -> Points:
    """Every stored point of the series ``ids`` in [lo, hi), of both layouts and both forms (hot
    rows and chunks), in one snapshot: for tools, tests and checks, not the API's hot paths.
    Needs a connection outside a transaction (autocommit, or idle)."""
    params = {"ids": ids, "lo": lo, "hi": hi}
    with snapshot(conn), conn.cursor(binary=True) as cur:
        hot = cur.execute(
            f"SELECT series_id, {_EPOCH_US}, value FROM ({points_sql()}) p",  # noqa: S608
            params,
        ).fetchall()
        chunked = cur.execute(chunks_sql(), params).fetchall()
    lo_us, hi_us = unix_us(lo), unix_us(hi)
    packed = chunk_points(chunked, lo_us, hi_us)
    return Points(
        np.concatenate([np.asarray([r[0] for r in hot], np.int64), packed.series_id]),
        np.concatenate([np.asarray([r[1] for r in hot], np.int64), packed.ts_unix_us]),
        np.concatenate([np.asarray([r[2] for r in hot], np.float64), packed.value]),
    )


def read_minutes(
    conn: psycopg.Connection, ids: list[int], lo: datetime, hi: datetime
) -> SeriesMinutes:
    """Every stored minute-tier row of the series ``ids`` with lo <= bucket < hi, of both layouts
    and both forms (hot rows and minute chunks), in one snapshot, unaggregated (a series in two
    sets has a row from each): for tools, tests and checks. Needs a connection outside a
    transaction."""
    params = {"ids": ids, "lo": lo, "hi": hi}
    with snapshot(conn), conn.cursor(binary=True) as cur:
        hot = cur.execute(
            "SELECT series_id, (extract(epoch FROM bucket) * 1000000)::int8, count::int8,"  # noqa: S608  # constants only
            " (extract(epoch FROM last_ts) * 1000000)::int8, sum, min, max, last"
            f" FROM ({rollup_sql('1m')}) r",
            params,
        ).fetchall()
        chunked = cur.execute(minute_chunks_sql(), params).fetchall()
    packed = chunk_minutes(chunked, unix_us(lo), unix_us(hi))

    def column(i: int, dtype: type) -> np.ndarray:
        return np.asarray([r[i] for r in hot], dtype=dtype)

    hot_minutes = Minutes(
        column(1, np.int64),
        column(2, np.int64),
        column(3, np.int64),
        *(column(i, np.float64).reshape(-1, 1) for i in (4, 5, 6, 7)),
    )
    return SeriesMinutes(
        np.concatenate([column(0, np.int64), packed.series_id]),
        Minutes.concat([hot_minutes, packed.minutes]),
    )


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def unix_us(at: datetime) -> int:
    """A timestamp as microseconds since the epoch, exactly (no float on the way)."""
    delta = at - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def at_us(ts_unix_us: int) -> datetime:
    """``unix_us`` undone."""
    return _EPOCH + timedelta(microseconds=ts_unix_us)

"""PostgreSQL binary COPY buffers built with numpy: one vectorised pass, no Python loop per row.

Binary COPY format: an 11-byte signature, a 4-byte flags field, a 4-byte header-extension length,
then per row a 2-byte field count and, per field, a 4-byte length and the value in network byte
order; a 2-byte -1 ends the data. For ``points`` (int4, timestamptz, float8) and the rollup tiers
every row has the same layout, so the whole body is one numpy structured array written with
``tobytes()``. A ``samples`` row (fleetpulse/samples.py) has one array of its own width: its
header and its values are built for all rows at once and joined with one pair of slices per row.
"""

from __future__ import annotations

import numpy as np

SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
TRAILER = (-1).to_bytes(2, "big", signed=True)
# timestamptz is microseconds since 2000-01-01 00:00:00 UTC.
PG_EPOCH_OFFSET_US = 946_684_800_000_000

POINT_ROW = np.dtype(
    [
        ("fields", ">i2"),
        ("series_id_len", ">i4"),
        ("series_id", ">i4"),
        ("ts_len", ">i4"),
        ("ts", ">i8"),
        ("value_len", ">i4"),
        ("value", ">f8"),
    ]
)
assert POINT_ROW.itemsize == 34


def points_copy_buffer(series_ids: np.ndarray, ts_unix_us: np.ndarray, values: np.ndarray) -> bytes:
    """The complete binary COPY payload for ``COPY points (series_id, ts, value)``."""
    rows = np.empty(len(series_ids), dtype=POINT_ROW)
    rows["fields"] = 3
    rows["series_id_len"] = 4
    rows["series_id"] = series_ids
    rows["ts_len"] = 8
    rows["ts"] = ts_unix_us - PG_EPOCH_OFFSET_US
    rows["value_len"] = 8
    rows["value"] = values
    return b"".join((SIGNATURE, rows.tobytes(), TRAILER))


_ROLLUP_ROW = np.dtype(
    [
        ("fields", ">i2"),
        ("series_id_len", ">i4"),
        ("series_id", ">i4"),
        ("bucket_len", ">i4"),
        ("bucket", ">i8"),
        ("count_len", ">i4"),
        ("count", ">i4"),
        ("sum_len", ">i4"),
        ("sum", ">f8"),
        ("min_len", ">i4"),
        ("min", ">f8"),
        ("max_len", ">i4"),
        ("max", ">f8"),
        ("last_len", ">i4"),
        ("last", ">f8"),
        ("last_ts_len", ">i4"),
        ("last_ts", ">i8"),
    ]
)


def rollup_buffer(
    series_ids: np.ndarray,
    bucket_s: np.ndarray,
    count: np.ndarray,
    total: np.ndarray,
    low: np.ndarray,
    high: np.ndarray,
    last: np.ndarray,
    last_ts_us: np.ndarray,
) -> bytes:
    """The binary COPY payload for ``COPY rollup_1m|rollup_1h (...)``; all arrays one per row."""
    rows = np.empty(len(series_ids), dtype=_ROLLUP_ROW)
    rows["fields"] = 8
    for field, size in (
        ("series_id", 4),
        ("bucket", 8),
        ("count", 4),
        ("sum", 8),
        ("min", 8),
        ("max", 8),
        ("last", 8),
        ("last_ts", 8),
    ):
        rows[f"{field}_len"] = size
    rows["series_id"] = series_ids
    rows["bucket"] = bucket_s.astype(np.int64) * 1_000_000 - PG_EPOCH_OFFSET_US
    rows["count"] = count
    rows["sum"] = total
    rows["min"] = low
    rows["max"] = high
    rows["last"] = last
    rows["last_ts"] = last_ts_us - PG_EPOCH_OFFSET_US
    return b"".join((SIGNATURE, rows.tobytes(), TRAILER))


# A samples row: three fields, the last a one-dimensional float8 array without nulls (its header:
# dimensions, has-nulls flag, element type oid, length, lower bound), then per element its length
# and value.
_SAMPLES_ROW_HEADER = np.dtype(
    [
        ("fields", ">i2"),
        ("set_id_len", ">i4"),
        ("set_id", ">i4"),
        ("ts_len", ">i4"),
        ("ts", ">i8"),
        ("vals_len", ">i4"),
        ("ndim", ">i4"),
        ("has_null", ">i4"),
        ("elem_oid", ">i4"),
        ("dim", ">i4"),
        ("lbound", ">i4"),
    ]
)
ARRAY_ELEMENT = np.dtype([("len", ">i4"), ("value", ">f8")])
# The array's own header (ndim .. lbound), as array_send() returns it too.
ARRAY_HEADER_BYTES = 20
_FLOAT8_OID = 701


def samples_copy_buffer(
    set_ids: np.ndarray, row_start: np.ndarray, row_ts_unix_us: np.ndarray, values: np.ndarray
) -> bytes:
    """The binary COPY payload for ``COPY samples (set_id, ts, vals)``: row r is set
    ``set_ids[r]`` at ``row_ts_unix_us[r]`` with ``values[row_start[r]:row_start[r + 1]]``."""
    nrows = len(set_ids)
    widths = np.diff(row_start)
    headers = np.empty(nrows, dtype=_SAMPLES_ROW_HEADER)
    headers["fields"] = 3
    headers["set_id_len"] = 4
    headers["set_id"] = set_ids
    headers["ts_len"] = 8
    headers["ts"] = row_ts_unix_us - PG_EPOCH_OFFSET_US
    headers["vals_len"] = ARRAY_HEADER_BYTES + widths * ARRAY_ELEMENT.itemsize
    headers["ndim"] = 1
    headers["has_null"] = 0
    headers["elem_oid"] = _FLOAT8_OID
    headers["dim"] = widths
    headers["lbound"] = 1
    first = int(row_start[0])
    elements = np.empty(int(row_start[-1]) - first, dtype=ARRAY_ELEMENT)
    elements["len"] = 8
    elements["value"] = values[first : int(row_start[-1])]
    head, body = headers.tobytes(), elements.tobytes()
    size = _SAMPLES_ROW_HEADER.itemsize
    bounds = ((row_start - first) * ARRAY_ELEMENT.itemsize).tolist()
    parts = [SIGNATURE]
    for r in range(nrows):  # two slices per row (a collection of ~200 points), none per point
        parts.append(head[r * size : (r + 1) * size])
        parts.append(body[bounds[r] : bounds[r + 1]])
    parts.append(TRAILER)
    return b"".join(parts)


def _array_fields(matrix: np.ndarray) -> np.ndarray:
    """Each row of ``matrix`` (rows, width) as a float8[] field: length, array header, elements;
    one (rows, bytes) uint8 block."""
    rows, width = matrix.shape
    header = np.empty(rows, dtype=_ARRAY_FIELD_HEADER)
    header["len"] = ARRAY_HEADER_BYTES + width * ARRAY_ELEMENT.itemsize
    header["ndim"] = 1
    header["has_null"] = 0
    header["elem_oid"] = _FLOAT8_OID
    header["dim"] = width
    header["lbound"] = 1
    elements = np.empty((rows, width), dtype=ARRAY_ELEMENT)
    elements["len"] = 8
    elements["value"] = matrix
    return np.hstack(
        (
            header.view(np.uint8).reshape(rows, _ARRAY_FIELD_HEADER.itemsize),
            elements.view(np.uint8).reshape(rows, width * ARRAY_ELEMENT.itemsize),
        )
    )


_ARRAY_FIELD_HEADER = np.dtype(
    [
        ("len", ">i4"),
        ("ndim", ">i4"),
        ("has_null", ">i4"),
        ("elem_oid", ">i4"),
        ("dim", ">i4"),
        ("lbound", ">i4"),
    ]
)
_SET_ROLLUP_HEAD = np.dtype(
    [
        ("fields", ">i2"),
        ("set_id_len", ">i4"),
        ("set_id", ">i4"),
        ("bucket_len", ">i4"),
        ("bucket", ">i8"),
        ("count_len", ">i4"),
        ("count", ">i4"),
        ("last_ts_len", ">i4"),
        ("last_ts", ">i8"),
    ]
)


def set_rollup_buffer(
    set_ids: np.ndarray,
    bucket_us: np.ndarray,
    count: np.ndarray,
    last_ts_us: np.ndarray,
    arrays: list[list[np.ndarray]],
) -> bytes:
    """The binary COPY payload for ``COPY set_rollup_1m|set_rollup_1h (set_id, bucket, count,
    last_ts, sum, min, max, last)``: row r's four arrays are ``arrays[r]`` (each as wide as its
    set). Rows of equal width are built together; one join per row."""
    nrows = len(set_ids)
    head = np.empty(nrows, dtype=_SET_ROLLUP_HEAD)
    head["fields"] = 8
    head["set_id_len"] = 4
    head["set_id"] = set_ids
    head["bucket_len"] = 8
    head["bucket"] = bucket_us - PG_EPOCH_OFFSET_US
    head["count_len"] = 4
    head["count"] = count
    head["last_ts_len"] = 8
    head["last_ts"] = last_ts_us - PG_EPOCH_OFFSET_US
    heads = head.view(np.uint8).reshape(nrows, _SET_ROLLUP_HEAD.itemsize)
    bodies: list[bytes] = [b""] * nrows
    by_width: dict[int, list[int]] = {}
    for r, row in enumerate(arrays):
        by_width.setdefault(len(row[0]), []).append(r)
    for indexes in by_width.values():
        block = np.hstack(
            [heads[indexes]]
            + [_array_fields(np.stack([arrays[r][a] for r in indexes])) for a in range(4)]
        )
        for r, row_bytes in zip(indexes, block, strict=True):
            bodies[r] = row_bytes.tobytes()
    return b"".join((SIGNATURE, *bodies, TRAILER))


def copy_row(*fields: bytes) -> bytes:
    """One row of a binary COPY body: the field count, then each field (already in its binary
    send format) after its length. Python work per row and field, for rows built one at a time
    off the hot path (``bench layouts``' chunk rows); the writers above build theirs in numpy."""
    return len(fields).to_bytes(2, "big") + b"".join(
        len(field).to_bytes(4, "big") + field for field in fields
    )

"""PostgreSQL binary COPY buffers built with numpy: one vectorised pass, no Python loop per row.

Binary COPY format: an 11-byte signature, a 4-byte flags field, a 4-byte header-extension length,
then per row a 2-byte field count and, per field, a 4-byte length and the value in network byte
order; a 2-byte -1 ends the data. For ``points`` (int4, timestamptz, float8) every row has the
same 34-byte layout, so the whole body is one numpy structured array written with ``tobytes()``.
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

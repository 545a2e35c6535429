"""``fleetpulse bench layouts``: storage layouts for points, measured against each other on real
agent data before one is chosen (issue 15, docs/architecture.md "Storage").

The data is this host's own: the agent's collectors (agent/collectors/), or with ``--source
node_exporter`` Debian's prometheus-node-exporter scraped as Prometheus does, run ``--collections``
times, ``--interval`` seconds apart, and every series they return becomes a column of a
(collections x series) matrix, as one agent's ColumnarBatches would carry it. ``--agents`` copies
of it (each its own series set) stand for a fleet. Each layout is written into one PostgreSQL
database with binary COPY, its payload built with numpy, then VACUUMed and measured:

- ``rows``: today's layout, one row per point ``(series_id int4, ts timestamptz, value float8)``,
  btree on ``(series_id, ts)``.
- ``batch_rows``: one row per collection ``(set_id int4, ts timestamptz, vals bytea)``, the
  values as little-endian doubles in series-set order, btree on ``(set_id, ts)``: what a worker can
  COPY as it receives the batches.
- ``chunks_<codec>``: one row per series set and ``--chunk-collections`` collections
  ``(set_id int4, start timestamptz, n int4, ts bytea, vals bytea)``: the timestamp column and each
  series' values compressed, one series after another. What a compactor can make of closed periods.
  Codecs: ``pcodec`` (pco, a numeric codec: delta and float-mode detection), exactly as
  ``sample_chunks`` stores it (fleetpulse/samples.py ``encode_chunk``: level 4, one blob per
  series), and ``zstd`` (level 3 over the raw little-endian doubles, series-major, and the
  timestamps' deltas).

Figures: bytes on disk per point (heap, TOAST and indexes after VACUUM), COPY points/s (one
connection, wall time of the COPY and its COMMIT), and each codec's encode and decode time per
value, in-process. Results: ``bench/results/<timestamp>-layouts/result.json``; the summary is the
last line on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from psycopg import sql
from psycopg.conninfo import make_conninfo

from fleetpulse import samples as chunk_codec
from fleetpulse.bench import report
from fleetpulse.connections import pg_connect
from fleetpulse.copybuf import (
    PG_EPOCH_OFFSET_US,
    SIGNATURE,
    TRAILER,
    copy_row,
    points_copy_buffer,
)
from fleetpulse.embedded import EmbeddedPostgres

DB_NAME = "fleetpulse_bench_layouts"
CODECS = ("pcodec", "zstd")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--collections", type=int, default=240, help="collections (default 240)")
    parser.add_argument(
        "--interval", type=float, default=1.0, help="seconds between collections (default 1)"
    )
    parser.add_argument(
        "--agents", type=int, default=200, help="copies of the host's data (default 200)"
    )
    parser.add_argument(
        "--chunk-collections",
        type=int,
        default=240,
        help="collections per compressed chunk (default 240)",
    )
    parser.add_argument(
        "--source",
        choices=["agent", "node_exporter"],
        default="agent",
        help="whose samples: the agent's collectors (default) or node_exporter's scrapes",
    )
    parser.add_argument(
        "--samples",
        type=Path,
        help="reuse samples saved by an earlier run (samples.npz) instead of collecting",
    )
    parser.add_argument("--database-url", help="PostgreSQL to use (default: an embedded one)")
    parser.add_argument("--data-dir", type=Path, help="embedded PostgreSQL's data dir (temporary)")
    parser.add_argument("--results-dir", type=Path, default=Path("bench/results"))


@dataclass
class Samples:
    """One agent's collections: ``values[t, s]`` is series ``s`` at ``ts_us[t]`` (NaN: absent)."""

    names: list[str]
    ts_us: np.ndarray
    values: np.ndarray


def collect_samples(collections: int, interval_s: float) -> Samples:
    """The agent's collectors, run ``collections`` times: every series seen becomes a column."""
    from fleetpulse.agent.collectors.scheduler import Scheduler

    scheduler = Scheduler()
    every_time: dict[str, float] = {}  # every collector on every collection, the slow ones too
    scheduler.collect(None, every_time)  # rates are measured between two calls
    columns: dict[str, int] = {}
    rows: list[dict[int, float]] = []
    stamps: list[int] = []
    next_at = time.monotonic()
    for _ in range(collections):
        next_at += interval_s
        time.sleep(max(0.0, next_at - time.monotonic()))
        samples, _errors = scheduler.collect(None, every_time)
        stamps.append(time.time_ns() // 1000)
        row = {}
        for name, value, labels in samples:
            key = name + json.dumps(labels, sort_keys=True)
            row[columns.setdefault(key, len(columns))] = value
        rows.append(row)
    return _matrix(columns, rows, stamps)


def scrape_samples(collections: int, interval_s: float) -> Samples:
    """node_exporter scraped ``collections`` times: every series seen becomes a column."""
    from fleetpulse.bench.nodeexporter import NodeExporter

    exporter = NodeExporter()
    columns: dict[str, int] = {}
    rows: list[dict[int, float]] = []
    stamps: list[int] = []
    try:
        next_at = time.monotonic()
        for _ in range(collections):
            next_at += interval_s
            time.sleep(max(0.0, next_at - time.monotonic()))
            body = exporter.scrape()
            stamps.append(time.time_ns() // 1000)
            rows.append(
                {columns.setdefault(key, len(columns)): v for key, v in exposition(body).items()}
            )
    finally:
        exporter.stop()
    return _matrix(columns, rows, stamps)


def exposition(body: str) -> dict[str, float]:
    """The samples of a Prometheus text exposition, by series key (name and sorted labels)."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        sample.name + json.dumps(sample.labels, sort_keys=True): float(sample.value)
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def _matrix(columns: dict[str, int], rows: list[dict[int, float]], stamps: list[int]) -> Samples:
    values = np.full((len(rows), len(columns)), np.nan)
    for t, row in enumerate(rows):
        values[t, list(row)] = list(row.values())
    return Samples(list(columns), np.array(stamps, dtype=np.int64), values)


def _series_complete(samples: Samples) -> Samples:
    """Only the series present in every collection: a fixed series set, as a batch carries."""
    keep = ~np.isnan(samples.values).any(axis=0)
    return Samples(
        [n for n, k in zip(samples.names, keep, strict=True) if k],
        samples.ts_us,
        samples.values[:, keep],
    )


# -- codecs ----------------------------------------------------------------------------------


def encode(codec: str, ts_us: np.ndarray, values: np.ndarray) -> tuple[bytes, bytes]:
    """The timestamp column and the values (series-major), compressed."""
    if codec == "pcodec":  # the codec of compressed hours as built (fleetpulse/samples.py)
        ts, blobs = chunk_codec.encode_chunk(ts_us, values)
        return ts, b"".join(_framed(blob) for blob in blobs)
    columns = np.ascontiguousarray(values.T)
    import zstandard

    compressor = zstandard.ZstdCompressor(level=3)
    deltas = np.diff(ts_us, prepend=0)  # the first delta is the first timestamp
    return compressor.compress(deltas.astype("<i8").tobytes()), compressor.compress(
        columns.astype("<f8").tobytes()
    )


def decode(codec: str, ts: bytes, vals: bytes, series: int) -> tuple[np.ndarray, np.ndarray]:
    if codec == "pcodec":
        from pcodec import standalone

        stamps = standalone.simple_decompress(ts)
        return chunk_codec.decode_chunk(len(stamps), series, ts, _frames(vals))
    import zstandard

    decompressor = zstandard.ZstdDecompressor()
    stamps = np.cumsum(np.frombuffer(decompressor.decompress(ts), dtype="<i8"))
    flat = np.frombuffer(decompressor.decompress(vals), dtype="<f8")
    return stamps, flat.reshape(series, -1).T


def _framed(data: bytes) -> bytes:
    return len(data).to_bytes(4, "little") + data


def _frames(data: bytes) -> list[bytes]:
    frames, offset = [], 0
    while offset < len(data):
        length = int.from_bytes(data[offset : offset + 4], "little")
        frames.append(data[offset + 4 : offset + 4 + length])
        offset += 4 + length
    return frames


def codec_figures(samples: Samples, chunk: int) -> dict[str, dict[str, float]]:
    """Bytes per value and encode/decode nanoseconds per value of each codec, in-process."""
    figures = {}
    values = samples.values
    for codec in CODECS:
        encoded = decoded = size = 0.0
        count = 0
        for start in range(0, len(values), chunk):
            block, stamps = values[start : start + chunk], samples.ts_us[start : start + chunk]
            began = time.perf_counter()
            ts, vals = encode(codec, stamps, block)
            encoded += time.perf_counter() - began
            began = time.perf_counter()
            got_ts, got = decode(codec, ts, vals, block.shape[1])
            decoded += time.perf_counter() - began
            assert np.array_equal(got_ts, stamps)
            assert np.array_equal(got.view(np.uint64), block.view(np.uint64)), codec  # lossless
            size += len(ts) + len(vals)
            count += block.size
        figures[codec] = {
            "bytes_per_value": round(size / count, 3),
            "encode_ns_per_value": round(encoded / count * 1e9, 1),
            "decode_ns_per_value": round(decoded / count * 1e9, 1),
        }
    return figures


# -- layouts in PostgreSQL -------------------------------------------------------------------


def _rows_payload(samples: Samples, agents: int) -> tuple[bytes, int]:
    """Today's layout, built as the worker builds it (fleetpulse/copybuf.py)."""
    t, s = samples.values.shape
    series = np.arange(agents * s, dtype=np.int32).reshape(agents, 1, s)
    ids = np.broadcast_to(series, (agents, t, s)).ravel()
    stamps = np.broadcast_to(samples.ts_us.reshape(1, t, 1), (agents, t, s)).ravel()
    values = np.broadcast_to(samples.values, (agents, t, s)).ravel()
    return points_copy_buffer(ids, stamps, values), ids.size


def _batch_rows_payload(samples: Samples, agents: int) -> tuple[bytes, int]:
    t, s = samples.values.shape
    dtype = np.dtype(
        [
            ("fields", ">i2"),
            ("id_len", ">i4"),
            ("id", ">i4"),
            ("ts_len", ">i4"),
            ("ts", ">i8"),
            ("vals_len", ">i4"),
            ("vals", "<f8", (s,)),
        ]
    )
    rows = np.empty(agents * t, dtype=dtype)
    rows["fields"], rows["id_len"], rows["ts_len"], rows["vals_len"] = 3, 4, 8, 8 * s
    rows["id"] = np.repeat(np.arange(agents, dtype=np.int32), t)
    rows["ts"] = np.tile(samples.ts_us - PG_EPOCH_OFFSET_US, agents)
    rows["vals"] = np.tile(samples.values, (agents, 1))
    return SIGNATURE + rows.tobytes() + TRAILER, agents * t * s


def _chunks_payload(codec: str, samples: Samples, agents: int, chunk: int) -> tuple[bytes, int]:
    parts = [SIGNATURE]
    t, s = samples.values.shape
    encoded = []
    for start in range(0, t, chunk):
        stamps = samples.ts_us[start : start + chunk]
        ts, vals = encode(codec, stamps, samples.values[start : start + chunk])
        encoded.append((int(stamps[0]) - PG_EPOCH_OFFSET_US, len(stamps), ts, vals))
    for agent in range(agents):  # one agent's chunks are equal to another's: encoded once
        for start_us, n, ts, vals in encoded:
            parts.append(
                copy_row(
                    agent.to_bytes(4, "big", signed=True),
                    start_us.to_bytes(8, "big", signed=True),
                    n.to_bytes(4, "big", signed=True),
                    ts,
                    vals,
                )
            )
    parts.append(TRAILER)
    return b"".join(parts), agents * t * s


def _payload(name: str, samples: Samples, agents: int, chunk: int) -> tuple[bytes, int]:
    if name == "rows":
        return _rows_payload(samples, agents)
    if name == "batch_rows":
        return _batch_rows_payload(samples, agents)
    return _chunks_payload(name.removeprefix("chunks_"), samples, agents, chunk)


_TABLES = {
    "rows": (
        "CREATE TABLE {t} (series_id int4 NOT NULL, ts timestamptz NOT NULL, "
        "value float8 NOT NULL); CREATE INDEX ON {t} (series_id, ts)"
    ),
    "batch_rows": (
        "CREATE TABLE {t} (set_id int4 NOT NULL, ts timestamptz NOT NULL, vals bytea NOT NULL); "
        # already dense doubles: pglz would spend CPU finding nothing to gain
        "ALTER TABLE {t} ALTER COLUMN vals SET STORAGE EXTERNAL; CREATE INDEX ON {t} (set_id, ts)"
    ),
    "chunks": (
        "CREATE TABLE {t} (set_id int4 NOT NULL, start timestamptz NOT NULL, n int4 NOT NULL, "
        "ts bytea NOT NULL, vals bytea NOT NULL); "
        "ALTER TABLE {t} ALTER COLUMN ts SET STORAGE EXTERNAL; "
        "ALTER TABLE {t} ALTER COLUMN vals SET STORAGE EXTERNAL; "
        "CREATE INDEX ON {t} (set_id, start)"
    ),
}


def measure_layout(url: str, name: str, payload: bytes, points: int) -> dict[str, Any]:
    """COPY the payload into a fresh table of the layout, then its size on disk per point."""
    table = f"layout_{name}"
    kind = "chunks" if name.startswith("chunks_") else name
    with pg_connect(url, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}")
        for statement in _TABLES[kind].format(t=table).split("; "):
            conn.execute(statement)
        began = time.perf_counter()
        with (
            conn.transaction(),
            conn.cursor().copy(f"COPY {table} FROM STDIN (FORMAT BINARY)") as copy,
        ):
            for offset in range(0, len(payload), 1 << 20):
                copy.write(payload[offset : offset + (1 << 20)])
        copy_s = time.perf_counter() - began
        conn.execute(f"VACUUM (ANALYZE) {table}")
        row = conn.execute(
            sql.SQL(
                "SELECT pg_total_relation_size({name}), pg_indexes_size({name}), "
                "(SELECT count(*) FROM {table})"
            ).format(name=sql.Literal(table), table=sql.Identifier(table))
        ).fetchone()
        assert row is not None
        total, indexes, rows = int(row[0]), int(row[1]), int(row[2])
        conn.execute(f"DROP TABLE {table}")
    return {
        "rows": rows,
        "points": points,
        "copy_s": round(copy_s, 3),
        "copy_points_per_s": round(points / copy_s),
        "copy_rows_per_s": round(rows / copy_s),
        "bytes_per_point": round(total / points, 3),
        "index_bytes_per_point": round(indexes / points, 3),
        "payload_bytes_per_point": round(len(payload) / points, 3),
    }


def run(args: argparse.Namespace) -> int:
    started_at = datetime.now(UTC)
    out_dir = args.results_dir / (started_at.strftime("%Y%m%dT%H%M%SZ") + "-layouts")
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.samples is not None:
        saved = np.load(args.samples)
        raw = Samples(list(saved["names"]), saved["ts_us"], saved["values"])
    else:
        sys.stderr.write(
            f"collecting {args.collections} times, {args.interval} s apart, from the "
            f"{args.source}\n"
        )
        collect = scrape_samples if args.source == "node_exporter" else collect_samples
        raw = collect(args.collections, args.interval)
        np.savez(out_dir / "samples.npz", names=raw.names, ts_us=raw.ts_us, values=raw.values)
    samples = _series_complete(raw)
    t, s = samples.values.shape
    sys.stderr.write(
        f"{s} series in every collection (of {len(raw.names)} seen), {t} collections\n"
    )
    codecs = codec_figures(samples, args.chunk_collections)
    layouts: dict[str, Any] = {}
    pg = None
    try:
        admin_url = args.database_url
        if admin_url is None:
            import tempfile

            data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="fleetpulse-layouts-"))
            pg = EmbeddedPostgres(data_dir)
            admin_url = pg.start()
        with pg_connect(admin_url, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {DB_NAME}")
            admin.execute(f"CREATE DATABASE {DB_NAME}")
        url = make_conninfo(admin_url, dbname=DB_NAME)
        names = ["rows", "batch_rows", *(f"chunks_{codec}" for codec in CODECS)]
        for name in names:
            payload, points = _payload(name, samples, args.agents, args.chunk_collections)
            layouts[name] = measure_layout(url, name, payload, points)
            sys.stderr.write(f"{name}: {json.dumps(layouts[name])}\n")
        with pg_connect(admin_url, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE {DB_NAME}")
    finally:
        if pg is not None:
            pg.stop()
    summary: dict[str, Any] = {
        "source": "samples file" if args.samples is not None else args.source,
        "series": s,
        "collections": t,
        "agents": args.agents,
        "points": t * s * args.agents,
        **{
            f"{name}_bytes_per_point": figures["bytes_per_point"]
            for name, figures in layouts.items()
        },
        **{
            f"{name}_copy_points_per_s": figures["copy_points_per_s"]
            for name, figures in layouts.items()
        },
        **{
            f"{codec}_bytes_per_value": figures["bytes_per_value"]
            for codec, figures in codecs.items()
        },
        **{
            f"{codec}_encode_ns_per_value": figures["encode_ns_per_value"]
            for codec, figures in codecs.items()
        },
        **{
            f"{codec}_decode_ns_per_value": figures["decode_ns_per_value"]
            for codec, figures in codecs.items()
        },
    }
    result = {
        "started_at": started_at.isoformat(timespec="seconds"),
        "command": " ".join(["fleetpulse", "bench", "layouts", *sys.argv[3:]]),
        "machine": report.machine(),
        "summary": summary,
        "layouts": layouts,
        "codecs": codecs,
        "series_names": samples.names,
    }
    (out_dir / "result.json").write_text(json.dumps(result, indent=2))
    sys.stderr.write(f"results in {out_dir}\n")
    print(json.dumps(summary))
    return 0

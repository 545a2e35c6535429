"""Performance anchors measured in the same run, on the same rows.

- The raw binary COPY ceiling: the run's own committed samples rows (fleetpulse/samples.py), read
  back with ``COPY … TO (FORMAT BINARY)`` and written with one ``COPY … FROM (FORMAT BINARY)`` into
  an index-less table of the same shape, ``(set_id int4, ts timestamptz, vals float8[])``, stored
  as ``samples`` is. What PostgreSQL alone can take here, in points per second, for this layout.
- VictoriaMetrics single-node (when its binary is installed): the same samples, with their metric
  names and labels, imported through ``/api/v1/import/prometheus`` (Prometheus text format).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from psycopg import sql

from fleetpulse.bench.ports import free_port
from fleetpulse.connections import pg_connect
from fleetpulse.copybuf import PG_EPOCH_OFFSET_US, POINT_ROW, SIGNATURE, TRAILER

log = logging.getLogger(__name__)

_WRITE_CHUNK_BYTES = 8 * 2**20
_VM_BODY_LINES = 200_000


@dataclass
class RunRows:
    """The run's committed rows as binary COPY bytes, plus their series."""

    copy_bytes: bytes
    series: pl.DataFrame  # series_id, name, labels (JSON text)

    @property
    def rows(self) -> int:
        return (len(self.copy_bytes) - len(SIGNATURE) - len(TRAILER)) // POINT_ROW.itemsize

    def columns(self) -> np.ndarray:
        body = self.copy_bytes[len(SIGNATURE) : len(self.copy_bytes) - len(TRAILER)]
        return np.frombuffer(body, dtype=POINT_ROW)


def fetch_run_rows(database_url: str, agent_prefix: str, max_rows: int) -> RunRows:
    with pg_connect(database_url) as conn:
        chunks = []
        with conn.cursor() as cur:
            query = (
                "COPY (SELECT p.series_id, p.ts, p.value FROM all_points p"
                " JOIN series s USING (series_id) WHERE s.agent_id LIKE {prefix} LIMIT {limit})"
                " TO STDOUT (FORMAT BINARY)"
            )
            statement = sql.SQL(query).format(
                prefix=sql.Literal(agent_prefix + "%"), limit=sql.Literal(max_rows)
            )
            with cur.copy(statement) as copy:
                for chunk in copy:
                    chunks.append(bytes(chunk))
        rows = conn.execute(
            "SELECT series_id, name, labels::text FROM series WHERE agent_id LIKE %s",
            (agent_prefix + "%",),
        ).fetchall()
    series = pl.DataFrame(rows, schema=["series_id", "name", "labels"], orient="row")
    return RunRows(b"".join(chunks), series)


def copy_ceiling(database_url: str, agent_prefix: str, table: str, max_rows: int) -> dict[str, Any]:
    """One binary COPY of the run's samples rows into an index-less table; points per second."""
    where = sql.SQL(
        "FROM samples s JOIN series_sets ss USING (set_id) WHERE ss.agent_id LIKE {prefix}"
    ).format(prefix=sql.Literal(agent_prefix + "%"))
    with pg_connect(database_url, autocommit=True) as conn:
        chunks = []
        statement = sql.SQL(
            "COPY (SELECT s.set_id, s.ts, s.vals {where} LIMIT {limit}) TO STDOUT (FORMAT BINARY)"
        ).format(where=where, limit=sql.Literal(max_rows))
        with conn.cursor() as cur, cur.copy(statement) as copy:
            for chunk in copy:
                chunks.append(bytes(chunk))
        row = conn.execute(
            sql.SQL(
                "SELECT count(*), coalesce(sum(n), 0)::int8 FROM"
                " (SELECT cardinality(s.vals) AS n {where} LIMIT {limit}) r"
            ).format(where=where, limit=sql.Literal(max_rows))
        ).fetchone()
        rows, points = (int(row[0]), int(row[1])) if row else (0, 0)
        name = sql.Identifier(table)
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(name))
        conn.execute(
            sql.SQL(
                "CREATE TABLE {} (set_id int4, ts timestamptz, vals float8[])"
                " WITH (toast_tuple_target = 8160)"
            ).format(name)
        )
        conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN vals SET STORAGE EXTERNAL").format(name))
        try:
            payload = memoryview(b"".join(chunks))
            started = time.perf_counter()
            with conn.transaction(), conn.cursor() as cur:
                statement = sql.SQL("COPY {} FROM STDIN (FORMAT BINARY)").format(name)
                with cur.copy(statement) as copy:
                    for offset in range(0, len(payload), _WRITE_CHUNK_BYTES):
                        copy.write(payload[offset : offset + _WRITE_CHUNK_BYTES])
            seconds = time.perf_counter() - started
        finally:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(name))
    return {
        "rows": rows,
        "points": points,
        "seconds": round(seconds, 3),
        "points_per_s": round(points / seconds) if seconds else None,
    }


def _prometheus_series(name: str, labels_json: str) -> str:
    import orjson

    labels = orjson.loads(labels_json)
    if not labels:
        return name
    inner = ",".join(
        f'{key}="{value.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for key, value in sorted(labels.items())
    )
    return f"{name}{{{inner}}}"


def prometheus_text_bodies(rows: RunRows) -> list[bytes]:
    """The rows as Prometheus text exposition lines (``series value timestamp_ms``), in bodies."""
    series_text = pl.DataFrame(
        {
            "series_id": rows.series["series_id"],
            "text": [
                _prometheus_series(n, lab)
                for n, lab in rows.series.select("name", "labels").iter_rows()
            ],
        }
    )
    columns = rows.columns()
    points = pl.DataFrame(
        {
            "series_id": columns["series_id"].astype(np.int64),
            "ts_ms": (columns["ts"].astype(np.int64) + PG_EPOCH_OFFSET_US) // 1000,
            "value": columns["value"].astype(np.float64),
        }
    )
    lines = (
        points.join(series_text, on="series_id", how="left")
        .select(
            pl.concat_str(
                [pl.col("text"), pl.col("value").cast(pl.String), pl.col("ts_ms").cast(pl.String)],
                separator=" ",
            )
        )
        .to_series()
    )
    return [
        ("\n".join(lines.slice(offset, _VM_BODY_LINES).to_list()) + "\n").encode()
        for offset in range(0, len(lines), _VM_BODY_LINES)
    ]


def victoriametrics(rows: RunRows) -> dict[str, Any] | None:
    """Import the same samples into a fresh VictoriaMetrics; None when it is not installed."""
    binary = shutil.which("victoria-metrics") or shutil.which("victoria-metrics-prod")
    if binary is None:
        return None
    version = subprocess.run([binary, "-version"], capture_output=True, text=True).stdout.strip()
    bodies = prometheus_text_bodies(rows)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="fleetpulse-vm-") as storage:
        proc = subprocess.Popen(
            [
                binary,
                f"-storageDataPath={storage}",
                f"-httpListenAddr=127.0.0.1:{port}",
                "-retentionPeriod=100y",
                "-loggerLevel=ERROR",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_http(f"{base}/health", proc)
            errors: list[BaseException] = []
            pending = list(bodies)
            lock = threading.Lock()

            def post_all() -> None:
                while True:
                    with lock:
                        if not pending:
                            return
                        body = pending.pop()
                    request = urllib.request.Request(
                        f"{base}/api/v1/import/prometheus", data=body, method="POST"
                    )
                    try:
                        with urllib.request.urlopen(request, timeout=600) as response:
                            response.read()
                    except BaseException as exc:  # reported after the threads joined
                        errors.append(exc)
                        return

            started = time.perf_counter()
            threads = [threading.Thread(target=post_all) for _ in range(2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            with urllib.request.urlopen(f"{base}/internal/force_flush", timeout=600) as response:
                response.read()
            seconds = time.perf_counter() - started
            if errors:
                raise RuntimeError(f"VictoriaMetrics import failed: {errors[0]}")
            # After the forced flush, before its background merges (which only shrink it).
            stored = sum(f.stat().st_size for f in Path(storage).rglob("*") if f.is_file())
        finally:
            proc.terminate()
            proc.wait(30)
    return {
        "version": version,
        "samples": rows.rows,
        "seconds": round(seconds, 3),
        "points_per_s": round(rows.rows / seconds),
        "bytes_per_point": round(stored / rows.rows, 3),
    }


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"VictoriaMetrics exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"VictoriaMetrics did not answer {url}")

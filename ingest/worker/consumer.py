"""The worker: XREADGROUP a chunk, write it (copier), then XACK + XDEL. Repeat.

At-least-once from Redis, exactly-once into PostgreSQL: an entry is acknowledged only after its
transaction committed, and the batch ledger turns a redelivery into a no-op. A worker restarted
under the same consumer name first re-reads its own pending entries (id 0), so a crash between
COMMIT and XACK is healed at the next start. SIGTERM finishes the chunk in flight, drains what is
left in the streams (bounded by worker_drain_timeout_s) and exits.
"""

from __future__ import annotations

import logging
import signal
import socket
import time
from types import FrameType
from typing import Any

import psycopg
import redis

from fleetpulse import connections, partitions
from fleetpulse import selfmetrics as own_metrics
from fleetpulse.ingest import keys, queue, watermark
from fleetpulse.ingest.worker import failpoints, selfmetrics
from fleetpulse.ingest.worker.compaction import CompactionThread
from fleetpulse.ingest.worker.compress import CompressThread
from fleetpulse.ingest.worker.copier import ChunkResult, ChunkWriter
from fleetpulse.ingest.worker.decode import ChunkDecoder, Entry
from fleetpulse.ingest.worker.rolloutjob import RolloutThread
from fleetpulse.ingest.worker.rollups import RollupThread
from fleetpulse.ingest.worker.series import SeriesResolver
from fleetpulse.settings import Settings

log = logging.getLogger(__name__)

_RETRY_DELAY_S = 1.0
# The connection is lost, or PostgreSQL ended the session (see _connect): the chunk stays pending
# to this consumer and is retried, after reconnecting.
_CONNECTION_LOST = (
    psycopg.OperationalError,
    psycopg.errors.IdleInTransactionSessionTimeout,
    redis.ConnectionError,
)
# Never shorter than this: a live worker's transaction does not sit idle for anywhere near it.
_MIN_IDLE_IN_TRANSACTION_MS = 1000
# Every worker checks partitions this often (creating ahead, dropping expired); concurrent runs
# are harmless (IF [NOT] EXISTS, lock_timeout).
PARTITION_MAINTENANCE_INTERVAL_S = 600.0
# Chunks are logged at DEBUG; INFO gets one throughput line per interval.
SUMMARY_INTERVAL_S = 60.0


class Worker:
    """One consumer of the group; several run side by side (processes, hosts)."""

    def __init__(
        self, settings: Settings, consumer: str, slot: tuple[int, int] | None = None
    ) -> None:
        """``slot`` = (i, n): this is worker i of n, which prefers the shards s with s % n == i - 1."""
        settings.require("database_url", "redis_url")
        assert settings.database_url and settings.redis_url
        self._settings = settings
        self._consumer = consumer
        # A blocked XREADGROUP answers after block_ms: the socket timeout must outlast it.
        self._redis = connections.redis_client(
            settings.redis_url, block_s=settings.worker_block_ms / 1000
        )
        shards = queue.ensure_layout(self._redis, settings.stream_shards)
        self._streams = [keys.stream_key(shard) for shard in range(shards)]
        # Shard affinity: under load each worker reads its own shards, so each agent's batches
        # (one agent, one shard) meet the same worker's series cache; only when its own shards are
        # empty does it read all of them (a stopped worker's shards still drain). Without it, every
        # worker ends up caching and resolving every agent's series (measured: docs/performance.md).
        index, count = slot or (1, 1)
        own = [s for i, s in enumerate(self._streams) if i % count == index - 1]
        self._own_streams = own if own and len(own) < len(self._streams) else None
        self._connect()
        self._stopping = False
        self.points_committed = 0
        self._window_started = time.monotonic()
        self._window_points = 0
        self._window_chunks = 0
        self._read_s = 0.0

    def _connect(self) -> None:
        url = self._settings.database_url
        assert url
        self._conn = connections.pg_connect(url)
        # A worker stopped in the middle of its transaction (SIGSTOP, a paused VM, a debugger)
        # keeps its row locks (agent_ingest, the ledger): every other worker that touches the
        # same agents waits on them, and so never gets to reclaim the stopped worker's entries.
        # Idle in its transaction for as long as its entries take to be reclaimed, it is as gone
        # for PostgreSQL as it is for XAUTOCLAIM: the server ends its session, the chunk rolls
        # back and is committed by whoever reclaims it; resumed, the worker reconnects.
        idle_ms = max(self._settings.worker_reclaim_idle_ms, _MIN_IDLE_IN_TRANSACTION_MS)
        self._conn.execute(
            "SELECT set_config('idle_in_transaction_session_timeout', %s, false)", (f"{idle_ms}ms",)
        )
        self._conn.commit()
        self._ddl_conn = connections.pg_connect(url, autocommit=True)
        self._decoder = ChunkDecoder(SeriesResolver(self._ddl_conn, self._settings.series_budget))
        self._writer = ChunkWriter(
            self._conn,
            self._ddl_conn,
            self._settings.retention_days,
            self._settings.max_future_s,
            mark_rollups=self._settings.rollups,
        )

    def stop(self, *_: object) -> None:
        self._stopping = True

    def _read(self, start_id: str, block_ms: int | None) -> list[Entry]:
        started = time.perf_counter()
        response: Any = None
        if start_id == ">" and self._own_streams is not None:
            response = self._redis.xreadgroup(
                keys.CONSUMER_GROUP,
                self._consumer,
                dict.fromkeys(self._own_streams, start_id),
                count=self._settings.worker_read_count,
            )
        if not response:
            response = self._redis.xreadgroup(
                keys.CONSUMER_GROUP,
                self._consumer,
                dict.fromkeys(self._streams, start_id),
                count=self._settings.worker_read_count,
                block=block_ms,
            )
        entries: list[Entry] = []
        for stream, items in response or ():
            name = stream.decode()
            for entry_id, fields in items:
                # A pending entry that was deleted meanwhile comes back with no fields: it is done.
                if fields:
                    entries.append((name, entry_id.decode(), fields))
                else:
                    self._redis.xack(name, keys.CONSUMER_GROUP, entry_id)
        if entries:  # time spent blocked on an empty queue is idle time, not work
            self._read_s += time.perf_counter() - started
        return entries

    def handle(self, entries: list[Entry]) -> bool:
        """Commit a chunk; return False when an entry was left pending for a retry.

        A chunk that fails for a reason of its own (not a lost connection, which is retried as a
        whole) is split in halves, so one bad batch cannot block the others; a single entry that
        keeps failing goes to the dead-letter stream after worker_max_deliveries attempts.
        """
        try:
            self.process(entries)
            return True
        except _CONNECTION_LOST:
            raise
        except Exception as exc:
            if len(entries) > 1:
                middle = len(entries) // 2
                first = self.handle(entries[:middle])
                return self.handle(entries[middle:]) and first
            return self._failed(entries[0], exc)

    def _failed(self, entry: Entry, exc: Exception) -> bool:
        stream, entry_id, fields = entry
        error = f"{type(exc).__name__}: {exc}"[:2000]
        attempts = int(self._redis.hincrby(keys.ATTEMPTS_KEY, f"{stream}/{entry_id}", 1))
        selfmetrics.ERRORS.labels("entry_failed").inc()
        if attempts < self._settings.worker_max_deliveries:
            log.warning("entry %s %s failed (attempt %d): %s", stream, entry_id, attempts, error)
            return False
        pipe = self._redis.pipeline(transaction=True)
        pipe.xadd(
            keys.DEAD_LETTER_STREAM,
            {
                **fields,
                b"stream": stream,
                b"entry_id": entry_id,
                b"error": error,
                b"attempts": attempts,
            },
        )
        pipe.xack(stream, keys.CONSUMER_GROUP, entry_id)
        pipe.xdel(stream, entry_id)
        pipe.hdel(keys.ATTEMPTS_KEY, f"{stream}/{entry_id}")
        pipe.execute()
        selfmetrics.ERRORS.labels("dead_letter").inc()
        log.error(
            "entry %s %s moved to %s after %d attempts: %s",
            stream,
            entry_id,
            keys.DEAD_LETTER_STREAM,
            attempts,
            error,
        )
        return True

    def reclaim(self) -> int:
        """Take over entries that other (dead or stuck) consumers read and never acknowledged."""
        taken = 0
        for stream in self._streams:
            start: str | bytes = "0-0"
            while True:
                response: Any = self._redis.xautoclaim(
                    stream,
                    keys.CONSUMER_GROUP,
                    self._consumer,
                    min_idle_time=self._settings.worker_reclaim_idle_ms,
                    start_id=start,
                    count=self._settings.worker_read_count,
                )
                start, claimed = response[0], response[1]
                entries = [(stream, eid.decode(), fields) for eid, fields in claimed if fields]
                if entries:
                    log.info("reclaimed %d idle entries of %s", len(entries), stream)
                    self.handle(entries)
                    taken += len(entries)
                if start in (b"0-0", "0-0"):
                    break
        return taken

    def process(self, entries: list[Entry]) -> None:
        started = time.perf_counter()
        decoded = self._decoder.decode(entries)
        decoded_at = time.perf_counter()
        result = self._writer.write(decoded)
        failpoints.after_commit(self._settings.failpoint, entries)
        written_at = time.perf_counter()
        # Only after COMMIT: acknowledge and delete (nothing else ever removes stream entries), and
        # announce every batch of the chunk as committed (new or already in the ledger).
        pipe = self._redis.pipeline(transaction=True)
        watermark.publish(pipe, ((b.agent_id, b.epoch, b.sequence) for b in decoded.batches))
        by_stream: dict[str, list[str]] = {}
        for stream, entry_id, _ in entries:
            by_stream.setdefault(stream, []).append(entry_id)
        for stream, ids in by_stream.items():
            pipe.xack(stream, keys.CONSUMER_GROUP, *ids)
            pipe.xdel(stream, *ids)
        pipe.execute()
        self._publish_stats(result, decoded_at - started, time.perf_counter() - written_at)
        selfmetrics.CHUNKS.inc()
        selfmetrics.BATCHES.labels("new").inc(result.batches_new)
        selfmetrics.BATCHES.labels("duplicate").inc(result.batches_duplicate)
        selfmetrics.POINTS.inc(result.points_committed)
        selfmetrics.POINTS_REJECTED.inc(result.points_rejected)
        selfmetrics.CHUNK_SECONDS.observe(time.perf_counter() - started)
        self.points_committed += result.points_committed
        self._window_points += result.points_committed
        self._window_chunks += 1
        log.debug(
            "chunk: %d entries, %d new batches, %d duplicates, %d points committed, %d rejected in %.1f ms",
            len(entries),
            result.batches_new,
            result.batches_duplicate,
            result.points_committed,
            result.points_rejected,
            (time.perf_counter() - started) * 1000,
        )
        self._maybe_log_summary()

    def _publish_stats(self, result: ChunkResult, decode_s: float, ack_s: float) -> None:
        """Add this chunk's profile to the shared totals (one pipelined round trip)."""
        pipe = self._redis.pipeline(transaction=False)
        stats = {"read": self._read_s, "decode": decode_s, **result.timings, "ack": ack_s}
        for step, seconds in stats.items():
            pipe.hincrbyfloat(keys.WORKER_STATS_KEY, f"{step}_s", seconds)
        pipe.hincrby(keys.WORKER_STATS_KEY, "chunks", 1)
        pipe.hincrby(keys.WORKER_STATS_KEY, "points", result.points_committed)
        pipe.execute()
        self._read_s = 0.0

    def _maybe_log_summary(self) -> None:
        now = time.monotonic()
        elapsed_s = now - self._window_started
        if elapsed_s < SUMMARY_INTERVAL_S:
            return
        log.info(
            "%d points committed in %d chunks over the last %.0f s (%.0f points/s)",
            self._window_points,
            self._window_chunks,
            elapsed_s,
            self._window_points / elapsed_s,
        )
        self._window_started, self._window_points, self._window_chunks = now, 0, 0

    def run(self) -> None:
        log.info("worker %s reading %d streams", self._consumer, len(self._streams))
        rollup_thread = compaction_thread = compress_thread = None
        rollout_thread = RolloutThread(self._settings)
        rollout_thread.start()
        if self._settings.rollups:
            assert self._settings.database_url
            rollup_thread = RollupThread(
                self._settings.database_url,
                self._settings.rollup_interval_s,
                self._settings.rollup_settle_s,
                self._settings.rollup_max_delay_s,
                self._settings.failpoint,
            )
            rollup_thread.start()
            compaction_thread = CompactionThread(self._settings.database_url)
            compaction_thread.start()
            if self._settings.compress:  # its marks come from the rollup job
                compress_thread = CompressThread(
                    self._settings.database_url,
                    self._settings.compress_interval_s,
                    self._settings.compress_after_s,
                    self._settings.failpoint,
                )
                compress_thread.start()
        try:
            self._consume()
        finally:
            rollout_thread.stop()  # not waited for: a step cut short rolls back, redone later
            if compress_thread is not None:
                compress_thread.stop()  # not waited for: a batch cut short rolls back
            if compaction_thread is not None:
                compaction_thread.stop()  # not waited for: a rebuild cut short is redone later
            if rollup_thread is not None:
                rollup_thread.stop()
                rollup_thread.join(timeout=self._settings.worker_drain_timeout_s)

    def _consume(self) -> None:
        recovering = True  # first (and after any failure) re-read this consumer's pending entries
        next_reclaim = time.monotonic() + self._settings.worker_reclaim_interval_s
        next_maintenance = time.monotonic()
        while not self._stopping:
            try:
                if time.monotonic() >= next_maintenance:
                    partitions.maintain(
                        self._ddl_conn, self._settings.retentions(), self._settings.max_future_s
                    )
                    next_maintenance = time.monotonic() + PARTITION_MAINTENANCE_INTERVAL_S
                if time.monotonic() >= next_reclaim:
                    self.reclaim()
                    next_reclaim = time.monotonic() + self._settings.worker_reclaim_interval_s
                if recovering:
                    entries = self._read("0", None)
                    recovering = bool(entries)
                else:
                    entries = self._read(">", self._settings.worker_block_ms)
                if entries and not self.handle(entries):
                    recovering = True
            except _CONNECTION_LOST as exc:
                # Transient: the entries stay pending to this consumer and are retried.
                selfmetrics.ERRORS.labels("connection_lost").inc()
                log.warning("chunk failed, retrying in %.0f s: %s", _RETRY_DELAY_S, exc)
                recovering = True
                time.sleep(_RETRY_DELAY_S)
                if self._conn.broken or self._ddl_conn.broken:
                    self.close_database()
                    try:
                        self._connect()
                    except psycopg.OperationalError as again:
                        log.warning("PostgreSQL still unreachable: %s", again)
        self._drain()

    def _drain(self) -> None:
        deadline = time.monotonic() + self._settings.worker_drain_timeout_s
        while time.monotonic() < deadline:
            entries = self._read(">", None)
            if not entries:
                break
            self.handle(entries)
        log.info("worker %s stopped (%d points committed)", self._consumer, self.points_committed)

    def close_database(self) -> None:
        self._conn.close()
        self._ddl_conn.close()

    def close(self) -> None:
        self.close_database()
        self._redis.close()

    @property
    def shards(self) -> int:
        return len(self._streams)

    @property
    def consumer(self) -> str:
        return self._consumer


def consumer_name(index: int) -> str:
    """Stable across restarts, so a restarted worker finds its own pending entries."""
    return f"{socket.gethostname()}-{index}"


def main(settings: Settings, index: int = 1, count: int = 1) -> None:
    from fleetpulse.lifecycle import set_process_title

    set_process_title(f"fleetpulse worker {index}/{count}")
    worker = Worker(settings, consumer_name(index), slot=(index, count))

    def on_signal(signum: int, frame: FrameType | None) -> None:
        worker.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    own_metrics.serve(
        settings.worker_metrics_host,
        settings.worker_metrics_port,
        "worker_metrics_port",
        index=index,
        fatal=False,
    )
    assert settings.redis_url is not None
    store = own_metrics.SelfStore(
        settings.redis_url,
        worker.shards,
        "fleetpulse-worker",
        worker.consumer,
        settings.self_metrics_interval_s,
        refresh=lambda client: selfmetrics.refresh_queue(client, worker.shards),
    )
    store.start()
    try:
        worker.run()
    finally:
        store.stop()
        worker.close()

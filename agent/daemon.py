"""The agent daemon: collects on a schedule and holds one gRPC stream to the platform open.

Every collection (the daemon's `Scheduler`, agent/collectors/scheduler.py) becomes a batch that is
appended to the on-disk spool (agent/spool.py) and fsynced before it is sent, so that it survives
a broken stream, a restart or a kill -9. Per stream: register, replay every spooled batch in
sequence order (the platform's ledger makes one it already has a no-op), then heartbeat every
heartbeat_interval_s and send each new batch as it is collected. An ack means the platform queued
the batch durably: it is not sent again on that stream. A batch leaves the spool only when the
platform reports it committed in PostgreSQL (ServerMessage.committed) or refuses it for good; one
refused for now (retry_after_ms) is sent again after that delay. The spool is bounded
(agent.spool_max_mb): when full, its oldest batches are dropped and counted (sent.json,
agent_dropped_batches_total). When the stream breaks, the agent reconnects with full-jitter
backoff and replays the spool. The platform's settings (intervals, collectors) apply without a
restart (agent/remote.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import platform
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import psutil

from fleetpulse import __version__
from fleetpulse.agent import channel
from fleetpulse.agent.backoff import Backoff
from fleetpulse.agent.batch import CollectionEncoder
from fleetpulse.agent.collectors.names import COLLECTORS
from fleetpulse.agent.collectors.sample import Sample
from fleetpulse.agent.collectors.scheduler import Scheduler
from fleetpulse.agent.config import ENROLLMENT_TOKEN_ENV, AgentConfig
from fleetpulse.agent.remote import check
from fleetpulse.agent.report import SentReport
from fleetpulse.agent.spool import Spool
from fleetpulse.proto import agent_pb2, common_pb2, wire

log = logging.getLogger(__name__)

SHUTDOWN_FLUSH_S = 3.0
# A session that stayed up this long resets the backoff.
STABLE_SESSION_S = 10.0
CREDENTIAL_FILE = "credential"
# The platform's settings last applied, so that a restart keeps them until the next register.
SETTINGS_FILE = "settings.json"


def machine_id() -> str:
    """A stable id of this host (hashed systemd machine-id): tells cloned images apart."""
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            raw = Path(path).read_text().strip()
        except OSError:
            continue
        if raw:
            return hashlib.sha256(raw.encode()).hexdigest()[:32]
    return ""


def write_private(path: Path, text: str) -> None:
    """Write a file only this user can read, atomically (the credential)."""
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class StreamClosed(Exception):
    """The server ended the stream or answered something unexpected."""


class AgentDaemon:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.epoch = int(time.time() * 1000)
        self._next_seq = 1
        self._new_batch = asyncio.Event()
        self._stopping = asyncio.Event()
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        self.report_path: Path = config.state_dir / "sent.json"
        self.report = SentReport.load(self.report_path, config.agent_id)
        # Every batch not yet committed in PostgreSQL, on disk (survives restarts and kill -9).
        self.spool = Spool(
            config.state_dir / "spool",
            config.spool_max_bytes,
            on_drop=lambda record: self.report.dropped(
                record.epoch, record.sequence, record.points
            ),
        )
        self._account_for_spool()
        # Batches the platform accepted (queued) on the current stream: not sent again on it.
        self._accepted: set[tuple[int, int]] = set()
        # Accepted at least once (counted in the report once), until committed.
        self._acked_once: set[tuple[int, int]] = set()
        # The collectors, and what they keep between collections (kernel files, CPU baseline).
        self.scheduler = Scheduler()
        self._encoder = CollectionEncoder()
        self.collector_errors: dict[str, str] = {}
        self._loop: asyncio.AbstractEventLoop
        self.credential_path: Path = config.state_dir / CREDENTIAL_FILE
        # Enrolled before: it had a credential when it started, or registered in this run. Such
        # an agent retries a refusal (the platform may be mid-restart); one that was not stops.
        self._enrolled_before = self.credential_path.exists()
        # Why the first enrollment was refused, when it was: the agent stopped (exit status 2).
        self.refusal: str | None = None
        self._machine_id = machine_id()
        # Set when the platform refused a batch for now (retry_after_ms): when to send it again.
        self._retry_at: float | None = None
        self._noted_at = -60.0  # when a note of the platform was last logged
        # Batches the platform reported committed in PostgreSQL (ServerMessage.committed).
        self.committed_batches = 0
        self.backoff_factory: Callable[[], Backoff] = Backoff
        self._process = psutil.Process()
        # In effect now: the config file's values, or the platform's settings (remote).
        self.collect_interval_s = config.collect_interval_s
        self.heartbeat_interval_s = config.heartbeat_interval_s
        self.collectors = config.collectors
        self.settings_version = 0
        self.settings_path: Path = config.state_dir / SETTINGS_FILE
        # Set when the intervals changed: the collector and the sender reschedule at once.
        self._collect_rescheduled = asyncio.Event()
        self._heartbeat_rescheduled = False
        # Messages other than batches and heartbeats for the sender to write (SettingsStatus):
        # only the send loop writes to the stream.
        self._outgoing: list[bytes] = []
        self._load_settings()

    def _account_for_spool(self) -> None:
        """Count spooled batches the account missed: a kill -9 between the spool's fsync and the
        account's write leaves a batch that will be sent but was not counted as sent."""
        missed = False
        for batch in self.spool.pending():
            account = self.report.epochs.get(batch.epoch)
            if account is None or batch.sequence > account.last_seq:
                self.report.sent(batch.epoch, batch.sequence, batch.points)
                missed = True
        if missed:
            self.report.write(self.report_path)

    # -- collection -------------------------------------------------------------------------
    def collect_batch(self) -> None:
        """Collect once and queue the result as the next batch of this epoch."""
        samples, self.collector_errors = self.scheduler.collect(  # it logs failures
            self.collectors, self.config.collector_intervals_s
        )
        if not samples:
            return
        samples.extend(self._health())
        seq = self._next_seq
        self._next_seq += 1
        message = self._encoder.encode(
            self.config.agent_id, self.epoch, seq, samples, time.time_ns()
        )
        self.report.sent(self.epoch, seq, len(samples))
        self.spool.append(self.epoch, seq, len(samples), message)  # fsynced before it is sent
        self.report.write(self.report_path)  # what it sent, readable at any time (audit, bench)
        self._new_batch.set()

    def _health(self) -> list[Sample]:
        """The agent's own health, sent with every batch: what it costs the host, what waits."""
        # times(2) covers every thread of the process, as psutil's cpu_times() does, for a syscall
        # instead of reading and parsing /proc/self/stat.
        times = os.times()
        try:
            with open("/proc/self/statm", "rb") as statm:  # size resident shared ... in pages
                rss = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:  # not Linux
            rss = self._process.memory_info().rss
        return [
            ("agent_rss_bytes", float(rss), {}),
            ("agent_cpu_seconds_total", float(times.user + times.system), {}),
            ("agent_spool_bytes", float(self.spool.size_bytes), {}),
            ("agent_spool_batches", float(len(self.spool)), {}),
            ("agent_dropped_batches_total", float(self.spool.dropped_batches), {}),
            ("agent_collector_errors", float(len(self.collector_errors)), {}),
            # the send lag, in batches: spooled and not yet accepted by the platform
            ("agent_unaccepted_batches", float(self._unaccepted()), {}),
        ]

    def _unaccepted(self) -> int:
        return sum(1 for b in self.spool.pending() if (b.epoch, b.sequence) not in self._accepted)

    async def _collect_forever(self) -> None:
        next_at = time.monotonic()
        while not self._stopping.is_set():
            collected_at = time.monotonic()
            try:
                self.collect_batch()
            except Exception:
                log.exception("collection failed")  # never let one bad collection end the agent
            next_at += self.collect_interval_s
            while not self._stopping.is_set():
                self._collect_rescheduled.clear()
                wakeup = asyncio.create_task(self._collect_rescheduled.wait())
                stopping = asyncio.create_task(self._stopping.wait())
                await asyncio.wait(
                    {wakeup, stopping},
                    timeout=max(0.0, next_at - time.monotonic()),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                wakeup.cancel()
                stopping.cancel()
                if not self._collect_rescheduled.is_set():
                    break  # time to collect (or stopping)
                # A new interval counts from the last collection: a shorter one may be due now.
                next_at = collected_at + self.collect_interval_s

    # -- remote settings ----------------------------------------------------------------------
    def _load_settings(self) -> None:
        """Apply the platform's settings kept from an earlier run (the next register resends)."""
        try:
            saved = json.loads(self.settings_path.read_text())
            self._apply(agent_pb2.AgentSettings(**saved))
        except FileNotFoundError:
            return
        except (ValueError, TypeError) as exc:  # unreadable, or no longer valid for this agent
            log.warning("ignoring saved settings %s: %s", self.settings_path, exc)

    def _apply(self, settings: agent_pb2.AgentSettings) -> None:
        """All or nothing: ValueError (nothing changed) if any setting is invalid here."""
        collectors = list(settings.collectors)
        check(
            settings.collect_interval_ms or None,
            settings.heartbeat_interval_ms or None,
            collectors or None,
            COLLECTORS.keys(),
        )
        collect_s = (settings.collect_interval_ms / 1000) or self.config.collect_interval_s
        heartbeat_s = (settings.heartbeat_interval_ms / 1000) or self.config.heartbeat_interval_s
        if collect_s != self.collect_interval_s:
            self.collect_interval_s = collect_s
            self._collect_rescheduled.set()
        if heartbeat_s != self.heartbeat_interval_s:
            self.heartbeat_interval_s = heartbeat_s
            self._heartbeat_rescheduled = True
        self.collectors = frozenset(collectors) if collectors else self.config.collectors
        self.settings_version = settings.version

    def _settings_received(self, settings: agent_pb2.AgentSettings) -> None:
        try:
            self._apply(settings)
        except ValueError as exc:
            log.warning("settings version %d not applied: %s", settings.version, exc)
            self._report_settings(settings.version, str(exc))
            return
        write_private(
            self.settings_path,
            json.dumps(
                {
                    "version": settings.version,
                    "collect_interval_ms": settings.collect_interval_ms,
                    "heartbeat_interval_ms": settings.heartbeat_interval_ms,
                    "collectors": list(settings.collectors),
                }
            ),
        )
        log.info(
            "settings version %d applied: collect every %g s, heartbeat every %g s, collectors %s",
            settings.version,
            self.collect_interval_s,
            self.heartbeat_interval_s,
            ",".join(sorted(self.collectors)) if self.collectors is not None else "all",
        )
        self._report_settings(settings.version)

    def _report_settings(self, version: int, error: str = "") -> None:
        """Queue a SettingsStatus: the answer to a version, and what is in effect now."""
        status = agent_pb2.SettingsStatus(
            version=version,
            applied=not error,
            error=error,
            collect_interval_ms=round(self.collect_interval_s * 1000),
            heartbeat_interval_ms=round(self.heartbeat_interval_s * 1000),
            collectors=sorted(self.collectors if self.collectors is not None else COLLECTORS),
        )
        self._outgoing.append(agent_pb2.AgentMessage(settings_status=status).SerializeToString())
        self._new_batch.set()  # wake the sender

    # -- the stream ---------------------------------------------------------------------------
    def _channel(self) -> grpc.aio.Channel:
        if self.config.server_tls:
            return grpc.aio.secure_channel(
                self.config.server_address,
                channel.credentials(self.config),
                options=channel.OPTIONS,
            )
        return grpc.aio.insecure_channel(self.config.server_address, options=channel.OPTIONS)

    def _register_message(self) -> bytes:
        return agent_pb2.AgentMessage(
            register=agent_pb2.AgentRegister(
                agent_id=self.config.agent_id,
                hostname=socket.gethostname(),
                os=platform.system().lower(),
                arch=platform.machine(),
                version=__version__,
                machine_id=self._machine_id,
                protocol=wire.PROTOCOL,
                tags=self.config.tags,
            )
        ).SerializeToString()

    def _bearer(self) -> str | None:
        """The agent's own credential once enrolled, else the enrollment token."""
        try:
            return self.credential_path.read_text().strip() or None
        except FileNotFoundError:
            return self.config.enrollment_token

    async def _session(self, channel: grpc.aio.Channel) -> None:
        # Requests go out as bytes: batches are serialized once, when collected, and resent as is.
        connect = channel.stream_stream(
            wire.CONNECT_METHOD,
            request_serializer=None,
            response_deserializer=agent_pb2.ServerMessage.FromString,
        )
        bearer = self._bearer()
        call = connect(metadata=wire.bearer_metadata(bearer) if bearer else ())
        try:
            await call.write(self._register_message())
            first = await call.read()
            if first is grpc.aio.EOF or not first.register_response.success:
                raise StreamClosed(f"register refused: {first}")
            log.info("registered as %s with %s", self.config.agent_id, self.config.server_address)
            self._enrolled_before = True
            reader = asyncio.create_task(self._read_acks(call))
            try:
                await self._send_loop(call, reader)
            finally:
                reader.cancel()
        finally:
            call.cancel()

    async def _send_loop(self, call: grpc.aio.StreamStreamCall, reader: asyncio.Task[None]) -> None:
        # A new stream has seen nothing: replay the whole spool in order (the ledger makes a
        # batch the platform already has a no-op, and says so in a committed announcement).
        self._accepted.clear()
        sent: set[tuple[int, int]] = set()
        next_heartbeat = time.monotonic()
        # Tell the platform what is in effect (its heartbeat interval decides when we are offline).
        self._outgoing.clear()
        self._report_settings(self.settings_version)
        while True:
            # Cleared before sending, so a batch collected while a write awaits still wakes us.
            self._new_batch.clear()
            while self._outgoing:
                await call.write(self._outgoing.pop(0))
            if self._heartbeat_rescheduled:
                self._heartbeat_rescheduled = False
                next_heartbeat = time.monotonic()  # the new interval counts from a heartbeat now
            for batch in self.spool.pending():
                key = (batch.epoch, batch.sequence)
                if key not in sent:
                    await call.write(batch.payload)
                    sent.add(key)
            now = time.monotonic()
            if now >= next_heartbeat:
                heartbeat = agent_pb2.Heartbeat(
                    agent_id=self.config.agent_id,
                    timestamp=common_pb2.Timestamp(seconds=int(time.time())),
                )
                await call.write(agent_pb2.AgentMessage(heartbeat=heartbeat).SerializeToString())
                next_heartbeat = now + self.heartbeat_interval_s
            if self._retry_at is not None and time.monotonic() >= self._retry_at:
                self._retry_at = None
                sent &= self._accepted  # resend what was refused, in order
                continue
            if self._stopping.is_set() and not self._unaccepted():
                # Everything is at least queued on the platform; what is not committed yet stays
                # in the spool and is replayed (as a no-op) at the next start.
                goodbye = agent_pb2.Disconnect(reason="agent shutting down")
                await call.write(agent_pb2.AgentMessage(disconnect=goodbye).SerializeToString())
                await call.done_writing()
                # Let the platform record the goodbye and end the stream before we hang up.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(reader), timeout=2.0)
                return
            wakeup = asyncio.create_task(self._new_batch.wait())
            wake_at = (
                next_heartbeat if self._retry_at is None else min(next_heartbeat, self._retry_at)
            )
            done, _ = await asyncio.wait(
                {wakeup, reader},
                timeout=max(0.0, wake_at - time.monotonic()),
                return_when=asyncio.FIRST_COMPLETED,
            )
            wakeup.cancel()
            if reader in done:
                reader.result()  # re-raises the stream's error
                raise StreamClosed("server closed the stream")

    async def _read_acks(self, call: grpc.aio.StreamStreamCall) -> None:
        while True:
            response = await call.read()
            if response is grpc.aio.EOF:
                return
            case = response.WhichOneof("message")
            if case == "metric_ack":
                ack = response.metric_ack
                if not ack.success:
                    self._refused(ack)
                    continue
                if ack.message != "accepted":
                    self._noted(ack.message)
                key = (ack.epoch, ack.sequence)
                self._accepted.add(key)
                self.spool.mark_accepted(*key)
                if key not in self._acked_once:
                    self._acked_once.add(key)
                    self.report.acked(ack.epoch, self._points_of(key))  # on disk next collection
                if not self._unaccepted():
                    self._new_batch.set()  # wake the sender: it may be waiting to finish
            elif case == "heartbeat_ack":
                continue
            elif case == "credential":
                write_private(self.credential_path, response.credential.token)
                log.info("enrolled: credential stored in %s", self.credential_path)
            elif case == "committed":
                self._committed(response.committed)
            elif case == "settings":
                self._settings_received(response.settings)

    def _noted(self, message: str) -> None:
        """What the platform says beside an ack (its series budget refusing our new series):
        logged once a minute at most, not once per batch."""
        now = time.monotonic()
        if now - self._noted_at >= 60.0:
            self._noted_at = now
            log.warning("platform: %s", message.removeprefix("accepted; "))

    def _points_of(self, key: tuple[int, int]) -> int:
        batch = self.spool.get(*key)
        return batch.points if batch else 0

    def _committed(self, committed: agent_pb2.Committed) -> None:
        """Final in PostgreSQL: free the spool."""
        for span in committed.ranges:
            for sequence in range(span.first, span.last + 1):
                key = (committed.epoch, sequence)
                points = self._points_of(key)
                if self.spool.free(*key):
                    self.committed_batches += 1
                    self.report.committed(committed.epoch, points)
                self._accepted.discard(key)
                self._acked_once.discard(key)

    def _refused(self, ack: agent_pb2.MetricAck) -> None:
        if ack.retry_after_ms:
            # Not now (workers behind, over our rate, queue down): keep it, send it again later.
            log.info("batch %d deferred %d ms: %s", ack.sequence, ack.retry_after_ms, ack.error)
            retry_at = time.monotonic() + ack.retry_after_ms / 1000
            self._retry_at = max(self._retry_at or 0.0, retry_at)
            return
        log.warning("batch %d refused for good: %s", ack.sequence, ack.error)
        points = self._points_of((ack.epoch, ack.sequence))
        if self.spool.free(ack.epoch, ack.sequence):
            self.report.dropped(ack.epoch, ack.sequence, points)

    async def _connect_forever(self) -> None:
        backoff = self.backoff_factory()
        while not self._stopping.is_set() or self._unaccepted():
            started = time.monotonic()
            floor_s = 0.0
            async with self._channel() as channel:
                try:
                    await self._session(channel)
                    if self._stopping.is_set():
                        return
                except grpc.aio.AioRpcError as exc:
                    floor_s = wire.retry_after_s(exc.trailing_metadata())
                    refused = self._auth_failure(exc)
                    if refused is None:
                        log.warning(
                            "stream to %s failed: %s %s",
                            self.config.server_address,
                            exc.code().name,
                            exc.details(),
                        )
                    elif not self._enrolled_before:
                        # A wrong token or a taken id: retrying cannot help, and an exit status
                        # lets a service manager show the agent as failed.
                        log.error("%s", refused)
                        self.refusal = refused
                        self._stopping.set()
                        return
                    elif (
                        exc.code() == grpc.StatusCode.UNAUTHENTICATED
                        and self.credential_path.exists()
                        and self.config.enrollment_token
                    ):
                        # Revoked (or the platform lost it): enroll again with the token.
                        log.warning(
                            "credential refused; enrolling again with the enrollment token "
                            "(%s: %s; %s removed)",
                            exc.code().name,
                            exc.details(),
                            self.credential_path,
                        )
                        self.credential_path.unlink()
                    else:
                        log.warning(
                            "%s; retrying, since this agent was enrolled before and the "
                            "platform may be restarting",
                            refused,
                        )
                except (StreamClosed, asyncio.InvalidStateError) as exc:
                    # InvalidStateError: the call ended (a front-end stopping, say) while the
                    # sender was writing; write() says so instead of raising the call's status.
                    log.warning("stream to %s closed: %s", self.config.server_address, exc)
            if self._stopping.is_set():
                return  # shutting down: do not wait through a backoff
            if time.monotonic() - started > STABLE_SESSION_S:
                backoff.reset()
            delay_s = backoff.next_delay_s(floor_s)
            log.info("reconnecting in %.1f s", delay_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=delay_s)

    def _auth_failure(self, exc: grpc.aio.AioRpcError) -> str | None:
        """A refused credential or enrollment, in one line saying what to do; None when the
        stream failed for another reason."""
        code = exc.code()
        refused = f"({code.name}: {exc.details()})"
        where = "`fleetpulse up` prints it; it is in <data dir>/enrollment_token"
        if code == grpc.StatusCode.UNAUTHENTICATED:
            if self.credential_path.exists():
                return (
                    f"credential in {self.credential_path} refused {refused}; to enroll again, "
                    f"set {ENROLLMENT_TOKEN_ENV} to the platform's token ({where})"
                )
            if not self.config.enrollment_token:
                return (
                    f"enrollment refused {refused}: no credential at {self.credential_path} and "
                    f"no enrollment token is set; set {ENROLLMENT_TOKEN_ENV} to the platform's "
                    f"token ({where})"
                )
            return (
                f"enrollment refused {refused}: no credential at {self.credential_path} and the "
                f"enrollment token was refused; set {ENROLLMENT_TOKEN_ENV} (or "
                f"server.enrollment_token, which wins over it) to the platform's token ({where})"
            )
        if code == grpc.StatusCode.PERMISSION_DENIED:
            agent_id = self.config.agent_id
            if self.credential_path.exists():
                return (
                    f"agent id {agent_id!r} refused {refused}; the credential in "
                    f"{self.credential_path} may be another agent id's: delete it to enroll "
                    f"as {agent_id!r} with the enrollment token"
                )
            return (
                f"enrollment refused {refused}: agent id {agent_id!r} is already enrolled with "
                f"another credential and there is none at {self.credential_path}; revoke that "
                f"one with `fleetpulse agents revoke {agent_id}` or give this agent another "
                "agent.id"
            )
        return None

    def stop_threadsafe(self) -> None:
        """Ask a daemon running in another thread's event loop to shut down (tests, embedding)."""
        self._loop.call_soon_threadsafe(self._stopping.set)

    async def run(self, handle_signals: bool = True) -> None:
        """Run until SIGTERM/SIGINT (or stop_threadsafe), then flush within SHUTDOWN_FLUSH_S."""
        loop = self._loop = asyncio.get_running_loop()
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._stopping.set)
        self.report.write(self.report_path)
        collector = asyncio.create_task(self._collect_forever())
        connection = asyncio.create_task(self._connect_forever())
        await self._stopping.wait()
        if self.refusal is None:
            log.info("stopping: flushing %d batches not yet accepted", self._unaccepted())
        else:
            log.info("stopping: %d batches kept in the spool for the next start", len(self.spool))
        await collector
        self._new_batch.set()
        try:
            await asyncio.wait_for(connection, timeout=SHUTDOWN_FLUSH_S)
        except TimeoutError:
            log.warning(
                "%d batches not accepted by the deadline; kept in the spool", self._unaccepted()
            )
        self.report.write(self.report_path)
        self.spool.close()
        self.scheduler.close()


def main(config: AgentConfig) -> str | None:
    """Run the agent until SIGTERM/SIGINT; returns why its first enrollment was refused, if that
    is what stopped it (None after a normal stop)."""
    from fleetpulse.lifecycle import set_process_title

    set_process_title(f"fleetpulse agent {config.agent_id}")
    daemon = AgentDaemon(config)
    asyncio.run(daemon.run())
    return daemon.refusal

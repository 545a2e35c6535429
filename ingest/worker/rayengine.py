"""``fleetpulse worker --engine ray``: the worker loop as Ray actors, for users who run Ray.

The same loop as the process pool (``Worker.run``, nothing of it is repeated here), hosted by N
Ray actors instead of N child processes. Ray restarts an actor whose process dies
(``max_restarts=-1``); this driver sees the actor's ``run()`` fail and calls it again on the
restarted actor, after the pool's delay (1 s, doubling to 30 s while it keeps failing). Consumer
names are chosen by the driver, ``<driver host>-ray-<i>``, so an actor restarted on another node
keeps its name and re-reads its own pending entries first.

SIGTERM/SIGINT: every actor is asked to stop; each finishes its chunk, drains
(``worker_drain_timeout_s``) and returns; then the driver disconnects from Ray, which stops a
local Ray it started.

Without ``--ray-address`` (or ``RAY_ADDRESS``) the driver starts a local Ray sized for the
actors. On a cluster, every node needs fleetpulse with the ``server`` extra installed, and the
actors' arguments (the settings, database URL included) are kept by Ray's GCS to restart them.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from types import FrameType
from typing import Any

from fleetpulse import lifecycle
from fleetpulse.errors import ConfigError
from fleetpulse.ingest.worker.consumer import Worker
from fleetpulse.ingest.worker.pool import MAX_RESTART_DELAY_S, RESTART_DELAY_S, STABLE_RUN_S
from fleetpulse.settings import Settings

MISSING_RAY = "the ray engine needs the 'ray' extra: pip install 'fleetpulse[ray]'"

# Read by ray when it is imported: actors' log lines reach the driver's stderr each under its own
# prefix (deduplication would merge "worker vm-ray-1 ..." and "worker vm-ray-2 ..." into one line).
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

try:
    import ray
    from ray.exceptions import RayActorError, RayError
except ModuleNotFoundError as exc:  # the CLI imports this module only for --engine ray
    if exc.name != "ray" and not (exc.name or "").startswith("ray."):
        raise
    raise ConfigError(MISSING_RAY) from exc

log = logging.getLogger(__name__)

# After SIGTERM an actor finishes its chunk and drains for worker_drain_timeout_s; this much more
# covers the chunk in flight before the driver gives up on it (its entries stay pending to its
# consumer name, re-read at the next start).
STOP_GRACE_S = 10.0
_WAIT_S = 0.5
# A run that dies this many times in a row, each before STABLE_RUN_S, gets a fresh actor: Ray
# restarts a dead process, but an actor Ray gave up on (or that keeps failing) is replaced.
RECREATE_AFTER_FAILURES = 3
# The local Ray carries only the actors' arguments and results, never batches.
LOCAL_OBJECT_STORE_BYTES = 128 * 1024 * 1024
_CONTROL = "control"


class FleetpulseWorker:
    """One ``Worker`` in a Ray actor: ``run()`` is ``Worker.run``, ``stop()`` its stop flag."""

    def __init__(
        self,
        settings: Settings,
        consumer: str,
        title: str,
        log_level: str,
        slot: tuple[int, int] | None = None,
    ) -> None:
        logging.basicConfig(
            level=log_level.upper(),
            format=f"%(asctime)s %(levelname)s [{title}] %(name)s: %(message)s",
        )
        self._settings = settings
        self._consumer = consumer
        self._slot = slot
        self._lock = threading.Lock()
        self._worker: Worker | None = None
        self._stopping = False

    def run(self) -> int:
        """Run the worker loop until stop(); return the points this run committed."""
        if self._stopping:
            return 0
        # Built here, not in __init__: a database that is down fails this call (retried by the
        # driver), never the actor's creation (which Ray would not retry).
        worker = Worker(self._settings, self._consumer, self._slot)
        with self._lock:
            self._worker = worker
            if self._stopping:
                worker.stop()
        try:
            worker.run()
        finally:
            with self._lock:
                self._worker = None
            worker.close()
        return worker.points_committed

    @ray.method(concurrency_group=_CONTROL)
    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            if self._worker is not None:
                self._worker.stop()

    @ray.method(concurrency_group=_CONTROL)
    def where(self) -> tuple[str, int]:
        """The actor's host and process id (logged by the driver; a test kills it)."""
        return socket.gethostname(), os.getpid()


# Typed Any: ray's stubs know neither concurrency_groups nor the .remote of an actor class.
WorkerActor: Any = ray.remote(  # type: ignore[call-overload]
    max_restarts=-1,
    # run() never completes on its own: the driver calls it again itself (with a delay, and a log
    # line), and stop()/where() are one-shot questions that must not outlive the process they asked.
    max_task_retries=0,
    num_cpus=1,
    # run() holds the default group's only thread for as long as the worker runs; stop() and
    # where() have their own, so they are answered meanwhile. One thread for run() also means one
    # loop per actor even if the driver, losing sight of the actor, calls run() again.
    concurrency_groups={_CONTROL: 1},
)(FleetpulseWorker)


@dataclass
class _Slot:
    index: int
    actor: Any = None
    run_ref: Any = None
    where_ref: Any = None
    started_at: float = 0.0
    delay_s: float = RESTART_DELAY_S
    restart_at: float = 0.0
    failures: int = 0


class RayWorkerPool:
    """N actors running the worker loop, supervised from this (driver) process."""

    def __init__(
        self, settings: Settings, actors: int, address: str | None, log_level: str
    ) -> None:
        # Workers never need the enrollment token; it is not handed to Ray.
        self.settings = settings.model_copy(update={"enrollment_token": None})
        self.actors = actors
        self.address = address
        self.log_level = log_level
        self.host = socket.gethostname()
        self.slots = [_Slot(i) for i in range(1, actors + 1)]
        self._stopping = False

    def stop(self, signum: int = signal.SIGTERM, frame: FrameType | None = None) -> None:
        self._stopping = True

    def _connect(self) -> None:
        # Plain prefixes on forwarded actor lines: the driver's stderr usually ends in a log file.
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
        if self.address:
            ray.init(address=self.address, logging_level=logging.WARNING)
            return
        # A local Ray only for these actors: no dashboard, a small object store, no usage report.
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(
            num_cpus=self.actors,
            # A local Ray serves only this host: keep its ports on loopback.
            _node_ip_address="127.0.0.1",
            include_dashboard=False,
            object_store_memory=LOCAL_OBJECT_STORE_BYTES,
            logging_level=logging.WARNING,
        )

    def _name(self, slot: _Slot) -> str:
        return f"worker ray {slot.index}/{self.actors}"

    def _create(self, slot: _Slot) -> None:
        consumer = f"{self.host}-ray-{slot.index}"
        slot.actor = WorkerActor.remote(
            self.settings, consumer, self._name(slot), self.log_level, (slot.index, self.actors)
        )

    def _start(self, slot: _Slot) -> None:
        slot.run_ref = slot.actor.run.remote()
        slot.where_ref = slot.actor.where.remote()
        slot.started_at = time.monotonic()

    def _run_ended(self, slot: _Slot) -> None:
        now = time.monotonic()
        ref, slot.run_ref = slot.run_ref, None
        try:
            points = ray.get(ref)
            why = f"returned ({points} points committed)"
        except RayActorError as exc:
            why = f"lost its actor ({type(exc).__name__}; Ray restarts it)"
            slot.failures += 1
        except RayError as exc:
            why = f"failed: {exc}"
            slot.failures += 1
        if self._stopping:
            return
        stable = now - slot.started_at > STABLE_RUN_S
        if stable:
            slot.failures = 0
        slot.delay_s = RESTART_DELAY_S if stable else min(MAX_RESTART_DELAY_S, slot.delay_s * 2)
        slot.restart_at = now + slot.delay_s
        log.warning("%s %s; running it again in %.0f s", self._name(slot), why, slot.delay_s)
        if slot.failures >= RECREATE_AFTER_FAILURES:
            log.warning("%s: replacing its actor", self._name(slot))
            ray.kill(slot.actor, no_restart=True)
            self._create(slot)
            slot.failures = 0

    def _where_known(self, slot: _Slot) -> None:
        ref, slot.where_ref = slot.where_ref, None
        try:
            host, pid = ray.get(ref)
        except RayError as exc:
            log.debug("%s: no answer to where(): %s", self._name(slot), exc)
            return
        log.info("%s runs in pid %d on %s", self._name(slot), pid, host)

    def _supervise(self) -> None:
        while not self._stopping:
            now = time.monotonic()
            for slot in self.slots:
                if slot.run_ref is None and now >= slot.restart_at:
                    self._start(slot)
            owners: dict[Any, tuple[_Slot, bool]] = {}
            for slot in self.slots:
                if slot.run_ref is not None:
                    owners[slot.run_ref] = (slot, True)
                if slot.where_ref is not None:
                    owners[slot.where_ref] = (slot, False)
            if not owners:
                time.sleep(_WAIT_S)
                continue
            ready, _ = ray.wait(list(owners), num_returns=1, timeout=_WAIT_S)
            for ref in ready:
                slot, is_run = owners[ref]
                if is_run:
                    self._run_ended(slot)
                else:
                    self._where_known(slot)

    def _drain(self) -> None:
        running = {slot.run_ref: slot for slot in self.slots if slot.run_ref is not None}
        log.info("stopping %d actors", len(running))
        for slot in self.slots:
            slot.actor.stop.remote()
        deadline = time.monotonic() + self.settings.worker_drain_timeout_s + STOP_GRACE_S
        while running and time.monotonic() < deadline:
            ready, _ = ray.wait(list(running), num_returns=1, timeout=_WAIT_S)
            for ref in ready:
                slot = running.pop(ref)
                try:
                    log.info(
                        "%s stopped (%d points committed by its last run)",
                        self._name(slot),
                        ray.get(ref),
                    )
                except RayError as exc:
                    log.warning("%s ended with an error while stopping: %s", self._name(slot), exc)
        for slot in running.values():
            log.warning("%s did not stop in time; its entries stay pending", self._name(slot))
            ray.kill(slot.actor, no_restart=True)

    def run(self) -> int:
        self._connect()
        try:
            # After ray.init, which installs a SIGTERM handler of its own (sys.exit).
            signal.signal(signal.SIGTERM, self.stop)
            signal.signal(signal.SIGINT, self.stop)
            for slot in self.slots:
                self._create(slot)
            log.info(
                "worker pool (ray%s): %d actors",
                f" at {self.address}" if self.address else ", local",
                self.actors,
            )
            self._supervise()
            self._drain()
        finally:
            ray.shutdown()
        log.info("worker pool stopped")
        return 0


def main(settings: Settings, actors: int, address: str | None, log_level: str) -> int:
    lifecycle.set_process_title(f"fleetpulse worker pool (ray, {actors})")
    return RayWorkerPool(settings, actors, address, log_level).run()

"""``fleetpulse worker --processes N``: a supervised pool of worker processes.

Each worker is its own process (``fleetpulse worker --index i --of N``), so a crash, a leak or a
stuck C extension takes one worker down, not the pool. A worker that exits on its own is restarted
(after a delay that doubles while it keeps crashing, up to 30 s); it keeps its consumer name, so it
first re-reads the entries it had in flight. SIGTERM/SIGINT is passed to every worker, which
finishes its chunk, drains and exits; the pool exits when all have.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from types import FrameType

from fleetpulse import lifecycle

log = logging.getLogger(__name__)

RESTART_DELAY_S = 1.0
MAX_RESTART_DELAY_S = 30.0
# A worker that ran this long before dying starts again with the shortest delay.
STABLE_RUN_S = 60.0


@dataclass
class _Slot:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    delay_s: float = RESTART_DELAY_S
    restart_at: float = 0.0
    restarts: int = field(default=0)


class WorkerPool:
    """Also runs `fleetpulse ingest --processes N` (role "ingest"): same supervision."""

    def __init__(self, processes: int, log_level: str, role: str = "worker") -> None:
        self.role = role
        self.processes = processes
        self.log_level = log_level
        self.slots = [_Slot(i) for i in range(1, processes + 1)]
        self._stopping = False

    def _start(self, slot: _Slot) -> None:
        argv = [
            sys.executable,
            "-m",
            "fleetpulse",
            "--log-level",
            self.log_level,
            self.role,
            "--index",
            str(slot.index),
            "--of",
            str(self.processes),
        ]
        env = dict(os.environ)
        if self.role == "ingest":  # the pool's processes share the port, and only they do
            env["FLEETPULSE_GRPC_REUSE_PORT"] = "true"
        slot.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, env=env, preexec_fn=lifecycle.die_with_parent
        )
        slot.started_at = time.monotonic()

    def stop(self, signum: int = signal.SIGTERM, frame: FrameType | None = None) -> None:
        self._stopping = True
        for slot in self.slots:
            if slot.proc is not None and slot.proc.poll() is None:
                slot.proc.send_signal(signal.SIGTERM)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        for slot in self.slots:
            self._start(slot)
        log.info("%s pool: %d processes", self.role, self.processes)
        while True:
            now = time.monotonic()
            alive = 0
            for slot in self.slots:
                proc = slot.proc
                if proc is not None and proc.poll() is None:
                    alive += 1
                    continue
                if self._stopping:
                    continue
                if proc is not None:  # died on its own: schedule a restart
                    slot.delay_s = (
                        RESTART_DELAY_S
                        if now - slot.started_at > STABLE_RUN_S
                        else min(MAX_RESTART_DELAY_S, slot.delay_s * 2)
                    )
                    log.warning(
                        "%s %d/%d exited with status %s; restarting in %.0f s",
                        self.role,
                        slot.index,
                        self.processes,
                        proc.returncode,
                        slot.delay_s,
                    )
                    slot.proc = None
                    slot.restart_at = now + slot.delay_s
                elif now >= slot.restart_at:
                    slot.restarts += 1
                    self._start(slot)
                    alive += 1
            if self._stopping and alive == 0:
                log.info("%s pool stopped", self.role)
                return 0
            time.sleep(0.1)


def main(processes: int, log_level: str, role: str = "worker") -> int:
    lifecycle.set_process_title(f"fleetpulse {role} pool ({processes})")
    return WorkerPool(processes, log_level, role).run()

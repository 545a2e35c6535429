"""system: processes, open file descriptors, uptime, and the kernel's scheduling counters.

Sends ``processes``, ``uptime_seconds``, ``open_fds{state=allocated|max}``, and on Linux
``context_switches_total``, ``interrupts_total``, ``forks_total``, ``processes_running``,
``processes_blocked`` (waiting for I/O).
"""

from __future__ import annotations

import time

import psutil

from fleetpulse.agent.collectors.proc import LINUX, ProcReader
from fleetpulse.agent.collectors.sample import Sample

# /proc/stat line -> metric (the first number of the line)
_PROC_STAT = {
    "ctxt": "context_switches_total",
    "intr": "interrupts_total",
    "processes": "forks_total",
    "procs_running": "processes_running",
    "procs_blocked": "processes_blocked",
}


def _proc_stat_samples(text: str) -> tuple[list[Sample], float | None]:
    """The system counters of /proc/stat and the boot time (btime, Unix seconds)."""
    samples: list[Sample] = []
    boot_time = None
    for line in text.splitlines():
        key, _, rest = line.partition(" ")
        if key == "btime":
            boot_time = float(rest)
            continue
        name = _PROC_STAT.get(key)
        if name is not None:
            samples.append((name, float(rest.split(None, 1)[0]), {}))
    return samples, boot_time


class SystemCollector:
    """The system collector; holds the boot time (read from /proc/stat with its counters on
    Linux, asked of psutil once elsewhere)."""

    def __init__(self) -> None:
        self._boot_time: float | None = None

    def __call__(self, proc: ProcReader) -> list[Sample]:
        """Processes, open file descriptors (whole host, Linux) and seconds since boot."""
        extra: list[Sample] = []
        if LINUX:
            extra, self._boot_time = _proc_stat_samples(proc.read_shared("/proc/stat"))
        if self._boot_time is None:
            self._boot_time = psutil.boot_time()
        samples: list[Sample] = [
            ("processes", float(len(psutil.pids())), {}),
            ("uptime_seconds", max(0.0, time.time() - self._boot_time), {}),
        ]
        try:
            # "allocated  free  max" for the whole kernel: cheap, unlike walking every
            # /proc/<pid>/fd
            allocated, _, maximum = proc.read("/proc/sys/fs/file-nr").split()[:3]
            samples.append(("open_fds", float(allocated), {"state": "allocated"}))
            samples.append(("open_fds", float(maximum), {"state": "max"}))
        except (OSError, ValueError):
            pass  # not Linux: processes and uptime still count
        return samples + extra

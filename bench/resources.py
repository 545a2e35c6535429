"""CPU and peak RSS of each component during a run, sampled with psutil once per interval.

A component is a set of root pids plus all their descendants (PostgreSQL's backends, for one).
CPU is the user+system time each process accumulated between its first and last sample; RSS is
the sum over the component's processes at each sample (shared pages count once per process, so
PostgreSQL's shared buffers make its figure an upper bound).

Also the one-off readings the front-end benchmarks take around their window: CPU and RSS of a
list of processes, and the busy CPU time of the whole machine.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psutil


@dataclass
class ComponentUsage:
    cpu_first_s: dict[int, float] = field(default_factory=dict)
    cpu_last_s: dict[int, float] = field(default_factory=dict)
    peak_rss_bytes: int = 0

    @property
    def cpu_s(self) -> float:
        return sum(self.cpu_last_s[pid] - self.cpu_first_s[pid] for pid in self.cpu_last_s)


def _processes(roots: list[int], recursive: bool) -> list[psutil.Process]:
    found = []
    for pid in roots:
        try:
            root = psutil.Process(pid)
            found.append(root)
            if recursive:
                found += root.children(recursive=True)
        except psutil.NoSuchProcess:
            continue
    return found


class ResourceSampler(threading.Thread):
    """Samples ``components()`` (name -> (root pids, include descendants)) until stopped."""

    def __init__(
        self, components: Callable[[], dict[str, tuple[list[int], bool]]], interval_s: float = 1.0
    ) -> None:
        super().__init__(name="resource-sampler", daemon=True)
        self._components = components
        self._interval_s = interval_s
        self._stop_event = threading.Event()
        self.usage: dict[str, ComponentUsage] = {}
        self.started_at = time.monotonic()
        self.elapsed_s = 0.0

    def sample(self) -> None:
        for name, (roots, recursive) in self._components().items():
            usage = self.usage.setdefault(name, ComponentUsage())
            rss = 0
            for proc in _processes(roots, recursive):
                try:
                    with proc.oneshot():
                        times = proc.cpu_times()
                        rss += proc.memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                cpu_s = times.user + times.system
                usage.cpu_first_s.setdefault(proc.pid, cpu_s)
                usage.cpu_last_s[proc.pid] = cpu_s
            usage.peak_rss_bytes = max(usage.peak_rss_bytes, rss)

    def run(self) -> None:
        self.started_at = time.monotonic()
        while not self._stop_event.wait(self._interval_s):
            self.sample()

    def stop(self) -> dict[str, dict[str, float]]:
        """Stop sampling (after one last sample) and return the figures per component."""
        self._stop_event.set()
        self.join()
        self.sample()
        self.elapsed_s = time.monotonic() - self.started_at
        return {
            name: {
                "cpu_s": round(usage.cpu_s, 2),
                "cpu_percent_of_one_core": round(100 * usage.cpu_s / max(self.elapsed_s, 1e-9), 1),
                "peak_rss_mb": round(usage.peak_rss_bytes / 2**20, 1),
            }
            for name, usage in sorted(self.usage.items())
        }


def processes_named(name: str) -> list[int]:
    """Pids of every process with this name (external PostgreSQL or Redis on this machine)."""
    return [p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == name]


def processes_cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of these processes (those that still exist)."""
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def processes_rss_bytes(pids: list[int]) -> int:
    """RSS of these processes, summed (those that still exist)."""
    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


def machine_busy_s() -> float:
    """CPU seconds every process of the machine has used so far (all cores): a run's share of
    the machine, and anything else running at the same time, show in its difference."""
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))

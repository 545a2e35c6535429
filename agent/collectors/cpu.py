"""cpu: CPU time per mode for the whole machine and per core, from /proc/stat (psutil elsewhere).

Sends ``cpu_usage_percent{mode}`` (user, nice, system, idle, iowait, irq, softirq, steal; whole
machine), ``cpu_core_usage_percent{cpu}`` (busy: all but idle and iowait), and on Linux
``cpu_seconds_total{cpu,mode}`` (the same eight modes per core, from /proc/stat).

CPU percentages compare against the previous collection instead of sleeping (on Linux from two
reads of /proc/stat, the previous one kept in the `CpuCollector`; elsewhere psutil's
``interval=None`` mode). The first collection after start therefore covers the time since boot
(Linux) or a meaningless window; from the second collection on, each value covers exactly the time
since the previous collection. On non-Linux hosts anything else in the agent process that calls
``psutil.cpu_percent(interval=None)`` or ``psutil.cpu_times_percent(interval=None)`` shortens that
window, so nothing else should.
"""

from __future__ import annotations

import psutil

from fleetpulse.agent.collectors.proc import CLOCK_TICKS, LINUX, ProcReader
from fleetpulse.agent.collectors.sample import Sample

# /proc/stat's per-CPU columns, in order; guest and guest_nice follow but are already counted in
# user and nice, so they are left out (as psutil does for percentages).
_CPU_MODES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def _cpu_samples(stat_text: str, previous: dict[str, tuple[int, ...]]) -> list[Sample]:
    """cpu samples from /proc/stat text; ``previous`` (updated) holds the last reading."""
    samples: list[Sample] = []
    cores: list[Sample] = []
    counters: list[Sample] = []
    for line in stat_text.splitlines():
        if not line.startswith("cpu"):
            continue
        fields = line.split()
        cpu = fields[0]
        ticks = tuple(int(v) for v in fields[1 : 1 + len(_CPU_MODES)])
        ticks += (0,) * (len(_CPU_MODES) - len(ticks))  # old kernels lack steal
        before = previous.get(cpu, (0,) * len(_CPU_MODES))
        previous[cpu] = ticks
        deltas = [max(0, now - then) for now, then in zip(ticks, before, strict=True)]
        elapsed = sum(deltas)
        if cpu == "cpu":
            samples.extend(
                (
                    "cpu_usage_percent",
                    100.0 * delta / elapsed if elapsed else 0.0,
                    {"mode": mode},
                )
                for mode, delta in zip(_CPU_MODES, deltas, strict=True)
            )
            continue
        index = cpu[3:]
        busy = elapsed - deltas[3] - deltas[4]  # all but idle and iowait
        cores.append(
            ("cpu_core_usage_percent", 100.0 * busy / elapsed if elapsed else 0.0, {"cpu": index})
        )
        counters.extend(
            ("cpu_seconds_total", value / CLOCK_TICKS, {"cpu": index, "mode": mode})
            for mode, value in zip(_CPU_MODES, ticks, strict=True)
        )
    return samples + cores + counters


class CpuCollector:
    """The cpu collector; holds, per CPU ("cpu" is the whole machine, "cpu0"...), the jiffies of
    each mode at the previous collection: percentages are the deltas since then."""

    def __init__(self) -> None:
        self._previous: dict[str, tuple[int, ...]] = {}

    def __call__(self, proc: ProcReader) -> list[Sample]:
        """Whole-machine CPU time per mode and per-core usage, in percent since the previous
        call."""
        if LINUX:
            return _cpu_samples(proc.read_shared("/proc/stat"), self._previous)
        times = psutil.cpu_times_percent(interval=None)
        samples: list[Sample] = [
            ("cpu_usage_percent", float(getattr(times, mode)), {"mode": mode})
            for mode in _CPU_MODES
            if hasattr(times, mode)
        ]
        per_core = psutil.cpu_percent(interval=None, percpu=True)
        samples.extend(
            ("cpu_core_usage_percent", float(percent), {"cpu": str(index)})
            for index, percent in enumerate(per_core)
        )
        return samples

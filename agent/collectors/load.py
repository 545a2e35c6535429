"""load and pressure: how much work waits, as load averages and as pressure stall time.

- load: ``load1``, ``load5``, ``load15``.
- pressure (Linux 4.20+ with PSI; nothing elsewhere): ``pressure_stall_seconds_total{resource=cpu|
  memory|io,kind=some|full}``, time in which some (or all non-idle) tasks were stalled.
"""

from __future__ import annotations

import psutil

from fleetpulse.agent.collectors.proc import ProcReader
from fleetpulse.agent.collectors.sample import Sample


def collect_load(proc: ProcReader) -> list[Sample]:
    """Load averages over 1, 5 and 15 minutes."""
    load1, load5, load15 = psutil.getloadavg()
    return [("load1", float(load1), {}), ("load5", float(load5), {}), ("load15", float(load15), {})]


def _pressure_samples(resource: str, text: str) -> list[Sample]:
    samples: list[Sample] = []
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        for field in rest.split():
            if field.startswith("total="):  # microseconds
                seconds = int(field[6:]) / 1e6
                samples.append(
                    ("pressure_stall_seconds_total", seconds, {"resource": resource, "kind": kind})
                )
    return samples


def collect_pressure(proc: ProcReader) -> list[Sample]:
    """Pressure stall information (Linux PSI): time tasks waited for CPU, memory or I/O."""
    samples: list[Sample] = []
    for resource in ("cpu", "memory", "io"):
        try:
            text = proc.read(f"/proc/pressure/{resource}")
        except OSError:
            continue  # no PSI (kernel < 4.20, psi=0, not Linux): nothing to send
        samples.extend(_pressure_samples(resource, text))
    return samples

"""The scheduler: runs the collectors that are due, once per collection, none of which sleeps.

`Scheduler` is an object its owner keeps for as long as it collects (the agent daemon; or
``fleetpulse agent --once`` and the benchmarks): it holds everything that lasts from one
collection to the next (the kernel files kept open, the previous CPU reading, the mount table
watch, when each slow collector last ran, which collectors are failing), so that nothing of it is
module state and two schedulers never share any.

Measured cost of a full collection inside the running agent on a 2-core Linux VM with one disk and
four network interfaces (caches cold, as they are once a second): see docs/performance.md.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType

from fleetpulse.agent.collectors.cpu import CpuCollector
from fleetpulse.agent.collectors.disk import DiskCollector, collect_diskio
from fleetpulse.agent.collectors.load import collect_load, collect_pressure
from fleetpulse.agent.collectors.memory import collect_meminfo, collect_memory, collect_vmstat
from fleetpulse.agent.collectors.network import collect_netstat, collect_network, collect_sockstat
from fleetpulse.agent.collectors.proc import ProcReader
from fleetpulse.agent.collectors.sample import Sample
from fleetpulse.agent.collectors.system import SystemCollector
from fleetpulse.agent.collectors.tcp import collect_tcp

logger = logging.getLogger(__name__)

# A collector: reads through the scheduler's ProcReader and returns its samples; may raise.
Collector = Callable[[ProcReader], list[Sample]]

# Collectors that run less often than every collection by default, in seconds between runs.
# tcp: the kernel answers a TCP-state dump by walking its whole established-connection hash
# table, whose size follows the host's memory, not its connections: 1.6 to 2.8 ms of CPU per
# collection on the 24 GiB development VM with 40 sockets, more than all other collectors
# together. Established and TIME_WAIT counts come every collection from cheap counters
# (netstat: tcp_current_established; sockstat: sockets_tcp_time_wait).
DEFAULT_INTERVALS_S: Mapping[str, float] = MappingProxyType({"tcp": 60.0})


class Scheduler:
    """The agent's collectors and their state between collections; `collect` runs them."""

    def __init__(self) -> None:
        self.proc = ProcReader()
        self._disk = DiskCollector()
        # names.COLLECTORS, in its order (the order of the samples, so of the series in a batch).
        self.collectors: dict[str, Collector] = {
            "cpu": CpuCollector(),
            "load": collect_load,
            "memory": collect_memory,
            "meminfo": collect_meminfo,
            "vmstat": collect_vmstat,
            "disk": self._disk,
            "diskio": collect_diskio,
            "network": collect_network,
            "system": SystemCollector(),
            "tcp": collect_tcp,
            "pressure": collect_pressure,
            "sockstat": collect_sockstat,
            "netstat": collect_netstat,
        }
        # Collectors that failed on their last run: a broken collector is logged when it starts
        # failing and when it recovers, not once per collection.
        self._failing: set[str] = set()
        # Per collector with an interval: time.monotonic() of its last run.
        self._last_run: dict[str, float] = {}

    def collect(
        self, enabled: frozenset[str] | None = None, intervals_s: Mapping[str, float] | None = None
    ) -> tuple[list[Sample], dict[str, str]]:
        """Run the enabled collectors (all when ``enabled`` is None) that are due; never raises.

        ``intervals_s`` (default ``DEFAULT_INTERVALS_S``) names collectors that run at most once
        per so many seconds; 0 means every collection. Returns the samples and, for each collector
        that raised, ``"ExceptionType: message"``. A failing collector is skipped so that one
        broken source never costs the others their samples.
        """
        samples: list[Sample] = []
        errors: dict[str, str] = {}
        self.proc.begin_collection()
        try:
            self._run(
                enabled,
                DEFAULT_INTERVALS_S if intervals_s is None else intervals_s,
                samples,
                errors,
            )
        finally:
            self.proc.end_collection()
        return samples, errors

    def close(self) -> None:
        """Close the kernel files kept open between collections; idempotent (a later collection
        opens them again)."""
        self.proc.close()
        self._disk.close()

    def _due(self, name: str, intervals_s: Mapping[str, float], now: float) -> bool:
        interval_s = intervals_s.get(name, 0.0)
        if interval_s <= 0:
            return True
        last = self._last_run.get(name)
        # A little early counts as due: a 60 s interval with 30 s collections means every second
        # collection, not every third because of timer jitter.
        if last is not None and now - last < interval_s * 0.95:
            return False
        self._last_run[name] = now
        return True

    def _run(
        self,
        enabled: frozenset[str] | None,
        intervals_s: Mapping[str, float],
        samples: list[Sample],
        errors: dict[str, str],
    ) -> None:
        now = time.monotonic()
        proc = self.proc
        for name, collector in self.collectors.items():
            if enabled is not None and name not in enabled:
                continue
            if not self._due(name, intervals_s, now):
                continue
            try:
                collected = collector(proc)
            except Exception as exc:
                errors[name] = f"{type(exc).__name__}: {exc}"
                if name not in self._failing:
                    self._failing.add(name)
                    logger.warning("collector %s failed, skipping it: %s", name, errors[name])
                continue
            if name in self._failing:
                self._failing.discard(name)
                logger.info("collector %s works again", name)
            samples.extend(collected)

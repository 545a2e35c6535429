"""memory, meminfo and vmstat: what holds the memory, and what paging and reclaim cost.

- memory: ``memory_bytes{state}`` (total, used, available, cached, buffers),
  ``swap_bytes{state}`` (total, used).
- meminfo (Linux): ``meminfo_bytes{field}``, the /proc/meminfo fields in ``_MEMINFO_FIELDS``
  (kernel names, lower case, ``(anon)`` as ``_anon``: ``dirty``, ``active_file``, ``slab``...).
- vmstat (Linux): ``vm_page_faults_total``, ``vm_major_page_faults_total``,
  ``vm_paged_bytes_total{direction=in|out}`` (block I/O paging),
  ``vm_swapped_bytes_total{direction}``, ``vm_pages_scanned_total{by=kswapd|direct}``,
  ``vm_pages_reclaimed_total{by}``, ``vm_oom_kills_total``.
"""

from __future__ import annotations

import psutil

from fleetpulse.agent.collectors.proc import LINUX, PAGE_BYTES, ProcReader
from fleetpulse.agent.collectors.sample import Sample

_MEMORY_STATES = ("total", "used", "available", "cached", "buffers")


def _memory_samples(meminfo_text: str) -> list[Sample]:
    """memory_bytes and swap_bytes from /proc/meminfo, computed as psutil 7's virtual_memory()
    and swap_memory() do: cached includes SReclaimable (as free(1) shows it) and used is
    total - available."""
    kib: dict[str, int] = {}
    for line in meminfo_text.splitlines():
        key, _, rest = line.partition(":")
        kib[key] = int(rest.split(None, 1)[0])
    total = kib["MemTotal"] * 1024
    free = kib["MemFree"] * 1024
    buffers = kib.get("Buffers", 0) * 1024
    cached = (kib.get("Cached", 0) + kib.get("SReclaimable", 0)) * 1024
    available = kib.get("MemAvailable", 0) * 1024
    if not available:  # before kernel 3.14, or the kernel bug psutil works around: its estimate
        available = psutil.virtual_memory().available
    if available > total:  # inside some containers
        available = free
    used = total - available
    swap_total = kib.get("SwapTotal", 0) * 1024
    swap_used = swap_total - kib.get("SwapFree", 0) * 1024
    return [
        ("memory_bytes", float(total), {"state": "total"}),
        ("memory_bytes", float(used), {"state": "used"}),
        ("memory_bytes", float(available), {"state": "available"}),
        ("memory_bytes", float(cached), {"state": "cached"}),
        ("memory_bytes", float(buffers), {"state": "buffers"}),
        ("swap_bytes", float(swap_total), {"state": "total"}),
        ("swap_bytes", float(swap_used), {"state": "used"}),
    ]


def collect_memory(proc: ProcReader) -> list[Sample]:
    """Physical memory and swap, in bytes."""
    if LINUX:
        return _memory_samples(proc.read_shared("/proc/meminfo"))
    memory = psutil.virtual_memory()
    samples: list[Sample] = [
        ("memory_bytes", float(getattr(memory, state)), {"state": state})
        for state in _MEMORY_STATES
        if hasattr(memory, state)
    ]
    swap = psutil.swap_memory()
    samples.append(("swap_bytes", float(swap.total), {"state": "total"}))
    samples.append(("swap_bytes", float(swap.used), {"state": "used"}))
    return samples


# The /proc/meminfo fields an operator reads when memory runs short (what holds it, what can be
# reclaimed, what is committed); all in kB there. Absent fields (older kernels) are skipped.
_MEMINFO_FIELDS = {
    "MemTotal": "memtotal",
    "MemFree": "memfree",
    "MemAvailable": "memavailable",
    "Buffers": "buffers",
    "Cached": "cached",
    "SwapCached": "swapcached",
    "Active": "active",
    "Inactive": "inactive",
    "Active(anon)": "active_anon",
    "Inactive(anon)": "inactive_anon",
    "Active(file)": "active_file",
    "Inactive(file)": "inactive_file",
    "Unevictable": "unevictable",
    "Mlocked": "mlocked",
    "SwapTotal": "swaptotal",
    "SwapFree": "swapfree",
    "Dirty": "dirty",
    "Writeback": "writeback",
    "AnonPages": "anonpages",
    "Mapped": "mapped",
    "Shmem": "shmem",
    "KReclaimable": "kreclaimable",
    "Slab": "slab",
    "SReclaimable": "sreclaimable",
    "SUnreclaim": "sunreclaim",
    "KernelStack": "kernelstack",
    "PageTables": "pagetables",
    "CommitLimit": "commitlimit",
    "Committed_AS": "committed_as",
    "VmallocUsed": "vmallocused",
    "Percpu": "percpu",
    "HardwareCorrupted": "hardwarecorrupted",
    "AnonHugePages": "anonhugepages",
    "Hugetlb": "hugetlb",
}


def _meminfo_samples(text: str) -> list[Sample]:
    samples: list[Sample] = []
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        field = _MEMINFO_FIELDS.get(key)
        if field is None:
            continue
        parts = rest.split()
        factor = 1024 if parts[1:2] == ["kB"] else 1
        samples.append(("meminfo_bytes", float(int(parts[0]) * factor), {"field": field}))
    return samples


def collect_meminfo(proc: ProcReader) -> list[Sample]:
    """Detailed kernel memory accounting (Linux /proc/meminfo), in bytes."""
    return _meminfo_samples(proc.read_shared("/proc/meminfo")) if LINUX else []


# /proc/vmstat counter -> (metric, labels, factor to the metric's unit)
_VMSTAT = {
    "pgfault": ("vm_page_faults_total", {}, 1),
    "pgmajfault": ("vm_major_page_faults_total", {}, 1),
    "pgpgin": ("vm_paged_bytes_total", {"direction": "in"}, 1024),  # counted in KiB
    "pgpgout": ("vm_paged_bytes_total", {"direction": "out"}, 1024),
    "pswpin": ("vm_swapped_bytes_total", {"direction": "in"}, PAGE_BYTES),  # in pages
    "pswpout": ("vm_swapped_bytes_total", {"direction": "out"}, PAGE_BYTES),
    "pgscan_kswapd": ("vm_pages_scanned_total", {"by": "kswapd"}, 1),
    "pgscan_direct": ("vm_pages_scanned_total", {"by": "direct"}, 1),
    "pgsteal_kswapd": ("vm_pages_reclaimed_total", {"by": "kswapd"}, 1),
    "pgsteal_direct": ("vm_pages_reclaimed_total", {"by": "direct"}, 1),
    "oom_kill": ("vm_oom_kills_total", {}, 1),
}


def _vmstat_samples(text: str) -> list[Sample]:
    samples: list[Sample] = []
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        known = _VMSTAT.get(key)
        if known is not None:
            name, labels, factor = known
            samples.append((name, float(int(value) * factor), dict(labels)))
    return samples


def collect_vmstat(proc: ProcReader) -> list[Sample]:
    """Paging, swapping, reclaim and OOM kills (Linux /proc/vmstat), cumulative."""
    return _vmstat_samples(proc.read("/proc/vmstat")) if LINUX else []

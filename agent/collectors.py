"""Host metrics, from the kernel's files or psutil: one cheap function per collector, none sleeps.

A sample is ``(name, value, labels)``. Names are Prometheus-style (``[a-zA-Z_:][a-zA-Z0-9_:]*``)
with the unit in the name (``memory_bytes``, ``cpu_usage_percent``).

Counters are sent as the raw cumulative values the kernel reports, with a ``_total`` suffix
(``net_bytes_total``, ``disk_reads_total``); the query side computes rates. Sending raw counters
rather than per-interval deltas keeps the agent stateless across restarts and makes a lost or
replayed batch harmless: a rate over the next two points is still right. Counters reset when the
host reboots or a device reappears; the query side treats a decrease as a reset.

On Linux most collectors read the kernel's own files (/proc, /sys, a netlink socket) directly:
one read per file, parsed once, which costs a fraction of the equivalent psutil calls and gives
fields psutil does not expose; elsewhere they fall back to psutil or skip what does not exist.

CPU percentages compare against the previous collection in this process instead of sleeping (on
Linux from two reads of /proc/stat kept here; elsewhere psutil's ``interval=None`` mode). The first
collection after start therefore covers the time since boot (Linux) or a meaningless window; from
the second collection on, each value covers exactly the time since the previous collection. On
non-Linux hosts anything else in the agent process that calls ``psutil.cpu_percent(interval=None)``
or ``psutil.cpu_times_percent(interval=None)`` shortens that window, so nothing else should.

What each collector sends (``{label}``; counters are raw kernel values, units in the name):

- cpu: ``cpu_usage_percent{mode}`` (user, nice, system, idle, iowait, irq, softirq, steal; whole
  machine), ``cpu_core_usage_percent{cpu}`` (busy: all but idle and iowait), and on Linux
  ``cpu_seconds_total{cpu,mode}`` (the same eight modes per core, from /proc/stat).
- load: ``load1``, ``load5``, ``load15``.
- memory: ``memory_bytes{state}`` (total, used, available, cached, buffers),
  ``swap_bytes{state}`` (total, used).
- meminfo (Linux): ``meminfo_bytes{field}``, the /proc/meminfo fields in ``_MEMINFO_FIELDS``
  (kernel names, lower case, ``(anon)`` as ``_anon``: ``dirty``, ``active_file``, ``slab``...).
- vmstat (Linux): ``vm_page_faults_total``, ``vm_major_page_faults_total``,
  ``vm_paged_bytes_total{direction=in|out}`` (block I/O paging), ``vm_swapped_bytes_total{direction}``,
  ``vm_pages_scanned_total{by=kswapd|direct}``, ``vm_pages_reclaimed_total{by}``,
  ``vm_oom_kills_total``.
- disk: per mounted real filesystem ``{mountpoint,device,fstype}``: ``disk_bytes{state}`` (total,
  used, free: free to unprivileged users), ``disk_inodes{state}`` (total, used, free) and
  ``disk_readonly`` (1 when mounted read-only, which is how ext4 reacts to errors).
- diskio: per block device ``{device}``: ``disk_read_bytes_total``, ``disk_written_bytes_total``,
  ``disk_reads_total``, ``disk_writes_total``, ``disk_reads_merged_total``,
  ``disk_writes_merged_total``, ``disk_read_time_seconds_total``, ``disk_write_time_seconds_total``,
  ``disk_io_time_seconds_total`` (busy time: its rate is the utilisation) and
  ``disk_io_weighted_seconds_total`` (its rate is the average queue depth); the last six on Linux.
- network: per interface ``{interface,direction=rx|tx}``: ``net_bytes_total``,
  ``net_packets_total``, ``net_errors_total``, ``net_drops_total``, ``net_fifo_errors_total``,
  ``net_compressed_packets_total``; rx only: ``net_multicast_packets_total``,
  ``net_frame_errors_total``; tx only: ``net_collisions_total``, ``net_carrier_errors_total``
  (the fields after drops on Linux only).
- system: ``processes``, ``uptime_seconds``, ``open_fds{state=allocated|max}``, and on Linux
  ``context_switches_total``, ``interrupts_total``, ``forks_total``, ``processes_running``,
  ``processes_blocked`` (waiting for I/O).
- tcp: ``tcp_connections{state}``, TCP sockets (IPv4 and IPv6) by state; once a minute by default
  (``DEFAULT_INTERVALS_S``: what it costs the kernel).
- pressure (Linux 4.20+ with PSI; nothing elsewhere): ``pressure_stall_seconds_total{resource=cpu|
  memory|io,kind=some|full}``, time in which some (or all non-idle) tasks were stalled.
- sockstat (Linux): ``sockets_used``, ``sockets_in_use{protocol}`` (tcp, udp, udplite, raw and
  their IPv6 forms), ``sockets_tcp_orphaned``, ``sockets_tcp_time_wait``,
  ``sockets_tcp_allocated``, ``sockets_memory_bytes{protocol=tcp|udp|frag}``.
- netstat (Linux): TCP (IPv4 and IPv6 together) ``tcp_current_established`` (a gauge:
  ESTABLISHED and CLOSE_WAIT), ``tcp_active_opens_total``, ``tcp_passive_opens_total``,
  ``tcp_failed_attempts_total``, ``tcp_established_resets_total``,
  ``tcp_segments_total{direction}``, ``tcp_retransmitted_segments_total``,
  ``tcp_receive_errors_total``, ``tcp_resets_sent_total``, ``tcp_listen_overflows_total``,
  ``tcp_listen_drops_total``; UDP over IPv4 ``udp_datagrams_total{direction}``,
  ``udp_no_port_total``, ``udp_receive_errors_total``, ``udp_receive_buffer_errors_total``,
  ``udp_send_buffer_errors_total``.

Measured cost of a full ``collect()`` inside the running agent on a 2-core Linux VM with one disk
and four network interfaces (caches cold, as they are once a second): see docs/performance.md.

Every sample gets a label dict of its own, so a consumer may change one without touching others.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import select
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeAlias

import psutil

logger = logging.getLogger(__name__)

Sample: TypeAlias = tuple[str, float, dict[str, str]]

LINUX = sys.platform.startswith("linux")

# Filesystems that hold no user data or are always full by construction (squashfs snaps, ISO
# images mounted by container runtimes): their usage would only add noise and series.
PSEUDO_FSTYPES = frozenset(
    {
        "autofs",
        "binfmt_misc",
        "bpf",
        "cgroup",
        "cgroup2",
        "configfs",
        "debugfs",
        "devfs",
        "devpts",
        "devtmpfs",
        "efivarfs",
        "fuse.gvfsd-fuse",
        "fuse.lxcfs",
        "fuse.portal",
        "fusectl",
        "hugetlbfs",
        "mqueue",
        "nsfs",
        "nullfs",
        "overlay",
        "proc",
        "pstore",
        "ramfs",
        "rpc_pipefs",
        "securityfs",
        "selinuxfs",
        "squashfs",
        "sysfs",
        "tmpfs",
        "tracefs",
    }
)

# Block devices backed by memory or by files on another disk: their I/O is counted elsewhere
# (zram is compressed RAM, usually swap; loop devices carry snaps and images).
VIRTUAL_BLOCK_DEVICE_PREFIXES = ("loop", "ram", "zram")

# /proc/stat's per-CPU columns, in order; guest and guest_nice follow but are already counted in
# user and nice, so they are left out (as psutil does for percentages).
_CPU_MODES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
_MEMORY_STATES = ("total", "used", "available", "cached", "buffers")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

# Collectors that failed on their last run: a broken collector is logged when it starts failing
# and when it recovers, not once per collection.
_failing: set[str] = set()


# Kernel files read every collection stay open: a pread at offset 0 makes the kernel generate the
# file afresh (seq_file and sysctl files alike), without an open and a close each time (about
# 20 us saved per file per collection on the 2-core development VM, more than the parse of most).
_open_files: dict[str, int] = {}
_READ_CHUNK = 65536


def _read(path: str) -> str:
    fd = _open_files.get(path)
    if fd is None:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        _open_files[path] = fd
    try:
        data = os.pread(fd, _READ_CHUNK, 0)
        while len(data) % _READ_CHUNK == 0 and data:  # a file larger than one read
            more = os.pread(fd, _READ_CHUNK, len(data))
            if not more:
                break
            data += more
    except OSError:
        del _open_files[path]
        os.close(fd)
        raise
    return data.decode()


def close_files() -> None:
    """Close the kernel files kept open between collections."""
    for fd in _open_files.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    _open_files.clear()


# While collect() runs: the files already read in this collection, so that collectors reading the
# same file (/proc/stat: cpu and system; /proc/meminfo: memory and meminfo) read it once.
_this_collection: dict[str, str] | None = None


def _read_shared(path: str) -> str:
    if _this_collection is None:
        return _read(path)
    text = _this_collection.get(path)
    if text is None:
        text = _this_collection[path] = _read(path)
    return text


# -- cpu --------------------------------------------------------------------------------------

# Per CPU ("cpu" is the whole machine, "cpu0"...), the jiffies of _CPU_MODES at the previous
# collection: percentages are the deltas since then.
_cpu_previous: dict[str, tuple[int, ...]] = {}


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
            ("cpu_seconds_total", value / _CLOCK_TICKS, {"cpu": index, "mode": mode})
            for mode, value in zip(_CPU_MODES, ticks, strict=True)
        )
    return samples + cores + counters


def collect_cpu() -> list[Sample]:
    """Whole-machine CPU time per mode and per-core usage, in percent since the previous call."""
    if LINUX:
        return _cpu_samples(_read_shared("/proc/stat"), _cpu_previous)
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


def collect_load() -> list[Sample]:
    """Load averages over 1, 5 and 15 minutes."""
    load1, load5, load15 = psutil.getloadavg()
    return [("load1", float(load1), {}), ("load5", float(load5), {}), ("load15", float(load15), {})]


# -- memory -----------------------------------------------------------------------------------


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


def collect_memory() -> list[Sample]:
    """Physical memory and swap, in bytes."""
    if LINUX:
        return _memory_samples(_read_shared("/proc/meminfo"))
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


def collect_meminfo() -> list[Sample]:
    """Detailed kernel memory accounting (Linux /proc/meminfo), in bytes."""
    return _meminfo_samples(_read_shared("/proc/meminfo")) if LINUX else []


# /proc/vmstat counter -> (metric, labels, factor to the metric's unit)
_VMSTAT = {
    "pgfault": ("vm_page_faults_total", {}, 1),
    "pgmajfault": ("vm_major_page_faults_total", {}, 1),
    "pgpgin": ("vm_paged_bytes_total", {"direction": "in"}, 1024),  # counted in KiB
    "pgpgout": ("vm_paged_bytes_total", {"direction": "out"}, 1024),
    "pswpin": ("vm_swapped_bytes_total", {"direction": "in"}, _PAGE_BYTES),  # in pages
    "pswpout": ("vm_swapped_bytes_total", {"direction": "out"}, _PAGE_BYTES),
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


def collect_vmstat() -> list[Sample]:
    """Paging, swapping, reclaim and OOM kills (Linux /proc/vmstat), cumulative."""
    return _vmstat_samples(_read("/proc/vmstat")) if LINUX else []


# -- disks ------------------------------------------------------------------------------------


# The mounted filesystems, listed again only when the mount table changed: Linux flags a change
# to /proc/self/mounts as POLLPRI to whoever has it open (as systemd and libmount watch it).
_mounts_poll: select.poll | None = None
_partitions: list[Any] | None = None


def _mounted() -> list[Any]:
    global _mounts_poll, _partitions
    if not LINUX or not hasattr(select, "poll"):
        return psutil.disk_partitions(all=False)
    if _mounts_poll is None:
        fd = os.open("/proc/self/mounts", os.O_RDONLY | os.O_CLOEXEC)
        _mounts_poll = select.poll()
        _mounts_poll.register(fd, select.POLLPRI)
        _partitions = None
    if _partitions is None or _mounts_poll.poll(0):
        _partitions = psutil.disk_partitions(all=False)
    return _partitions


def collect_disk() -> list[Sample]:
    """Space and inodes on each mounted real filesystem, once per device."""
    # all=False already leaves out network filesystems on Linux (they are "nodev"), so a hung
    # NFS server cannot block statvfs() here.
    return _disk_samples(_mounted(), os.statvfs)


_ST_RDONLY = getattr(os, "ST_RDONLY", 1)


def _disk_samples(partitions: Iterable[Any], statvfs: Callable[[str], Any]) -> list[Sample]:
    samples: list[Sample] = []
    seen_devices: set[str] = set()
    for partition in partitions:
        if partition.fstype in PSEUDO_FSTYPES or partition.device in seen_devices:
            continue
        try:
            st = statvfs(partition.mountpoint)
        except OSError:
            # Unmounted since it was listed, or not readable by the agent's user: not an error
            # of the collector, and the other filesystems are still worth reporting.
            continue
        # A device mounted twice (bind mounts) would report the same space twice; the first
        # readable mount listed is normally the original one.
        seen_devices.add(partition.device)
        labels = {
            "mountpoint": partition.mountpoint,
            "device": partition.device,
            "fstype": partition.fstype,
        }
        # As psutil.disk_usage: used counts the root-reserved blocks, free does not.
        total = st.f_blocks * st.f_frsize
        used = (st.f_blocks - st.f_bfree) * st.f_frsize
        samples.append(("disk_bytes", float(total), {**labels, "state": "total"}))
        samples.append(("disk_bytes", float(used), {**labels, "state": "used"}))
        samples.append(
            ("disk_bytes", float(st.f_bavail * st.f_frsize), {**labels, "state": "free"})
        )
        if st.f_files:  # 0 on filesystems without a fixed inode table (btrfs reports some)
            samples.append(("disk_inodes", float(st.f_files), {**labels, "state": "total"}))
            inodes_used = float(st.f_files - st.f_ffree)
            samples.append(("disk_inodes", inodes_used, {**labels, "state": "used"}))
            samples.append(("disk_inodes", float(st.f_favail), {**labels, "state": "free"}))
        samples.append(("disk_readonly", 1.0 if st.f_flag & _ST_RDONLY else 0.0, dict(labels)))
    return samples


# /proc/diskstats columns after major, minor, name (Documentation/admin-guide/iostats.rst):
# (column index, metric, factor): sectors are 512 bytes whatever the device, times are in ms.
_DISKSTATS = (
    (5, "disk_read_bytes_total", 512),
    (9, "disk_written_bytes_total", 512),
    (3, "disk_reads_total", 1),
    (7, "disk_writes_total", 1),
    (4, "disk_reads_merged_total", 1),
    (8, "disk_writes_merged_total", 1),
    (6, "disk_read_time_seconds_total", 0.001),
    (10, "disk_write_time_seconds_total", 0.001),
    (12, "disk_io_time_seconds_total", 0.001),
    (13, "disk_io_weighted_seconds_total", 0.001),
)


def _diskstats_samples(text: str) -> list[Sample]:
    samples: list[Sample] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 14 or fields[2].startswith(VIRTUAL_BLOCK_DEVICE_PREFIXES):
            continue
        device = fields[2]
        samples.extend(
            (name, float(int(fields[column]) * factor), {"device": device})
            for column, name, factor in _DISKSTATS
        )
    return samples


def collect_diskio() -> list[Sample]:
    """Cumulative I/O per block device (whole disks and partitions alike)."""
    if LINUX:
        try:
            return _diskstats_samples(_read("/proc/diskstats"))
        except FileNotFoundError:
            return []  # no disk statistics (some containers)
    # None when the kernel exposes no disk statistics.
    per_disk = psutil.disk_io_counters(perdisk=True) or {}
    samples: list[Sample] = []
    for device, io in per_disk.items():
        if device.startswith(VIRTUAL_BLOCK_DEVICE_PREFIXES):
            continue
        samples.append(("disk_read_bytes_total", float(io.read_bytes), {"device": device}))
        samples.append(("disk_written_bytes_total", float(io.write_bytes), {"device": device}))
        samples.append(("disk_reads_total", float(io.read_count), {"device": device}))
        samples.append(("disk_writes_total", float(io.write_count), {"device": device}))
    return samples


# -- network ----------------------------------------------------------------------------------

# /proc/net/dev columns after the interface name: rx bytes packets errs drop fifo frame compressed
# multicast, then tx bytes packets errs drop fifo colls carrier compressed.
_NET_DEV = (
    ("net_bytes_total", 0, 8),
    ("net_packets_total", 1, 9),
    ("net_errors_total", 2, 10),
    ("net_drops_total", 3, 11),
    ("net_fifo_errors_total", 4, 12),
    ("net_compressed_packets_total", 6, 15),
)
_NET_DEV_RX = (("net_frame_errors_total", 5), ("net_multicast_packets_total", 7))
_NET_DEV_TX = (("net_collisions_total", 13), ("net_carrier_errors_total", 14))


def _net_dev_samples(text: str) -> list[Sample]:
    samples: list[Sample] = []
    for line in text.splitlines()[2:]:
        interface, _, rest = line.partition(":")
        values = rest.split()
        if len(values) < 16:
            continue
        interface = interface.strip()
        for name, rx, tx in _NET_DEV:
            samples.append((name, float(values[rx]), {"interface": interface, "direction": "rx"}))
            samples.append((name, float(values[tx]), {"interface": interface, "direction": "tx"}))
        for name, column in _NET_DEV_RX:
            samples.append(
                (name, float(values[column]), {"interface": interface, "direction": "rx"})
            )
        for name, column in _NET_DEV_TX:
            samples.append(
                (name, float(values[column]), {"interface": interface, "direction": "tx"})
            )
    return samples


def collect_network() -> list[Sample]:
    """Cumulative bytes, packets, errors and drops per network interface and direction."""
    if LINUX:
        return _net_dev_samples(_read("/proc/net/dev"))
    samples: list[Sample] = []
    for interface, io in psutil.net_io_counters(pernic=True).items():
        for name, rx_value, tx_value in (
            ("net_bytes_total", io.bytes_recv, io.bytes_sent),
            ("net_packets_total", io.packets_recv, io.packets_sent),
            ("net_errors_total", io.errin, io.errout),
            ("net_drops_total", io.dropin, io.dropout),
        ):
            samples.append((name, float(rx_value), {"interface": interface, "direction": "rx"}))
            samples.append((name, float(tx_value), {"interface": interface, "direction": "tx"}))
    return samples


# -- system -----------------------------------------------------------------------------------

# /proc/stat line -> metric (the first number of the line)
_PROC_STAT = {
    "ctxt": "context_switches_total",
    "intr": "interrupts_total",
    "processes": "forks_total",
    "procs_running": "processes_running",
    "procs_blocked": "processes_blocked",
}

_boot_time: float | None = None


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


def collect_system() -> list[Sample]:
    """Processes, open file descriptors (whole host, Linux) and seconds since boot."""
    global _boot_time
    extra: list[Sample] = []
    if LINUX:
        extra, _boot_time = _proc_stat_samples(_read_shared("/proc/stat"))
    if _boot_time is None:
        _boot_time = psutil.boot_time()
    samples: list[Sample] = [
        ("processes", float(len(psutil.pids())), {}),
        ("uptime_seconds", max(0.0, time.time() - _boot_time), {}),
    ]
    try:
        # "allocated  free  max" for the whole kernel: cheap, unlike walking every /proc/<pid>/fd
        allocated, _, maximum = _read("/proc/sys/fs/file-nr").split()[:3]
        samples.append(("open_fds", float(allocated), {"state": "allocated"}))
        samples.append(("open_fds", float(maximum), {"state": "max"}))
    except (OSError, ValueError):
        pass  # not Linux: processes and uptime still count
    return samples + extra


# -- tcp --------------------------------------------------------------------------------------

# TCP states (include/net/tcp_states.h); /proc/net/tcp shows them as two hex digits. 12 is
# NEW_SYN_RECV (a request socket): /proc/net/tcp shows those as SYN_RECV too.
_TCP_STATES = {
    1: "established",
    2: "syn_sent",
    3: "syn_recv",
    4: "fin_wait1",
    5: "fin_wait2",
    6: "time_wait",
    7: "close",
    8: "close_wait",
    9: "last_ack",
    10: "listen",
    11: "closing",
    12: "syn_recv",
}

# netlink inet_diag (linux/inet_diag.h): the original request, TCPDIAG_GETSOCK with struct
# inet_diag_req, which the kernel answers for IPv4 and IPv6 sockets in one walk of its tables
# (the newer SOCK_DIAG_BY_FAMILY request takes one walk per family, twice the CPU).
_NETLINK_INET_DIAG = 4
_TCPDIAG_GETSOCK = 18
_NLM_F_REQUEST_DUMP = 0x1 | 0x300
_NLMSG_ERROR = 2
_NLMSG_DONE = 3
_NLMSG_HEADER = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
_ALL_TCP_STATES = sum(1 << state for state in _TCP_STATES)


def _count_inet_diag(data: bytes, counts: dict[int, int]) -> bool:
    """Count the sockets of one netlink reply by state (inet_diag_msg.idiag_state, the byte
    after idiag_family); True when the dump is complete."""
    offset = 0
    while offset + _NLMSG_HEADER.size <= len(data):
        length, kind, _, _, _ = _NLMSG_HEADER.unpack_from(data, offset)
        if kind == _NLMSG_DONE:
            return True
        if kind == _NLMSG_ERROR:
            (error,) = struct.unpack_from("=i", data, offset + _NLMSG_HEADER.size)
            raise OSError(-error, os.strerror(-error))
        if length < _NLMSG_HEADER.size + 2:
            raise OSError("malformed netlink message")
        state = data[offset + _NLMSG_HEADER.size + 1]
        counts[state] = counts.get(state, 0) + 1
        offset += (length + 3) & ~3
    return False


def _tcp_counts_netlink() -> dict[int, int]:
    """TCP sockets by state from the kernel over netlink (as ``ss`` does).

    Reading /proc/net/tcp{,6} makes the kernel format every socket as text and walk its whole
    connection hash table once per file: about 2.5 ms of CPU a collection on a 2-core VM with 100
    sockets, against about 0.25 ms here.
    """
    counts: dict[int, int] = {}
    # inet_diag_req: family, src_len, dst_len, ext, an empty inet_diag_sockid, states, dbs
    request = struct.pack("=BBBB48xII", socket.AF_INET, 0, 0, 0, _ALL_TCP_STATES, 0)
    header = _NLMSG_HEADER.pack(
        _NLMSG_HEADER.size + len(request), _TCPDIAG_GETSOCK, _NLM_F_REQUEST_DUMP, 1, 0
    )
    with socket.socket(
        socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, _NETLINK_INET_DIAG
    ) as sock:
        sock.sendto(header + request, (0, 0))
        while not _count_inet_diag(sock.recv(65536), counts):
            pass
    return counts


def _tcp_counts_proc() -> dict[int, int] | None:
    counts: dict[int, int] = {}
    found = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = _read(table).splitlines()[1:]
        except OSError:
            continue
        found = True
        for line in lines:
            fields = line.split(None, 4)
            if len(fields) > 3:
                state = int(fields[3], 16)
                counts[state] = counts.get(state, 0) + 1
    return counts if found else None


def collect_tcp() -> list[Sample]:
    """TCP connections by state (IPv4 and IPv6), from the kernel's socket tables on Linux.

    psutil.net_connections() would map every socket to its process by walking every
    /proc/<pid>/fd, which costs milliseconds and needs root; the kernel's tables are enough.
    """
    totals = dict.fromkeys(_TCP_STATES.values(), 0)
    counts: dict[int, int] | None = None
    if LINUX:
        try:
            counts = _tcp_counts_netlink()
        except OSError:  # netlink refused (seccomp, old kernel): the text tables
            counts = _tcp_counts_proc()
    if counts is not None:
        for code, n in counts.items():
            name = _TCP_STATES.get(code)
            if name is not None:
                totals[name] += n
    else:
        for conn in psutil.net_connections(kind="tcp"):
            status = str(conn.status).lower()
            totals[status] = totals.get(status, 0) + 1
    return [("tcp_connections", float(n), {"state": state}) for state, n in totals.items()]


# -- pressure, sockets, protocol counters (Linux) ---------------------------------------------


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


def collect_pressure() -> list[Sample]:
    """Pressure stall information (Linux PSI): time tasks waited for CPU, memory or I/O."""
    samples: list[Sample] = []
    for resource in ("cpu", "memory", "io"):
        try:
            text = _read(f"/proc/pressure/{resource}")
        except OSError:
            continue  # no PSI (kernel < 4.20, psi=0, not Linux): nothing to send
        samples.extend(_pressure_samples(resource, text))
    return samples


def _sockstat_samples(text: str, ipv6: bool = False) -> list[Sample]:
    """/proc/net/sockstat (or sockstat6, ``ipv6``) as samples."""
    samples: list[Sample] = []
    suffix = "6" if ipv6 else ""
    for line in text.splitlines():
        head, _, rest = line.partition(":")
        values = rest.split()
        fields = dict(zip(values[::2], values[1::2], strict=False))
        protocol = head.lower().removesuffix("6")
        if protocol == "sockets" and "used" in fields:
            samples.append(("sockets_used", float(fields["used"]), {}))
            continue
        if protocol not in ("tcp", "udp", "udplite", "raw"):
            if protocol == "frag" and "memory" in fields and not ipv6:
                samples.append(
                    ("sockets_memory_bytes", float(fields["memory"]), {"protocol": "frag"})
                )
            continue
        if "inuse" in fields:
            samples.append(
                ("sockets_in_use", float(fields["inuse"]), {"protocol": protocol + suffix})
            )
        if ipv6:
            continue
        if protocol == "tcp":
            for key, name in (
                ("orphan", "sockets_tcp_orphaned"),
                ("tw", "sockets_tcp_time_wait"),
                ("alloc", "sockets_tcp_allocated"),
            ):
                if key in fields:
                    samples.append((name, float(fields[key]), {}))
        if protocol in ("tcp", "udp") and "mem" in fields:  # in pages
            memory = float(int(fields["mem"]) * _PAGE_BYTES)
            samples.append(("sockets_memory_bytes", memory, {"protocol": protocol}))
    return samples


def collect_sockstat() -> list[Sample]:
    """Sockets in use per protocol and the memory they hold (Linux /proc/net/sockstat{,6})."""
    if not LINUX:
        return []
    samples = _sockstat_samples(_read("/proc/net/sockstat"))
    with contextlib.suppress(OSError):  # IPv6 disabled
        samples.extend(_sockstat_samples(_read("/proc/net/sockstat6"), ipv6=True))
    return samples


# (section of /proc/net/snmp or /proc/net/netstat, counter) -> (metric, labels)
_NETSTAT = {
    ("Tcp", "CurrEstab"): ("tcp_current_established", {}),  # a gauge: ESTABLISHED + CLOSE_WAIT
    ("Tcp", "ActiveOpens"): ("tcp_active_opens_total", {}),
    ("Tcp", "PassiveOpens"): ("tcp_passive_opens_total", {}),
    ("Tcp", "AttemptFails"): ("tcp_failed_attempts_total", {}),
    ("Tcp", "EstabResets"): ("tcp_established_resets_total", {}),
    ("Tcp", "InSegs"): ("tcp_segments_total", {"direction": "rx"}),
    ("Tcp", "OutSegs"): ("tcp_segments_total", {"direction": "tx"}),
    ("Tcp", "RetransSegs"): ("tcp_retransmitted_segments_total", {}),
    ("Tcp", "InErrs"): ("tcp_receive_errors_total", {}),
    ("Tcp", "OutRsts"): ("tcp_resets_sent_total", {}),
    ("TcpExt", "ListenOverflows"): ("tcp_listen_overflows_total", {}),
    ("TcpExt", "ListenDrops"): ("tcp_listen_drops_total", {}),
    ("Udp", "InDatagrams"): ("udp_datagrams_total", {"direction": "rx"}),
    ("Udp", "OutDatagrams"): ("udp_datagrams_total", {"direction": "tx"}),
    ("Udp", "NoPorts"): ("udp_no_port_total", {}),
    ("Udp", "InErrors"): ("udp_receive_errors_total", {}),
    ("Udp", "RcvbufErrors"): ("udp_receive_buffer_errors_total", {}),
    ("Udp", "SndbufErrors"): ("udp_send_buffer_errors_total", {}),
}
_NETSTAT_SECTIONS = frozenset(section for section, _ in _NETSTAT)


def _netstat_samples(text: str) -> list[Sample]:
    """/proc/net/snmp or /proc/net/netstat text: each section is a line of counter names
    followed by a line of values, both starting with ``Section:``."""
    samples: list[Sample] = []
    lines = text.splitlines()
    for names_line, values_line in zip(lines[::2], lines[1::2], strict=False):
        section, _, names = names_line.partition(":")
        if section not in _NETSTAT_SECTIONS:
            continue
        values = values_line.partition(":")[2].split()
        for counter, value in zip(names.split(), values, strict=False):
            known = _NETSTAT.get((section, counter))
            if known is not None:
                samples.append((known[0], float(value), dict(known[1])))
    return samples


def collect_netstat() -> list[Sample]:
    """TCP and UDP protocol counters: opens, segments, retransmits, resets, listen overflows,
    datagrams and their errors (Linux /proc/net/snmp and /proc/net/netstat), cumulative."""
    if not LINUX:
        return []
    samples = _netstat_samples(_read("/proc/net/snmp"))
    with contextlib.suppress(OSError):
        samples.extend(_netstat_samples(_read("/proc/net/netstat")))
    return samples


COLLECTORS: dict[str, Callable[[], list[Sample]]] = {
    "cpu": collect_cpu,
    "load": collect_load,
    "memory": collect_memory,
    "meminfo": collect_meminfo,
    "vmstat": collect_vmstat,
    "disk": collect_disk,
    "diskio": collect_diskio,
    "network": collect_network,
    "system": collect_system,
    "tcp": collect_tcp,
    "pressure": collect_pressure,
    "sockstat": collect_sockstat,
    "netstat": collect_netstat,
}


# Collectors that run less often than every collection by default, in seconds between runs.
# tcp: the kernel answers a TCP-state dump by walking its whole established-connection hash
# table, whose size follows the host's memory, not its connections: 1.6 to 2.8 ms of CPU per
# collection on the 24 GiB development VM with 40 sockets, more than all other collectors
# together. Established and TIME_WAIT counts come every collection from cheap counters
# (netstat: tcp_current_established; sockstat: sockets_tcp_time_wait).
DEFAULT_INTERVALS_S: dict[str, float] = {"tcp": 60.0}

# Per collector with an interval: time.monotonic() of its last run in this process.
_last_run: dict[str, float] = {}


def collect(
    enabled: frozenset[str] | None = None, intervals_s: Mapping[str, float] | None = None
) -> tuple[list[Sample], dict[str, str]]:
    """Run the enabled collectors (all when ``enabled`` is None) that are due; never raises.

    ``intervals_s`` (default ``DEFAULT_INTERVALS_S``) names collectors that run at most once per
    so many seconds; 0 means every collection. Returns the samples and, for each collector that
    raised, ``"ExceptionType: message"``. A failing collector is skipped so that one broken source
    never costs the others their samples.
    """
    global _this_collection
    samples: list[Sample] = []
    errors: dict[str, str] = {}
    _this_collection = {}
    try:
        _run(enabled, DEFAULT_INTERVALS_S if intervals_s is None else intervals_s, samples, errors)
    finally:
        _this_collection = None
    return samples, errors


def _due(name: str, intervals_s: Mapping[str, float], now: float) -> bool:
    interval_s = intervals_s.get(name, 0.0)
    if interval_s <= 0:
        return True
    last = _last_run.get(name)
    # A little early counts as due: a 60 s interval with 30 s collections means every second
    # collection, not every third because of timer jitter.
    if last is not None and now - last < interval_s * 0.95:
        return False
    _last_run[name] = now
    return True


def _run(
    enabled: frozenset[str] | None,
    intervals_s: Mapping[str, float],
    samples: list[Sample],
    errors: dict[str, str],
) -> None:
    now = time.monotonic()
    for name, collector in COLLECTORS.items():
        if enabled is not None and name not in enabled:
            continue
        if not _due(name, intervals_s, now):
            continue
        try:
            collected = collector()
        except Exception as exc:
            errors[name] = f"{type(exc).__name__}: {exc}"
            if name not in _failing:
                _failing.add(name)
                logger.warning("collector %s failed, skipping it: %s", name, errors[name])
            continue
        if name in _failing:
            _failing.discard(name)
            logger.info("collector %s works again", name)
        samples.extend(collected)


_BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def format_value(name: str, value: float) -> tuple[str, str]:
    """A sample's value as a person reads it, and its unit, from the unit in the metric's name
    (the module docstring): ``_bytes`` in powers of 1024, ``_seconds``, ``_percent`` (a counter's
    unit comes before ``_total``); anything else is a count (thousands separated) or, when not
    whole, a plain number such as ``load1``."""
    if not math.isfinite(value):
        return str(value), ""
    base = name.removesuffix("_total")
    if base.endswith("_bytes"):
        scaled, power = abs(value), 0
        while scaled >= 1024 and power < len(_BYTE_UNITS) - 1:
            scaled /= 1024
            power += 1
        if power == 0:
            return f"{value:,.0f}", "B"
        return f"{math.copysign(scaled, value):,.2f}", _BYTE_UNITS[power]
    if base.endswith("_seconds"):
        return f"{value:,.2f}", "s"
    if base.endswith("_percent"):
        return f"{value:.1f}", "%"
    if value.is_integer():
        return f"{int(value):,}", ""
    return f"{value:,.2f}", ""


def format_table(samples: list[Sample], errors: dict[str, str]) -> str:
    """One collection as a fixed-width table (``fleetpulse agent --once``), failures last: the
    values right-aligned, with their units in a column of their own."""
    header = ("metric", "labels", "value", "unit")
    rows = [
        (name, ",".join(f"{k}={v}" for k, v in sorted(labels.items())), *format_value(name, value))
        for name, value, labels in sorted(samples, key=lambda s: (s[0], sorted(s[2].items())))
    ]
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]

    def line(cells: tuple[str, ...]) -> str:
        name, labels, value, unit = (
            cell.rjust(width) if column == 2 else cell.ljust(width)
            for column, (cell, width) in enumerate(zip(cells, widths, strict=True))
        )
        return f"{name}  {labels}  {value} {unit}".rstrip()

    lines = [line(header), *(line(row) for row in rows), f"{len(rows)} series"]
    lines += [f"collector {name} FAILED: {error}" for name, error in sorted(errors.items())]
    return "\n".join(lines)

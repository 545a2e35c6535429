"""disk and diskio: space on each mounted filesystem, and I/O on each block device.

- disk: per mounted real filesystem ``{mountpoint,device,fstype}``: ``disk_bytes{state}`` (total,
  used, free: free to unprivileged users), ``disk_inodes{state}`` (total, used, free) and
  ``disk_readonly`` (1 when mounted read-only, which is how ext4 reacts to errors).
- diskio: per block device ``{device}``: ``disk_read_bytes_total``, ``disk_written_bytes_total``,
  ``disk_reads_total``, ``disk_writes_total``, ``disk_reads_merged_total``,
  ``disk_writes_merged_total``, ``disk_read_time_seconds_total``, ``disk_write_time_seconds_total``,
  ``disk_io_time_seconds_total`` (busy time: its rate is the utilisation) and
  ``disk_io_weighted_seconds_total`` (its rate is the average queue depth); the last six on Linux.
"""

from __future__ import annotations

import contextlib
import os
import select
from collections.abc import Callable, Iterable
from typing import Any

import psutil

from fleetpulse.agent.collectors.proc import LINUX, ProcReader
from fleetpulse.agent.collectors.sample import Sample

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


class DiskCollector:
    """The disk collector; holds the mounted filesystems, listed again only when the mount table
    changed: Linux flags a change to /proc/self/mounts as POLLPRI to whoever has it open (as
    systemd and libmount watch it)."""

    def __init__(self) -> None:
        self._mounts_fd: int | None = None
        self._mounts_poll: select.poll | None = None
        self._partitions: list[Any] | None = None

    def __call__(self, proc: ProcReader) -> list[Sample]:
        """Space and inodes on each mounted real filesystem, once per device."""
        # all=False already leaves out network filesystems on Linux (they are "nodev"), so a hung
        # NFS server cannot block statvfs() here.
        return _disk_samples(self._mounted(), os.statvfs)

    def _mounted(self) -> list[Any]:
        if not LINUX or not hasattr(select, "poll"):
            return psutil.disk_partitions(all=False)
        if self._mounts_poll is None:
            self._mounts_fd = os.open("/proc/self/mounts", os.O_RDONLY | os.O_CLOEXEC)
            self._mounts_poll = select.poll()
            self._mounts_poll.register(self._mounts_fd, select.POLLPRI)
            self._partitions = None
        if self._partitions is None or self._mounts_poll.poll(0):
            self._partitions = psutil.disk_partitions(all=False)
        return self._partitions

    def close(self) -> None:
        """Stop watching the mount table (the next collection watches it again)."""
        if self._mounts_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._mounts_fd)
        self._mounts_fd = self._mounts_poll = self._partitions = None


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


def collect_diskio(proc: ProcReader) -> list[Sample]:
    """Cumulative I/O per block device (whole disks and partitions alike)."""
    if LINUX:
        try:
            return _diskstats_samples(proc.read("/proc/diskstats"))
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

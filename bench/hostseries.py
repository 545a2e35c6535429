"""The series set of a simulated host: what a real agent reports, with labels like a real host.

About 200 series per host: CPU per core and mode, load, memory, swap, filesystems per mountpoint,
block devices, network interfaces, TCP states, process and file-descriptor counts, uptime.
Hosts differ in their number of cores, disks and interfaces, so series sets are not identical.
"""

from __future__ import annotations

import random

Series = tuple[str, dict[str, str]]

_CPU_MODES = ("user", "system", "iowait", "idle", "steal")
_TCP_STATES = (
    "established",
    "syn_sent",
    "syn_recv",
    "fin_wait1",
    "fin_wait2",
    "time_wait",
    "close",
    "close_wait",
    "last_ack",
    "listen",
    "closing",
)
_MOUNTS = (
    ("/", "/dev/nvme0n1p2", "ext4"),
    ("/boot", "/dev/nvme0n1p1", "vfat"),
    ("/var", "/dev/nvme0n1p3", "xfs"),
    ("/home", "/dev/nvme1n1p1", "ext4"),
    ("/data", "/dev/sda1", "xfs"),
    ("/srv", "/dev/sdb1", "ext4"),
    ("/opt", "/dev/sdc1", "ext4"),
)
_DEVICES = ("nvme0n1", "nvme1n1", "sda", "sdb", "sdc", "dm-0", "dm-1")
_INTERFACES = ("lo", "eth0", "eth1", "bond0", "docker0", "veth3f2a1b", "wg0")


def host_series(target: int, rng: random.Random) -> list[Series]:
    """A realistic series set for one host, cut or padded to exactly ``target`` series."""
    cores = rng.choice((4, 8, 8, 16))
    mounts = _MOUNTS[: rng.randint(3, len(_MOUNTS))]
    devices = _DEVICES[: rng.randint(3, len(_DEVICES))]
    interfaces = _INTERFACES[: rng.randint(3, len(_INTERFACES))]
    series: list[Series] = []
    series += [("cpu_usage_percent", {"mode": mode}) for mode in _CPU_MODES]
    series += [("cpu_core_usage_percent", {"cpu": str(core)}) for core in range(cores)]
    series += [
        ("cpu_seconds_total", {"cpu": str(core), "mode": mode})
        for core in range(cores)
        for mode in _CPU_MODES
    ]
    series += [
        (name, {})
        for name in (
            "load1",
            "load5",
            "load15",
            "processes",
            "threads",
            "open_fds",
            "uptime_seconds",
            "context_switches_total",
            "interrupts_total",
        )
    ]
    series += [
        ("memory_bytes", {"state": state})
        for state in ("total", "used", "available", "cached", "buffers", "shared", "free")
    ]
    series += [("swap_bytes", {"state": state}) for state in ("total", "used", "free")]
    for mountpoint, device, fstype in mounts:
        labels = {"mountpoint": mountpoint, "device": device, "fstype": fstype}
        series += [("disk_bytes", {**labels, "state": s}) for s in ("total", "used", "free")]
        series += [("disk_inodes", {**labels, "state": s}) for s in ("total", "free")]
    for device in devices:
        series += [
            (name, {"device": device})
            for name in (
                "disk_read_bytes_total",
                "disk_written_bytes_total",
                "disk_reads_total",
                "disk_writes_total",
                "disk_io_time_seconds_total",
                "disk_io_weighted_seconds_total",
            )
        ]
    for interface in interfaces:
        for name in ("net_bytes_total", "net_packets_total", "net_errors_total", "net_drops_total"):
            series += [(name, {"interface": interface, "direction": d}) for d in ("rx", "tx")]
    series += [("tcp_connections", {"state": state}) for state in _TCP_STATES]
    index = 0
    while len(series) < target:
        series.append(
            ("app_requests_total", {"handler": f"/api/v{index % 3}/r{index}", "code": "200"})
        )
        index += 1
    return series[:target]

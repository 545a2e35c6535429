"""The collector names, and what each sends, in the order the agent runs them.

Imports nothing: the platform validates remote settings against these names
(ingest/agentsettings.py) without loading the agent's collectors or psutil. The scheduler
(collectors/scheduler.py) runs one collector per name, in this order, which is also the order of
the series in a batch.
"""

from types import MappingProxyType

# name -> what it sends (each family module's docstring lists the metrics and labels)
COLLECTORS = MappingProxyType(
    {
        "cpu": "CPU time per mode, whole machine and per core (cpu.py)",
        "load": "load averages (load.py)",
        "memory": "physical memory and swap (memory.py)",
        "meminfo": "the kernel's detailed memory accounting, Linux (memory.py)",
        "vmstat": "page faults, paging, swapping, reclaim, OOM kills, Linux (memory.py)",
        "disk": "space, inodes and read-only flag per real filesystem (disk.py)",
        "diskio": "I/O per block device (disk.py)",
        "network": "bytes, packets, errors and drops per interface (network.py)",
        "system": "processes, open fds, uptime, context switches, forks (system.py)",
        "tcp": "TCP connections by state (tcp.py)",
        "pressure": "pressure stall time, Linux PSI (load.py)",
        "sockstat": "sockets and their memory per protocol, Linux (network.py)",
        "netstat": "TCP and UDP protocol counters, Linux (network.py)",
    }
)

"""Host metric collectors, run for real against this machine's psutil."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import time
from collections import namedtuple
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetpulse.agent.collectors import cpu, disk, load, memory, network, system, tcp
from fleetpulse.agent.collectors.names import COLLECTORS
from fleetpulse.agent.collectors.proc import CLOCK_TICKS, PAGE_BYTES, ProcReader
from fleetpulse.agent.collectors.sample import Sample
from fleetpulse.agent.collectors.scheduler import Scheduler
from fleetpulse.agent.collectors.table import format_table, format_value

METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux metrics")

# Stand-ins shaped like the records psutil returns, for the pure filtering logic.
Partition = namedtuple("Partition", "device mountpoint fstype")
StatVFS = namedtuple(
    "StatVFS", "f_frsize f_blocks f_bfree f_bavail f_files f_ffree f_favail f_flag"
)


@pytest.fixture
def scheduler() -> Iterator[Scheduler]:
    # Which collectors already warned, and when slow ones last ran, is the scheduler's state; each
    # test starts with a scheduler of its own.
    scheduler = Scheduler()
    yield scheduler
    scheduler.close()


def names(samples: list[Sample]) -> set[str]:
    return {name for name, _, _ in samples}


def test_required_collectors_exist() -> None:
    assert {"cpu", "load", "memory", "disk", "diskio", "network"} <= COLLECTORS.keys()


def test_the_scheduler_runs_one_collector_per_name_in_order(scheduler: Scheduler) -> None:
    assert list(scheduler.collectors) == list(COLLECTORS)


def test_the_names_load_without_the_collectors() -> None:
    # The platform imports the names (ingest/agentsettings.py): no collector, no psutil with them.
    code = (
        "import fleetpulse.agent.collectors.names, sys; "
        "bad=[m for m in sys.modules if m == 'psutil' or m.startswith("
        "'fleetpulse.agent.collectors.') and m != 'fleetpulse.agent.collectors.names']; "
        "assert not bad, bad"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr


def test_samples_are_well_formed(scheduler: Scheduler) -> None:
    samples, errors = scheduler.collect()

    assert errors == {}
    assert samples
    for name, value, labels in samples:
        assert isinstance(name, str)
        assert METRIC_NAME.match(name), name
        assert type(value) is float, (name, value)
        assert isinstance(labels, dict)
        for key, label_value in labels.items():
            assert isinstance(key, str)
            assert LABEL_NAME.match(key), (name, key)
            assert isinstance(label_value, str), (name, key, label_value)


def test_each_sample_has_its_own_labels(scheduler: Scheduler) -> None:
    samples, _ = scheduler.collect()
    assert len({id(labels) for _, _, labels in samples}) == len(samples)


def test_series_are_unique(scheduler: Scheduler) -> None:
    samples, _ = scheduler.collect()
    series = [(name, tuple(sorted(labels.items()))) for name, _, labels in samples]
    assert len(series) == len(set(series))


def test_counters_end_in_total(scheduler: Scheduler) -> None:
    samples, _ = scheduler.collect(frozenset({"diskio", "network"}))
    assert all(name.endswith("_total") for name in names(samples))


@linux_only
def test_cpu_load_memory_on_linux(scheduler: Scheduler) -> None:
    samples, errors = scheduler.collect(frozenset({"cpu", "load", "memory"}))

    assert errors == {}
    assert {"cpu_usage_percent", "cpu_core_usage_percent", "load1", "load5", "load15"} <= names(
        samples
    )
    assert {"memory_bytes", "swap_bytes"} <= names(samples)
    modes = {labels["mode"] for name, _, labels in samples if name == "cpu_usage_percent"}
    assert modes == {"user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"}
    cores = {labels["cpu"] for name, _, labels in samples if name == "cpu_core_usage_percent"}
    assert len(cores) >= 1
    assert "0" in cores
    memory = {labels["state"]: value for name, value, labels in samples if name == "memory_bytes"}
    assert {"total", "used", "available"} <= memory.keys()
    assert 0 < memory["available"] <= memory["total"]


@linux_only
def test_cpu_percentages_are_in_range(scheduler: Scheduler) -> None:
    scheduler.collect(frozenset({"cpu"}))
    samples, _ = scheduler.collect(frozenset({"cpu"}))
    percents = [value for name, value, _ in samples if name.endswith("_percent")]
    assert percents
    assert all(0.0 <= value <= 100.0 for value in percents)


def test_disk_skips_pseudo_filesystems(scheduler: Scheduler) -> None:
    samples, _ = scheduler.collect(frozenset({"disk"}))
    for name, _, labels in samples:
        assert name in {"disk_bytes", "disk_inodes", "disk_readonly"}
        assert labels.keys() - {"state"} == {"mountpoint", "device", "fstype"}
        assert labels["fstype"] not in disk.PSEUDO_FSTYPES


def test_diskio_skips_loop_and_ram_devices(scheduler: Scheduler) -> None:
    samples, _ = scheduler.collect(frozenset({"diskio"}))
    assert not any(labels["device"].startswith(("loop", "ram")) for _, _, labels in samples)


def test_network_has_both_directions(scheduler: Scheduler) -> None:
    samples, _ = scheduler.collect(frozenset({"network"}))
    assert names(samples) <= {
        "net_bytes_total",
        "net_packets_total",
        "net_errors_total",
        "net_drops_total",
        "net_fifo_errors_total",
        "net_compressed_packets_total",
        "net_multicast_packets_total",
        "net_frame_errors_total",
        "net_collisions_total",
        "net_carrier_errors_total",
    }
    assert {labels["direction"] for _, _, labels in samples} <= {"rx", "tx"}


def test_disk_samples_filter_and_dedupe() -> None:
    partitions = [
        Partition("/dev/sda1", "/", "ext4"),
        Partition("tmpfs", "/run", "tmpfs"),
        Partition("/dev/sdb1", "/gone", "xfs"),
        Partition("/dev/sdb1", "/data", "xfs"),
        Partition("/dev/sda1", "/srv/bind", "ext4"),
        Partition("/dev/loop0", "/snap/core/1", "squashfs"),
    ]

    def statvfs(mountpoint: str) -> StatVFS:
        if mountpoint == "/gone":
            raise PermissionError(13, "Permission denied", mountpoint)
        # 100 blocks of 4 KiB: 40 used, 50 free to users (10 reserved for root); read-only /data
        return StatVFS(4096, 100, 60, 50, 1000, 900, 900, 1 if mountpoint == "/data" else 0)

    samples = disk._disk_samples(partitions, statvfs)

    assert {(labels["mountpoint"], labels["device"]) for _, _, labels in samples} == {
        ("/", "/dev/sda1"),
        ("/data", "/dev/sdb1"),
    }
    root = {
        (name, labels.get("state")): value
        for name, value, labels in samples
        if labels["mountpoint"] == "/"
    }
    assert root == {
        ("disk_bytes", "total"): 409600.0,
        ("disk_bytes", "used"): 163840.0,
        ("disk_bytes", "free"): 204800.0,
        ("disk_inodes", "total"): 1000.0,
        ("disk_inodes", "used"): 100.0,
        ("disk_inodes", "free"): 900.0,
        ("disk_readonly", None): 0.0,
    }
    readonly = [
        v for n, v, labels in samples if n == "disk_readonly" and labels["mountpoint"] == "/data"
    ]
    assert readonly == [1.0]


def test_enabled_filters_collectors(scheduler: Scheduler) -> None:
    samples, errors = scheduler.collect(frozenset({"load"}))
    assert errors == {}
    assert names(samples) == {"load1", "load5", "load15"}


def test_empty_enabled_collects_nothing(scheduler: Scheduler) -> None:
    assert scheduler.collect(frozenset()) == ([], {})


def test_failing_collector_is_reported_and_skipped(
    scheduler: Scheduler, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(proc: ProcReader) -> list[Sample]:
        raise RuntimeError("sensor went away")

    monkeypatch.setitem(scheduler.collectors, "broken", broken)
    with caplog.at_level(logging.WARNING, logger="fleetpulse.agent.collectors.scheduler"):
        samples, errors = scheduler.collect(frozenset({"broken", "load"}))
        scheduler.collect(frozenset({"broken", "load"}))

    assert errors == {"broken": "RuntimeError: sensor went away"}
    assert names(samples) == {"load1", "load5", "load15"}
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1, "a broken collector warns once, not on every collection"
    assert "broken" in warnings[0].getMessage()


def test_recovered_collector_is_logged_and_warns_again_on_new_failure(
    scheduler: Scheduler, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    failing = True

    def flaky(proc: ProcReader) -> list[Sample]:
        if failing:
            raise OSError("not yet")
        return [("flaky_value", 1.0, {})]

    monkeypatch.setitem(scheduler.collectors, "flaky", flaky)
    with caplog.at_level(logging.INFO, logger="fleetpulse.agent.collectors.scheduler"):
        assert scheduler.collect(frozenset({"flaky"})) == ([], {"flaky": "OSError: not yet"})
        failing = False
        assert scheduler.collect(frozenset({"flaky"})) == ([("flaky_value", 1.0, {})], {})
        failing = True
        scheduler.collect(frozenset({"flaky"}))

    levels = [record.levelno for record in caplog.records]
    assert levels == [logging.WARNING, logging.INFO, logging.WARNING]


def test_tcp_connections_are_counted_by_state() -> None:
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    before = {labels["state"]: value for _, value, labels in tcp.collect_tcp(ProcReader())}
    client = socket.create_connection(server.getsockname())
    accepted, _ = server.accept()
    try:
        after = {labels["state"]: value for _, value, labels in tcp.collect_tcp(ProcReader())}
    finally:
        client.close()
        accepted.close()
        server.close()
    assert set(after) >= {"established", "listen", "time_wait"}
    assert after["listen"] >= 1
    assert after["established"] >= before["established"] + 2  # both ends are on this host


def test_system_collector_reports_processes_uptime_and_fds() -> None:
    collect_system = system.SystemCollector()
    values = {
        (name, labels.get("state")): value for name, value, labels in collect_system(ProcReader())
    }
    assert values[("processes", None)] >= 1
    assert values[("uptime_seconds", None)] > 0
    assert 0 < values[("open_fds", "allocated")] <= values[("open_fds", "max")]


# -- the Linux files, parsed from sample text -------------------------------------------------

PROC_STAT = """cpu  100 10 50 800 20 5 15 0 0 0
cpu0 60 10 30 380 10 5 5 0 0 0
cpu1 40 0 20 420 10 0 10 0 0 0
intr 123456 1 2 3
ctxt 987654
btime 1700000000
processes 4321
procs_running 3
procs_blocked 1
softirq 5555 1 2
"""


def test_cpu_samples_from_proc_stat() -> None:
    previous: dict[str, tuple[int, ...]] = {}
    cpu._cpu_samples(PROC_STAT, previous)
    later = PROC_STAT.replace("cpu  100 10 50 800", "cpu  150 10 75 875").replace(
        "cpu0 60 10 30 380 10", "cpu0 110 10 55 405 10"
    )
    samples = cpu._cpu_samples(later, previous)

    usage = {labels["mode"]: v for n, v, labels in samples if n == "cpu_usage_percent"}
    assert usage == {
        "user": 33.333333333333336,
        "nice": 0.0,
        "system": 16.666666666666668,
        "idle": 50.0,
        "iowait": 0.0,
        "irq": 0.0,
        "softirq": 0.0,
        "steal": 0.0,
    }
    cores = {labels["cpu"]: v for n, v, labels in samples if n == "cpu_core_usage_percent"}
    assert cores == {"0": 75.0, "1": 0.0}  # cpu1 did not move: no time, no usage
    seconds = {
        (labels["cpu"], labels["mode"]): v for n, v, labels in samples if n == "cpu_seconds_total"
    }
    assert len(seconds) == 16
    assert seconds[("0", "user")] == 110 / CLOCK_TICKS
    assert seconds[("1", "softirq")] == 10 / CLOCK_TICKS


def test_proc_stat_system_counters() -> None:
    samples, boot_time = system._proc_stat_samples(PROC_STAT)
    assert boot_time == 1700000000.0
    assert {n: v for n, v, _ in samples} == {
        "interrupts_total": 123456.0,
        "context_switches_total": 987654.0,
        "forks_total": 4321.0,
        "processes_running": 3.0,
        "processes_blocked": 1.0,
    }


MEMINFO = """MemTotal:        1000 kB
MemFree:          100 kB
MemAvailable:     600 kB
Buffers:           50 kB
Cached:           300 kB
SwapCached:         0 kB
Active(anon):      70 kB
SReclaimable:      20 kB
SwapTotal:        200 kB
SwapFree:         150 kB
Dirty:              8 kB
HugePages_Total:    0
Hugepagesize:    2048 kB
"""


def test_memory_samples_match_psutil_definitions() -> None:
    values = {(n, labels["state"]): v for n, v, labels in memory._memory_samples(MEMINFO)}
    assert values == {
        ("memory_bytes", "total"): 1024000.0,
        ("memory_bytes", "used"): 409600.0,  # total - available
        ("memory_bytes", "available"): 614400.0,
        ("memory_bytes", "cached"): 327680.0,  # Cached + SReclaimable
        ("memory_bytes", "buffers"): 51200.0,
        ("swap_bytes", "total"): 204800.0,
        ("swap_bytes", "used"): 51200.0,
    }


def test_meminfo_samples_keep_known_fields_in_bytes() -> None:
    values = {labels["field"]: v for _, v, labels in memory._meminfo_samples(MEMINFO)}
    assert values["active_anon"] == 70 * 1024
    assert values["dirty"] == 8 * 1024
    assert "hugepages_total" not in values and "hugepagesize" not in values
    assert len(values) == 11


def test_vmstat_samples() -> None:
    text = (
        "nr_free_pages 5\npgpgin 10\npgpgout 20\npswpin 1\npgfault 1000\npgmajfault 7\noom_kill 2\n"
    )
    values = {(n, tuple(labels.items())): v for n, v, labels in memory._vmstat_samples(text)}
    assert values == {
        ("vm_paged_bytes_total", (("direction", "in"),)): 10240.0,
        ("vm_paged_bytes_total", (("direction", "out"),)): 20480.0,
        ("vm_swapped_bytes_total", (("direction", "in"),)): float(PAGE_BYTES),
        ("vm_page_faults_total", ()): 1000.0,
        ("vm_major_page_faults_total", ()): 7.0,
        ("vm_oom_kills_total", ()): 2.0,
    }


def test_diskstats_samples_skip_virtual_devices() -> None:
    text = (
        "   7       0 loop0 1 0 2 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n"
        " 254       0 vda 100 5 800 40 200 6 1600 90 2 120 130 0 0 0 0 0 0\n"
        " 253       0 zram0 1 0 2 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n"
    )
    values = {n: v for n, v, labels in disk._diskstats_samples(text)}
    assert {labels["device"] for _, _, labels in disk._diskstats_samples(text)} == {"vda"}
    assert values == {
        "disk_read_bytes_total": 800 * 512.0,
        "disk_written_bytes_total": 1600 * 512.0,
        "disk_reads_total": 100.0,
        "disk_writes_total": 200.0,
        "disk_reads_merged_total": 5.0,
        "disk_writes_merged_total": 6.0,
        "disk_read_time_seconds_total": 0.04,
        "disk_write_time_seconds_total": 0.09,
        "disk_io_time_seconds_total": 0.12,
        "disk_io_weighted_seconds_total": 0.13,
    }


NET_DEV = """Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
  eth0: 1000 10 1 2 3 4 5 6 2000 20 7 8 9 10 11 12
"""


def test_net_dev_samples() -> None:
    values = {
        (n, labels["direction"]): v
        for n, v, labels in network._net_dev_samples(NET_DEV)
        if labels["interface"] == "eth0"
    }
    assert values == {
        ("net_bytes_total", "rx"): 1000.0,
        ("net_bytes_total", "tx"): 2000.0,
        ("net_packets_total", "rx"): 10.0,
        ("net_packets_total", "tx"): 20.0,
        ("net_errors_total", "rx"): 1.0,
        ("net_errors_total", "tx"): 7.0,
        ("net_drops_total", "rx"): 2.0,
        ("net_drops_total", "tx"): 8.0,
        ("net_fifo_errors_total", "rx"): 3.0,
        ("net_fifo_errors_total", "tx"): 9.0,
        ("net_compressed_packets_total", "rx"): 5.0,
        ("net_compressed_packets_total", "tx"): 12.0,
        ("net_frame_errors_total", "rx"): 4.0,
        ("net_multicast_packets_total", "rx"): 6.0,
        ("net_collisions_total", "tx"): 10.0,
        ("net_carrier_errors_total", "tx"): 11.0,
    }


def test_pressure_samples() -> None:
    text = (
        "some avg10=0.00 avg60=0.07 avg300=0.15 total=34903879\n"
        "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
    )
    assert load._pressure_samples("io", text) == [
        ("pressure_stall_seconds_total", 34.903879, {"resource": "io", "kind": "some"}),
        ("pressure_stall_seconds_total", 0.0, {"resource": "io", "kind": "full"}),
    ]


def test_sockstat_samples() -> None:
    text = (
        "sockets: used 26\n"
        "TCP: inuse 11 orphan 1 tw 5 alloc 14 mem 15\n"
        "UDP: inuse 2 mem 3\n"
        "UDPLITE: inuse 0\n"
        "RAW: inuse 0\n"
        "FRAG: inuse 0 memory 0\n"
    )
    values = {(n, labels.get("protocol")): v for n, v, labels in network._sockstat_samples(text)}
    page = float(PAGE_BYTES)
    assert values == {
        ("sockets_used", None): 26.0,
        ("sockets_in_use", "tcp"): 11.0,
        ("sockets_tcp_orphaned", None): 1.0,
        ("sockets_tcp_time_wait", None): 5.0,
        ("sockets_tcp_allocated", None): 14.0,
        ("sockets_memory_bytes", "tcp"): 15 * page,
        ("sockets_in_use", "udp"): 2.0,
        ("sockets_memory_bytes", "udp"): 3 * page,
        ("sockets_in_use", "udplite"): 0.0,
        ("sockets_in_use", "raw"): 0.0,
        ("sockets_memory_bytes", "frag"): 0.0,
    }
    six = network._sockstat_samples("TCP6: inuse 2\nUDP6: inuse 1\n", ipv6=True)
    assert six == [
        ("sockets_in_use", 2.0, {"protocol": "tcp6"}),
        ("sockets_in_use", 1.0, {"protocol": "udp6"}),
    ]


def test_netstat_samples() -> None:
    snmp = (
        "Ip: Forwarding DefaultTTL\nIp: 2 64\n"
        "Tcp: RtoAlgorithm ActiveOpens PassiveOpens AttemptFails EstabResets CurrEstab InSegs "
        "OutSegs RetransSegs InErrs OutRsts\n"
        "Tcp: 1 10 20 3 4 5 100 200 7 1 9\n"
        "Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\n"
        "Udp: 50 2 1 60 0 3\n"
    )
    values = {(n, labels.get("direction")): v for n, v, labels in network._netstat_samples(snmp)}
    assert values == {
        ("tcp_current_established", None): 5.0,
        ("tcp_active_opens_total", None): 10.0,
        ("tcp_passive_opens_total", None): 20.0,
        ("tcp_failed_attempts_total", None): 3.0,
        ("tcp_established_resets_total", None): 4.0,
        ("tcp_segments_total", "rx"): 100.0,
        ("tcp_segments_total", "tx"): 200.0,
        ("tcp_retransmitted_segments_total", None): 7.0,
        ("tcp_receive_errors_total", None): 1.0,
        ("tcp_resets_sent_total", None): 9.0,
        ("udp_datagrams_total", "rx"): 50.0,
        ("udp_datagrams_total", "tx"): 60.0,
        ("udp_no_port_total", None): 2.0,
        ("udp_receive_errors_total", None): 1.0,
        ("udp_receive_buffer_errors_total", None): 0.0,
        ("udp_send_buffer_errors_total", None): 3.0,
    }
    ext = "TcpExt: SyncookiesSent ListenOverflows ListenDrops\nTcpExt: 0 4 5\n"
    assert network._netstat_samples(ext) == [
        ("tcp_listen_overflows_total", 4.0, {}),
        ("tcp_listen_drops_total", 5.0, {}),
    ]


def _nlmsg(kind: int, body: bytes) -> bytes:
    message = tcp._NLMSG_HEADER.pack(16 + len(body), kind, 2, 1, 0) + body
    return message + bytes(-len(message) % 4)


def test_inet_diag_replies_are_counted_by_state() -> None:
    # inet_diag_msg: family, state, timer, retrans, ... (72 bytes in all)
    established = _nlmsg(18, bytes([2, 1]) + bytes(70))
    listening = _nlmsg(18, bytes([10, 10]) + bytes(70))
    counts: dict[int, int] = {}
    assert not tcp._count_inet_diag(established + listening + established, counts)
    assert tcp._count_inet_diag(listening + _nlmsg(3, bytes(4)), counts)
    assert counts == {1: 2, 10: 2}
    with pytest.raises(OSError):
        tcp._count_inet_diag(_nlmsg(2, (-1).to_bytes(4, "little", signed=True)), {})


@linux_only
def test_tcp_netlink_agrees_with_proc_net_tcp() -> None:
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    try:
        assert tcp._tcp_counts_netlink().get(10, 0) >= 1
        # the same tables read two ways (sockets may come and go in between: compare listeners)
        text_tables = tcp._tcp_counts_proc(ProcReader())
        assert text_tables is not None
        assert tcp._tcp_counts_netlink().get(10) == text_tables.get(10)
    finally:
        server.close()


@linux_only
def test_new_linux_collectors_run_here(scheduler: Scheduler) -> None:
    samples, errors = scheduler.collect(
        frozenset({"meminfo", "vmstat", "sockstat", "netstat", "pressure"})
    )
    assert errors == {}
    assert {"meminfo_bytes", "vm_page_faults_total", "sockets_used", "tcp_segments_total"} <= names(
        samples
    )


def test_collect_reads_a_shared_file_once(
    scheduler: Scheduler, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[str] = []
    real = scheduler.proc.read

    def counting(path: str) -> str:
        reads.append(path)
        return real(path)

    monkeypatch.setattr(scheduler.proc, "read", counting)
    if sys.platform.startswith("linux"):
        scheduler.collect(frozenset({"cpu", "system", "memory", "meminfo"}))
        assert reads.count("/proc/stat") == 1
        assert reads.count("/proc/meminfo") == 1
    assert scheduler.proc._this_collection is None


def test_a_collector_with_an_interval_runs_only_when_due(
    scheduler: Scheduler, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs: list[float] = []
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(
        scheduler, "collectors", {"slow": lambda _: runs.append(clock[0]) or [("slow", 1.0, {})]}
    )
    every_60_s = {"slow": 60.0}
    for now in (1000.0, 1030.0, 1056.0, 1058.0, 1090.0, 1120.0):
        clock[0] = now
        samples, errors = scheduler.collect(None, every_60_s)
        assert errors == {}
        assert (samples != []) == (now in runs)
    # The first collection, then once per 60 s (58 s counts: timers fire a little early).
    assert runs == [1000.0, 1058.0, 1120.0]
    # 0 means every collection.
    runs.clear()
    for now in (2000.0, 2001.0):
        clock[0] = now
        scheduler.collect(None, {"slow": 0})
    assert runs == [2000.0, 2001.0]


def test_tcp_states_run_every_minute_by_default_and_established_every_time(
    scheduler: Scheduler,
) -> None:
    first, _ = scheduler.collect()
    second, _ = scheduler.collect()
    assert "tcp_connections" in names(first)
    assert "tcp_connections" not in names(second)
    if sys.platform.startswith("linux"):
        # cheap counters stand in between: established (and close-wait) and time-wait sockets
        assert {"tcp_current_established", "sockets_tcp_time_wait"} <= names(second)
    third, _ = scheduler.collect(None, {})
    assert "tcp_connections" in names(third)


def test_kept_open_files_are_read_afresh_and_whole(tmp_path: Path) -> None:
    proc = ProcReader()
    path = tmp_path / "counter"
    path.write_text("1\n")
    assert proc.read(str(path)) == "1\n"
    # Rewritten in place (as the kernel regenerates /proc files): the next read sees the new text.
    with path.open("r+") as handle:
        handle.write("2\n")
    assert proc.read(str(path)) == "2\n"
    big = "".join(f"line {i:06d}\n" for i in range(20_000))  # 240 KB: several reads
    path.write_text(big)
    assert proc.read(str(path)) == big
    proc.close()
    assert proc._open_files == {}


def test_close_is_idempotent_and_a_later_collection_reopens(scheduler: Scheduler) -> None:
    first, _ = scheduler.collect(frozenset({"disk", "memory"}))
    scheduler.close()
    scheduler.close()
    assert scheduler.proc._open_files == {}
    again, errors = scheduler.collect(frozenset({"disk", "memory"}))
    assert errors == {}
    assert names(again) == names(first)


@pytest.mark.parametrize(
    ("name", "value", "shown"),
    [
        ("net_bytes_total", 2.61235e10, ("24.33", "GiB")),
        ("memory_bytes", 512.0, ("512", "B")),
        ("memory_bytes", 1536.0, ("1.50", "KiB")),
        ("disk_bytes", 3 * 1024.0**2, ("3.00", "MiB")),
        ("disk_bytes", 2.5 * 1024.0**4, ("2.50", "TiB")),
        ("swap_bytes", 0.0, ("0", "B")),
        ("uptime_seconds", 123456.789, ("123,456.79", "s")),
        ("cpu_seconds_total", 0.5, ("0.50", "s")),
        ("cpu_usage_percent", 97.25, ("97.2", "%")),
        ("net_packets_total", 1234567.0, ("1,234,567", "")),
        ("processes", 93.0, ("93", "")),
        ("load1", 0.5123, ("0.51", "")),
        ("load1", float("nan"), ("nan", "")),
    ],
)
def test_values_are_shown_with_the_unit_in_their_name(
    name: str, value: float, shown: tuple[str, str]
) -> None:
    assert format_value(name, value) == shown


def test_the_table_right_aligns_values_and_puts_units_in_a_column() -> None:
    table = format_table(
        [
            ("net_bytes_total", 2.61235e10, {"interface": "eth0", "direction": "rx"}),
            ("load1", 0.25, {}),
            ("processes", 1234.0, {}),
        ],
        {"tcp": "OSError: nope"},
    )
    lines = table.splitlines()
    assert lines[0].split() == ["metric", "labels", "value", "unit"]
    rows = {line.split()[0]: line for line in lines[1:4]}
    assert rows["net_bytes_total"].endswith(" 24.33 GiB")
    assert "direction=rx,interface=eth0" in rows["net_bytes_total"]
    assert rows["processes"].endswith(" 1,234")
    # the value column is right-aligned: every value ends where the header's "value" ends
    value_end = lines[0].index("value") + len("value")
    for name, line in rows.items():
        number = {"net_bytes_total": "24.33", "load1": "0.25", "processes": "1,234"}[name]
        assert line.index(number) + len(number) == value_end, table
    assert lines[4:] == ["3 series", "collector tcp FAILED: OSError: nope"]
    assert "e+" not in table

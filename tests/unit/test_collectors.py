"""Host metric collectors, run for real against this machine's psutil."""

from __future__ import annotations

import logging
import re
import sys
from collections import namedtuple

import pytest

from fleetpulse.agent import collectors
from fleetpulse.agent.collectors import COLLECTORS, PSEUDO_FSTYPES, Sample, collect

METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux metrics")

# Stand-ins shaped like the records psutil returns, for the pure filtering logic.
Partition = namedtuple("Partition", "device mountpoint fstype")
Usage = namedtuple("Usage", "total used free")


@pytest.fixture(autouse=True)
def no_failing_collectors(monkeypatch: pytest.MonkeyPatch) -> None:
    # Which collectors already warned is process state; each test starts with none.
    monkeypatch.setattr(collectors, "_failing", set())


def names(samples: list[Sample]) -> set[str]:
    return {name for name, _, _ in samples}


def test_required_collectors_exist() -> None:
    assert {"cpu", "load", "memory", "disk", "diskio", "network"} <= COLLECTORS.keys()


def test_samples_are_well_formed() -> None:
    samples, errors = collect()

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


def test_each_sample_has_its_own_labels() -> None:
    samples, _ = collect()
    assert len({id(labels) for _, _, labels in samples}) == len(samples)


def test_series_are_unique() -> None:
    samples, _ = collect()
    series = [(name, tuple(sorted(labels.items()))) for name, _, labels in samples]
    assert len(series) == len(set(series))


def test_counters_end_in_total() -> None:
    samples, _ = collect(frozenset({"diskio", "network"}))
    assert all(name.endswith("_total") for name in names(samples))


@linux_only
def test_cpu_load_memory_on_linux() -> None:
    samples, errors = collect(frozenset({"cpu", "load", "memory"}))

    assert errors == {}
    assert {"cpu_usage_percent", "cpu_core_usage_percent", "load1", "load5", "load15"} <= names(
        samples
    )
    assert {"memory_bytes", "swap_bytes"} <= names(samples)
    modes = {labels["mode"] for name, _, labels in samples if name == "cpu_usage_percent"}
    assert modes == {"user", "system", "idle", "iowait", "steal"}
    cores = {labels["cpu"] for name, _, labels in samples if name == "cpu_core_usage_percent"}
    assert len(cores) >= 1
    assert "0" in cores
    memory = {labels["state"]: value for name, value, labels in samples if name == "memory_bytes"}
    assert {"total", "used", "available"} <= memory.keys()
    assert 0 < memory["available"] <= memory["total"]


@linux_only
def test_cpu_percentages_are_in_range() -> None:
    collect(frozenset({"cpu"}))
    samples, _ = collect(frozenset({"cpu"}))
    assert all(0.0 <= value <= 100.0 for _, value, _ in samples)


def test_disk_skips_pseudo_filesystems() -> None:
    samples, _ = collect(frozenset({"disk"}))
    for name, _, labels in samples:
        assert name == "disk_bytes"
        assert labels.keys() == {"mountpoint", "device", "fstype", "state"}
        assert labels["fstype"] not in PSEUDO_FSTYPES


def test_diskio_skips_loop_and_ram_devices() -> None:
    samples, _ = collect(frozenset({"diskio"}))
    assert not any(labels["device"].startswith(("loop", "ram")) for _, _, labels in samples)


def test_network_has_both_directions() -> None:
    samples, _ = collect(frozenset({"network"}))
    assert names(samples) <= {
        "net_bytes_total",
        "net_packets_total",
        "net_errors_total",
        "net_drops_total",
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

    def disk_usage(mountpoint: str) -> Usage:
        if mountpoint == "/gone":
            raise PermissionError(13, "Permission denied", mountpoint)
        return Usage(100, 40, 60)

    samples = collectors._disk_samples(partitions, disk_usage)

    assert {(labels["mountpoint"], labels["device"]) for _, _, labels in samples} == {
        ("/", "/dev/sda1"),
        ("/data", "/dev/sdb1"),
    }
    root = {labels["state"]: value for _, value, labels in samples if labels["mountpoint"] == "/"}
    assert root == {"total": 100.0, "used": 40.0, "free": 60.0}


def test_enabled_filters_collectors() -> None:
    samples, errors = collect(frozenset({"load"}))
    assert errors == {}
    assert names(samples) == {"load1", "load5", "load15"}


def test_empty_enabled_collects_nothing() -> None:
    assert collect(frozenset()) == ([], {})


def test_failing_collector_is_reported_and_skipped(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> list[Sample]:
        raise RuntimeError("sensor went away")

    monkeypatch.setitem(COLLECTORS, "broken", broken)
    with caplog.at_level(logging.WARNING, logger="fleetpulse.agent.collectors"):
        samples, errors = collect(frozenset({"broken", "load"}))
        collect(frozenset({"broken", "load"}))

    assert errors == {"broken": "RuntimeError: sensor went away"}
    assert names(samples) == {"load1", "load5", "load15"}
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1, "a broken collector warns once, not on every collection"
    assert "broken" in warnings[0].getMessage()


def test_recovered_collector_is_logged_and_warns_again_on_new_failure(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    failing = True

    def flaky() -> list[Sample]:
        if failing:
            raise OSError("not yet")
        return [("flaky_value", 1.0, {})]

    monkeypatch.setitem(COLLECTORS, "flaky", flaky)
    with caplog.at_level(logging.INFO, logger="fleetpulse.agent.collectors"):
        assert collect(frozenset({"flaky"})) == ([], {"flaky": "OSError: not yet"})
        failing = False
        assert collect(frozenset({"flaky"})) == ([("flaky_value", 1.0, {})], {})
        failing = True
        collect(frozenset({"flaky"}))

    levels = [record.levelno for record in caplog.records]
    assert levels == [logging.WARNING, logging.INFO, logging.WARNING]


def test_tcp_connections_are_counted_by_state() -> None:
    import socket

    from fleetpulse.agent.collectors import collect_tcp

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    before = {labels["state"]: value for _, value, labels in collect_tcp()}
    client = socket.create_connection(server.getsockname())
    accepted, _ = server.accept()
    try:
        after = {labels["state"]: value for _, value, labels in collect_tcp()}
    finally:
        client.close()
        accepted.close()
        server.close()
    assert set(after) >= {"established", "listen", "time_wait"}
    assert after["listen"] >= 1
    assert after["established"] >= before["established"] + 2  # both ends are on this host


def test_system_collector_reports_processes_uptime_and_fds() -> None:
    from fleetpulse.agent.collectors import collect_system

    values = {(name, labels.get("state")): value for name, value, labels in collect_system()}
    assert values[("processes", None)] >= 1
    assert values[("uptime_seconds", None)] > 0
    assert 0 < values[("open_fds", "allocated")] <= values[("open_fds", "max")]

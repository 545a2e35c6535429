"""network, sockstat and netstat: traffic per interface, sockets per protocol, protocol counters.

- network: per interface ``{interface,direction=rx|tx}``: ``net_bytes_total``,
  ``net_packets_total``, ``net_errors_total``, ``net_drops_total``, ``net_fifo_errors_total``,
  ``net_compressed_packets_total``; rx only: ``net_multicast_packets_total``,
  ``net_frame_errors_total``; tx only: ``net_collisions_total``, ``net_carrier_errors_total``
  (the fields after drops on Linux only).
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

TCP connections by state are the tcp collector's (tcp.py).
"""

from __future__ import annotations

import contextlib

import psutil

from fleetpulse.agent.collectors.proc import LINUX, PAGE_BYTES, ProcReader
from fleetpulse.agent.collectors.sample import Sample

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


def collect_network(proc: ProcReader) -> list[Sample]:
    """Cumulative bytes, packets, errors and drops per network interface and direction."""
    if LINUX:
        return _net_dev_samples(proc.read("/proc/net/dev"))
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
            memory = float(int(fields["mem"]) * PAGE_BYTES)
            samples.append(("sockets_memory_bytes", memory, {"protocol": protocol}))
    return samples


def collect_sockstat(proc: ProcReader) -> list[Sample]:
    """Sockets in use per protocol and the memory they hold (Linux /proc/net/sockstat{,6})."""
    if not LINUX:
        return []
    samples = _sockstat_samples(proc.read("/proc/net/sockstat"))
    with contextlib.suppress(OSError):  # IPv6 disabled
        samples.extend(_sockstat_samples(proc.read("/proc/net/sockstat6"), ipv6=True))
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


def collect_netstat(proc: ProcReader) -> list[Sample]:
    """TCP and UDP protocol counters: opens, segments, retransmits, resets, listen overflows,
    datagrams and their errors (Linux /proc/net/snmp and /proc/net/netstat), cumulative."""
    if not LINUX:
        return []
    samples = _netstat_samples(proc.read("/proc/net/snmp"))
    with contextlib.suppress(OSError):
        samples.extend(_netstat_samples(proc.read("/proc/net/netstat")))
    return samples

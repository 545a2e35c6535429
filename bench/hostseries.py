"""What a simulated host reports: its series (as the agent names them) and their values.

One catalog for every benchmark that makes host data (the fleet simulator, ``bench workers``,
``bench queries``). The series are what the agent sends (agent/collectors/), in this order, so
that a smaller set keeps the ones the dashboard reads: ``cpu_usage_percent{mode}`` (the eight
modes; they sum to 100), ``memory_bytes{state}``, ``load1/5/15``, ``swap_bytes{state}``,
``cpu_core_usage_percent{cpu}``, ``disk_bytes{mountpoint,device,fstype,state}``, six
``disk_*_total{device}`` counters, ``net_{bytes,packets,errors,drops}_total{interface,
direction}``, ``tcp_connections{state}``, ``processes``, ``uptime_seconds``, ``open_fds``,
``context_switches_total``, ``interrupts_total``; past 50, more cores, ``cpu_seconds_total`` and
``app_requests_total``.

The values look like a host's, because what storage costs depends on them (a full-precision
random walk is the worst case of every codec, and no agent sends one): gauges follow a per-host
daily cycle plus noise within their bounds (CPU modes from one busy signal per host, memory states
from one utilisation signal, so idle = 100 - the others and available = total - used); counters
are closed-form and strictly monotonic (a rate with a daily swing, never negative); and each value
has the precision the kernel gives it: bytes and counts are whole, CPU seconds are USER_HZ ticks
(two decimals), load averages two decimals, percentages of ticks one or two.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Series = tuple[str, dict[str, str]]

DAY_S = 86_400.0
_OMEGA_DAY = 2 * math.pi / DAY_S
# Counters are linear from this origin (a fixed instant, so values at any time are reproducible).
_T0 = 1_700_000_000.0
_SCALES = ("one", "mem", "swap", "disk", "cores")


@dataclass(frozen=True)
class Spec:
    """One series of a host: v = a + b*signal + c*(t - T0) + d*sin(w*t + phase) + e*noise.

    Scale factors name what a parameter is multiplied by, per host: ``mem`` (total memory),
    ``swap``, ``disk`` (root filesystem size), ``cores``, or 1.
    """

    name: str
    labels: dict[str, str]
    signal: int = 0  # 0 none, 1 the host's CPU busy % (0-100), 2 its memory utilisation (0-1)
    a: float = 0.0
    b: float = 0.0
    c: float = 0.0  # per second; counters and growing filesystems
    d: float = 0.0
    e: float = 0.0
    scale: str = "one"
    lo: float = -math.inf
    hi: float = math.inf
    integer: bool = False  # whole numbers (bytes, counts): floored
    decimals: int | None = None  # else rounded to this many decimals, as the kernel reports it
    counter: bool = False  # rate c (randomised per host), d relative swing of the rate


_CPU_SHARES = (
    ("user", 0.55),
    ("nice", 0.01),
    ("system", 0.20),
    ("idle", None),
    ("iowait", 0.10),
    ("irq", 0.01),
    ("softirq", 0.08),
    ("steal", 0.05),
)


def _catalog() -> list[Spec]:
    """The first 50 series of every host, in the order a smaller set keeps them."""
    specs: list[Spec] = []
    for mode, share in _CPU_SHARES:
        if share is None:
            specs.append(
                Spec("cpu_usage_percent", {"mode": mode}, signal=1, a=100.0, b=-1.0, decimals=2)
            )
        else:
            specs.append(Spec("cpu_usage_percent", {"mode": mode}, signal=1, b=share, decimals=2))
    specs += [
        Spec("memory_bytes", {"state": "total"}, a=1.0, scale="mem", integer=True),
        Spec("memory_bytes", {"state": "used"}, signal=2, b=1.0, scale="mem", integer=True),
        Spec(
            "memory_bytes",
            {"state": "available"},
            signal=2,
            a=1.0,
            b=-1.0,
            scale="mem",
            integer=True,
        ),
        Spec(
            "memory_bytes",
            {"state": "cached"},
            signal=2,
            a=0.25,
            b=-0.15,
            scale="mem",
            lo=0,
            integer=True,
        ),
        Spec(
            "memory_bytes", {"state": "buffers"}, a=0.02, e=0.001, scale="mem", lo=0, integer=True
        ),
        Spec("load1", {}, decimals=2, signal=1, b=0.010, e=0.30, scale="cores", lo=0),
        Spec("load5", {}, decimals=2, signal=1, b=0.0095, e=0.12, scale="cores", lo=0),
        Spec("load15", {}, decimals=2, signal=1, b=0.009, e=0.05, scale="cores", lo=0),
        Spec("swap_bytes", {"state": "total"}, a=1.0, scale="swap", integer=True),
        Spec(
            "swap_bytes",
            {"state": "used"},
            a=0.05,
            d=0.02,
            e=0.001,
            scale="swap",
            lo=0,
            integer=True,
        ),
    ]
    specs += [
        Spec(
            "cpu_core_usage_percent",
            {"cpu": str(core)},
            signal=1,
            b=1.0,
            e=8.0,
            lo=0,
            hi=100,
            decimals=1,
        )
        for core in range(4)
    ]
    root = {"mountpoint": "/", "device": "/dev/nvme0n1p2", "fstype": "ext4"}
    specs += [
        Spec("disk_bytes", {**root, "state": "total"}, a=1.0, scale="disk", integer=True),
        # Filling up by about 0.3 % of the disk a year (c is per second since T0).
        Spec("disk_bytes", {**root, "state": "used"}, a=0.4, c=1e-10, scale="disk", integer=True),
        Spec(
            "disk_bytes",
            {**root, "state": "free"},
            a=0.6,
            c=-1e-10,
            scale="disk",
            lo=0,
            integer=True,
        ),
    ]
    specs += [
        Spec(name, {"device": "nvme0n1"}, c=rate, d=0.6, counter=True, decimals=decimals)
        for name, rate, decimals in (
            ("disk_read_bytes_total", 2e6, 0),
            ("disk_written_bytes_total", 5e6, 0),
            ("disk_reads_total", 60.0, 0),
            ("disk_writes_total", 150.0, 0),
            ("disk_io_time_seconds_total", 0.05, 3),  # milliseconds in /proc/diskstats
            ("disk_io_weighted_seconds_total", 0.2, 3),
        )
    ]
    for name, rate in (
        ("net_bytes_total", 3e6),
        ("net_packets_total", 3e3),
        ("net_errors_total", 0.001),
        ("net_drops_total", 0.02),
    ):
        specs += [
            Spec(
                name,
                {"interface": "eth0", "direction": direction},
                c=rate,
                d=0.7,
                counter=True,
                integer=True,
            )
            for direction in ("rx", "tx")
        ]
    specs += [
        Spec("tcp_connections", {"state": state}, a=a, d=d, e=e, lo=0, integer=True)
        for state, a, d, e in (
            ("established", 200.0, 80.0, 10.0),
            ("time_wait", 60.0, 30.0, 8.0),
            ("listen", 12.0, 0.0, 0.0),
            ("close_wait", 2.0, 0.0, 1.0),
            ("syn_recv", 1.0, 0.0, 1.0),
            ("fin_wait2", 3.0, 1.0, 1.0),
        )
    ]
    specs += [
        Spec("processes", {}, a=300.0, d=20.0, e=5.0, lo=1, integer=True),
        Spec(
            "uptime_seconds", {}, c=1.0, decimals=2
        ),  # a is the host's uptime at T0 (set per host)
        Spec("open_fds", {"state": "allocated"}, a=3000.0, d=500.0, e=30.0, lo=0, integer=True),
        Spec("context_switches_total", {}, c=5000.0, d=0.5, counter=True, integer=True),
        Spec("interrupts_total", {}, c=3000.0, d=0.5, counter=True, integer=True),
    ]
    assert len(specs) == 50
    return specs


def _extra(index: int) -> Spec:
    """Series 51 and beyond: more cores, per-core CPU time, then application counters."""
    if index < 12:
        return Spec(
            "cpu_core_usage_percent",
            {"cpu": str(4 + index)},
            signal=1,
            b=1.0,
            e=8.0,
            lo=0,
            hi=100,
            decimals=1,
        )
    index -= 12
    if index < 16 * len(_CPU_SHARES):
        cpu, m = divmod(index, len(_CPU_SHARES))
        mode, share = _CPU_SHARES[m]
        rate = 0.5 if share is None else share
        return Spec(
            "cpu_seconds_total",
            {"cpu": str(cpu), "mode": mode},
            c=rate,
            d=0.5,
            counter=True,
            decimals=2,  # USER_HZ ticks
        )
    index -= 16 * len(_CPU_SHARES)
    return Spec(
        "app_requests_total",
        {"handler": f"/api/v{index % 3}/r{index}", "code": "200"},
        c=20.0,
        d=0.8,
        counter=True,
        integer=True,
    )


def host_specs(count: int) -> list[Spec]:
    base = _catalog()
    return base[:count] + [_extra(i) for i in range(max(0, count - len(base)))]


def host_series(count: int) -> list[Series]:
    """The names and labels of a host's first ``count`` series."""
    return [(spec.name, spec.labels) for spec in host_specs(count)]


class HostModel:
    """The value generators of ``hosts`` hosts with the same first ``count`` series.

    Host parameters (cores, memory, disk, boot time, levels and phases) and every series'
    coefficients are drawn from ``rng`` at construction, so the same seed gives the same hosts;
    ``values`` then gives any instant's values (noise drawn from ``noise``).
    """

    def __init__(
        self,
        hosts: int,
        count: int,
        rng: np.random.Generator,
        now: float,
        noise: np.random.Generator | None = None,
    ) -> None:
        self.hosts = hosts
        self.cores = rng.choice((4, 8, 16, 32), hosts, p=(0.2, 0.4, 0.3, 0.1)).astype(float)
        mem = rng.choice((8, 16, 32, 64, 128), hosts, p=(0.1, 0.3, 0.3, 0.2, 0.1)) * 2.0**30
        swap = rng.choice((2, 4, 8), hosts) * 2.0**30
        disk = rng.choice((100, 250, 500, 1000), hosts) * 1e9
        boot = now - rng.uniform(1, 90, hosts) * DAY_S
        # The busy signal: level, daily swing and phase; memory utilisation likewise.
        self.busy0 = rng.uniform(5, 70, hosts)
        self.busy1 = rng.uniform(2, 20, hosts)
        self.phase = rng.uniform(0, 2 * math.pi, hosts)
        self.mem0 = rng.uniform(0.3, 0.85, hosts)

        specs = host_specs(count)
        self.specs = specs
        n = len(specs)
        self.host_of = np.repeat(np.arange(hosts, dtype=np.int64), n)
        self.signal = np.tile(np.array([s.signal for s in specs], dtype=np.int8), hosts)
        self.lo = np.tile(np.array([s.lo for s in specs]), hosts)
        self.hi = np.tile(np.array([s.hi for s in specs]), hosts)
        self.integer = np.tile(np.array([s.integer for s in specs]), hosts)
        # Rounded series: their index and 10**decimals.
        decimals = np.tile([-1 if s.decimals is None else s.decimals for s in specs], hosts)
        self.rounded = np.flatnonzero(decimals >= 0)
        self.rounding = 10.0 ** decimals[self.rounded]
        self.phase_series = rng.uniform(0, 2 * math.pi, hosts * n)

        # Per host (rows) and series (columns). Gauges: the spec's coefficients times the host's
        # scale factor, with a +-10 % jitter where they vary; counters: a rate per host.
        scales = np.stack((np.ones(hosts), mem, swap, disk, self.cores))  # in _SCALES order
        factor = scales[[_SCALES.index(s.scale) for s in specs]].T
        coef = {k: np.array([getattr(s, k) for s in specs]) for k in "abcde"}
        varies = (coef["d"] != 0) | (coef["e"] != 0)
        jitter = np.where(varies, rng.uniform(0.9, 1.1, (hosts, n)), 1.0)
        a = coef["a"] * factor * jitter
        b = coef["b"] * factor
        c = coef["c"] * factor
        d = coef["d"] * factor
        e = coef["e"] * factor
        counter = np.array([s.counter for s in specs])
        rate = coef["c"] * rng.lognormal(0.0, 0.8, (hosts, n))
        swing = rate * coef["d"] / _OMEGA_DAY
        # v = a + r (t - T0) + r k / w sin(w t + p): its rate r (1 + k cos) is never negative,
        # and it is about 0 at the host's boot (>= 0 from then on).
        since_boot = (_T0 - boot)[:, None]
        a = np.where(counter, rate * since_boot + swing, a)
        b = np.where(counter, 0.0, b)
        c = np.where(counter, rate, c)
        d = np.where(counter, swing, d)
        e = np.where(counter, 0.0, e)
        uptime = np.array([s.name == "uptime_seconds" for s in specs])
        a = np.where(uptime, since_boot, a)
        self.a, self.b, self.c = a.ravel(), b.ravel(), c.ravel()
        self.d, self.e = d.ravel(), e.ravel()
        self._noisy = np.flatnonzero(self.e)
        self._noise = noise if noise is not None else np.random.default_rng()

    @property
    def series(self) -> int:
        return len(self.a)

    def values(self, times: np.ndarray) -> np.ndarray:
        """Every series at unix seconds ``times``: shape (series, times), host-major."""
        noise = self._noise
        t = times[None, :]
        day = np.sin(_OMEGA_DAY * t + self.phase[:, None])  # (hosts, times)
        busy = np.clip(
            self.busy0[:, None]
            + self.busy1[:, None] * day
            + 4.0 * noise.standard_normal((self.hosts, len(times))),
            0.5,
            99.0,
        )
        mem = np.clip(
            self.mem0[:, None]
            + 0.04 * day
            + 0.005 * noise.standard_normal((self.hosts, len(times))),
            0.05,
            0.97,
        )
        signals = np.stack((np.zeros_like(busy), busy, mem))  # (3, hosts, times)
        signal = signals[self.signal, self.host_of]  # (series, times)
        v = self.a[:, None] + self.b[:, None] * signal
        v += self.c[:, None] * (t - _T0)
        v += self.d[:, None] * np.sin(_OMEGA_DAY * t + self.phase_series[:, None])
        noisy = self._noisy
        v[noisy] += self.e[noisy, None] * noise.standard_normal((len(noisy), len(times)))
        np.clip(v, self.lo[:, None], self.hi[:, None], out=v)
        v[self.integer] = np.floor(v[self.integer])
        scale = self.rounding[:, None]
        v[self.rounded] = np.rint(v[self.rounded] * scale) / scale
        return v

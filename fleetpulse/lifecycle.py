"""Process lifecycle shared by every role: process names, the parent-death signal, signals,
stack dumps of a process that is stuck."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import faulthandler
import io
import logging
import os
import signal
import sys
import threading
from collections import Counter
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)

# The exit status of a process that the shutdown watchdog ended (EX_SOFTWARE).
EXIT_STUCK = 70

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


def dump_stacks_on_sigusr1() -> None:
    """``kill -USR1 <pid>`` writes every thread's Python stack to stderr (the log) and goes on."""
    faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)


def exit_if_stuck(seconds: float) -> threading.Timer:
    """Start a watchdog for a shutdown: if it is not cancelled within ``seconds``, log every
    thread's stack and end the process with EXIT_STUCK, instead of hanging until SIGKILL."""

    def expire() -> None:
        log.critical("shutdown still not done after %.1f s: exiting; stacks follow", seconds)
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        sys.stderr.flush()
        os._exit(EXIT_STUCK)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    return timer


def exit_now(status: int = 0) -> None:
    """End the process at once, its logs flushed: for a process whose shutdown is done, so that
    it does not wait for the event loop to cancel what is left, one by one."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def task_stacks(most: int = 10) -> str:
    """Where the tasks of the running event loop are waiting, for a log line: each distinct
    stack once, with how many tasks wait there (a front-end holds a task per agent), the
    ``most`` commonest."""
    stacks: Counter[tuple[str, ...]] = Counter()
    for task in asyncio.all_tasks():
        if task is asyncio.current_task():
            continue
        frames = tuple(
            f"  {frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}"
            for frame in task.get_stack(limit=8)
        )
        stacks[(f"task {task.get_coro().__qualname__}", *frames)] += 1  # type: ignore[union-attr]
    out = io.StringIO()
    for stack, count in stacks.most_common(most):
        out.write(f"{count} tasks: {stack[0]}\n")
        out.writelines(line + "\n" for line in stack[1:])
    if len(stacks) > most:
        out.write(f"... and {len(stacks) - most} other stacks\n")
    return out.getvalue()


async def cancel_and_wait(tasks: Iterable[asyncio.Future[Any]], retry_s: float = 0.01) -> None:
    """Cancel ``tasks`` and return once every one has ended, cancelling again while one goes on.

    One cancellation is not always enough. Python 3.11's ``asyncio.wait_for`` drops it when the
    awaited operation completes in the same loop iteration, and redis-py wraps every command it
    sends in ``wait_for`` once a socket timeout is set (the default from redis-py 8 on). Measured
    on a task sending PINGs in a loop: 26-31 of 40 single cancels lost with redis-py 8.1, 81-83 of
    100 with 8.2 (tests/integration/test_cancel.py prints it). A later cancel finds the task
    waiting elsewhere and ends it; how soon depends on how often it comes. With redis-py 8.2.0,
    against a local Redis: every 100 ms, 201 ms median and 2.7 s at worst per surviving task;
    every 10 ms, 30 ms median and 316 ms at worst (the loop of tests/integration/test_cancel.py,
    100 rounds).
    """
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=retry_s)

"""Test-only failpoints: crash a worker at an exact step, to test recovery from it.

Never active unless ``FLEETPULSE_FAILPOINT`` is set (settings.failpoint); production leaves it
unset. One failpoint exists (docs/architecture.md, "Failpoints"):

- ``after-commit:<marker file>``: the worker SIGKILLs itself right after a chunk's COMMIT and
  before its XACK, once: the first process to create the marker file (O_EXCL) fires, writes the
  chunk's stream entries into it (``<stream> <entry id>`` per line) and dies; a restarted worker,
  or any other worker sharing the marker, finds it and carries on. tests/faults uses it.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fleetpulse.ingest.decode import Entry

AFTER_COMMIT = "after-commit"  # settings.failpoint checks the syntax at startup


def after_commit(spec: str | None, entries: Sequence[Entry]) -> None:
    """Called between a chunk's COMMIT and its XACK."""
    if spec is None:
        return
    name, _, marker = spec.partition(":")
    if name != AFTER_COMMIT:
        return
    try:
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return  # fired already
    with os.fdopen(fd, "w") as out:
        out.write("".join(f"{stream} {entry_id}\n" for stream, entry_id, _ in entries))
        out.flush()
        os.fsync(out.fileno())
    os.kill(os.getpid(), signal.SIGKILL)

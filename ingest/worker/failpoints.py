"""Test-only failpoints: crash a worker at an exact step, to test recovery from it.

Never active unless ``FLEETPULSE_FAILPOINT`` is set (settings.failpoint); production leaves it
unset. Three failpoints exist (docs/architecture.md, "Failpoints"), each of the form
``<name>:<marker file>`` and each firing once: the first process to create the marker file (O_EXCL)
fires, writes what it was doing into it and SIGKILLs itself; a restarted worker, or any other
worker sharing the marker, finds the file and carries on. tests/faults uses them.

- ``after-commit:<marker file>``: a worker dies right after a chunk's COMMIT and before its XACK;
  the marker names the chunk's stream entries (``<stream> <entry id>`` per line).
- ``mid-rollup:<marker file>``: the process running the rollup job dies in the middle of
  recomputing a minute, inside the minute's transaction after its rollup rows were written (COPY)
  and before COMMIT; the marker holds the minute (its start, ISO 8601 in UTC, one line).
- ``mid-compress:<marker file>``: the process compressing an hour dies inside a batch's
  transaction, after its chunks were written (COPY) and its rows deleted from ``samples``, before
  COMMIT; the marker holds the hour (its start, ISO 8601 in UTC, one line).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fleetpulse.ingest.worker.decode import Entry

# settings.failpoint checks the syntax at startup
AFTER_COMMIT = "after-commit"
MID_ROLLUP = "mid-rollup"
MID_COMPRESS = "mid-compress"


def after_commit(spec: str | None, entries: Sequence[Entry]) -> None:
    """Called between a chunk's COMMIT and its XACK."""
    marker = _marker(spec, AFTER_COMMIT)
    if marker is not None:
        _fire(marker, "".join(f"{stream} {entry_id}\n" for stream, entry_id, _ in entries))


def mid_rollup(spec: str | None, bucket: datetime) -> None:
    """Called in a minute's recompute transaction, between writing its rows and COMMIT."""
    marker = _marker(spec, MID_ROLLUP)
    if marker is not None:
        _fire(marker, f"{bucket.astimezone(UTC).isoformat()}\n")


def mid_compress(spec: str | None, hour: datetime) -> None:
    """Called in a compression batch's transaction, between writing its chunks and COMMIT."""
    marker = _marker(spec, MID_COMPRESS)
    if marker is not None:
        _fire(marker, f"{hour.astimezone(UTC).isoformat()}\n")


def _marker(spec: str | None, name: str) -> str | None:
    """The marker file if ``spec`` sets the failpoint ``name``."""
    if spec is None:
        return None
    spec_name, _, marker = spec.partition(":")
    return marker if spec_name == name else None


def _fire(marker: str, content: str) -> None:
    """Once per marker file: write ``content`` into it and SIGKILL this process."""
    try:
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return  # fired already
    with os.fdopen(fd, "w") as out:
        out.write(content)
        out.flush()
        os.fsync(out.fileno())
    os.kill(os.getpid(), signal.SIGKILL)

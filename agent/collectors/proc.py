"""The /proc reader: the kernel's files, kept open and read afresh, and the kernel's units.

On Linux most collectors read the kernel's own files (/proc, /sys) directly: one read per file,
parsed once, which costs a fraction of the equivalent psutil calls and gives fields psutil does not
expose; elsewhere they fall back to psutil or skip what does not exist. Every collector reads
through the one `ProcReader` its scheduler owns (collectors/scheduler.py).
"""

from __future__ import annotations

import contextlib
import os
import sys

LINUX = sys.platform.startswith("linux")

# The units of the kernel's counters: /proc/stat counts CPU time in clock ticks, several files
# count memory in pages.
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

_READ_CHUNK = 65536


class ProcReader:
    """Reads the kernel's files for the collectors; within one collection (between
    `begin_collection` and `end_collection`), `read_shared` reads each file once."""

    def __init__(self) -> None:
        # Kernel files read every collection stay open: a pread at offset 0 makes the kernel
        # generate the file afresh (seq_file and sysctl files alike), without an open and a close
        # each time (about 20 us saved per file per collection on the 2-core development VM, more
        # than the parse of most).
        self._open_files: dict[str, int] = {}
        # While a collection runs: the files already read in it, so that collectors reading the
        # same file (/proc/stat: cpu and system; /proc/meminfo: memory and meminfo) read it once.
        self._this_collection: dict[str, str] | None = None

    def read(self, path: str) -> str:
        """The whole file, as the kernel generates it now."""
        fd = self._open_files.get(path)
        if fd is None:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            self._open_files[path] = fd
        try:
            data = os.pread(fd, _READ_CHUNK, 0)
            while len(data) % _READ_CHUNK == 0 and data:  # a file larger than one read
                more = os.pread(fd, _READ_CHUNK, len(data))
                if not more:
                    break
                data += more
        except OSError:
            del self._open_files[path]
            os.close(fd)
            raise
        return data.decode()

    def read_shared(self, path: str) -> str:
        """`read`, once per collection for a file that more than one collector reads."""
        if self._this_collection is None:
            return self.read(path)
        text = self._this_collection.get(path)
        if text is None:
            text = self._this_collection[path] = self.read(path)
        return text

    def begin_collection(self) -> None:
        self._this_collection = {}

    def end_collection(self) -> None:
        self._this_collection = None

    def close(self) -> None:
        """Close the kernel files kept open between collections (they reopen when read again)."""
        for fd in self._open_files.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._open_files.clear()

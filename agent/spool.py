"""The agent's on-disk spool: every batch not yet freed by the platform, in order, crash-safe.

Layout: ``<state_dir>/spool/<first sequence number, 20 digits>.seg`` files, each a run of records
``[u32 length][u32 crc32][u64 epoch][u64 sequence][u32 points][payload]`` (little endian), appended
and fsynced one batch at a time (an agent writes one batch per collection interval, so an fsync
each costs nothing that matters). A segment is closed at ``SEGMENT_BYTES`` and deleted once every
batch in it is freed.

Crash safety (kill -9 or power loss at any point): a record is only believed when its length fits
the file and its CRC matches; recovery stops at the first record that does not and truncates the
segment there, so a torn append loses only the batch being written (which the agent had not sent
as durable). Freed batches are not journaled: after a crash, batches freed since their
segment's last deletion are sent again, and the platform's ledger makes that a no-op.

What a restart replays, as its log says: a clean stop (``close``) leaves ``replay.json`` naming
the spooled batches the platform had accepted (queued; ``mark_accepted``) but not yet reported
committed, those it had not accepted, and the freed batches still in a segment, which the next
start then does not send again. The file is removed when read, so that after a kill -9 the next
start claims nothing and replays whatever its segments hold, as above.

Bounded: when the spool would exceed ``max_bytes``, the oldest segments are dropped whole, and
every batch dropped that way is counted (``dropped_batches``, ``dropped_points``) and reported.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

SEGMENT_BYTES = 1024 * 1024
_HEADER = struct.Struct("<IIQQI")  # length of the rest, crc32 of the rest, epoch, sequence, points
_BODY = struct.Struct("<QQI")
REPLAY_FILE = "replay.json"


@dataclass(frozen=True)
class Spooled:
    epoch: int
    sequence: int
    points: int
    payload: bytes


@dataclass
class _Segment:
    path: Path
    size: int
    live: set[tuple[int, int]]
    # Freed, still in the file until the whole segment goes: recorded at a clean stop.
    freed: set[tuple[int, int]] = field(default_factory=set)


class Spool:
    def __init__(
        self,
        directory: Path,
        max_bytes: int,
        on_drop: Callable[[Spooled], None] | None = None,
    ) -> None:
        self.directory = directory
        self._on_drop = on_drop
        self.max_bytes = max_bytes
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._segments: list[_Segment] = []
        # (epoch, sequence) -> (record, segment) in spool order
        self._batches: OrderedDict[tuple[int, int], tuple[Spooled, _Segment]] = OrderedDict()
        self._file: int | None = None
        self.dropped_batches = 0
        self.dropped_points = 0
        self.recovered_torn_bytes = 0
        # Spooled batches the platform accepted (queued) and has not reported committed yet, and
        # those recovered without a record of whether it had (after a kill -9).
        self._accepted: set[tuple[int, int]] = set()
        self._status_unknown: set[tuple[int, int]] = set()
        self._recover()

    # -- reading back --------------------------------------------------------------------------

    def _recover(self) -> None:
        record = self._read_record()
        for path in sorted(self.directory.glob("*.seg")):
            data = path.read_bytes()
            segment = _Segment(path, 0, set())
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, crc, *_ = _HEADER.unpack_from(data, offset)
                end = offset + 8 + length
                if length < _BODY.size or end > len(data):
                    break
                body = data[offset + 8 : end]
                if zlib.crc32(body) != crc:
                    break
                epoch, sequence, points = _BODY.unpack_from(body)
                offset = end
                if (epoch, sequence) in record["freed"]:
                    segment.freed.add((epoch, sequence))  # committed or given up: not again
                    continue
                batch = Spooled(epoch, sequence, points, bytes(body[_BODY.size :]))
                self._batches[(epoch, sequence)] = (batch, segment)
                segment.live.add((epoch, sequence))
            if offset < len(data):
                self.recovered_torn_bytes += len(data) - offset
                log.warning(
                    "spool segment %s: %d bytes after the last whole record discarded: a write "
                    "cut short by a crash (that batch was never sent nor counted as sent) or a "
                    "damaged file (the batches in them are lost)",
                    path,
                    len(data) - offset,
                )
                with path.open("r+b") as handle:
                    handle.truncate(offset)
                    os.fsync(handle.fileno())
            segment.size = offset
            if segment.live:
                self._segments.append(segment)
            else:
                path.unlink()
        self._accepted = record["accepted"] & self._batches.keys()
        self._status_unknown = self._batches.keys() - self._accepted - record["not_accepted"]
        if self._batches:
            log.info("spool: replaying %s", self._describe_replay())

    def _read_record(self) -> dict[str, set[tuple[int, int]]]:
        """What the last clean stop recorded about the batches in its segments (the module
        docstring), by kind; all empty when it recorded nothing. Read once: removed."""
        path = self.directory / REPLAY_FILE
        try:
            document = json.loads(path.read_bytes())
        except (FileNotFoundError, ValueError):  # ValueError: torn by a crash while written
            document = {}
        path.unlink(missing_ok=True)
        record: dict[str, set[tuple[int, int]]] = {}
        for kind in ("accepted", "not_accepted", "freed"):
            pairs = document.get(kind) if isinstance(document, dict) else None
            record[kind] = {
                (pair[0], pair[1])
                for pair in (pairs if isinstance(pairs, list) else ())
                if isinstance(pair, list) and len(pair) == 2 and all(type(n) is int for n in pair)
            }
        return record

    def _describe_replay(self) -> str:
        # Read by an operator after a restart: these batches are held to be sent again, not lost.
        total = len(self._batches)
        parts = []
        if self._accepted:
            parts.append(
                f"{len(self._accepted)} already accepted by the platform, "
                "not yet confirmed committed"
            )
        never = total - len(self._accepted) - len(self._status_unknown)
        if never:
            parts.append(f"{never} never accepted")
        if self._status_unknown:
            parts.append(
                f"{len(self._status_unknown)} not yet confirmed committed (whether the platform "
                "accepted them was not recorded, as after a kill -9)"
            )
        return f"{total} batches from {self.directory}: {'; '.join(parts)}"

    def pending(self) -> list[Spooled]:
        """Every batch not freed, in the order it was spooled."""
        return [record for record, _ in self._batches.values()]

    def get(self, epoch: int, sequence: int) -> Spooled | None:
        entry = self._batches.get((epoch, sequence))
        return entry[0] if entry else None

    def __len__(self) -> int:
        return len(self._batches)

    @property
    def accepted_batches(self) -> int:
        """How many spooled batches the platform accepted and has not reported committed."""
        return len(self._accepted)

    def mark_accepted(self, epoch: int, sequence: int) -> None:
        """The platform queued the batch; it stays spooled until committed (see ``close``)."""
        if (epoch, sequence) in self._batches:
            self._accepted.add((epoch, sequence))
            self._status_unknown.discard((epoch, sequence))

    @property
    def size_bytes(self) -> int:
        return sum(segment.size for segment in self._segments)

    # -- writing -------------------------------------------------------------------------------

    def append(self, epoch: int, sequence: int, points: int, payload: bytes) -> None:
        body = _BODY.pack(epoch, sequence, points) + payload
        record = struct.pack("<II", len(body), zlib.crc32(body)) + body
        self._make_room(len(record))
        segment = self._writable(len(record))
        assert self._file is not None
        os.write(self._file, record)
        os.fsync(self._file)
        segment.size += len(record)
        segment.live.add((epoch, sequence))
        self._batches[(epoch, sequence)] = (Spooled(epoch, sequence, points, payload), segment)

    def _writable(self, need: int) -> _Segment:
        if self._segments and self._file is not None:
            current = self._segments[-1]
            if current.size + need <= SEGMENT_BYTES or current.size == 0:
                return current
        self._close_file()
        if self._segments and not self._segments[-1].live:
            self._remove(self._segments[-1])  # the previous one was emptied while current
        # Named by a counter that sorts after every existing segment (recovery reads in name order).
        names = sorted(self.directory.glob("*.seg"))
        number = int(names[-1].stem) + 1 if names else 1
        path = self.directory / f"{number:020d}.seg"
        self._file = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._fsync_directory()
        segment = _Segment(path, 0, set())
        self._segments.append(segment)
        return segment

    def _make_room(self, need: int) -> None:
        while self._segments and self.size_bytes + need > self.max_bytes:
            oldest = self._segments[0]
            if oldest is self._segments[-1]:
                self._close_file()
            for key in list(oldest.live):
                record, _ = self._batches.pop(key)
                self._accepted.discard(key)
                self._status_unknown.discard(key)
                self.dropped_batches += 1
                self.dropped_points += record.points
                if self._on_drop is not None:
                    self._on_drop(record)
            log.warning(
                "spool full (%d bytes): dropped the oldest segment, %d batches",
                self.max_bytes,
                len(oldest.live),
            )
            self._remove(oldest)

    def free(self, epoch: int, sequence: int) -> bool:
        """The platform has the batch: forget it (its segment goes once all of it is freed)."""
        entry = self._batches.pop((epoch, sequence), None)
        if entry is None:
            return False
        self._accepted.discard((epoch, sequence))
        self._status_unknown.discard((epoch, sequence))
        _, segment = entry
        segment.live.discard((epoch, sequence))
        segment.freed.add((epoch, sequence))
        if not segment.live and segment is not self._segments[-1]:
            self._remove(segment)
        return True

    def _remove(self, segment: _Segment) -> None:
        self._segments.remove(segment)
        segment.path.unlink(missing_ok=True)
        self._fsync_directory()

    def _fsync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _close_file(self) -> None:
        if self._file is not None:
            os.close(self._file)
            self._file = None

    def close(self) -> None:
        """Close the segment being written and record what the next start replays: which
        spooled batches the platform had accepted, and which freed ones are still in a segment
        (not to be sent again). Idempotent."""
        self._close_file()
        not_accepted = self._batches.keys() - self._accepted - self._status_unknown
        freed = set().union(*(segment.freed for segment in self._segments))
        document = {
            kind: sorted([epoch, seq] for epoch, seq in keys)
            for kind, keys in (
                ("accepted", self._accepted),
                ("not_accepted", not_accepted),
                ("freed", freed),
            )
        }
        path = self.directory / REPLAY_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(document, separators=(",", ":")))
        os.replace(tmp, path)

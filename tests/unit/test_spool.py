"""The agent's on-disk spool: order, freeing, bounds, and recovery after torn writes and kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fleetpulse.agent import spool as spool_module
from fleetpulse.agent.spool import Spool


def test_batches_come_back_in_order_after_a_restart(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=10_000_000)
    for seq in range(1, 6):
        spool.append(7, seq, 10, f"batch-{seq}".encode())
    assert spool.free(7, 2) and not spool.free(7, 2)
    spool.close()
    again = Spool(tmp_path, max_bytes=10_000_000)
    # freed batches are not journaled, so 2 may come back; everything unfreed must
    assert [(b.sequence, b.payload) for b in again.pending() if b.sequence != 2] == [
        (s, f"batch-{s}".encode()) for s in (1, 3, 4, 5)
    ]
    again.append(8, 1, 3, b"new epoch")
    assert again.pending()[-1].epoch == 8


def test_fully_freed_segments_are_deleted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spool_module, "SEGMENT_BYTES", 200)
    spool = Spool(tmp_path, max_bytes=10_000_000)
    for seq in range(1, 21):
        spool.append(1, seq, 1, b"x" * 60)
    assert len(list(tmp_path.glob("*.seg"))) > 5
    for seq in range(1, 21):
        spool.free(1, seq)
    assert len(list(tmp_path.glob("*.seg"))) <= 1  # at most the one being written
    assert len(spool) == 0


def test_a_full_spool_drops_the_oldest_and_counts_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spool_module, "SEGMENT_BYTES", 300)
    spool = Spool(tmp_path, max_bytes=1000)
    for seq in range(1, 31):
        spool.append(1, seq, 5, b"y" * 70)
    assert spool.size_bytes <= 1000
    kept = [b.sequence for b in spool.pending()]
    assert kept == list(range(31 - len(kept), 31))  # the newest survive, in order
    assert spool.dropped_batches == 30 - len(kept)
    assert spool.dropped_points == 5 * spool.dropped_batches


def test_a_torn_last_record_is_cut_off_and_the_rest_kept(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=10_000_000)
    for seq in range(1, 4):
        spool.append(1, seq, 1, b"z" * 100)
    spool.close()
    (segment,) = tmp_path.glob("*.seg")
    size = segment.stat().st_size
    with segment.open("r+b") as handle:
        handle.truncate(size - 30)  # the power went out in the middle of the third append
    again = Spool(tmp_path, max_bytes=10_000_000)
    assert [b.sequence for b in again.pending()] == [1, 2]
    assert again.recovered_torn_bytes > 0
    with segment.open("ab") as handle:
        handle.write(b"\x00" * 5)  # garbage after a clean end is ignored too
    assert [b.sequence for b in Spool(tmp_path, max_bytes=10_000_000).pending()] == [1, 2]


_WRITER = """
import sys
from pathlib import Path
from fleetpulse.agent.spool import Spool
spool = Spool(Path(sys.argv[1]), max_bytes=50_000_000)
seq = max((b.sequence for b in spool.pending()), default=0)
while True:
    seq += 1
    spool.append(1, seq, 3, bytes([seq % 251]) * (200 + seq % 997))
    if seq % 50 == 0:
        for b in spool.pending()[:25]:
            spool.free(b.epoch, b.sequence)
"""


@pytest.mark.parametrize("run", range(5))
def test_kill_9_at_any_point_never_corrupts_the_spool(tmp_path: Path, run: int) -> None:
    """A real process appending and freeing, killed at a random moment, five times over."""
    newest = 0
    for kill in range(3):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path)])
        time.sleep(0.2 + 0.13 * ((run * 3 + kill) % 5))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        recovered = Spool(tmp_path, max_bytes=50_000_000)
        sequences = [b.sequence for b in recovered.pending()]
        assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)
        for b in recovered.pending():  # every record whole, payload as written
            assert b.payload == bytes([b.sequence % 251]) * (200 + b.sequence % 997)
        # an append returns after fsync: what a previous run had durably written never vanishes
        # (the writer frees only the oldest, so the newest survives every kill)
        assert sequences and sequences[-1] >= newest
        newest = sequences[-1]
        recovered.close()

"""The agent's on-disk spool: order, freeing, bounds, and recovery after torn writes and kill -9."""

from __future__ import annotations

import logging
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


def replay_message(caplog: pytest.LogCaptureFixture) -> str:
    (message,) = [r.getMessage() for r in caplog.records if "spool: " in r.getMessage()]
    return message


def test_a_restart_after_a_clean_stop_says_what_it_replays_and_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool(tmp_path, max_bytes=10_000_000)
    for seq in range(1, 7):
        spool.append(1, seq, 1, b"b")
    for seq in (1, 2, 3, 4):
        spool.mark_accepted(1, seq)  # queued by the platform, not yet committed
    spool.free(1, 4)  # committed: still in the segment file, but not to be sent again
    spool.close()
    with caplog.at_level(logging.INFO, logger="fleetpulse.agent.spool"):
        again = Spool(tmp_path, max_bytes=10_000_000)
    message = replay_message(caplog)
    assert message.startswith(f"spool: replaying 5 batches from {tmp_path}: ")
    assert "3 already accepted by the platform, not yet confirmed committed" in message
    assert "2 never accepted" in message
    assert "recovered" not in message and "not recorded" not in message
    assert again.accepted_batches == 3
    assert [b.sequence for b in again.pending()] == [1, 2, 3, 5, 6]


def test_a_spool_all_accepted_says_so_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool(tmp_path, max_bytes=10_000_000)
    for seq in range(1, 30):
        spool.append(1, seq, 1, b"b")
        spool.mark_accepted(1, seq)
    spool.close()
    with caplog.at_level(logging.INFO, logger="fleetpulse.agent.spool"):
        Spool(tmp_path, max_bytes=10_000_000)
    assert replay_message(caplog) == (
        f"spool: replaying 29 batches from {tmp_path}: 29 already accepted by the platform, "
        "not yet confirmed committed"
    )


def test_after_an_unclean_stop_the_replay_claims_nothing_about_acceptance(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool(tmp_path, max_bytes=10_000_000)
    for seq in range(1, 4):
        spool.append(1, seq, 1, b"b")
        spool.mark_accepted(1, seq)
    spool.close()
    Spool(tmp_path, max_bytes=10_000_000)  # reads the record, then is "killed" (never closed)
    with caplog.at_level(logging.INFO, logger="fleetpulse.agent.spool"):
        again = Spool(tmp_path, max_bytes=10_000_000)
    message = replay_message(caplog)
    assert "3 not yet confirmed committed (whether the platform accepted them was not " in message
    assert "already accepted" not in message and "never accepted" not in message
    assert again.accepted_batches == 0
    # what this run learns is recorded again at its clean stop
    again.mark_accepted(1, 2)
    again.close()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="fleetpulse.agent.spool"):
        Spool(tmp_path, max_bytes=10_000_000)
    message = replay_message(caplog)
    assert "1 already accepted" in message and "2 not yet confirmed committed (" in message
    assert "never accepted" not in message


def test_a_torn_last_record_is_cut_off_and_the_rest_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool(tmp_path, max_bytes=10_000_000)
    for seq in range(1, 4):
        spool.append(1, seq, 1, b"z" * 100)
    spool.close()
    (segment,) = tmp_path.glob("*.seg")
    size = segment.stat().st_size
    with segment.open("r+b") as handle:
        handle.truncate(size - 30)  # the power went out in the middle of the third append
    with caplog.at_level(logging.WARNING, logger="fleetpulse.agent.spool"):
        again = Spool(tmp_path, max_bytes=10_000_000)
    assert [b.sequence for b in again.pending()] == [1, 2]
    assert again.recovered_torn_bytes > 0
    # says what was given up, and that a torn append is a batch never sent
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert (
        f"{segment}: {again.recovered_torn_bytes} bytes after the last whole record discarded"
        in warning
    )
    assert "never sent" in warning
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

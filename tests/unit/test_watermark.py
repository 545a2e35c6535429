"""The committed-watermark payload: ranges are exact, whatever order and repeats come in."""

from __future__ import annotations

from fleetpulse.ingest import watermark


def test_sequences_compress_into_ranges_per_agent_and_epoch() -> None:
    identities = [("b", 1, 7), ("a", 2, 3), ("a", 2, 1), ("a", 2, 2), ("a", 2, 9), ("a", 1, 4)]
    decoded = watermark.decode(watermark.encode(identities + identities[:2]))
    assert [(c.agent_id, c.epoch, c.ranges) for c in decoded] == [
        ("a", 1, ((4, 4),)),
        ("a", 2, ((1, 3), (9, 9))),
        ("b", 1, ((7, 7),)),
    ]
    assert sorted((c.agent_id, c.epoch, s) for c in decoded for s in c.sequences()) == sorted(
        set(identities)
    )


def test_empty_chunk_encodes_to_an_empty_list() -> None:
    assert watermark.decode(watermark.encode([])) == []

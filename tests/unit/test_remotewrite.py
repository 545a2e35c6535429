"""Remote write 1.0 requests into batches (ingest/remotewrite.py): decompression and decoding,
the mapping onto agents, labels kept as sent, the grouping by agent, timestamps and chunk, and the
identity that makes a retried request a repeat of the same batches."""

from __future__ import annotations

import math
import struct

import cramjam
import numpy as np
import pytest

from fleetpulse import errors
from fleetpulse.ingest import platformbatches, remotewrite
from fleetpulse.ingest.remotewrite import AgentMapping, RequestDecoder
from fleetpulse.proto import metric_pb2, remotewrite_pb2, wire

T0_MS = 1_796_000_000_000
STALE_NAN = struct.unpack("<d", struct.pack("<Q", remotewrite.STALE_NAN_BITS))[0]


def series(
    name: str, labels: dict[str, str], samples: list[tuple[int, float]]
) -> remotewrite_pb2.TimeSeries:
    pairs = sorted({"__name__": name, **labels}.items())
    return remotewrite_pb2.TimeSeries(
        labels=[remotewrite_pb2.Label(name=k, value=v) for k, v in pairs],
        samples=[remotewrite_pb2.Sample(value=v, timestamp=t) for t, v in samples],
    )


def raw(*timeseries: remotewrite_pb2.TimeSeries) -> bytes:
    return remotewrite_pb2.WriteRequest(timeseries=timeseries).SerializeToString()


def body(*timeseries: remotewrite_pb2.TimeSeries) -> bytes:
    return bytes(cramjam.snappy.compress_raw(raw(*timeseries)))


def decoder(**mapping: object) -> RequestDecoder:
    return RequestDecoder(AgentMapping(**mapping), 1 << 20)  # type: ignore[arg-type]


def stored(
    request: remotewrite.DecodedRequest,
) -> dict[tuple[str, str, tuple[tuple[str, str], ...], int], float]:
    """What the batches hold: (agent, name, labels, timestamp ns) -> value."""
    points = {}
    for batch in request.batches:
        columnar = metric_pb2.ColumnarBatch.FromString(batch.payload)
        assert columnar.agent_id == batch.agent_id
        assert columnar.epoch == remotewrite.EPOCH and columnar.sequence == batch.sequence
        width = len(columnar.series.entries)
        assert len(columnar.values) == width * len(columnar.timestamps_ns) == batch.samples
        for column, entry in enumerate(columnar.series.entries):
            for row, stamp in enumerate(columnar.timestamps_ns):
                key = (batch.agent_id, entry.name, tuple(sorted(entry.labels.items())), stamp)
                assert key not in points
                points[key] = columnar.values[row * width + column]
    return points


def sets(request: remotewrite.DecodedRequest) -> set[tuple[str, bytes]]:
    return {
        (b.agent_id, metric_pb2.ColumnarBatch.FromString(b.payload).series.SerializeToString())
        for b in request.batches
    }


# -- the body ---------------------------------------------------------------------------------


def test_a_snappy_body_decompresses_and_anything_else_is_bad_input() -> None:
    data = raw(series("up", {"instance": "a:1"}, [(T0_MS, 1)]))
    assert remotewrite.decompress(bytes(cramjam.snappy.compress_raw(data)), 1 << 20) == data
    for wrong in (data, b"", b"\xff\xff\xff\xff\xff\xff", bytes(cramjam.gzip.compress(data))):
        with pytest.raises(errors.BadInput, match="not snappy-compressed"):
            remotewrite.decompress(wrong, 1 << 20)


def test_a_body_declaring_more_than_the_limit_is_refused_before_decompressing() -> None:
    big = bytes(cramjam.snappy.compress_raw(b"\0" * 5000))
    with pytest.raises(errors.BadInput, match="5000 bytes, over the limit of 4096"):
        remotewrite.decompress(big, 4096)


def test_a_body_that_is_not_a_write_request_is_bad_input() -> None:
    with pytest.raises(errors.BadInput, match="not a protobuf WriteRequest"):
        decoder().decode(bytes(cramjam.snappy.compress_raw(b"\x0a\xff\xff\xff\xff\x0f")))


def test_a_label_that_is_not_utf8_is_bad_input_naming_the_series() -> None:
    label = wire.field_bytes(1, b"job") + wire.field_bytes(2, b"\xff\xfe")
    bad = wire.field_bytes(1, label) + wire.field_bytes(
        2, remotewrite_pb2.Sample(value=1, timestamp=T0_MS).SerializeToString()
    )
    good = series("up", {"instance": "a:1"}, [(T0_MS, 1)]).SerializeToString()
    data = wire.field_bytes(1, good) + wire.field_bytes(1, bad)
    with pytest.raises(errors.BadInput, match=r"timeseries\[1\]: a label does not decode"):
        decoder().decode_raw(data)


def test_metadata_exemplars_and_histograms_are_skipped() -> None:
    one = series("up", {"instance": "a:1"}, [(T0_MS, 1)]).SerializeToString()
    exemplar = wire.field_bytes(3, b"\x0a\x05\x0a\x01a\x12\x00\x11" + b"\0" * 8)
    histogram = wire.field_bytes(4, b"\x08\x01")
    metadata = wire.field_bytes(3, b"\x08\x01\x12\x02up")
    data = wire.field_bytes(1, one + exemplar + histogram) + metadata
    request = decoder().decode_raw(data)
    assert stored(request) == {("a", "up", (("instance", "a:1"),), T0_MS * 1_000_000): 1.0}


def test_an_empty_request_has_no_batches() -> None:
    assert decoder().decode(body()).batches == []
    assert decoder().decode(body(series("up", {}, []))).batches == []


# -- whose series -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "agent"),
    [
        ("web-1:9100", "web-1"),
        ("10.0.0.5:9100", "10.0.0.5"),
        ("[::1]:9100", "::1"),
        ("::1", "::1"),
        ("fe80::1:9100", "fe80::1:9100"),  # a bare IPv6 address: no port to cut
        ("web-1", "web-1"),
        ("web-1:", "web-1:"),
        ("web-1:http", "web-1:http"),
        (":9100", ":9100"),
        ("", platformbatches.PLATFORM_AGENT),
        (None, platformbatches.PLATFORM_AGENT),
        ("a\0b:1", platformbatches.PLATFORM_AGENT),
        ("x" * 257, platformbatches.PLATFORM_AGENT),
    ],
)
def test_the_mapping_label_names_the_agent_without_its_port(value: str | None, agent: str) -> None:
    assert AgentMapping().agent_of(value) == agent


def test_the_port_is_kept_when_the_operator_says_so() -> None:
    assert AgentMapping(strip_port=False).agent_of("web-1:9100") == "web-1:9100"


def test_every_label_is_kept_as_sent_and_series_without_the_label_go_to_the_platform() -> None:
    request = decoder().decode(
        body(
            series("node_load1", {"instance": "web-1:9100", "job": "node"}, [(T0_MS, 0.5)]),
            series("node_load1", {"instance": "web-1:9200", "job": "other"}, [(T0_MS, 0.7)]),
            series("cluster_ok", {"job": "federate"}, [(T0_MS, 1)]),
        )
    )
    ns = T0_MS * 1_000_000
    assert stored(request) == {
        ("web-1", "node_load1", (("instance", "web-1:9100"), ("job", "node")), ns): 0.5,
        ("web-1", "node_load1", (("instance", "web-1:9200"), ("job", "other")), ns): 0.7,
        ("", "cluster_ok", (("job", "federate"),), ns): 1.0,
    }
    assert request.series == 3 and request.samples == 3


def test_another_mapping_label() -> None:
    request = decoder(label="host").decode(
        body(series("up", {"host": "db-2", "instance": "db-2:9187"}, [(T0_MS, 1)]))
    )
    assert {b.agent_id for b in request.batches} == {"db-2"}


def test_an_agent_id_label_is_the_column_when_it_is_the_mapping_label_else_renamed() -> None:
    sent = series("up", {"agent_id": "db-2", "instance": "x:1"}, [(T0_MS, 1)])
    ns = T0_MS * 1_000_000
    assert stored(decoder(label="agent_id").decode(body(sent))) == {
        ("db-2", "up", (("instance", "x:1"),), ns): 1.0
    }
    assert stored(decoder().decode(body(sent))) == {
        ("x", "up", (("exported_agent_id", "db-2"), ("instance", "x:1")), ns): 1.0
    }


def test_invalid_names_reach_the_workers_which_refuse_and_count_them() -> None:
    # Nothing is refused here: the worker's validation (ingest/worker/validate.py) does it per
    # series and counts it (tests/integration/test_remote_write.py).
    request = decoder().decode(
        body(
            series("bad-name", {"instance": "a:1"}, [(T0_MS, 1)]),
            series("ok", {"instance": "a:1", "bad-label": "x"}, [(T0_MS, 2)]),
        )
    )
    assert request.samples == 2 and len(stored(request)) == 2


# -- grouping ---------------------------------------------------------------------------------


def test_series_are_grouped_per_agent_and_timestamps() -> None:
    request = decoder().decode(
        body(
            series("a", {"instance": "h1:1"}, [(T0_MS, 1)]),
            series("b", {"instance": "h2:1"}, [(T0_MS, 2)]),
            series("c", {"instance": "h1:1"}, [(T0_MS, 3)]),
            series("d", {"instance": "h1:1"}, [(T0_MS + 5000, 4)]),
            series("e", {"instance": "h1:1"}, [(T0_MS, 5), (T0_MS + 5000, 6)]),
            series("f", {"instance": "h1:1"}, [(T0_MS + 5000, 7), (T0_MS, 8)]),
        )
    )
    shapes = sorted(
        (
            b.agent_id,
            len(metric_pb2.ColumnarBatch.FromString(b.payload).series.entries),
            tuple(metric_pb2.ColumnarBatch.FromString(b.payload).timestamps_ns),
        )
        for b in request.batches
    )
    ns, later = T0_MS * 1_000_000, (T0_MS + 5000) * 1_000_000
    assert shapes == [
        ("h1", 1, (later,)),
        ("h1", 2, (ns,)),
        ("h1", 2, (ns, later)),
        ("h2", 1, (ns,)),
    ]
    points = stored(request)
    assert points[("h1", "f", (("instance", "h1:1"),), ns)] == 8.0
    assert points[("h1", "e", (("instance", "h1:1"),), later)] == 6.0
    assert request.samples == 8


def test_staleness_markers_are_not_stored_and_a_repeated_sample_counts_once() -> None:
    request = decoder().decode(
        body(
            series("a", {"instance": "h:1"}, [(T0_MS, 1), (T0_MS + 1000, STALE_NAN)]),
            series("b", {"instance": "h:1"}, [(T0_MS, math.nan)]),
            series("c", {"instance": "h:1"}, [(T0_MS, 1), (T0_MS, 2)]),
            series("c", {"instance": "h:1"}, [(T0_MS, 3)]),
        )
    )
    points = stored(request)
    assert request.stale_markers == 1 and request.duplicates == 2
    assert len(points) == 3
    assert points[("h", "c", (("instance", "h:1"),), T0_MS * 1_000_000)] == 3.0  # the last sent
    assert math.isnan(points[("h", "b", (("instance", "h:1"),), T0_MS * 1_000_000)])


def test_one_series_sent_with_its_labels_in_another_order_is_one_series() -> None:
    first = series("a", {"instance": "h:1", "job": "x"}, [(T0_MS, 1)])
    second = remotewrite_pb2.TimeSeries()
    second.CopyFrom(first)
    second.labels.reverse()
    second.samples[0].value = 2
    request = decoder().decode(body(first, second))
    assert len(stored(request)) == 1 and request.duplicates == 1


def scrape(n: int, stamp_ms: int) -> list[remotewrite_pb2.TimeSeries]:
    """One target's scrape in exposition order: families of 8 series."""
    return [
        series(f"m_{i // 8:03d}", {"instance": "h:9100", "k": str(i % 8)}, [(stamp_ms, i)])
        for i in range(n)
    ]


def test_a_scrape_split_anywhere_makes_the_same_chunks_but_the_one_the_split_falls_in() -> None:
    whole = scrape(3000, T0_MS)
    reference = sets(decoder().decode(body(*whole)))
    assert len(reference) > 5  # content-defined chunks, about CHUNK_SERIES wide
    seen = set(reference)
    for split in (137, 1500, 1501, 2862):
        halves = [decoder().decode(body(*whole[:split])), decoder().decode(body(*whole[split:]))]
        made = sets(halves[0]) | sets(halves[1])
        # every chunk but the one the split falls in is a set seen before
        assert len(made - reference) <= 2, split
        seen |= made
    assert len(seen) <= len(reference) + 2 * 4


def test_series_order_in_the_request_does_not_change_the_sets() -> None:
    whole = scrape(300, T0_MS)
    rng = np.random.default_rng(1)
    shuffled = [whole[i] for i in rng.permutation(len(whole))]
    assert sets(decoder().decode(body(*whole))) == sets(decoder().decode(body(*shuffled)))


# -- identity ---------------------------------------------------------------------------------


def test_the_same_body_makes_the_same_batches_in_any_process() -> None:
    data = body(*scrape(400, T0_MS), series("x", {"instance": "g:1"}, [(T0_MS, 1)]))
    first, again = decoder().decode(data), decoder().decode(data)
    warm = decoder()
    warm.decode(body(*scrape(50, T0_MS - 5000)))  # a cache that has seen other requests
    assert [(b.agent_id, b.sequence, b.payload) for b in first.batches] == [
        (b.agent_id, b.sequence, b.payload) for b in again.batches
    ]
    assert [b.payload for b in warm.decode(data).batches] == [b.payload for b in first.batches]
    sequences = [b.sequence for b in first.batches]
    assert len(set(sequences)) == len(sequences) and all(0 < s < 2**63 for s in sequences)
    assert platformbatches.is_platform_epoch(remotewrite.EPOCH)


def test_another_body_makes_other_sequences() -> None:
    one = decoder().decode(body(*scrape(100, T0_MS)))
    other = decoder().decode(body(*scrape(100, T0_MS + 5000)))
    assert not {b.sequence for b in one.batches} & {b.sequence for b in other.batches}


# -- settings -----------------------------------------------------------------------------------


def test_blank_key_settings_are_no_keys() -> None:
    # docker-compose.yml passes an unset FLEETPULSE_API_ADMIN_KEY as "": no key, not the empty key.
    from fleetpulse.settings import Settings

    settings = Settings(api_admin_key="", api_write_keys=" ", api_keys="r")  # type: ignore[arg-type]
    assert settings.api_admin_key is None and settings.named_admin_key() is None
    assert settings.named_write_keys() == []
    named = Settings(api_write_keys="prometheus:k1, k2")  # type: ignore[arg-type]
    assert named.named_write_keys() == [("prometheus", "k1"), ("write-2", "k2")]

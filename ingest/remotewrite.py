"""Prometheus remote write 1.0 as batches of the agents' path: a request body (snappy block format
around a protobuf ``WriteRequest``, proto/remotewrite.proto) becomes ``ColumnarBatch`` entries for
the queue, so that its samples are stored by the same workers, under the same exactly-once ledger
and read by the same PromQL as an agent's. No HTTP here: api/remotewrite.py is the endpoint.

**Whose series** (`AgentMapping`). The value of one label the operator chooses
(``remote_write_agent_label``, default ``instance``) names the agent; with
``remote_write_strip_port`` (the default) a trailing ``:port`` is cut from it, because an agent is
a host and node_exporter's ``instance`` is ``host:9100``: the host's node_exporter, its other
exporters and its fleetpulse agent (whose id is usually its host name) then meet under one
``agent_id``. Every label is stored as the client sent it, the mapping label included, so two
exporters of one host stay two series. A series without the label, or whose value cannot be an
agent id (a NUL, longer than the front-end's 256 characters), goes to
``platformbatches.PLATFORM_AGENT``: stored all the same, shown without ``agent_id``. A label the
client named ``agent_id`` would clash with the column: it is the column when it is the mapping
label, else it is stored as ``exported_agent_id`` (Prometheus' own rule for a scraped label that
clashes with a target's).

**Identity.** Every batch of every request has the epoch ``EPOCH`` and, as sequence, a digest of
the decompressed body and the batch's index in it. A client that retries a request (Prometheus
resends the same bytes after a 5xx, a 429 or a timeout) produces the same batches with the same
identities, and the ledger stores each once, whichever of them were queued before the failure.
The grouping below depends on the body and the mapping settings only, never on what this process
saw before, so another API process computes the same batches.

**Grouping.** A batch is one agent's series at one set of timestamps (a scrape's samples share
one). Every distinct set of series in a batch becomes a ``series_sets`` row, and Prometheus cuts
a scrape into requests at a different place each time (500 samples, or what arrived within the
send deadline): one batch per agent and request would make new sets without end. So the series
of a group are sorted as an exporter lists them (name, then labels) and cut where a series' own
digest says (`CHUNK_SERIES` on average, content-defined chunking as in rsync): chunk boundaries do
not move with the request's boundaries, a whole chunk is the same set in every request, and only
the chunk a request boundary falls in makes a partial set, a prefix or suffix of it. Distinct
sets stay bounded by about twice the series (docs/architecture.md, "Remote write in", has the
figures measured with Prometheus and node_exporter, and what the chunk width costs).

**Cost.** One Python step per series (protobuf decodes in C; a series seen before costs a join of
its label bytes and one dict lookup), numpy for the samples, one `encode` per batch from cached
``SeriesDef`` bytes. Staleness markers (Prometheus' special NaN, written when a series
disappears) are not stored: fleetpulse's PromQL has no staleness, and as a value the marker would
read as a NaN sample where Prometheus shows nothing.
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass, field

import cramjam
import numpy as np
from google.protobuf.message import DecodeError

from fleetpulse import errors
from fleetpulse.ingest import platformbatches
from fleetpulse.proto import remotewrite_pb2
from fleetpulse.settings import Settings

# The writer of every remote-written batch: protocol 1.0's (a later protocol gets its own).
EPOCH = platformbatches.epoch("remote_write", "1.0")
NAME_LABEL = "__name__"
AGENT_LABEL = "agent_id"
# Prometheus' staleness marker: one NaN bit pattern (prometheus/model/value.StaleNaN).
STALE_NAN_BITS = 0x7FF0000000000002
# Average width of a content-defined chunk of series (one batch, one series set): a series starts
# a chunk when its labels' digest is a multiple of it. Wider chunks are fewer, larger batches
# (the workers' cost is per batch), narrower ones fewer sets per series.
CHUNK_SERIES = 256
# The front-end's limit on an agent id (ingest/frontend/messages.py MAX_AGENT_ID).
MAX_AGENT_ID = 256
# Bound on the per-process cache of series (entries); past it the cache starts over.
MAX_CACHED_SERIES = 200_000
_NS_PER_MS = 1_000_000


@dataclass(frozen=True)
class AgentMapping:
    """Which agent a series belongs to: the value of ``label``, without a ``:port`` when
    ``strip_port``."""

    label: str = "instance"
    strip_port: bool = True

    @classmethod
    def from_settings(cls, settings: Settings) -> AgentMapping:
        return cls(settings.remote_write_agent_label, settings.remote_write_strip_port)

    def agent_of(self, value: str | None) -> str:
        if not value:
            return platformbatches.PLATFORM_AGENT
        if self.strip_port:
            value = _without_port(value)
        if "\x00" in value or len(value) > MAX_AGENT_ID:
            return platformbatches.PLATFORM_AGENT
        return value


def _without_port(address: str) -> str:
    """``host:9100`` -> ``host``, ``[::1]:9100`` -> ``::1``; anything else as it is (a bare IPv6
    address has colons and no port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        return address
    if host.startswith("[") and host.endswith("]"):
        return host[1:-1]
    return address if ":" in host else host


@dataclass(frozen=True)
class _Series:
    """What a distinct series' labels decide, kept per process: its agent, its ``SeriesDef``
    bytes, and whether a chunk of series starts at it."""

    agent_id: str
    definition: bytes
    starts_chunk: bool
    # Where it sorts in its group: by name, then label names and values, as an exporter lists
    # its series (client_golang sorts families by name, a family's series by label values).
    order: bytes


@dataclass(frozen=True)
class Batch:
    """One queue entry: a ``ColumnarBatch`` of ``agent_id`` with identity (EPOCH, sequence)."""

    agent_id: str
    sequence: int
    payload: bytes
    samples: int


@dataclass
class DecodedRequest:
    """A decoded request: its batches and what was in it."""

    batches: list[Batch] = field(default_factory=list)
    series: int = 0
    samples: int = 0
    # Staleness markers dropped (not stored), and samples whose series and timestamp came again
    # in the same request (the last one is kept).
    stale_markers: int = 0
    duplicates: int = 0


def decompress(body: bytes, max_bytes: int) -> bytes:
    """The snappy block format (not the framed one) that remote write uses; `BadInput` when the
    body is not that or says it holds more than ``max_bytes``."""
    declared = _declared_length(body)
    if declared is None:
        raise errors.BadInput("body is not snappy-compressed (block format): no length header")
    if declared > max_bytes:
        raise errors.BadInput(
            f"body decompresses to {declared} bytes, over the limit of {max_bytes} "
            "(FLEETPULSE_REMOTE_WRITE_MAX_BYTES; lower remote_write's max_samples_per_send)"
        )
    try:
        return bytes(cramjam.snappy.decompress_raw(body))
    except cramjam.DecompressionError as exc:
        raise errors.BadInput(f"body is not snappy-compressed (block format): {exc}") from None


def _declared_length(body: bytes) -> int | None:
    """The uncompressed length a snappy block starts with (a varint), or None."""
    length = shift = 0
    for position, byte in enumerate(body[:10]):
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return length if position < 5 else None  # snappy lengths fit 32 bits
        shift += 7
    return None


class RequestDecoder:
    """Turns request bodies into batches; owns the per-process cache of series (their agent and
    ``SeriesDef`` bytes by their labels' bytes). Safe to call from several threads: the cache
    only ever gains entries equal to what another thread would have computed."""

    def __init__(self, mapping: AgentMapping, max_bytes: int) -> None:
        self.mapping = mapping
        self.max_bytes = max_bytes
        self._series: dict[bytes, _Series] = {}

    def decode(self, body: bytes) -> DecodedRequest:
        """The batches of one compressed request body; `BadInput` when it is not one."""
        return self.decode_raw(decompress(body, self.max_bytes))

    def decode_raw(self, raw: bytes) -> DecodedRequest:
        """The batches of one decompressed ``WriteRequest``."""
        try:
            view = remotewrite_pb2.WriteRequestView.FromString(raw)
        except DecodeError as exc:
            raise errors.BadInput(f"body is not a protobuf WriteRequest: {exc}") from None
        if len(self._series) > MAX_CACHED_SERIES:
            self._series = {}
        known = self._series
        # Per distinct series of the request: its index, labels' bytes and what they decide.
        index: dict[bytes, int] = {}
        keys: list[bytes] = []
        series: list[_Series] = []
        # The same series sent twice with its labels in another order is one series.
        canonical: dict[tuple[str, bytes], int] = {}
        # Per sample: its series' index, timestamp (ms), value.
        owners: list[int] = []
        stamps: list[int] = []
        values: list[float] = []
        for position, timeseries in enumerate(view.timeseries):
            samples = timeseries.samples
            if not samples:
                continue
            key = b"".join(timeseries.labels)
            at = index.get(key)
            if at is None:
                found = known.get(key)
                if found is None:
                    found = known[key] = self._learn(position, timeseries.labels, key)
                at = canonical.setdefault((found.agent_id, found.definition), len(keys))
                index[key] = at
                if at == len(keys):
                    keys.append(key)
                    series.append(found)
            if len(samples) == 1:
                sample = samples[0]
                owners.append(at)
                stamps.append(sample.timestamp)
                values.append(sample.value)
            else:  # a client catching up sends several samples per series
                owners += [at] * len(samples)
                stamps += [sample.timestamp for sample in samples]
                values += [sample.value for sample in samples]
        request = DecodedRequest(series=len(keys))
        if not owners:
            return request
        digest = hashlib.blake2b(raw, digest_size=16).digest()
        _group(
            request,
            digest,
            series,
            np.asarray(owners, dtype=np.int64),
            np.asarray(stamps, dtype=np.int64),
            np.asarray(values, dtype=np.float64),
        )
        return request

    def _learn(self, position: int, labels: list[bytes], key: bytes) -> _Series:
        """A series not seen before: its labels decoded, mapped and serialized once."""
        pairs: dict[str, str] = {}
        try:
            for raw in labels:
                label = remotewrite_pb2.Label.FromString(raw)
                pairs[label.name] = label.value
        except DecodeError as exc:
            raise errors.BadInput(
                f"timeseries[{position}]: a label does not decode (not UTF-8?): {exc}"
            ) from None
        name = pairs.pop(NAME_LABEL, "")
        agent_id = self.mapping.agent_of(pairs.get(self.mapping.label))
        if AGENT_LABEL in pairs:
            if self.mapping.label == AGENT_LABEL:
                del pairs[AGENT_LABEL]  # it is the column; PromQL shows it as the label it was
            else:
                renamed = f"exported_{AGENT_LABEL}"
                while renamed in pairs:
                    renamed = f"exported_{renamed}"
                pairs[renamed] = pairs.pop(AGENT_LABEL)
        starts_chunk = zlib.crc32(key) % CHUNK_SERIES == 0
        order = "\0".join([name, *(f"{k}\0{v}" for k, v in sorted(pairs.items()))]).encode()
        return _Series(agent_id, platformbatches.series_def(name, pairs), starts_chunk, order)


def _group(
    request: DecodedRequest,
    digest: bytes,
    series: list[_Series],
    owners: np.ndarray,
    stamps: np.ndarray,
    values: np.ndarray,
) -> None:
    """The request's samples as batches: per agent and set of timestamps, series sorted and cut
    into content-defined chunks; each chunk one batch, numbered in order."""
    stale = values.view(np.uint64) == STALE_NAN_BITS
    request.stale_markers = int(stale.sum())
    if request.stale_markers:
        keep = ~stale
        owners, stamps, values = owners[keep], stamps[keep], values[keep]
    # By series, then time; of one series' samples at one time the last sent is kept.
    order = np.lexsort((np.arange(len(owners)), stamps, owners))
    owners, stamps, values = owners[order], stamps[order], values[order]
    last = np.ones(len(owners), dtype=bool)
    last[:-1] = (owners[1:] != owners[:-1]) | (stamps[1:] != stamps[:-1])
    request.duplicates = int(len(last) - last.sum())
    owners, stamps, values = owners[last], stamps[last], values[last]
    request.samples = len(values)
    if not len(values):
        return
    # Each series' run of samples: where it starts and how many (the same for a whole group).
    starts = np.flatnonzero(np.concatenate(([True], owners[1:] != owners[:-1])))
    counts = np.diff(np.append(starts, len(owners))).tolist()
    run_series = owners[starts].tolist()
    first_stamps = stamps[starts].tolist()
    groups: dict[tuple[str, object], list[int]] = {}
    for run, (owner, count) in enumerate(zip(run_series, counts, strict=True)):
        if count == 1:
            when: object = first_stamps[run]
        else:
            when = stamps[starts[run] : starts[run] + count].tobytes()
        groups.setdefault((series[owner].agent_id, when), []).append(run)
    index = 0
    for (agent_id, _), runs in groups.items():
        runs.sort(key=lambda run: series[run_series[run]].order)
        count = counts[runs[0]]
        first = int(starts[runs[0]])
        times_ns = stamps[first : first + count] * _NS_PER_MS
        steps = np.arange(count)[:, np.newaxis]
        cuts = [at for at, run in enumerate(runs) if series[run_series[run]].starts_chunk]
        for low, high in zip([0, *cuts], [*cuts, len(runs)], strict=True):
            if low == high:
                continue
            chunk = runs[low:high]
            # Timestamp-major: row t holds every column's value at times_ns[t].
            matrix = values[starts[chunk][np.newaxis, :] + steps]
            sequence = batch_sequence(digest, index)
            definitions = [series[run_series[r]].definition for r in chunk]
            payload = platformbatches.encode(
                agent_id, EPOCH, sequence, definitions, times_ns, matrix
            )
            request.batches.append(Batch(agent_id, sequence, payload, matrix.size))
            index += 1


def batch_sequence(digest: bytes, index: int) -> int:
    """The sequence of a request's batch number ``index``: 63 bits of a digest of the request's
    digest and the index, above 0 (sequence 0 means "no identity"). Distinct batches of one agent
    collide with odds of about n² / 2⁶⁴ for n of its batches in the ledger's retention."""
    mixed = hashlib.blake2b(digest + index.to_bytes(4, "big"), digest_size=8).digest()
    return int.from_bytes(mixed, "big") >> 1 or 1

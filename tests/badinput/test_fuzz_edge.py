"""The gRPC edge under fuzzed input: random bytes and mutated valid AgentMessage encodings sent on
real streams to a real `fleetpulse ingest` process.

Properties, checked for every case:

- every stream that ends, ends with a documented status code and a one-line reason, and every
  refused batch names a documented code in its ack (conftest.DOCUMENTED_*);
- the process is alive and still serving: a separate, well-behaved agent keeps its stream open
  throughout and every one of its batches and heartbeats is acked;

and after the run, the delivery promise for everything that was fuzzed: each acked batch was
queued (every accepting ack names a stream entry), and the worker code turns every queued batch
into a ledger row (stored, or counted as rejected) with nothing dead-lettered. The front-end logs
no traceback.

Cases reuse one registered stream while the protocol allows (a refused message ends it: a new one
is opened and registers again); about one case in eight starts on a fresh, unregistered stream.
Each case ends with a probe (an empty batch with its own epoch and sequence, refused for good in
its ack and never queued), so the test knows the front-end has handled the case.

CI runs FLEETPULSE_FUZZ_EXAMPLES cases (default 2000) per backend. The long run (docs: README):

    FLEETPULSE_FUZZ_EXAMPLES=100000 .venv/bin/pytest tests/badinput/test_fuzz_edge.py -k external -rP
"""

from __future__ import annotations

import collections
import copy
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import hypothesis.strategies as st
import psycopg
import pytest
import redis
from hypothesis import HealthCheck, example, given, settings

from fleetpulse.ingest.worker.consumer import Worker
from fleetpulse.proto import agent_pb2, common_pb2, metric_pb2
from tests.badinput import wire
from tests.badinput.conftest import (
    RawStream,
    assert_delivered,
    assert_documented_ack,
    assert_documented_end,
    queued_identities,
)
from tests.integration.conftest import TOKEN, ingest_env
from tests.integration.test_frontend import register
from tests.processes import fleetpulse_process, free_port, wait_for_port

EXAMPLES = int(os.environ.get("FLEETPULSE_FUZZ_EXAMPLES", "2000"))
# The long run needs more than the suite's 300 s (about 30 cases per second on 2 cores).
pytestmark = [pytest.mark.integration, pytest.mark.timeout(max(300, EXAMPLES // 5))]
FUZZ_AGENT = "fuzz-1"
STEADY_AGENT = "steady-bystander"
PROBE_EPOCH = 4_242_424_242
STEADY_EVERY = 25  # cases between two checks of the well-behaved agent

_NOW_S = int(time.time())
_NOW_NS = time.time_ns()


def _message(**case: object) -> bytes:
    return agent_pb2.AgentMessage(**case).SerializeToString()  # type: ignore[arg-type]


def _register(protocol: int) -> bytes:
    message = register(FUZZ_AGENT, "fz", protocol=protocol)
    message.register.ip = "10.1.2.3"
    return message.SerializeToString()


def _rows(agent_id: str, sequence: int) -> bytes:
    stamp = common_pb2.Timestamp(seconds=_NOW_S, nanos=250_000_000)
    return _message(
        metrics=metric_pb2.MetricBatch(
            agent_id=agent_id,
            epoch=11,
            sequence=sequence,
            metrics=[
                metric_pb2.MetricPoint(
                    name="cpu_seconds_total",
                    value=12.5,
                    timestamp=stamp,
                    labels={"cpu": "0", "mode": "user"},
                ),
                metric_pb2.MetricPoint(name="load1", value=math.nan, timestamp=stamp),
            ],
        )
    )


def _columns(agent_id: str, epoch: int, sequence: int, values: list[float]) -> bytes:
    series = [
        metric_pb2.SeriesDef(name="memory_bytes", labels={"state": "used"}),
        metric_pb2.SeriesDef(name="load5"),
    ]
    times = len(values) // len(series) if values else 0
    return _message(
        metric_columns=metric_pb2.ColumnarBatch(
            agent_id=agent_id,
            epoch=epoch,
            sequence=sequence,
            series=metric_pb2.SeriesSet(entries=series),
            values=values,
            timestamps_ns=[_NOW_NS + i * 1_000_000_000 for i in range(times)],
        )
    )


# Valid encodings of every AgentMessage case: the seeds of the mutations.
BASES = [
    _register(2),
    _register(0),
    _message(
        heartbeat=agent_pb2.Heartbeat(
            agent_id=FUZZ_AGENT, timestamp=common_pb2.Timestamp(seconds=_NOW_S)
        )
    ),
    _message(heartbeat=agent_pb2.Heartbeat()),
    _rows(FUZZ_AGENT, 1),
    _rows("", 0),  # identity-less: named by its stream entry
    _columns(FUZZ_AGENT, 12, 1, [1.0, 2.0, 3.0, 4.0]),
    _columns("", 12, 2, [math.inf, -math.inf]),
    _message(
        settings_status=agent_pb2.SettingsStatus(
            version=3,
            applied=True,
            collect_interval_ms=10_000,
            heartbeat_interval_ms=5_000,
            collectors=["cpu", "memory"],
        )
    ),
    _message(settings_status=agent_pb2.SettingsStatus(version=4, applied=False, error="nope")),
    _message(disconnect=agent_pb2.Disconnect(reason="maintenance")),
]

# Values a mutated varint or length takes: edges of every integer type the messages use.
_EDGE_INTS = [
    0,
    1,
    127,
    128,
    2**31 - 1,
    2**31,
    2**32 - 1,
    2**32,
    2**53 + 1,
    2**63 - 1,
    2**63,
    2**64 - 1,
    2**70,  # an over-long (11-byte) varint
]

Draw = Callable[[st.SearchStrategy], object]


def _position(draw: Draw, buf: bytearray, inclusive: bool = False) -> int:
    return int(draw(st.integers(0, len(buf) if inclusive else max(len(buf) - 1, 0))))  # type: ignore[call-overload]


def _fields(buf: bytearray, wire_type: int | None = None) -> list[wire.Field]:
    found = wire.walk(bytes(buf)) or []
    return [f for f in found if wire_type is None or f.wire == wire_type]


def _flip(draw: Draw, buf: bytearray) -> bytearray:
    if buf:
        buf[_position(draw, buf)] ^= 1 << int(draw(st.integers(0, 7)))  # type: ignore[call-overload]
    return buf


def _set_byte(draw: Draw, buf: bytearray) -> bytearray:
    if buf:
        buf[_position(draw, buf)] = int(draw(st.sampled_from([0x00, 0x7F, 0x80, 0xFF, 0xC3])))  # type: ignore[call-overload]
    return buf


def _truncate(draw: Draw, buf: bytearray) -> bytearray:
    return buf[: _position(draw, buf, inclusive=True)]


def _insert(draw: Draw, buf: bytearray) -> bytearray:
    at = _position(draw, buf, inclusive=True)
    return buf[:at] + bytes(draw(st.binary(min_size=1, max_size=12))) + buf[at:]  # type: ignore[call-overload]


def _delete(draw: Draw, buf: bytearray) -> bytearray:
    at = _position(draw, buf)
    return buf[:at] + buf[at + int(draw(st.integers(1, 8))) :]  # type: ignore[call-overload]


def _renumber(draw: Draw, buf: bytearray) -> bytearray:
    """Give a field another number (and maybe another wire type)."""
    fields = _fields(buf)
    if not fields:
        return _flip(draw, buf)
    f: wire.Field = draw(st.sampled_from(fields))  # type: ignore[assignment]
    number = draw(st.one_of(st.integers(1, 12), st.sampled_from([19_000, 2**29 - 1])))
    wire_type = draw(st.sampled_from([f.wire, f.wire, 0, 1, 2, 3, 4, 5, 6, 7]))
    return buf[: f.key[0]] + wire.tag(number, wire_type) + buf[f.key[1] :]  # type: ignore[arg-type]


def _huge_length(draw: Draw, buf: bytearray) -> bytearray:
    """Claim a length the message does not have (or a plain wrong one)."""
    fields = _fields(buf, wire.WIRE_LEN)
    if not fields:
        return _flip(draw, buf)
    f: wire.Field = draw(st.sampled_from(fields))  # type: ignore[assignment]
    assert f.length is not None
    actual = f.value[1] - f.value[0]
    length = draw(st.sampled_from([*_EDGE_INTS, actual + 1, actual + 1000, max(actual - 1, 0)]))
    return buf[: f.length[0]] + wire.varint(length) + buf[f.length[1] :]  # type: ignore[arg-type]


def _edge_value(draw: Draw, buf: bytearray) -> bytearray:
    """An integer field (epoch, sequence, interval, timestamp, protocol...) at a type's edge."""
    fields = _fields(buf, wire.WIRE_VARINT)
    if not fields:
        return _flip(draw, buf)
    f: wire.Field = draw(st.sampled_from(fields))  # type: ignore[assignment]
    value = draw(st.sampled_from([*_EDGE_INTS, -1, -(2**63)]))
    return buf[: f.value[0]] + wire.varint(value) + buf[f.value[1] :]  # type: ignore[arg-type]


def _repeat_field(draw: Draw, buf: bytearray) -> bytearray:
    """Copy one field somewhere else: repeated keys, oneof cases twice, merged sub-messages."""
    fields = _fields(buf)
    if not fields:
        return _flip(draw, buf)
    f: wire.Field = draw(st.sampled_from(fields))  # type: ignore[assignment]
    copy = buf[f.key[0] : f.value[1]]
    at = draw(st.sampled_from([f.key[0], f.value[1], len(buf), 0]))
    return buf[:at] + copy + buf[at:]  # type: ignore[index]


def _inflate(draw: Draw, buf: bytearray) -> bytearray:
    """Repeat a length-delimited payload up to a few hundred times (lengths kept consistent
    for that field only, so the enclosing message's length may now be wrong)."""
    fields = _fields(buf, wire.WIRE_LEN)
    if not fields:
        return _flip(draw, buf)
    f: wire.Field = draw(st.sampled_from(fields))  # type: ignore[assignment]
    assert f.length is not None
    payload = bytes(buf[f.value[0] : f.value[1]]) * int(draw(st.integers(2, 300)))  # type: ignore[call-overload]
    return buf[: f.length[0]] + wire.varint(len(payload)) + payload + buf[f.value[1] :]


def _splice(draw: Draw, buf: bytearray) -> bytearray:
    """Concatenate another message: protobuf merges them (the last oneof case wins)."""
    other = bytes(draw(st.sampled_from(BASES)))  # type: ignore[call-overload]
    return buf + other if draw(st.booleans()) else bytearray(other) + buf


MUTATIONS = [
    _flip,
    _set_byte,
    _truncate,
    _insert,
    _delete,
    _renumber,
    _huge_length,
    _edge_value,
    _repeat_field,
    _inflate,
    _splice,
]


def _mutate(draw: Draw, buf: bytearray) -> bytes:
    for _ in range(int(draw(st.integers(1, 3)))):  # type: ignore[call-overload]
        buf = draw(st.sampled_from(MUTATIONS))(draw, buf)  # type: ignore[operator]
    return bytes(buf)


@st.composite
def mutated(draw: Draw) -> bytes:
    """A valid AgentMessage, mutated anywhere: mostly refused by the front-end itself."""
    return _mutate(draw, bytearray(draw(st.sampled_from(BASES))))  # type: ignore[call-overload]


# What a string or bytes field is set to: invalid UTF-8 (a lone continuation byte, a truncated
# sequence, an encoded surrogate, an over-long NUL), NUL, SQL, long values, another message.
_PAYLOADS = [
    b"",
    b"\x00",
    b"cpu\x00idle",
    b"\x80",
    b"\xc3",
    b"\xed\xa0\x80",
    b"\xc0\x80",
    b"\xff\xfe\xfd",
    b"'; DROP TABLE points; --",
    b"line\nbreak",
    "\u00fc\U0001f680".encode(),
    b"x" * 1025,
    b"y" * 5000,
]


def _node_mutation(draw: Draw, siblings: list[wire.Node], index: int) -> None:
    node = siblings[index]
    kind = draw(st.sampled_from(["bytes", "value", "number", "repeat", "drop"]))
    if kind == "bytes":  # byte-level damage inside the field only
        node.raw, node.children = _mutate(draw, bytearray(node.raw)), None
    elif kind == "value" and node.wire == wire.WIRE_VARINT:
        node.raw = wire.varint(draw(st.sampled_from([*_EDGE_INTS, -1, -(2**63)])))  # type: ignore[arg-type]
    elif kind == "value" and node.wire == wire.WIRE_LEN:
        other = draw(st.sampled_from(BASES))
        node.raw, node.children = draw(st.sampled_from([*_PAYLOADS, other])), None  # type: ignore[assignment]
    elif kind == "value" and node.wire == wire.WIRE_I64:  # a double or an sfixed64
        node.raw = draw(st.binary(min_size=8, max_size=8))  # type: ignore[assignment]
    elif kind == "number":
        node.number = draw(st.one_of(st.integers(1, 12), st.just(2**29 - 1)))  # type: ignore[assignment]
    elif kind == "repeat":  # a repeated map key, a oneof case twice, a field given twice
        siblings.insert(index + int(draw(st.booleans())), copy.deepcopy(node))  # type: ignore[call-overload]
    elif kind == "drop":
        del siblings[index]


@st.composite
def mutated_inside(draw: Draw) -> bytes:
    """A valid AgentMessage changed deep inside (a label of a point, a series of a set, a
    timestamp, an id) and serialized again with consistent lengths: it gets past the envelope,
    and a batch whose points are damaged gets past the front-end (which never decodes points)
    to the worker."""
    tree = wire.parse(draw(st.sampled_from(BASES)))  # type: ignore[arg-type]
    assert tree
    for _ in range(int(draw(st.integers(1, 3)))):  # type: ignore[call-overload]
        nodes = wire.every_node(tree)
        if not nodes:
            break
        siblings, index = draw(st.sampled_from(nodes))  # type: ignore[misc]
        _node_mutation(draw, siblings, index)
    return wire.serialize(tree)


MESSAGES = st.one_of(mutated(), mutated_inside(), st.binary(max_size=256), st.sampled_from(BASES))
# One case in eight starts on a new stream that has not registered.
FRESH = st.sampled_from([False] * 7 + [True])

# > 4 MiB: refused by gRPC's own limit with RESOURCE_EXHAUSTED naming it.
OVERSIZED = _columns(FUZZ_AGENT, 13, 1, [0.5] * 600_000)


@dataclass
class Tally:
    cases: int = 0
    streams_opened: int = 0
    accepted: int = 0  # batches acked with success
    acked: collections.Counter[tuple[int, int]] = field(default_factory=collections.Counter)
    ends: collections.Counter[str] = field(default_factory=collections.Counter)
    refusals: collections.Counter[str] = field(default_factory=collections.Counter)


class Steady:
    """The well-behaved agent: its own credential, one stream for the whole run."""

    def __init__(self, address: str) -> None:
        enrolling = RawStream(address, TOKEN)
        enrolling.send(register(STEADY_AGENT, "steady-machine"))
        credential = enrolling.wait_for("credential")
        enrolling.close()
        assert isinstance(credential, agent_pb2.Credential)
        self.stream = RawStream(address, credential.token)
        self.stream.send(register(STEADY_AGENT, "steady-machine", protocol=2))
        assert self.stream.wait_for("register_response") is not None, self.stream.details()
        self.sent = 0

    def check(self) -> None:
        """One batch and one heartbeat, both answered: the front-end still serves other agents."""
        self.sent += 1
        self.stream.send(
            _columns(STEADY_AGENT, 1, self.sent, [1.0, float(self.sent)]),
            agent_pb2.AgentMessage(heartbeat=agent_pb2.Heartbeat(agent_id=STEADY_AGENT)),
        )
        ack = self.stream.wait_for("metric_ack", sequence=self.sent)
        assert ack is not None, ("the steady agent's stream ended", self.stream.details())
        assert ack.success, ack  # type: ignore[attr-defined]
        assert self.stream.wait_for("heartbeat_ack") is not None, self.stream.details()


class Fuzzer:
    """Runs cases against one front-end, keeping the registered stream between cases."""

    def __init__(self, address: str) -> None:
        self.address = address
        # One connection for all fuzzed streams: opening thousands of streams stays cheap.
        self.channel = grpc.insecure_channel(
            address, options=[("grpc.use_local_subchannel_pool", 1)]
        )
        self.main: RawStream | None = None
        self.tally = Tally()
        self._probe = 0
        self._checked: dict[int, int] = {}  # stream -> answers already checked
        # The fuzz agent's credential, from whichever stream enrolled it (the main stream, or a
        # fuzzed register on a fresh one): once issued, the token can no longer register the id.
        self.credential: str | None = None

    def _open_main(self) -> RawStream:
        # A fuzzed register on a fresh stream may have left a session of another machine that
        # the front-end has not forgotten yet: ALREADY_EXISTS, documented; try again.
        for attempt in range(50):
            stream = RawStream(self.address, self.credential or TOKEN, channel=self.channel)
            self.tally.streams_opened += 1
            stream.send(_register(2))
            if stream.wait_for("register_response") is not None:
                return stream
            self._ended(stream)
            stream.close()
            time.sleep(0.02 * attempt)
        raise AssertionError("the fuzz agent could not register again")

    def _ended(self, stream: RawStream, context: object = "") -> None:
        assert_documented_end(stream, context)
        self.tally.ends[stream.code().name] += 1

    def _check_answers(self, stream: RawStream, context: object) -> None:
        start = self._checked.get(id(stream), 0)
        for message in stream.received[start:]:
            if message.WhichOneof("message") == "credential":
                if message.credential.agent_id == FUZZ_AGENT:
                    self.credential = message.credential.token
            elif message.WhichOneof("message") == "metric_ack":
                ack = message.metric_ack
                assert_documented_ack(ack, context)
                if ack.epoch == PROBE_EPOCH and ack.sequence == self._probe:
                    assert (ack.success, ack.retry_after_ms) == (False, 0), ack
                elif ack.success:
                    self.tally.accepted += 1
                    self.tally.acked[(ack.epoch, ack.sequence)] += 1
                else:
                    self.tally.refusals[ack.error.split(":")[0]] += 1
        self._checked[id(stream)] = len(stream.received)

    def run(self, fresh: bool, messages: list[bytes]) -> None:
        self.tally.cases += 1
        if fresh:
            stream = RawStream(self.address, TOKEN, channel=self.channel)
            self.tally.streams_opened += 1
        else:
            if self.main is None:
                self.main = self._open_main()
            stream = self.main
        self._probe += 1
        stream.send(*messages, _columns("", PROBE_EPOCH, self._probe, []))
        answered = stream.wait_for("metric_ack", epoch=PROBE_EPOCH, sequence=self._probe)
        context = [m[:200].hex() for m in messages]
        self._check_answers(stream, context)
        if answered is None:
            self._ended(stream, context)
        if fresh or answered is None:
            stream.close()
            self._checked.pop(id(stream), None)
            if stream is self.main:
                self.main = None
        if self.main is not None and self.main.done.is_set():
            # ended while another stream ran (replaced by a fuzzed register of the same machine)
            self.main.wait_end()
            self._check_answers(self.main, "main stream, ended by another case")
            self._ended(self.main, "main stream, ended by another case")
            self.main.close()
            self.main = None

    def close(self) -> None:
        if self.main is not None:
            self.main.close()
        self.channel.close()


@pytest.fixture
def fuzz_edge(shared_database_url: str, shared_redis_url: str, tmp_path: Path) -> Iterator[tuple]:
    port = free_port()
    env = ingest_env(shared_database_url, shared_redis_url, port)
    # Nothing drains the queue during the run; the worker code checks it afterwards.
    env["FLEETPULSE_INGEST_MAX_QUEUED_ENTRIES"] = "100000000"
    log_path = tmp_path / "ingest.log"
    with fleetpulse_process(["ingest"], env, log_path) as proc:
        wait_for_port(port, proc)
        client = redis.Redis.from_url(shared_redis_url)
        yield f"127.0.0.1:{port}", proc, client, log_path
        client.close()


def test_fuzzed_agent_messages_never_break_the_edge(
    fuzz_edge: tuple, shared_database_url: str, worker: Worker
) -> None:
    database_url = shared_database_url
    address, proc, client, log_path = fuzz_edge
    steady = Steady(address)
    fuzzer = Fuzzer(address)

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(fresh=FRESH, messages=st.lists(MESSAGES, min_size=1, max_size=3))
    @example(fresh=False, messages=[OVERSIZED])
    @example(fresh=True, messages=[b"\x0a\xff\xff\xff\xff\x0f"])  # register, 4 GiB long
    @example(fresh=False, messages=[b""])  # an empty AgentMessage: no known case
    def case(fresh: bool, messages: list[bytes]) -> None:
        fuzzer.run(fresh, messages)
        assert proc.poll() is None, "the front-end died"
        if fuzzer.tally.cases % STEADY_EVERY == 0:
            steady.check()

    try:
        case()
        steady.check()
        assert proc.poll() is None, "the front-end died"
        assert not steady.stream.done.is_set(), steady.stream.details()
    finally:
        fuzzer.close()
    tally = fuzzer.tally
    print(  # shown with -rP; the long run reports it
        f"fuzz: {tally.cases} cases, {tally.streams_opened} streams, {tally.accepted} batches "
        f"accepted, stream ends {dict(tally.ends)}, ack refusals {dict(tally.refusals)}"
    )
    # Acked means queued. (A batch may be queued and its ack never reach the agent: its stream
    # was replaced meanwhile. The agent resends it, and the ledger makes that a no-op.)
    queued = collections.Counter((e, s) for _, e, s in queued_identities(client, as_sent=True))
    assert not tally.acked - queued, tally.acked - queued
    assert sum(queued.values()) >= tally.accepted + steady.sent
    checked = assert_delivered(client, database_url, worker)
    print(f"fuzz: {checked} queued batches all in the ledger, none dead-lettered")
    with psycopg.connect(database_url) as conn:
        steady_batches = conn.execute(
            "SELECT count(*) FROM batches WHERE agent_id = %s", (STEADY_AGENT,)
        ).fetchone()
    assert steady_batches == (steady.sent,)
    steady.stream.close()
    log = log_path.read_text(errors="replace")
    assert "Traceback" not in log, log[-5000:]
    assert tally.cases >= EXAMPLES

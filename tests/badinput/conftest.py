"""Bad input, end to end: a real `fleetpulse ingest` process, the worker code, real PostgreSQL and
Redis (both backends, tests/conftest.py).

The edge fixtures come from tests/integration/test_edge.py; what is added here works at the byte
level (a stream that sends raw request bytes, so that a test can send what no protobuf library
would encode) and checks the delivery promise after the fact: every batch the front-end acked is
in the ledger, nothing is dead-lettered, nothing is left in the streams.
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import psycopg
import pytest
import redis
from psycopg.conninfo import make_conninfo

from fleetpulse.ingest import keys
from fleetpulse.ingest.worker import decode
from fleetpulse.ingest.worker.consumer import Worker
from fleetpulse.migrate import migrate
from fleetpulse.proto import agent_pb2
from fleetpulse.settings import Settings
from tests.conftest import Backend
from tests.integration.test_edge import Edge, start_edge
from tests.processes import fleetpulse_process, free_port, wait_for_port

# The status codes a stream may end with, each documented in ingest/frontend/service.py and
# docs/architecture.md ("The edge"); OK is a clean end (a disconnect, or the agent closed).
DOCUMENTED_STREAM_ENDS = frozenset(
    {
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.ABORTED,
    }
)
# The codes a MetricAck refusal names in front of its reason (the stream stays open).
DOCUMENTED_ACK_REFUSALS = ("INVALID_ARGUMENT: ", "RESOURCE_EXHAUSTED: ", "UNAVAILABLE: ")
SHARDS = 2  # ingest_env's default

_END = object()


class RawStream:
    """One Connect stream that sends request bytes as they are and decodes the answers.

    Answers are read by a thread into a queue, so that a test can wait for a given answer (or the
    end of the stream) without polling; everything received is also kept in ``received``.
    """

    def __init__(
        self,
        address: str,
        token: str | None,
        metadata: tuple = (),
        channel: grpc.Channel | None = None,
    ) -> None:
        # By default its own connection, as a separate agent would have; streams that share a
        # channel are cheaper to open (the fuzzer opens thousands).
        self._own_channel = channel is None
        self._channel = channel or grpc.insecure_channel(
            address, options=[("grpc.use_local_subchannel_pool", 1)]
        )
        self._outgoing: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._incoming: queue.SimpleQueue[object] = queue.SimpleQueue()
        self.received: list[agent_pb2.ServerMessage] = []
        self.error: grpc.RpcError | None = None
        self.ended = False  # the end was seen by wait_for / wait_end
        self.done = threading.Event()  # the stream ended (seen by the reader thread)
        if token is not None:
            metadata = (("authorization", f"Bearer {token}"), *metadata)
        connect = self._channel.stream_stream(
            "/proto.AgentService/Connect",
            request_serializer=None,
            response_deserializer=agent_pb2.ServerMessage.FromString,
        )
        self._call = connect(iter(self._outgoing.get, None), metadata=metadata)
        threading.Thread(target=self._collect, daemon=True).start()

    def _collect(self) -> None:
        try:
            for message in self._call:
                self._incoming.put(message)
        except grpc.RpcError as exc:
            self.error = exc
        finally:
            self.done.set()
            self._incoming.put(_END)

    def send(self, *messages: bytes | agent_pb2.AgentMessage) -> None:
        for message in messages:
            raw = message if isinstance(message, bytes) else message.SerializeToString()
            self._outgoing.put(raw)

    def wait_for(self, kind: str, timeout_s: float = 30.0, **fields: object) -> object | None:
        """The next answer of ``kind`` whose fields equal ``fields``; None when the stream ends
        first (``error`` then says how). Answers before it stay in ``received``."""
        while not self.ended:
            try:
                item = self._incoming.get(timeout=timeout_s)
            except queue.Empty:
                raise AssertionError(f"no {kind} {fields} within {timeout_s} s") from None
            if item is _END:
                self.ended = True
                return None
            assert isinstance(item, agent_pb2.ServerMessage)
            self.received.append(item)
            if item.WhichOneof("message") == kind:
                answer = getattr(item, kind)
                if all(getattr(answer, k) == v for k, v in fields.items()):
                    return answer
        return None

    def wait_end(self, timeout_s: float = 30.0) -> grpc.StatusCode:
        """The status the stream ended with (OK for a clean end)."""
        while self.wait_for("__end__", timeout_s) is not None:
            pass
        return self.code()

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.OK if self.error is None else self.error.code()

    def details(self) -> str:
        return "" if self.error is None else (self.error.details() or "")

    def acks(self) -> list[agent_pb2.MetricAck]:
        return [m.metric_ack for m in self.received if m.WhichOneof("message") == "metric_ack"]

    def close(self) -> None:
        self._outgoing.put(None)
        self.done.wait(10)
        self._call.cancel()
        if self._own_channel:
            self._channel.close()


def assert_documented_end(stream: RawStream, context: object = "") -> None:
    """The stream ended with a documented status and, unless OK, a one-line reason."""
    code = stream.code()
    assert code in DOCUMENTED_STREAM_ENDS, (code, stream.details(), context)
    if code != grpc.StatusCode.OK:
        details = stream.details()
        assert len(details.splitlines()) == 1, (code, details, context)


def assert_documented_ack(ack: agent_pb2.MetricAck, context: object = "") -> None:
    """An ack either accepts or refuses with a documented code and a one-line reason."""
    if ack.success:
        return
    assert ack.error.startswith(DOCUMENTED_ACK_REFUSALS), (ack, context)
    assert len(ack.error.splitlines()) == 1, (ack, context)


# One database, Redis and front-end per module and backend (starting a front-end per test would
# cost more than most tests here): tests keep apart by agent id (the ``agent`` fixture).


@pytest.fixture(scope="module")
def shared_database_url(backend: Backend) -> Iterator[str]:
    name = f"fleetpulse_badinput_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(backend.admin_database_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = make_conninfo(backend.admin_database_url, dbname=name)
    migrate(url)
    yield url
    with psycopg.connect(backend.admin_database_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def shared_redis_url(backend: Backend) -> str:
    client = redis.Redis.from_url(backend.redis_url)
    client.flushdb()
    client.close()
    return backend.redis_url


@pytest.fixture(scope="module")
def edge(
    shared_database_url: str, shared_redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Edge]:
    yield from start_edge(shared_database_url, shared_redis_url, tmp_path_factory.mktemp("edge"))


_agents = itertools.count(1)


@pytest.fixture
def agent(request: pytest.FixtureRequest) -> str:
    """An agent id of this test's own."""
    return f"{request.node.originalname.removeprefix('test_')[:60]}-{next(_agents)}"


@pytest.fixture(scope="module")
def worker(shared_database_url: str, shared_redis_url: str) -> Iterator[Worker]:
    """The worker code, in this process, so that a test decides when a chunk is written."""
    w = Worker(
        Settings(
            database_url=shared_database_url,
            redis_url=shared_redis_url,
            stream_shards=SHARDS,
            worker_read_count=200,
            rollups=False,
        ),
        "badinput-1",
    )
    yield w
    w.close()


def queued_identities(client: redis.Redis, as_sent: bool = False) -> list[tuple[str, int, int]]:
    """(agent, epoch, sequence) of every queued batch, as the ledger will name it (or, with
    ``as_sent``, as the batch and its ack name it: sequence 0 for an identity-less batch)."""
    found = []
    for shard in range(SHARDS):
        for entry_id, fields in client.xrange(keys.stream_key(shard)):
            agent_id = fields[keys.FIELD_AGENT].decode()
            epoch, sequence = int(fields[keys.FIELD_EPOCH]), int(fields[keys.FIELD_SEQUENCE])
            if sequence == 0 and not as_sent:
                epoch, sequence = 0, decode.entry_sequence(entry_id.decode())
            found.append((agent_id, epoch, sequence))
    return found


def drain(worker: Worker) -> None:
    """Run the worker code until the streams are empty (as `fleetpulse worker` does: a failing
    entry is retried, then dead-lettered)."""
    while entries := worker._read("0", None) or worker._read(">", None):
        worker.handle(entries)


def assert_delivered(client: redis.Redis, database_url: str, worker: Worker) -> int:
    """Drain the queue, then check the delivery promise for everything that was queued: each
    batch is in the ledger (stored, or counted as rejected), none dead-lettered, none left.
    Returns the number of batches checked."""
    expected = queued_identities(client)
    drain(worker)
    dead = client.xrange(keys.DEAD_LETTER_STREAM)
    assert not dead, [
        (f[keys.FIELD_AGENT], f[keys.FIELD_EPOCH], f[keys.FIELD_SEQUENCE], f[b"error"])
        for _, f in dead[:5]
    ]
    for shard in range(SHARDS):
        assert client.xlen(keys.stream_key(shard)) == 0
    with psycopg.connect(database_url) as conn:
        ledger = set(conn.execute("SELECT agent_id, epoch, seq FROM batches").fetchall())
    missing = set(expected) - ledger
    assert not missing, sorted(missing)[:10]
    return len(expected)


READ_KEY = "badinput-read-key"
ADMIN_KEY = "badinput-admin-key"


@dataclass(frozen=True)
class Api:
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="module")
def api(
    shared_database_url: str, shared_redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Api]:
    """A real `fleetpulse api` process on the module's database, with a read and an admin key."""
    port = free_port()
    env = {
        "FLEETPULSE_DATABASE_URL": shared_database_url,
        "FLEETPULSE_REDIS_URL": shared_redis_url,
        "FLEETPULSE_API_PORT": str(port),
        "FLEETPULSE_API_KEYS": READ_KEY,
        "FLEETPULSE_API_ADMIN_KEY": ADMIN_KEY,
    }
    log_path = tmp_path_factory.mktemp("api") / "api.log"
    with fleetpulse_process(["api"], env, log_path) as proc:
        wait_for_port(port, proc)
        yield Api(f"http://127.0.0.1:{port}", log_path)

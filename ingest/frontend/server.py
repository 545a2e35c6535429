"""The front-end process: serves the agents' streams over gRPC (plaintext or TLS), with its
background tasks, until SIGTERM, then shuts down within a time budget.

Shutdown: every agent is sent away with a delay to come back after (``AgentService.send_away``);
open calls get ``STOP_GRACE_S`` to finish, plus ``STREAM_END_S`` per stream held, since a process
ends a few thousand streams a second; the whole shutdown that extra plus ``SHUTDOWN_BUDGET_S`` (a
step that overruns is logged and skipped); past the watchdog margin the process exits regardless.
A stream still open when the grace ends is cancelled without its delay, and its agent comes back
at once. Nothing acked is at stake: an ack means the batch is in Redis already.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Awaitable
from typing import Any

import grpc

from fleetpulse import connections, datadir, lifecycle
from fleetpulse import selfmetrics as own_metrics
from fleetpulse.errors import ConfigError
from fleetpulse.ingest import queue
from fleetpulse.ingest.frontend import relay
from fleetpulse.ingest.frontend.auth import Authenticator
from fleetpulse.ingest.frontend.registry import AgentRegistry
from fleetpulse.ingest.frontend.service import AgentService
from fleetpulse.ingest.queue import BatchQueue
from fleetpulse.proto import wire
from fleetpulse.settings import Settings

log = logging.getLogger(__name__)

STOP_GRACE_S = 2.0
SHUTDOWN_BUDGET_S = 8.0
SHUTDOWN_WATCHDOG_MARGIN_S = 3.0
# Time to end one stream with its status when sent away: 6,000 took 1.63 s in a process alone on
# this 2-core host (0.27 ms), with 3 processes and their agents sharing the cores 6,667 took 6-8 s.
STREAM_END_S = 0.001
# The longest a front-end process takes to stop: with as many streams as its open files allow
# (what a supervisor waits before SIGKILL).
MAX_STREAMS = 20_000
MAX_STOP_S = SHUTDOWN_BUDGET_S + MAX_STREAMS * STREAM_END_S + SHUTDOWN_WATCHDOG_MARGIN_S
POOL_MAX_SIZE = 8
# New calls that may wait for the event loop, and for how long, before gRPC cancels them
# (build_server).
MAX_PENDING_CALLS = 100_000
MAX_UNREQUESTED_S = 600


def build_server(service: AgentService, settings: Settings) -> grpc.aio.Server:
    handler = grpc.method_handlers_generic_handler(
        wire.SERVICE,
        {
            wire.METHOD: grpc.stream_stream_rpc_method_handler(
                service.connect,
                request_deserializer=None,  # raw bytes: see the module docstring
                response_serializer=None,  # responses are pre-serialized bytes
            )
        },
    )
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            # Dead peers (a host that vanished without closing) are found by HTTP/2 keepalive:
            # a ping after 30 s without traffic, the connection dropped 10 s after no answer.
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
            # New calls wait in gRPC's queue until the event loop takes them up. gRPC cancels
            # them past 1,000 waiting (at random, all past 3,000) or after 30 s: the client sees
            # CANCELLED with no message, or INTERNAL "Internal error from Core" when its register
            # write meets the cancelled call (grpc#36066). A registration burst that saturates
            # the process passes both: 4,724 of 16,000 agents failed that way at 500
            # registrations/s, and each retry cost the process another TCP and HTTP/2 handshake
            # (docs/performance.md, "50,000 agents"). A waiting call costs next to nothing, and a
            # process holds at most its open-files limit of them: let them wait.
            ("grpc.server.max_pending_requests", MAX_PENDING_CALLS),
            ("grpc.server.max_pending_requests_hard_limit", MAX_PENDING_CALLS),
            ("grpc.server_max_unrequested_time_in_server", MAX_UNREQUESTED_S),
            # Only the processes of one `ingest --processes N` share a port (settings.py): gRPC
            # turns SO_REUSEPORT on by default, which let a second platform join a running one.
            ("grpc.so_reuseport", 1 if settings.grpc_reuse_port else 0),
        ]
    )
    server.add_generic_rpc_handlers((handler,))
    address = f"{settings.grpc_host}:{settings.grpc_port}"
    credentials_ = server_credentials(settings)
    try:
        if credentials_ is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials_)
    except RuntimeError:  # grpcio raises where it used to return 0
        port = 0
    if port == 0:
        holder = datadir.port_holder(settings.grpc_port)
        raise ConfigError(
            f"cannot listen on {address} (gRPC)"
            + (f": in use by {holder}" if holder else ": in use or not an address of this host")
        )
    return server


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS for the gRPC port when a certificate is configured, else None (plaintext)."""
    cert, key, client_ca = (
        settings.grpc_tls_cert_file,
        settings.grpc_tls_key_file,
        settings.grpc_tls_client_ca_file,
    )
    if cert is None and key is None:
        if client_ca is not None:
            raise ConfigError("FLEETPULSE_GRPC_TLS_CLIENT_CA_FILE needs a server certificate too")
        return None
    if cert is None or key is None:
        raise ConfigError(
            "FLEETPULSE_GRPC_TLS_CERT_FILE and FLEETPULSE_GRPC_TLS_KEY_FILE go together"
        )
    try:
        pair = (key.read_bytes(), cert.read_bytes())
        roots = client_ca.read_bytes() if client_ca is not None else None
    except OSError as exc:
        raise ConfigError(f"cannot read a TLS file: {exc}") from exc
    return grpc.ssl_server_credentials(
        [pair], root_certificates=roots, require_client_auth=roots is not None
    )


async def run(
    settings: Settings,
    ready: asyncio.Event | None = None,
    index: int = 1,
    watchdog: bool = False,
) -> None:
    """Serve until SIGTERM/SIGINT, then stop accepting, let open calls finish, flush liveness.

    ``watchdog`` (the process's own front-end): from SIGTERM on, the process ends if it has not
    exited within the budget and its margin; once the shutdown is done, it ends at once (status 0)
    rather than wait for the event loop's own clean-up of the tasks left."""
    settings.require("database_url", "redis_url", "enrollment_token")
    assert settings.database_url and settings.redis_url and settings.enrollment_token
    shards = queue.ensure_layout(
        connections.redis_client(settings.redis_url),
        settings.stream_shards,
    )
    redis_client = connections.redis_async(settings.redis_url)
    pool = connections.pg_pool_async(
        settings.database_url, min_size=1, max_size=POOL_MAX_SIZE, name="ingest"
    )
    await pool.open(wait=True)
    registry = AgentRegistry(pool, settings)
    batches = BatchQueue(redis_client, shards)
    service = AgentService(
        settings,
        Authenticator(settings.enrollment_token.get_secret_value(), pool),
        registry,
        batches,
        pool,
        redis_client,
    )
    server = build_server(service, settings)
    await server.start()
    metrics_port = own_metrics.serve(
        settings.grpc_host, settings.ingest_metrics_port, "ingest_metrics_port", index=index
    )
    assert settings.redis_url is not None
    self_store = own_metrics.SelfStore(
        settings.redis_url,
        shards,
        "fleetpulse-ingest",
        f"{socket.gethostname()}:{settings.grpc_port}/{index}",
        settings.self_metrics_interval_s,
    )
    self_store.start()
    tasks = [
        asyncio.create_task(registry.flush_forever(), name="heartbeat-flush"),
        asyncio.create_task(service.backpressure.watch(), name="backpressure"),
        asyncio.create_task(
            relay.relay_committed(redis_client, service.sessions), name="committed-relay"
        ),
        asyncio.create_task(service.sessions.follow_control(), name="control"),
        asyncio.create_task(service.sessions.publish_control(), name="control-publish"),
        asyncio.create_task(service.over_budget.refresh_forever(), name="series-budgets"),
    ]
    log.info(
        "ingest front-end listening on %s:%d (%d stream shards; metrics on port %s)",
        settings.grpc_host,
        settings.grpc_port,
        shards,
        metrics_port or "off",
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        self_store.stop()
        log.info("ingest front-end stopping")
        service.stopping = True
        ending_s = min(len(service.sessions), MAX_STREAMS) * STREAM_END_S
        budget_s = SHUTDOWN_BUDGET_S + ending_s
        if watchdog:
            lifecycle.exit_if_stuck(budget_s + SHUTDOWN_WATCHDOG_MARGIN_S)
        deadline = loop.time() + budget_s
        sent_away = service.send_away(settings.ingest_reconnect_rate)
        log.info(
            "asked %d agents to come back within %.0f s",
            sent_away,
            sent_away / settings.ingest_reconnect_rate,
        )
        await _stage("stop the gRPC server", server.stop(grace=STOP_GRACE_S + ending_s), deadline)
        await _stage("stop the background tasks", lifecycle.cancel_and_wait(tasks), deadline)
        await _stage("mark connected agents offline", service.forget_all(), deadline)
        await _stage("close the XADD pipeline", batches.close(), deadline)
        await _stage("flush heartbeats", registry.flush(), deadline)
        await _stage("close Redis", redis_client.aclose(), deadline)
        await _stage("close the PostgreSQL pool", pool.close(timeout=1.0), deadline)
        log.info("ingest front-end stopped (%d tasks left)", len(asyncio.all_tasks()) - 1)
    if watchdog:
        # Nothing is left to lose, and the event loop's clean-up would cancel gRPC's leftover
        # per-call tasks one by one: 7-12 s with 16,667 streams per process, during which the
        # port stayed closed to the agents coming back (docs/performance.md, "50,000 agents").
        lifecycle.exit_now(0)


async def _stage(name: str, step: Awaitable[Any], deadline: float) -> None:
    """One step of the shutdown, given what is left of its time budget; one that is stuck is
    named in the log, with every task's stack, and left behind so that the rest still runs."""
    task = asyncio.ensure_future(step)
    started = asyncio.get_running_loop().time()
    remaining = deadline - started
    done, _ = await asyncio.wait({task}, timeout=max(remaining, 0.5))
    log.info("shutdown: %s took %.2f s", name, asyncio.get_running_loop().time() - started)
    if not done:
        task.add_done_callback(_retrieve)
        task.cancel()
        log.error(
            "shutdown: %s did not finish within the budget; going on. Tasks:\n%s",
            name,
            lifecycle.task_stacks(),
        )
    elif not task.cancelled() and task.exception() is not None:
        log.error("shutdown: %s failed: %s", name, task.exception())


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # already logged by _stage; not "never retrieved" at exit


def main(settings: Settings, index: int = 1) -> None:
    import uvloop

    log.info("open files limit: %d (one per connected agent)", lifecycle.raise_open_files_limit())
    uvloop.run(run(settings, index=index, watchdog=True))

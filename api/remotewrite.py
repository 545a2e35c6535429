"""``POST /api/v1/write``: Prometheus' remote write 1.0 into the platform's queue.

The endpoint is an edge, like the gRPC front-end: it checks the request (a write key, the
protocol's headers, a body within the limit), asks the shared backpressure rule whether the queue
takes more (ingest/backpressure.py), turns the body into batches (ingest/remotewrite.py: mapping
onto agents, grouping, identity) and XADDs them through a ``BatchQueue`` as the front-end does.
It answers 204 only once every batch of the request is in Redis: then the workers store it,
exactly once, as they store an agent's batch.

Answers are what Prometheus' remote-write client acts on (storage/remote/client.go): 2xx is
done; 5xx, and 429 with ``queue_config.retry_on_http_429: true``, are retried after the
``Retry-After`` delay; any other 4xx drops the request for good. So: 429 while the workers are
behind (the queue over ``ingest_max_queued_entries``), 503 while Redis does not answer (both with
``Retry-After``; nothing of the request counts as accepted, and its batches that did reach the
queue are stored once whatever the retry brings), 400 for a body that can never be taken (not
snappy, not a WriteRequest, over the size limit, a wrong content type), 401 without a key, 403
with a key that may not write. Error bodies are one line of plain text, as Prometheus' own receiver
answers (the client logs it).

PostgreSQL is not on this path: while it is down the queue takes requests up to its limit and
the workers store them when it is back; past the limit, 429.
"""

from __future__ import annotations

import asyncio
import logging
import time
from http import HTTPStatus

import redis
import redis.asyncio
from fastapi import APIRouter, Request, Response
from fastapi.responses import PlainTextResponse

from fleetpulse import connections, errors, lifecycle
from fleetpulse.api import auth
from fleetpulse.api.deps import SettingsDep
from fleetpulse.ingest import keys, queue
from fleetpulse.ingest.backpressure import Backpressure
from fleetpulse.ingest.remotewrite import EPOCH, AgentMapping, DecodedRequest, RequestDecoder
from fleetpulse.settings import Settings

log = logging.getLogger(__name__)

PATH = "/api/v1/write"
router = APIRouter(tags=["prometheus"])

CONTENT_TYPE = "application/x-protobuf"
CONTENT_ENCODING = "snappy"
# Remote write 1.0's version header; a 2.x client sends its own protobuf and is refused.
VERSION_HEADER = "x-prometheus-remote-write-version"
_VERSION_1 = "0.1."

# The status of each class of fleetpulse/errors.py on this endpoint: the first of the error's MRO.
_STATUS_OF_CLASS: dict[type[errors.FleetpulseError], HTTPStatus] = {
    errors.Unauthenticated: HTTPStatus.UNAUTHORIZED,
    errors.Forbidden: HTTPStatus.FORBIDDEN,
    errors.PermanentError: HTTPStatus.BAD_REQUEST,
    errors.Overloaded: HTTPStatus.TOO_MANY_REQUESTS,
    errors.RetryableError: HTTPStatus.SERVICE_UNAVAILABLE,
    errors.FleetpulseError: HTTPStatus.INTERNAL_SERVER_ERROR,
}


def owns(path: str) -> bool:
    return path == PATH


def error_response(exc: errors.FleetpulseError) -> Response:
    """An error as this endpoint answers it: its status, the message as one line of text
    (app.py adds ``Retry-After`` and ``WWW-Authenticate``)."""
    status = next(_STATUS_OF_CLASS[c] for c in type(exc).__mro__ if c in _STATUS_OF_CLASS)
    return PlainTextResponse(exc.message + "\n", status)


class RemoteWriteSink:
    """The API process's way into the queue: one Redis client, one coalescing ``BatchQueue``, the
    backpressure watch, the decoder and its series cache. Connects on the first request (the API
    serves reads without Redis), and again after Redis was unreachable at that point."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._retry_after_s = settings.ingest_retry_after_ms / 1000
        self.decoder = RequestDecoder(
            AgentMapping.from_settings(settings), settings.remote_write_max_bytes
        )
        self._client: redis.asyncio.Redis | None = None
        self._queue: queue.BatchQueue | None = None
        self._backpressure: Backpressure | None = None
        self._watch: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def _ready(self) -> tuple[queue.BatchQueue, Backpressure]:
        if self._queue is not None and self._backpressure is not None:
            return self._queue, self._backpressure
        if self._settings.redis_url is None:
            raise errors.Unavailable(
                "remote write needs the queue: FLEETPULSE_REDIS_URL is not set"
            )
        async with self._lock:
            if self._queue is None or self._backpressure is None:
                if self._client is None:
                    self._client = connections.redis_async(self._settings.redis_url)
                try:
                    shards = await queue.shard_count(self._client, self._settings.stream_shards)
                except redis.RedisError as exc:
                    raise self._unavailable(exc) from None
                backpressure = Backpressure(self._settings, self._client, shards)
                await backpressure.check()
                self._watch = asyncio.create_task(backpressure.watch(), name="backpressure")
                self._queue = queue.BatchQueue(self._client, shards)
                self._backpressure = backpressure
        return self._queue, self._backpressure

    def _unavailable(self, exc: BaseException) -> errors.Unavailable:
        return errors.Unavailable(f"queue unavailable ({exc}); retry", self._retry_after_s)

    async def write(self, body: bytes) -> DecodedRequest:
        """Queue one request's batches; returns once all are in Redis. Raises `BadInput`,
        `Overloaded` (over the queue's limit) or `Unavailable` (Redis)."""
        batches, backpressure = await self._ready()
        refusal = backpressure.refusal()
        if refusal is not None:
            raise refusal
        # Decoding is CPU work (about 3 µs per sample): in a thread, so that a large body does not
        # hold the event loop and every other request with it.
        decoded = await asyncio.to_thread(self.decoder.decode, body)
        received_ms = int(time.time() * 1000)
        results = await asyncio.gather(
            *(
                batches.add(
                    batch.agent_id,
                    EPOCH,
                    batch.sequence,
                    batch.payload,
                    received_ms,
                    form=keys.FORM_COLUMNS,
                )
                for batch in decoded.batches
            ),
            return_exceptions=True,
        )
        failed = next((r for r in results if isinstance(r, BaseException)), None)
        if failed is not None:
            if not isinstance(failed, redis.RedisError):
                raise failed
            log.warning(
                "remote write: %d of %d batches not queued: %s",
                sum(isinstance(r, BaseException) for r in results),
                len(results),
                failed,
            )
            raise self._unavailable(failed)
        return decoded

    async def close(self) -> None:
        if self._watch is not None:
            await lifecycle.cancel_and_wait([self._watch])
        if self._queue is not None:
            await self._queue.close()
        if self._client is not None:
            await self._client.aclose()


def _check_headers(request: Request) -> None:
    content_type = request.headers.get("content-type", "")
    media_type = content_type.partition(";")[0].strip().lower()
    if media_type != CONTENT_TYPE:
        raise errors.BadInput(
            f"Content-Type must be {CONTENT_TYPE} (remote write 1.0), not {content_type!r}"
        )
    proto = content_type.partition(";")[2].strip().lower()
    if proto and proto not in ("proto=prometheus.writerequest",):
        raise errors.BadInput(
            f"only remote write 1.0 (prometheus.WriteRequest) is taken, not {proto!r}"
        )
    encoding = request.headers.get("content-encoding", "")
    if encoding.strip().lower() != CONTENT_ENCODING:
        raise errors.BadInput(
            f"Content-Encoding must be {CONTENT_ENCODING} (block format), not {encoding!r}"
        )
    version = request.headers.get(VERSION_HEADER)
    if version is not None and not version.strip().startswith(_VERSION_1):
        raise errors.BadInput(
            f"X-Prometheus-Remote-Write-Version {version!r}: only 0.1.x (remote write 1.0) is taken"
        )


async def _body(request: Request, limit_bytes: int) -> bytes:
    """The (compressed) body, refused past what its decompressed limit could be in snappy."""
    # Snappy's worst case is 32 + n + n/6 bytes for n bytes of input.
    most = 32 + limit_bytes + limit_bytes // 6
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > most:
        raise errors.BadInput(f"body of {declared} bytes is over the limit of {most}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > most:
            raise errors.BadInput(f"body is over the limit of {most} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


@router.post(
    PATH,
    status_code=HTTPStatus.NO_CONTENT,
    response_class=Response,
    responses={
        400: {"description": "Not a remote-write 1.0 request: not retried by Prometheus"},
        401: {"description": "No or a wrong API key"},
        403: {"description": "A key that may not write (a read key), or remote write is off"},
        429: {"description": "Workers behind: retry after Retry-After"},
        503: {"description": "Queue unreachable: retry after Retry-After"},
    },
)
async def write_samples(request: Request, settings: SettingsDep) -> Response:
    """Prometheus remote write 1.0: a snappy-compressed protobuf ``WriteRequest``, stored through
    the queue, the workers and the ledger like an agent's batches (docs/api.md)."""
    auth.require_write(request, settings)
    _check_headers(request)
    body = await _body(request, settings.remote_write_max_bytes)
    sink: RemoteWriteSink = request.app.state.remote_write
    await sink.write(body)
    return Response(status_code=HTTPStatus.NO_CONTENT)

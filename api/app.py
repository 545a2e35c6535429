"""The read API process: the FastAPI app, its PostgreSQL pool, and the uvicorn server around it."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import signal
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Any

import psycopg
import redis
import uvicorn
from fastapi import Depends, FastAPI, Request, Response
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, PlainTextResponse
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool
from starlette.exceptions import HTTPException as StarletteHTTPException

from fleetpulse import connections
from fleetpulse import selfmetrics as own_metrics
from fleetpulse.api import (
    agents,
    alerting,
    auditlog,
    budgets,
    config,
    deps,
    fleet,
    metrics,
    prom,
    query,
    remotewrite,
    rollouts,
    tags,
    ui,
)
from fleetpulse.api.rules.evaluator import Evaluator, RuleSet
from fleetpulse.api.schemas import HealthPublic
from fleetpulse.errors import (
    BadInput,
    ConfigError,
    Conflict,
    FleetpulseError,
    Forbidden,
    NotFound,
    Overloaded,
    PermanentError,
    RetryableError,
    Unauthenticated,
)
from fleetpulse.ingest import queue as ingest_queue
from fleetpulse.settings import Settings

log = logging.getLogger(__name__)

POOL_MIN_SIZE = 1
POOL_MAX_SIZE = 8
# Load balancers probe often and give up quickly; answer before they do.
HEALTH_TIMEOUT_S = 2.0

# The HTTP status of each class of fleetpulse/errors.py: the first class of the error's MRO found
# here. Bad input is 422, as FastAPI answers a parameter it refuses; one endpoint answers 400 for
# its window (agents.BadWindow), as it always has. Under /api/v1, prom.py answers instead.
_STATUS_OF_CLASS: dict[type[FleetpulseError], HTTPStatus] = {
    agents.BadWindow: HTTPStatus.BAD_REQUEST,
    BadInput: HTTPStatus.UNPROCESSABLE_ENTITY,
    NotFound: HTTPStatus.NOT_FOUND,
    Unauthenticated: HTTPStatus.UNAUTHORIZED,
    Forbidden: HTTPStatus.FORBIDDEN,
    Conflict: HTTPStatus.CONFLICT,
    ConfigError: HTTPStatus.INTERNAL_SERVER_ERROR,
    PermanentError: HTTPStatus.BAD_REQUEST,
    Overloaded: HTTPStatus.TOO_MANY_REQUESTS,
    RetryableError: HTTPStatus.SERVICE_UNAVAILABLE,  # Unavailable, Superseded, Timeout
    FleetpulseError: HTTPStatus.INTERNAL_SERVER_ERROR,
}


def _status(exc: FleetpulseError) -> HTTPStatus:
    return next(_STATUS_OF_CLASS[c] for c in type(exc).__mro__ if c in _STATUS_OF_CLASS)


def _headers(exc: FleetpulseError) -> dict[str, str]:
    """What HTTP adds to an error's answer: the scheme to authenticate with, or how long to wait
    before retrying."""
    if isinstance(exc, Unauthenticated):
        return {"WWW-Authenticate": "Bearer"}
    if isinstance(exc, RetryableError) and exc.retry_after_s > 0:
        return {"Retry-After": str(math.ceil(exc.retry_after_s))}
    return {}


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _start_rules(settings: Settings, ruleset: RuleSet) -> asyncio.Task[None] | None:
    """SIGHUP reloads the rule files; the evaluator competes to be the platform's one (it needs
    Redis, where recording rules' results go)."""
    with contextlib.suppress(ValueError, RuntimeError):  # not the main thread (a test client)
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, ruleset.reload)
    if not settings.rules_evaluate:
        return None
    if settings.redis_url is None:
        log.warning("rules are not evaluated here: FLEETPULSE_REDIS_URL is not set")
        return None
    return asyncio.create_task(Evaluator(settings, ruleset).run(), name="rule-evaluator")


def _store_own_metrics(
    settings: Settings, pool: AsyncConnectionPool[AsyncConnection[Any]]
) -> own_metrics.SelfStore | None:
    """The API's own metrics, stored as series (fleetpulse/selfmetrics.py), when it has Redis."""
    if settings.redis_url is None or settings.self_metrics_interval_s <= 0:
        return None
    client = connections.redis_client(settings.redis_url)
    try:
        shards = ingest_queue.ensure_layout(client, settings.stream_shards)
    except redis.RedisError as exc:
        log.warning("the API's own metrics are not stored: %s", exc)
        return None
    finally:
        client.close()
    store = own_metrics.SelfStore(
        settings.redis_url,
        shards,
        "fleetpulse-api",
        f"{socket.gethostname()}:{settings.api_port}",
        settings.self_metrics_interval_s,
        refresh=lambda _: metrics.refresh_pool(pool),
    )
    store.start()
    return store


def create_app(settings: Settings) -> FastAPI:
    """The API app; its lifespan opens the connection pool (and fails startup without a database)."""
    settings.require("database_url")
    conninfo = settings.database_url
    assert conninfo is not None  # require() above
    if not settings.read_keys() and settings.api_admin_key is None and not settings.api_open:
        raise ConfigError(
            "no API key: set FLEETPULSE_API_KEYS (comma-separated read keys), or "
            "FLEETPULSE_API_OPEN=true to let anyone who reaches the port read"
        )

    # The rule files load before anything starts: one that does not fails the start, as in
    # Prometheus; later reloads that fail keep the rules in force (api/rules/evaluator.py).
    ruleset = RuleSet(settings)
    error = ruleset.reload()
    if error is not None:
        raise ConfigError(error)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = connections.pg_pool_async(
            conninfo,
            min_size=POOL_MIN_SIZE,
            max_size=POOL_MAX_SIZE,
            name="api",
            configure=deps.configure_connection,
            # One round trip per checkout, so that the first request after a database restart gets
            # a fresh connection instead of a 500.
            check=True,
        )
        await pool.open(wait=True)
        app.state.pool = pool
        app.state.remote_write = remotewrite.RemoteWriteSink(settings)
        log.info("api pool open (%d-%d connections)", POOL_MIN_SIZE, POOL_MAX_SIZE)
        # Everything alive now (modules, the app, the pool) lives as long as the process: moved
        # out of the collector's sight, a full collection no longer walks it. Measured: 7 of 100
        # host-chart requests took 100-130 ms instead of about 40 without this
        # (docs/performance.md, "Read latency at 100M+ points").
        gc.collect()
        gc.freeze()
        evaluating = _start_rules(settings, ruleset)
        self_store = _store_own_metrics(settings, pool)
        try:
            yield
        finally:
            if self_store is not None:
                self_store.stop()
            if evaluating is not None:
                evaluating.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await evaluating
            with contextlib.suppress(ValueError, RuntimeError):
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            await app.state.remote_write.close()
            await pool.close()
            log.info("api pool closed")

    app = FastAPI(
        title="fleetpulse", lifespan=lifespan, dependencies=[Depends(deps.require_read_key)]
    )
    app.state.settings = settings
    app.state.ruleset = ruleset

    # Every error raised on purpose, below the routes or in them: its class decides the status
    # (the body is FastAPI's {"detail": message}); under /api/v1, Prometheus' status and format,
    # and on its remote-write endpoint, what Prometheus' own receiver answers.
    @app.exception_handler(FleetpulseError)
    async def on_error(request: Request, exc: FleetpulseError) -> Response:
        if remotewrite.owns(request.url.path):
            response = remotewrite.error_response(exc)
        elif prom.owns(request.url.path):
            response = prom.error_response(exc)
        else:
            response = JSONResponse({"detail": exc.message}, _status(exc))
        response.headers.update(_headers(exc))
        return response

    # The errors FastAPI answers by itself (no route, a method the route does not take, a
    # parameter it refuses, a bug): under /api/v1 in Prometheus' format, so that a client of that
    # API gets one format whatever went wrong; everywhere else FastAPI's own.
    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if remotewrite.owns(request.url.path):
            return PlainTextResponse(f"{exc.detail}\n", exc.status_code, exc.headers)
        if prom.owns(request.url.path):
            return prom.http_error(request, exc.status_code, str(exc.detail), exc.headers)
        return await http_exception_handler(request, exc)

    @app.exception_handler(RequestValidationError)
    async def on_invalid_request(request: Request, exc: RequestValidationError) -> Response:
        if prom.owns(request.url.path):
            reasons = [f'invalid parameter "{e["loc"][-1]}": {e["msg"]}' for e in exc.errors()]
            return prom.http_error(request, HTTPStatus.BAD_REQUEST, "; ".join(reasons))
        return await request_validation_exception_handler(request, exc)

    @app.exception_handler(Exception)
    async def on_server_error(request: Request, exc: Exception) -> Response:
        # Only the answer: uvicorn still logs the traceback (Starlette raises the error again).
        if prom.owns(request.url.path):
            return prom.http_error(request, HTTPStatus.INTERNAL_SERVER_ERROR, _one_line(exc))
        return PlainTextResponse("Internal Server Error", HTTPStatus.INTERNAL_SERVER_ERROR)

    origins = [o.strip() for o in settings.api_cors_origins.split(",") if o.strip()]
    if origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST", "PUT"],
            allow_headers=["Authorization", "Content-Type"],
        )

    @app.get(
        "/healthz",
        response_model_exclude_none=True,
        responses={503: {"model": HealthPublic, "description": "The database is unreachable"}},
        tags=["health"],
    )
    async def get_health(request: Request, response: Response) -> HealthPublic:
        """200 when the database answers ``SELECT 1`` through the pool, else 503."""
        pool: AsyncConnectionPool[AsyncConnection[Any]] = request.app.state.pool
        try:
            async with pool.connection(timeout=HEALTH_TIMEOUT_S) as conn:
                async with asyncio.timeout(HEALTH_TIMEOUT_S):
                    await conn.execute("SELECT 1")
        except TimeoutError:
            error = f"SELECT 1 took longer than {HEALTH_TIMEOUT_S} s"
        except psycopg.Error as exc:  # PoolTimeout included: no connection could be made in time
            error = _one_line(exc)
        else:
            return HealthPublic(status="ok")
        log.warning("health check failed: %s", error)
        response.status_code = HTTPStatus.SERVICE_UNAVAILABLE
        return HealthPublic(status="unavailable", error=error)

    app.include_router(agents.router)
    app.include_router(config.router)
    app.include_router(tags.router)
    app.include_router(budgets.router)
    app.include_router(auditlog.router)
    app.include_router(rollouts.router)
    app.include_router(fleet.router)
    app.include_router(query.router)
    app.include_router(prom.router)
    app.include_router(alerting.router)
    app.include_router(alerting.lifecycle)
    app.include_router(remotewrite.router)
    app.include_router(ui.router)
    app.include_router(metrics.router)
    app.add_middleware(metrics.RequestMetrics)
    return app


def serve(settings: Settings) -> None:
    """Serve the API on api_host:api_port until SIGTERM or SIGINT (uvicorn's graceful shutdown).

    When startup fails (no database within the pool's 30 s, port in use) uvicorn logs why and
    raises SystemExit(3).
    """
    config = uvicorn.Config(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        log_level="warning",
        # "on", not "auto": a lifespan that fails (no database) must stop the server, not be ignored.
        lifespan="on",
    )
    uvicorn.Server(config).run()

"""The API process's own metrics: requests by route and status, their latency, the connection
pool's use, and (from api/rules/) the rule evaluator's; served at ``GET /metrics`` (a read key)
and stored as series (fleetpulse/selfmetrics.py).

`RequestMetrics` is plain ASGI middleware (no BaseHTTPMiddleware, which would wrap every
response in a stream): one counter increment and one histogram observation per request, the route
as its template (``/agents/{agent_id}``), so that one label value stands for every agent.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from psycopg_pool import AsyncConnectionPool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUESTS = Counter(
    "fleetpulse_api_requests",
    "HTTP requests answered, by route, method and status",
    ["route", "method", "status"],
)
LATENCY = Histogram(
    "fleetpulse_api_request_seconds",
    "Time to answer an HTTP request, by route",
    ["route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
POOL = Gauge(
    "fleetpulse_api_pool_connections",
    "The API's PostgreSQL pool: connections open, idle, and requests waiting for one",
    ["state"],
)

router = APIRouter(tags=["health"])


class RequestMetrics:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")
            name = getattr(route, "path", None) or "unmatched"
            REQUESTS.labels(name, scope["method"], str(status)).inc()
            LATENCY.labels(name).observe(time.perf_counter() - started)


def refresh_pool(pool: AsyncConnectionPool[Any]) -> None:
    stats = pool.get_stats()
    size, idle = stats.get("pool_size", 0), stats.get("pool_available", 0)
    POOL.labels("open").set(size)
    POOL.labels("idle").set(idle)
    POOL.labels("waiting").set(stats.get("requests_waiting", 0))


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """This process's metrics in Prometheus' text format."""
    refresh_pool(request.app.state.pool)
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

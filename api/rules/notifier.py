"""Alerts to Alertmanager: a bounded queue, batches POSTed to every configured Alertmanager's v2
API (``/api/v2/alerts``), each POST retried a few times with backoff.

As Prometheus' notifier (notifier/notifier.go): alerts wait in one queue of ``capacity``; when it
is full the oldest are dropped and counted (``fleetpulse_notifications_dropped_total``), since a
newer copy of the same alert supersedes an older one; batches of up to ``max_batch`` go to all
Alertmanagers at once; an alert is sent again on every evaluation after ``resend_delay`` while it
fires (api/rules/alerts.py), with ``endsAt`` four resend periods ahead, so an Alertmanager that
stops hearing about it resolves it by itself. Unlike Prometheus, a failed POST is retried
(connection errors, 5xx and 429; tenacity, exponential backoff, ``attempts`` in all) before it
counts as an error: a restarting Alertmanager then misses nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx
from prometheus_client import Counter, Gauge
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from fleetpulse.api.rules.alerts import Alert

log = logging.getLogger(__name__)

SENT = Counter(
    "fleetpulse_notifications_sent_total",
    "Alerts sent to an Alertmanager (each alert of each accepted POST).",
    ["alertmanager"],
)
ERRORS = Counter(
    "fleetpulse_notifications_errors_total",
    "Alerts whose POST to an Alertmanager failed after its retries.",
    ["alertmanager"],
)
DROPPED = Counter(
    "fleetpulse_notifications_dropped_total",
    "Alerts dropped from the notification queue because it was full (the oldest go first).",
)
QUEUE_LENGTH = Gauge("fleetpulse_notifications_queue_length", "Alerts waiting to be sent.")

API_PATH = "/api/v2/alerts"


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def payload(alert: Alert, generator_url: str) -> dict[str, Any]:
    """One alert as Alertmanager's v2 API takes it (``postableAlert``)."""
    ends = alert.resolved_at if alert.resolved_at is not None else alert.valid_until
    out: dict[str, Any] = {
        "labels": alert.labels,
        "annotations": alert.annotations,
        "startsAt": _rfc3339(alert.fired_at if alert.fired_at is not None else alert.active_at),
        "generatorURL": generator_url,
    }
    if ends is not None:
        out["endsAt"] = _rfc3339(ends)
    return out


def generator_url(external_url: str, expr: str) -> str:
    """Where the alert's query can be seen (Prometheus links its graph page)."""
    return f"{external_url.rstrip('/')}/api/v1/query?query={quote(expr, safe='')}"


class _Refused(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:200]}")
        self.status = status


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, _Refused):
        return exc.status >= 500 or exc.status == 429
    return isinstance(exc, httpx.TransportError)


class Notifier:
    def __init__(
        self,
        urls: Sequence[str],
        capacity: int = 10_000,
        max_batch: int = 64,
        timeout_s: float = 10.0,
        attempts: int = 3,
        backoff_s: float = 0.5,
    ) -> None:
        self.urls = [u.rstrip("/") for u in urls]
        self.capacity, self.max_batch = capacity, max_batch
        self._timeout_s, self._attempts, self._backoff_s = timeout_s, attempts, backoff_s
        self._queue: deque[dict[str, Any]] = deque()
        self._ready = asyncio.Event()

    def send(self, alerts: list[dict[str, Any]]) -> None:
        """Queue alerts (Alertmanager's JSON); past ``capacity``, the oldest are dropped."""
        if not self.urls or not alerts:
            return
        self._queue.extend(alerts)
        over = len(self._queue) - self.capacity
        if over > 0:
            for _ in range(over):
                self._queue.popleft()
            DROPPED.inc(over)
            log.warning("notification queue full: dropped the %d oldest alerts", over)
        QUEUE_LENGTH.set(len(self._queue))
        self._ready.set()

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def run(self) -> None:
        """Send batches until cancelled."""
        async with httpx.AsyncClient(timeout=self._timeout_s) as client:
            while True:
                await self._ready.wait()
                self._ready.clear()
                while self._queue:
                    batch = [
                        self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))
                    ]
                    QUEUE_LENGTH.set(len(self._queue))
                    await asyncio.gather(*(self._post(client, url, batch) for url in self.urls))

    async def _post(self, client: httpx.AsyncClient, url: str, batch: list[dict[str, Any]]) -> None:
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(self._attempts),
                wait=wait_exponential(multiplier=self._backoff_s, max=8 * self._backoff_s),
                retry=retry_if_exception(_retryable),
                reraise=True,
            ):
                with attempt:
                    response = await client.post(url + API_PATH, json=batch)
                    if response.status_code // 100 != 2:
                        raise _Refused(response.status_code, response.text)
        except (httpx.HTTPError, _Refused) as exc:
            ERRORS.labels(url).inc(len(batch))
            log.warning("alertmanager %s: %d alerts not sent: %s", url, len(batch), exc)
            return
        SENT.labels(url).inc(len(batch))

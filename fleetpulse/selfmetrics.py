"""Every process's own metrics: served in Prometheus' text format, and stored as series.

Each process keeps its metrics in prometheus_client's default registry (the front-end's in
ingest/frontend/selfmetrics.py, the workers' in ingest/worker/selfmetrics.py, the API's in
api/metrics.py). Two ways out:

- **Served** (`serve`): ``/metrics`` on a port of the process's own (the API on its HTTP port),
  for a Prometheus or an agent that scrapes the platform.
- **Stored** (`SelfStore`): every ``self_metrics_interval_s`` a thread reads the registry and
  writes it as a batch of the platform's own (ingest/platformbatches.py: no agent, the labels
  ``job`` and ``instance`` added as a scrape would), through the queue, the workers and the
  ledger like any agent's batch. So the built-in rules (api/rules/fleet.yml), the dashboard and
  Grafana read the platform's health with the same PromQL as the fleet's, with no scrape to set
  up. ``instance`` is stable across restarts (the role's host and port, or the worker's consumer
  name), so a restart does not start new series.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable

import numpy as np
import redis
from prometheus_client import REGISTRY, start_http_server

from fleetpulse.errors import ConfigError
from fleetpulse.ingest import keys, platformbatches, queue

log = logging.getLogger(__name__)


def serve(host: str, port: int, setting: str, *, index: int = 1, fatal: bool = True) -> int | None:
    """Start ``/metrics`` (a daemon thread) on ``port + index - 1``; its port, or None when the
    port is 0 (off) or, not ``fatal``, taken (logged: the process goes on without it)."""
    if port <= 0:
        return None
    actual = port + index - 1
    try:
        start_http_server(actual, addr=host)
    except OSError as exc:
        message = (
            f"cannot serve /metrics on {host}:{actual} ({exc.strerror}); "
            f"set FLEETPULSE_{setting.upper()} (0 turns it off)"
        )
        if fatal:
            raise ConfigError(message) from exc
        log.error("%s; going on without it", message)
        return None
    return actual


class SelfStore(threading.Thread):
    """Writes the process's registry as a platform batch every ``interval_s`` (0: never)."""

    def __init__(
        self,
        redis_url: str,
        shards: int,
        job: str,
        instance: str,
        interval_s: float,
        refresh: Callable[[redis.Redis], None] | None = None,
    ) -> None:
        super().__init__(name="self-metrics", daemon=True)
        self._redis_url, self._shards = redis_url, shards
        self.job, self.instance, self.interval_s = job, instance, interval_s
        self._refresh = refresh
        self._epoch = platformbatches.epoch("self", f"{job}/{instance}")
        self._stop_event = threading.Event()

    def collect(
        self, client: redis.Redis | None = None
    ) -> tuple[list[tuple[str, dict[str, str]]], np.ndarray]:
        """Every sample of the registry (a counter's ``_created`` left out, as a scrape of the
        text format keeps it out of the series), labelled with ``job`` and ``instance``; first
        ``refresh`` (gauges read from elsewhere) with ``client``."""
        if self._refresh is not None and client is not None:
            self._refresh(client)
        series: list[tuple[str, dict[str, str]]] = []
        values: list[float] = []
        seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
        for metric in REGISTRY.collect():
            for sample in metric.samples:
                if sample.name.endswith("_created"):
                    continue
                labels = {**sample.labels, "job": self.job, "instance": self.instance}
                key = (sample.name, tuple(sorted(labels.items())))
                if key in seen:
                    continue
                seen.add(key)
                series.append((sample.name, labels))
                values.append(float(sample.value))
        return series, np.array(values, dtype=np.float64)

    def write_once(self, client: redis.Redis) -> None:
        now_ms = int(time.time() * 1000)
        series, values = self.collect(client)
        if not series:
            return
        data = platformbatches.encode(
            platformbatches.PLATFORM_AGENT,
            self._epoch,
            now_ms,
            series,
            np.array([now_ms * 1_000_000], dtype=np.int64),
            values,
        )
        agent = platformbatches.PLATFORM_AGENT
        client.xadd(
            keys.stream_key(keys.shard_for(agent, self._shards)),
            queue.entry_fields(agent, self._epoch, now_ms, data, now_ms, keys.FORM_COLUMNS),
        )

    def run(self) -> None:
        if self.interval_s <= 0:
            return
        client = redis.Redis.from_url(self._redis_url, socket_timeout=5.0)
        try:
            next_at = math.ceil(time.time() / self.interval_s) * self.interval_s
            while not self._stop_event.wait(max(0.0, next_at - time.time())):
                try:
                    self.write_once(client)
                except (redis.RedisError, OSError) as exc:
                    log.warning("own metrics not stored this time: %s", exc)
                except Exception:  # a collector's bug must not end the process's own metrics
                    log.exception("own metrics not stored this time")
                next_at += self.interval_s
                if next_at < time.time():  # a long stall: the next round, not a burst
                    next_at = math.ceil(time.time() / self.interval_s) * self.interval_s
        finally:
            client.close()

    def stop(self) -> None:
        self._stop_event.set()

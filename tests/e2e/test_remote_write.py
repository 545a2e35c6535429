"""Prometheus remote write into fleetpulse, end to end with the real programs (issue 19, point 6):
Debian's Prometheus 2.42 scrapes Debian's node_exporter every second and remote-writes to a
running fleetpulse (``fleetpulse api`` and ``fleetpulse worker`` on the test's backends), with
basic auth and a write key. Then the same PromQL instant queries, asked of Prometheus and of
fleetpulse at one evaluation time both hold every sample up to, give the same series and values
(fleetpulse's series carry ``agent_id`` besides, named by the mapping label)."""

from __future__ import annotations

import math
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from fleetpulse.ingest import keys
from tests.integration.test_agent import wait_for
from tests.processes import fleetpulse_process, free_port, log_tail, stop

PROMETHEUS = "/usr/bin/prometheus"
NODE_EXPORTER = "/usr/bin/prometheus-node-exporter"

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        not (Path(PROMETHEUS).exists() and Path(NODE_EXPORTER).exists())
        and not os.environ.get("CI"),
        reason="prometheus and prometheus-node-exporter (Debian's packages) are not installed",
    ),
]

READ_KEY, WRITE_KEY = "e2e-read-key", "e2e-write-key"
SHARDS = 2
# The queries compared: a gauge, an aggregation, a rate, and the series Prometheus makes itself.
QUERIES = [
    "node_load1",
    "sum by (mode) (node_cpu_seconds_total)",
    "rate(node_cpu_seconds_total[1m])",
    "sum(rate(node_cpu_seconds_total[30s])) by (cpu)",
    "node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes",
    "up",
    "count by (collector) (node_scrape_collector_success)",
]
SCRAPES_BEFORE_QUERY = 8


@contextmanager
def program(args: list[str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    try:
        yield proc
    except BaseException:
        print(f"--- {args[0]}: end of {log_path} ---\n{log_tail(log_path)}")
        raise
    finally:
        stop(proc, log_path=log_path)


def ready(url: str, proc: subprocess.Popen[bytes], what: str) -> None:
    def answers() -> bool:
        assert proc.poll() is None, f"{what} exited with status {proc.returncode}"
        try:
            return httpx.get(url, timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    wait_for(answers, 30, f"{what} ready")


def instant(base: str, query: str, at: float, auth: tuple[str, str] | None = None) -> list[Any]:
    answer = httpx.get(
        f"{base}/api/v1/query", params={"query": query, "time": f"{at:.3f}"}, auth=auth, timeout=10
    )
    body = answer.json()
    assert answer.status_code == 200 and body["status"] == "success", (query, body)
    assert body["data"]["resultType"] == "vector", body
    return list(body["data"]["result"])


def by_labels(
    result: list[Any], drop: str | None = None
) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted((k, v) for k, v in r["metric"].items() if k != drop)): float(r["value"][1])
        for r in result
    }


def sent_up_to(prometheus: str) -> float:
    """The newest sample timestamp Prometheus' remote-write queue has sent (and had 2xx for)."""
    text = httpx.get(f"{prometheus}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith("prometheus_remote_storage_queue_highest_sent_timestamp_seconds{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def queued(redis_url: str) -> int:
    client = redis.Redis.from_url(redis_url)
    try:
        return sum(int(client.xlen(keys.stream_key(shard))) for shard in range(SHARDS))
    finally:
        client.close()


# One backend, not both (the whole test stays within CI's time): the embedded servers, there on
# every machine.
@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
def test_prometheus_remote_writes_node_exporter_and_both_answer_the_same(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    api_port, exporter_port, prometheus_port = free_port(), free_port(), free_port()
    fleetpulse = f"http://127.0.0.1:{api_port}"
    prometheus = f"http://127.0.0.1:{prometheus_port}"
    env = {
        "FLEETPULSE_DATABASE_URL": database_url,
        "FLEETPULSE_REDIS_URL": redis_url,
        "FLEETPULSE_STREAM_SHARDS": str(SHARDS),
        "FLEETPULSE_API_PORT": str(api_port),
        "FLEETPULSE_API_KEYS": READ_KEY,
        "FLEETPULSE_API_WRITE_KEYS": f"prometheus:{WRITE_KEY}",
    }
    config = tmp_path / "prometheus.yml"
    config.write_text(
        f"""global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: node
    static_configs:
      - targets: ["127.0.0.1:{exporter_port}"]
remote_write:
  - url: {fleetpulse}/api/v1/write
    basic_auth:
      username: prometheus
      password: {WRITE_KEY}
    queue_config:
      # one shard: its highest sent timestamp is then a bound on everything sent
      max_shards: 1
      batch_send_deadline: 200ms
      min_backoff: 100ms
      max_backoff: 1s
      retry_on_http_429: true
"""
    )
    with (
        fleetpulse_process(["worker"], env, tmp_path / "worker.log"),
        fleetpulse_process(["api"], env, tmp_path / "api.log") as api,
        program(
            [
                NODE_EXPORTER,
                f"--web.listen-address=127.0.0.1:{exporter_port}",
                "--collector.disable-defaults",
                "--collector.cpu",
                "--collector.loadavg",
                "--collector.meminfo",
            ],
            tmp_path / "node_exporter.log",
        ) as exporter,
        program(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prometheus_port}",
            ],
            tmp_path / "prometheus.log",
        ) as server,
    ):
        ready(f"{fleetpulse}/healthz", api, "fleetpulse api")
        ready(f"http://127.0.0.1:{exporter_port}/metrics", exporter, "node_exporter")
        ready(f"{prometheus}/-/ready", server, "prometheus")
        read = ("grafana", READ_KEY)

        # A few scrapes, so that the rates have samples; then an evaluation time both hold all
        # samples up to: Prometheus has sent past it, and fleetpulse has committed what it took.
        def scrapes() -> int:
            found = instant(prometheus, "count_over_time(node_load1[1m])", time.time())
            return int(found[0]["value"][1]) if found else 0

        wait_for(lambda: scrapes() >= SCRAPES_BEFORE_QUERY, 30, "scrapes in Prometheus")
        at = round(time.time() - 1.5, 3)
        wait_for(
            lambda: sent_up_to(prometheus) > at + 1, 20, "Prometheus sent past the evaluation time"
        )
        wait_for(lambda: queued(redis_url) == 0, 20, "fleetpulse committed what it took")

        for query in QUERIES:
            theirs = by_labels(instant(prometheus, query, at))
            ours_raw = instant(fleetpulse, query, at, auth=read)
            ours = by_labels(ours_raw, drop="agent_id")
            assert theirs, query
            assert ours.keys() == theirs.keys(), query
            for labels, value in theirs.items():
                assert math.isclose(ours[labels], value, rel_tol=1e-9, abs_tol=1e-12), (
                    query,
                    labels,
                    ours[labels],
                    value,
                )
            # Series of the target carry the agent the mapping label names: its host, no port.
            assert {r["metric"].get("agent_id") for r in ours_raw} <= {"127.0.0.1", None}, query
        raw = instant(fleetpulse, "node_load1", at, auth=read)
        assert raw[0]["metric"]["agent_id"] == "127.0.0.1"
        assert raw[0]["metric"]["instance"] == f"127.0.0.1:{exporter_port}"

        failed = [
            line
            for line in httpx.get(f"{prometheus}/metrics", timeout=5).text.splitlines()
            if line.startswith("prometheus_remote_storage_samples_failed_total{")
        ]
        assert failed and all(line.endswith(" 0") for line in failed), failed

"""``fleetpulse bench queries``: the read API's latency on a realistic dataset of 1B+ raw points.

The dataset (querydata.py) is the layout the platform leaves behind once its jobs have run
(querylayout.py): closed hours compressed, only the open hour hot; by default 2,000 agents x 50
series, one point every 10 s over 28 hours. It is seeded first when absent; reused, and topped
up to now, when present.

Measured: the real API process (``python -m fleetpulse api`` with a random read key) over HTTP on
loopback, one keep-alive connection, sequential requests, ``--warmup`` rounds first, then ``--runs``
rounds of the queries in turn: the five native ones, then the charts and the top-N again through
``/api/v1/query_range`` and ``/api/v1/query`` as Grafana asks them (a different random agent per
host chart request; raw points, as Prometheus reads them), and the 7-day chart once more allowed
to read the hour tier (``max_source_resolution=1h``, the downsampled fast path). Each query's
latency is from sending the request to having read the whole body. The figures are reported, not
judged (targets: p95 <= 50 ms, <= 100 ms for the top-N). The last stdout line is one JSON object.

The seeding time, sizes and latencies in docs/performance.md ("Read latency at 100M+ points":
50.9 GB seeded, points 12.8 GB of 43.4 GB) are from the layout before, one ``points`` row per
point and per-series rollup rows; they have not been measured again with this layout.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import secrets
import subprocess
import sys
import time
import urllib.parse
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from psycopg.conninfo import make_conninfo

from fleetpulse.bench import querydata, report
from fleetpulse.bench.ports import free_port
from fleetpulse.bench.querydata import DB_NAME, MIN_SERIES_PER_AGENT
from fleetpulse.bench.stats import ms
from fleetpulse.connections import pg_connect
from fleetpulse.embedded import EmbeddedPostgres

_QUERY_NAMES = (
    "fleet_summary",
    "agents_page",
    "host_24h",
    "host_7d",
    "top10_cpu",
    # the same charts and top-N as Grafana asks them of the Prometheus API
    "host_24h_promql",
    "host_7d_promql",
    "top10_cpu_promql",
    # the 7-day chart allowed to read the hour tier (Thanos' max_source_resolution=1h)
    "host_7d_1h_promql",
)


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "fleetpulse-bench"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--agents", type=int, default=2000)
    parser.add_argument("--series-per-agent", type=int, default=50)
    parser.add_argument(
        "--raw-hours", type=float, default=28.0, help="hours of raw points (10 s) up to now"
    )
    parser.add_argument("--runs", type=int, default=100, help="timed requests per query")
    parser.add_argument("--warmup", type=int, default=10, help="untimed requests per query first")
    parser.add_argument("--reseed", action="store_true", help="drop the dataset and seed it again")
    parser.add_argument(
        "--seed-only", action="store_true", help="seed or top up the dataset, measure nothing"
    )
    parser.add_argument(
        "--seed-behind",
        type=int,
        default=0,
        metavar="MINUTES",
        help="when seeding: up to this many minutes ago, then top up to now (tests the top-up)",
    )
    parser.add_argument(
        "--database-url",
        help=f"admin URL of the server holding the {DB_NAME} database (default: embedded)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=_default_data_dir(),
        help="where the embedded PostgreSQL keeps the dataset (without --database-url)",
    )
    parser.add_argument("--results-dir", type=Path, default=Path("bench/results"))


class _Api:
    """``python -m fleetpulse api`` on a free loopback port, with a random read key."""

    def __init__(self, database_url: str) -> None:
        self.key = secrets.token_urlsafe(24)
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETPULSE_")}
        env.update(
            FLEETPULSE_DATABASE_URL=database_url,
            FLEETPULSE_API_KEYS=self.key,
            FLEETPULSE_API_HOST="127.0.0.1",
            FLEETPULSE_API_PORT=str(self.port),
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fleetpulse", "--log-level", "warning", "api"], env=env
        )
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the API exited at start ({self.proc.returncode})")
            try:
                status, _ = self.get("/healthz")
                if status == 200:
                    break
            except OSError:
                self.conn.close()
            if time.monotonic() > deadline:
                raise TimeoutError("the API did not answer /healthz in 60 s")
            time.sleep(0.1)

    def get(self, path: str) -> tuple[int, bytes]:
        self.conn.request("GET", path, headers={"Authorization": f"Bearer {self.key}"})
        response = self.conn.getresponse()
        return response.status, response.read()

    def stop(self) -> None:
        self.conn.close()
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _paths(agent_ids: list[str], rng: np.random.Generator) -> dict[str, str]:
    now = int(time.time())

    def range_query(step: int, seconds: int) -> str:
        agent = agent_ids[int(rng.integers(len(agent_ids)))]
        params = {
            "metric": "cpu_usage_percent",
            "match": f"agent_id={agent}",
            "by": "mode",
            "agg": "avg",
            "step": step,
            "start": now - seconds,
            "end": now,
        }
        return "/query/range?" + urllib.parse.urlencode(params)

    top = {
        "metric": "cpu_usage_percent",
        "match": "mode=idle",
        "k": 10,
        "window": 300,
        "agg": "avg",
        "by": "agent_id",
        "order": "asc",
    }

    def promql_range(step: int, seconds: int, resolution: str = "0s") -> str:
        """A host's CPU chart as a Grafana panel asks it: the average of each step's window, from
        and to multiples of the step (Grafana aligns a range query's start and end so)."""
        agent = agent_ids[int(rng.integers(len(agent_ids)))]
        query = f'avg by (mode) (avg_over_time(cpu_usage_percent{{agent_id="{agent}"}}[{step}s]))'
        start, end = (now - seconds) // step * step, now // step * step
        params = {"query": query, "start": start, "end": end, "step": step}
        if resolution != "0s":
            params["max_source_resolution"] = resolution
        return "/api/v1/query_range?" + urllib.parse.urlencode(params)

    top_promql = {
        "query": 'bottomk(10, avg by (agent_id) (avg_over_time(cpu_usage_percent{mode="idle"}'
        "[5m])))",
        "time": now,
    }
    return {
        "fleet_summary": "/fleet/summary",
        "agents_page": "/agents?limit=50&sort=agent_id",
        "host_24h": range_query(60, 24 * 3600),
        "host_7d": range_query(3600, 7 * 24 * 3600),
        "top10_cpu": "/query/top?" + urllib.parse.urlencode(top),
        "host_24h_promql": promql_range(60, 24 * 3600),
        "host_7d_promql": promql_range(3600, 7 * 24 * 3600),
        "top10_cpu_promql": "/api/v1/query?" + urllib.parse.urlencode(top_promql),
        "host_7d_1h_promql": promql_range(3600, 7 * 24 * 3600, "1h"),
    }


def _shape(name: str, body: bytes) -> dict[str, Any]:
    """What one answer held (checked outside the timing): groups, series, points."""
    try:
        doc = json.loads(body)
    except ValueError:
        return {}
    if name in ("host_24h", "host_7d") and isinstance(doc, dict):
        series = doc.get("series") or []
        return {
            "tier": doc.get("tier"),
            "series": len(series),
            "points": sum(len(s.get("points") or []) for s in series),
        }
    if name.endswith("_promql") and isinstance(doc, dict):
        result = (doc.get("data") or {}).get("result") or []
        return {
            "series": len(result),
            "points": sum(len(r.get("values") or [r.get("value")]) for r in result),
        }
    if name == "top10_cpu" and isinstance(doc, dict):
        return {"groups": len(doc.get("groups") or [])}
    if name == "agents_page" and isinstance(doc, list):
        return {
            "agents": len(doc),
            "with_cpu": sum(1 for a in doc if a.get("cpu_percent") is not None),
        }
    if name == "fleet_summary" and isinstance(doc, dict):
        return {"agents": doc.get("agents")}
    return {}


def _measure(database_url: str, runs: int, warmup: int) -> dict[str, Any]:
    with pg_connect(database_url, autocommit=True) as conn:
        # Heartbeats as live agents would have kept them.
        conn.execute(
            "UPDATE agents SET last_heartbeat = now() - random() * interval '5 seconds'"
            " WHERE status = 'online'"
        )
        agent_ids = [r[0] for r in conn.execute("SELECT agent_id FROM agents ORDER BY agent_id")]
    api = _Api(database_url)
    rng = np.random.default_rng()
    latencies: dict[str, list[float]] = {name: [] for name in _QUERY_NAMES}
    sizes: dict[str, list[int]] = {name: [] for name in _QUERY_NAMES}
    errors: dict[str, dict[str, int]] = {}
    shapes: dict[str, dict[str, Any]] = {}
    try:
        for round_index in range(warmup + runs):
            for name, path in _paths(agent_ids, rng).items():
                began = time.perf_counter()
                status, body = api.get(path)
                took = time.perf_counter() - began
                if status != 200:
                    key = str(status)
                    errors.setdefault(name, {})
                    errors[name][key] = errors[name].get(key, 0) + 1
                    if sum(errors[name].values()) == 1:
                        sys.stderr.write(f"{name}: HTTP {status} for {path}: {body[:300]!r}\n")
                    continue
                if round_index >= warmup:
                    latencies[name].append(took)
                    sizes[name].append(len(body))
                shapes[name] = _shape(name, body)
    finally:
        api.stop()
    return {"latencies": latencies, "sizes": sizes, "errors": errors, "shapes": shapes}


def _command(args: argparse.Namespace) -> str:
    parts = ["fleetpulse bench queries"]
    defaults = argparse.ArgumentParser()
    add_arguments(defaults)
    for key in ("agents", "series_per_agent", "raw_hours", "runs", "warmup", "seed_behind"):
        value = getattr(args, key)
        if value != defaults.get_default(key):
            parts.append(f"--{key.replace('_', '-')} {value}")
    if args.database_url:
        parts.append("--database-url URL")
    return " ".join(parts)


def run(args: argparse.Namespace) -> int:
    if args.series_per_agent < MIN_SERIES_PER_AGENT:
        sys.stderr.write(f"--series-per-agent must be at least {MIN_SERIES_PER_AGENT}\n")
        return 2
    if args.seed_behind < 0:
        sys.stderr.write("--seed-behind must not be negative\n")
        return 2
    started_at = datetime.now(UTC)
    pg = None
    try:
        admin_url = args.database_url
        if admin_url is None:
            pg = EmbeddedPostgres(args.data_dir)
            admin_url = querydata.configure_embedded(pg, pg.start())
        database_url = make_conninfo(admin_url, dbname=DB_NAME)
        ds, seeded = querydata.prepare(database_url, admin_url, args)
        measured = None if args.seed_only else _measure(database_url, args.runs, args.warmup)
        with pg_connect(database_url, autocommit=True) as conn:
            sizes = querydata.sizes(conn)
            server = querydata.server_settings(conn)
            # The top-up (if any) is in the dataset now; report it as stored.
            ds = querydata.load_meta(conn) or ds
    finally:
        if pg is not None:
            pg.stop()

    summary: dict[str, Any] = {
        "agents": ds.agents,
        "series": ds.agents * ds.series_per_agent,
        "series_per_agent": ds.series_per_agent,
        "points": ds.points,
        "set_minutes": ds.set_minutes,
        "set_hours": ds.set_hours,
        "raw_start": ds.raw_start.isoformat(),
        "raw_end": ds.raw_end.isoformat(),
        "seeded_now": seeded,
        "seed_s": round(ds.seed_s, 1),
        "seed_points_per_s": round(ds.points / max(ds.seed_s, 1e-9)) if seeded else None,
        "database_gb": sizes["database_gb"],
        "runs": 0 if measured is None else args.runs,
    }
    details: dict[str, Any] = {}
    if measured is not None:
        for name in _QUERY_NAMES:
            times = np.array(measured["latencies"][name])
            if len(times):
                summary[f"{name}_p50_ms"] = ms(float(np.percentile(times, 50)))
                summary[f"{name}_p95_ms"] = ms(float(np.percentile(times, 95)))
                summary[f"{name}_max_ms"] = ms(float(times.max()))
                summary[f"{name}_bytes"] = int(np.median(measured["sizes"][name]))
            else:
                for stat in ("p50_ms", "p95_ms", "max_ms", "bytes"):
                    summary[f"{name}_{stat}"] = None
            details[name] = {
                "latencies_ms": [ms(t) for t in measured["latencies"][name]],
                "errors": measured["errors"].get(name, {}),
                "answer": measured["shapes"].get(name, {}),
            }
        summary["errors"] = sum(sum(e.values()) for e in measured["errors"].values())
    result = {
        "started_at": started_at.isoformat(timespec="seconds"),
        "command": _command(args),
        "machine": report.machine(),
        "server": server,
        "sizes": sizes,
        "summary": summary,
        "queries": details,
    }
    out_dir = args.results_dir / (started_at.strftime("%Y%m%dT%H%M%SZ") + "-queries")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "result.json").write_text(json.dumps(result, indent=2))
    sys.stderr.write(
        json.dumps(
            {
                "sizes": sizes,
                "server": server,
                "answers": details and {k: v["answer"] for k, v in details.items()},
            },
            indent=1,
        )
        + f"\nresults in {out_dir}\n"
    )
    print(json.dumps(summary))
    return 1 if summary.get("errors") else 0

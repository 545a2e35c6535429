"""``fleetpulse up``: the whole platform on one machine, started and stopped in order.

Start: embedded PostgreSQL and Redis (unless URLs are given), migrations, then the ingest
front-end, the workers and the API as child processes, then the local agents. Stop (Ctrl-C or
SIGTERM), in the order that loses nothing: agents first (they flush what is unacknowledged), then
the front-end (no new batches), then the workers (they drain the streams into PostgreSQL), then
the API, Redis and PostgreSQL. Children run in their own session, so a terminal's Ctrl-C reaches
only this process, which then stops them in that order; each child also gets SIGTERM if this
process dies (PR_SET_PDEATHSIG), so none is left behind.

One platform per data dir (fleetpulse/datadir.py): ``up`` locks its data dir and checks every
port it will listen on before it writes or starts anything, so a second ``up`` is refused with one
line instead of sharing the first one's ports, Redis socket and AOF. While up, it keeps
``platform.json`` in the data dir, which the CLI's other commands read to find it.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import yaml
from pydantic import SecretStr

from fleetpulse import datadir, lifecycle
from fleetpulse.embedded import EmbeddedPostgres, EmbeddedRedis
from fleetpulse.errors import ConfigError
from fleetpulse.ingest.frontend import server as frontend_server
from fleetpulse.migrate import migrate
from fleetpulse.settings import Settings

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 30.0


@dataclass
class Child:
    name: str
    argv: list[str]
    stop_timeout_s: float
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)


class Supervisor:
    def __init__(
        self,
        settings: Settings,
        *,
        agents: int,
        workers: int,
        collect_interval_s: float,
        log_level: str,
        out: TextIO,
    ) -> None:
        if agents < 0 or workers < 1:
            raise ConfigError("--agents must be >= 0 and --workers >= 1")
        self.settings = settings
        self.agents = agents
        self.workers = workers
        self.collect_interval_s = collect_interval_s
        self.log_level = log_level
        self.out = out
        self._stop = threading.Event()
        self._lock: datadir.DirLock | None = None
        self._record: datadir.PlatformRecord | None = None
        self._pg: EmbeddedPostgres | None = None
        self._redis: EmbeddedRedis | None = None
        self._children: dict[str, list[Child]] = {
            "agents": [],
            "ingest": [],
            "workers": [],
            "api": [],
        }

    # -- lifecycle ---------------------------------------------------------------------------
    def run(self) -> int:
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        status = 0
        try:
            self.start()
            if not self._stop.is_set():
                status = self._watch()
        finally:
            self.shutdown()
        return status

    def _on_signal(self, signum: int, frame: object) -> None:
        self._stop.set()

    def start(self, banner: bool = True) -> None:
        """Start servers and roles and wait until they answer; call shutdown() in any case."""
        settings = self.settings
        data_dir = settings.data_dir.expanduser().resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
        lock = datadir.claim(data_dir)  # refused here, nothing of the owner's was touched
        try:
            datadir.check_ports_free(self._listeners())
        except ConfigError:
            lock.release()
            raise
        self._lock = lock
        self._record = datadir.PlatformRecord(
            pid=os.getpid(),
            data_dir=str(data_dir),
            state="starting",
            api_url=self.api_url,
            grpc_address=f"{_connect_host(settings.grpc_host)}:{settings.grpc_port}",
            ingest_metrics_url=self.ingest_metrics_url,
            embedded_postgres=settings.database_url is None,
            embedded_redis=settings.redis_url is None,
        )
        datadir.write_record(data_dir, self._record)
        updates: dict[str, object] = {"data_dir": data_dir}
        if settings.database_url is None:
            self._pg = EmbeddedPostgres(data_dir)
            updates["database_url"] = self._pg.start()
        if settings.redis_url is None:
            self._redis = EmbeddedRedis(data_dir)
            updates["redis_url"] = self._redis.start()
        if settings.enrollment_token is None:
            updates["enrollment_token"] = SecretStr(_stored_token(data_dir, "enrollment_token"))
        if settings.api_keys is None and settings.api_admin_key is None and not settings.api_open:
            updates["api_keys"] = SecretStr(_stored_token(data_dir, "api-key"))
        if not settings.rule_paths():
            updates["rule_files"] = _rules_copy(data_dir)
        self.settings = settings = settings.model_copy(update=updates)
        assert settings.database_url
        migrate(settings.database_url)

        # The front-end's own shutdown bound (it sends its agents away first).
        self._spawn("ingest", "ingest", ["ingest"], stop_timeout_s=frontend_server.MAX_STOP_S)
        self._spawn(
            "workers",
            f"worker pool ({self.workers})",
            ["worker", "--processes", str(self.workers)],
            stop_timeout_s=settings.worker_drain_timeout_s + 5.0,
        )
        self._spawn("api", "api", ["api"], stop_timeout_s=5.0)
        self._wait_ready()
        agent_ids = [self._spawn_agent(index) for index in range(1, self.agents + 1)]
        self._record.state = "up"
        self._record.database_url = settings.database_url
        self._record.redis_url = settings.redis_url
        datadir.write_record(data_dir, self._record)
        if banner:
            self._banner(agent_ids)

    def _listeners(self) -> list[datadir.Listener]:
        s = self.settings
        listeners = [
            datadir.Listener(s.grpc_host, s.grpc_port, "ingest gRPC", "--grpc-port"),
            datadir.Listener(s.api_host, s.api_port, "API", "--api-port"),
        ]
        if s.ingest_metrics_port:
            listeners.append(
                datadir.Listener(
                    s.grpc_host,
                    s.ingest_metrics_port,
                    "ingest metrics",
                    "FLEETPULSE_INGEST_METRICS_PORT (0 turns it off)",
                )
            )
        return listeners

    def _watch(self) -> int:
        while not self._stop.wait(0.2):
            if (failed := self.failed_child()) is not None:
                log.error("%s exited unexpectedly; stopping everything", failed)
                return 1
        return 0

    def failed_child(self) -> str | None:
        """The name and status of a child that exited on its own, if any."""
        for child in self._all_children():
            assert child.proc is not None
            code = child.proc.poll()
            if code is not None:
                return f"{child.name} (status {code})"
        return None

    def component_pids(self) -> dict[str, list[int]]:
        """Top-level pid(s) of each running component, for resource accounting."""
        pids = {
            group: [c.proc.pid for c in children if c.proc is not None]
            for group, children in self._children.items()
            if children
        }
        if self._redis is not None and self._redis.pid is not None:
            pids["redis"] = [self._redis.pid]
        if self._pg is not None and self._pg.pid is not None:
            pids["postgres"] = [self._pg.pid]
        return pids

    def shutdown(self) -> None:
        """Stop everything in the order that loses nothing; safe to call more than once."""
        if self._lock is None:
            return  # refused before it started anything (or stopped already)
        if threading.current_thread() is threading.main_thread():
            # a second Ctrl-C must not cut the drain short
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        started = time.monotonic()
        for group in ("agents", "ingest", "workers", "api"):
            _stop_all(self._children[group])
            self._children[group] = []
        if self._redis is not None:
            self._redis.stop()
            self._redis = None
        if self._pg is not None:
            self._pg.stop()
            self._pg = None
        # only now, with every server stopped, may another `up` take the data dir
        datadir.remove_record(self.settings.data_dir.expanduser().resolve())
        self._lock.release()
        self._lock = None
        log.info("stopped in %.1f s", time.monotonic() - started)

    # -- children ----------------------------------------------------------------------------
    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        for name, value in self.settings.model_dump().items():
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            env[f"FLEETPULSE_{name.upper()}"] = str(value)
        return env

    def _spawn(self, group: str, name: str, args: list[str], stop_timeout_s: float) -> Child:
        child = Child(
            name,
            [sys.executable, "-m", "fleetpulse", "--log-level", self.log_level, *args],
            stop_timeout_s,
        )
        child.proc = subprocess.Popen(
            child.argv,
            env=self._child_env(),
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=lifecycle.die_with_parent,
        )
        self._children[group].append(child)
        return child

    def _spawn_agent(self, index: int) -> str:
        agent_id = f"{socket.gethostname()}-local-{index}"
        state_dir = self.settings.data_dir / "agents" / agent_id
        state_dir.mkdir(parents=True, exist_ok=True)
        config_path = state_dir / "agent.yaml"
        config_path.write_text(
            yaml.safe_dump(
                {
                    "server": {
                        "address": f"{_connect_host(self.settings.grpc_host)}:{self.settings.grpc_port}",
                        "tls": False,
                    },
                    "agent": {
                        "id": agent_id,
                        "collect_interval": self.collect_interval_s,
                        "heartbeat_interval": self.settings.heartbeat_interval_s,
                        "state_dir": str(state_dir),
                    },
                },
                sort_keys=False,
            )
        )
        self._spawn(
            "agents",
            f"agent {agent_id}",
            ["agent", "--config", str(config_path)],
            stop_timeout_s=8.0,
        )
        return agent_id

    def _all_children(self) -> list[Child]:
        return [child for group in self._children.values() for child in group]

    def _wait_ready(self) -> None:
        settings = self.settings
        deadline = time.monotonic() + READY_TIMEOUT_S
        grpc_ready = api_ready = False
        while not (grpc_ready and api_ready):
            if self._stop.is_set():
                return
            for child in self._all_children():
                assert child.proc is not None
                if child.proc.poll() is not None:
                    raise ConfigError(
                        f"{child.name} exited at startup with status {child.proc.returncode}"
                    )
            if time.monotonic() > deadline:
                raise ConfigError(f"the platform did not become ready in {READY_TIMEOUT_S:.0f} s")
            grpc_ready = grpc_ready or _port_open(
                _connect_host(settings.grpc_host), settings.grpc_port
            )
            api_ready = api_ready or _http_ok(f"{self.api_url}/healthz")
            time.sleep(0.1)

    @property
    def api_url(self) -> str:
        return f"http://{_connect_host(self.settings.api_host)}:{self.settings.api_port}"

    @property
    def ingest_metrics_url(self) -> str | None:
        s = self.settings
        if not s.ingest_metrics_port:
            return None
        return f"http://{_connect_host(s.grpc_host)}:{s.ingest_metrics_port}/metrics"

    @property
    def worker_metrics_urls(self) -> str | None:
        s = self.settings
        if not s.worker_metrics_port:
            return None
        host = _connect_host(s.worker_metrics_host)
        ports = [s.worker_metrics_port + i for i in range(self.workers)]
        return f"http://{host}:{ports[0]}/metrics" + (f" to :{ports[-1]}" if len(ports) > 1 else "")

    def _banner(self, agent_ids: list[str]) -> None:
        s = self.settings
        token = s.enrollment_token.get_secret_value() if s.enrollment_token else ""
        keys = s.read_keys()
        lines = [
            "fleetpulse is up",
            f"  dashboard        {self.api_url}/  (log in with the API key below)",
            f"  API              {self.api_url}  (docs: {self.api_url}/docs)",
            f"  Prometheus API   {self.api_url}/api/v1  (Grafana, promtool: the API key as bearer token or basic-auth password)",
            f"  ingest (gRPC)    {s.grpc_host}:{s.grpc_port}",
            f"  ingest metrics   {self.ingest_metrics_url or 'off'}",
            f"  worker metrics   {self.worker_metrics_urls or 'off'}",
            f"  API metrics      {self.api_url}/metrics  (the API key)",
            f"  data dir         {s.data_dir}",
            f"  PostgreSQL       {'embedded' if self._pg else 'external'}  {_redact(s.database_url)}",
            f"  Redis            {'embedded' if self._redis else 'external'}  {_redact(s.redis_url)}",
            f"  workers          {self.workers}",
            f"  rule files       {s.rule_files}  (reload: kill -HUP the api, or POST /-/reload)",
            f"  Alertmanager     {s.alertmanager_urls or 'none (FLEETPULSE_ALERTMANAGER_URLS)'}",
            f"  enrollment token {token}  (in {s.data_dir / 'enrollment_token'})"
            if (s.data_dir / "enrollment_token").exists()
            else f"  enrollment token {token}",
            f"  API key          {', '.join(keys)}  (in {s.data_dir / 'api-key'})"
            if keys and (s.data_dir / "api-key").exists()
            else f"  API key          {', '.join(keys) or '(admin key only)'}",
            f"  local agents     {', '.join(agent_ids) if agent_ids else 'none'}",
            "Press Ctrl-C to stop.",
        ]
        self.out.write("\n".join(lines) + "\n")
        self.out.flush()


def _redact(url: str | None) -> str:
    """A URL for the banner: a password in it is replaced by ***."""
    if url is None:
        return ""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _stop_all(children: list[Child]) -> None:
    """SIGTERM every child of a group, then wait for all (SIGKILL after their timeout)."""
    for child in children:
        if child.proc is not None and child.proc.poll() is None:
            child.proc.send_signal(signal.SIGTERM)
    for child in children:
        if child.proc is None:
            continue
        try:
            child.proc.wait(child.stop_timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in %.0f s; killing it", child.name, child.stop_timeout_s)
            child.proc.kill()
            child.proc.wait()


def _rules_copy(data_dir: Path) -> str:
    """The rule files of `up`: data_dir/rules/*.yml, which starts as a copy of the built-in fleet
    rules (api/rules/fleet.yml), the user's to edit. A copy removed stays removed only if another
    .yml file is there."""
    from fleetpulse.api.rules.evaluator import BUILTIN_RULES

    rules = data_dir / "rules"
    rules.mkdir(exist_ok=True)
    if not any(rules.glob("*.yml")):
        shutil.copyfile(BUILTIN_RULES, rules / "fleet.yml")
    return str(rules / "*.yml")


def _stored_token(data_dir: Path, name: str) -> str:
    """A secret kept in the data dir (0600), created on first use: the enrollment token, the
    API's read key."""
    path = data_dir / name
    if path.exists():
        return path.read_text().strip()
    token = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    return token


def _connect_host(listen_host: str) -> str:
    return "127.0.0.1" if listen_host in ("0.0.0.0", "", "::") else listen_host  # noqa: S104


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:  # noqa: S310 - our own URL
            return bool(response.status == 200)
    except OSError:
        return False

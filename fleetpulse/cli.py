"""The ``fleetpulse`` command: one subcommand per role, plus ``up`` which runs them all.

Imports are lazy so that ``fleetpulse agent`` works on a host with only the ``agent`` extra.
Settings come from ``FLEETPULSE_*`` environment variables; flags override them. A command given
neither a database nor a Redis URL uses the platform that ``fleetpulse up`` runs in the data dir
(``platform.json``, fleetpulse/datadir.py), if one runs.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fleetpulse import __version__
from fleetpulse.agentcommands import UNSETTABLE
from fleetpulse.errors import ConfigError

log = logging.getLogger("fleetpulse")

DESCRIPTION = "Run agents on large server fleets and ingest their metrics."

_EXTRA_OF_MODULE = {
    "psycopg": "server",
    "psycopg_pool": "server",
    "redis": "server",
    "fastapi": "server",
    "uvicorn": "server",
    "uvloop": "server",
    "pydantic_settings": "server",
    "pydantic": "server",
    "numpy": "server",
    "orjson": "server",
    "polars": "server",
    "cryptography": "server",
    "matplotlib": "bench",
    "pcodec": "bench",
    "zstandard": "bench",
    "grpc": "agent",
    "psutil": "agent",
    "yaml": "agent",
}


# In a command a user types, a server error is a one-line message, not a traceback (a role that
# serves keeps its traceback: there it is a crash to debug).
_SERVER_OF_ERROR = {"psycopg": "PostgreSQL", "psycopg_pool": "PostgreSQL", "redis": "Redis"}
_MANAGEMENT_COMMANDS = frozenset({"agents", "status", "audit", "actions", "migrate", "rollout"})


def _configure_logging(level: str, role: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format=f"%(asctime)s %(levelname)s [{role}] %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM ends a command as Ctrl-C does: its ``finally`` blocks run, so that the embedded
    servers a benchmark started are stopped, not left running on their data dir."""
    raise SystemExit(128 + signum)


def _server_settings(args: argparse.Namespace) -> Any:
    from fleetpulse.settings import load_settings

    flags = {
        name: getattr(args, name, None)
        for name in (
            "database_url",
            "redis_url",
            "data_dir",
            "grpc_host",
            "grpc_port",
            "api_host",
            "api_port",
            "stream_shards",
            "heartbeat_interval_s",
        )
    }
    settings = load_settings(**flags)
    if args.command != "up" and settings.database_url is None and settings.redis_url is None:
        from fleetpulse.datadir import running_platform

        record = running_platform(settings.data_dir.expanduser())
        if record is not None and record.database_url:
            log.debug("using the platform fleetpulse up runs in %s", record.data_dir)
            settings = settings.model_copy(
                update={"database_url": record.database_url, "redis_url": record.redis_url}
            )
    return settings


def _cmd_migrate(args: argparse.Namespace) -> int:
    from fleetpulse.migrate import migrate

    settings = _server_settings(args)
    settings.require("database_url")
    applied = migrate(settings.database_url)
    log.info("schema up to date (%d migrations applied now)", len(applied))
    return 0


def _cmd_ingest(args: argparse.Namespace) -> int:
    if args.processes is not None:
        if args.processes < 1:
            raise ConfigError("--processes must be at least 1")
        from fleetpulse.datadir import Listener, check_ports_free
        from fleetpulse.ingest.worker import pool

        # fail fast, before forking; the port is shared among this pool's processes only
        settings = _server_settings(args)
        settings.require("database_url", "redis_url", "enrollment_token")
        if not settings.grpc_reuse_port:
            check_ports_free(
                [Listener(settings.grpc_host, settings.grpc_port, "ingest gRPC", "--grpc-port")]
            )
        return pool.main(args.processes, args.log_level, role="ingest")
    from fleetpulse.ingest.frontend import server
    from fleetpulse.lifecycle import set_process_title

    title = "fleetpulse ingest" if args.of == 1 else f"fleetpulse ingest {args.index}/{args.of}"
    set_process_title(title)
    server.main(_server_settings(args), index=args.index)
    return 0


def _cmd_agents_revoke(args: argparse.Namespace) -> int:
    from fleetpulse import agentcommands

    return agentcommands.revoke(_server_settings(args), args.agent_id)


def _cmd_agents_config(args: argparse.Namespace) -> int:
    from fleetpulse import agentcommands

    changes = agentcommands.changes_of(
        args.unset, args.reset, args.collect_interval, args.heartbeat_interval, args.collectors
    )
    return agentcommands.configure(_server_settings(args), args.agent_id, changes)


def _cmd_rollout(args: argparse.Namespace) -> int:
    from fleetpulse import agentcommands, rolloutcommands

    settings = _server_settings(args)
    action = args.rollout_command
    if action == "start":
        changes = agentcommands.changes_of(
            args.unset, False, args.collect_interval, args.heartbeat_interval, args.collectors
        )
        return rolloutcommands.start(
            settings,
            args.tag,
            args.agent,
            args.all,
            changes,
            args.waves,
            args.soak,
            args.dry_run,
        )
    if action == "list":
        return rolloutcommands.listing(settings, args.state, args.limit)
    if action == "show":
        return rolloutcommands.show(settings, args.rollout_id, args.agents)
    return rolloutcommands.control(settings, action, args.rollout_id)


def _cmd_agents_tag(args: argparse.Namespace) -> int:
    from fleetpulse import agentcommands

    return agentcommands.tag(_server_settings(args), args.agent_id, args.changes)


def _cmd_agents_budget(args: argparse.Namespace) -> int:
    from fleetpulse import agentcommands

    return agentcommands.budget(_server_settings(args), args.args, args.tag)


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def _cmd_agents_list(args: argparse.Namespace) -> int:
    from fleetpulse import overview

    settings = _server_settings(args)
    settings.require("database_url")
    agents, total = overview.list_agents(
        settings, args.status, args.q, args.sort, args.limit, args.tag
    )
    print(overview.render_agents(agents, total))
    return 0


def _cmd_agents_history(args: argparse.Namespace) -> int:
    from fleetpulse import overview

    settings = _server_settings(args)
    settings.require("database_url")
    changes = overview.liveness_history(settings, args.agent_id, args.limit)
    print(overview.render_history(changes) or "no change of state recorded")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from fleetpulse import overview
    from fleetpulse.datadir import running_platform

    settings = _server_settings(args)
    record = running_platform(settings.data_dir.expanduser())
    if settings.database_url is None:
        print(
            f"no fleetpulse up runs in {settings.data_dir}, and FLEETPULSE_DATABASE_URL is not set",
            file=sys.stderr,
        )
        return 1
    print(overview.render_status(record, overview.platform_health(settings)))
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    if args.processes is not None and args.processes < 1:
        raise ConfigError("--processes must be at least 1")
    if args.engine == "ray":
        from fleetpulse.ingest.worker import rayengine  # ConfigError without the 'ray' extra

        settings = _server_settings(args)
        settings.require("database_url", "redis_url")  # fail fast, before starting Ray
        actors = 1 if args.processes is None else args.processes
        return rayengine.main(settings, actors, args.ray_address, args.log_level)
    if args.processes is not None:
        from fleetpulse.ingest.worker import pool

        _server_settings(args).require("database_url", "redis_url")  # fail fast, before forking
        return pool.main(args.processes, args.log_level)
    from fleetpulse.ingest.worker import consumer

    consumer.main(_server_settings(args), index=args.index, count=args.of)
    return 0


def _cmd_api(args: argparse.Namespace) -> int:
    from fleetpulse.api.app import serve
    from fleetpulse.lifecycle import set_process_title

    settings = _server_settings(args)
    settings.require("database_url")
    set_process_title("fleetpulse api")
    serve(settings)
    return 0


def _cmd_agent(args: argparse.Namespace) -> int:
    from fleetpulse.agent import daemon
    from fleetpulse.agent.config import load_config

    if args.once:
        from fleetpulse.agent.collectors.scheduler import Scheduler
        from fleetpulse.agent.collectors.table import format_table

        enabled = load_config(args.config).collectors if args.config else None
        scheduler = Scheduler()
        every_time: dict[str, float] = {}  # --once shows every collector, slow ones included
        scheduler.collect(enabled, every_time)  # rates (CPU percent) are measured between two calls
        time.sleep(0.5)
        samples, errors = scheduler.collect(enabled, every_time)
        status = 1 if errors else 0
        try:
            print(format_table(samples, errors), flush=True)
        except BrokenPipeError:
            # The reader stopped early (`| head`): not a failure of ours. Python would report the
            # pipe again when it flushes stdout at exit, so that flush goes to /dev/null instead.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return status
    if args.config is None:
        raise ConfigError("--config is required (only --once runs without one)")
    refusal = daemon.main(load_config(args.config))
    # The first enrollment refused (wrong token, taken id): a configuration error, status 2 as
    # for a bad config file; the daemon logged what to do, and kept its spool.
    return ConfigError.exit_status if refusal is not None else 0


def _cmd_up(args: argparse.Namespace) -> int:
    from fleetpulse.lifecycle import set_process_title
    from fleetpulse.supervisor import Supervisor

    settings = _server_settings(args)
    set_process_title("fleetpulse up")
    supervisor = Supervisor(
        settings,
        agents=args.agents,
        workers=args.workers,
        collect_interval_s=args.collect_interval,
        log_level=args.log_level,
        out=sys.stdout,
    )
    return supervisor.run()


def _add_server_flags(
    parser: argparse.ArgumentParser,
    *,
    grpc: bool = False,
    api: bool = False,
    queue: bool = True,
    redis: bool = True,
) -> None:
    parser.add_argument(
        "--database-url",
        help="PostgreSQL URL (env FLEETPULSE_DATABASE_URL; default: the platform up runs "
        "in the data dir)"
        if not grpc or not api
        else "PostgreSQL URL (env FLEETPULSE_DATABASE_URL; default: embedded)",
    )
    if redis:
        parser.add_argument("--redis-url", help="Redis URL (env FLEETPULSE_REDIS_URL)")
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="data dir of fleetpulse up (env FLEETPULSE_DATA_DIR; default "
        "~/.local/share/fleetpulse)",
    )
    if not queue:  # a management command: no ingest tuning
        return
    parser.add_argument("--stream-shards", type=int, help="Redis Streams to shard batches over")
    parser.add_argument(
        "--heartbeat-interval",
        dest="heartbeat_interval_s",
        type=float,
        help="expected agent heartbeat interval in seconds (env FLEETPULSE_HEARTBEAT_INTERVAL_S)",
    )
    if grpc:
        parser.add_argument("--grpc-host", help="gRPC listen address (default 127.0.0.1)")
        parser.add_argument("--grpc-port", type=int, help="gRPC port (default 9090)")
    if api:
        parser.add_argument("--api-host", help="API listen address (default 127.0.0.1)")
        parser.add_argument("--api-port", type=int, help="API port (default 8000)")


class _LazyParser(argparse.ArgumentParser):
    """A subcommand parser whose arguments are added only when that subcommand is parsed (or its
    help shown): the bench modules that define them import the server and bench libraries
    (polars, numpy, psycopg, redis, pydantic), which no other command, least of all
    ``fleetpulse agent``, should load."""

    def __init__(
        self,
        *args: Any,
        populate: Callable[[argparse.ArgumentParser], None] | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(*args, **kw)
        self._populate = populate

    def _ensure_populated(self) -> None:
        populate, self._populate = self._populate, None
        if populate is not None:
            populate(self)

    def parse_known_args(  # type: ignore[override]
        self, args: Any = None, namespace: Any = None
    ) -> tuple[argparse.Namespace, list[str]]:
        self._ensure_populated()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._ensure_populated()
        return super().format_help()


# The benchmarks: subcommand, module of fleetpulse.bench (its ``add_arguments(parser)`` and
# ``run(args)``), help. A module is imported only when its subcommand is parsed, run or shown
# (_LazyParser), never by another command.
_BENCHMARKS = (
    ("fleet", "fleet", "simulate a fleet end to end and verify every batch"),
    (
        "targets",
        "targets",
        "the two target runs (saturate, realistic 10k agents) and the README table",
    ),
    (
        "workers",
        "workers",
        "the worker pool alone: pre-loaded queue into PostgreSQL, vs the COPY ceiling",
    ),
    (
        "connections",
        "connections",
        "the front-end alone: idle heartbeating agents, each on its own connection",
    ),
    (
        "ingest",
        "ingestload",
        "the front-end alone: batches into Redis as fast as it acks, no workers",
    ),
    (
        "remote-write",
        "remotewriteload",
        "Prometheus remote write: samples/s accepted and committed, CPU per sample per part",
    ),
    (
        "liveness",
        "liveness",
        "the liveness sweep, agent pages and the agents' own PromQL series at 50,000 agents",
    ),
    (
        "rules",
        "rules",
        "the built-in rules at 10,000 agents: each group's round time against its interval",
    ),
    (
        "agent",
        "agentfoot",
        "the agent's footprint: CPU per collection, series, RSS (vs node_exporter)",
    ),
    (
        "queries",
        "queries",
        "read latency at 100M points: fleet summary, agents page, host charts, top-N",
    ),
    (
        "layouts",
        "layouts",
        "storage layouts for points on this host's real agent data: disk per point, COPY rate, "
        "codecs",
    ),
)


def _bench_arguments(module: str) -> Callable[[argparse.ArgumentParser], None]:
    def populate(parser: argparse.ArgumentParser) -> None:
        try:
            bench = importlib.import_module(f"fleetpulse.bench.{module}")
        except ModuleNotFoundError:  # without the bench dependencies: explained at run time
            return
        bench.add_arguments(parser)

    return populate


def _cmd_bench(module: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        bench = importlib.import_module(f"fleetpulse.bench.{module}")
        status: int = bench.run(args)
        return status

    return run


def _cmd_certs_init(args: argparse.Namespace) -> int:
    from fleetpulse import certs

    written = certs.init(args.dir, args.name, force=args.force, if_absent=args.if_absent)
    print(f"wrote {written.ca}, {written.ca_key}, {written.server}, {written.server_key}")
    print(
        f"front-end: FLEETPULSE_GRPC_TLS_CERT_FILE={written.server} "
        f"FLEETPULSE_GRPC_TLS_KEY_FILE={written.server_key}"
    )
    print(f"agents:    server: {{tls: true, tls_ca_file: {written.ca}}}")
    print(f"keep {written.ca_key} offline: it signs the next server certificate")
    return 0


def _cmd_actions(args: argparse.Namespace) -> int:
    from fleetpulse import agentcommands

    return agentcommands.actions(_server_settings(args), args.target, args.action, args.limit)


def _cmd_audit(args: argparse.Namespace) -> int:
    from fleetpulse import audit

    settings = _server_settings(args)
    settings.require("database_url")
    try:
        results = audit.audit(settings.database_url, args.reports)
    except FileNotFoundError as exc:
        raise ConfigError(str(exc)) from None
    print(audit.to_json(results) if args.json else audit.render(results))
    return 0 if all(r.ok for r in results) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleetpulse", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"fleetpulse {__version__}")
    parser.add_argument(
        "--log-level",
        default=os.environ.get("FLEETPULSE_LOG_LEVEL", "info"),
        choices=["debug", "info", "warning", "error"],
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser(
        "up", help="run everything on this machine (embedded PostgreSQL and Redis by default)"
    )
    _add_server_flags(up, grpc=True, api=True)
    up.add_argument("--agents", type=int, default=0, help="local agents to start (default 0)")
    up.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    up.add_argument(
        "--collect-interval",
        type=float,
        default=10.0,
        help="collect interval of the local agents, seconds (default 10)",
    )
    up.set_defaults(handler=_cmd_up)

    ingest = sub.add_parser(
        "ingest",
        help="run the gRPC ingest front-end",
        description="The gRPC front-end agents connect to. Needs the database, Redis and the "
        "fleet's enrollment token (FLEETPULSE_ENROLLMENT_TOKEN), which agents present to enroll.",
    )
    _add_server_flags(ingest, grpc=True)
    ingest.add_argument(
        "--processes",
        type=int,
        help="run N supervised front-end processes sharing the gRPC port (SO_REUSEPORT)",
    )
    ingest.add_argument("--index", type=int, default=1, help=argparse.SUPPRESS)
    ingest.add_argument("--of", type=int, default=1, help=argparse.SUPPRESS)
    ingest.set_defaults(handler=_cmd_ingest)

    agents = sub.add_parser("agents", help="list and manage agents (credentials, settings)")
    agents_sub = agents.add_subparsers(dest="agents_command", required=True, metavar="ACTION")
    listing = agents_sub.add_parser(
        "list", help="every agent: status, last seen, CPU and memory now (the dashboard's table)"
    )
    _add_server_flags(listing, queue=False, redis=False)
    listing.add_argument("--status", choices=["online", "stale", "data_stale", "offline"])
    listing.add_argument("-q", dest="q", metavar="TEXT", help="agent id or hostname contains")
    listing.add_argument("--sort", default="agent_id", help="as GET /agents (default agent_id)")
    listing.add_argument("--limit", type=int, default=1000, help="at most (default 1000)")
    listing.add_argument(
        "--tag", action="append", metavar="KEY=VALUE", help="carrying this tag (repeatable: all)"
    )
    listing.set_defaults(handler=_cmd_agents_list)
    history = agents_sub.add_parser(
        "history", help="an agent's liveness transitions and their causes, newest first"
    )
    _add_server_flags(history, queue=False, redis=False)
    history.add_argument("agent_id")
    history.add_argument("--limit", type=int, default=50, help="at most (default 50)")
    history.set_defaults(handler=_cmd_agents_history)
    tag = agents_sub.add_parser(
        "tag",
        help="set or remove an operator's tags of an agent",
        description="KEY=VALUE sets a tag, KEY- removes the operator's tag (the agent's own tag "
        "from its config file, if any, shows again). Without changes: show the agent's tags.",
    )
    _add_server_flags(tag, queue=False, redis=False)
    tag.add_argument("agent_id")
    tag.add_argument("changes", nargs="*", metavar="KEY=VALUE|KEY-")
    tag.set_defaults(handler=_cmd_agents_tag)
    budget = agents_sub.add_parser(
        "budget",
        help="series budgets: set (N) or remove (-) an agent's or a tag's, or show them",
        description="ID N sets the agent's series budget, ID - removes it, ID shows its use; "
        "--tag K=V N sets the budget of every agent carrying the tag; nothing lists them.",
    )
    _add_server_flags(budget, queue=False, redis=False)
    budget.add_argument("--tag", metavar="KEY=VALUE")
    budget.add_argument("args", nargs="*", metavar="ID|N|-")
    budget.set_defaults(handler=_cmd_agents_budget)
    revoke = agents_sub.add_parser(
        "revoke", help="revoke an agent's credential and close its streams"
    )
    _add_server_flags(revoke)
    revoke.add_argument("agent_id")
    revoke.set_defaults(handler=_cmd_agents_revoke)
    config = agents_sub.add_parser(
        "config",
        help="show or change an agent's settings (pushed to it live)",
        description="Without options: show the agent's platform-side settings and what it "
        "reported in effect. Options change only what they name; the agent applies the change "
        "without a restart.",
    )
    _add_server_flags(config, queue=False)
    config.add_argument("agent_id")
    config.add_argument("--collect-interval", type=float, metavar="SECONDS")
    config.add_argument("--heartbeat-interval", type=float, metavar="SECONDS")
    config.add_argument("--collectors", metavar="NAME,NAME", help="collectors to run")
    config.add_argument(
        "--unset",
        action="append",
        choices=sorted(UNSETTABLE),
        help="hand a setting back to the agent's own config file (repeatable)",
    )
    config.add_argument("--reset", action="store_true", help="unset everything")
    config.set_defaults(handler=_cmd_agents_config)

    _add_rollout_parser(sub)

    worker = sub.add_parser("worker", help="run workers (Redis Streams -> PostgreSQL)")
    _add_server_flags(worker)
    worker.add_argument(
        "--processes",
        type=int,
        help="run a supervised pool of N worker processes (restarted if they die); "
        "with --engine ray, N actors (default 1)",
    )
    worker.add_argument(
        "--engine",
        choices=["process", "ray"],
        default="process",
        help="process: child processes of this one (default); ray: Ray actors, on a local Ray "
        "or the cluster at --ray-address (needs the 'ray' extra)",
    )
    worker.add_argument(
        "--ray-address",
        default=os.environ.get("RAY_ADDRESS"),
        help="Ray cluster to run the actors on (env RAY_ADDRESS; default: start a local Ray)",
    )
    worker.add_argument(
        "--index", type=int, default=1, help="this worker's number, for its consumer name"
    )
    worker.add_argument("--of", type=int, default=1, help="how many workers run on this host")
    worker.set_defaults(handler=_cmd_worker)

    status = sub.add_parser(
        "status", help="what runs where, the agents and the pipeline's queue and lag"
    )
    _add_server_flags(status, queue=False)
    status.set_defaults(handler=_cmd_status)

    api = sub.add_parser(
        "api",
        help="run the HTTP API",
        description="The HTTP API, the Prometheus-compatible API and the dashboard. Needs the "
        "database and at least one read key (FLEETPULSE_API_KEYS, comma-separated), or "
        "FLEETPULSE_API_OPEN=true to let anyone read.",
    )
    _add_server_flags(api, api=True)
    api.set_defaults(handler=_cmd_api)

    migrate = sub.add_parser("migrate", help="create or upgrade the PostgreSQL schema")
    _add_server_flags(migrate, queue=False, redis=False)
    migrate.set_defaults(handler=_cmd_migrate)

    bench = sub.add_parser("bench", help="benchmarks (results in bench/results/<timestamp>/)")
    bench_sub = bench.add_subparsers(
        dest="bench_command", required=True, metavar="BENCHMARK", parser_class=_LazyParser
    )
    for name, module, help_text in _BENCHMARKS:
        benchmark = bench_sub.add_parser(name, help=help_text, populate=_bench_arguments(module))
        benchmark.set_defaults(handler=_cmd_bench(module))

    certs = sub.add_parser("certs", help="TLS for the gRPC port: a private CA and certificates")
    certs_sub = certs.add_subparsers(dest="certs_command", required=True, metavar="ACTION")
    certs_init = certs_sub.add_parser(
        "init",
        help="create a private CA and the front-end's certificate",
        description="Writes ca.pem, ca-key.pem, server.pem and server-key.pem (keys 0600) into "
        "--dir. The front-end serves TLS with FLEETPULSE_GRPC_TLS_CERT_FILE=server.pem and "
        "FLEETPULSE_GRPC_TLS_KEY_FILE=server-key.pem; every agent trusts ca.pem "
        "(server.tls: true, server.tls_ca_file).",
    )
    certs_init.add_argument("--dir", type=Path, required=True, help="where to write the files")
    certs_init.add_argument(
        "--name",
        action="append",
        required=True,
        help="a host name or IP address agents connect to (repeatable)",
    )
    certs_init.add_argument("--force", action="store_true", help="replace existing files")
    certs_init.add_argument(
        "--if-absent", action="store_true", help="keep a complete set already there (exit 0)"
    )
    certs_init.set_defaults(handler=_cmd_certs_init)

    actions = sub.add_parser(
        "actions",
        help="the audit log: operator actions (settings, tags, revocations, enrollments)",
        description="Newest first. Each line: when, who (key:<name>, cli:<user>, "
        "enrollment-token), what, on which agent, and the details.",
    )
    _add_server_flags(actions, queue=False, redis=False)
    actions.add_argument("--target", metavar="AGENT_ID", help="actions on this agent")
    actions.add_argument("--action", help="settings.change, tags.change, ...")
    actions.add_argument("--limit", type=int, default=50, help="at most (default 50)")
    actions.set_defaults(handler=_cmd_actions)

    audit = sub.add_parser(
        "audit",
        help="compare what agents say they sent with what is stored and rejected",
        description="Reads agents' accounts (sent.json, found under the given directories) and "
        "the platform's ledger; prints missing, duplicated, rejected and unexpected batches. "
        "Exit status 1 when anything is missing or duplicated.",
    )
    _add_server_flags(audit, queue=False, redis=False)
    audit.add_argument(
        "reports", nargs="+", type=Path, metavar="PATH", help="sent.json or a directory"
    )
    audit.add_argument("--json", action="store_true", help="one JSON object instead of text")
    audit.set_defaults(handler=_cmd_audit)

    agent = sub.add_parser("agent", help="run the host agent")
    agent.add_argument("--config", type=Path, help="agent YAML config file")
    agent.add_argument(
        "--once",
        action="store_true",
        help="collect once, print the samples as a table and exit (check a host by hand)",
    )
    agent.set_defaults(handler=_cmd_agent)
    return parser


def _add_rollout_parser(sub: Any) -> None:
    rollout = sub.add_parser(
        "rollout",
        help="staged rollouts of settings, wave by wave, behind a health gate",
        description="A settings change for the agents a selector chooses, in cumulative waves "
        "(1%,5%,25%,100% by default); a wave passes when its agents applied it and stayed "
        "healthy for the soak time; a failing wave stops the rollout and is reverted.",
    )
    rollout_sub = rollout.add_subparsers(dest="rollout_command", required=True, metavar="ACTION")
    start = rollout_sub.add_parser("start", help="start a rollout (or plan it: --dry-run)")
    _add_server_flags(start, queue=False)
    start.add_argument("--tag", action="append", metavar="KEY=VALUE", help="agents carrying it")
    start.add_argument("--agent", action="append", metavar="AGENT_ID", help="this agent")
    start.add_argument("--all", action="store_true", help="every agent")
    start.add_argument("--collect-interval", type=float, metavar="SECONDS")
    start.add_argument("--heartbeat-interval", type=float, metavar="SECONDS")
    start.add_argument("--collectors", metavar="NAME,NAME", help="collectors to run")
    start.add_argument(
        "--unset",
        action="append",
        choices=sorted(UNSETTABLE),
        help="hand a setting back to the agents' own config files (repeatable)",
    )
    start.add_argument(
        "--waves", default="1%,5%,25%,100%", help="cumulative steps: percentages or counts"
    )
    start.add_argument(
        "--soak", type=float, metavar="SECONDS", help="per wave (default rollout_soak_s, 300)"
    )
    start.add_argument("--dry-run", action="store_true", help="show the waves; start nothing")
    listing = rollout_sub.add_parser("list", help="rollouts, newest first")
    _add_server_flags(listing, queue=False, redis=False)
    listing.add_argument("--state", choices=("running", "paused", "completed", "failed", "aborted"))
    listing.add_argument("--limit", type=int, default=20)
    show = rollout_sub.add_parser("show", help="a rollout's waves (and agents: --agents)")
    _add_server_flags(show, queue=False, redis=False)
    show.add_argument("rollout_id", type=int)
    show.add_argument("--agents", action="store_true", help="each agent's state and reason")
    for action, text in (
        ("pause", "start no further wave"),
        ("resume", "go on"),
        ("abort", "stop, and give every agent it changed its previous settings back"),
    ):
        control = rollout_sub.add_parser(action, help=text)
        _add_server_flags(control, queue=False)
        control.add_argument("rollout_id", type=int)
    rollout.set_defaults(handler=_cmd_rollout)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args.log_level, args.command)
    from fleetpulse.lifecycle import dump_stacks_on_sigusr1

    dump_stacks_on_sigusr1()
    signal.signal(signal.SIGTERM, _terminate)  # roles that serve set their own handlers
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except ConfigError as exc:
        print(f"fleetpulse {args.command}: {exc}", file=sys.stderr)
        return exc.exit_status
    except ModuleNotFoundError as exc:
        extra = _EXTRA_OF_MODULE.get((exc.name or "").split(".")[0])
        if extra is None:
            raise
        print(
            f"fleetpulse {args.command}: missing dependency {exc.name!r}; "
            f"install it with: pip install 'fleetpulse[{extra}]'",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        server = _SERVER_OF_ERROR.get(type(exc).__module__.split(".")[0])
        if server is None or args.command not in _MANAGEMENT_COMMANDS:
            raise
        print(f"fleetpulse {args.command}: {server}: {_one_line(exc)}", file=sys.stderr)
        return 1

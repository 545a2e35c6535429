"""Server-side settings: one typed object, built once in main() and passed down.

Every field reads ``FLEETPULSE_<NAME>`` from the environment; command-line flags override it.
Without ``database_url`` / ``redis_url``, ``fleetpulse up`` starts embedded servers under
``data_dir``; the standalone roles need the URLs.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from fleetpulse.errors import ConfigError


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "fleetpulse"


class Settings(BaseSettings):
    """Settings shared by the server roles (ingest, worker, api, migrate, up)."""

    model_config = SettingsConfigDict(env_prefix="FLEETPULSE_", extra="forbid")

    database_url: str | None = None
    redis_url: str | None = None
    data_dir: Path = Field(default_factory=_default_data_dir)
    # Agents present it as `authorization: Bearer <token>` at register. Required by `ingest`;
    # `up` generates one (kept in data_dir) when it is not set.
    enrollment_token: SecretStr | None = None

    grpc_host: str = "127.0.0.1"
    grpc_port: int = Field(default=9090, ge=0, le=65535)
    # TLS on the gRPC port: a certificate chain and its key (PEM). With a client CA as well, every
    # agent must present a certificate signed by it (mutual TLS) on top of its bearer credential.
    grpc_tls_cert_file: Path | None = None
    grpc_tls_key_file: Path | None = None
    grpc_tls_client_ca_file: Path | None = None
    # SO_REUSEPORT on the gRPC port, so that several front-ends share it (the kernel spreads the
    # connections). `fleetpulse ingest --processes N` sets it for its own processes after checking
    # that the port is free; set it by hand only for front-ends run side by side on purpose. Off,
    # a front-end on a port in use fails to start instead of sharing a stranger's port.
    grpc_reuse_port: bool = False
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=0, le=65535)

    # Redis Streams the batches are sharded over (by agent, so that one agent's batches keep their
    # order). Fixed per Redis database at first use; see ingest/queue.py.
    stream_shards: int = Field(default=4, ge=1, le=1024)
    max_message_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)

    # Backpressure: metric batches are refused (retry after ingest_retry_after_ms) while this many
    # batches are queued and not yet committed; accepted again below 80 % of it.
    ingest_max_queued_entries: int = Field(default=50_000, ge=1)
    ingest_retry_after_ms: int = Field(default=2_000, ge=1)
    # Fairness: each agent's batch bytes per second, with a burst (a token bucket per stream).
    ingest_agent_bytes_per_s: float = Field(default=1_048_576.0, gt=0)
    ingest_agent_burst_bytes: float = Field(default=8_388_608.0, gt=0)
    # The front-end's Prometheus /metrics (0: off); process i of --processes N uses port + i - 1.
    ingest_metrics_port: int = Field(default=9464, ge=0, le=65535)

    # A stopping front-end asks its agents to come back spread over (its agents / this) seconds:
    # about what one process registers per second on 2 cores with its share of a reconnecting
    # fleet (docs/performance.md, "50,000 agents").
    ingest_reconnect_rate: float = Field(default=100.0, gt=0)

    heartbeat_interval_s: float = Field(default=10.0, gt=0)
    # Liveness (fleetpulse/liveness.py): an agent is stale after this many heartbeat intervals
    # without one (one missed), offline after offline_after_heartbeats, and data_stale when no
    # batch was accepted from it for data_stale_after_s (at least 3 of its collection intervals).
    stale_after_heartbeats: float = Field(default=2.0, gt=0)
    offline_after_heartbeats: int = Field(default=3, ge=1)
    data_stale_after_s: float = Field(default=120.0, gt=0)
    heartbeat_flush_interval_s: float = Field(default=2.0, gt=0)
    # How often a front-end records the transitions the clock causes (late, timed out, resumed),
    # and for how many days an agent's liveness history is kept.
    liveness_check_interval_s: float = Field(default=5.0, gt=0)
    liveness_history_days: int = Field(default=30, ge=1)

    # Distinct series an agent may own unless an operator set its budget or a tag's
    # (ingest/seriesbudgets.py); new series past it are rejected (series_budget).
    series_budget: int = Field(default=10_000, ge=0)

    # Rollouts (ingest/rollouts.py): how often the job moves them, the soak time a rollout gets
    # unless it names one, and how long an agent may take to report new settings applied.
    rollout_check_interval_s: float = Field(default=5.0, gt=0)
    rollout_soak_s: float = Field(default=300.0, ge=0)
    rollout_apply_timeout_s: float = Field(default=120.0, gt=0)

    worker_read_count: int = Field(default=200, ge=1)
    worker_block_ms: int = Field(default=1000, ge=1)
    worker_drain_timeout_s: float = Field(default=5.0, ge=0)
    # Entries another consumer read but did not acknowledge for this long are taken over.
    worker_reclaim_idle_ms: int = Field(default=30_000, ge=1)
    worker_reclaim_interval_s: float = Field(default=10.0, gt=0)
    # An entry that failed this many times goes to the dead-letter stream.
    worker_max_deliveries: int = Field(default=5, ge=1)
    retention_days: int = Field(default=7, ge=1)
    # Rollup tiers (ingest/worker/rollups.py): how often closed buckets are recomputed, and how long each
    # tier is kept. Turning rollups off is for measuring their cost: the tiers stop updating.
    rollups: bool = True
    rollup_interval_s: float = Field(default=2.0, gt=0)
    rollup_settle_s: float = Field(default=2.0, ge=0)
    rollup_max_delay_s: float = Field(default=10.0, ge=0)
    rollup_1m_retention_days: int = Field(default=35, ge=1)
    rollup_1h_retention_days: int = Field(default=400, ge=1)
    # Compression of closed hours (ingest/worker/compress.py): an hour's samples rows become one
    # compressed chunk per series set once the hour has been closed this long and its rollups are
    # current; a round looks for such hours every `compress_interval_s`. At least 5 minutes: the
    # fleet list reads its CPU and memory columns from the last 5 minutes, hot rows only
    # (api/agents.py).
    compress: bool = True
    compress_after_s: float = Field(default=600.0, ge=300)
    compress_interval_s: float = Field(default=30.0, gt=0)
    max_future_s: float = Field(default=3600.0, ge=0)
    # Test-only (ingest/worker/failpoints.py): "after-commit:<marker file>" makes a worker SIGKILL itself
    # once, between a chunk's COMMIT and its XACK; "mid-rollup:<marker file>" makes the process
    # running the rollup job SIGKILL itself once, in a minute's recompute transaction after the
    # COPY of its rows and before COMMIT; "mid-compress:<marker file>" makes the process
    # compressing an hour SIGKILL itself once, after writing a batch of chunks and before COMMIT.
    # Unset in production.
    failpoint: str | None = Field(
        default=None, pattern=r"^(after-commit|mid-rollup|mid-compress):.+$"
    )

    api_max_points: int = Field(default=200_000, ge=1)
    # Writes through the API (PUT /agents/{id}/config) need `authorization: Bearer <this key>`;
    # unset, the API refuses every write (403) and the CLI remains the way to change settings.
    # `name:key` names it in the audit log (fleetpulse/auditlog.py); unnamed, it is "admin".
    api_admin_key: SecretStr | None = None
    # Read keys (comma-separated): every path but /healthz and /login needs one (or the admin key).
    # With no key at all the API refuses to start unless api_open says anyone may read. Each may
    # be `name:key` (grafana:...,ops:...); unnamed ones are read-1, read-2... in order.
    api_keys: SecretStr | None = None
    api_open: bool = False
    # Write keys (comma-separated, named like the read keys; unnamed ones are write-1, write-2...):
    # what Prometheus' remote_write presents to POST /api/v1/write (api/remotewrite.py). The admin
    # key also writes; a read key does not. None set (and no admin key): remote write is refused.
    api_write_keys: SecretStr | None = None
    # Remote write (ingest/remotewrite.py): the label whose value names a series' agent, and
    # whether a trailing ":port" is cut from it (an agent is a host, node_exporter's instance is
    # "host:9100"; the label itself is stored as sent). The most a request may hold, decompressed.
    remote_write_agent_label: str = Field(default="instance", pattern=r"^[a-zA-Z_][a-zA-Z0-9_]*$")
    remote_write_strip_port: bool = True
    remote_write_max_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    # Origins a browser may call the API from (comma-separated; "*" for any). Default: none.
    api_cors_origins: str = ""

    # Each worker process serves /metrics on worker_metrics_port + index - 1 (0: off). A port in
    # use is logged and the worker goes on without it: a worker's job is committing data.
    worker_metrics_host: str = "127.0.0.1"
    worker_metrics_port: int = Field(default=9465, ge=0, le=65535)
    # Every process stores its own metrics as series this often (fleetpulse/selfmetrics.py); 0: not.
    self_metrics_interval_s: float = Field(default=15.0, ge=0)

    # Rules and alerts (api/rules/). Rule files in Prometheus' format, comma-separated paths or
    # globs; empty: the built-in fleet rules (api/rules/fleet.yml). `fleetpulse up` copies those
    # into data_dir/rules/ on first start and points here, so that a new user edits a copy.
    rule_files: str = ""
    # A group without its own `interval:` evaluates this often (Prometheus' evaluation_interval).
    rule_evaluation_interval_s: float = Field(default=60.0, gt=0)
    # Whether this API process competes to be the platform's one rule evaluator (the holder of
    # an advisory lock evaluates; the others stand by and answer /api/v1/rules from the database).
    rules_evaluate: bool = True
    # Alertmanagers (comma-separated base URLs, e.g. http://127.0.0.1:9093): firing and resolved
    # alerts are POSTed to each one's /api/v2/alerts. Empty: alerts are evaluated and listed,
    # and sent nowhere.
    alertmanager_urls: str = ""
    alert_resend_delay_s: float = Field(default=60.0, gt=0)
    notification_queue_capacity: int = Field(default=10_000, ge=1)
    # Where people reach this API (links in alerts); default http://<api_host>:<api_port>.
    external_url: str | None = None

    @field_validator("api_keys", "api_write_keys", "api_admin_key")
    @classmethod
    def _blank_is_unset(cls, value: SecretStr | None) -> SecretStr | None:
        """A key setting set to nothing is no key (docker-compose.yml passes an unset variable as
        ""): an empty admin key would otherwise match an empty bearer token."""
        if value is not None and not value.get_secret_value().strip():
            return None
        return value

    def retentions(self) -> dict[str, int]:
        """Days kept per partitioned table (fleetpulse/partitions.py)."""
        return {
            "samples": self.retention_days,
            "sample_chunks": self.retention_days,
            "rollup_1m": self.rollup_1m_retention_days,
            "rollup_1h": self.rollup_1h_retention_days,
            "set_rollup_1m": self.rollup_1m_retention_days,
            "minute_chunks": self.rollup_1m_retention_days,
            "set_rollup_1h": self.rollup_1h_retention_days,
        }

    def rule_paths(self) -> list[str]:
        return [p.strip() for p in self.rule_files.split(",") if p.strip()]

    def alertmanagers(self) -> list[str]:
        return [u.strip() for u in self.alertmanager_urls.split(",") if u.strip()]

    def public_url(self) -> str:
        return self.external_url or f"http://{self.api_host}:{self.api_port}"

    def read_keys(self) -> list[str]:
        return [key for _, key in self.named_read_keys()]

    def named_read_keys(self) -> list[tuple[str, str]]:
        """(name, key) of each read key: ``name:key`` entries, else read-1, read-2..."""
        return _named_keys(self.api_keys, "read")

    def named_write_keys(self) -> list[tuple[str, str]]:
        """(name, key) of each write key: ``name:key`` entries, else write-1, write-2..."""
        return _named_keys(self.api_write_keys, "write")

    def named_admin_key(self) -> tuple[str, str] | None:
        """(name, key) of the admin key (``name:key``, else "admin"), or None."""
        if self.api_admin_key is None:
            return None
        return _named(self.api_admin_key.get_secret_value().strip(), "admin")

    @property
    def offline_after_s(self) -> float:
        return self.heartbeat_interval_s * self.offline_after_heartbeats

    def require(self, *names: str) -> None:
        """Fail fast with a one-line ConfigError when a needed setting is missing."""
        for name in names:
            if getattr(self, name) is None:
                raise ConfigError(
                    f"FLEETPULSE_{name.upper()} is not set (or pass --{name.replace('_', '-')})"
                )


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment, then flags (``None`` overrides are ignored)."""
    given = {key: value for key, value in overrides.items() if value is not None}
    try:
        return Settings(**given)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "settings"
        raise ConfigError(f"invalid setting {field}: {first['msg']}") from exc


def _named_keys(keys: SecretStr | None, scope: str) -> list[tuple[str, str]]:
    """A comma-separated list of keys as (name, key): ``name:key`` entries, else
    <scope>-1, <scope>-2... in order."""
    if keys is None:
        return []
    entries = [entry.strip() for entry in keys.get_secret_value().split(",")]
    return [
        _named(entry, f"{scope}-{index}")
        for index, entry in enumerate((e for e in entries if e), start=1)
    ]


def _named(entry: str, default: str) -> tuple[str, str]:
    """``name:key`` or a bare key (generated keys never hold a colon)."""
    name, sep, key = entry.partition(":")
    return (name.strip(), key.strip()) if sep and name.strip() else (default, entry)

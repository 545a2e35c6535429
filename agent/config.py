"""The agent's YAML configuration, read once at startup into a frozen `AgentConfig`.

The file format is the original plan's (``server.address``, ``server.tls``, ``agent.id``,
``agent.collect_interval``) plus optional keys; a file written for the original agent loads
unchanged. Every problem is a `ConfigError` with one line naming the file and the key, so that the
agent exits with status 2 and a message the operator can act on. Unknown keys only log a warning:
a newer config file must still start an older agent.

The enrollment token comes from ``server.enrollment_token`` or, when that is unset, the
``FLEETPULSE_ENROLLMENT_TOKEN`` environment variable. It is needed only until the agent first
enrolls; from then on it uses its own credential, kept in its state directory.

The state directory (``agent.state_dir``) holds what the agent keeps across restarts: its
credential (``credential``, mode 0600), the spool of batches not yet committed (``spool/``), its
account of what it sent (``sent.json``, read by ``fleetpulse audit``) and the platform's settings
last applied (``settings.json``). Default: ``~/.local/state/fleetpulse-agent/<agent.id>`` in the
home directory of the user the agent runs as; set it where that home is not writable (the example
systemd unit uses ``/var/lib/fleetpulse-agent``). An example file: agent/agent.example.yaml.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fleetpulse.agent import tags as agent_tags
from fleetpulse.agent.collectors.names import COLLECTORS
from fleetpulse.agent.collectors.scheduler import DEFAULT_INTERVALS_S
from fleetpulse.errors import ConfigError

logger = logging.getLogger(__name__)

# The name of the variable, not a secret.
ENROLLMENT_TOKEN_ENV = "FLEETPULSE_ENROLLMENT_TOKEN"  # noqa: S105

DEFAULT_SERVER_ADDRESS = "localhost:9090"
DEFAULT_COLLECT_INTERVAL_S = 30.0
DEFAULT_HEARTBEAT_INTERVAL_S = 10.0
# agent.state_dir defaults to DEFAULT_STATE_ROOT/<agent.id>: one directory per agent id, so that
# two agents on a host never share a credential or a spool.
DEFAULT_STATE_ROOT = "~/.local/state/fleetpulse-agent"

_TOP_LEVEL_KEYS = frozenset({"server", "agent"})
_SERVER_KEYS = frozenset(
    {"address", "tls", "enrollment_token", "tls_ca_file", "tls_cert_file", "tls_key_file"}
)
_AGENT_KEYS = frozenset(
    {
        "id",
        "collect_interval",
        "heartbeat_interval",
        "state_dir",
        "collectors",
        "collector_intervals",
        "spool_max_mb",
        "tags",
    }
)
DEFAULT_SPOOL_MAX_MB = 64


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentConfig:
    """Everything the agent process needs from its config file and environment."""

    server_address: str = DEFAULT_SERVER_ADDRESS
    server_tls: bool = False
    enrollment_token: str | None = None
    # None: the system's CA bundle (what `ssl` finds, SSL_CERT_FILE included).
    tls_ca_file: str | None = None
    # A client certificate and its key (PEM), for a platform that requires one (mutual TLS).
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    agent_id: str
    collect_interval_s: float = DEFAULT_COLLECT_INTERVAL_S
    heartbeat_interval_s: float = DEFAULT_HEARTBEAT_INTERVAL_S
    # The credential, spool/, sent.json and settings.json. No default here: the default,
    # ~/.local/state/fleetpulse-agent/<agent_id>, depends on agent_id, and load_config() computes it.
    state_dir: Path
    # None enables every collector, including ones added in later versions.
    collectors: frozenset[str] | None = None
    # Collectors that run at most once per so many seconds (0: every collection); the file's
    # mapping is laid over DEFAULT_INTERVALS_S (tcp every 60 s: its kernel cost,
    # collectors/scheduler.py).
    collector_intervals_s: Mapping[str, float] = field(
        default_factory=lambda: dict(DEFAULT_INTERVALS_S)
    )
    # The on-disk spool of batches not yet committed (agent/spool.py); oldest dropped beyond it.
    spool_max_bytes: int = DEFAULT_SPOOL_MAX_MB * 1024 * 1024
    # agent.tags (agent/tags.py): sent at every register; an operator's tags override them.
    tags: Mapping[str, str] = field(default_factory=dict)


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> AgentConfig:
    """Read and validate the agent config file; raise `ConfigError` with a one-line reason."""
    if env is None:
        env = os.environ
    source = str(path)
    document = _read_yaml(Path(path), source)

    if document is None:  # an empty file
        document = {}
    if not isinstance(document, dict):
        raise ConfigError(
            f"{source}: top level must be a mapping with server and agent sections, "
            f"got {_type_name(document)}"
        )
    server = _section(document, "server", source)
    agent = _section(document, "agent", source)
    _warn_unknown(source, "", document, _TOP_LEVEL_KEYS)
    _warn_unknown(source, "server.", server, _SERVER_KEYS)
    _warn_unknown(source, "agent.", agent, _AGENT_KEYS)

    if "id" not in agent:
        raise ConfigError(f"{source}: missing required key agent.id")
    agent_id = _non_empty_string(agent["id"], "agent.id", source)

    enrollment_token = _enrollment_token(server.get("enrollment_token"), source)
    if enrollment_token is None:
        # An empty variable counts as unset: `FLEETPULSE_ENROLLMENT_TOKEN= agent ...` is how a
        # shell clears it.
        enrollment_token = env.get(ENROLLMENT_TOKEN_ENV) or None

    server_address = _non_empty_string(
        _get(server, "address", DEFAULT_SERVER_ADDRESS), "server.address", source
    )
    written_tls = _get(server, "tls", None)
    server_tls = _boolean(False if written_tls is None else written_tls, "server.tls", source)
    if not server_tls and not is_loopback(server_address):
        # The enrollment token and the agent's credential would cross the network in clear.
        if written_tls is None:
            raise ConfigError(
                f"{source}: server.address {server_address} is not this host: connect with TLS "
                "(server.tls: true, server.tls_ca_file: the platform's ca.pem from `fleetpulse "
                "certs init`), or write server.tls: false to send credentials in clear"
            )
        logger.warning(
            "%s: server.tls: false to %s: the enrollment token and the agent's credential "
            "cross the network in clear",
            source,
            server_address,
        )
    tls_ca_file = _tls_file(server, "tls_ca_file", server_tls, source)
    tls_cert_file = _tls_file(server, "tls_cert_file", server_tls, source)
    tls_key_file = _tls_file(server, "tls_key_file", server_tls, source)
    if (tls_cert_file is None) != (tls_key_file is None):
        raise ConfigError(
            f"{source}: server.tls_cert_file and server.tls_key_file go together; set both or neither"
        )

    return AgentConfig(
        server_address=server_address,
        server_tls=server_tls,
        enrollment_token=enrollment_token,
        tls_ca_file=tls_ca_file,
        tls_cert_file=tls_cert_file if server_tls else None,
        tls_key_file=tls_key_file if server_tls else None,
        agent_id=agent_id,
        collect_interval_s=_positive_number(
            _get(agent, "collect_interval", DEFAULT_COLLECT_INTERVAL_S),
            "agent.collect_interval",
            source,
        ),
        heartbeat_interval_s=_positive_number(
            _get(agent, "heartbeat_interval", DEFAULT_HEARTBEAT_INTERVAL_S),
            "agent.heartbeat_interval",
            source,
        ),
        state_dir=_state_dir(agent.get("state_dir"), agent_id, source),
        collectors=_collectors(agent.get("collectors"), source),
        collector_intervals_s=_collector_intervals(agent.get("collector_intervals"), source),
        spool_max_bytes=int(
            _positive_number(
                _get(agent, "spool_max_mb", DEFAULT_SPOOL_MAX_MB), "agent.spool_max_mb", source
            )
            * 1024
            * 1024
        ),
        tags=_tags(agent.get("tags"), source),
    )


def _tags(value: Any, source: str) -> dict[str, str]:
    """agent.tags: a mapping of tag keys to text (numbers and booleans written plainly are taken
    as their text: ``tier: 2``)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: agent.tags must be a mapping, got {_type_name(value)}")
    tags: dict[str, str] = {}
    for key, item in value.items():
        if isinstance(item, bool):
            item = str(item).lower()
        elif isinstance(item, int | float):
            item = str(item)
        if not isinstance(key, str):
            raise ConfigError(
                f"{source}: agent.tags: key {key!r} is not text (YAML reads on/off/yes/no and "
                "numbers as such: quote it)"
            )
        if not isinstance(item, str):
            raise ConfigError(f"{source}: agent.tags.{key}: must be text, got {_type_name(item)}")
        tags[key] = item
    try:
        agent_tags.check(tags)
    except ValueError as exc:
        raise ConfigError(f"{source}: agent.tags: {exc}") from None
    return tags


def is_loopback(address: str) -> bool:
    """Whether ``host:port`` (or ``[v6]:port``, or a gRPC ``unix:`` target) stays on this host."""
    if address.startswith(("unix:", "unix-abstract:")):
        return True
    host = address.rsplit(":", 1)[0] if address.count(":") == 1 or "]" in address else address
    host = host.strip("[]")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _read_yaml(path: Path, source: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read file: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: cannot read file: not UTF-8 text ({exc})") from exc
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = exc.problem or exc.context or "syntax error"
        raise ConfigError(f"{source}: not valid YAML{where}: {_one_line(problem)}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {_one_line(str(exc))}") from exc


def _section(document: dict[Any, Any], key: str, source: str) -> dict[Any, Any]:
    value = document.get(key)
    if value is None:  # absent, or `server:` with nothing under it
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: {key} must be a mapping, got {_type_name(value)}")
    return value


def _warn_unknown(source: str, prefix: str, section: dict[Any, Any], known: frozenset[str]) -> None:
    unknown = sorted(f"{prefix}{key}" for key in section if key not in known)
    if unknown:
        logger.warning("%s: ignoring unknown keys: %s", source, ", ".join(unknown))


def _get(section: dict[Any, Any], key: str, default: Any) -> Any:
    # `collect_interval:` with nothing after it reads as null; it means "not set", not "invalid".
    value = section.get(key)
    return default if value is None else value


def _enrollment_token(value: Any, source: str) -> str | None:
    if value is None:
        return None
    # The value is left out of the messages: it may be a secret, and messages end up in logs.
    if not isinstance(value, str):
        raise ConfigError(
            f"{source}: server.enrollment_token must be a string, got {type(value).__name__}"
        )
    if not value.strip():
        raise ConfigError(f"{source}: server.enrollment_token must not be empty")
    return value


def _non_empty_string(value: Any, key: str, source: str) -> str:
    # Numbers are refused rather than converted: YAML reads `id: 007` as the integer 7, and an
    # agent silently renamed is worse than one that asks for quotes.
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{source}: {key} must be a non-empty string, got {value!r}")
    return value


def _optional_string(value: Any, key: str, source: str) -> str | None:
    if value is None:
        return None
    return _non_empty_string(value, key, source)


def _boolean(value: Any, key: str, source: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{source}: {key} must be true or false, got {value!r}")
    return value


def _positive_number(value: Any, key: str, source: str) -> float:
    # bool is an int subclass; `collect_interval: true` is a mistake, not 1 second.
    seconds = math.nan
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except OverflowError:  # an integer beyond float range
            seconds = math.inf
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"{source}: {key} must be a positive number of seconds, got {value!r}")
    return seconds


def _tls_file(server: dict[Any, Any], key: str, server_tls: bool, source: str) -> str | None:
    name = _optional_string(server.get(key), f"server.{key}", source)
    if name is None:
        return None
    if not server_tls:
        logger.warning("%s: server.%s is ignored because server.tls is false", source, key)
        return name
    # Checked here so that a typo fails at startup with the key's name, not at the first connect.
    path = Path(name).expanduser()
    if not path.is_file():
        raise ConfigError(f"{source}: server.{key} {name!r} is not a file")
    return str(path)


def _state_dir(value: Any, agent_id: str, source: str) -> Path:
    if value is not None:
        return Path(_non_empty_string(value, "agent.state_dir", source)).expanduser()
    # The agent id becomes a path component here, so it must not climb out of the state root.
    if "/" in agent_id or "\\" in agent_id or "\0" in agent_id or agent_id in {".", ".."}:
        raise ConfigError(
            f"{source}: agent.id {agent_id!r} cannot name the default state directory; "
            "set agent.state_dir"
        )
    return Path(DEFAULT_STATE_ROOT).expanduser() / agent_id


def _collectors(value: Any, source: str) -> frozenset[str] | None:
    if value is None:
        return None
    valid = ", ".join(sorted(COLLECTORS))
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        raise ConfigError(
            f"{source}: agent.collectors must be a list of collector names ({valid}), got {value!r}"
        )
    unknown = sorted(set(value) - COLLECTORS.keys())
    if unknown:
        raise ConfigError(
            f"{source}: agent.collectors has unknown collectors {', '.join(unknown)}; "
            f"valid: {valid}"
        )
    return frozenset(value)


def _collector_intervals(value: Any, source: str) -> dict[str, float]:
    intervals = dict(DEFAULT_INTERVALS_S)
    if value is None:
        return intervals
    key = "agent.collector_intervals"
    if not isinstance(value, dict):
        raise ConfigError(
            f"{source}: {key} must map collector names to seconds (0: every collection), "
            f"got {value!r}"
        )
    for name, seconds in value.items():
        if name not in COLLECTORS:
            raise ConfigError(
                f"{source}: {key} names unknown collector {name!r}; "
                f"valid: {', '.join(sorted(COLLECTORS))}"
            )
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise ConfigError(
                f"{source}: {key}.{name} must be a number of seconds, got {seconds!r}"
            )
        if not math.isfinite(seconds) or seconds < 0:
            raise ConfigError(f"{source}: {key}.{name} must be 0 or more seconds, got {seconds!r}")
        intervals[name] = float(seconds)
    return intervals


def _type_name(value: Any) -> str:
    return type(value).__name__


def _one_line(text: str) -> str:
    return " ".join(text.split())

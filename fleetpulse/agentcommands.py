"""``fleetpulse agents ...``: the operator's commands on agents (revoke a credential, change
remote settings, tag, series budgets), beside the CLI that parses them.

Each change is stored in PostgreSQL first and then announced on the control channel
(ingest/control.py), so that the front-end holding the agent's stream acts now; when Redis cannot
be reached the change is kept and the command says what was saved and what was not (exit 1).
Imported by the parser for its choices: only the standard library at import.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from fleetpulse.errors import ConfigError

if TYPE_CHECKING:
    from fleetpulse.ingest import control
    from fleetpulse.settings import Settings

# `agents config --unset NAME`: the option's name, the setting's column.
UNSETTABLE = {
    "collect-interval": "collect_interval_ms",
    "heartbeat-interval": "heartbeat_interval_ms",
    "collectors": "collectors",
}


def revoke(settings: Settings, agent_id: str) -> int:
    """``fleetpulse agents revoke ID``: revoke its credential, end its streams on every front-end."""
    import redis

    from fleetpulse import auditlog, connections
    from fleetpulse.ingest import control, credentials

    settings.require("database_url")
    assert settings.database_url
    with connections.pg_connect(settings.database_url, autocommit=True) as conn:
        revoked = credentials.revoke(conn, agent_id, auditlog.cli_actor())
    if not revoked:
        print(f"{agent_id}: no active credential (nothing revoked)", file=sys.stderr)
        return 1
    if settings.redis_url:  # close its open streams now, on every front-end
        try:
            _publish(settings.redis_url, control.Revoked(agent_id))
        except redis.RedisError as exc:
            print(
                f"{agent_id}: credential revoked (new streams are refused), but its open "
                f"stream could not be closed: Redis: {_one_line(exc)}",
                file=sys.stderr,
            )
            return 1
    print(f"{agent_id}: credential revoked; the agent may enroll again with the token")
    return 0


def _publish(redis_url: str, message: control.Message) -> None:
    """Publish a control message to every front-end (ingest/control.py)."""
    from fleetpulse import connections
    from fleetpulse.ingest import control

    client = connections.redis_client(redis_url)
    try:
        control.publish(client, message)
    finally:
        client.close()


def changes_of(
    unset: list[str] | None,
    reset: bool,
    collect_interval_s: float | None,
    heartbeat_interval_s: float | None,
    collectors: str | None,
) -> dict[str, object]:
    """The settings change that ``fleetpulse agents config`` options ask for."""
    changes: dict[str, object] = {}
    for name in unset or ():
        changes[UNSETTABLE[name]] = None
    if reset:
        changes = dict.fromkeys(UNSETTABLE.values())
    if collect_interval_s is not None:
        changes["collect_interval_ms"] = round(collect_interval_s * 1000)
    if heartbeat_interval_s is not None:
        changes["heartbeat_interval_ms"] = round(heartbeat_interval_s * 1000)
    if collectors is not None:
        changes["collectors"] = [name for name in collectors.split(",") if name]
    return changes


def configure(settings: Settings, agent_id: str, changes: dict[str, object]) -> int:
    """``fleetpulse agents config ID``: apply ``changes`` (none: show), and push them now."""
    import redis

    from fleetpulse import auditlog, connections
    from fleetpulse.ingest import agentsettings, control

    try:
        agentsettings.validate(changes)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    settings.require("database_url")
    assert settings.database_url
    with connections.pg_connect(settings.database_url, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM agents WHERE agent_id = %s", (agent_id,)).fetchone() is None:
            print(f"{agent_id}: no such agent (it has never registered)", file=sys.stderr)
            return 1
        if changes:
            agentsettings.update(conn, agent_id, changes, auditlog.cli_actor())
        desired = agentsettings.load(conn, agent_id)
        reported = agentsettings.reported(conn, agent_id) or {}
    print(describe_settings(agent_id, desired, reported))
    if changes and settings.redis_url:  # the front-end holding its stream pushes it now
        try:
            _publish(settings.redis_url, control.SettingsChanged(agent_id))
        except redis.RedisError as exc:
            print(
                f"{agent_id}: settings saved (version {desired.version if desired else 0}), "
                f"but not pushed to the agent now: Redis: {_one_line(exc)}; "
                "it gets them when it next connects",
                file=sys.stderr,
            )
            return 1
    return 0


def describe_settings(agent_id: str, desired: Any, reported: dict[str, Any]) -> str:
    def show(value: object, unit: str = "") -> str:
        if value is None:
            return "(agent's own)"
        if isinstance(value, list | tuple):
            return ",".join(value)
        return f"{value}{unit}"

    def seconds(ms: int | None) -> float | None:
        return None if ms is None else ms / 1000

    version = desired.version if desired else 0
    lines = [
        f"{agent_id}: platform settings version {version}",
        f"  collect interval    {show(seconds(desired and desired.collect_interval_ms), ' s')}",
        f"  heartbeat interval  {show(seconds(desired and desired.heartbeat_interval_ms), ' s')}",
        f"  collectors          {show(desired and desired.collectors)}",
    ]
    if reported.get("version") is None:
        lines.append("  agent has not reported its settings yet")
    else:
        state = "applied" if reported["applied"] else f"NOT applied: {reported['error']}"
        lines.append(f"  agent reported version {reported['version']}: {state}")
        lines.append(
            f"  in effect: collect {seconds(reported['collect_interval_ms'])} s, "
            f"heartbeat {seconds(reported['heartbeat_interval_ms'])} s, "
            f"collectors {show(reported['collectors'])}"
        )
    return "\n".join(lines)


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def tag(settings: Settings, agent_id: str, changes: list[str]) -> int:
    """``fleetpulse agents tag ID [KEY=VALUE|KEY-]...``: change the operator's tags (a merge
    patch, ingest/agenttags.py) and show the agent's tags."""
    from fleetpulse import auditlog, connections
    from fleetpulse.ingest import agenttags

    patch: dict[str, str | None] = {}
    for change in changes:
        if change.endswith("-") and "=" not in change:
            patch[change[:-1]] = None
        elif "=" in change:
            key, _, value = change.partition("=")
            patch[key] = value
        else:
            raise ConfigError(f"{change[:70]!r}: write KEY=VALUE to set a tag, KEY- to remove it")
    settings.require("database_url")
    assert settings.database_url
    with connections.pg_connect(settings.database_url, autocommit=True) as conn:
        found = agenttags.read(conn, agent_id)
        if found is None:
            print(f"{agent_id}: no such agent (it has never registered)", file=sys.stderr)
            return 1
        if patch:
            try:
                found = agenttags.patch(conn, agent_id, patch, auditlog.cli_actor())
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
    print(describe_tags(agent_id, found))
    return 0


def budget(settings: Settings, args: list[str], tag_: str | None) -> int:
    """``fleetpulse agents budget [ID] [--tag K=V] [N|-]``: set (N) or remove (-) the series
    budget of an agent or a tag, or show an agent's use of its budget, or list the budgets."""
    from fleetpulse import auditlog, connections
    from fleetpulse.agent import tags as tag_rules
    from fleetpulse.ingest import agenttags, seriesbudgets

    settings.require("database_url")
    assert settings.database_url
    agent_id = None if tag_ is not None or not args else args[0]
    values = args if tag_ is not None else args[1:]
    if len(values) > 1:
        raise ConfigError("give at most one budget: a number, or - to remove it")
    value: int | None = None
    if values and values[0] != "-":
        if not values[0].isdigit() or int(values[0]) >= 2**31:
            raise ConfigError(f"budget {values[0][:20]!r}: a number of series, or - to remove it")
        value = int(values[0])
    with connections.pg_connect(settings.database_url, autocommit=True) as conn:
        if tag_ is not None:
            try:
                ((key, tag_value),) = tag_rules.parse([tag_]).items()
            except ValueError as exc:
                raise ConfigError(f"--tag: {exc}") from None
            target = seriesbudgets.Target(tag_key=key, tag_value=tag_value)
        elif agent_id is not None:
            if agenttags.read(conn, agent_id) is None:
                print(f"{agent_id}: no such agent (it has never registered)", file=sys.stderr)
                return 1
            target = seriesbudgets.Target(agent_id=agent_id)
        else:
            print(f"default  {settings.series_budget}")
            for found in seriesbudgets.listed(conn):
                print(f"{found.target}  {found.budget}")
            return 0
        if values:
            seriesbudgets.change(conn, target, value, auditlog.cli_actor())
        if agent_id is not None:
            used_budget = seriesbudgets.usage(conn, [agent_id], settings.series_budget)[agent_id]
            print(f"{agent_id}: {used_budget[1]} series of a budget of {used_budget[0]}")
        else:
            print(f"{target}: {'removed' if value is None else value}")
    return 0


def describe_tags(agent_id: str, found: Any) -> str:
    def show(tags: dict[str, str]) -> str:
        return " ".join(f"{key}={value}" for key, value in sorted(tags.items())) or "(none)"

    return "\n".join(
        [
            f"{agent_id}: {show(found.effective)}",
            f"  from its config file  {show(found.config)}",
            f"  set by an operator    {show(found.operator)}",
        ]
    )


def actions(settings: Settings, target: str | None, action: str | None, limit: int) -> int:
    """``fleetpulse actions``: the audit log, newest first, one line per action."""
    from fleetpulse import auditlog, connections

    if not 1 <= limit <= 10_000:
        raise ConfigError("--limit must be between 1 and 10000")
    settings.require("database_url")
    assert settings.database_url
    with connections.pg_connect(settings.database_url, autocommit=True) as conn:
        entries = auditlog.read(conn, target=target, action=action, limit=limit)
    for entry in entries:
        detail = " ".join(f"{key}={value}" for key, value in entry.detail.items())
        print(
            f"{entry.at.astimezone().isoformat(timespec='seconds')}  {entry.actor}  "
            f"{entry.action}  {entry.target}  {detail}".rstrip()
        )
    if not entries:
        print("no actions recorded", file=sys.stderr)
    return 0

"""``fleetpulse rollout ...``: start, plan, watch, pause, resume and abort staged rollouts of
settings (ingest/rollouts.py), through the same functions the API calls, so the terminal and the
dashboard show the same rollout."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fleetpulse.errors import ConfigError, FleetpulseError
from fleetpulse.settings import Settings

T = TypeVar("T")


def _run(settings: Settings, work: Callable[[Any], Awaitable[T]]) -> T:
    """``work(conn)`` on an async autocommit connection; a refusal (bad input, a conflict, an
    unknown rollout) becomes the command's one-line error."""
    from fleetpulse import connections

    settings.require("database_url")
    assert settings.database_url
    url = settings.database_url

    async def run() -> T:
        async with await connections.pg_connect_async(url, autocommit=True) as conn:
            return await work(conn)

    try:
        return asyncio.run(run())
    except FleetpulseError as exc:
        raise ConfigError(exc.message) from None


def start(
    settings: Settings,
    tags: list[str] | None,
    agent_ids: list[str] | None,
    everyone: bool,
    changes: dict[str, Any],
    waves: str,
    soak_s: float | None,
    dry_run: bool,
) -> int:
    from fleetpulse import auditlog
    from fleetpulse.agent import tags as tag_rules
    from fleetpulse.ingest import rollouts

    try:
        tag_map = tag_rules.parse(tags) if tags else None
    except ValueError as exc:
        raise ConfigError(f"--tag: {exc}") from None
    try:
        chosen = rollouts.selector(tag_map, agent_ids, everyone)
    except FleetpulseError as exc:
        raise ConfigError(
            exc.message.replace("tags, a list of agent ids, or all", "--tag, --agent or --all")
        ) from None
    steps = [s for s in waves.split(",") if s.strip()]
    if dry_run:
        planned = _run(settings, lambda conn: rollouts.plan(conn, chosen, steps, settings))
        total = sum(len(a) for _, a in planned.waves)
        print(f"{total} agents ({planned.offline} not online now), in {len(planned.waves)} waves:")
        for number, (step, agents) in enumerate(planned.waves, 1):
            shown = ", ".join(agents[:10]) + (
                f", ... ({len(agents) - 10} more)" if len(agents) > 10 else ""
            )
            print(f"  wave {number} ({step}): {len(agents)}: {shown}")
        return 0
    soak = settings.rollout_soak_s if soak_s is None else soak_s
    rollout_id = _run(
        settings,
        lambda conn: rollouts.create(
            conn, chosen, changes, steps, soak, auditlog.cli_actor(), settings
        ),
    )
    print(f"rollout {rollout_id} started")
    return show(settings, rollout_id, agents=False)


def listing(settings: Settings, state: str | None, limit: int) -> int:
    from fleetpulse.ingest import rollouts

    if not 1 <= limit <= 500:
        raise ConfigError("--limit must be between 1 and 500")
    found = _run(settings, lambda conn: rollouts.listed(conn, state, None, limit))
    if not found:
        print("no rollouts")
    for rollout in found:
        print(_summary(rollout))
    return 0


def show(settings: Settings, rollout_id: int, agents: bool) -> int:
    from fleetpulse.ingest import rollouts

    async def fetch(conn: Any) -> tuple[Any, list[Any]]:
        found = await rollouts.read(conn, rollout_id)
        rows = await rollouts.agents(conn, rollout_id, None, None, 1000, 0) if agents else []
        return found, rows

    found, rows = _run(settings, fetch)
    print(_summary(found))
    print(f"  selector {found.selector}  settings {found.settings}  soak {found.soak_s:g} s")
    for w in found.waves:
        counts = ", ".join(
            f"{n} {name}"
            for name, n in (
                ("applied", w.applied),
                ("passed", w.passed),
                ("unverified", w.unverified),
                ("failed", w.failed),
                ("reverted", w.reverted),
            )
            if n
        )
        line = f"  wave {w.wave + 1} ({w.step}): {w.agents} agents, {w.state}"
        print(line + (f" ({counts})" if counts else "") + (f": {w.reason}" if w.reason else ""))
    for agent_id, wave, state, _, _, _, _, _, reason in rows:
        print(f"    {agent_id}  wave {wave + 1}  {state}" + (f": {reason}" if reason else ""))
    return 0


def _summary(rollout: Any) -> str:
    agents = sum(w.agents for w in rollout.waves)
    line = (
        f"{rollout.id}  {rollout.state}  wave {rollout.wave + 1}/{len(rollout.waves)}  "
        f"{agents} agents  by {rollout.created_by} at {rollout.created_at:%Y-%m-%d %H:%M:%S}"
    )
    return line + (f"  ({rollout.reason})" if rollout.reason else "")


def control(settings: Settings, action: str, rollout_id: int) -> int:
    """pause, resume or abort (an abort's reverted settings are pushed now)."""
    import redis

    from fleetpulse import auditlog, connections
    from fleetpulse.ingest import control as messages
    from fleetpulse.ingest import rollouts

    actor = auditlog.cli_actor()
    operations: dict[str, Callable[[Any], Awaitable[Any]]] = {
        "pause": lambda conn: rollouts.pause(conn, rollout_id, actor),
        "resume": lambda conn: rollouts.resume(conn, rollout_id, actor),
        "abort": lambda conn: rollouts.abort(conn, rollout_id, actor),
    }
    reverted = _run(settings, operations[action]) or []
    if reverted and settings.redis_url:
        client = connections.redis_client(settings.redis_url)
        try:
            messages.publish_many(client, [messages.SettingsChanged(a) for a in reverted])
        except redis.RedisError as exc:
            print(
                f"rollout {rollout_id}: {len(reverted)} agents reverted, not pushed now "
                f"({exc}); they get it when they next connect",
                file=sys.stderr,
            )
        finally:
            client.close()
    return show(settings, rollout_id, agents=False)

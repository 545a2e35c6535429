"""Remote settings: what the platform may change on a running agent, and the limits both sides check.

The platform keeps per-agent settings (`fleetpulse agents config`, ``PUT /agents/{id}/config``) and
pushes them as ``ServerMessage.settings``; the agent applies them without a restart, all or nothing,
and answers ``SettingsStatus`` (agent/daemon.py). A setting left unset (zero, empty) falls back to
the agent's own config file. The platform validates with `check()` before it stores anything, and
the agent validates again before it applies, so that a platform newer than the agent (a collector
the agent does not have) gets "not applied" with the reason instead of a half-applied change.

This module is imported by the agent and by the server, so it imports neither side's dependencies.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

MIN_INTERVAL_MS = 1_000
MAX_COLLECT_INTERVAL_MS = 86_400_000  # a day
# Longer than this and a dead stream goes unnoticed for too long (offline after 3 of them).
MAX_HEARTBEAT_INTERVAL_MS = 600_000


@dataclass(frozen=True, slots=True)
class RemoteSettings:
    """One version of an agent's settings on the platform; None: the agent's config file decides."""

    version: int = 0
    collect_interval_ms: int | None = None
    heartbeat_interval_ms: int | None = None
    collectors: tuple[str, ...] | None = None


def check(
    collect_interval_ms: int | None,
    heartbeat_interval_ms: int | None,
    collectors: Iterable[str] | None,
    known_collectors: Collection[str],
) -> None:
    """Raise ValueError with a one-line reason when a setting is out of range or unknown."""
    _check_interval("collect interval", collect_interval_ms, MAX_COLLECT_INTERVAL_MS)
    _check_interval("heartbeat interval", heartbeat_interval_ms, MAX_HEARTBEAT_INTERVAL_MS)
    if collectors is not None:
        names = list(collectors)
        if not names:
            raise ValueError(
                "collectors: name at least one (or leave it unset for the agent's own)"
            )
        unknown = sorted(set(names) - set(known_collectors))
        if unknown:
            raise ValueError(
                f"unknown collectors {', '.join(unknown)}; known: {', '.join(sorted(known_collectors))}"
            )


def _check_interval(what: str, value_ms: int | None, maximum_ms: int) -> None:
    if value_ms is None:
        return
    if not MIN_INTERVAL_MS <= value_ms <= maximum_ms:
        raise ValueError(
            f"{what} must be between {MIN_INTERVAL_MS / 1000:g} s and {maximum_ms / 1000:g} s, "
            f"got {value_ms / 1000:g} s"
        )

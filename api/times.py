"""Times and durations as request parameters take them, parsed one way for both APIs.

The native queries (``step``, ``window``, ``start``, ``end``) and Prometheus' HTTP API (``step``,
``max_source_resolution``, ``time``, ``start``, ``end``) read them here, so that a duration means
the same on either, and the same as in a PromQL range (``[1y]``): units as Prometheus defines
them, ``y`` being 365 days.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime

from fleetpulse.errors import BadInput

# The most steps a range query evaluates: Prometheus' own limit, which the native API shares.
MAX_STEPS = 11_000
# Longer steps, windows and ranges mean nothing here (retention is measured in days) and would
# push window starts past what a datetime holds.
MAX_DURATION_S = 100 * 365 * 86_400
# Prometheus' units (prometheus/common model.ParseDuration): a year is 365 days.
_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800, "y": 31_536_000}
_SECONDS = re.compile(r"\d+(?:\.\d+)?")
# One unit, with a fraction if need be: 1.5h.
_ONE_UNIT = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)")
# Prometheus' form, units from the largest down, each at most once: 1h30m, 1y2w.
_UNITS = ("y", "w", "d", "h", "m", "s", "ms")
_COMPOUND = re.compile("".join(rf"(?:(\d+){unit})?" for unit in _UNITS))
# Year 3000: later (or earlier, negated) times are not ones this platform holds.
_MAX_UNIX_S = 32_503_680_000


def _seconds(text: str) -> float | None:
    if _SECONDS.fullmatch(text):
        return float(text)
    found = _ONE_UNIT.fullmatch(text)
    if found:
        return float(found.group(1)) * _UNIT_S[found.group(2)]
    found = _COMPOUND.fullmatch(text)
    if found and text:
        return sum(float(n) * _UNIT_S[u] for n, u in zip(found.groups(), _UNITS, strict=True) if n)
    return None


def parse_duration(text: str, what: str = "step") -> float:
    """Seconds from ``30``, ``30s``, ``5m``, ``1h``, ``1d``, ``1w``, ``1y``, ``250ms``, ``1.5h``
    or ``1h30m``."""
    seconds = _seconds(text.strip())
    if seconds is None:
        raise BadInput(
            f"{what}: {text!r} is not a duration (a number of seconds, or like 30s, 5m, 1h)"
        )
    if seconds <= 0:
        raise BadInput(f"{what} must be positive, got {text!r}")
    if not seconds <= MAX_DURATION_S:  # inf included
        raise BadInput(f"{what} must be at most 100 years, got {text[:40]!r}")
    return seconds


def parse_time(text: str, what: str) -> float:
    """Unix seconds from Unix seconds or RFC 3339."""
    try:
        value = float(text)
    except ValueError:
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise BadInput(f"{what}: {text!r} is neither Unix seconds nor RFC 3339") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        value = moment.timestamp()
    if not math.isfinite(value) or abs(value) > _MAX_UNIX_S:
        raise BadInput(f"{what}: {text!r} is out of range")
    return value

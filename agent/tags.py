"""Agent tags: what a tag may be, checked the same way by the agent (its config), the front-end
(the register), the API and the CLI (an operator's tags).

Tags group agents (``env=prod``, ``role=db``): they filter the agents list, the fleet summary and
the dashboard, and select agents for settings. A key follows Prometheus' label-name rules, so that
a tag can become a label, and may not be one of the agent's own fields; a value is short text.
Imported by the agent and by the server, so it imports neither side's dependencies.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

KEY = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]{0,62}")
MAX_VALUE = 256
MAX_TAGS = 32
# The agent's own fields, which a tag may not shadow.
RESERVED = frozenset({"agent_id", "hostname", "ip", "os", "arch", "version", "status"})


def problem(key: str, value: str) -> str | None:
    """Why ``key=value`` cannot be a tag, or None."""
    if not KEY.fullmatch(key) or key.startswith("__"):
        return (
            f"tag key {key[:70]!r} must be a label name: a letter or _, then letters, digits or _ "
            "(at most 63), not starting with __"
        )
    if key in RESERVED:
        return f"tag key {key!r} is one of the agent's own fields ({', '.join(sorted(RESERVED))})"
    if "\x00" in value or len(value) > MAX_VALUE:
        return f"tag {key}: the value must be at most {MAX_VALUE} characters, without NUL"
    return None


def check(tags: Mapping[str, str]) -> None:
    """Raise ValueError naming the first tag that is not one (or too many tags)."""
    if len(tags) > MAX_TAGS:
        raise ValueError(f"at most {MAX_TAGS} tags per agent, got {len(tags)}")
    for key, value in tags.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(f"tag {key!r}: keys and values are text")
        found = problem(key, value)
        if found:
            raise ValueError(found)


def parse(pairs: list[str]) -> dict[str, str]:
    """``["env=prod", "role=db"]`` as a mapping (the CLI's and the API's ``tag=`` form)."""
    tags: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"tag {pair[:70]!r} is not key=value")
        tags[key] = value
    check(tags)
    return tags

"""The rules of a tag (agent/tags.py), shared by the agent's config, the front-end, the API and
the CLI."""

from __future__ import annotations

import pytest

from fleetpulse.agent import tags


def test_tags_follow_label_name_rules_and_leave_the_agents_own_fields_alone() -> None:
    tags.check({"env": "prod", "role": "db", "_x": "", "k9": "v" * tags.MAX_VALUE})
    for key in ("9a", "a-b", "__meta", "", "é", "a" * 64):
        assert tags.problem(key, "v") is not None, key
    for key in tags.RESERVED:
        assert "agent's own fields" in (tags.problem(key, "v") or ""), key
    assert tags.problem("env", "a\x00b") is not None
    assert tags.problem("env", "v" * (tags.MAX_VALUE + 1)) is not None
    with pytest.raises(ValueError, match="at most 32 tags"):
        tags.check({f"k{i}": "v" for i in range(tags.MAX_TAGS + 1)})


def test_parse_reads_key_value_pairs() -> None:
    assert tags.parse(["env=prod", "role=db", "empty=", "eq=a=b"]) == {
        "env": "prod",
        "role": "db",
        "empty": "",
        "eq": "a=b",
    }
    with pytest.raises(ValueError, match="not key=value"):
        tags.parse(["env"])
    with pytest.raises(ValueError, match="label name"):
        tags.parse(["bad key=v"])

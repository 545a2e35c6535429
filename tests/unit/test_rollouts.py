"""The rollout's plan (waves from cumulative steps) and its health gate's judgement, alone."""

from __future__ import annotations

import pytest

from fleetpulse.errors import BadInput
from fleetpulse.ingest.rolloutgate import Figures, judge
from fleetpulse.ingest.rollouts import selector, wave_sizes


def test_percentages_are_cumulative_at_least_one_agent_and_empty_steps_dropped() -> None:
    assert wave_sizes(["1%", "5%", "25%", "100%"], 1000) == [
        ("1%", 10),
        ("5%", 40),
        ("25%", 200),
        ("100%", 750),
    ]
    # three agents: 1% is one agent; 5% and 25% add none and are dropped
    assert wave_sizes(["1%", "5%", "25%", "100%"], 3) == [("1%", 1), ("100%", 2)]
    assert wave_sizes([1, "10", "100%"], 50) == [("1", 1), ("10", 9), ("100%", 40)]
    assert wave_sizes(["100%"], 7) == [("100%", 7)]
    # a count past the fleet is the whole fleet
    assert wave_sizes(["2", "500"], 5) == [("2", 2), ("500", 3)]


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ([], "at least one step"),
        (["1%", "50%"], "must reach every agent"),
        (["50%", "10%", "100%"], "fewer agents than the step before"),
        (["0%", "100%"], "between 0% and 100%"),
        (["150%"], "between 0% and 100%"),
        (["ten", "100%"], "neither a percentage"),
        (["0", "100%"], "at least 1"),
        (["5%"] * 21, "at most 20"),
    ],
)
def test_bad_steps_are_refused_naming_the_problem(steps: list[str], message: str) -> None:
    with pytest.raises(BadInput, match=message):
        wave_sizes(steps, 100)


def test_a_selector_chooses_one_way() -> None:
    assert selector({"env": "prod"}, None, False).to_json() == {"tags": {"env": "prod"}}
    assert selector(None, ["b", "a", "b"], False).to_json() == {"agents": ["a", "b"]}
    assert selector(None, None, True).to_json() == {"all": True}
    for tags, agents, everyone in ((None, None, False), ({"a": "b"}, ["x"], False)):
        with pytest.raises(BadInput, match="choose the agents one way"):
            selector(tags, agents, everyone)
    with pytest.raises(BadInput, match="tags"):
        selector({"agent_id": "x"}, None, False)  # a reserved key


BEFORE = Figures(600.0, batches=100, points=20_000, rejected=0, health_samples=100)


def since(**changes: float) -> Figures:
    base = {"batches": 20, "points": 4000, "health_samples": 20}
    return Figures(120.0, **{**base, **changes})  # type: ignore[arg-type]


def test_steady_figures_pass() -> None:
    assert judge(BEFORE, since()) is None
    # noise within the slack: a point rejected now and then, a couple more batches spooled
    assert judge(BEFORE, since(rejected=20)) is None
    assert judge(Figures(600.0, spool_batches=3), since(spool_batches=8)) is None


@pytest.mark.parametrize(
    ("figures", "reason"),
    [
        ({"collector_errors": 1}, "collectors failing rose from 0 to 1"),
        ({"rejected": 200}, "rejected points per batch rose from 0.0 to 10.0"),
        ({"spool_batches": 6}, "spool depth rose from 0 to 6 batches"),
        ({"dropped_batches": 2}, "its spool dropped 2 batches"),
        ({"refusals": 1}, "refused its stream 1 time"),
        ({"offline": 1}, "went offline"),
    ],
)
def test_a_rise_against_its_own_before_fails(figures: dict[str, float], reason: str) -> None:
    verdict = judge(BEFORE, since(**figures))
    assert verdict is not None and reason in verdict


def test_a_host_that_always_dropped_is_judged_by_its_own_rate() -> None:
    dropping = Figures(600.0, batches=100, dropped_batches=10)  # one per minute
    assert judge(dropping, since(dropped_batches=2)) is None  # two in two minutes: as before
    assert judge(dropping, since(dropped_batches=5)) is not None
    failing = Figures(600.0, batches=100, collector_errors=1)  # one collector always broken
    assert judge(failing, since(collector_errors=1)) is None
    assert judge(failing, since(collector_errors=2)) is not None

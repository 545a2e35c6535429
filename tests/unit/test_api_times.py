"""One duration syntax for both APIs (api/times.py): the native queries' ``step`` and ``window``
and Prometheus' ``step`` and ``max_source_resolution`` read a duration as PromQL reads a range,
with Prometheus' units (``y`` is 365 days)."""

from __future__ import annotations

import pytest

from fleetpulse.api.promql.errors import PromQLError
from fleetpulse.api.promql.parser import parse, seconds
from fleetpulse.api.times import MAX_DURATION_S, parse_duration
from fleetpulse.errors import BadInput

DAY_S = 86_400

# Every unit, alone and combined as Prometheus writes them (largest first, each at most once).
SAME = [
    ("1ms", 0.001),
    ("250ms", 0.25),
    ("30s", 30),
    ("90s", 90),
    ("5m", 300),
    ("1h", 3600),
    ("1h30m", 5400),
    ("1d", DAY_S),
    ("2w", 14 * DAY_S),
    ("1y", 365 * DAY_S),
    ("1y2w3d4h5m6s7ms", (365 + 14 + 3) * DAY_S + 4 * 3600 + 5 * 60 + 6.007),
]
NEITHER = ["h", "1x", "1hh", "1m1h", "1s1s", "-1s", "1_000s"]


@pytest.mark.parametrize(("text", "want_s"), SAME)
def test_the_native_api_and_promql_read_a_duration_alike(text: str, want_s: float) -> None:
    promql_s = seconds(parse(f"up[{text}]").range)
    assert parse_duration(text) == pytest.approx(want_s, abs=1e-9)
    assert parse_duration(text, "window") == pytest.approx(promql_s, abs=1e-9)


def test_a_year_is_365_days_as_in_prometheus() -> None:
    assert parse_duration("1y") == 365 * DAY_S == seconds(parse("up[1y]").range)
    assert parse_duration("100y") == MAX_DURATION_S


@pytest.mark.parametrize("text", NEITHER)
def test_the_native_api_and_promql_refuse_the_same_texts(text: str) -> None:
    with pytest.raises(BadInput, match="is not a duration"):
        parse_duration(text)
    with pytest.raises(PromQLError):
        parse(f"up[{text}]")


def test_the_native_api_keeps_its_own_forms_and_limits() -> None:
    """Plain seconds and a fraction of one unit, which PromQL ranges do not take; nothing over
    100 years, nothing that is not positive."""
    assert parse_duration("60") == 60
    assert parse_duration("1.5h") == 5400
    with pytest.raises(BadInput, match="must be positive"):
        parse_duration("0s")
    with pytest.raises(BadInput, match="at most 100 years"):
        parse_duration("101y")
    with pytest.raises(BadInput, match="at most 100 years"):
        parse_duration("9" * 400)

"""Which rollup tier a query reads: every choice of tier either API makes, in one place.

The tiers are raw points, ``rollup_1m`` and ``rollup_1h`` (one row per series and bucket: count,
sum, min, max, last). A query reads the coarsest tier that gives the answer it promises:

- the native range query (api/query.py) aggregates windows ``[t, t + step)``, ``t`` a multiple of
  the step: whole buckets whenever the step is a multiple of one (`for_step`), exactly;
- the native top-N (`for_window`) reads minutes from an hour's window on;
- PromQL reads raw points, as Prometheus does, and the tiers where the raw points are gone or the
  client allows a coarser answer (`stand_in`, api/promql/storage.py), and the buckets' exact
  aggregates where a query's windows line up with them (`for_windows`, api/promql/buckets.py).

The newest buckets of a tier may not be computed yet: `splits` says up to where each tier is
final, and the next finer one answers after that.
"""

from __future__ import annotations

import math

import numpy as np

TIER_SPACING_S = {"1m": 60.0, "1h": 3600.0}
# How long after a bucket closes its rollup is final at the latest (ingest/worker/rollups.py: max
# delay 10 s after the minute closed; an hour is recomputed from its minutes after they are final).
_MINUTE_FINAL_S = 70
_HOUR_FINAL_S = 3600 + 80
_HOUR_US = 3_600_000_000
_MINUTE_US = 60_000_000
# Minute buckets are exact from windows of 10 minutes (60 raw points at a 10 s interval): shorter
# windows read raw points as cheaply.
_MIN_MINUTE_RANGE_US = 10 * _MINUTE_US


def for_step(step_s: float) -> str:
    """The native range query's tier: the coarsest whose buckets divide the step."""
    if step_s % 3600 == 0:
        return "1h"
    if step_s % 60 == 0:
        return "1m"
    return "raw"


def for_window(window_s: float) -> str:
    """The native top-N's tier for one window ending now."""
    return "raw" if window_s < 3600 else "1m"


def for_windows(ref_us: np.ndarray, range_us: int, horizon_us: int) -> str | None:
    """The tier whose buckets every PromQL window ``[ref - range, ref]`` lines up with, or None.
    Minutes only after ``horizon_us`` (the raw horizon: minutes older may be gone)."""
    lo_us = int(ref_us.min()) - range_us
    if range_us >= _HOUR_US and range_us % _HOUR_US == 0 and not (ref_us % _HOUR_US).any():
        return "1h"
    minutes_ok = range_us >= _MIN_MINUTE_RANGE_US and range_us % _MINUTE_US == 0
    if minutes_ok and not (ref_us % _MINUTE_US).any() and lo_us >= horizon_us:
        return "1m"
    return None


def stand_in(
    step_s: float | None, ranges_s: list[float], steps_s: list[float], resolution_s: float = 0.0
) -> tuple[str, bool]:
    """The tier that stands in for raw points in a PromQL query (api/promql/storage.py's
    docstring), and whether it also does so within the raw retention (``resolution_s``: the
    coarsest tier the client allows, ``max_source_resolution``). Hours at steps of an hour when
    every range spans four of them, else minutes; the tiers replace raw points only where the
    step is at least their bucket and every range spans four buckets. ``step_s`` None: an instant
    query; ``ranges_s`` and ``steps_s``: the query's ranges and subquery steps."""
    shortest = min(ranges_s) if ranges_s else math.inf
    step = min([step_s if step_s is not None else 0.0, *steps_s])
    tier = "1h" if step >= 3600 and shortest >= 4 * 3600 else "1m"
    if tier == "1h" and resolution_s < 3600:
        tier = "1m"
    downsample = resolution_s >= TIER_SPACING_S[tier] and step >= TIER_SPACING_S[tier]
    return tier, downsample and shortest >= 4 * TIER_SPACING_S[tier]


def splits(tier: str, start: float, end: float, now: float) -> tuple[float, float]:
    """Where the hour tier hands over to the minute tier, and that one to raw points (Unix
    seconds, within [start, end]): after each tier's newest final bucket."""
    split_m = start
    split_h = start
    if tier in ("1m", "1h"):
        split_m = max(start, min(end, (math.floor((now - _MINUTE_FINAL_S) / 60) + 1) * 60))
    if tier == "1h":
        split_h = max(start, min(split_m, (math.floor((now - _HOUR_FINAL_S) / 3600) + 1) * 3600))
    return split_h, split_m

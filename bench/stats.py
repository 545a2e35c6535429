"""The figures a run reports, computed one way for every benchmark: percentiles and units."""

from __future__ import annotations

import numpy as np


def percentile(values: list[float] | np.ndarray, q: float, digits: int = 4) -> float | None:
    """The ``q``-th percentile of ``values``, rounded to ``digits``; None when there are none."""
    return round(float(np.percentile(values, q)), digits) if len(values) else None


def ms(seconds: float | None) -> float | None:
    """Seconds as milliseconds, two decimals."""
    return None if seconds is None else round(seconds * 1000, 2)


def int_or_none(value: float | None) -> int | None:
    """A counter read as a float (a Prometheus sample) as an int."""
    return None if value is None else int(value)

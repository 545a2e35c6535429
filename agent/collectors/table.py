"""One collection as a person reads it: the table ``fleetpulse agent --once`` prints.

Values are shown in the unit their metric's name carries (collectors/sample.py).
"""

from __future__ import annotations

import math

from fleetpulse.agent.collectors.sample import Sample

_BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def format_value(name: str, value: float) -> tuple[str, str]:
    """A sample's value as a person reads it, and its unit, from the unit in the metric's name
    (collectors/sample.py): ``_bytes`` in powers of 1024, ``_seconds``, ``_percent`` (a counter's
    unit comes before ``_total``); anything else is a count (thousands separated) or, when not
    whole, a plain number such as ``load1``."""
    if not math.isfinite(value):
        return str(value), ""
    base = name.removesuffix("_total")
    if base.endswith("_bytes"):
        scaled, power = abs(value), 0
        while scaled >= 1024 and power < len(_BYTE_UNITS) - 1:
            scaled /= 1024
            power += 1
        if power == 0:
            return f"{value:,.0f}", "B"
        return f"{math.copysign(scaled, value):,.2f}", _BYTE_UNITS[power]
    if base.endswith("_seconds"):
        return f"{value:,.2f}", "s"
    if base.endswith("_percent"):
        return f"{value:.1f}", "%"
    if value.is_integer():
        return f"{int(value):,}", ""
    return f"{value:,.2f}", ""


def format_table(samples: list[Sample], errors: dict[str, str]) -> str:
    """One collection as a fixed-width table (``fleetpulse agent --once``), failures last: the
    values right-aligned, with their units in a column of their own."""
    header = ("metric", "labels", "value", "unit")
    rows = [
        (name, ",".join(f"{k}={v}" for k, v in sorted(labels.items())), *format_value(name, value))
        for name, value, labels in sorted(samples, key=lambda s: (s[0], sorted(s[2].items())))
    ]
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]

    def line(cells: tuple[str, ...]) -> str:
        name, labels, value, unit = (
            cell.rjust(width) if column == 2 else cell.ljust(width)
            for column, (cell, width) in enumerate(zip(cells, widths, strict=True))
        )
        return f"{name}  {labels}  {value} {unit}".rstrip()

    lines = [line(header), *(line(row) for row in rows), f"{len(rows)} series"]
    lines += [f"collector {name} FAILED: {error}" for name, error in sorted(errors.items())]
    return "\n".join(lines)

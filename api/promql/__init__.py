"""PromQL as Prometheus 2.42 answers it: parser.py (text to tree), engine.py (evaluation over
every step at once), functions.py (PromQL's functions), storage.py (reading samples), model.py
(the values), errors.py (the one error type, with Prometheus' error kinds)."""

from fleetpulse.api.promql.engine import Range, Result, evaluate
from fleetpulse.api.promql.errors import PromQLError
from fleetpulse.api.promql.model import Scalar, String, Vector, format_value, format_values
from fleetpulse.api.promql.parser import parse, parse_selector

__all__ = [
    "PromQLError",
    "Range",
    "Result",
    "Scalar",
    "String",
    "Vector",
    "evaluate",
    "format_value",
    "format_values",
    "parse",
    "parse_selector",
]

"""PromQL text to a syntax tree, with the grammar of Prometheus 2.42.

Parsing is `promql-parser` (Python bindings of the Rust parser GreptimeDB maintains, a port of
Prometheus' own yacc grammar): it types every expression as Prometheus does (``rate(up)``, ``1 == 1``
and ``up and 1`` are refused with Prometheus' messages) and reads every literal form (``0x3d``,
``1e3``, ``Inf``, durations like ``1h30m``, the three quotes). The hand-written parser it replaced
was where half of the differences from Prometheus began.

It follows a newer Prometheus than 2.42, so this module takes back what 2.42 does not have:
functions added since (``sort_by_label``, ``limitk``, ``info``, the native-histogram functions...)
and ``or`` inside a selector's braces are refused as 2.42 refuses them, and ``holt_winters`` (named
``double_exponential_smoothing`` since 3.0) is registered under its 2.42 name.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import promql_parser as pp

from fleetpulse.api.promql.errors import PromQLError
from fleetpulse.api.selectors import Matcher

MAX_QUERY_CHARS = 10_000
MAX_DEPTH = 100  # nested expressions: a recursive evaluator needs a bound

# Every function of PromQL in Prometheus 2.42 but the experimental native-histogram ones.
FUNCTIONS = frozenset(
    [
        "abs",
        "absent",
        "absent_over_time",
        "acos",
        "acosh",
        "asin",
        "asinh",
        "atan",
        "atanh",
        "avg_over_time",
        "ceil",
        "changes",
        "clamp",
        "clamp_max",
        "clamp_min",
        "cos",
        "cosh",
        "count_over_time",
        "day_of_month",
        "day_of_week",
        "day_of_year",
        "days_in_month",
        "deg",
        "delta",
        "deriv",
        "exp",
        "floor",
        "histogram_quantile",
        "holt_winters",
        "hour",
        "idelta",
        "increase",
        "irate",
        "label_join",
        "label_replace",
        "last_over_time",
        "ln",
        "log10",
        "log2",
        "max_over_time",
        "min_over_time",
        "minute",
        "month",
        "pi",
        "predict_linear",
        "present_over_time",
        "quantile_over_time",
        "rad",
        "rate",
        "resets",
        "round",
        "scalar",
        "sgn",
        "sin",
        "sinh",
        "sort",
        "sort_desc",
        "sqrt",
        "stddev_over_time",
        "stdvar_over_time",
        "sum_over_time",
        "tan",
        "tanh",
        "time",
        "timestamp",
        "vector",
        "year",
    ]
)
AGGREGATIONS = frozenset(
    [
        "sum",
        "avg",
        "count",
        "min",
        "max",
        "group",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "count_values",
        "quantile",
    ]
)

pp.register_extra_functions(
    [
        pp.Function(
            "holt_winters",
            [pp.ValueType.Matrix, pp.ValueType.Scalar, pp.ValueType.Scalar],
            pp.ValueType.Vector,
        )
    ]
)

_OPS = {"MatchOp.Equal": "=", "MatchOp.NotEqual": "!=", "MatchOp.Re": "=~", "MatchOp.NotRe": "!~"}


def parse(text: str) -> Any:
    """The syntax tree of ``text`` (promql_parser's node classes), or `PromQLError` (bad_data)."""
    if not text.strip():
        raise PromQLError("parse error: no expression found in input")
    if len(text) > MAX_QUERY_CHARS:
        raise PromQLError(f"query longer than {MAX_QUERY_CHARS} characters")
    try:
        tree = pp.parse(text)
    except ValueError as exc:
        raise PromQLError(f"parse error: {_prometheus_words(str(exc))}") from None
    except BaseException as exc:  # a panic of the Rust parser surfaces as PanicException
        raise PromQLError(
            f"parse error: {str(exc).splitlines()[0] if str(exc) else 'invalid'}"
        ) from None
    _check(tree, 0)
    return tree


_TYPE_WORDS = {"matrix": "range vector", "vector": "instant vector"}


def _prometheus_words(message: str) -> str:
    """The parser's message in Prometheus' words where they differ only in naming: types are
    "instant vector" and "range vector", function names are double-quoted."""
    message = re.sub(
        r"\b(type|got:?) (matrix|vector)\b",
        lambda m: f"{m.group(1)} {_TYPE_WORDS[m.group(2)]}",
        message,
    )
    message = message.replace("scalar or vector", "scalar or instant vector")
    message = message.replace("got: range vector", 'got "range vector"')
    return re.sub(r"call to (function )?'([^']*)'", r'call to \1"\2"', message)


def _check(node: Any, depth: int) -> None:
    """What Prometheus 2.42 refuses and the parser accepts."""
    if depth > MAX_DEPTH:
        raise PromQLError(f"query nested more than {MAX_DEPTH} levels deep")
    if isinstance(node, pp.VectorSelector):
        if node.matchers.or_matchers:
            raise PromQLError(
                'parse error: unexpected identifier "or" in label matching (Prometheus 2.42 has '
                "no `or` in selectors)"
            )
        return
    if isinstance(node, pp.Call):
        if node.func.name not in FUNCTIONS:
            raise PromQLError(f'parse error: unknown function with name "{node.func.name}"')
        for arg in node.args:
            _check(arg, depth + 1)
        return
    if isinstance(node, pp.AggregateExpr):
        if str(node.op) not in AGGREGATIONS:
            raise PromQLError(f"parse error: unknown aggregation {str(node.op)!r}")
        if node.param is not None:
            _check(node.param, depth + 1)
        _check(node.expr, depth + 1)
        return
    if isinstance(node, pp.BinaryExpr):
        _check(node.lhs, depth + 1)
        _check(node.rhs, depth + 1)
        return
    if isinstance(node, pp.MatrixSelector):
        _check(node.vector_selector, depth + 1)
        return
    if isinstance(node, pp.SubqueryExpr | pp.ParenExpr | pp.UnaryExpr):
        _check(node.expr, depth + 1)


def matchers(selector: Any) -> list[Matcher]:
    """A vector selector's matchers, its metric name as ``__name__ =``."""
    found = [Matcher("__name__", "=", selector.name)] if selector.name else []
    found += [Matcher(m.name, _OPS[str(m.op)], m.value) for m in selector.matchers.matchers]
    return found


def parse_selector(text: str) -> list[Matcher]:
    """The matchers of a series selector (``match[]`` of /series, /labels and label values)."""
    tree = parse(text)
    if not isinstance(tree, pp.VectorSelector):
        raise PromQLError(f"parse error: expected a series selector, got {text[:100]!r}")
    if tree.offset is not None or tree.at is not None:
        raise PromQLError("parse error: a series selector takes no offset or @ modifier")
    return matchers(tree)


def seconds(duration: timedelta | None) -> float:
    return 0.0 if duration is None else duration.total_seconds()


__all__ = ["AGGREGATIONS", "FUNCTIONS", "matchers", "parse", "parse_selector", "seconds"]

"""PromQL evaluation with Prometheus 2.42's semantics, every step of a range query at once.

Why one file of about 800 lines: the evaluator is one recursive walk over the node types of the
syntax tree, and every node shares the same step grid, lookback and vector matching; split by node
kind, each part would need all of them. The functions (functions.py), the values (model.py) and the
reads (storage.py, buckets.py) are apart.

A range query is, by Prometheus' definition, one instant query per step; here each node of the
syntax tree is evaluated once for all steps, as (series x steps) arrays (api/promql/model.py), so
that no Python code runs per sample or per step. Python loops run per node, per distinct label
set (matching, grouping) and, for ``holt_winters``, per position in a window.

What Prometheus defines and this module follows:

- An instant selector takes, at each step, the newest sample in ``[t - 5m, t]`` (both edges
  included in 2.x); a range ``[r]`` takes the samples in ``[t - r, t]``. ``offset`` moves ``t``
  back; ``@`` pins it (``start()``/``end()``: the query's).
- A subquery ``expr[r:s]`` evaluates ``expr`` at multiples of ``s`` (default: 1 minute, Prometheus'
  default evaluation interval) and hands those values to its function as samples.
- Binary operators: arithmetic and ``atan2`` drop the metric name; comparisons filter (or answer
  0/1 with ``bool``, dropping the name); vector matching on all labels but the name, or ``on`` /
  ``ignoring``, one-to-one unless ``group_left``/``group_right``, with Prometheus' errors for
  duplicate matches; ``and``/``or``/``unless`` per step.
- Aggregations by/without, with ``topk``/``bottomk``/``quantile``/``count_values`` parameters
  evaluated per step.

Functions over values are in api/promql/functions.py; reading samples in api/promql/storage.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
import promql_parser as pp
from psycopg import AsyncConnection

from fleetpulse.api import tiers
from fleetpulse.api.promql import buckets, fleetseries, functions
from fleetpulse.api.promql.errors import PromQLError
from fleetpulse.api.promql.model import (
    Labels,
    RangeSamples,
    Scalar,
    String,
    Vector,
    format_value,
    key,
    merge_same_labels,
    without_name,
)
from fleetpulse.api.promql.parser import matchers, parse, seconds
from fleetpulse.api.promql.storage import Reader, raw_horizon_us
from fleetpulse.api.selectors import LABEL_NAME, MAX_MATCHED_SERIES, labels_of
from fleetpulse.api.tiers import TIER_SPACING_S

LOOKBACK_US = 300_000_000
DEFAULT_SUBQUERY_STEP_US = 60_000_000
US = 1_000_000

_ARITHMETIC = {"+", "-", "*", "/", "%", "^", "atan2"}
_COMPARISON = {"==", "!=", ">", "<", ">=", "<="}
_SET = {"and", "or", "unless"}
Value: TypeAlias = Scalar | Vector | String


@dataclass
class Range:
    """A range vector as a function's argument: its samples, and each step's window
    ``[ref_us - range_us, ref_us]``."""

    samples: RangeSamples
    ref_us: np.ndarray  # (T,)
    range_us: int
    selector: Any  # the MatrixSelector's vector selector (absent_over_time's labels), or None


@dataclass
class Query:
    """What every node of one query shares: the outer query's start and end (``@ start()``),
    the reader (and its tier)."""

    start_us: int
    end_us: int
    reader: Reader


class Evaluator:
    def __init__(self, query: Query, times_us: np.ndarray) -> None:
        self.query = query
        self.times_us = times_us  # this evaluation's steps: the query's, or a subquery's

    @property
    def steps(self) -> int:
        return len(self.times_us)

    def scalar(self, value: float) -> Scalar:
        return Scalar(np.full(self.steps, value, dtype=np.float64))

    # -- dispatch ---------------------------------------------------------------------------

    async def eval(self, node: Any) -> Value:
        if isinstance(node, pp.NumberLiteral):
            return self.scalar(node.val)
        if isinstance(node, pp.StringLiteral):
            return String(node.val)
        if isinstance(node, pp.ParenExpr):
            return await self.eval(node.expr)
        if isinstance(node, pp.UnaryExpr):
            inner = await self.eval(node.expr)
            if isinstance(inner, Scalar):
                return Scalar(-inner.values)
            assert isinstance(inner, Vector)
            return Vector(inner.labels, -inner.values, inner.present).drop_name()
        if isinstance(node, pp.VectorSelector):
            return await self.instant_selector(node)
        if isinstance(node, pp.MatrixSelector | pp.SubqueryExpr):
            raise PromQLError(
                "a range vector is only an argument of a function here (or the whole of an "
                "instant query)"
            )
        if isinstance(node, pp.Call):
            return await self.call(node)
        if isinstance(node, pp.AggregateExpr):
            return await self.aggregate(node)
        if isinstance(node, pp.BinaryExpr):
            return await self.binary(node)
        raise PromQLError(f"unsupported expression {type(node).__name__}")

    # -- selectors --------------------------------------------------------------------------

    def refs(self, offset: Any, at: Any) -> np.ndarray:
        """Each step's reference time of a selector or subquery, after ``@`` and ``offset``."""
        if at is not None:
            if at.type == pp.AtModifierType.Start:
                pinned = self.query.start_us
            elif at.type == pp.AtModifierType.End:
                pinned = self.query.end_us
            else:
                pinned = round(at.at.timestamp() * US)
            base = np.full(self.steps, pinned, dtype=np.int64)
        else:
            base = self.times_us
        return base - round(seconds(offset) * US)

    async def samples(self, selector: Any, lo_us: int, hi_us: int) -> RangeSamples:
        series, index, ts, values = await self.query.reader.fetch(matchers(selector), lo_us, hi_us)
        return RangeSamples(
            [labels_of(s) for s in series], index, ts, values, lo_us, hi_us - lo_us + 1
        )

    async def lookback_los(self, ref: np.ndarray) -> np.ndarray:
        """Each step's lookback start: 5 minutes back, widened by two of the stand-in tier's
        buckets where the lookback reaches before the raw horizon (storage.py: one sample per
        bucket there)."""
        reader = self.query.reader
        base = ref - LOOKBACK_US
        widened = base - round(2 * TIER_SPACING_S[reader.tier] * US)
        return np.where(base < await reader.horizon_us(), widened, base)

    async def instant_selector(self, node: Any) -> Vector:
        ref = self.refs(node.offset, node.at)
        lo = await self.lookback_los(ref)
        if len(ref) == 1:  # one step (an instant query, a rule): each series' newest sample
            lo_us, hi_us = int(lo[0]), int(ref[0])
            found = await self.query.reader.fetch_latest(matchers(node), lo_us, hi_us)
            series, index, ts, values = found
            samples = RangeSamples(
                [labels_of(s) for s in series], index, ts, values, lo_us, hi_us - lo_us + 1
            )
            return select_instant(samples, lo, ref)
        samples = await self.samples(node, int(lo.min()), int(ref.max()))
        return select_instant(samples, lo, ref)

    async def range_of(self, node: Any) -> Range:
        if isinstance(node, pp.ParenExpr):
            return await self.range_of(node.expr)
        if isinstance(node, pp.MatrixSelector):
            selector = node.vector_selector
            ref = self.refs(selector.offset, selector.at)
            range_us = round(seconds(node.range) * US)
            samples = await self.samples(selector, int(ref.min()) - range_us, int(ref.max()))
            return Range(samples, ref, range_us, selector)
        if isinstance(node, pp.SubqueryExpr):
            return await self.subquery(node)
        raise PromQLError(f"expected a range vector, got {type(node).__name__}")

    async def subquery(self, node: Any) -> Range:
        ref = self.refs(node.offset, node.at)
        range_us = round(seconds(node.range) * US)
        step_us = round(seconds(node.step) * US) if node.step else DEFAULT_SUBQUERY_STEP_US
        first = int(ref.min()) - range_us
        first = -(-first // step_us) * step_us  # the first multiple of the step at or after
        inner_times = np.arange(first, int(ref.max()) + 1, step_us, dtype=np.int64)
        inner = Evaluator(self.query, inner_times)
        value = await inner.eval(node.expr)
        if isinstance(value, Scalar):
            value = Vector([{}], value.values[None, :], np.ones((1, len(inner_times)), bool))
        if not isinstance(value, Vector):
            raise PromQLError("a subquery needs an instant vector or a scalar")
        rows, cols = np.nonzero(value.present)  # row-major: sorted by (series, time)
        lo = first - step_us
        samples = RangeSamples(
            value.labels,
            rows.astype(np.int64),
            inner_times[cols],
            value.values[rows, cols],
            lo,
            int(ref.max()) - lo + 1,
        )
        return Range(samples, ref, range_us, None)

    # -- functions --------------------------------------------------------------------------

    async def call(self, node: Any) -> Value:
        name = node.func.name
        args = node.args
        if name == "time":
            return Scalar(self.times_us / US)
        if name == "pi":
            return self.scalar(math.pi)
        if name == "vector":
            s = await self.eval(args[0])
            assert isinstance(s, Scalar)
            return Vector([{}], s.values[None, :].copy(), np.ones((1, self.steps), bool))
        if name == "scalar":
            v = await self.eval(args[0])
            assert isinstance(v, Vector)
            count = v.present.sum(axis=0)
            only = np.where(v.present, v.values, 0.0).sum(axis=0)
            return Scalar(np.where(count == 1, only, np.nan))
        if name in ("sort", "sort_desc"):
            v = await self.eval(args[0])
            assert isinstance(v, Vector)
            return sort_vector(v, descending=name == "sort_desc")
        if name == "absent":
            v = await self.eval(args[0])
            assert isinstance(v, Vector)
            return self.absent(~v.present.any(axis=0), args[0])
        if name == "absent_over_time":
            r = await self.range_of(args[0])
            lo, hi = r.samples.windows(r.ref_us - r.range_us, r.ref_us)
            return self.absent(~(hi > lo).any(axis=0), r.selector)
        if any(_is_range(a) for a in args):
            return await self.range_call(name, args)
        values = [await self.eval(a) for a in args]
        return functions.instant_function(name, values, self.times_us)

    async def range_call(self, name: str, args: list[Any]) -> Vector:
        if name in buckets.BUCKETED:
            exact = await self.bucketed(name, args[0])
            if exact is not None:
                return exact
        params: list[np.ndarray] = []
        found: Range | None = None
        for arg in args:
            if _is_range(arg):
                found = await self.range_of(arg)
            else:
                value = await self.eval(arg)
                if not isinstance(value, Scalar):
                    raise PromQLError(f"{name}: expected a scalar argument")
                params.append(value.values)
        assert found is not None
        values, present = functions.range_function(
            name, found.samples, found.ref_us, found.range_us, params, eval_us=self.times_us
        )
        result = Vector(list(found.samples.labels), values, present)
        # 2.42 keeps the metric name for last_over_time only (it acts like an offset)
        return result if name == "last_over_time" else result.drop_name()

    async def bucketed(self, name: str, arg: Any) -> Vector | None:
        """``name`` over a matrix selector from the tiers' buckets where that is exact
        (api/promql/buckets.py), else None."""
        while isinstance(arg, pp.ParenExpr):
            arg = arg.expr
        if not isinstance(arg, pp.MatrixSelector):
            return None
        selector = arg.vector_selector
        ref = self.refs(selector.offset, selector.at)
        range_us = round(seconds(arg.range) * US)
        reader = self.query.reader
        tier = tiers.for_windows(ref, range_us, await raw_horizon_us(reader.conn))
        if tier is None:
            return None
        series = await reader.series(matchers(selector))
        if not series or fleetseries.virtual(series):  # the platform's own have no tiers
            return None
        found = await reader.buckets(series, tier, int(ref.min()) - range_us, int(ref.max()))
        if found is None:
            return None
        edge = await reader.samples_at(series, ref)
        answer = buckets.over_time(name, found, ref, range_us, edge)
        if answer is None:
            return None
        values, present = answer
        return Vector([labels_of(s) for s in series], values, present).drop_name()

    def absent(self, missing: np.ndarray, selector: Any) -> Vector:
        labels: Labels = {}
        if isinstance(selector, pp.ParenExpr):
            selector = None
        if isinstance(selector, pp.MatrixSelector):
            selector = selector.vector_selector
        if isinstance(selector, pp.VectorSelector):
            seen: dict[str, int] = {}
            for m in matchers(selector):
                seen[m.key] = seen.get(m.key, 0) + 1
                if m.op == "=" and m.key != "__name__":
                    labels[m.key] = m.value
            labels = {k: v for k, v in labels.items() if seen[k] == 1}
        values = np.where(missing, 1.0, np.nan)[None, :]
        return Vector([labels], values, missing[None, :].copy())

    # -- aggregation ------------------------------------------------------------------------

    async def aggregate(self, node: Any) -> Vector:
        op = str(node.op)
        param: Scalar | String | None = None
        if node.param is not None:
            value = await self.eval(node.param)
            if isinstance(value, Vector):
                raise PromQLError(f"{op}: the parameter must be a scalar")
            param = value
        inner = await self.eval(node.expr)
        if not isinstance(inner, Vector):
            raise PromQLError(f"{op}: expected an instant vector")
        by: list[str] | None = None
        without: list[str] | None = None
        if node.modifier is not None:
            if node.modifier.type == pp.AggModifierType.By:
                by = list(node.modifier.labels)
            else:
                without = list(node.modifier.labels)
        return aggregate(op, inner, by, without, param)

    # -- binary operators -------------------------------------------------------------------

    async def binary(self, node: Any) -> Value:
        op = str(node.op)
        lhs, rhs = await self.eval(node.lhs), await self.eval(node.rhs)
        modifier = node.modifier
        return_bool = bool(modifier is not None and modifier.return_bool)
        if isinstance(lhs, Scalar) and isinstance(rhs, Scalar):
            value, keep = apply_op(op, lhs.values, rhs.values)
            return Scalar(keep.astype(np.float64) if op in _COMPARISON else value)
        if isinstance(lhs, Vector) and isinstance(rhs, Vector):
            return vector_binary(op, lhs, rhs, modifier, return_bool)
        if isinstance(lhs, Vector) and isinstance(rhs, Scalar):
            return vector_scalar(op, lhs, rhs.values[None, :], return_bool, swap=False)
        if isinstance(lhs, Scalar) and isinstance(rhs, Vector):
            return vector_scalar(op, rhs, lhs.values[None, :], return_bool, swap=True)
        raise PromQLError(f"operator {op!r} is not defined on strings")


def _is_range(node: Any) -> bool:
    while isinstance(node, pp.ParenExpr):
        node = node.expr
    return isinstance(node, pp.MatrixSelector | pp.SubqueryExpr)


def select_instant(samples: RangeSamples, lo_us: np.ndarray, hi_us: np.ndarray) -> Vector:
    """Each (series, step)'s newest sample in ``[lo_us, hi_us]``."""
    steps = len(hi_us)
    if not len(samples.ts_us):
        labels = samples.labels
        return Vector(
            labels, np.full((len(labels), steps), np.nan), np.zeros((len(labels), steps), bool)
        )
    lo, hi = samples.windows(lo_us, hi_us)
    present = hi > lo
    last = np.clip(hi - 1, 0, len(samples.ts_us) - 1)
    return Vector(
        samples.labels,
        np.where(present, samples.values[last], np.nan),
        present,
        np.where(present, samples.ts_us[last], 0),
    )


def sort_vector(v: Vector, descending: bool) -> Vector:
    """Rows ordered by the first step's value (what an instant query shows); NaN last."""
    if not len(v.labels) or v.values.shape[1] != 1:
        return v
    column = v.values[:, 0]
    nan = np.isnan(column)
    order = np.lexsort((-column if descending else column, nan))
    return v.take(order)


# -- operators ---------------------------------------------------------------------------------


def apply_op(op: str, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Go's float semantics: the value, and whether a comparison holds (all True otherwise)."""
    with np.errstate(all="ignore"):
        if op == "+":
            value = a + b
        elif op == "-":
            value = a - b
        elif op == "*":
            value = a * b
        elif op == "/":
            value = np.true_divide(a, b)
        elif op == "%":
            value = np.fmod(a, b)  # Go's math.Mod: the sign of the dividend
        elif op == "^":
            value = np.power(a, b)
        elif op == "atan2":
            value = np.arctan2(a, b)
        else:
            compare = {
                "==": np.equal,
                "!=": np.not_equal,
                ">": np.greater,
                "<": np.less,
                ">=": np.greater_equal,
                "<=": np.less_equal,
            }[op]
            return np.broadcast_to(a, np.broadcast(a, b).shape).astype(np.float64), compare(a, b)
    return value, np.ones(value.shape, bool)


def vector_scalar(op: str, v: Vector, s: np.ndarray, return_bool: bool, swap: bool) -> Vector:
    if op in _SET:
        raise PromQLError(f"set operator {op!r} not allowed in binary scalar expression")
    a, b = (s, v.values) if swap else (v.values, s)
    value, keep = apply_op(op, a, b)
    if op in _COMPARISON:
        value = np.broadcast_to(v.values, value.shape)  # the vector's value, whichever side
        if return_bool:
            out = Vector(v.labels, np.where(keep, 1.0, 0.0), v.present.copy())
            return out.drop_name()
        present = v.present & keep
        return Vector(v.labels, np.where(present, value, np.nan), present, v.sample_us)
    return Vector(v.labels, value, v.present.copy()).drop_name()


def _signature(labels: Labels, on: bool, names: list[str]) -> tuple[tuple[str, str], ...]:
    if on:
        return tuple((n, labels.get(n, "")) for n in sorted(set(names)) if labels.get(n, ""))
    dropped = {"__name__", *names}
    return key({k: v for k, v in labels.items() if k not in dropped})


def _groups(labels: list[Labels], on: bool, names: list[str]) -> tuple[np.ndarray, list[Any]]:
    sigs = [_signature(lab, on, names) for lab in labels]
    order: dict[Any, int] = {}
    return np.array([order.setdefault(s, len(order)) for s in sigs], dtype=np.int64), list(order)


def vector_binary(op: str, lhs: Vector, rhs: Vector, modifier: Any, return_bool: bool) -> Vector:
    matching = modifier.matching if modifier is not None else None
    on = bool(matching is not None and matching.type == pp.LabelModifierType.Include)
    names = list(matching.labels) if matching is not None else []
    steps = lhs.values.shape[1]
    # one signature space for both sides
    sigs_l = [_signature(lab, on, names) for lab in lhs.labels]
    sigs_r = [_signature(lab, on, names) for lab in rhs.labels]
    space: dict[Any, int] = {}
    g_l = np.array([space.setdefault(s, len(space)) for s in sigs_l], dtype=np.int64)
    g_r = np.array([space.setdefault(s, len(space)) for s in sigs_r], dtype=np.int64)
    n_groups = len(space)

    def any_present(groups: np.ndarray, present: np.ndarray) -> np.ndarray:
        out = np.zeros((n_groups, steps), bool)
        if len(groups):
            np.logical_or.at(out, groups, present)
        return out

    if op in _SET:
        if op == "or":
            in_l = any_present(g_l, lhs.present)
            rhs_kept = rhs.present & ~in_l[g_r] if len(g_r) else rhs.present
            both = Vector(
                lhs.labels + rhs.labels,
                np.concatenate(
                    [
                        np.where(lhs.present, lhs.values, np.nan),
                        np.where(rhs_kept, rhs.values, np.nan),
                    ]
                ),
                np.concatenate([lhs.present, rhs_kept]),
            )
            return merge_same_labels(both)
        in_r = any_present(g_r, rhs.present)
        hit = in_r[g_l] if len(g_l) else np.zeros_like(lhs.present)
        present = lhs.present & (hit if op == "and" else ~hit)
        return Vector(lhs.labels, np.where(present, lhs.values, np.nan), present, lhs.sample_us)

    card = modifier.card if modifier is not None else pp.VectorMatchCardinality.OneToOne
    include = list(modifier.group_labels or []) if modifier is not None else []
    one_to_many = card == pp.VectorMatchCardinality.OneToMany
    many, one = (rhs, lhs) if one_to_many else (lhs, rhs)
    g_many, g_one = (g_r, g_l) if one_to_many else (g_l, g_r)
    # the "one" side: at most one present series per signature and step
    count_one = np.zeros((n_groups, steps), np.int64)
    if len(g_one):
        np.add.at(count_one, g_one, one.present.astype(np.int64))
    if (count_one > 1).any():
        g, t = np.argwhere(count_one > 1)[0]
        dupes = [one.labels[i] for i in np.flatnonzero((g_one == g) & one.present[:, t])[:2]]
        side = "left" if one_to_many else "right"
        raise PromQLError(
            f"found duplicate series for the match group {_fmt(dict(list(space)[g]))} on the "
            f"{side} hand-side of the operation: [{_fmt(dupes[0])}, {_fmt(dupes[1])}];"
            "many-to-many matching not allowed: matching labels must be unique on one side",
            "execution",
        )
    row_of = np.full((n_groups, steps), -1, np.int64)
    if len(g_one):
        r, t = np.nonzero(one.present)
        row_of[g_one[r], t] = r
    matched = row_of[g_many] if len(g_many) else np.full((0, steps), -1, np.int64)
    valid = many.present & (matched >= 0)
    cols = np.broadcast_to(np.arange(steps), matched.shape)
    one_values = np.where(
        valid, one.values[np.maximum(matched, 0), cols] if len(one.labels) else np.nan, np.nan
    )
    a, b = (one_values, many.values) if one_to_many else (many.values, one_values)
    value, keep = apply_op(op, a, b)
    if op in _COMPARISON:
        if return_bool:
            value = np.where(keep, 1.0, 0.0)
        else:
            valid = valid & keep
    # one-to-one: a signature matched by two series of the "many" side at one step
    if card == pp.VectorMatchCardinality.OneToOne:
        count_many = np.zeros((n_groups, steps), np.int64)
        if len(g_many):
            np.add.at(count_many, g_many, valid.astype(np.int64))
        if (count_many > 1).any():
            raise PromQLError(
                "multiple matches for labels: many-to-one matching must be explicit "
                "(group_left/group_right)",
                "execution",
            )
    # one output series per (many row, one row) pair that occurs
    m_rows, t_idx = np.nonzero(valid)
    o_rows = matched[m_rows, t_idx]
    pairs, inverse = np.unique(m_rows * max(1, len(one.labels)) + o_rows, return_inverse=True)
    drop_name = op in _ARITHMETIC or return_bool
    labels = []
    for pair in pairs.tolist():
        m, o = divmod(pair, max(1, len(one.labels)))
        labels.append(
            _result_labels(many.labels[m], one.labels[o], drop_name, card, on, names, include)
        )
    values = np.full((len(pairs), steps), np.nan)
    present = np.zeros((len(pairs), steps), bool)
    values[inverse, t_idx] = value[m_rows, t_idx]
    present[inverse, t_idx] = True
    out = Vector(labels, values, present)
    try:
        return merge_same_labels(out)
    except PromQLError:
        if card == pp.VectorMatchCardinality.OneToOne:
            raise
        raise PromQLError(
            "multiple matches for labels: grouping labels must ensure unique matches", "execution"
        ) from None


def _result_labels(
    many: Labels,
    one: Labels,
    drop_name: bool,
    card: Any,
    on: bool,
    names: list[str],
    include: list[str],
) -> Labels:
    out = dict(many)
    if drop_name:
        out.pop("__name__", None)
    if card == pp.VectorMatchCardinality.OneToOne:
        if on:
            out = {k: v for k, v in out.items() if k in names}
        else:
            out = {k: v for k, v in out.items() if k not in names}
    for name in include:
        if one.get(name, ""):
            out[name] = one[name]
        else:
            out.pop(name, None)
    return out


def _fmt(labels: Labels) -> str:
    return "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


# -- aggregation -------------------------------------------------------------------------------


def _grouping(labels: Labels, by: list[str] | None, without: list[str] | None) -> Labels:
    if by is not None:
        return {n: labels[n] for n in by if labels.get(n, "")}
    if without is not None:
        dropped = {"__name__", *without}
        return {k: v for k, v in labels.items() if k not in dropped}
    return {}


def aggregate(
    op: str,
    v: Vector,
    by: list[str] | None,
    without: list[str] | None,
    param: Scalar | String | None,
) -> Vector:
    steps = v.values.shape[1]
    group_labels: list[Labels] = []
    order: dict[Any, int] = {}
    groups = []
    for lab in v.labels:
        g = _grouping(lab, by, without)
        k = key(g)
        if k not in order:
            order[k] = len(order)
            group_labels.append(g)
        groups.append(order[k])
    group = np.array(groups, dtype=np.int64)
    shape = (len(order), steps)
    present = v.present
    values = np.where(present, v.values, np.nan)
    if op in ("topk", "bottomk"):
        assert isinstance(param, Scalar)
        bad = ~np.isfinite(param.values) | (np.abs(param.values) >= 2.0**63)
        if bad.any():
            raise PromQLError(
                f"Scalar value {format_value(float(param.values[bad][0]))} overflows int64",
                "execution",
            )
        return _top(v, group, param.values, op == "topk")
    if op == "count_values":
        assert isinstance(param, String)
        if not LABEL_NAME.fullmatch(param.value):
            raise PromQLError(f'invalid label name "{param.value}"', "execution")
        return _count_values(v, group, group_labels, param.value)
    counts = np.zeros(shape)
    if len(group):
        np.add.at(counts, group, present.astype(np.float64))
    if op in ("sum", "avg", "stddev", "stdvar"):
        total = np.zeros(shape)
        if len(group):
            np.add.at(total, group, np.where(present, v.values, 0.0))
        if op == "sum":
            out = total
        else:
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = total / counts
                if op == "avg":
                    out = mean
                else:
                    deviation = (
                        np.where(present, v.values - mean[group], 0.0)
                        if len(group)
                        else np.zeros((0, steps))
                    )
                    squares = np.zeros(shape)
                    if len(group):
                        np.add.at(squares, group, deviation**2)
                    out = squares / counts
                    if op == "stddev":
                        out = np.sqrt(out)
    elif op == "count":
        out = counts.copy()
    elif op == "group":
        out = np.ones(shape)
    elif op in ("min", "max"):
        out = np.full(shape, np.nan)
        if len(group):
            (np.fmin if op == "min" else np.fmax).at(out, group, values)
    elif op == "quantile":
        assert isinstance(param, Scalar)
        out = _quantile(values, present, group, shape, param.values)
    else:
        raise PromQLError(f"unknown aggregation {op!r}")
    result_present = counts > 0
    return Vector(group_labels, np.where(result_present, out, np.nan), result_present)


def _top(v: Vector, group: np.ndarray, k: np.ndarray, top: bool) -> Vector:
    """Per group and step the k largest (smallest) values; NaN is chosen last."""
    steps = v.values.shape[1]
    rows, cols = np.nonzero(v.present)
    if not len(rows):
        return Vector.empty(steps)
    kk = np.where(np.isnan(k), 0, np.clip(np.nan_to_num(k), -1, 2**31)).astype(np.int64)
    vals = v.values[rows, cols]
    g = group[rows]
    order = np.lexsort((-vals if top else vals, np.isnan(vals), g, cols))
    rows, cols, g = rows[order], cols[order], g[order]
    cell = cols * (int(group.max()) + 1) + g  # ascending: sorted by step, then group
    rank = np.arange(len(cell)) - np.searchsorted(cell, cell, side="left")
    pick = rank < kk[cols]
    chosen = np.zeros(v.present.shape, bool)
    chosen[rows[pick], cols[pick]] = True
    keep = chosen.any(axis=1)
    return Vector(
        [v.labels[i] for i in np.flatnonzero(keep).tolist()],
        np.where(chosen, v.values, np.nan)[keep],
        chosen[keep],
    )


def _quantile(
    values: np.ndarray,
    present: np.ndarray,
    group: np.ndarray,
    shape: tuple[int, int],
    q: np.ndarray,
) -> np.ndarray:
    """Per group and step, Prometheus' quantile of the present values (functions.quantile_sorted:
    NaN sorts first, as Go's comparison puts it)."""
    out = np.full(shape, np.nan)
    rows, cols = np.nonzero(present)
    if not len(rows):
        return out
    g = group[rows]
    vals = values[rows, cols]
    order = np.lexsort((vals, ~np.isnan(vals), g, cols))  # by step, group, NaN first, value
    cell = (cols * shape[0] + g)[order]
    first = np.flatnonzero(np.concatenate(([True], cell[1:] != cell[:-1])))
    counts = np.diff(np.append(first, len(cell)))
    c_cols, c_g = cols[order][first], g[order][first]
    out[c_g, c_cols] = functions.quantile_sorted(vals[order], first, counts, q[c_cols])
    return out


def _count_values(v: Vector, group: np.ndarray, group_labels: list[Labels], name: str) -> Vector:
    steps = v.values.shape[1]
    rows, cols = np.nonzero(v.present)
    if not len(rows):
        return Vector.empty(steps)
    vals = v.values[rows, cols]
    # one label per (group, distinct value): each value formatted once, not once per sample
    bits = np.where(np.isnan(vals), np.nan, vals).view(np.int64)  # one NaN, -0 apart from 0
    pairs, out_idx = np.unique(np.stack([group[rows], bits], axis=1), axis=0, return_inverse=True)
    out_idx = out_idx.ravel()
    cells = [(g, format_value(float(np.int64(b).view(np.float64)))) for g, b in pairs.tolist()]
    counts = np.zeros((len(cells), steps))
    np.add.at(counts, (out_idx, cols), 1.0)
    labels = [{**group_labels[g], name: text} for g, text in cells]
    present = counts > 0
    return merge_same_labels(Vector(labels, np.where(present, counts, np.nan), present))


# -- the query ---------------------------------------------------------------------------------


def _ranges_and_steps(node: Any) -> tuple[list[float], list[float]]:
    """Every range (matrix selectors, subqueries) and subquery step in the tree."""
    ranges: list[float] = []
    steps: list[float] = []

    def visit(n: Any) -> None:
        if isinstance(n, pp.MatrixSelector):
            ranges.append(seconds(n.range))
        elif isinstance(n, pp.SubqueryExpr):
            ranges.append(seconds(n.range))
            steps.append(seconds(n.step) if n.step else DEFAULT_SUBQUERY_STEP_US / US)
        for child in ("expr", "lhs", "rhs", "param", "vector_selector"):
            sub = getattr(n, child, None)
            if sub is not None and not isinstance(sub, str | float | int):
                visit(sub)
        for arg in getattr(n, "args", None) or []:
            visit(arg)

    visit(node)
    return ranges, steps


@dataclass
class Result:
    value: Value | Range
    times_us: np.ndarray


async def evaluate(
    conn: AsyncConnection[Any],
    text: str,
    start: float,
    end: float,
    step: float,
    instant: bool,
    resolution: float = 0.0,
    liveness: dict[str, Any] | None = None,
    max_series: int = MAX_MATCHED_SERIES,
) -> Result:
    """Evaluate ``text`` at ``start``, ``start + step``, ... ``end``. An instant query may answer
    a range vector (a matrix of raw samples); a range query may not. ``resolution``: the
    coarsest rollup tier the query may read instead of raw points (0: none, as Prometheus).
    ``liveness``: the platform's liveness parameters (fleetpulse/liveness.py `params`), for the
    agents' own series (api/promql/fleetseries.py); the defaults' when not given. ``max_series``:
    how many stored series one selector may match."""
    tree = parse(text)
    start_us, end_us = round(start * US), round(end * US)
    step_us = max(1, round(step * US))
    times = np.arange(start_us, end_us + 1, step_us, dtype=np.int64)
    ranges, steps = _ranges_and_steps(tree)
    tier, downsample = tiers.stand_in(None if instant else step, ranges, steps, resolution)
    query = Query(start_us, end_us, Reader(conn, tier, downsample, liveness, max_series))
    evaluator = Evaluator(query, times)
    if _is_range(tree):
        if not instant:
            raise PromQLError(
                'invalid expression type "range vector" for range query, must be Scalar or '
                "instant Vector"
            )
        return Result(await evaluator.range_of(tree), times)
    value = await evaluator.eval(tree)
    if isinstance(value, String) and not instant:
        raise PromQLError(
            'invalid expression type "string" for range query, must be Scalar or instant Vector'
        )
    return Result(value, times)


__all__ = ["Range", "Result", "evaluate", "without_name"]

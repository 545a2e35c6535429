"""Every PromQL function of Prometheus 2.42 (native histograms aside), over all steps at once.

Why: a dashboard built for Prometheus must get Prometheus' numbers, so each function here follows
2.42's Go code (promql/functions.go, quantile.go, and Go's math and time packages underneath) down
to its order of floating-point operations, its NaN and Inf cases, the samples it needs (``rate``
answers nothing from one sample) and its error texts, rather than the textbook formula. Checked
against a real Prometheus 2.42 on random data, results agree to the bit (``exp`` and what is built
on it aside: Go picks an FMA code path by CPU). The evaluator (engine.py) calls two entry points:

- `range_function` for the functions of a range vector (``rate(x[5m])``, ``*_over_time``...):
  every (series, step) window at once. Windows are positions in the (series, time)-sorted samples
  of a `RangeSamples`; what reduces them depends on what Prometheus computes, and so does the cost:

  - counts, changes, resets, last sample, irate: a prefix sum or a gather, O(samples + S x T);
  - min/max: one ``ufunc.reduceat`` over every window, O(total window sizes);
  - rate/increase: O(S x T), plus the counter drops Go adds one after the other (their order
    matters with mixed magnitudes): at once for windows with one drop, walked for windows with more;
  - sums, means, variances, regressions (deriv, predict_linear) and holt_winters: Go runs a
    sequential recurrence (Kahan-Neumaier sums, Welford's variance, double exponential smoothing)
    whose rounding decides the last digits, so it is replayed exactly: one Python iteration per
    position inside a window, each a few numpy operations over every window that long. That is
    O(total window sizes) work plus O(longest window) Python steps of some 20 us;
  - quantile_over_time: every window's samples copied out and sorted, O(n log n) time and O(n)
    memory in the total window sizes.

- `instant_function` for the functions of instant vectors (math, dates, clamp, round, timestamp,
  label_replace/label_join, histogram_quantile): elementwise over (series, step) arrays; the label
  functions loop once per label set, histogram_quantile once per bucket position, never per step.

Go's regular expressions (RE2 syntax, used by label_replace) are not Python's: `compile_re2`
parses RE2 syntax itself, refuses what Go refuses (backreferences, lookarounds, ``\\Z``, repeat
counts over 1000...) and emits an equivalent Python pattern (ASCII ``\\d\\w\\s\\b``, ``$`` as end of
text, ``(?U)``, ``\\Q...\\E``, POSIX classes, Go's case folding). Unicode script classes
(``\\p{Greek}``) are the one RE2 feature refused (bad_data): Python has no script table. Python's
matcher backtracks where Go's is linear: a pathological regex on a long label value is slow.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache

import numpy as np

from fleetpulse.api.promql.errors import PromQLError
from fleetpulse.api.promql.model import (
    Labels,
    RangeSamples,
    Scalar,
    String,
    Vector,
    gather,
    key,
    without_name,
)

# -- the function tables -------------------------------------------------------------------------

RANGE_FUNCTIONS = frozenset(
    """rate increase delta irate idelta deriv predict_linear holt_winters changes resets
    avg_over_time min_over_time max_over_time sum_over_time count_over_time last_over_time
    present_over_time stddev_over_time stdvar_over_time quantile_over_time""".split()  # noqa: SIM905
)
# Range functions whose result keeps the series' __name__ (all others drop it), as 2.42.
KEEPS_METRIC_NAME = frozenset({"last_over_time"})

_MATH = frozenset(
    """abs ceil floor exp sqrt ln log2 log10 sgn acos acosh asin asinh atan atanh cos cosh sin
    sinh tan tanh deg rad""".split()  # noqa: SIM905
)
_DATES = frozenset(
    "day_of_month day_of_week day_of_year days_in_month hour minute month year".split()  # noqa: SIM905
)
INSTANT_FUNCTIONS = (
    _MATH
    | _DATES
    | frozenset(
        """round clamp clamp_min clamp_max timestamp label_replace label_join
        histogram_quantile""".split()  # noqa: SIM905
    )
)

_US = 1_000_000  # microseconds per second


def range_function(
    name: str,
    samples: RangeSamples,
    ref_us: np.ndarray,
    range_us: int,
    params: list[np.ndarray],
    *,
    eval_us: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``name`` over the windows ``[ref_us - range_us, ref_us]`` (both edges, as 2.x) of every
    series and step: ``(values, present)``, both (S, T). ``params`` are the scalar arguments
    besides the range vector, each (T,), in call order. ``eval_us`` is the steps' own evaluation
    time (before offset and @): only predict_linear reads it, because 2.42 anchors its intercept
    there, not at the window's end; it defaults to ``ref_us``."""
    if name not in RANGE_FUNCTIONS:
        raise PromQLError(f"unknown range function {name}()")
    ref_us = np.asarray(ref_us, dtype=np.int64)
    steps = len(ref_us)
    lo, hi = samples.windows(ref_us - range_us, ref_us)
    count = hi - lo
    shape = (len(samples.labels), steps)
    wanted = {"quantile_over_time": 1, "predict_linear": 1, "holt_winters": 2}.get(name, 0)
    if len(params) != wanted:
        raise PromQLError(f"{name}() takes {wanted + 1} arguments, got {len(params) + 1}")
    params = [np.broadcast_to(np.asarray(p, dtype=np.float64), (steps,)) for p in params]
    if name == "holt_winters":
        _check_holt_winters(params[0], params[1], count)
    if not len(samples.values) or not count.size:
        return np.full(shape, np.nan), np.zeros(shape, bool)
    v, ts = samples.values, samples.ts_us
    n = len(v)
    first = np.minimum(lo, n - 1)
    last = np.clip(hi - 1, 0, n - 1)
    present = count >= 1
    with np.errstate(all="ignore"):
        if name in ("rate", "increase", "delta"):
            out = _extrapolated(v, ts, lo, hi, ref_us, range_us, name != "delta", name == "rate")
            present = count >= 2
        elif name in ("irate", "idelta"):
            prev = np.clip(hi - 2, 0, n - 1)
            dt = ts[last] - ts[prev]
            if name == "irate":
                out = np.where(v[last] < v[prev], v[last], v[last] - v[prev])
                out = out / (dt / _US)
            else:
                out = v[last] - v[prev]
            present = (count >= 2) & (dt != 0)
        elif name == "count_over_time":
            out = count.astype(np.float64)
        elif name == "present_over_time":
            out = np.ones(shape)
        elif name == "last_over_time":
            out = v[last]
        elif name in ("min_over_time", "max_over_time"):
            # Go keeps the first sample, then takes any greater (smaller) one or replaces a NaN:
            # NaN only if every sample is NaN, which is fmax/fmin.
            ufunc = np.fmax if name == "max_over_time" else np.fmin
            out = _segment_reduce(ufunc, v, lo, hi)
        elif name in ("changes", "resets"):
            if name == "changes":
                flag = (v[1:] != v[:-1]) & ~(np.isnan(v[1:]) & np.isnan(v[:-1]))
            else:
                flag = v[1:] < v[:-1]
            total = np.concatenate(([0], np.cumsum(flag, dtype=np.int64)))
            out = (total[last] - total[first]).astype(np.float64)
        elif name == "quantile_over_time":
            out = _quantile_over_time(v, lo, hi, params[0])
        elif name in ("deriv", "predict_linear"):
            present = count >= 2
            if name == "deriv":
                slope, _ = _linear_regression(v, ts, lo, hi, ts[first], present)
                out = slope
            else:
                at = ref_us if eval_us is None else np.asarray(eval_us, dtype=np.int64)
                at_us = np.broadcast_to(at[None, :], shape)
                slope, intercept = _linear_regression(v, ts, lo, hi, at_us, present)
                out = slope * params[0][None, :] + intercept
        elif name == "holt_winters":
            present = count >= 2
            out = _holt_winters(v, lo, hi, params[0], params[1])
        else:  # sum, avg, stddev, stdvar _over_time
            out = _compensated(name, v, lo, hi)
    return np.where(present, out, np.nan), present


# -- range functions -----------------------------------------------------------------------------


def _segment_reduce(ufunc: np.ufunc, x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """``ufunc.reduce(x[lo:hi])`` for every window (NaN where empty), in one ``reduceat``."""
    n = len(x)
    if not lo.size:
        return np.full(lo.shape, np.nan)
    start = np.minimum(lo.ravel(), n)
    stop = np.minimum(hi.ravel(), n)
    bounds = np.empty(2 * len(start), np.int64)
    bounds[0::2], bounds[1::2] = start, stop
    out = ufunc.reduceat(np.append(x, np.nan), bounds)[0::2]
    return np.where(stop > start, out, np.nan).reshape(lo.shape)


def _extrapolated(
    v: np.ndarray,
    ts: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    ref_us: np.ndarray,
    range_us: int,
    is_counter: bool,
    is_rate: bool,
) -> np.ndarray:
    """2.42's extrapolatedRate (rate, increase, delta): the change from the first to the last
    sample (for counters, plus the value before every drop), extrapolated to each window edge
    that lies within 1.1 average sample intervals of a sample (else by half an interval), a
    counter no further back than where it would reach zero. Needs 2 samples."""
    n = len(v)
    count = hi - lo
    first = np.minimum(lo, n - 1)
    last = np.clip(hi - 1, 0, n - 1)
    first_v = v[first]
    result = v[last] - first_v
    if is_counter:
        # A drop at sample k (k > the window's first) adds the sample before it, one after the
        # other as Go does (the order matters when magnitudes differ): at once for windows with
        # one drop, walking the drops of windows with more.
        drop_at = np.flatnonzero(v[1:] < v[:-1]) + 1
        dropped = v[drop_at - 1]
        d_lo = np.searchsorted(drop_at, lo + 1)
        d_hi = np.maximum(np.searchsorted(drop_at, hi), d_lo)
        drops = d_hi - d_lo
        if len(drop_at):
            result = np.where(
                drops == 1, result + dropped[np.minimum(d_lo, len(drop_at) - 1)], result
            )
        many = drops >= 2
        if many.any():
            walk = _Walk.of(d_lo[many], d_hi[many])
            total = walk.sorted(result[many])
            for _, a, at in walk.positions():
                total[:a] = total[:a] + dropped[at]
            result[many] = walk.unsorted(total)
    range_start = (ref_us - range_us)[None, :]
    to_start = (ts[first] - range_start) / _US
    to_end = (ref_us[None, :] - ts[last]) / _US
    sampled = (ts[last] - ts[first]) / _US
    average = sampled / (count - 1)
    if is_counter:
        to_zero = sampled * (first_v / result)
        to_start = np.where((result > 0) & (first_v >= 0) & (to_zero < to_start), to_zero, to_start)
    threshold = average * 1.1
    interval = sampled + np.where(to_start < threshold, to_start, average / 2)
    interval = interval + np.where(to_end < threshold, to_end, average / 2)
    factor = interval / sampled
    if is_rate:
        factor = factor / _duration_seconds(range_us)
    return result * factor


def _duration_seconds(range_us: int) -> float:
    """Go's ``time.Duration.Seconds()``: whole seconds plus the rest in nanoseconds / 1e9."""
    whole, rest = divmod(int(range_us), _US)
    return float(whole) + float(rest * 1000) / 1e9


@dataclass
class _Walk:
    """Every window's samples by position inside the window, for the recurrences Prometheus runs
    sample by sample: windows sorted longest first, so those still open at position j are a
    prefix ``[:open_at[j]]`` of that order, and the work is the total of the window sizes."""

    order: np.ndarray  # window (flat index) of each sorted slot
    start: np.ndarray  # first sample of each sorted slot
    open_at: np.ndarray  # open_at[j]: how many sorted windows have more than j samples
    shape: tuple[int, ...]

    @classmethod
    def of(cls, lo: np.ndarray, hi: np.ndarray) -> _Walk:
        counts = (hi - lo).ravel()
        order = np.argsort(-counts, kind="stable")
        longest = int(counts[order[0]]) if len(order) else 0
        open_at = np.searchsorted(-counts[order], -np.arange(longest), side="left")
        return cls(order, lo.ravel()[order], open_at, lo.shape)

    def positions(self, begin: int = 0) -> Iterator[tuple[int, int, np.ndarray]]:
        """(j, open windows a, their j-th samples' positions) for j = begin, begin + 1..."""
        for j in range(begin, len(self.open_at)):
            a = int(self.open_at[j])
            yield j, a, self.start[:a] + j

    def sorted(self, per_window: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(per_window.ravel()[self.order])

    def unsorted(self, per_slot: np.ndarray) -> np.ndarray:
        out = np.empty_like(per_slot)
        out[self.order] = per_slot
        return out.reshape(self.shape)


def _kahan_inc(
    inc: np.ndarray, total: np.ndarray, comp: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Prometheus' kahanSumInc (Neumaier's variant), elementwise."""
    t = total + inc
    comp = comp + np.where(np.abs(total) >= np.abs(inc), (total - t) + inc, (inc - t) + total)
    return t, comp


def _compensated(name: str, v: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """sum_over_time (a Kahan sum), avg_over_time (2.42's incremental mean with a Kahan sum and
    its Inf special cases) and stddev/stdvar_over_time (Welford's population variance with Kahan
    sums), replaying Go's recurrences exactly."""
    walk = _Walk.of(lo, hi)
    slots = len(walk.order)
    a_sum, a_comp = np.zeros(slots), np.zeros(slots)  # sum or mean, and its compensation
    b_sum, b_comp = np.zeros(slots), np.zeros(slots)  # the variance's aux sum
    for j, a, at in walk.positions():
        x = v[at]
        s, c = a_sum[:a], a_comp[:a]
        if name == "sum_over_time":
            a_sum[:a], a_comp[:a] = _kahan_inc(x, s, c)
        elif name == "avg_over_time":
            k = float(j + 1)
            keep = np.isinf(s) & (
                (np.isinf(x) & ((s > 0) == (x > 0))) | (~np.isinf(x) & ~np.isnan(x))
            )
            ns, nc = _kahan_inc(x / k - s / k, s, c)
            a_sum[:a], a_comp[:a] = np.where(keep, s, ns), np.where(keep, c, nc)
        else:
            k = float(j + 1)
            delta = x - (s + c)
            s, c = _kahan_inc(delta / k, s, c)
            a_sum[:a], a_comp[:a] = s, c
            b_sum[:a], b_comp[:a] = _kahan_inc(delta * (x - (s + c)), b_sum[:a], b_comp[:a])
    if name in ("sum_over_time", "avg_over_time"):
        out = np.where(np.isinf(a_sum), a_sum, a_sum + a_comp)
    else:
        counts = (hi - lo).ravel()[walk.order]
        out = (b_sum + b_comp) / counts
        if name == "stddev_over_time":
            out = np.sqrt(out)
    return walk.unsorted(out)


def _linear_regression(
    v: np.ndarray,
    ts: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    intercept_us: np.ndarray,
    wanted: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """2.42's linearRegression: least squares over (seconds from ``intercept_us``, value) with
    Kahan sums; a window whose values all equal the first gives slope 0 and that value (NaN,
    NaN if it is infinite)."""
    n = len(v)
    walk = _Walk.of(lo, hi)
    slots = len(walk.order)
    icpt = walk.sorted(intercept_us)
    sums = [np.zeros(slots) for _ in range(8)]  # x, y, xy, x2 and their compensations
    for _, a, at in walk.positions():
        x = (ts[at] - icpt[:a]) / _US
        y = v[at]
        for i, inc in enumerate((x, y, x * y, x * x)):
            sums[2 * i][:a], sums[2 * i + 1][:a] = _kahan_inc(
                inc, sums[2 * i][:a], sums[2 * i + 1][:a]
            )
    sum_x, sum_y, sum_xy, sum_x2 = (sums[2 * i] + sums[2 * i + 1] for i in range(4))
    count = walk.sorted((hi - lo).astype(np.float64))
    cov_xy = sum_xy - sum_x * sum_y / count
    var_x = sum_x2 - sum_x * sum_x / count
    slope = cov_xy / var_x
    intercept = sum_y / count - slope * sum_x / count
    slope, intercept = walk.unsorted(slope), walk.unsorted(intercept)
    # constant windows: no two neighbours differ (NaN differs from everything, itself too)
    differs = np.concatenate(([0], np.cumsum(v[1:] != v[:-1], dtype=np.int64)))
    last = np.clip(hi - 1, 0, n - 1)
    first = np.minimum(lo, n - 1)
    constant = wanted & (differs[last] == differs[first])
    init = v[first]
    slope = np.where(constant, np.where(np.isinf(init), np.nan, 0.0), slope)
    intercept = np.where(constant, np.where(np.isinf(init), np.nan, init), intercept)
    return slope, intercept


def _go_f(x: float) -> str:
    """Go's ``%f``."""
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return f"{x:.6f}"


def _check_holt_winters(sf: np.ndarray, tf: np.ndarray, count: np.ndarray) -> None:
    """2.42 checks the factors inside the call, so only where a window has a sample, at the first
    such (series, step) in evaluation order, the smoothing factor first (execution error)."""
    bad_sf = (sf <= 0) | (sf >= 1)
    bad_tf = (tf <= 0) | (tf >= 1)
    bad = (count >= 1) & (bad_sf | bad_tf)[None, :]
    if not bad.any():
        return
    _, step = np.unravel_index(int(np.argmax(bad)), bad.shape)
    if bad_sf[step]:
        raise PromQLError(
            f"invalid smoothing factor. Expected: 0 < sf < 1, got: {_go_f(float(sf[step]))}",
            "execution",
        )
    raise PromQLError(
        f"invalid trend factor. Expected: 0 < tf < 1, got: {_go_f(float(tf[step]))}", "execution"
    )


def _holt_winters(
    v: np.ndarray, lo: np.ndarray, hi: np.ndarray, sf: np.ndarray, tf: np.ndarray
) -> np.ndarray:
    """2.42's funcHoltWinters (double exponential smoothing), sample by sample across windows."""
    n = len(v)
    walk = _Walk.of(lo, hi)
    sf_w = walk.sorted(np.broadcast_to(sf[None, :], lo.shape))
    tf_w = walk.sorted(np.broadcast_to(tf[None, :], lo.shape))
    start = walk.start
    s1 = v[np.minimum(start, n - 1)]
    trend = v[np.minimum(start + 1, n - 1)] - s1
    s0 = np.zeros_like(s1)
    for i, a, at in walk.positions(begin=1):
        x = sf_w[:a] * v[at]
        if i > 1:
            trend[:a] = tf_w[:a] * (s1[:a] - s0[:a]) + (1 - tf_w[:a]) * trend[:a]
        y = (1 - sf_w[:a]) * (s1[:a] + trend[:a])
        s0[:a], s1[:a] = s1[:a], x + y
    return walk.unsorted(s1)


def _quantile_over_time(
    v: np.ndarray, lo: np.ndarray, hi: np.ndarray, phi: np.ndarray
) -> np.ndarray:
    """2.42's quantile(): NaN for φ NaN, -Inf below 0, +Inf above 1; else the samples sorted
    (NaN first, as Go's comparison puts it) and ``lower*(1-w) + upper*w`` at rank φ(n-1)."""
    positions, starts = gather(lo, hi)
    counts = (hi - lo).ravel()
    # every sample's rank among all samples (NaN first), then one sort of (window, rank) keys
    nan = np.flatnonzero(np.isnan(v))
    rest = np.flatnonzero(~np.isnan(v))
    by_value = np.concatenate((nan, rest[np.argsort(v[rest], kind="stable")]))
    rank = np.empty(len(v), np.int64)
    rank[by_value] = np.arange(len(v))
    window = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    keys = (window << 32) | rank[positions]
    keys.sort()
    ordered = v[by_value][keys & 0xFFFFFFFF]
    q = np.broadcast_to(phi[None, :], lo.shape).ravel()
    out = quantile_sorted(ordered, starts[:-1], counts, q)
    return out.reshape(lo.shape)


def quantile_sorted(
    ordered: np.ndarray, starts: np.ndarray, counts: np.ndarray, q: np.ndarray
) -> np.ndarray:
    """Prometheus' quantile() of groups already sorted (NaN first): group g is
    ``ordered[starts[g]:starts[g] + counts[g]]``, its φ ``q[g]``. NaN for an empty group. Also what
    the ``quantile`` aggregation computes."""
    nonempty = counts > 0
    total = len(ordered)
    nf = counts.astype(np.float64)
    with np.errstate(all="ignore"):
        rank = q * (nf - 1)
        floor = np.floor(rank)
        lower = np.maximum(0.0, floor)
        upper = np.minimum(nf - 1, lower + 1)
        weight = rank - floor
        ok = nonempty & (q >= 0) & (q <= 1)
        lower_i = np.where(ok, starts + lower, 0).astype(np.int64)
        upper_i = np.where(ok, starts + upper, 0).astype(np.int64)
        if total:
            out = ordered[lower_i] * (1 - weight) + ordered[upper_i] * weight
        else:
            out = np.full(len(counts), np.nan)
    out = np.where(q < 0, -np.inf, np.where(q > 1, np.inf, out))
    return np.where(nonempty & ~np.isnan(q), out, np.nan)


# -- instant functions ---------------------------------------------------------------------------


def instant_function(
    name: str, args: list[Vector | Scalar | String], times_us: np.ndarray
) -> Vector:
    """``name`` applied to evaluated arguments (as written, in order) at the steps ``times_us``.
    The result never carries sample times (``sample_us`` None): in 2.42 only a selector's own
    samples keep theirs."""
    times_us = np.asarray(times_us, dtype=np.int64)
    if name not in INSTANT_FUNCTIONS:
        raise PromQLError(f"unknown function {name}()")
    fewest, most = _ARITY.get(name, (1, 1))
    if not fewest <= len(args) <= most:
        raise PromQLError(f"wrong number of arguments ({len(args)}) in call to function {name!r}")
    if name in _DATES:
        if not args:
            seconds = _trunc_div(times_us, _US)
            values = _date_part(name, seconds)[None, :]
            return Vector([{}], values, np.ones(values.shape, bool))
        vec = _vector(name, args[0])
        return _elementwise(vec, _date_part(name, _go_int64(vec.values)))
    if name == "histogram_quantile":
        return histogram_quantile(_scalar(name, args[0]), _vector(name, args[1]))
    if name == "label_replace":
        dst, repl, src, regex = (_string(name, a) for a in args[1:5])
        return label_replace(_vector(name, args[0]), dst, repl, src, regex)
    if name == "label_join":
        dst, sep, *srcs = (_string(name, a) for a in args[1:])
        return label_join(_vector(name, args[0]), dst, sep, srcs)
    vec = _vector(name, args[0])
    if name == "timestamp":
        at = vec.sample_us
        if at is None:
            at = np.broadcast_to(times_us[None, :], vec.values.shape)
        return _elementwise(vec, at / _US)
    with np.errstate(all="ignore"):
        if name in _MATH:
            return _elementwise(vec, _MATH_FUNCS[name](vec.values))
        if name == "round":
            to_nearest = _scalar(name, args[1]).values if len(args) > 1 else np.ones(len(times_us))
            inverse = (1.0 / to_nearest)[None, :]
            return _elementwise(vec, np.floor(vec.values * inverse + 0.5) / inverse)
        if name == "clamp_min":
            return _elementwise(vec, _go_max(_scalar(name, args[1]).values[None, :], vec.values))
        if name == "clamp_max":
            return _elementwise(vec, _go_min(_scalar(name, args[1]).values[None, :], vec.values))
        # clamp: nothing at the steps where max < min
        low, high = _scalar(name, args[1]).values, _scalar(name, args[2]).values
        values = _go_max(low[None, :], _go_min(high[None, :], vec.values))
        return _elementwise(vec, values, keep=~(high < low)[None, :])


_ARITY = {
    **{name: (0, 1) for name in _DATES},
    "round": (1, 2),
    "clamp": (3, 3),
    "clamp_min": (2, 2),
    "clamp_max": (2, 2),
    "label_replace": (5, 5),
    "label_join": (3, 10**6),
    "histogram_quantile": (2, 2),
}


def _vector(name: str, arg: Vector | Scalar | String) -> Vector:
    if not isinstance(arg, Vector):
        raise PromQLError(f"expected type instant vector in call to function {name!r}")
    return arg


def _scalar(name: str, arg: Vector | Scalar | String) -> Scalar:
    if not isinstance(arg, Scalar):
        raise PromQLError(f"expected type scalar in call to function {name!r}")
    return arg


def _string(name: str, arg: Vector | Scalar | String) -> str:
    if not isinstance(arg, String):
        raise PromQLError(f"expected type string in call to function {name!r}")
    return arg.value


def _elementwise(vec: Vector, values: np.ndarray, keep: np.ndarray | None = None) -> Vector:
    """New values for ``vec``'s samples, without __name__ (merging rows that now collide)."""
    present = vec.present if keep is None else vec.present & keep
    values = np.where(present, np.broadcast_to(values, vec.values.shape), np.nan)
    return Vector(vec.labels, values, present).drop_name()


def _go_max(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Go's math.Max: +Inf beats NaN, NaN beats the rest, +0 beats -0."""
    out = np.maximum(x, y)
    zeros = (x == 0) & (y == 0)
    out = np.where(zeros, np.where(np.signbit(x) & np.signbit(y), -0.0, 0.0), out)
    return np.where(np.isposinf(x) | np.isposinf(y), np.inf, out)


def _go_min(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Go's math.Min: -Inf beats NaN, NaN beats the rest, -0 beats +0."""
    out = np.minimum(x, y)
    zeros = (x == 0) & (y == 0)
    out = np.where(zeros, np.where(np.signbit(x) | np.signbit(y), -0.0, 0.0), out)
    return np.where(np.isneginf(x) | np.isneginf(y), -np.inf, out)


_INV_LN2 = 1.4426950408889634  # Go's 1/Ln2 constant
_INV_LN10 = 0.4342944819032518  # Go's 1/Ln10 constant


# -- Go's math package where libm's last digit differs ------------------------------------------
# Prometheus' numbers come from Go's own implementations (Cephes and FreeBSD algorithms, and
# amd64 assembly for Log), not the C library numpy calls: ported here operation for operation so
# that ln/log2/log10/sin/cos/tan/asin/acos/atan agree to the bit. Exp's amd64 assembly uses FMA
# where the CPU has it, which numpy cannot replay: exp is numpy's within Go's overflow threshold
# (an ulp apart at times), and sinh/cosh/tanh are Go's formulas over it; asinh/acosh/atanh
# (Go's over Log1p) are numpy's, an ulp apart at times.

_LOG_L = (
    6.666666666666735130e-01,
    3.999999999940941908e-01,
    2.857142874366239149e-01,
    2.222219843214978396e-01,
    1.818357216161805012e-01,
    1.531383769920937332e-01,
    1.479819860511658591e-01,
)
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_HALF_SQRT2 = 7.07106781186547524401e-01


def _go_log(x: np.ndarray) -> np.ndarray:
    """Go's math.Log as its amd64 assembly computes it (its frexp reads the exponent bits, so a
    subnormal x answers as if it were about 2**-1023: ``ln(vector(1e-310))`` is -709.085)."""
    x = np.ascontiguousarray(x, dtype=np.float64)
    bits = x.view(np.uint64)
    f1 = ((bits & np.uint64(0x000FFFFFFFFFFFFF)) | np.uint64(0x3FE0000000000000)).view(np.float64)
    k = ((bits >> np.uint64(52)) & np.uint64(0x7FF)).astype(np.float64) - 0x3FE
    low = f1 <= _HALF_SQRT2
    k = k - low
    f = f1 * (1.0 + low) - 1.0
    l1, l2, l3, l4, l5, l6, l7 = _LOG_L
    s = f / (2.0 + f)
    s2 = s * s
    s4 = s2 * s2
    t1 = s2 * (((l7 * s4 + l5) * s4 + l3) * s4 + l1)
    t2 = s4 * ((l6 * s4 + l4) * s4 + l2)
    r = t1 + t2
    hfsq = 0.5 * f * f
    out = k * _LN2_HI - ((hfsq - (s * (hfsq + r) + k * _LN2_LO)) - f)
    out = np.where(np.signbit(x), np.nan, out)
    out = np.where(np.isposinf(x) | np.isnan(x), x, out)
    return np.where(x == 0, -np.inf, out)


def _go_log2(x: np.ndarray) -> np.ndarray:
    """Go's math.Log2: exact for powers of two, else Log(frac)/Ln2 + exp."""
    frac, exp = np.frexp(x)
    return np.where(frac == 0.5, exp - 1.0, _go_log(frac) * _INV_LN2 + exp)


_ATAN_P = (
    -8.750608600031904122785e-01,
    -1.615753718733365076637e01,
    -7.500855792314704667340e01,
    -1.228866684490136173410e02,
    -6.485021904942025371773e01,
)
_ATAN_Q = (
    2.485846490142306297962e01,
    1.650270098316988542046e02,
    4.328810604912902668951e02,
    4.853903996359136964868e02,
    1.945506571482613964425e02,
)
_MOREBITS = 6.123233995736765886130e-17
_TAN3PIO8 = 2.41421356237309504880


def _xatan(x: np.ndarray) -> np.ndarray:
    p0, p1, p2, p3, p4 = _ATAN_P
    q0, q1, q2, q3, q4 = _ATAN_Q
    z = x * x
    z = (
        z
        * ((((p0 * z + p1) * z + p2) * z + p3) * z + p4)
        / (((((z + q0) * z + q1) * z + q2) * z + q3) * z + q4)
    )
    return x * z + x


def _satan(x: np.ndarray) -> np.ndarray:
    return np.where(
        x <= 0.66,
        _xatan(x),
        np.where(
            x > _TAN3PIO8,
            math.pi / 2 - _xatan(1 / x) + _MOREBITS,
            math.pi / 4 + _xatan((x - 1) / (x + 1)) + 0.5 * _MOREBITS,
        ),
    )


def _go_atan(x: np.ndarray) -> np.ndarray:
    return np.where(x == 0, x, np.where(x > 0, _satan(x), -_satan(-x)))


def _go_asin(x: np.ndarray) -> np.ndarray:
    a = np.abs(x)
    temp = np.sqrt(1 - a * a)
    temp = np.where(a > 0.7, math.pi / 2 - _satan(temp / a), _satan(a / temp))
    temp = np.where(x < 0, -temp, temp)
    temp = np.where(a > 1, np.nan, temp)
    return np.where(x == 0, x, temp)


def _go_acos(x: np.ndarray) -> np.ndarray:
    return math.pi / 2 - _go_asin(x)


_SIN = (
    1.58962301576546568060e-10,
    -2.50507477628578072866e-8,
    2.75573136213857245213e-6,
    -1.98412698295895385996e-4,
    8.33333333332211858878e-3,
    -1.66666666666666307295e-1,
)
_COS = (
    -1.13585365213876817300e-11,
    2.08757008419747316778e-9,
    -2.75573141792967388112e-7,
    2.48015872888517045348e-5,
    -1.38888888888730564116e-3,
    4.16666666666665929218e-2,
)
_TAN_P = (-1.30936939181383777646e4, 1.15351664838587416140e6, -1.79565251976484877988e7)
_TAN_Q = (
    1.36812963470692954678e4,
    -1.32089234440210967447e6,
    2.50083801823357915839e7,
    -5.38695755929454629881e7,
)
_PI4 = (7.85398125648498535156e-1, 3.77489470793079817668e-8, 2.69515142907905952645e-15)
_M_PI4 = (
    0x0000000000000001,
    0x45F306DC9C882A53,
    0xF84EAFA3EA69BB81,
    0xB6C52B3278872083,
    0xFCA2C757BD778AC3,
    0x6E48DC74849BA5C0,
    0x0C925DD413A32439,
    0xFC3BD63962534E7D,
    0xD1046BEA5D768909,
    0xD338E04D68BEFC82,
    0x7323AC7306A673E9,
    0x3908BF177BF25076,
    0x3FF12FFFBC0B301F,
    0xDE5E2316B414DA3E,
    0xDA6CFD9E4F96136E,
    0x9E8C7ECD3CBFD45A,
    0xEA4F758FD7CBE2F6,
    0x7A0E73EF14A525D4,
    0xD7F6BF623F1ABA10,
    0xAC06608DF8F6D757,
)
_FOUR_OVER_PI = float(sum(Fraction(d, 2 ** (64 * i)) for i, d in enumerate(_M_PI4)))
_REDUCE_THRESHOLD = float(1 << 29)
_U64 = (1 << 64) - 1


def _shl(a: int, n: int) -> int:
    return (a << n) & _U64 if 0 <= n < 64 else 0


def _shr(a: int, n: int) -> int:
    return a >> n if 0 <= n < 64 else 0


def _trig_reduce(x: float) -> tuple[int, float]:
    """Go's trigReduce (Payne-Hanek reduction by Pi/4, for x >= 2**29): octant, remainder."""
    if x < math.pi / 4:
        return 0, x
    ix = int(np.float64(x).view(np.uint64))
    exp = ((ix >> 52) & 0x7FF) - 1023 - 52
    ix = (ix & ~(0x7FF << 52)) | (1 << 52)
    digit, shift = divmod(exp + 61, 64)
    m = _M_PI4
    z0 = _shl(m[digit], shift) | _shr(m[digit + 1], 64 - shift)
    z1 = _shl(m[digit + 1], shift) | _shr(m[digit + 2], 64 - shift)
    z2 = _shl(m[digit + 2], shift) | _shr(m[digit + 3], 64 - shift)
    z2hi = (z2 * ix) >> 64
    z1hi, z1lo = (z1 * ix) >> 64, (z1 * ix) & _U64
    z0lo = (z0 * ix) & _U64
    lo_sum = z1lo + z2hi
    lo, carry = lo_sum & _U64, lo_sum >> 64
    hi = (z0lo + z1hi + carry) & _U64
    j = hi >> 61
    hi = _shl(hi, 3) | (lo >> 61)
    lz = 64 - hi.bit_length()
    e = 1023 - (lz + 1)
    hi = _shl(hi, lz + 1) | _shr(lo, 64 - (lz + 1))
    hi = (hi >> 12) | (e << 52)
    z = float(np.uint64(hi & _U64).view(np.float64))
    if j & 1:
        j = (j + 1) & 7
        z -= 1
    return j, z * (math.pi / 4)


def _octants(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Go's reduction of |x| (finite) to an octant j and a remainder z, as sin/cos/tan do it."""
    small = a < _REDUCE_THRESHOLD
    safe = np.where(small, a, 0.0)
    j = (safe * _FOUR_OVER_PI).astype(np.uint64)
    y = j.astype(np.float64)
    odd = (j & np.uint64(1)) == 1
    j = np.where(odd, j + np.uint64(1), j) & np.uint64(7)
    y = np.where(odd, y + 1, y)
    z = ((safe - y * _PI4[0]) - y * _PI4[1]) - y * _PI4[2]
    for i in np.flatnonzero(~small).tolist():  # beyond 2**29: Payne-Hanek, one by one
        ji, zi = _trig_reduce(float(a.flat[i]))
        j.flat[i], z.flat[i] = ji, zi
    return j.astype(np.int64), z


def _sin_poly(z: np.ndarray, zz: np.ndarray) -> np.ndarray:
    c = _SIN
    return z + z * zz * ((((((c[0] * zz) + c[1]) * zz + c[2]) * zz + c[3]) * zz + c[4]) * zz + c[5])


def _cos_poly(zz: np.ndarray) -> np.ndarray:
    c = _COS
    return (
        1.0
        - 0.5 * zz
        + zz * zz * ((((((c[0] * zz) + c[1]) * zz + c[2]) * zz + c[3]) * zz + c[4]) * zz + c[5])
    )


def _go_trig(name: str, x: np.ndarray) -> np.ndarray:
    """Go's math.Sin, Cos and Tan."""
    x = np.asarray(x, dtype=np.float64)
    finite = np.isfinite(x)
    a = np.where(finite, np.abs(x), 0.0)
    j, z = _octants(a)
    zz = z * z
    if name == "tan":
        p, q = _TAN_P, _TAN_Q
        numerator = zz * (((p[0] * zz) + p[1]) * zz + p[2])
        denominator = (((zz + q[0]) * zz + q[1]) * zz + q[2]) * zz + q[3]
        y = z + z * (numerator / denominator)
        y = np.where(zz > 1e-14, y, z)
        y = np.where(j & 2 == 2, -1 / y, y)
        negative = x < 0
    else:
        flip = j > 3
        j = np.where(flip, j - 4, j)
        if name == "sin":
            negative = (x < 0) ^ flip
            y = np.where((j == 1) | (j == 2), _cos_poly(zz), _sin_poly(z, zz))
        else:
            negative = flip ^ (j > 1)
            y = np.where((j == 1) | (j == 2), _sin_poly(z, zz), _cos_poly(zz))
    y = np.where(negative, -y, y)
    y = np.where(finite, y, np.nan)
    if name != "cos":
        y = np.where(x == 0, x, y)
    return y


_LOG2E = 1.4426950408889634


def _go_exp(x: np.ndarray) -> np.ndarray:
    """numpy's exp, with the range of Go's amd64 Exp: it scales by 2**round(x/ln 2), so it
    answers +Inf from that exponent 1024 on (``exp(709.78)`` is +Inf in Prometheus)."""
    with np.errstate(all="ignore"):
        exponent = np.rint(x * _LOG2E) + 1023
        out = np.where(np.isfinite(x) & (exponent >= 2047), np.inf, np.exp(x))
        return np.where(np.isfinite(x) & (exponent < -52), 0.0, out)


_SINH_P = (
    -0.6307673640497716991184787251e6,
    -0.8991272022039509355398013511e5,
    -0.2894211355989563807284660366e4,
    -0.2630563213397497062819489e2,
)
_SINH_Q = (
    -0.6307673640497716991212077277e6,
    0.1521517378790019070696485176e5,
    -0.173678953558233699533450911e3,
)
_TANH_P = (-9.64399179425052238628e-1, -9.92877231001918586564e1, -1.61468768441708447952e3)
_TANH_Q = (1.12811678491632931402e2, 2.23548839060100448583e3, 4.84406305325125486048e3)


def _go_sinh(x: np.ndarray) -> np.ndarray:
    a = np.abs(x)
    p0, p1, p2, p3 = _SINH_P
    q0, q1, q2 = _SINH_Q
    sq = a * a
    series = (((p3 * sq + p2) * sq + p1) * sq + p0) * a / (((sq + q2) * sq + q1) * sq + q0)
    temp = np.where(
        a > 21, _go_exp(a) / 2, np.where(a > 0.5, (_go_exp(a) - _go_exp(-a)) / 2, series)
    )
    return np.where(x < 0, -temp, temp)


def _go_cosh(x: np.ndarray) -> np.ndarray:
    a = np.abs(x)
    return np.where(a > 21, _go_exp(a) / 2, (_go_exp(a) + _go_exp(-a)) / 2)


def _go_tanh(x: np.ndarray) -> np.ndarray:
    z = np.abs(x)
    p0, p1, p2 = _TANH_P
    q0, q1, q2 = _TANH_Q
    s = x * x
    series = x + x * s * ((p0 * s + p1) * s + p2) / (((s + q0) * s + q1) * s + q2)
    series = np.where(x == 0, x, series)
    big = 1 - 2 / (_go_exp(2 * z) + 1)
    big = np.where(x < 0, -big, big)
    out = np.where(z >= 0.625, big, series)
    return np.where(z > 0.5 * 8.8029691931113054295988e01, np.where(x < 0, -1.0, 1.0), out)


def _sgn(x: np.ndarray) -> np.ndarray:
    return np.where(x < 0, -1.0, np.where(x > 0, 1.0, x))


_MATH_FUNCS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "abs": np.abs,
    "ceil": np.ceil,
    "floor": np.floor,
    "exp": _go_exp,
    "sqrt": np.sqrt,
    "ln": _go_log,
    "log2": _go_log2,
    "log10": lambda x: _go_log(x) * _INV_LN10,
    "sgn": _sgn,
    "acos": _go_acos,
    "acosh": np.arccosh,
    "asin": _go_asin,
    "asinh": np.arcsinh,
    "atan": _go_atan,
    "atanh": np.arctanh,
    "cos": lambda x: _go_trig("cos", x),
    "cosh": _go_cosh,
    "sin": lambda x: _go_trig("sin", x),
    "sinh": _go_sinh,
    "tan": lambda x: _go_trig("tan", x),
    "tanh": _go_tanh,
    "deg": lambda x: x * 180 / math.pi,
    "rad": lambda x: x * math.pi / 180,
}


# -- dates: Go's time package, including what it does with NaN and huge values ------------------

_INT64_MIN = -(2**63)
_SECONDS_PER_DAY = 86400
_DAYS_PER_400_YEARS = 365 * 400 + 97
_DAYS_PER_100_YEARS = 365 * 100 + 24
_DAYS_PER_4_YEARS = 365 * 4 + 1
_ABSOLUTE_ZERO_YEAR = -292277022399
_UNIX_TO_INTERNAL = (1969 * 365 + 1969 // 4 - 1969 // 100 + 1969 // 400) * _SECONDS_PER_DAY
_INTERNAL_TO_ABSOLUTE = -int((_ABSOLUTE_ZERO_YEAR - 1) * Fraction("365.2425") * _SECONDS_PER_DAY)
_UNIX_TO_ABSOLUTE = _UNIX_TO_INTERNAL + _INTERNAL_TO_ABSOLUTE
_DAYS_BEFORE = np.array([0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334, 365], np.int64)
_MONTH_DAYS = np.array([31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], np.int64)


def _trunc_div(x: np.ndarray, d: int) -> np.ndarray:
    """Go's integer division (toward zero)."""
    q = np.abs(x) // d
    return np.where(x < 0, -q, q)


def _go_int64(values: np.ndarray) -> np.ndarray:
    """Go's ``int64(f)`` on amd64: truncation, and the minimum int64 for NaN, Inf and overflow
    (why ``year(vector(NaN))`` answers 292277026596 in Prometheus)."""
    with np.errstate(invalid="ignore"):
        valid = (values >= -(2.0**63)) & (values < 2.0**63)
        out = np.trunc(np.where(valid, values, 0.0)).astype(np.int64)
    return np.where(valid, out, np.int64(_INT64_MIN))


def _date_part(name: str, seconds: np.ndarray) -> np.ndarray:
    """Go's calendar (absDate, absClock, absWeekday) of Unix seconds in UTC, with its uint64
    wrap-around, as floats."""
    with np.errstate(over="ignore"):
        absolute = (seconds.astype(np.int64) + np.int64(_UNIX_TO_ABSOLUTE)).astype(np.uint64)
    if name == "hour":
        return ((absolute % np.uint64(86400)) // np.uint64(3600)).astype(np.float64)
    if name == "minute":
        return ((absolute % np.uint64(3600)) // np.uint64(60)).astype(np.float64)
    if name == "day_of_week":
        shifted = absolute + np.uint64(_SECONDS_PER_DAY)  # Monday
        return ((shifted % np.uint64(7 * 86400)) // np.uint64(86400)).astype(np.float64)
    d = absolute // np.uint64(_SECONDS_PER_DAY)
    n = d // np.uint64(_DAYS_PER_400_YEARS)
    y = np.uint64(400) * n
    d = d - np.uint64(_DAYS_PER_400_YEARS) * n
    n = d // np.uint64(_DAYS_PER_100_YEARS)
    n = n - (n >> np.uint64(2))
    y = y + np.uint64(100) * n
    d = d - np.uint64(_DAYS_PER_100_YEARS) * n
    n = d // np.uint64(_DAYS_PER_4_YEARS)
    y = y + np.uint64(4) * n
    d = d - np.uint64(_DAYS_PER_4_YEARS) * n
    n = d // np.uint64(365)
    n = n - (n >> np.uint64(2))
    y = y + n
    d = d - np.uint64(365) * n
    year = y.astype(np.int64) + np.int64(_ABSOLUTE_ZERO_YEAR)
    yday = d.astype(np.int64)
    if name == "year":
        return year.astype(np.float64)
    if name == "day_of_year":
        return (yday + 1).astype(np.float64)
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    day = np.where(leap & (yday > 31 + 29 - 1), yday - 1, yday)
    leap_day = leap & (yday == 31 + 29 - 1)
    month0 = day // 31
    end = _DAYS_BEFORE[month0 + 1]
    after = day >= end
    begin = np.where(after, end, _DAYS_BEFORE[month0])
    month0 = np.where(after, month0 + 1, month0)
    month = np.where(leap_day, 2, month0 + 1)
    mday = np.where(leap_day, 29, day - begin + 1)
    if name == "month":
        return month.astype(np.float64)
    if name == "day_of_month":
        return mday.astype(np.float64)
    # days_in_month
    return (_MONTH_DAYS[month - 1] + ((month == 2) & leap)).astype(np.float64)


# -- histogram_quantile --------------------------------------------------------------------------


def _go_parse_float(text: str) -> float | None:
    """Go's strconv.ParseFloat(text, 64), or None where it errs (syntax, or out of range)."""
    lowered = text.lower()
    body = lowered[1:] if lowered[:1] in "+-" else lowered
    if body in ("inf", "infinity"):
        return -math.inf if lowered[0] == "-" else math.inf
    if lowered == "nan":
        return math.nan
    if not _GO_FLOAT.fullmatch(text) or not _underscores_ok(text):
        return None
    plain = text.replace("_", "")
    try:
        value = float.fromhex(plain) if "x" in lowered else float(plain)
    except (OverflowError, ValueError):
        return None
    return None if math.isinf(value) else value


_GO_FLOAT = re.compile(
    r"[+-]?(?:(?:[0-9_]*\.?[0-9_]*)(?:[eE][+-]?[0-9_]+)?"
    r"|0[xX](?:[0-9a-fA-F_]*\.?[0-9a-fA-F_]*)[pP][+-]?[0-9_]+)",
    re.ASCII,
)


def _underscores_ok(text: str) -> bool:
    """Go's strconv underscoreOK, plus its rule that a mantissa has at least one digit."""
    s = text[1:] if text[:1] in "+-" else text
    hexa = s[:2].lower() == "0x"
    mantissa = re.split(r"[pP]" if hexa else r"[eE]", s[2:] if hexa else s)[0]
    if not re.search(r"[0-9a-fA-F]" if hexa else r"[0-9]", mantissa):
        return False
    saw, i = "^", 0
    if hexa:
        saw, i = "0", 2
    for ch in s[i:]:
        if ch.isascii() and (ch.isdigit() or (hexa and ch.lower() in "abcdef")):
            saw = "0"
        elif ch == "_":
            if saw != "0":
                return False
            saw = "_"
        elif saw == "_":
            return False
        else:
            saw = "!"
    return saw != "_"


def histogram_quantile(phi: Scalar, buckets: Vector) -> Vector:
    """2.42's histogram_quantile over classic buckets: series grouped by all labels but ``le``
    (``__name__`` included, then dropped from the result, so two histograms differing only by
    name collide as in Prometheus); per group and step, bucketQuantile of the buckets present:
    φ NaN → NaN, φ < 0 → -Inf, φ > 1 → +Inf; NaN unless the highest bound is +Inf; equal bounds
    merged; counts made monotonic (Go's loop, NaN counts left alone); fewer than 2 buckets or no
    observations → NaN; then linear interpolation inside the bucket holding rank φ·count (found
    by Go's binary search), the lowest bucket from 0 unless its bound is ≤ 0, the +Inf bucket
    answering the bound below it. Series whose ``le`` Go's ParseFloat refuses are ignored.

    A bucket ``le="NaN"`` is sorted last here; Go's sort leaves it where the input order put it."""
    steps = buckets.values.shape[1]
    rows: list[int] = []
    bounds: list[float] = []
    group_of: list[int] = []
    groups: dict[tuple[tuple[str, str], ...], int] = {}
    group_labels: list[Labels] = []
    for i, labels in enumerate(buckets.labels):
        bound = _go_parse_float(labels.get("le", ""))
        if bound is None:
            continue
        rest = {k: val for k, val in labels.items() if k != "le"}
        g = groups.setdefault(key(rest), len(groups))
        if g == len(group_labels):
            group_labels.append(without_name(rest))
        rows.append(i)
        bounds.append(bound)
        group_of.append(g)
    if not rows:
        return Vector.empty(steps)
    q = np.broadcast_to(np.asarray(phi.values, np.float64), (steps,))
    # buckets sorted by (group, bound), NaN bounds last; equal bounds of a group merged
    row_a, bound_a, group_a = np.array(rows), np.array(bounds), np.array(group_of)
    order = np.lexsort((bound_a, group_a))
    row_a, bound_a, group_a = row_a[order], bound_a[order], group_a[order]
    new = np.ones(len(row_a), bool)
    new[1:] = (group_a[1:] != group_a[:-1]) | (bound_a[1:] != bound_a[:-1])
    seg = np.flatnonzero(new)
    present_rows = buckets.present[row_a]
    counts = np.add.reduceat(np.where(present_rows, buckets.values[row_a], 0.0), seg, axis=0)
    present = np.logical_or.reduceat(present_rows, seg, axis=0)
    bound_b, group_b = bound_a[seg], group_a[seg]
    # the (bucket, step) pairs present, ordered by (group, step, bound): one run per group & step
    b_idx, t_idx = np.nonzero(present)
    order = np.lexsort((b_idx, t_idx, group_b[b_idx]))
    b_idx, t_idx = b_idx[order], t_idx[order]
    count = counts[b_idx, t_idx]
    upper = bound_b[b_idx]
    g_idx = group_b[b_idx]
    run_start = np.ones(len(b_idx), bool)
    run_start[1:] = (g_idx[1:] != g_idx[:-1]) | (t_idx[1:] != t_idx[:-1])
    starts = np.flatnonzero(run_start)
    sizes = np.diff(np.append(starts, len(b_idx)))
    run_of = np.repeat(np.arange(len(starts)), sizes)
    pos = np.arange(len(b_idx)) - starts[run_of]
    _ensure_monotonic(count, pos)
    out = _bucket_quantile(q[t_idx[starts]], count, upper, starts, sizes)
    values = np.full((len(group_labels), steps), np.nan)
    have = np.zeros((len(group_labels), steps), bool)
    values[g_idx[starts], t_idx[starts]] = out
    have[g_idx[starts], t_idx[starts]] = True
    return Vector(group_labels, values, have).with_labels(group_labels)


def _ensure_monotonic(count: np.ndarray, pos: np.ndarray) -> None:
    """Go's ensureMonotonic in every run at once (in place): the running maximum starts at the
    first count (a NaN there freezes it), a count below it is raised to it, NaN counts stay."""
    running = count.copy()
    by_pos = np.argsort(pos, kind="stable")
    edges = np.searchsorted(pos[by_pos], np.arange(int(pos.max(initial=0)) + 2))
    for k in range(1, len(edges) - 1):
        at = by_pos[edges[k] : edges[k + 1]]
        top, x = running[at - 1], count[at]
        with np.errstate(invalid="ignore"):
            count[at] = np.where(x < top, top, x)
            running[at] = np.where(x > top, x, top)


def _bucket_quantile(
    q: np.ndarray, count: np.ndarray, upper: np.ndarray, starts: np.ndarray, sizes: np.ndarray
) -> np.ndarray:
    last = starts + sizes - 1
    observations = count[last]
    with np.errstate(all="ignore"):
        rank = q * observations
        # sort.Search(n-1, count >= rank), Go's binary search step for step
        i = np.zeros(len(starts), np.int64)
        j = sizes - 1
        while True:
            open_ = i < j
            if not open_.any():
                break
            h = (i + j) // 2
            found = count[starts + np.where(open_, h, 0)] >= rank
            i = np.where(open_ & ~found, h + 1, i)
            j = np.where(open_ & found, h, j)
        b = i
        at = starts + b
        below = starts + np.maximum(b - 1, 0)
        has_below = b > 0
        bucket_start = np.where(has_below, upper[below], 0.0)
        bucket_end = upper[at]
        in_bucket = count[at] - np.where(has_below, count[below], 0.0)
        rank_in = rank - np.where(has_below, count[below], 0.0)
        out = bucket_start + (bucket_end - bucket_start) * (rank_in / in_bucket)
        out = np.where((b == 0) & (upper[starts] <= 0), upper[starts], out)
        out = np.where(b == sizes - 1, upper[np.maximum(last - 1, 0)], out)
        out = np.where(observations == 0, np.nan, out)
        out = np.where(sizes < 2, np.nan, out)
        out = np.where(np.isposinf(upper[last]), out, np.nan)
        out = np.where(q > 1, np.inf, out)
        out = np.where(q < 0, -np.inf, out)
    return np.where(np.isnan(q), np.nan, out)


# -- label_replace and label_join ----------------------------------------------------------------

_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*", re.ASCII)


def label_replace(vec: Vector, dst: str, replacement: str, src: str, regex: str) -> Vector:
    """2.42's label_replace: where the regex, anchored at both ends (``^(?:regex)$``, Go RE2),
    matches the value of ``src`` ("" when absent), ``dst`` becomes the expanded replacement
    (``$1``, ``${1}``, ``$name``, ``$$`` as Go's Regexp.Expand), or is removed if that is empty.
    Errors (execution, as in 2.42): an invalid regex, then an invalid ``dst`` name."""
    try:
        compiled = compile_re2("^(?:" + regex + ")$")
    except Re2Error:
        raise PromQLError(
            f"invalid regular expression in label_replace(): {regex}", "execution"
        ) from None
    if not _LABEL_NAME.fullmatch(dst):
        raise PromQLError(f"invalid destination label name in label_replace(): {dst}", "execution")
    out: list[Labels] = []
    for labels in vec.labels:
        value = labels.get(src, "")
        found = compiled.pattern.search(value)
        if found is None:
            out.append(labels)
            continue
        result = expand(replacement, found, compiled.names)
        new = {k: val for k, val in labels.items() if k != dst}
        if result:
            new[dst] = result
        out.append(new)
    return Vector(vec.labels, vec.values, vec.present).with_labels(out)


def label_join(vec: Vector, dst: str, separator: str, sources: list[str]) -> Vector:
    """2.42's label_join: ``dst`` becomes the values of ``sources`` ("" when absent) joined by
    ``separator``, or is removed if that is empty. Source names are checked first, in order,
    then ``dst`` (execution errors, as in 2.42)."""
    for src in sources:
        if not _LABEL_NAME.fullmatch(src):
            raise PromQLError(f"invalid source label name in label_join(): {src}", "execution")
    if not _LABEL_NAME.fullmatch(dst):
        raise PromQLError(f"invalid destination label name in label_join(): {dst}", "execution")
    out: list[Labels] = []
    for labels in vec.labels:
        joined = separator.join(labels.get(src, "") for src in sources)
        new = {k: val for k, val in labels.items() if k != dst}
        if joined:
            new[dst] = joined
        out.append(new)
    return Vector(vec.labels, vec.values, vec.present).with_labels(out)


def expand(template: str, found: re.Match[str], names: list[str | None]) -> str:
    """Go's Regexp.Expand: ``$$`` is ``$``; ``$name`` / ``${name}`` (letters, digits, _) is a
    group by number (no leading zeros) or by name, "" if it did not take part; a ``$`` not
    followed by a name is itself."""
    out: list[str] = []
    rest = template
    while True:
        before, dollar, rest = rest.partition("$")
        out.append(before)
        if not dollar:
            break
        if rest.startswith("$"):
            out.append("$")
            rest = rest[1:]
            continue
        name, num, after = _extract(rest)
        if name is None:
            out.append("$")
            continue
        rest = after
        group: int | None = None
        if num >= 0:
            group = num if num <= len(names) else None
        else:
            for i, candidate in enumerate(names, start=1):
                if candidate == name and found.start(i) >= 0:
                    group = i
                    break
        if group is not None and found.start(group) >= 0:
            out.append(found.group(group))
    return "".join(out)


def _extract(text: str) -> tuple[str | None, int, str]:
    brace = text.startswith("{")
    s = text[1:] if brace else text
    i = 0
    while i < len(s) and (
        s[i] == "_"
        or unicodedata.category(s[i]).startswith("L")
        or unicodedata.category(s[i]) == "Nd"
    ):
        i += 1
    if i == 0:
        return None, -1, text
    name = s[:i]
    if brace:
        if i >= len(s) or s[i] != "}":
            return None, -1, text
        i += 1
    num = 0
    for ch in name:
        if not ("0" <= ch <= "9") or num >= 100_000_000:
            num = -1
            break
        num = num * 10 + ord(ch) - 48
    if name[0] == "0" and len(name) > 1:
        num = -1
    return name, num, s[i:]


# -- Go's RE2 syntax, translated to Python's re ---------------------------------------------------


class Re2Error(ValueError):
    """A pattern Go's regexp.Compile refuses."""


@dataclass
class Re2:
    pattern: re.Pattern[str]
    names: list[str | None]  # the name of capture group i + 1, None if unnamed


@lru_cache(maxsize=512)
def compile_re2(source: str) -> Re2:
    """``source`` in Go's RE2 syntax (Perl flags, as regexp.Compile) as a Python pattern with the
    same matches and groups: `Re2Error` where Go refuses it, `PromQLError` (bad_data) for the one
    feature not translated (Unicode script classes). Use ``.pattern.search`` (Go's Find is
    unanchored; anchor the source as Prometheus does)."""
    parser = _Re2Parser(source)
    node = parser.parse()
    try:
        compiled = re.compile(node.py)
    except (re.error, RecursionError, OverflowError) as exc:
        raise Re2Error(str(exc)) from None
    return Re2(compiled, parser.names)


_I, _M, _S, _U = 1, 2, 4, 8  # fold case, multi-line, dot matches \n, ungreedy
_POSIX = {
    "alnum": [(48, 57), (65, 90), (97, 122)],
    "alpha": [(65, 90), (97, 122)],
    "ascii": [(0, 127)],
    "blank": [(9, 9), (32, 32)],
    "cntrl": [(0, 31), (127, 127)],
    "digit": [(48, 57)],
    "graph": [(33, 126)],
    "lower": [(97, 122)],
    "print": [(32, 126)],
    "punct": [(33, 47), (58, 64), (91, 96), (123, 126)],
    "space": [(9, 13), (32, 32)],
    "upper": [(65, 90)],
    "word": [(48, 57), (65, 90), (95, 95), (97, 122)],
    "xdigit": [(48, 57), (65, 70), (97, 102)],
}
_PERL = {
    "d": [(48, 57)],
    "s": [(9, 10), (12, 13), (32, 32)],
    "w": [(48, 57), (65, 90), (95, 95), (97, 122)],
}
_MAX_RUNE = 0x10FFFF
_CATEGORIES = frozenset(
    """C Cc Cf Co Cs L Ll Lm Lo Lt Lu M Mc Me Mn N Nd Nl No P Pc Pd Pe Pf Pi Po Ps S Sc Sk Sm So Z
    Zl Zp Zs""".split()  # noqa: SIM905
)

# Go 1.19's unicode.Scripts (Unicode 13), the names Prometheus 2.42 accepts in \p{...}.
_GO_SCRIPTS = frozenset(
    """Adlam Ahom Anatolian_Hieroglyphs Arabic Armenian Avestan Balinese Bamum Bassa_Vah Batak
    Bengali Bhaiksuki Bopomofo Brahmi Braille Buginese Buhid Canadian_Aboriginal Carian
    Caucasian_Albanian Chakma Cham Cherokee Chorasmian Common Coptic Cuneiform Cypriot Cyrillic
    Deseret Devanagari Dives_Akuru Dogra Duployan Egyptian_Hieroglyphs Elbasan Elymaic Ethiopic
    Georgian Glagolitic Gothic Grantha Greek Gujarati Gunjala_Gondi Gurmukhi Han Hangul
    Hanifi_Rohingya Hanunoo Hatran Hebrew Hiragana Imperial_Aramaic Inherited
    Inscriptional_Pahlavi Inscriptional_Parthian Javanese Kaithi Kannada Katakana Kayah_Li
    Kharoshthi Khitan_Small_Script Khmer Khojki Khudawadi Lao Latin Lepcha Limbu Linear_A
    Linear_B Lisu Lycian Lydian Mahajani Makasar Malayalam Mandaic Manichaean Marchen
    Masaram_Gondi Medefaidrin Meetei_Mayek Mende_Kikakui Meroitic_Cursive Meroitic_Hieroglyphs
    Miao Modi Mongolian Mro Multani Myanmar Nabataean Nandinagari New_Tai_Lue Newa Nko Nushu
    Nyiakeng_Puachue_Hmong Ogham Ol_Chiki Old_Hungarian Old_Italic Old_North_Arabian Old_Permic
    Old_Persian Old_Sogdian Old_South_Arabian Old_Turkic Oriya Osage Osmanya Pahawh_Hmong
    Palmyrene Pau_Cin_Hau Phags_Pa Phoenician Psalter_Pahlavi Rejang Runic Samaritan Saurashtra
    Sharada Shavian Siddham SignWriting Sinhala Sogdian Sora_Sompeng Soyombo Sundanese
    Syloti_Nagri Syriac Tagalog Tagbanwa Tai_Le Tai_Tham Tai_Viet Takri Tamil Tangut Telugu
    Thaana Thai Tibetan Tifinagh Tirhuta Ugaritic Vai Wancho Warang_Citi Yezidi Yi
    Zanabazar_Square""".split()  # noqa: SIM905
)


@lru_cache(maxsize=64)
def _category_ranges(name: str) -> tuple[tuple[int, int], ...]:
    """A Unicode general category (Go's unicode.Categories; "C" is Cc|Cf|Co|Cs) as ranges."""
    if name == "Any":
        return ((0, _MAX_RUNE),)
    wanted = {"C": ("Cc", "Cf", "Co", "Cs")}.get(name)
    ranges: list[tuple[int, int]] = []
    for cp in range(_MAX_RUNE + 1):
        cat = unicodedata.category(chr(cp))
        if (cat in wanted) if wanted else (cat == name or cat[0] == name):
            if ranges and ranges[-1][1] == cp - 1:
                ranges[-1] = (ranges[-1][0], cp)
            else:
                ranges.append((cp, cp))
    return tuple(ranges)


def _negate(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    nxt = 0
    for lo, hi in sorted(ranges):
        if lo > nxt:
            out.append((nxt, lo - 1))
        nxt = max(nxt, hi + 1)
    if nxt <= _MAX_RUNE:
        out.append((nxt, _MAX_RUNE))
    return out


def _py_char(cp: int) -> str:
    if chr(cp).isascii() and chr(cp).isalnum():
        return chr(cp)
    return f"\\u{cp:04x}" if cp <= 0xFFFF else f"\\U{cp:08x}"


@dataclass
class _Node:
    """A parsed RE2 item: its Python text, and the repeat counts along its subtrees (for Go's
    repeatIsValid, which refuses nested {n,m} counts whose product exceeds 1000)."""

    py: str
    chains: frozenset[tuple[int, ...]] = field(default_factory=frozenset)


def _chains_ok(chains: frozenset[tuple[int, ...]]) -> bool:
    for chain in chains:
        budget = 1000
        for m in chain:
            if m == 0:
                break
            if m > budget:
                return False
            budget //= m
    return True


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


@lru_cache(maxsize=1)
def _orbits() -> tuple[np.ndarray, tuple[tuple[int, ...], ...]]:
    """Every cased code point and its case orbit (the characters (?i) lets it match, as Go's
    unicode.SimpleFold cycles: k K and the Kelvin sign, s S and long s, sigma's three forms...)."""
    groups: dict[str, list[int]] = {}
    for cp in range(0x1E944):  # the last cased letters (Adlam) end there
        if cp in (0x130, 0x131):  # dotted/dotless i: only Turkish folding joins them to i
            continue
        ch = chr(cp)
        up = ch.upper()
        fold = up.lower() if len(up) == 1 else ch.lower()
        groups.setdefault(fold if len(fold) == 1 else ch, []).append(cp)
    pairs = sorted(
        (cp, tuple(members)) for members in groups.values() if len(members) > 1 for cp in members
    )
    return np.array([cp for cp, _ in pairs], np.int64), tuple(orbit for _, orbit in pairs)


def _fold(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The ranges and every case variant of their characters (Go's appendFoldedClass)."""
    if not ranges:
        return ranges
    cps, orbits = _orbits()
    starts = np.array([lo for lo, _ in ranges], np.int64)
    ends = np.array([hi for _, hi in ranges], np.int64)
    at = np.searchsorted(starts, cps, side="right") - 1
    inside = (at >= 0) & (cps <= ends[np.maximum(at, 0)])
    extra = {cp for i in np.flatnonzero(inside).tolist() for cp in orbits[i]}
    return _merge(ranges + [(cp, cp) for cp in extra])


class _Re2Parser:
    """Go's regexp/syntax parser (Perl flags), emitting Python instead of a syntax tree. Classes
    and case-insensitive literals become explicit code point sets (folded, then negated, as Go
    does), so Python's own IGNORECASE rules never apply."""

    def __init__(self, source: str) -> None:
        self.s = source
        self.i = 0
        self.names: list[str | None] = []

    def error(self, what: str) -> Re2Error:
        return Re2Error(f"{what} at {self.i} in {self.s!r}")

    def parse(self) -> _Node:
        node = self.alternation(flags=0, depth=0)
        if self.i < len(self.s):  # an unmatched ")"
            raise self.error("unexpected )")
        return node

    def alternation(self, flags: int, depth: int) -> _Node:
        if depth > 1000:
            raise self.error("expression nests too deeply")
        branches: list[list[_Node]] = [[]]
        items = branches[0]
        last_repeat = False
        while self.i < len(self.s):
            c = self.s[self.i]
            repeat = False
            if c == ")":
                break
            if c == "|":
                self.i += 1
                items = []
                branches.append(items)
            elif c == "(":
                if self.s.startswith("(?", self.i):
                    group = self.perl_group(flags, depth)
                    if isinstance(group, int):  # (?flags): for the rest of this group
                        flags = group
                    else:
                        items.append(group)
                else:
                    self.i += 1
                    self.names.append(None)
                    items.append(self.group(flags, depth, capture=True))
            elif c in "*+?":
                self.i += 1
                low, high = {"*": (0, -1), "+": (1, -1), "?": (0, 1)}[c]
                self.repeat(items, c, low, high, flags, last_repeat)
                repeat = True
            elif c == "{" and (bounds := self.repeat_bounds()) is not None:
                low, high = bounds
                op = f"{{{low}}}" if low == high else f"{{{low},{'' if high < 0 else high}}}"
                self.repeat(items, op, low, high, flags, last_repeat)
                repeat = True
            elif c == "^":
                self.i += 1
                items.append(_Node("(?m:^)" if flags & _M else "\\A"))
            elif c == "$":
                self.i += 1
                items.append(_Node("(?m:$)" if flags & _M else "\\Z"))
            elif c == ".":
                self.i += 1
                items.append(_Node("(?s:.)" if flags & _S else "[^\\n]"))
            elif c == "[":
                items.append(self.char_class(flags))
            elif c == "\\":
                items.extend(self.escape(flags))
            else:
                self.i += 1
                items.append(self.literal(ord(c), flags))
            last_repeat = repeat
        alternatives = ["".join(n.py for n in branch) for branch in branches]
        chains = frozenset(ch for branch in branches for n in branch for ch in n.chains)
        if len(alternatives) == 1:
            return _Node(alternatives[0], chains)
        return _Node("(?:" + "|".join(alternatives) + ")", chains)

    def group(self, flags: int, depth: int, capture: bool) -> _Node:
        inner = self.alternation(flags, depth + 1)
        if self.i >= len(self.s) or self.s[self.i] != ")":
            raise self.error("missing closing )")
        self.i += 1
        return _Node(("(" if capture else "(?:") + inner.py + ")", inner.chains)

    def perl_group(self, flags: int, depth: int) -> _Node | int:
        """``(?P<name>re)``, ``(?flags)`` (returns the new flags) or ``(?flags:re)``; Go 1.19
        has no ``(?<name>re)``, lookarounds, comments or atomic groups."""
        s = self.s
        if s.startswith("(?P<", self.i) and len(s) - self.i > 4:
            end = s.find(">", self.i)
            name = s[self.i + 4 : end] if end >= 0 else ""
            if not name or not all(ch == "_" or (ch.isascii() and ch.isalnum()) for ch in name):
                raise self.error("invalid named capture")
            self.i = end + 1
            self.names.append(name)
            return self.group(flags, depth, capture=True)
        self.i += 2
        new, sign, saw = flags, 1, False
        while self.i < len(s):
            c = s[self.i]
            self.i += 1
            bit = {"i": _I, "m": _M, "s": _S, "U": _U}.get(c)
            if bit is not None:
                new = new | bit if sign > 0 else new & ~bit
                saw = True
            elif c == "-" and sign > 0:
                sign, saw = -1, False
            elif c in ":)":
                if sign < 0 and not saw:
                    break
                if c == ")":
                    return new
                return self.group(new, depth, capture=False)
            else:
                break
        raise self.error("invalid or unsupported Perl syntax")

    def repeat_bounds(self) -> tuple[int, int] | None:
        """``{n}``, ``{n,}``, ``{n,m}`` at the cursor (consumed), else None: then ``{`` is a
        literal, as in Go (``a{,3}``, ``a{01}`` match their own text)."""
        found = re.match(r"\{(0|[1-9][0-9]*)(,(0|[1-9][0-9]*)?)?\}", self.s[self.i :])
        if not found:
            return None
        self.i += found.end()
        low = int(found.group(1)) if len(found.group(1)) < 10 else 10**9
        if found.group(2) is None:
            high = low
        elif found.group(3):
            high = int(found.group(3)) if len(found.group(3)) < 10 else 10**9
        else:
            high = -1
        if low > 1000 or high > 1000 or (high >= 0 and low > high):
            raise self.error("invalid repeat count")
        return low, high

    def repeat(
        self, items: list[_Node], op: str, low: int, high: int, flags: int, last: bool
    ) -> None:
        """Go's parser.repeat: a trailing ``?`` flips greediness (as does (?U)); a repetition
        right after another, or with nothing before it, is an error; {n,m} counts nested inside
        each other may not multiply beyond 1000."""
        lazy = bool(flags & _U)
        if self.i < len(self.s) and self.s[self.i] == "?":
            self.i += 1
            lazy = not lazy
        if last:
            raise self.error("invalid nested repetition operator")
        if not items:
            raise self.error("missing argument to repetition operator")
        sub = items[-1]
        chains = sub.chains
        if op.startswith("{"):
            m = high if high >= 0 else low
            chains = frozenset((m, *ch) for ch in sub.chains) | {(m,)}
            if (low >= 2 or high >= 2) and not _chains_ok(chains):
                raise self.error("invalid repeat count")
        items[-1] = _Node("(?:" + sub.py + ")" + op + ("?" if lazy else ""), chains)

    def literal(self, cp: int, flags: int) -> _Node:
        if flags & _I:
            folded = _fold([(cp, cp)])
            if folded != [(cp, cp)]:
                return self.ranges_node(folded)
        return _Node(_py_char(cp))

    def ranges_node(self, ranges: list[tuple[int, int]]) -> _Node:
        if not ranges:
            return _Node("(?!)")
        body = "".join(
            _py_char(lo) if lo == hi else f"{_py_char(lo)}-{_py_char(hi)}" for lo, hi in ranges
        )
        return _Node(f"[{body}]")

    def escape(self, flags: int) -> list[_Node]:
        s, i = self.s, self.i
        nxt = s[i + 1 : i + 2]
        simple = {"A": "\\A", "z": "\\Z", "b": "(?a:\\b)", "B": "(?!(?a:\\b))"}
        if nxt in simple:
            self.i += 2
            return [_Node(simple[nxt])]
        if nxt == "C":
            raise self.error("invalid escape")
        if nxt == "Q":
            end = s.find("\\E", i + 2)
            text = s[i + 2 :] if end < 0 else s[i + 2 : end]
            self.i = len(s) if end < 0 else end + 2
            return [self.literal(ord(ch), flags) for ch in text]
        group = self.class_escape(flags)
        if group is not None:
            return [self.ranges_node(group)]
        return [self.literal(self.single_escape(), flags)]

    def class_escape(self, flags: int) -> list[tuple[int, int]] | None:
        """``\\d \\s \\w`` (ASCII), their negations, ``\\pX``, ``\\p{Name}``, ``\\P...``,
        ``\\p{^Name}``: folded under (?i), then negated (Go's appendGroup)."""
        s, i = self.s, self.i
        nxt = s[i + 1 : i + 2]
        if nxt.lower() in _PERL:
            self.i += 2
            return self.group_ranges(list(_PERL[nxt.lower()]), nxt.isupper(), flags)
        if nxt not in ("p", "P"):
            return None
        negated = nxt == "P"
        if s[i + 2 : i + 3] == "{":
            end = s.find("}", i)
            if end < 0:
                raise self.error("invalid character class range")
            name = s[i + 3 : end]
            self.i = end + 1
        else:
            name = s[i + 2 : i + 3]
            self.i = i + 3
        if name.startswith("^"):
            negated, name = not negated, name[1:]
        if name != "Any" and name not in _CATEGORIES:
            if name in _GO_SCRIPTS:
                raise PromQLError(
                    f"Unicode script classes such as \\p{{{name}}} are not supported in "
                    "regular expressions here"
                )
            raise self.error("invalid character class range")
        return self.group_ranges(list(_category_ranges(name)), negated, flags)

    @staticmethod
    def group_ranges(
        ranges: list[tuple[int, int]], negated: bool, flags: int
    ) -> list[tuple[int, int]]:
        if flags & _I:
            ranges = _fold(ranges)
        return _negate(ranges) if negated else ranges

    def single_escape(self) -> int:
        """Go's parseEscape: one character (octal, hex, C escapes, escaped punctuation)."""
        s = self.s
        self.i += 1
        if self.i >= len(s):
            raise self.error("trailing backslash")
        c = s[self.i]
        self.i += 1
        if c.isascii() and not c.isalnum():
            return ord(c)
        if c in "1234567" and not (self.i < len(s) and s[self.i] in "01234567"):
            raise self.error("invalid escape")  # a backreference
        if c in "01234567":
            value = ord(c) - 48
            for _ in range(2):
                if self.i < len(s) and s[self.i] in "01234567":
                    value = value * 8 + ord(s[self.i]) - 48
                    self.i += 1
            return value
        if c == "x":
            if s[self.i : self.i + 1] == "{":
                end = s.find("}", self.i)
                digits = s[self.i + 1 : end] if end >= 0 else ""
                if not re.fullmatch(r"[0-9a-fA-F]+", digits) or int(digits, 16) > _MAX_RUNE:
                    raise self.error("invalid escape")
                self.i = end + 1
                return int(digits, 16)
            digits = s[self.i : self.i + 2]
            if not re.fullmatch(r"[0-9a-fA-F]{2}", digits):
                raise self.error("invalid escape")
            self.i += 2
            return int(digits, 16)
        controls = {"a": 7, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11}
        if c in controls:
            return controls[c]
        raise self.error("invalid escape")

    def char_class(self, flags: int) -> _Node:
        """Go's parseClass: ``[...]`` with ranges, escapes, ``\\d``-style and ``\\p`` classes,
        POSIX ``[:name:]`` classes; ``]`` first is literal, ``-`` is literal where it cannot
        form a range; folded under (?i) before the class is negated."""
        s = self.s
        self.i += 1
        negated = s[self.i : self.i + 1] == "^"
        if negated:
            self.i += 1
        ranges: list[tuple[int, int]] = []
        first = True
        while self.i >= len(s) or s[self.i] != "]" or first:
            if self.i >= len(s):
                raise self.error("missing closing ]")
            first = False
            if s.startswith("[:", self.i):
                end = s.find(":]", self.i + 2)
                if end >= 0:
                    name = s[self.i + 2 : end]
                    neg = name.startswith("^")
                    posix = _POSIX.get(name[1:] if neg else name)
                    if posix is None:
                        raise self.error("invalid character class range")
                    ranges.extend(self.group_ranges(list(posix), neg, flags))
                    self.i = end + 2
                    continue
            if s[self.i] == "\\":
                group = self.class_escape(flags)
                if group is not None:
                    ranges.extend(group)
                    continue
            lo = self.class_char()
            hi = lo
            if s[self.i : self.i + 1] == "-" and s[self.i + 1 : self.i + 2] not in ("]", ""):
                self.i += 1
                hi = self.class_char()
                if hi < lo:
                    raise self.error("invalid character class range")
            ranges.extend(_fold([(lo, hi)]) if flags & _I else [(lo, hi)])
        self.i += 1
        merged = _merge(ranges)
        return self.ranges_node(_negate(merged) if negated else merged)

    def class_char(self) -> int:
        if self.i >= len(self.s):
            raise self.error("missing closing ]")
        if self.s[self.i] == "\\":
            return self.single_escape()
        self.i += 1
        return ord(self.s[self.i - 1])


__all__ = [
    "INSTANT_FUNCTIONS",
    "KEEPS_METRIC_NAME",
    "RANGE_FUNCTIONS",
    "Re2",
    "Re2Error",
    "compile_re2",
    "expand",
    "histogram_quantile",
    "instant_function",
    "label_join",
    "label_replace",
    "quantile_sorted",
    "range_function",
]

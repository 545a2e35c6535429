"""Every PromQL function of Prometheus 2.42 (native histograms aside), over all steps at once.

Why one file of about 1,100 lines: it is Prometheus' table of functions, each a few lines that
must match 2.42's Go code; kept together as promql/functions.go keeps them, one function is found
where a reader of Prometheus looks for it.

Why: a dashboard built for Prometheus must get Prometheus' numbers, so each function here follows
2.42's Go code (promql/functions.go, quantile.go, and Go's time package underneath) down to its
order of floating-point operations, its NaN and Inf cases, the samples it needs (``rate`` answers
nothing from one sample) and its error texts, rather than the textbook formula. Checked against a
real Prometheus 2.42 on random data, results agree to the bit, math functions aside (below). The
evaluator (engine.py) calls two entry points:

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

Math (``sin``, ``ln``, ``exp``...) is numpy's ufuncs, not a port of Go's math package: answers
are compared with Prometheus' at a relative 1e-6, and a dashboard cannot show a sine's last bit.
Go's visible edges are kept: NaN outside the domain, ``ln(0) = -Inf``, signed zeros, ``sgn``,
``deg``/``rad`` in 2.42's order of operations, ``exp``/``sinh``/``cosh`` at ±Inf from |x| >= 709.44
(Go's amd64 Exp overflows early) and ``ln``/``log10`` of subnormals (Go's amd64 Log reads them as
normal numbers: ``ln(1e-310)`` is -709.085). Measured against Prometheus 2.42 on 38,121 arguments
(every magnitude from 5e-324 to 1.8e308, both signs; next to ±1, to multiples of π and π/2 and to
the overflow edges; powers of two, integers, ±0, ±Inf, NaN): every NaN, ±Inf and zero (sign
included) is Prometheus'. abs, ceil, floor, sqrt, sgn, deg and rad are bit-equal; ln, log10, exp,
sinh, cosh, tanh, asinh, acosh, atanh and atan at most 2 ulp apart (relative 4.4e-16). The rest
differ where Go's algorithm loses digits, and there numpy's answer is the accurate one (within
1 ulp of glibc's, Go's up to 1e5 ulp away): log2 1 ulp, but within 0.5 of 1 relative 3.8e-2
(absolute 1.5e-16: Go's Log(frac)/Ln2 + exp cancels); asin 3 ulp and acos 98 ulp for |x| <= 0.999,
beyond relative 1.4e-13 and 4e-9 (absolute 2.3e-13: Go takes Sqrt(1 - x*x), and Pi/2 - Asin);
sin, cos and tan relative 4.3e-14 where |result| >= 1e-3 (354 ulp, for |x| >= 2**29: Go's
Payne-Hanek), 1.6e-11 next to zeros and tan's poles (sin and cos absolute 8e-17: Go reduces
|x| < 2**29 by a 3-part π/4).

label_replace's regular expressions are Go's RE2 syntax and matching (leftmost-first, linear
time), run by the RE2 library (google-re2). `compile_re2` refuses beforehand what Go 1.19
(Prometheus 2.42's) refuses and RE2 accepts: ``\\C``, ``(?<name>re)``, non-ASCII group names. On
12,320 patterns (the unit tests' and random ones), each matched against 300 label values, RE2
and Prometheus 2.42 refused the same and matched the same, but for three differences that
remain: RE2's Unicode tables are newer than Go 1.19's 13.0 (scripts such as ``\\p{Kawi}`` are
accepted here and refused by 2.42; classes and case folding of newer characters differ alike);
patterns compiling to more than RE2's default 8 MiB (``\\pL{1000}``) are refused here; groups
nested deeper than Go's 1000 levels are accepted here.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Any

import numpy as np
import re2

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
from fleetpulse.api.selectors import LABEL_NAME

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


# -- math: numpy's ufuncs, with the edges of Go's math package that show -------------------------
# The measured difference from Go's own implementations is in the module docstring.

_LOG2E = 1.4426950408889634  # Go's Log2E
_SMALLEST_NORMAL = 2.2250738585072014e-308


def _go_log(ufunc: np.ufunc, scale: float) -> Callable[[np.ndarray], np.ndarray]:
    """``ufunc`` (np.log, np.log10), except that a positive subnormal answers as Go's amd64 Log
    computes it: its frexp reads the exponent bits as if the number were normal, so x with
    mantissa m counts as (1 + m/2**52) x 2**-1023 (``ln(vector(1e-310))`` is -709.085 in
    Prometheus, not -713.8)."""

    def log(x: np.ndarray) -> np.ndarray:
        as_go = (np.log1p(x * 2.0**1022) - 1023 * math.log(2)) * scale
        return np.where((x > 0) & (x < _SMALLEST_NORMAL), as_go, ufunc(x))

    return log


def _exp_overflows(x: np.ndarray) -> np.ndarray:
    """Where Go's amd64 Exp answers +Inf for |x|: it scales by 2**round(x/ln 2), so from that
    exponent 1024 on (|x| >= 709.44, not 709.78: ``exp(709.5)`` is +Inf in Prometheus; its sinh
    and cosh call Exp there)."""
    return np.rint(np.abs(x) * _LOG2E) >= 1024


def _sgn(x: np.ndarray) -> np.ndarray:
    """Prometheus' sgn: -1, 1, or x itself (NaN, ±0; np.sign loses -0's sign)."""
    return np.where(x < 0, -1.0, np.where(x > 0, 1.0, x))


_MATH_FUNCS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "abs": np.abs,
    "ceil": np.ceil,
    "floor": np.floor,
    "exp": lambda x: np.where(_exp_overflows(x) & (x > 0), np.inf, np.exp(x)),
    "sqrt": np.sqrt,
    "ln": _go_log(np.log, 1.0),
    "log2": np.log2,
    "log10": _go_log(np.log10, 1 / math.log(10)),
    "sgn": _sgn,
    "acos": np.arccos,
    "acosh": np.arccosh,
    "asin": np.arcsin,
    "asinh": np.arcsinh,
    "atan": np.arctan,
    "atanh": np.arctanh,
    "cos": np.cos,
    "cosh": lambda x: np.where(_exp_overflows(x), np.inf, np.cosh(x)),
    "sin": np.sin,
    "sinh": lambda x: np.where(_exp_overflows(x), np.copysign(np.inf, x), np.sinh(x)),
    "tan": np.tan,
    "tanh": np.tanh,
    # 2.42's own operations, in its order (v * 180 / Pi overflows where np.degrees would not)
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
    if not LABEL_NAME.fullmatch(dst):
        raise PromQLError(f"invalid destination label name in label_replace(): {dst}", "execution")
    out: list[Labels] = []
    # by source value: a match through RE2's Python binding costs some 4 us (Python's re: 0.2)
    expanded: dict[str, str | None] = {}
    for labels in vec.labels:
        value = labels.get(src, "")
        if value not in expanded:
            found = compiled.pattern.search(value)
            expanded[value] = None if found is None else expand(replacement, found, compiled.names)
        result = expanded[value]
        if result is None:
            out.append(labels)
            continue
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
        if not LABEL_NAME.fullmatch(src):
            raise PromQLError(f"invalid source label name in label_join(): {src}", "execution")
    if not LABEL_NAME.fullmatch(dst):
        raise PromQLError(f"invalid destination label name in label_join(): {dst}", "execution")
    out: list[Labels] = []
    for labels in vec.labels:
        joined = separator.join(labels.get(src, "") for src in sources)
        new = {k: val for k, val in labels.items() if k != dst}
        if joined:
            new[dst] = joined
        out.append(new)
    return Vector(vec.labels, vec.values, vec.present).with_labels(out)


def expand(template: str, found: Any, names: list[str | None]) -> str:
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


# -- Go's regular expressions: the RE2 library, and what Go 1.19 reads differently --------------


class Re2Error(ValueError):
    """A pattern Go's regexp.Compile (Go 1.19, Prometheus 2.42's) refuses."""


@dataclass(frozen=True)
class Re2:
    pattern: Any  # re2's compiled pattern (the package has no type hints)
    names: list[str | None]  # the name of capture group i + 1, None if unnamed


_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # a refused pattern is the query's error, answered, not logged

# One pass over the pattern, stepping over quoted text, escapes and classes, finds what Go 1.19
# reads differently from the RE2 library: Go refuses ``\C`` (one byte) and ``(?<name>...)``
# (Go 1.22 added it), and allows only ASCII letters, digits and _ in ``(?P<name>...)``. It also
# lists the capture groups' names: RE2 tells only the leftmost of two groups of one name, and
# Go's Expand reads the first that took part.
_RE2_SCAN = re.compile(
    r"\\Q.*?(?:\\E|\Z)|\\(.)|\[\^?\]?(?:\[:\^?[a-z]+:\]|\\.|[^\]\\])*\]"
    r"|\(\?P<([^>]*)>|(\(\?<)|(\()(?!\?)",
    re.DOTALL,
)
_GO_GROUP_NAME = re.compile(r"[A-Za-z0-9_]+")


@lru_cache(maxsize=256)
def compile_re2(source: str) -> Re2:
    """``source`` compiled as Go's regexp.Compile would (RE2 syntax, Perl flags, leftmost-first
    matches, linear time), or `Re2Error` where Go refuses it. Use ``.pattern.search`` (Go's Find
    is unanchored; anchor the source as Prometheus does)."""
    names: list[str | None] = []
    for item in _RE2_SCAN.finditer(source):
        escaped, name, angle, capture = item.groups()
        if escaped == "C" or angle or (name is not None and not _GO_GROUP_NAME.fullmatch(name)):
            raise Re2Error(f"invalid or unsupported Perl syntax: {item.group()}")
        if name is not None or capture:
            names.append(name)
    try:
        return Re2(re2.compile(source, _RE2_OPTIONS), names)
    except (re2.error, UnicodeEncodeError) as exc:
        raise Re2Error(str(exc)) from None


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

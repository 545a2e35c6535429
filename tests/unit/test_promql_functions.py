"""PromQL functions (api/promql/functions.py) against Prometheus 2.42.

Two kinds of checks:

- Every function against a plain reference: 2.42's Go code transliterated into a Python loop over
  one window (or one vector element) at a time, on random data with NaN, ±Inf, counter resets,
  samples sitting exactly on window edges, windows of 0, 1 and 2 samples. The vectorized code
  replays Go's order of operations, so the two must agree to the bit.
- Values read from a real Prometheus 2.42 (Debian's 2.42.0+ds, queried over HTTP on a TSDB
  backfilled with the same samples): the cases where Prometheus is not what one would guess.
  The math functions are numpy's, not Go's: their finite values are compared within a relative
  tolerance, their special values (NaN, ±Inf, ±0) exactly.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
import random
from collections.abc import Callable

import numpy as np
import pytest

from fleetpulse.api.promql.errors import PromQLError
from fleetpulse.api.promql.functions import (
    INSTANT_FUNCTIONS,
    KEEPS_METRIC_NAME,
    RANGE_FUNCTIONS,
    Re2Error,
    compile_re2,
    histogram_quantile,
    instant_function,
    label_join,
    label_replace,
    quantile_sorted,
    range_function,
)
from fleetpulse.api.promql.model import (
    Labels,
    RangeSamples,
    Scalar,
    String,
    Vector,
    format_value,
    format_values,
)

US = 1_000_000
NAN, INF = math.nan, math.inf
Points = list[tuple[int, float]]  # (time in us, value), in time order


def make_samples(series: list[Points], labels: list[Labels] | None = None) -> RangeSamples:
    labels = labels or [{"s": str(i)} for i in range(len(series))]
    index = [i for i, pts in enumerate(series) for _ in pts]
    ts = [t for pts in series for t, _ in pts]
    values = [v for pts in series for _, v in pts]
    base = min(ts, default=0) - 10**12
    return RangeSamples(
        labels,
        np.array(index, np.int64),
        np.array(ts, np.int64),
        np.array(values, np.float64),
        base,
        3 * 10**12 + (max(ts, default=0) - min(ts, default=0)),
    )


def same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return (math.isnan(a) and math.isnan(b)) or a == b


# -- the references: 2.42's Go, one window at a time ---------------------------------------------


def kahan_inc(inc: float, total: float, comp: float) -> tuple[float, float]:
    t = total + inc
    if abs(total) >= abs(inc):
        comp += (total - t) + inc
    else:
        comp += (inc - t) + total
    return t, comp


def ref_extrapolated(
    pts: Points, end_us: int, range_us: int, is_counter: bool, is_rate: bool
) -> float | None:
    if len(pts) < 2:
        return None
    start_us = end_us - range_us
    result = pts[-1][1] - pts[0][1]
    if is_counter:
        prev = pts[0][1]
        for _, v in pts[1:]:
            if v < prev:
                result += prev
            prev = v
    to_start = (pts[0][0] - start_us) / US
    to_end = (end_us - pts[-1][0]) / US
    sampled = (pts[-1][0] - pts[0][0]) / US
    average = sampled / (len(pts) - 1)
    if is_counter and result > 0 and pts[0][1] >= 0:
        to_zero = sampled * (pts[0][1] / result)
        if to_zero < to_start:
            to_start = to_zero
    threshold = average * 1.1
    interval = sampled
    interval += to_start if to_start < threshold else average / 2
    interval += to_end if to_end < threshold else average / 2
    factor = interval / sampled
    if is_rate:
        factor /= range_us / US
    return result * factor


def ref_instant(pts: Points, is_rate: bool) -> float | None:
    if len(pts) < 2:
        return None
    (t0, v0), (t1, v1) = pts[-2], pts[-1]
    result = v1 if is_rate and v1 < v0 else v1 - v0
    if t1 == t0:
        return None
    return result / ((t1 - t0) / US) if is_rate else result


def ref_regression(pts: Points, intercept_us: int) -> tuple[float, float]:
    n = 0.0
    sx = cx = sy = cy = sxy = cxy = sx2 = cx2 = 0.0
    init = pts[0][1]
    const = True
    for i, (t, v) in enumerate(pts):
        if const and i > 0 and v != init:
            const = False
        n += 1
        x = (t - intercept_us) / US
        sx, cx = kahan_inc(x, sx, cx)
        sy, cy = kahan_inc(v, sy, cy)
        sxy, cxy = kahan_inc(x * v, sxy, cxy)
        sx2, cx2 = kahan_inc(x * x, sx2, cx2)
    if const:
        return (NAN, NAN) if math.isinf(init) else (0.0, init)
    sx, sy, sxy, sx2 = sx + cx, sy + cy, sxy + cxy, sx2 + cx2
    with np.errstate(all="ignore"):
        cov = np.float64(sxy) - np.float64(sx) * sy / n
        var = np.float64(sx2) - np.float64(sx) * sx / n
        slope = cov / var
        return float(slope), float(np.float64(sy) / n - slope * sx / n)


def ref_holt_winters(pts: Points, sf: float, tf: float) -> float | None:
    if len(pts) < 2:
        return None
    s0, s1 = 0.0, pts[0][1]
    b = pts[1][1] - pts[0][1]
    for i in range(1, len(pts)):
        x = sf * pts[i][1]
        if i - 1 != 0:
            b = tf * (s1 - s0) + (1 - tf) * b
        y = (1 - sf) * (s1 + b)
        s0, s1 = s1, x + y
    return s1


def ref_quantile(q: float, values: list[float]) -> float:
    if not values or math.isnan(q):
        return NAN
    if q < 0:
        return -INF
    if q > 1:
        return INF
    ordered = sorted((v for v in values if math.isnan(v)), key=lambda _: 0) + sorted(
        v for v in values if not math.isnan(v)
    )
    n = float(len(ordered))
    rank = q * (n - 1)
    lower = max(0.0, math.floor(rank))
    upper = min(n - 1, lower + 1)
    weight = rank - math.floor(rank)
    with np.errstate(invalid="ignore"):
        return float(
            np.float64(ordered[int(lower)]) * (1 - weight)
            + np.float64(ordered[int(upper)]) * weight
        )


def ref_over_time(name: str, values: list[float]) -> float:
    if name == "sum_over_time":
        s = c = 0.0
        for v in values:
            s, c = kahan_inc(v, s, c)
        return s if math.isinf(s) else s + c
    if name == "avg_over_time":
        mean = count = c = 0.0
        for v in values:
            count += 1
            if math.isinf(mean):
                if math.isinf(v) and (mean > 0) == (v > 0):
                    continue
                if not math.isinf(v) and not math.isnan(v):
                    continue
            mean, c = kahan_inc(v / count - mean / count, mean, c)
        return mean if math.isinf(mean) else mean + c
    if name in ("stddev_over_time", "stdvar_over_time"):
        count = mean = cm = aux = ca = 0.0
        for v in values:
            count += 1
            delta = v - (mean + cm)
            mean, cm = kahan_inc(delta / count, mean, cm)
            aux, ca = kahan_inc(delta * (v - (mean + cm)), aux, ca)
        var = (aux + ca) / count
        return math.sqrt(var) if name == "stddev_over_time" and var >= 0 else var
    if name in ("max_over_time", "min_over_time"):
        best = values[0]
        for v in values:
            better = v > best if name == "max_over_time" else v < best
            if better or math.isnan(best):
                best = v
        return best
    if name == "changes":
        return float(
            sum(
                1
                for a, b in itertools.pairwise(values)
                if b != a and not (math.isnan(a) and math.isnan(b))
            )
        )
    if name == "resets":
        return float(sum(1 for a, b in itertools.pairwise(values) if b < a))
    if name == "count_over_time":
        return float(len(values))
    if name == "last_over_time":
        return values[-1]
    assert name == "present_over_time"
    return 1.0


def reference(
    name: str, pts: Points, end_us: int, range_us: int, params: list[float], eval_us: int
) -> float | None:
    """The value 2.42 gives for one window (None: no sample in the output)."""
    window = [(t, v) for t, v in pts if end_us - range_us <= t <= end_us]
    if not window:
        return None
    values = [v for _, v in window]
    if name in ("rate", "increase", "delta"):
        return ref_extrapolated(window, end_us, range_us, name != "delta", name == "rate")
    if name in ("irate", "idelta"):
        return ref_instant(window, name == "irate")
    if name == "deriv":
        return ref_regression(window, window[0][0])[0] if len(window) >= 2 else None
    if name == "predict_linear":
        if len(window) < 2:
            return None
        slope, intercept = ref_regression(window, eval_us)
        with np.errstate(invalid="ignore"):
            return float(np.float64(slope) * params[0] + intercept)
    if name == "holt_winters":
        return ref_holt_winters(window, params[0], params[1])
    if name == "quantile_over_time":
        return ref_quantile(params[0], values)
    return ref_over_time(name, values)


# -- random data ---------------------------------------------------------------------------------

T0 = 1_700_000_000 * US


def random_series(rng: random.Random) -> list[Points]:
    def times(kind: str) -> list[int]:
        t, out = T0, []
        while t < T0 + 1800 * US:
            out.append(t)
            step = {"aligned": 15_000, "jitter": rng.randint(2_000, 30_000)}.get(kind)
            if step is None:  # sparse: windows of 0, 1, 2 samples
                step = rng.randint(40_000, 200_000)
            t += step * 1000  # milliseconds, as Prometheus stores them
        return out

    series: list[Points] = []
    for kind in ("aligned", "jitter"):  # counters with resets
        v, pts = rng.uniform(0, 50), []
        for t in times(kind):
            v = rng.uniform(0, 3) if rng.random() < 0.05 else v + rng.expovariate(0.3)
            pts.append((t, v))
        series.append(pts)
    special = [NAN, INF, -INF, 0.0, 1e100, -1e100, 1e-5]
    for kind in ("aligned", "jitter", "sparse"):  # gauges
        pts = []
        for t in times(kind):
            r = rng.random()
            v = rng.choice(special) if r < 0.15 else rng.gauss(0, 10) if r < 0.8 else 7.0
            pts.append((t, v))
        series.append(pts)
    series.append([(t, 1e9 + rng.random() * 1e-3) for t in times("jitter")])  # tiny drops
    return series


RANGE_CASES: list[tuple[str, list[float]]] = [
    ("rate", []),
    ("increase", []),
    ("delta", []),
    ("irate", []),
    ("idelta", []),
    ("deriv", []),
    ("predict_linear", [600.0]),
    ("predict_linear", [0.0]),
    ("holt_winters", [0.3, 0.7]),
    ("holt_winters", [0.9, 0.1]),
    ("changes", []),
    ("resets", []),
    ("avg_over_time", []),
    ("min_over_time", []),
    ("max_over_time", []),
    ("sum_over_time", []),
    ("count_over_time", []),
    ("last_over_time", []),
    ("present_over_time", []),
    ("stddev_over_time", []),
    ("stdvar_over_time", []),
    ("quantile_over_time", [0.5]),
    ("quantile_over_time", [0.0]),
    ("quantile_over_time", [0.9]),
    ("quantile_over_time", [1.0]),
    ("quantile_over_time", [-0.5]),
    ("quantile_over_time", [1.5]),
    ("quantile_over_time", [NAN]),
]


def test_every_range_function_is_covered() -> None:
    assert {name for name, _ in RANGE_CASES} == RANGE_FUNCTIONS
    assert {"last_over_time"} == KEEPS_METRIC_NAME


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize(("range_s", "step_s"), [(60, 15), (150, 7), (37, 15)])
def test_range_functions_match_the_per_window_reference(
    seed: int, range_s: int, step_s: int
) -> None:
    rng = random.Random(seed)
    series = random_series(rng)
    samples = make_samples(series)
    ref_us = T0 + np.arange(0, 1800, step_s, dtype=np.int64) * US
    eval_us = ref_us + 45 * US  # as if under "offset 45s": predict_linear anchors at eval time
    range_us = range_s * US
    for name, params in RANGE_CASES:
        arrays = [np.full(len(ref_us), p) for p in params]
        values, present = range_function(name, samples, ref_us, range_us, arrays, eval_us=eval_us)
        assert values.shape == present.shape == (len(series), len(ref_us))
        for s, pts in enumerate(series):
            for k, end in enumerate(ref_us.tolist()):
                want = reference(name, pts, end, range_us, params, int(eval_us[k]))
                got = float(values[s, k]) if present[s, k] else None
                assert same(want, got), (name, params, s, k, want, got)


def test_window_edges_are_both_included() -> None:
    # samples at 0, 15, 30, 45 and 60 s; the window [0 s, 60 s] holds all five
    samples = make_samples([[(T0 + i * 15 * US, float(i)) for i in range(5)]])
    values, _ = range_function("count_over_time", samples, np.array([T0 + 60 * US]), 60 * US, [])
    assert values[0, 0] == 5
    values, _ = range_function("count_over_time", samples, np.array([T0 + 59 * US]), 59 * US, [])
    assert values[0, 0] == 4


def test_rate_walks_many_resets_in_order() -> None:
    # Go adds the values before each drop one after the other: with 1e100 among them the order
    # decides the result, which a single sum of the drops gets wrong
    pts = [(T0 + i * 15 * US, v) for i, v in enumerate([1.0, 1e100, -1e100, 3.5, 1.0, 0.5])]
    values, _ = range_function(
        "increase", make_samples([pts]), np.array([T0 + 75 * US]), 75 * US, []
    )
    assert values[0, 0] == ref_extrapolated(pts, T0 + 75 * US, 75 * US, True, False)


def test_empty_inputs() -> None:
    empty = make_samples([[]], [{"s": "x"}])
    values, present = range_function("rate", empty, np.array([T0, T0 + US]), 60 * US, [])
    assert values.shape == (1, 2) and not present.any()
    none = RangeSamples([], np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0), 0, 10)
    values, present = range_function("sum_over_time", none, np.array([5]), 3, [])
    assert values.shape == (0, 1)
    with pytest.raises(PromQLError, match="unknown range function"):
        range_function("absent_over_time", none, np.array([5]), 3, [])


# -- values confirmed on Prometheus 2.42 ---------------------------------------------------------

B = T0  # the hand-checked data starts here; every query below is evaluated at B + 60 s
HAND: dict[str, Points] = {
    "reset": [
        (B, 1.0),
        (B + 15 * US, 5.0),
        (B + 30 * US, 2.0),
        (B + 45 * US, 6.0),
        (B + 60 * US, 9.0),
    ],
    "late": [(B + 20 * US, 10.0), (B + 35 * US, 12.0), (B + 50 * US, 19.0)],
    "kahan": [(B, 1.0), (B + 15 * US, 1e100), (B + 30 * US, 1.0), (B + 45 * US, -1e100)],
    "nan": [(B, NAN), (B + 15 * US, 1.0), (B + 30 * US, 2.0), (B + 45 * US, NAN)],
    "allnan": [(B, NAN), (B + 15 * US, NAN)],
    "const": [(B, 3.0), (B + 15 * US, 3.0), (B + 30 * US, 3.0)],
    "line": [(B, 1.0), (B + 15 * US, 4.0), (B + 30 * US, 2.0), (B + 45 * US, 8.0)],
    "inf": [(B, 1.0), (B + 15 * US, INF), (B + 30 * US, 2.0)],
}

# (query as sent to Prometheus, series, answer); None: no sample
CONFIRMED: list[tuple[str, str, float | None]] = [
    ("rate(c[1m])", "reset", 0.21666666666666667),
    ("rate(c[1m])", "late", 0.2375),
    ("increase(c[1m])", "reset", 13.0),
    ("increase(c[1m])", "late", 14.25),
    ("delta(c[1m])", "reset", 8.0),
    ("irate(c[1m])", "reset", 0.2),
    ("irate(c[1m])", "late", 0.4666666666666667),
    ("idelta(c[1m])", "late", 7.0),
    ("rate(c[59s])", "late", 0.24152542372881355),
    ("rate(c[59s])", "reset", 0.2),
    ("increase(c[45s])", "reset", 9.0),
    ("increase(c[45s])", "late", 13.5),
    ("resets(c[1m])", "reset", 1.0),
    ("changes(c[1m])", "reset", 4.0),
    ("sum_over_time(k[1m])", "kahan", 2.0),  # Kahan: a plain sum says 0
    ("avg_over_time(k[1m])", "kahan", -2.4283361152821613e83),
    ("stddev_over_time(k[1m])", "kahan", 7.071067811865476e99),
    ("stdvar_over_time(g[1m])", "line", 7.1875),
    ("stddev_over_time(g[1m])", "line", 2.680951323690902),
    ("stddev_over_time(g[1m])", "const", 0.0),
    ("stddev_over_time(g[1m])", "inf", NAN),
    ("quantile_over_time(0, n[1m])", "nan", NAN),  # NaN sorts first
    ("quantile_over_time(0.5, n[1m])", "nan", NAN),
    ("quantile_over_time(1, n[1m])", "nan", 2.0),
    ("quantile_over_time(0.5, g[1m])", "inf", NAN),  # 2*(1-0) + Inf*0
    ("quantile_over_time(0.25, g[1m])", "inf", 1.5),
    ("quantile_over_time(0.25, g[1m])", "line", 1.75),
    ("max_over_time(n[1m])", "nan", 2.0),
    ("max_over_time(n[1m])", "allnan", NAN),
    ("min_over_time(n[1m])", "nan", 1.0),
    ("avg_over_time(n[1m])", "nan", NAN),
    ("changes(n[1m])", "nan", 3.0),
    ("changes(n[1m])", "allnan", 0.0),
    ("count_over_time(n[1m])", "allnan", 2.0),
    ("last_over_time(n[1m])", "nan", NAN),
    ("deriv(g[1m])", "line", 0.12666666666666668),
    ("deriv(g[1m])", "const", 0.0),
    ("deriv(g[1m])", "inf", NAN),
    ("predict_linear(g[1m], 60)", "line", 16.1),
    ("predict_linear(g[1m], 60)", "const", 3.0),
    ("holt_winters(g[1m], 0.5, 0.5)", "line", 7.125),
    ("holt_winters(g[1m], 0.5, 0.5)", "inf", INF),
    ("holt_winters(c[1m], 0.3, 0.8)", "reset", 9.560839999999997),
    ("holt_winters(c[1m], 0.3, 0.8)", "late", 15.499999999999996),
    ("avg_over_time(g[1m])", "line", 3.75),
    ("avg_over_time(g[1m])", "inf", INF),
    ("sum_over_time(g[1m])", "inf", INF),
    ("changes(g[1m])", "inf", 2.0),
    ("resets(g[1m])", "inf", 1.0),
    ("delta(g[1m])", "inf", 1.25),
    ("delta(g[1m])", "line", 9.333333333333332),
    ("irate(g[1m])", "inf", 0.13333333333333333),
    ("idelta(g[1m])", "inf", -INF),
    ("present_over_time(c[1m])", "late", 1.0),
]


def _parse(query: str) -> tuple[str, int, list[float]]:
    name, rest = query.split("(", 1)
    args = [a.strip() for a in rest.rstrip(")").split(",")]
    selector = next(a for a in args if "[" in a)
    range_s = {"1m": 60, "59s": 59, "45s": 45}[selector.split("[")[1].rstrip("]")]
    params = [float(a) for a in args if a != selector]
    return name, range_s, params


@pytest.mark.parametrize(("query", "series", "answer"), CONFIRMED)
def test_values_confirmed_on_prometheus(query: str, series: str, answer: float | None) -> None:
    name, range_s, params = _parse(query)
    at = np.array([B + 60 * US])
    values, present = range_function(
        name, make_samples([HAND[series]]), at, range_s * US, [np.array([p]) for p in params]
    )
    assert same(answer, float(values[0, 0]) if present[0, 0] else None), (values, present)


def test_predict_linear_anchors_at_the_evaluation_time() -> None:
    # Prometheus: predict_linear(g[1m] offset 15s, 60) at B+60s == 16.1, the same as without the
    # offset, because the window [B-15s, B+45s] holds the same samples and the intercept is taken
    # at the evaluation time B+60s, not at the window's end
    at = B + 60 * US
    values, _ = range_function(
        "predict_linear",
        make_samples([HAND["line"]]),
        np.array([at - 15 * US]),
        60 * US,
        [np.array([60.0])],
        eval_us=np.array([at]),
    )
    assert values[0, 0] == 16.1


@pytest.mark.parametrize(
    ("sf", "tf", "message"),
    [
        (0.5, 1.0, "invalid trend factor. Expected: 0 < tf < 1, got: 1.000000"),
        (0.0, 0.5, "invalid smoothing factor. Expected: 0 < sf < 1, got: 0.000000"),
        (-1.0, 2.0, "invalid smoothing factor. Expected: 0 < sf < 1, got: -1.000000"),
        (0.5, INF, "invalid trend factor. Expected: 0 < tf < 1, got: +Inf"),
        (
            2e20,
            INF,
            "invalid smoothing factor. Expected: 0 < sf < 1, got: 200000000000000000000.000000",
        ),
    ],
)
def test_holt_winters_refuses_factors_as_prometheus(sf: float, tf: float, message: str) -> None:
    samples = make_samples([HAND["line"]])
    with pytest.raises(PromQLError) as err:
        range_function(
            "holt_winters",
            samples,
            np.array([B + 60 * US]),
            60 * US,
            [np.array([sf]), np.array([tf])],
        )
    assert str(err.value) == message and err.value.kind == "execution"


def test_holt_winters_factors_are_checked_only_where_a_window_has_samples() -> None:
    samples = make_samples([HAND["line"]])
    far = np.array([B + 10**6 * US])  # Prometheus: holt_winters(g[5m] offset 100d, 2, 2) is empty
    _, present = range_function("holt_winters", samples, far, 60 * US, [np.array([2.0])] * 2)
    assert not present.any()
    # NaN passes the check (NaN <= 0 is false) and yields NaN
    values, _ = range_function(
        "holt_winters",
        samples,
        np.array([B + 60 * US]),
        60 * US,
        [np.array([NAN]), np.array([0.5])],
    )
    assert math.isnan(values[0, 0])
    # the first step, in evaluation order, that has a sample and a bad factor is reported
    at = B + np.array([60, 120, 180]) * US
    with pytest.raises(PromQLError, match=r"got: -1800\.000000"):
        range_function(
            "holt_winters",
            samples,
            at,
            200 * US,
            [np.array([-1800.0, -1740.0, 0.5]), np.array([0.5] * 3)],
        )


def test_quantile_sorted_is_the_aggregation_quantile() -> None:
    ordered = np.array([NAN, 1.0, 2.0, 3.0, 10.0, 20.0])
    out = quantile_sorted(
        ordered, np.array([0, 1, 4, 4]), np.array([4, 3, 2, 0]), np.array([0.1, 0.25, 2.0, 0.5])
    )
    assert math.isnan(out[0]) and out[1] == 1.5 and out[2] == INF and math.isnan(out[3])


# -- instant functions ---------------------------------------------------------------------------

STEPS = np.array([T0, T0 + 15 * US])


def vec(values: list[float], labels: list[Labels] | None = None, steps: int = 1) -> Vector:
    labels = labels or [{"__name__": "m", "i": str(i)} for i in range(len(values))]
    array = np.repeat(np.array(values, np.float64)[:, None], steps, axis=1)
    return Vector(labels, array, np.ones(array.shape, bool))


def one(name: str, x: float, *params: float) -> float:
    out = instant_function(name, [vec([x]), *(Scalar(np.array([p])) for p in params)], STEPS[:1])
    return float(out.values[0, 0])


# (function, argument, Prometheus 2.42's answer[, relative tolerance]): numpy's ufuncs are a few
# ulp from Go's math package (1e-12 leaves room for another CPU's SIMD path); special values exact
MATH_CONFIRMED: list[tuple[str, float, float] | tuple[str, float, float, float]] = [
    ("sin", 3.0, 0.1411200080598672),
    ("cos", 100.0, 0.8623188722876839),
    ("tan", 1.5, 14.101419947171719),
    ("sin", 1e22, -0.8522008497671889),
    ("tan", 1e300, 1.4214488238747243),
    ("cos", 1e15, -0.5131937377869702),
    # Go's Asin takes Sqrt(1 - x*x), which loses digits next to ±1; its Acos is Pi/2 - Asin
    ("asin", 0.9999999, 1.5703491131957785, 1e-14),
    ("acos", 0.9999999, 0.0004472135991180348, 1e-10),
    ("atan", -3.0, -1.2490457723982544),
    ("ln", 3.0, 1.0986122886681096),
    ("ln", 1e-310, -709.0850815488945),  # amd64 Log reads a subnormal's exponent bits
    ("log10", 1e-310, -307.9517381166022),
    ("log2", 1e-310, -1029.7977094150824),  # Go's Log2 normalizes first
    ("ln", -0.0, -INF),
    ("ln", -1.0, NAN),
    ("ln", INF, INF),
    ("log2", 10.0, 3.321928094887362),
    ("log2", 2.0**-1074, -1074.0),
    ("log10", 0.7, -0.1549019599857432),
    ("log10", 1000.0, 3.0),
    ("exp", 1.0, 2.718281828459045),
    ("exp", 709.436, 1.270983941812912e308),
    ("exp", 709.437, INF),
    ("exp", 709.5, INF),  # Go's Exp overflows before the true limit
    ("exp", -INF, 0.0),
    ("exp", -800.0, 0.0),
    ("sinh", 710.0, INF),
    ("sinh", -709.5, -INF),
    ("sinh", -0.0, -0.0),
    ("cosh", 709.5, INF),
    ("cosh", -30.0, 5343237290762.23),
    ("tanh", 0.3, 0.2913126124515909),
    ("tanh", -INF, -1.0),
    ("deg", 1.0, 57.29577951308232),
    ("deg", 1e307, INF),  # v * 180 overflows first
    ("rad", 180.0, 3.141592653589793),
    ("sgn", -0.5, -1.0),
    ("sgn", -0.0, -0.0),
    ("sgn", NAN, NAN),
    ("sqrt", -1.0, NAN),
    ("acosh", 0.5, NAN),
    ("atanh", 1.0, INF),
    ("atanh", -1.0, -INF),
    ("asin", 2.0, NAN),
    ("sin", INF, NAN),
    ("sin", -0.0, -0.0),
    ("tan", -0.0, -0.0),
    ("atan", -INF, -math.pi / 2),
]


@pytest.mark.parametrize(
    ("name", "x", "answer", "rel_tol"), [(*c, 1e-12)[:4] for c in MATH_CONFIRMED]
)
def test_math_matches_prometheus(name: str, x: float, answer: float, rel_tol: float) -> None:
    got = one(name, x)
    if math.isfinite(answer) and answer != 0:
        assert math.isclose(got, answer, rel_tol=rel_tol), (got, answer)
    else:
        assert same(got, answer), got
        assert math.isnan(got) or math.copysign(1, got) == math.copysign(1, answer), got


# (function, Unix seconds, Prometheus 2.42's answer)
DATES_CONFIRMED = [
    ("day_of_week", 951782400.0, 2),  # 2000-02-29, a Tuesday
    ("day_of_month", 951782400.0, 29),
    ("day_of_year", 951782400.0, 60),
    ("days_in_month", 951782400.0, 29),
    ("month", 951782400.0, 2),
    ("year", 951782400.0, 2000),
    ("hour", 951868799.0, 23),
    ("minute", 951868799.0, 59),
    ("day_of_week", -2208988800.0, 1),
    ("year", -2208988801.0, 1899),
    ("days_in_month", -2208988801.0, 31),
    ("month", -1.5, 12),  # int64(-1.5) is -1: 1969-12-31 23:59:59
    ("day_of_month", -1.5, 31),
    ("hour", -1.5, 23),
    ("minute", -1.5, 59),
    ("year", 1e15, 31690708),
    ("day_of_year", 1e15, 187),
    ("days_in_month", 4107456000.0, 28),
    ("year", NAN, 292277026596),  # int64(NaN) is the minimum int64 on amd64
    ("year", 1e19, 292277026596),
    ("year", -1e19, 292277026596),
    ("year", INF, 292277026596),
    ("month", NAN, 12),
    ("day_of_month", NAN, 4),
    ("day_of_week", NAN, 0),
    ("day_of_year", NAN, 339),
    ("days_in_month", NAN, 31),
    ("hour", NAN, 15),
    ("minute", NAN, 30),
]


@pytest.mark.parametrize(("name", "x", "answer"), DATES_CONFIRMED)
def test_dates_match_prometheus(name: str, x: float, answer: int) -> None:
    assert one(name, x) == answer


def test_dates_match_the_calendar() -> None:
    rng = np.random.default_rng(3)
    seconds = np.concatenate(
        (rng.integers(-(10**11), 10**11, 3000), rng.integers(-(10**9), 4 * 10**9, 3000))
    ).astype(np.float64)
    seconds += rng.random(len(seconds)) * np.sign(seconds)
    v = vec(list(seconds))
    out = {
        name: instant_function(name, [v], STEPS[:1]).values[:, 0]
        for name in (
            "year",
            "month",
            "day_of_month",
            "day_of_year",
            "day_of_week",
            "hour",
            "minute",
            "days_in_month",
        )
    }
    epoch = dt.datetime(1970, 1, 1)
    for i, x in enumerate(seconds.tolist()):
        whole = int(x)  # Go's int64(): toward zero
        try:
            day = epoch + dt.timedelta(seconds=whole)
        except OverflowError:
            continue  # before year 1 or after 9999: Python's calendar stops there
        nxt = (day.replace(day=1) + dt.timedelta(days=32)).replace(day=1)
        assert out["year"][i] == day.year
        assert out["month"][i] == day.month
        assert out["day_of_month"][i] == day.day
        assert out["day_of_year"][i] == day.timetuple().tm_yday
        assert out["day_of_week"][i] == (day.weekday() + 1) % 7
        assert out["hour"][i] == day.hour and out["minute"][i] == day.minute
        assert out["days_in_month"][i] == (nxt - day.replace(day=1)).days


def test_date_functions_without_argument_use_the_step_time() -> None:
    out = instant_function("hour", [], np.array([1700000000 * US, 1700003600 * US]))
    assert out.labels == [{}] and out.values.tolist() == [[22.0, 23.0]] and out.present.all()
    assert instant_function("year", [], np.array([1700000000123456])).values[0, 0] == 2023


MATH_NAMES = """abs ceil floor exp sqrt ln log2 log10 sgn acos acosh asin asinh atan atanh cos cosh
    sin sinh tan tanh deg rad""".split()  # noqa: SIM905


@pytest.mark.parametrize("name", MATH_NAMES)
def test_math_functions_agree_with_pythons_math_within_ulps(name: str) -> None:
    """numpy's and the C library's implementations differ in the last bits at most; special
    values agree."""
    plain: dict[str, Callable[[float], float]] = {
        "ln": math.log,
        "log2": math.log2,
        "log10": math.log10,
        "deg": math.degrees,
        "rad": math.radians,
        "abs": abs,
        "ceil": lambda x: float(np.ceil(x)),
        "floor": lambda x: float(np.floor(x)),
        "sgn": lambda x: x if x == 0 or math.isnan(x) else math.copysign(1.0, x),
    }
    fn = plain.get(name, getattr(math, name, None))
    assert fn is not None
    rng = np.random.default_rng(5)
    xs = np.concatenate(
        (
            rng.normal(0, 3, 400),
            rng.uniform(-1, 1, 200),
            rng.uniform(1, 1e6, 200),
            [0.0, -0.0, 1.0, -1.0, 0.5, 2.5, -2.5, 1e-300, 1e300, INF, -INF, NAN, 7e8, 1e10],
        )
    )
    got = instant_function(name, [vec(list(xs))], STEPS[:1]).values[:, 0]
    for x, y in zip(xs.tolist(), got.tolist(), strict=True):
        try:
            want = fn(x)
        except (ValueError, OverflowError):
            want = NAN if not (name in ("exp", "cosh", "sinh") and x > 0) else INF
            if name == "sinh" and x < 0:
                want = -INF
        if name in ("ln", "log2", "log10") and x == 0:
            want = -INF
        if name == "atanh" and abs(x) == 1:
            want = math.copysign(INF, x)
        if math.isnan(want) or math.isinf(want) or abs(want) > 1e300:
            assert same(want, y) or (name in ("exp", "sinh", "cosh") and math.isinf(y)), (x, y)
        else:
            assert math.isclose(y, want, rel_tol=1e-15), (name, x, want, y)


def test_every_instant_function_is_covered() -> None:
    dates = {name for name, _, _ in DATES_CONFIRMED}
    others = {"round", "clamp", "clamp_min", "clamp_max", "timestamp", "label_replace"}
    others |= {"label_join", "histogram_quantile"}
    assert set(MATH_NAMES) | dates | others == INSTANT_FUNCTIONS
    with pytest.raises(PromQLError, match="wrong number of arguments"):
        instant_function("clamp", [vec([1.0]), Scalar(np.array([0.0]))], STEPS[:1])
    with pytest.raises(PromQLError, match="unknown function"):
        instant_function("sort", [vec([1.0])], STEPS[:1])


def test_math_drops_the_name_and_keeps_absent_steps() -> None:
    v = Vector(
        [{"__name__": "a", "i": "1"}, {"__name__": "b", "i": "2"}],
        np.array([[-1.0, NAN], [2.0, -3.0]]),
        np.array([[True, False], [True, True]]),
    )
    out = instant_function("abs", [v], STEPS)
    assert out.labels == [{"i": "1"}, {"i": "2"}]
    assert out.present.tolist() == [[True, False], [True, True]]
    assert out.values[0, 0] == 1 and out.values[1].tolist() == [2.0, 3.0]
    assert out.sample_us is None


def test_dropping_the_name_can_collide_as_in_prometheus() -> None:
    v = vec([1.0, 2.0], [{"__name__": "a", "i": "1"}, {"__name__": "b", "i": "1"}])
    with pytest.raises(PromQLError, match="same labelset") as err:
        instant_function("abs", [v], STEPS[:1])
    assert err.value.kind == "execution"
    # at different steps they merge into one series
    split = Vector(v.labels, np.array([[1.0, NAN], [NAN, -2.0]]), np.array([[1, 0], [0, 1]], bool))
    out = instant_function("abs", [split], STEPS)
    assert out.labels == [{"i": "1"}] and out.values.tolist() == [[1.0, 2.0]]


@pytest.mark.parametrize(
    ("x", "to_nearest", "answer"),
    [
        (2.5, None, 3.0),
        (-2.5, None, -2.0),  # ties go up
        (1.005, 0.01, 1.0),
        (5.0, 0.0, NAN),  # 1/0 = Inf, then Inf/Inf
        (5.0, -2.0, 4.0),
        (17.0, 5.0, 15.0),
        (NAN, 1.0, NAN),
    ],
)
def test_round_as_go(x: float, to_nearest: float | None, answer: float) -> None:
    got = one("round", x) if to_nearest is None else one("round", x, to_nearest)
    assert same(got, answer)


@pytest.mark.parametrize(
    ("name", "x", "bounds", "answer"),
    [
        ("clamp_min", NAN, (INF,), INF),  # Go's Max: +Inf beats NaN
        ("clamp_max", NAN, (-INF,), -INF),  # Go's Min: -Inf beats NaN
        ("clamp", NAN, (0.0, INF), NAN),
        ("clamp", 5.0, (-1.0, 1.0), 1.0),
        ("clamp", -5.0, (-1.0, 1.0), -1.0),
        ("clamp", 0.5, (NAN, 1.0), NAN),
        ("clamp_min", 3.0, (4.0,), 4.0),
        ("clamp_max", 3.0, (2.0,), 2.0),
    ],
)
def test_clamp_as_go(name: str, x: float, bounds: tuple[float, ...], answer: float) -> None:
    assert same(one(name, x, *bounds), answer)


def test_clamp_with_min_above_max_is_empty_at_those_steps() -> None:
    v = vec([1.0, 7.0], steps=2)
    out = instant_function(
        "clamp", [v, Scalar(np.array([5.0, 0.0])), Scalar(np.array([1.0, 6.0]))], STEPS
    )
    assert out.present.tolist() == [[False, True], [False, True]]
    assert out.values[:, 1].tolist() == [1.0, 6.0]


def test_timestamp_reads_sample_times_else_the_step() -> None:
    v = vec([5.0], steps=2)
    out = instant_function("timestamp", [v], STEPS)
    assert out.values.tolist() == [[1700000000.0, 1700000015.0]] and out.labels == [{"i": "0"}]
    v.sample_us = np.array([[T0 - 7_250_000, T0 + 3_000_000]])
    out = instant_function("timestamp", [v], STEPS)
    assert out.values.tolist() == [[1699999992.75, 1700000003.0]]


# -- label_replace and label_join ----------------------------------------------------------------


def replace(value: str | None, dst: str, repl: str, regex: str) -> Labels:
    labels = {"__name__": "up"} | ({} if value is None else {"src": value})
    return label_replace(vec([1.0], [labels]), dst, repl, "src", regex).labels[0]


def test_label_replace_expands_as_go() -> None:
    # Prometheus: '<a|a||$|b|ab|b|$>'
    out = replace("ab", "dst", "<$1|${1}|$1x|$$|$2|$0|${b}|$>", "(a)(?P<b>b)")
    assert out == {"__name__": "up", "src": "ab", "dst": "<a|a||$|b|ab|b|$>"}


@pytest.mark.parametrize(
    ("value", "regex", "dst"),
    [
        ("ab", "a)|(b", "<>"),  # ^(?:a)|(b)$ matches "a", group 1 unset
        ("abc\n", "(.*)", None),  # . stops at \n and $ is the end of text: no match
        ("abc\n", "(.*)$", None),
        ("", "(.*)", "<>"),
        ("x", "", None),
        ("foo-bar", "(.*)-(.*)", "<foo>"),
        ("AbC", "(?i)(abc)", "<AbC>"),
        ("\u212a", "(?i)(k)", "<\u212a>"),  # the Kelvin sign folds to k in Go
        ("k", "(?i)[^K]", None),
        ("é", r"(\w)", None),  # \w is ASCII in RE2
        ("é", r"(\pL)", "<é>"),
        ("x{,3}", "(x{,3})", "<x{,3}>"),  # not a repeat in RE2: literal text
        ("aaa", "(?U)(a+)(.*)", "<a>"),
        ("a.b", r"(\Qa.b\E)", "<a.b>"),
        ("axb", r"(\Qa.b\E)", None),
        ("", r"(\B)", "<>"),  # Go's \B matches the empty string, Python's does not
        ("\u03b1", r"(\p{Greek})", "<\u03b1>"),
        ("\u017f", "(?i)(s)", "<\u017f>"),  # the long s folds to s
        ("\u03c2", "(?i)(\u03a3)", "<\u03c2>"),  # final sigma
    ],
)
def test_label_replace_matches_as_go(value: str, regex: str, dst: str | None) -> None:
    # confirmed on Prometheus 2.42
    assert replace(value, "dst", "<$1>", regex).get("dst") == dst


def test_label_replace_sets_and_removes_labels() -> None:
    assert replace("ab", "src", "", "(.*)") == {"__name__": "up"}
    assert replace("ab", "__name__", "renamed", ".*")["__name__"] == "renamed"
    assert replace(None, "dst", "x", "") == {"__name__": "up", "dst": "x"}  # "" matches absent


@pytest.mark.parametrize(
    "regex",
    [
        "(",
        "(?<a>)",
        r"\Z",
        "(?i)*",
        r"\p{Foo}",
        "(a{500}){3}",
        "a**",
        "a{1001}",
        "[z-a]",
        "a{3,2}",
        r"\1",
        r"\8",
        r"\C",
        "(?=a)",
        "(?#x)",
        "(?P=a)",
        "(?x)a",
        "a)",
        "[[:foo:]]",
        r"\x{110000}",
        r"\é",
        "*",
        "(?P<\u00e9>x)",  # Go's group names are ASCII
        "[\\C]",
    ],
)
def test_label_replace_refuses_what_go_refuses(regex: str) -> None:
    with pytest.raises(PromQLError) as err:
        replace("a", "dst", "x", regex)
    assert str(err.value) == f"invalid regular expression in label_replace(): {regex}"
    assert err.value.kind == "execution"


@pytest.mark.parametrize(
    "regex",
    ["a{,3}", "^*", "(?)", "(?P<1a>x)", "(?P<a>)(?P<a>)", "[]a]", "[a-]", r"\_", "x{01}", "a|"],
)
def test_label_replace_accepts_what_go_accepts(regex: str) -> None:
    replace("a", "dst", "x", regex)


def test_label_replace_refuses_what_exceeds_re2s_memory_budget() -> None:
    """A known difference: Prometheus 2.42 accepts ``\\pL{1000}``; RE2 compiles it to 1.2M
    instructions, over its default 8 MiB budget, and refuses it rather than let one query
    allocate more."""
    with pytest.raises(PromQLError, match=r"^invalid regular expression"):
        replace("a", "dst", "x", r"\pL{1000}")
    replace("a", "dst", "x", r"\pL{200}")


def test_label_replace_checks_the_regex_before_the_destination() -> None:
    with pytest.raises(PromQLError, match=r"^invalid regular expression"):
        replace("a", "1dst", "x", "(")
    for dst in ("1dst", "", "a-b"):
        with pytest.raises(PromQLError) as err:
            replace("a", dst, "x", "(.*)")
        assert str(err.value) == f"invalid destination label name in label_replace(): {dst}"
        assert err.value.kind == "execution"


def test_label_replace_collisions() -> None:
    v = vec([1.0, 2.0], [{"src": "a1"}, {"src": "a2"}])
    with pytest.raises(PromQLError, match="same labelset"):
        label_replace(v, "src", "", "src", "a.")


def test_label_replace_expands_the_first_group_of_a_name_that_took_part() -> None:
    # Prometheus: '<y|y>'
    assert replace("y", "dst", "<$a|${a}>", "(?P<a>x)|(?P<a>y)")["dst"] == "<y|y>"


def test_label_join_as_prometheus() -> None:
    v = vec([1.0], [{"__name__": "up", "src": "ab"}])
    out = label_join(v, "dst", "-", ["src", "none", "src"])
    assert out.labels == [{"__name__": "up", "src": "ab", "dst": "ab--ab"}]
    assert label_join(v, "src", "", []).labels == [{"__name__": "up"}]
    via = instant_function("label_join", [v, String("d"), String(","), String("src")], STEPS[:1])
    assert via.labels == [{"__name__": "up", "src": "ab", "d": "ab"}]
    with pytest.raises(PromQLError) as err:
        label_join(v, "d-st", ",", ["a-b", "c-d"])
    assert str(err.value) == "invalid source label name in label_join(): a-b"
    with pytest.raises(PromQLError, match=r"^invalid destination label name in label_join"):
        label_join(v, "d-st", ",", ["a"])


def test_compile_re2_groups_and_names() -> None:
    compiled = compile_re2("^(?:(?P<x>a)(b)(?P<1a>c)?)$")
    assert compiled.names == ["x", None, "1a"]
    assert compiled.pattern.search("ab") is not None
    assert compile_re2("(?P<a>x)|(?P<a>y)").names == ["a", "a"]
    with pytest.raises(Re2Error):
        compile_re2("a{2}{3}")


@pytest.mark.parametrize(
    "regex",
    [
        r"[(]",
        r"\(",
        r"\Q(\E(a)",
        "[[:alpha:](](b)",
        "[]()](c)",
        r"[^]\]()](d)",
        r"\x{28}(a)",
        "(?:x)(?i:y)(?P<n>z)",
    ],
)
def test_compile_re2_finds_the_groups_re2_finds(regex: str) -> None:
    """The scan for Go's differences steps over quoted text, escapes and classes as RE2 does."""
    compiled = compile_re2(regex)
    assert len(compiled.names) == compiled.pattern.groups


# -- histogram_quantile --------------------------------------------------------------------------


def buckets(
    *pairs: tuple[str, float], name: str = "h_bucket", extra: Labels | None = None
) -> Vector:
    labels = [{"__name__": name, "le": le} | (extra or {}) for le, _ in pairs]
    return vec([count for _, count in pairs], labels)


def hq(q: float, v: Vector) -> Vector:
    return instant_function("histogram_quantile", [Scalar(np.array([q])), v], STEPS[:1])


# (φ, buckets, Prometheus 2.42's answer)
HISTOGRAMS_CONFIRMED: list[tuple[float, list[tuple[str, float]], float]] = [
    (0.5, [("1_0", 5), ("+Inf", 10)], 10.0),  # Go's ParseFloat takes underscores
    (0.5, [("0x1p3", 5), ("+Inf", 10)], 8.0),  # and hex floats
    (0.5, [(" 1", 5), ("+Inf", 10)], NAN),  # not spaces: that bucket is ignored
    (0.5, [("1", 5), ("+inf", 10)], 1.0),
    (0.5, [("1", 5), ("infinity", 10)], 1.0),
    (0.5, [("1", 5), ("+Infinity", 10)], 1.0),
    (0.5, [("-1", 0), ("+Inf", 0)], NAN),  # no observations
    (0.5, [("1", NAN), ("2", 3), ("+Inf", 10)], 2.0),  # a NaN first count freezes monotonicity
    (0.5, [("1", 3), ("2", NAN), ("+Inf", 10)], 2.0),
    (0.5, [("1", 3), ("1.0", 4), ("+Inf", 10)], 0.7142857142857143),  # equal bounds merged
    (0.5, [("1", 5), ("+Inf", 10), ("NaN", 7)], NAN),
    (2.0, [("1", 3)], INF),
    (-1.0, [("1", 3)], -INF),
    (NAN, [("1", 3)], NAN),
    (0.5, [("1", 3)], NAN),
    (0.5, [("+Inf", 3)], NAN),
]


@pytest.mark.parametrize(("q", "pairs", "answer"), HISTOGRAMS_CONFIRMED)
def test_histogram_quantile_confirmed_on_prometheus(
    q: float, pairs: list[tuple[str, float]], answer: float
) -> None:
    out = hq(q, buckets(*pairs))
    assert out.labels == [{}] and same(float(out.values[0, 0]), answer)


def test_histogram_quantile_groups_by_all_labels_but_le() -> None:
    v = Vector(
        [
            {"__name__": "h_bucket", "le": "1", "job": "a"},
            {"__name__": "h_bucket", "le": "+Inf", "job": "a"},
            {"__name__": "h_bucket", "le": "1", "job": "b"},
            {"__name__": "h_bucket", "le": "+Inf", "job": "b"},
            {"__name__": "h_bucket", "job": "b"},  # no le: ignored
        ],
        np.array([[2.0], [4.0], [1.0], [4.0], [9.0]]),
        np.ones((5, 1), bool),
    )
    out = hq(0.5, v)
    assert out.labels == [{"job": "a"}, {"job": "b"}]
    assert out.values[:, 0].tolist() == [1.0, 1.0]
    # two histograms differing only by name collide once the name is dropped (as Prometheus)
    both = Vector(
        [{"__name__": "a_bucket", "le": "+Inf"}, {"__name__": "b_bucket", "le": "+Inf"}],
        np.array([[1.0], [1.0]]),
        np.ones((2, 1), bool),
    )
    with pytest.raises(PromQLError, match="same labelset"):
        hq(0.5, both)
    assert hq(0.5, buckets(("x", 1.0))).labels == []  # no parsable le: no group


def ref_bucket_quantile(q: float, pairs: list[tuple[float, float]]) -> float:
    """2.42's bucketQuantile, transliterated (bounds without NaN)."""
    if math.isnan(q):
        return NAN
    if q < 0:
        return -INF
    if q > 1:
        return INF
    pairs = sorted(pairs, key=lambda p: p[0])
    if not math.isinf(pairs[-1][0]) or pairs[-1][0] < 0:
        return NAN
    merged: list[list[float]] = []
    for bound, count in pairs:
        if merged and merged[-1][0] == bound:
            merged[-1][1] += count
        else:
            merged.append([bound, count])
    top = merged[0][1]
    for b in merged[1:]:
        if b[1] > top:
            top = b[1]
        elif b[1] < top:
            b[1] = top
    if len(merged) < 2:
        return NAN
    observations = merged[-1][1]
    if observations == 0:
        return NAN
    rank = q * observations
    i, j = 0, len(merged) - 1
    while i < j:
        h = (i + j) // 2
        if not merged[h][1] >= rank:
            i = h + 1
        else:
            j = h
    b = i
    if b == len(merged) - 1:
        return merged[-2][0]
    if b == 0 and merged[0][0] <= 0:
        return merged[0][0]
    start, end, count = 0.0, merged[b][0], merged[b][1]
    if b > 0:
        start = merged[b - 1][0]
        count -= merged[b - 1][1]
        rank -= merged[b - 1][1]
    with np.errstate(all="ignore"):
        return float(start + (end - start) * (np.float64(rank) / count))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_histogram_quantile_matches_the_reference(seed: int) -> None:
    rng = random.Random(seed)
    steps = 40
    bounds = ["-1", "0", "0.1", "0.5", "0.5", "1", "2.5", "1e3", "+Inf"]
    labels: list[Labels] = []
    rows: list[list[float]] = []
    present: list[list[bool]] = []
    for g in range(6):
        for le in bounds:
            if g == 5 and le == "+Inf":
                continue  # a histogram without +Inf
            labels.append({"__name__": "h_bucket", "g": str(g), "le": le, "dup": str(len(labels))})
            counts, have = [], []
            for _ in range(steps):
                r = rng.random()
                counts.append(NAN if r < 0.05 else float(rng.randint(0, 30)) if r < 0.9 else 0.0)
                have.append(rng.random() > 0.15)
            rows.append(counts)
            present.append(have)
    # group by g only: drop the per-row "dup" label
    for lab in labels:
        del lab["dup"]
    v = Vector(labels, np.array(rows), np.array(present))
    # two rows per (g, le="0.5"): merged by bound; rows with one label set are not allowed in a
    # Vector, so give the duplicates another spelling of the bound
    for lab in labels[4::9]:
        lab["le"] = "5e-1"
    for q in (0.0, 0.25, 0.5, 0.9, 0.99, 1.0, -0.1, 1.1, NAN):
        out = instant_function(
            "histogram_quantile", [Scalar(np.full(steps, q)), v], np.arange(steps) * US
        )
        groups = {lab["g"]: i for i, lab in enumerate(out.labels)}
        for g in range(6):
            for t in range(steps):
                pairs = [
                    (float(labels[i]["le"]), rows[i][t])
                    for i in range(len(labels))
                    if labels[i]["g"] == str(g) and present[i][t]
                ]
                got = out.present[groups[str(g)], t]
                assert got == bool(pairs)
                if pairs:
                    want = ref_bucket_quantile(q, pairs)
                    assert same(want, float(out.values[groups[str(g)], t])), (q, g, t, pairs)


def test_histogram_quantile_through_instant_function_types() -> None:
    with pytest.raises(PromQLError, match="expected type scalar"):
        instant_function("histogram_quantile", [vec([1.0]), vec([1.0])], STEPS[:1])
    assert histogram_quantile(Scalar(np.array([0.5])), Vector.empty(1)).labels == []


# -- values as Prometheus writes them ------------------------------------------------------------

_EDGE_VALUES = [0.0, -0.0, 1.0, -1.0, 0.1, 1 / 3, 1e15, 9.999999999999998e15, 1e16, 1e21, 1e-4]
_EDGE_VALUES += [9.9e-5, 1e-5, 5e-324, 1.7976931348623157e308, math.nan, math.inf, -math.inf]


def test_format_values_writes_what_format_value_writes() -> None:
    """The vectorized formatting (orjson's digits, corrected) against Go's 'f' -1 one value at a
    time, on random bit patterns (every exponent), everyday gauges and counters, and edges."""
    rng = np.random.default_rng(16)
    bits = rng.integers(0, 2**64 - 1, 50_000, dtype=np.uint64, endpoint=True)
    values = np.concatenate(
        [
            bits.view(np.float64),
            np.round(rng.uniform(0, 100, 20_000), 3),
            np.round(rng.uniform(0, 1e12, 20_000)),
            np.array(_EDGE_VALUES),
        ]
    )
    got = [text.decode() for text in format_values(values).tolist()]
    assert got == [format_value(v) for v in values.tolist()]
    assert format_values(np.array(_EDGE_VALUES)).tolist()[:4] == [b"0", b"-0", b"1", b"-1"]
    assert len(format_values(np.zeros(0))) == 0

"""A PromQL subset, parsed here and evaluated with numpy over the platform's own tables.

Supported (docs/api.md): vector selectors with ``=``, ``!=``, ``=~``, ``!~`` and an optional range
``[5m]``; ``rate``, ``irate``, ``increase``; ``avg|min|max|sum|count|last_over_time``;
``sum|avg|min|max|count`` with ``by (...)`` or ``without (...)``; ``topk`` and ``bottomk``; numbers,
parentheses, unary minus and ``+ - * /`` between expressions and numbers. Anything else is a
`PromQLError` naming it, answered as Prometheus' ``bad_data``.

Evaluation follows Prometheus: an instant selector takes, at each step, the newest sample of the
last 5 minutes; a range ``[r]`` takes the samples in ``(t - r, t]``; ``rate``/``increase`` correct
counter resets and extrapolate to the window's edges as Prometheus does. Every step of every series
is computed at once: samples arrive through one binary ``COPY`` into numpy arrays, and each window
is found with ``searchsorted`` over a (series, time) key, so no Python code runs per sample or per
step.

Tiers: long ranges at coarse steps read the rollup tiers' ``last`` samples (one per series and
minute or hour, at its real timestamp) instead of raw points, when every range in the query spans
at least four of them: ``rollup_1m`` for steps of at least 1 minute over more than 6 hours,
``rollup_1h`` for steps of at least 1 hour over more than 7 days. Counters keep their ``rate``
exact on those samples (but for resets inside a bucket); ``*_over_time`` of a gauge then works on
one sample per bucket, which is a downsampling, not the raw average (use the native
``/query/range`` for exact averages from the rollups).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from psycopg import AsyncConnection

from fleetpulse import samples
from fleetpulse.api.query import MAX_DURATION_S, Matcher, Series, _splits, select_series

LOOKBACK_S = 300.0
MAX_POINTS_PER_QUERY = 20_000_000  # samples fetched
_AGGREGATIONS = {"sum", "avg", "min", "max", "count", "topk", "bottomk"}
_RANGE_FUNCTIONS = {
    "rate",
    "irate",
    "increase",
    "avg_over_time",
    "min_over_time",
    "max_over_time",
    "sum_over_time",
    "count_over_time",
    "last_over_time",
}
_UNSUPPORTED_HINT = (
    "supported: selectors, rate, irate, increase, *_over_time, sum/avg/min/max/count by|without, "
    "topk, bottomk, and + - * / with numbers"
)


class PromQLError(ValueError):
    """A query this subset cannot parse or evaluate; the message names what and where."""


# -- syntax tree ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Number:
    value: float


@dataclass(frozen=True)
class Selector:
    matchers: tuple[Matcher, ...]
    range_s: float | None = None


@dataclass(frozen=True)
class Call:
    func: str
    arg: Selector


@dataclass(frozen=True)
class Aggregate:
    op: str
    expr: Node
    by: tuple[str, ...] | None = None
    without: tuple[str, ...] | None = None
    param: float | None = None


@dataclass(frozen=True)
class Binary:
    op: str
    lhs: Node
    rhs: Node


Node = Number | Selector | Call | Aggregate | Binary


# -- lexer and parser ----------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<duration>\d+(?:ms|s|m|h|d|w|y)(?:\d+(?:ms|s|m|h|d|w|y))*)
      | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|0[xX][0-9a-fA-F]+|[iI]nf|NaN)
      | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
      | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
      | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^=<>{}()\[\],@])
    )""",
    re.VERBOSE,
)
_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


@dataclass
class _Token:
    kind: str
    text: str
    pos: int


def _tokens(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        found = _TOKEN.match(text, pos)
        if not found or found.end() == pos:
            raise PromQLError(f"unexpected character {text[pos:].lstrip()[:1]!r} at {pos}")
        kind = found.lastgroup
        assert kind is not None
        tokens.append(_Token(kind, found.group(kind), found.start(kind)))
        pos = found.end()
    tokens.append(_Token("end", "", len(text)))
    return tokens


def duration_s(text: str) -> float:
    total = 0.0
    for amount, unit in re.findall(r"(\d+)(ms|s|m|h|d|w|y)", text):
        total += int(amount) * _UNIT_S[unit]
    return total


def _unquote(text: str) -> str:
    if text[0] == "`":
        return text[1:-1]
    body = text[1:-1]
    return re.sub(
        r"\\(.)",
        lambda m: {"n": "\n", "t": "\t", "\\": "\\", '"': '"', "'": "'"}.get(
            m.group(1), m.group(1)
        ),
        body,
    )


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.i = 0

    def peek(self, offset: int = 0) -> _Token:
        return self.tokens[min(self.i + offset, len(self.tokens) - 1)]

    def take(self, text: str | None = None, kind: str | None = None) -> _Token:
        token = self.peek()
        if (text is not None and token.text != text) or (kind is not None and token.kind != kind):
            wanted = text if text is not None else kind
            got = token.text or "end of query"
            raise PromQLError(f"expected {wanted!r} at {token.pos}, got {got!r}")
        self.i += 1
        return token

    def parse(self) -> Node:
        node = self.expr()
        if self.peek().kind != "end":
            token = self.peek()
            raise PromQLError(f"unexpected {token.text!r} at {token.pos}")
        return node

    def expr(self) -> Node:
        node = self.term()
        while self.peek().text in ("+", "-"):
            op = self.take().text
            node = Binary(op, node, self.term())
        return node

    def term(self) -> Node:
        node = self.unary()
        while self.peek().text in ("*", "/"):
            op = self.take().text
            node = Binary(op, node, self.unary())
        return node

    def unary(self) -> Node:
        if self.peek().text == "-":
            self.take()
            return Binary("*", Number(-1.0), self.unary())
        if self.peek().text == "+":
            self.take()
        return self.primary()

    def primary(self) -> Node:
        token = self.peek()
        if token.kind == "number":
            self.take()
            return Number(
                float(int(token.text, 16)) if token.text[:2] in ("0x", "0X") else float(token.text)
            )
        if token.text == "(":
            self.take()
            node = self.expr()
            self.take(")")
            return node
        if token.kind == "op" and token.text == "{":
            return self.selector(None)
        if token.kind != "ident":
            raise PromQLError(f"unexpected {token.text or 'end of query'!r} at {token.pos}")
        name = token.text
        if name in _AGGREGATIONS and self.peek(1).text in ("(", "by", "without"):
            return self.aggregation()
        if self.peek(1).text == "(":
            return self.call()
        if token.text in ("by", "without", "offset", "bool", "on", "ignoring"):
            raise PromQLError(
                f"{token.text!r} at {token.pos} is not supported here; {_UNSUPPORTED_HINT}"
            )
        self.take()
        return self.selector(name)

    def selector(self, name: str | None) -> Selector:
        matchers: list[Matcher] = []
        if name is not None:
            matchers.append(Matcher("__name__", "=", name))
        if self.peek().text == "{":
            self.take("{")
            while self.peek().text != "}":
                label = self.take(kind="ident").text
                op = self.take(kind="op").text
                if op not in ("=", "!=", "=~", "!~"):
                    raise PromQLError(
                        f"label matcher operator {op!r} at {self.peek().pos} is not =, !=, =~ or !~"
                    )
                matchers.append(Matcher(label, op, _unquote(self.take(kind="string").text)))
                if self.peek().text == ",":
                    self.take(",")
                elif self.peek().text != "}":
                    raise PromQLError(f"expected ',' or '}}' at {self.peek().pos}")
            self.take("}")
        if not any(m.key == "__name__" for m in matchers):
            raise PromQLError("a selector must name a metric (a name, or {__name__=...})")
        range_s = None
        if self.peek().text == "[":
            self.take("[")
            token = self.take(kind="duration")
            range_s = duration_s(token.text)
            if range_s > MAX_DURATION_S:
                raise PromQLError(f"range at {token.pos} is longer than 100 years")
            if self.peek().text == ":":
                raise PromQLError("subqueries are not supported")
            self.take("]")
        if self.peek().text in ("offset", "@"):
            raise PromQLError(f"{self.peek().text!r} is not supported; {_UNSUPPORTED_HINT}")
        return Selector(tuple(matchers), range_s)

    def call(self) -> Node:
        name = self.take(kind="ident").text
        if name not in _RANGE_FUNCTIONS:
            raise PromQLError(f"function {name}() is not supported; {_UNSUPPORTED_HINT}")
        self.take("(")
        arg = self.expr()
        self.take(")")
        if not isinstance(arg, Selector) or arg.range_s is None:
            raise PromQLError(f"{name}() needs a range vector selector, like {name}(metric[5m])")
        return Call(name, arg)

    def labels(self) -> tuple[str, ...]:
        self.take("(")
        names: list[str] = []
        while self.peek().text != ")":
            names.append(self.take(kind="ident").text)
            if self.peek().text == ",":
                self.take(",")
        self.take(")")
        return tuple(names)

    def aggregation(self) -> Aggregate:
        op = self.take(kind="ident").text
        by = without = None
        if self.peek().text in ("by", "without"):
            which = self.take().text
            names = self.labels()
            by, without = (names, None) if which == "by" else (None, names)
        self.take("(")
        param = None
        if op in ("topk", "bottomk"):
            number = self.expr()
            if not isinstance(number, Number) or not math.isfinite(number.value):
                raise PromQLError(f"{op}: the first argument must be a number")
            param = number.value
            self.take(",")
        expr = self.expr()
        self.take(")")
        if self.peek().text in ("by", "without"):
            which = self.take().text
            names = self.labels()
            by, without = (names, None) if which == "by" else (None, names)
        if op in ("topk", "bottomk") and (by or without):
            raise PromQLError(f"{op} by/without is not supported")
        return Aggregate(op, expr, by, without, param)


def parse(text: str) -> Node:
    if not text.strip():
        raise PromQLError("empty query")
    if len(text) > 10_000:
        raise PromQLError("query longer than 10000 characters")
    try:
        return _Parser(text).parse()
    except RecursionError:  # recursive descent: a few hundred nested ( or - are enough
        raise PromQLError("query nested too deeply") from None


# -- evaluation ----------------------------------------------------------------------------------


@dataclass
class Matrix:
    """Series (their label sets) x steps, and where a series has a value at all (a stored NaN is
    a value; a step without a sample is not)."""

    labels: list[dict[str, str]]
    values: np.ndarray  # shape (len(labels), len(times))
    present: np.ndarray = field(default=None)  # type: ignore[arg-type]  # filled in below

    def __post_init__(self) -> None:
        if self.present is None:
            self.present = ~np.isnan(self.values)


@dataclass
class Samples:
    """The fetched samples of a selector's series, sorted by (series, time)."""

    series: list[Series]
    index: np.ndarray  # series index per sample
    ts: np.ndarray
    values: np.ndarray
    # Every sample and every time asked about lies in [base, base + span): a (series, time) key
    # of index * span + (time - base) orders samples by series, then time.
    base: float
    span: float
    key: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.key = self.index * self.span + (self.ts - self.base)

    def position(self, times: np.ndarray) -> np.ndarray:
        """For each (series, time): the number of samples up to and including that time."""
        grid = np.arange(len(self.series))[:, None] * self.span + (times[None, :] - self.base)
        return np.searchsorted(self.key, grid, side="right")


def labels_of(series: Series) -> dict[str, str]:
    return {"__name__": series.name, "agent_id": series.agent_id, **series.labels}


def _ranges(node: Node) -> list[float]:
    if isinstance(node, Selector):
        return [node.range_s] if node.range_s is not None else []
    if isinstance(node, Call):
        return _ranges(node.arg)
    if isinstance(node, Aggregate):
        return _ranges(node.expr)
    if isinstance(node, Binary):
        return _ranges(node.lhs) + _ranges(node.rhs)
    return []


def choose_tier(node: Node, start: float, end: float, step: float) -> tuple[str, float]:
    """The tier (and its sample spacing) this query may read; see the module docstring."""
    ranges = _ranges(node)
    shortest = min(ranges) if ranges else math.inf
    if step >= 3600 and end - start > 7 * 86400 and shortest >= 4 * 3600:
        return "1h", 3600.0
    if step >= 60 and end - start > 6 * 3600 and shortest >= 4 * 60:
        return "1m", 60.0
    return "raw", 0.0


_RAW_POINTS = samples.points_sql("ids", "split_m", "end", hi_inclusive=True)
_HOURS = samples.rollup_sql("1h", "ids", "start", "split_h")
_MINUTES = samples.rollup_sql("1m", "ids", "split_h", "split_m")
_FETCH = f"""
COPY (
    SELECT series_id, extract(epoch FROM last_ts)::float8, last FROM ({_HOURS}) hours
    UNION ALL
    SELECT series_id, extract(epoch FROM last_ts)::float8, last FROM ({_MINUTES}) minutes
    UNION ALL
    SELECT series_id, extract(epoch FROM ts)::float8, value FROM ({_RAW_POINTS}) raw
    ORDER BY 1, 2
) TO STDOUT (FORMAT BINARY)
"""  # noqa: S608  # constants only
# One row of the binary COPY above: field count, then (length, value) per field.
_ROW = np.dtype(
    [
        ("n", ">i2"),
        ("l1", ">i4"),
        ("sid", ">i4"),
        ("l2", ">i4"),
        ("ts", ">f8"),
        ("l3", ">i4"),
        ("v", ">f8"),
    ]
)
_COPY_HEADER = 19  # signature, flags, header extension length
# Raw points of compressed hours (fleetpulse/samples.py), read in the same snapshot as _FETCH.
_CHUNKS = samples.chunks_sql("ids", "split_m", "end")


# Minutes of compressed hours, likewise: their ``last`` at ``last_ts``, as the minute tier reads.
_MINUTE_CHUNKS = samples.minute_chunks_sql("ids", "split_h", "split_m")


def _with_chunks(
    rows: np.ndarray, extra: list[tuple[np.ndarray, np.ndarray, np.ndarray]]
) -> np.ndarray:
    """The fetched rows and the samples of compressed hours ``(series ids, times in µs,
    values)``, in _FETCH's order (series, time)."""
    more = np.zeros(sum(len(sids) for sids, _, _ in extra), dtype=_ROW)
    at = 0
    for sids, ts_us, values in extra:
        part = more[at : at + len(sids)]
        part["sid"], part["ts"], part["v"] = sids, ts_us / 1e6, values
        at += len(sids)
    if not len(more):
        return rows
    merged = np.concatenate([rows, more])
    return merged[np.lexsort((merged["ts"], merged["sid"]))]


class Evaluator:
    def __init__(
        self, conn: AsyncConnection[Any], start: float, end: float, step: float, tier: str
    ) -> None:
        self.conn = conn
        self.start, self.end, self.step = start, end, step
        self.times = start + np.arange(math.floor((end - start) / step + 1e-9) + 1) * step
        self.tier = tier
        self.fetched = 0

    async def run(self, node: Node) -> Matrix | float:
        if isinstance(node, Number):
            return node.value
        if isinstance(node, Selector):
            if node.range_s is not None:
                raise PromQLError(
                    "a range vector cannot be graphed; wrap it in rate() or *_over_time()"
                )
            samples = await self.fetch(
                node, LOOKBACK_S if self.tier == "raw" else 2 * _spacing(self.tier) + LOOKBACK_S
            )
            return self.instant(samples, node)
        if isinstance(node, Call):
            assert node.arg.range_s is not None
            samples = await self.fetch(node.arg, node.arg.range_s)
            return self.range_function(node.func, samples, node.arg.range_s)
        if isinstance(node, Aggregate):
            inner = await self.run(node.expr)
            if not isinstance(inner, Matrix):
                raise PromQLError(f"{node.op}() needs a vector, not a number")
            return aggregate(node, inner)
        lhs, rhs = await self.run(node.lhs), await self.run(node.rhs)
        return arithmetic(node.op, lhs, rhs)

    async def fetch(self, selector: Selector, lookback: float) -> Samples:
        series = await select_series(self.conn, list(selector.matchers))
        series.sort(key=lambda s: s.series_id)
        first = self.start - lookback
        span = self.end - first + 1.0
        if not series:
            return Samples(series, np.empty(0, np.int64), np.empty(0), np.empty(0), first, span)
        split_h, split_m = _splits(self.tier, first, self.end, datetime.now(UTC).timestamp())
        params = {
            "ids": [s.series_id for s in series],
            "start": _at(first),
            "split_h": _at(split_h),
            "split_m": _at(split_m),
            "end": _at(self.end),
        }
        chunks: list[bytes] = []
        chunked: list[tuple[Any, ...]] = []
        minutes: list[tuple[Any, ...]] = []
        async with samples.snapshot_async(self.conn):  # hot rows and chunks in one view
            async with self.conn.cursor().copy(_FETCH, params) as copy:
                async for data in copy:
                    chunks.append(bytes(data))
            if split_m <= self.end:
                cur = await self.conn.execute(_CHUNKS, params, binary=True)
                chunked = await cur.fetchall()
            if split_h < split_m:
                cur = await self.conn.execute(_MINUTE_CHUNKS, params, binary=True)
                minutes = await cur.fetchall()
        raw = b"".join(chunks)
        rows = np.frombuffer(
            raw,
            dtype=_ROW,
            offset=_COPY_HEADER,
            count=(len(raw) - _COPY_HEADER - 2) // _ROW.itemsize,
        )
        extra = []
        if chunked:
            points = samples.chunk_points(
                chunked, int(split_m * 1e6), int(self.end * 1e6), hi_inclusive=True
            )
            extra.append((points.series_id, points.ts_unix_us, points.value))
        if minutes:
            m = samples.chunk_minutes(minutes, int(split_h * 1e6), int(split_m * 1e6))
            extra.append((m.series_id, m.minutes.last_ts_us, m.minutes.last[:, 0]))
        if extra:
            rows = _with_chunks(rows, extra)
        self.fetched += len(rows)
        if self.fetched > MAX_POINTS_PER_QUERY:
            raise PromQLError(
                f"the query reads more than {MAX_POINTS_PER_QUERY} samples; narrow it"
            )
        ids = np.array([s.series_id for s in series])
        index = np.searchsorted(ids, rows["sid"].astype(np.int64))
        ts = rows["ts"].astype(np.float64)
        # raw points before the window are only wanted for instant selectors' lookback
        keep = ts > first
        values = rows["v"].astype(np.float64)[keep]
        return Samples(series, index[keep], ts[keep], values, first, span)

    def instant(self, samples: Samples, selector: Selector) -> Matrix:
        labels = [labels_of(s) for s in samples.series]
        if not len(samples.ts):
            return Matrix(labels, np.full((len(labels), len(self.times)), np.nan))
        position = samples.position(self.times) - 1
        rows = np.arange(len(samples.series))[:, None]
        clipped = np.clip(position, 0, len(samples.ts) - 1)
        lookback = LOOKBACK_S if self.tier == "raw" else 2 * _spacing(self.tier) + LOOKBACK_S
        valid = (
            (position >= 0)
            & (samples.index[clipped] == rows)
            & (samples.ts[clipped] > self.times[None, :] - lookback)
        )
        return Matrix(labels, np.where(valid, samples.values[clipped], np.nan), valid)

    def range_function(self, func: str, samples: Samples, range_s: float) -> Matrix:
        labels = [
            {k: v for k, v in labels_of(s).items() if k != "__name__"} for s in samples.series
        ]
        shape = (len(labels), len(self.times))
        if not len(samples.ts):
            return Matrix(labels, np.full(shape, np.nan))
        hi = samples.position(self.times)
        lo = samples.position(self.times - range_s)
        count = (hi - lo).astype(np.float64)
        v, ts = samples.values, samples.ts
        n = len(v)
        last_i = np.clip(hi - 1, 0, n - 1)
        first_i = np.clip(lo, 0, n - 1)
        if func == "count_over_time":
            out = count
        elif func in ("sum_over_time", "avg_over_time"):
            csum = np.concatenate(([0.0], np.cumsum(v)))
            total = csum[hi] - csum[lo]
            out = total if func == "sum_over_time" else total / np.maximum(count, 1)
        elif func in ("min_over_time", "max_over_time"):
            ufunc = np.fmin if func == "min_over_time" else np.fmax
            extended = np.append(v, np.nan)
            bounds = np.stack([lo.ravel(), hi.ravel()], axis=1).ravel()
            out = ufunc.reduceat(extended, np.clip(bounds, 0, n))[::2].reshape(shape)
        elif func == "last_over_time":
            out = v[last_i]
        elif func == "irate":
            prev_i = np.clip(hi - 2, 0, n - 1)
            delta = np.where(v[last_i] < v[prev_i], v[last_i], v[last_i] - v[prev_i])
            dt = ts[last_i] - ts[prev_i]
            out = np.where(dt > 0, delta / np.where(dt > 0, dt, 1), np.nan)
            out[count < 2] = np.nan
        else:  # rate, increase
            out = self._extrapolated(
                samples, lo, hi, first_i, last_i, count, range_s, func == "rate"
            )
        present = count >= (2 if func in ("rate", "increase", "irate") else 1)
        return Matrix(labels, np.where(present, out, np.nan), present)

    def _extrapolated(
        self,
        samples: Samples,
        lo: np.ndarray,
        hi: np.ndarray,
        first_i: np.ndarray,
        last_i: np.ndarray,
        count: np.ndarray,
        range_s: float,
        is_rate: bool,
    ) -> np.ndarray:
        """Prometheus' extrapolatedRate, for every (series, step) at once."""
        v, ts = samples.values, samples.ts
        same = np.concatenate(([False], samples.index[1:] == samples.index[:-1]))
        drops = np.where(
            same & (v < np.concatenate(([v[0]], v[:-1]))), np.concatenate(([0.0], v[:-1])), 0.0
        )
        resets = np.cumsum(drops)
        first_v, last_v = v[first_i], v[last_i]
        delta = last_v - first_v + (resets[last_i] - resets[first_i])
        range_start = self.times[None, :] - range_s
        range_end = self.times[None, :]
        first_t, last_t = ts[first_i], ts[last_i]
        sampled = last_t - first_t
        with np.errstate(divide="ignore", invalid="ignore"):
            average = sampled / (count - 1)
            to_start = first_t - range_start
            to_end = range_end - last_t
            threshold = average * 1.1
            # a counter cannot have started below zero (Prometheus 2.x order: before the threshold)
            to_zero = np.where((delta > 0) & (first_v >= 0), sampled * (first_v / delta), np.inf)
            to_start = np.minimum(to_start, to_zero)
            to_start = np.where(to_start < threshold, to_start, average / 2)
            to_end = np.where(to_end < threshold, to_end, average / 2)
            factor = (sampled + to_start + to_end) / sampled
            if is_rate:
                factor = factor / range_s
            out = delta * factor
        return np.where(count >= 2, out, np.nan)


def _spacing(tier: str) -> float:
    return {"raw": 0.0, "1m": 60.0, "1h": 3600.0}[tier]


def _at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def aggregate(node: Aggregate, matrix: Matrix) -> Matrix:
    values = matrix.values
    if node.op in ("topk", "bottomk"):
        assert node.param is not None
        k = int(node.param)
        if k < 1 or not len(matrix.labels):
            return Matrix([], np.empty((0, values.shape[1])), np.zeros((0, values.shape[1]), bool))
        usable = matrix.present & ~np.isnan(values)
        ordered = np.where(usable, values, -np.inf if node.op == "topk" else np.inf)
        ranks = np.argsort(
            np.argsort(-ordered if node.op == "topk" else ordered, axis=0, kind="stable"), axis=0
        )
        chosen = (ranks < k) & usable
        rows = chosen.any(axis=1)
        return Matrix(
            [lab for lab, keep in zip(matrix.labels, rows, strict=True) if keep],
            np.where(chosen, values, np.nan)[rows],
            chosen[rows],
        )
    # Each series' group as its sorted (label, value) pairs: by keeps those labels, without
    # drops them (and the name), neither makes one group.
    if node.by is not None:
        keys = [
            tuple((name, labels[name]) for name in sorted(node.by) if labels.get(name))
            for labels in matrix.labels
        ]
    elif node.without is not None:
        dropped = {"__name__", *node.without}
        keys = [
            tuple(sorted((k, v) for k, v in labels.items() if k not in dropped))
            for labels in matrix.labels
        ]
    else:
        keys = [() for _ in matrix.labels]
    group_labels = [dict(key) for key in dict.fromkeys(keys)]
    order = {key: i for i, key in enumerate(dict.fromkeys(keys))}
    group = np.array([order[key] for key in keys], dtype=np.int64)
    shape = (len(order), values.shape[1])
    present = matrix.present
    counts = np.zeros(shape)
    np.add.at(counts, group, present.astype(np.float64))
    if node.op in ("sum", "avg"):
        total = np.zeros(shape)
        np.add.at(total, group, np.where(present, values, 0.0))
        out = total if node.op == "sum" else total / np.maximum(counts, 1)
    elif node.op == "count":
        out = counts.copy()
    else:
        out = np.full(shape, np.nan)
        (np.fmin if node.op == "min" else np.fmax).at(out, group, np.where(present, values, np.nan))
    out[counts == 0] = np.nan
    return Matrix(group_labels, out, counts > 0)


def arithmetic(op: str, lhs: Matrix | float, rhs: Matrix | float) -> Matrix | float:
    if isinstance(lhs, Matrix) and isinstance(rhs, Matrix):
        raise PromQLError(
            "operations between two vectors are not supported; one side must be a number"
        )

    def apply(a: Any, b: Any) -> Any:
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return {"+": np.add, "-": np.subtract, "*": np.multiply, "/": np.divide}[op](a, b)

    if isinstance(lhs, Matrix):
        return Matrix(_without_name(lhs.labels), apply(lhs.values, rhs), lhs.present)
    if isinstance(rhs, Matrix):
        return Matrix(_without_name(rhs.labels), apply(lhs, rhs.values), rhs.present)
    return float(apply(lhs, rhs))


def _without_name(labels: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{k: v for k, v in lab.items() if k != "__name__"} for lab in labels]


async def evaluate(
    conn: AsyncConnection[Any], text: str, start: float, end: float, step: float
) -> tuple[Node, Matrix | float, np.ndarray, str]:
    node = parse(text)
    tier, _ = choose_tier(node, start, end, step)
    evaluator = Evaluator(conn, start, end, step, tier)
    return node, await evaluator.run(node), evaluator.times, tier


__all__ = ["PromQLError", "evaluate", "parse"]

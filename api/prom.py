"""Prometheus' HTTP API (the read half), so that Grafana's Prometheus data source, promtool and
other Prometheus clients work unchanged: queries (/api/v1/query, /api/v1/query_range), what is
stored (/api/v1/series, /api/v1/labels, /api/v1/label/{name}/values, /api/v1/metadata), and what
Grafana asks besides (/api/v1/status/buildinfo, /api/v1/query_exemplars, /api/v1/format_query,
and the rules and alerts of api/alerting.py). GET with query parameters, and POST with a form body wherever
Prometheus takes one.

Answers use Prometheus' envelope (``{"status": "success", "data": ...}``) and its error format
(``{"status": "error", "errorType": "bad_data", "error": "..."}``), with Prometheus' statuses and,
where fleetpulse makes the same check, its texts. Handlers raise fleetpulse's errors
(fleetpulse/errors.py); `error_response` turns each into Prometheus' error type and status, and
`http_error` the errors FastAPI answers by itself under /api/v1 (no such endpoint, a method it does
not take, a parameter it refuses): app.py's handlers call them for every path under /api/v1, so
Prometheus' clients get the one format they parse. Sample values are strings, NaN
and ±Inf spelled as Prometheus spells them. Series carry ``__name__``, ``agent_id`` and their own
labels. PromQL itself is api/promql/; docs/api.md lists what differs from Prometheus on purpose.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from http import HTTPStatus
from http.client import responses
from typing import Any
from urllib.parse import parse_qsl

import numpy as np
import orjson
import promql_parser
from fastapi import APIRouter, Request, Response
from psycopg import errors
from starlette.routing import Match

from fleetpulse import __version__, liveness
from fleetpulse.api.deps import ConnDep, SettingsDep
from fleetpulse.api.promql import (
    PromQLError,
    Range,
    Result,
    Scalar,
    String,
    evaluate,
    fleetseries,
    format_value,
    format_values,
    parse,
    parse_selector,
)
from fleetpulse.api.selectors import LABEL_NAME, Matcher, Series, any_of, labels_of
from fleetpulse.api.times import MAX_STEPS, parse_duration, parse_time
from fleetpulse.errors import (
    BadInput,
    ConfigError,
    FleetpulseError,
    Forbidden,
    NotFound,
    PermanentError,
    RetryableError,
    Timeout,
    Unauthenticated,
)

router = APIRouter(prefix="/api/v1", tags=["prometheus"])

# The Prometheus release whose HTTP API and PromQL this API answers as (/status/buildinfo).
PROMETHEUS_VERSION = "2.42.0"
MAX_SERIES_LISTED = 10_000
MAX_VALUES_LISTED = 10_000

_INTEGER = re.compile(r"[+-]?[0-9]+")  # what Go's strconv.Atoi takes
# The suffixes of cumulative series in Prometheus' naming: counters, and the parts of histograms
# and summaries that only grow.
_COUNTER_SUFFIXES = ("_total", "_count", "_sum", "_bucket")
# What the parser says of a selector every matcher of which matches the empty string.
_EMPTY_SELECTOR = "vector selector must contain at least one non-empty matcher"

# {where} is built by selectors.any_of() from constant fragments; every value is a bind parameter.
# fleet_series: the stored series and the platform's own of each agent (api/promql/fleetseries.py).
_SERIES = (
    "SELECT series_id, name, agent_id, labels FROM fleet_series WHERE {where}"
    " ORDER BY name, agent_id LIMIT %s"
)
# __name__ and agent_id are columns: merged into the labels as keys, so that they are listed
# exactly when a series matched.
_LABEL_NAMES = (
    "SELECT DISTINCT jsonb_object_keys(labels || jsonb_build_object('__name__', '', 'agent_id', ''))"
    " FROM fleet_series WHERE {where} ORDER BY 1 LIMIT %s"
)
_COLUMNS = {"__name__": "name", "agent_id": "agent_id"}
_COLUMN_VALUES = "SELECT DISTINCT {column} FROM fleet_series WHERE {where} ORDER BY 1 LIMIT %s"
_LABEL_VALUES = (
    "SELECT DISTINCT labels->>%s FROM fleet_series WHERE labels->>%s <> '' AND ({where})"
    " ORDER BY 1 LIMIT %s"
)
_METRIC_NAMES = "SELECT DISTINCT name FROM fleet_series WHERE (%s::text IS NULL OR name = %s) ORDER BY 1 LIMIT %s"


def answer(data: Any, warnings: list[str] | None = None) -> Response:
    body = {"status": "success", "data": data}
    if warnings:
        body["warnings"] = warnings
    return Response(orjson.dumps(body), media_type="application/json")


def _error(status: int, kind: str, message: str) -> Response:
    body = {"status": "error", "errorType": kind, "error": message}
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


async def _params(request: Request) -> list[tuple[str, str]]:
    """Query string and, for POST, the form body (as Grafana and promtool send them)."""
    pairs = list(request.query_params.multi_items())
    if request.method == "POST":
        body = (await request.body()).decode("utf-8", errors="replace")
        pairs += parse_qsl(body, keep_blank_values=True)
    return pairs


def _one(pairs: list[tuple[str, str]], name: str, default: str | None = None) -> str:
    for key, value in pairs:
        if key == name:
            return value
    if default is None:
        raise BadInput(f"missing parameter {name!r}")
    return default


def _stamp(t_us: int) -> float | int:
    """A time as Prometheus writes it: Unix seconds, milliseconds as decimals."""
    ms = round(t_us / 1000)
    return ms // 1000 if ms % 1000 == 0 else ms / 1000


def _points(stamps: np.ndarray, values: np.ndarray) -> orjson.Fragment:
    """``[[t, "v"], ...]`` as JSON text, built by numpy's string functions from the stamps' and
    values' texts (one Python list per point cost 4 ms of a 24-hour chart's 11,520)."""
    pairs = np.strings.add(np.strings.add(b"[", stamps), b',"')
    pairs = np.strings.add(np.strings.add(pairs, format_values(values)), b'"]')
    return orjson.Fragment(b"[" + b",".join(pairs.tolist()) + b"]")


def _stamp_texts(times_us: np.ndarray) -> np.ndarray:
    """Each time's JSON text as `_stamp` writes it (whole seconds without a fraction), for all
    at once: an instant query's range vector has one per sample."""
    return format_values(np.round(times_us / 1000) / 1000)


def _series(
    labels: list[dict[str, str]], values: np.ndarray, present: np.ndarray, times_us: np.ndarray
) -> list[dict[str, Any]]:
    """Series x steps as Prometheus' matrix: each series with its present samples."""
    out = []
    stamps = _stamp_texts(times_us)
    for lab, row, mask in zip(labels, values, present, strict=True):
        if mask.any():
            out.append({"metric": lab, "values": _points(stamps[mask], row[mask])})
    return out


def _range_samples(found: Range) -> list[dict[str, Any]]:
    """An instant query's range vector: each series' samples in its window."""
    samples = found.samples
    lo, hi = samples.windows(found.ref_us - found.range_us, found.ref_us)
    out = []
    for i, lab in enumerate(samples.labels):
        at = slice(int(lo[i, 0]), int(hi[i, 0]))
        if at.stop > at.start:
            stamps = _stamp_texts(samples.ts_us[at])
            out.append({"metric": lab, "values": _points(stamps, samples.values[at])})
    return out


def _answer_result(result: Result, instant: bool) -> Response:
    value, times = result.value, result.times_us
    if isinstance(value, Range):
        return answer({"resultType": "matrix", "result": _range_samples(value)})
    if isinstance(value, String):
        return answer({"resultType": "string", "result": [_stamp(int(times[0])), value.value]})
    if isinstance(value, Scalar):
        if instant:
            point = [_stamp(int(times[0])), format_value(float(value.values[0]))]
            return answer({"resultType": "scalar", "result": point})
        ones = np.ones((1, len(times)), bool)
        matrix = _series([{}], value.values[None, :], ones, times)
        return answer({"resultType": "matrix", "result": matrix})
    if instant:
        stamp = _stamp(int(times[0]))
        vector = [
            {"metric": lab, "value": [stamp, format_value(float(row[0]))]}
            for lab, row, mask in zip(value.labels, value.values, value.present, strict=True)
            if mask[0]
        ]
        return answer({"resultType": "vector", "result": vector})
    matrix = _series(value.labels, value.values, value.present, times)
    matrix.sort(key=lambda s: sorted(s["metric"].items()))
    return answer({"resultType": "matrix", "result": matrix})


def _resolution(text: str, step: float, instant: bool) -> float:
    """Thanos' ``max_source_resolution``: the coarsest tier a query may read instead of raw
    points (seconds; 0, the default, is raw points only: Prometheus' answers). ``auto`` is a
    fifth of the step, as in Thanos; an instant query reads raw points."""
    if text == "auto":
        return 0.0 if instant else step / 5
    if text == "raw":
        return 0.0
    try:
        return parse_duration(text) if text not in ("0", "0s") else 0.0
    except BadInput:
        raise BadInput(
            f'invalid parameter "max_source_resolution": {text!r} is not a duration, raw or auto'
        ) from None


async def _run(request: Request, conn: ConnDep, settings: SettingsDep, instant: bool) -> Response:
    pairs = await _params(request)
    query = _one(pairs, "query")
    if instant:
        at = parse_time(_one(pairs, "time", str(datetime.now(UTC).timestamp())), "time")
        start = end = at
        step = 1.0
    else:
        start = parse_time(_one(pairs, "start"), "start")
        end = parse_time(_one(pairs, "end"), "end")
        step = parse_duration(_one(pairs, "step"))
        if end < start:
            raise BadInput("end timestamp must not be before start time")
        if (end - start) / step > MAX_STEPS:
            raise BadInput(
                f"exceeded maximum resolution of {MAX_STEPS} points per timeseries. "
                "Try decreasing the query resolution (?step=XX)"
            )
    resolution = _resolution(_one(pairs, "max_source_resolution", "0s"), step, instant)
    try:
        result = await evaluate(
            conn, query, start, end, step, instant, resolution, liveness.params(settings)
        )
    except PromQLError as exc:
        if instant and exc.message.startswith("parse error"):  # as Prometheus words it
            raise PromQLError(f'invalid parameter "query": {exc.message}') from None
        raise
    except errors.QueryCanceled as exc:
        raise Timeout(str(exc).splitlines()[0]) from None
    return _answer_result(result, instant)


# GET and POST of one endpoint are registered apart, each with its own operation id: one
# api_route for both gives them the same id, which OpenAPI forbids (and FastAPI warns about).
@router.get("/query", operation_id="instant_query_get")
@router.post("/query", operation_id="instant_query_post")
async def instant_query(request: Request, conn: ConnDep, settings: SettingsDep) -> Response:
    """Evaluate a PromQL expression at one time (``time``, default now)."""
    return await _run(request, conn, settings, instant=True)


@router.get("/query_range", operation_id="range_query_get")
@router.post("/query_range", operation_id="range_query_post")
async def range_query(request: Request, conn: ConnDep, settings: SettingsDep) -> Response:
    """Evaluate a PromQL expression at every ``step`` from ``start`` to ``end``."""
    return await _run(request, conn, settings, instant=False)


# -- what Grafana and promtool ask besides queries -------------------------------------------


def _quoted(text: str) -> str:
    """``text`` in double quotes, escaped, as Go's ``%q`` shows it in Prometheus' messages."""
    return orjson.dumps(text).decode()


def _time_param(pairs: list[tuple[str, str]], name: str) -> float | None:
    """An optional time parameter (None when absent or empty), refused in Prometheus' words."""
    text = _one(pairs, name, "")
    if not text:
        return None
    try:
        return parse_time(text, name)
    except BadInput:
        raise BadInput(
            f"invalid parameter {_quoted(name)}: Invalid time value for '{name}': "
            f"cannot parse {_quoted(text)} to a valid timestamp"
        ) from None


def _matcher_sets(pairs: list[tuple[str, str]], prefix: str = "") -> list[list[Matcher]] | None:
    """The matchers of each ``match[]`` selector (None when there is none), any series selector,
    with or without a metric name. ``prefix`` starts the reason of a refusal (Prometheus' /series
    names the parameter, /labels and label values do not)."""
    texts = [value for key, value in pairs if key == "match[]"]
    if not texts:
        return None
    sets = []
    for text in texts:
        try:
            sets.append(parse_selector(text))
        except PromQLError as exc:
            reason = str(exc)
            if reason.endswith(_EMPTY_SELECTOR):  # the parser's words; the API has its own
                reason = "match[] must contain at least one non-empty matcher"
            raise BadInput(prefix + reason) from None
    return sets


async def _rows(conn: ConnDep, query: str, params: list[Any]) -> list[Any]:
    try:
        cur = await conn.execute(query, params)
    except errors.InvalidRegularExpression as exc:
        raise BadInput(f"invalid regular expression: {str(exc).splitlines()[0]}") from None
    except errors.QueryCanceled as exc:
        raise Timeout(str(exc).splitlines()[0]) from None
    return await cur.fetchall()


def _listed(rows: list[Any], limit: int) -> tuple[list[Any], list[str]]:
    """At most ``limit`` rows (read ``limit + 1`` to tell), and the warning when there were more."""
    if len(rows) <= limit:
        return rows, []
    return rows[:limit], [f"only the first {limit} results are listed: narrow match[]"]


@router.get("/series", operation_id="series_get")
@router.post("/series", operation_id="series_post")
async def series(request: Request, conn: ConnDep) -> Response:
    """Label sets of the series that match any ``match[]`` selector."""
    pairs = await _params(request)
    if not any(key == "match[]" for key, _ in pairs):
        raise BadInput("no match[] parameter provided")
    _time_param(pairs, "start")
    _time_param(pairs, "end")
    where, params = any_of(_matcher_sets(pairs, 'invalid parameter "match[]": '))
    query = _SERIES.format(where=where)
    rows, warnings = _listed(
        await _rows(conn, query, [*params, MAX_SERIES_LISTED + 1]), MAX_SERIES_LISTED
    )
    found = sorted((labels_of(Series(*row)) for row in rows), key=lambda s: sorted(s.items()))
    return answer(found, warnings)


@router.get("/labels", operation_id="label_names_get")
@router.post("/labels", operation_id="label_names_post")
async def label_names(request: Request, conn: ConnDep) -> Response:
    """Label names (of the series matching any ``match[]`` selector, if given)."""
    pairs = await _params(request)
    _time_param(pairs, "start")
    _time_param(pairs, "end")
    where, params = any_of(_matcher_sets(pairs))
    rows, warnings = _listed(
        await _rows(conn, _LABEL_NAMES.format(where=where), [*params, MAX_VALUES_LISTED + 1]),
        MAX_VALUES_LISTED,
    )
    return answer([row[0] for row in rows], warnings)


@router.get("/label/{name}/values")
async def label_values(name: str, request: Request, conn: ConnDep) -> Response:
    """Values of one label (of the series matching any ``match[]`` selector, if given)."""
    if not LABEL_NAME.fullmatch(name):
        raise BadInput(f"invalid label name: {_quoted(name)}")
    pairs = list(request.query_params.multi_items())
    _time_param(pairs, "start")
    _time_param(pairs, "end")
    where, params = any_of(_matcher_sets(pairs))
    if name in _COLUMNS:
        query = _COLUMN_VALUES.format(column=_COLUMNS[name], where=where)
    else:
        query, params = _LABEL_VALUES.format(where=where), [name, name, *params]
    rows, warnings = _listed(
        await _rows(conn, query, [*params, MAX_VALUES_LISTED + 1]), MAX_VALUES_LISTED
    )
    return answer([row[0] for row in rows], warnings)


def _metric_type(name: str) -> str:
    """What a series' name tells of its type: nothing that reaches fleetpulse carries one
    (docs/api.md), and cumulative values end as Prometheus' naming asks."""
    return "counter" if name.endswith(_COUNTER_SUFFIXES) else "gauge"


@router.get("/metadata")
async def metadata(request: Request, conn: ConnDep) -> Response:
    """``{metric: [{type, help, unit}]}`` for every metric (``metric``: only that one;
    ``limit``: at most that many metrics, all when negative)."""
    pairs = list(request.query_params.multi_items())
    text = _one(pairs, "limit", "")
    limit = MAX_VALUES_LISTED
    if text:
        if not _INTEGER.fullmatch(text) or not -(2**63) <= int(text) < 2**63:
            raise BadInput("limit must be a number")
        if int(text) >= 0:
            limit = min(int(text), MAX_VALUES_LISTED)
    metric = _one(pairs, "metric", "") or None
    if metric is not None and "\x00" in metric:
        return answer({})  # PostgreSQL text holds no NUL: no metric is named so
    rows, warnings = _listed(await _rows(conn, _METRIC_NAMES, [metric, metric, limit + 1]), limit)
    found = {
        name: [{"type": _metric_type(name), "help": fleetseries.HELP.get(name, ""), "unit": ""}]
        for (name,) in rows
    }
    return answer(found, [] if limit < MAX_VALUES_LISTED else warnings)


@router.get("/query_exemplars", operation_id="query_exemplars_get")
@router.post("/query_exemplars", operation_id="query_exemplars_post")
async def query_exemplars(request: Request) -> Response:
    """Exemplars of the query's series: none, since agents send none; the parameters are checked
    as Prometheus checks them, and a query without a selector is answered 204 as there."""
    pairs = await _params(request)
    start = _time_param(pairs, "start")
    end = _time_param(pairs, "end")
    if start is not None and end is not None and end < start:
        raise BadInput("end timestamp must not be before start timestamp")
    tree = parse(_one(pairs, "query", ""))
    has_selector = not promql_parser.walk(
        tree, pre_visit=lambda node: not isinstance(node, promql_parser.VectorSelector)
    )
    return answer([]) if has_selector else Response(status_code=204)


@router.get("/format_query", operation_id="format_query_get")
@router.post("/format_query", operation_id="format_query_post")
async def format_query(request: Request) -> Response:
    """The query as Prometheus' formatter writes it (promql-parser's port of it)."""
    query = _one(await _params(request), "query", "")
    try:
        tree = parse(query)
    except PromQLError as exc:
        raise PromQLError(f'invalid parameter "query": {exc.message}') from None
    return answer(tree.prettify())


@router.get("/status/buildinfo")
async def build_info() -> Response:
    """Which Prometheus this API answers as (docs/api.md says why 2.42.0), and fleetpulse's own
    version as the revision."""
    return answer(
        {
            "version": PROMETHEUS_VERSION,
            "revision": f"fleetpulse {__version__}",
            "branch": "",
            "buildUser": "",
            "buildDate": "",
            "goVersion": "",
        }
    )


# -- errors ------------------------------------------------------------------------------------

# Prometheus' status of each error type the engine raises (web/api/v1's respondError).
_STATUS_OF_KIND = {"bad_data": 400, "execution": 422}
# Prometheus' status and error type of each class of fleetpulse/errors.py: the first class of the
# error's MRO found here. Prometheus has no keys: a refused one is answered with HTTP's status,
# named by its phrase, as http_error names the statuses Prometheus has no type for.
_ERROR_OF_CLASS: dict[type[FleetpulseError], tuple[int, str]] = {
    BadInput: (400, "bad_data"),
    Unauthenticated: (401, "unauthorized"),
    Forbidden: (403, "forbidden"),
    NotFound: (404, "not_found"),
    Timeout: (503, "timeout"),
    RetryableError: (503, "unavailable"),
    ConfigError: (500, "internal"),
    PermanentError: (422, "execution"),
    FleetpulseError: (500, "internal"),
}
# The error types Prometheus answers with these statuses; any other status is named by its phrase.
_KIND_OF_STATUS = {400: "bad_data", 404: "not_found", 422: "execution", 500: "internal"}


def owns(path: str) -> bool:
    """Whether the answer to ``path`` is Prometheus' to shape: everything under /api/v1."""
    return path == router.prefix or path.startswith(router.prefix + "/")


def error_response(exc: FleetpulseError) -> Response:
    """A fleetpulse error raised under /api/v1 as Prometheus answers it: its error type, with
    Prometheus' status for that type, and the message unchanged."""
    if isinstance(exc, PromQLError):
        status, kind = _STATUS_OF_KIND[exc.kind], exc.kind
    else:
        status, kind = next(_ERROR_OF_CLASS[c] for c in type(exc).__mro__ if c in _ERROR_OF_CLASS)
    return _error(status, kind, exc.message)


def http_error(
    request: Request, status: int, message: str, headers: Mapping[str, str] | None = None
) -> Response:
    """An error FastAPI answers by itself (no such endpoint, a method it does not take, no or a
    wrong key, a parameter it refuses, a bug) in Prometheus' format, with its status."""
    kind = _KIND_OF_STATUS.get(status) or responses.get(status, "error").lower().replace(" ", "_")
    response = _error(status, kind, " ".join(message.split()))
    response.headers.update(headers or {})
    if status == HTTPStatus.METHOD_NOT_ALLOWED:
        # Starlette names the methods of the first route of the path, and the GET and POST of an
        # endpoint are routes of their own here: every route of the path counts.
        methods: set[str] = set()
        for route in router.routes:
            if route.matches(request.scope)[0] != Match.NONE:
                methods |= getattr(route, "methods", set())
        response.headers["allow"] = ", ".join(sorted(methods))
    return response

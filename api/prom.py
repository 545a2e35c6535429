"""Prometheus' HTTP API (the read half), so Grafana's Prometheus data source, promtool and other
Prometheus clients work unchanged: /api/v1/query, /api/v1/query_range, /api/v1/labels,
/api/v1/label/{name}/values, /api/v1/series. GET with query parameters or POST with a form body.

Answers use Prometheus' envelope (``{"status": "success", "data": ...}``) and its error format
(``{"status": "error", "errorType": "bad_data", "error": "..."}``, HTTP 400). Sample values are
strings, NaN and ±Inf spelled as Prometheus spells them. Series carry ``__name__``, ``agent_id``
and their own labels. The query language is the subset in api/promql.py.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

import numpy as np
import orjson
from fastapi import APIRouter, HTTPException, Request, Response
from psycopg import errors

from fleetpulse.api.agents import ConnDep
from fleetpulse.api.promql import Matrix, PromQLError, Selector, evaluate, labels_of, parse
from fleetpulse.api.query import MAX_STEPS, parse_duration, parse_time, select_series

router = APIRouter(prefix="/api/v1", tags=["prometheus"])

MAX_SERIES_LISTED = 10_000
MAX_VALUES_LISTED = 10_000

_NAMES = "SELECT DISTINCT name FROM series ORDER BY 1 LIMIT %s"
_AGENTS = "SELECT DISTINCT agent_id FROM series ORDER BY 1 LIMIT %s"
_LABEL_VALUES = """
SELECT DISTINCT labels->>%s FROM series WHERE labels ? %s ORDER BY 1 LIMIT %s
"""
_LABEL_NAMES = "SELECT DISTINCT jsonb_object_keys(labels) FROM series ORDER BY 1 LIMIT %s"


def _answer(data: Any) -> Response:
    return Response(
        orjson.dumps({"status": "success", "data": data}), media_type="application/json"
    )


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
        raise PromQLError(f"missing parameter {name!r}")
    return default


def _time(text: str, what: str) -> float:
    try:
        return parse_time(text, what)
    except HTTPException as exc:
        raise PromQLError(str(exc.detail)) from None


def _format(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if value != int(value) or abs(value) >= 1e15 else str(int(value))


def _stamp(t: float) -> float | int:
    return int(t) if t == int(t) else round(t, 3)


def _matrix(result: Matrix, times: np.ndarray) -> list[dict[str, Any]]:
    out = []
    stamps = [_stamp(t) for t in times.tolist()]
    for labels, row, present in zip(result.labels, result.values, result.present, strict=True):
        if not present.any():
            continue
        values = [
            [stamps[i], _format(v)]
            for i, v in zip(np.flatnonzero(present).tolist(), row[present].tolist(), strict=True)
        ]
        out.append({"metric": labels, "values": values})
    return out


async def _run(request: Request, conn: ConnDep, instant: bool) -> Response:
    try:
        pairs = await _params(request)
        query = _one(pairs, "query")
        if instant:
            at = _time(_one(pairs, "time", str(datetime.now(UTC).timestamp())), "time")
            start = end = at
            step = 1.0
        else:
            start = _time(_one(pairs, "start"), "start")
            end = _time(_one(pairs, "end"), "end")
            try:
                step = parse_duration(_one(pairs, "step"))
            except HTTPException as exc:
                raise PromQLError(str(exc.detail)) from None
            if end < start:
                raise PromQLError("end timestamp must not be before start time")
            if (end - start) / step > MAX_STEPS:
                raise PromQLError(
                    f"exceeded maximum resolution of {MAX_STEPS} points per timeseries. "
                    "Try decreasing the query resolution (?step=XX)"
                )
        node = parse(query)
        if instant and isinstance(node, Selector) and node.range_s is not None:
            return await _raw_range(conn, node, end)
        _, result, times, _tier = await evaluate(conn, query, start, end, step)
    except PromQLError as exc:
        return _error(400, "bad_data", str(exc))
    except HTTPException as exc:  # a matcher the series lookup refused (a bad regex, too many)
        return _error(400, "bad_data", str(exc.detail))
    except errors.QueryCanceled as exc:
        return _error(503, "timeout", str(exc).splitlines()[0])
    if not isinstance(result, Matrix):
        value = [_stamp(float(times[0] if instant else start)), _format(result)]
        return _answer({"resultType": "scalar", "result": value})
    if instant:
        vector = []
        stamp = _stamp(float(times[0]))
        for labels, row, present in zip(result.labels, result.values, result.present, strict=True):
            if present[0]:
                vector.append({"metric": labels, "value": [stamp, _format(float(row[0]))]})
        return _answer({"resultType": "vector", "result": vector})
    return _answer({"resultType": "matrix", "result": _matrix(result, times)})


async def _raw_range(conn: ConnDep, node: Selector, at: float) -> Response:
    """An instant query of a range selector: the raw samples of each series in (at - r, at]."""
    from fleetpulse.api.promql import Evaluator

    assert node.range_s is not None
    evaluator = Evaluator(conn, at, at, 1.0, "raw")
    samples = await evaluator.fetch(node, node.range_s)
    result = []
    for index, series in enumerate(samples.series):
        mine = (samples.index == index) & (samples.ts <= at)
        values = [
            [_stamp(t), _format(v)]
            for t, v in zip(samples.ts[mine].tolist(), samples.values[mine].tolist(), strict=True)
        ]
        if values:
            result.append({"metric": labels_of(series), "values": values})
    return _answer({"resultType": "matrix", "result": result})


# GET and POST of one endpoint are registered apart, each with its own operation id: one
# api_route for both gives them the same id, which OpenAPI forbids (and FastAPI warns about).
@router.get("/query", operation_id="instant_query_get")
@router.post("/query", operation_id="instant_query_post")
async def instant_query(request: Request, conn: ConnDep) -> Response:
    """Evaluate a PromQL expression at one time (``time``, default now)."""
    return await _run(request, conn, instant=True)


@router.get("/query_range", operation_id="range_query_get")
@router.post("/query_range", operation_id="range_query_post")
async def range_query(request: Request, conn: ConnDep) -> Response:
    """Evaluate a PromQL expression at every ``step`` from ``start`` to ``end``."""
    return await _run(request, conn, instant=False)


async def _matched_series(conn: ConnDep, pairs: list[tuple[str, str]]) -> list[Any] | None:
    """The series of every ``match[]`` selector, or None when no match[] was given."""
    selectors = [value for key, value in pairs if key == "match[]"]
    if not selectors:
        return None
    found: dict[int, Any] = {}
    for text in selectors:
        node = parse(text)
        if not isinstance(node, Selector) or node.range_s is not None:
            raise PromQLError(f"match[] must be a series selector, got {text!r}")
        for series in await select_series(conn, list(node.matchers)):
            found[series.series_id] = series
    return list(found.values())


@router.get("/series", operation_id="series_get")
@router.post("/series", operation_id="series_post")
async def series(request: Request, conn: ConnDep) -> Response:
    """Label sets of the series that match any ``match[]`` selector."""
    try:
        matched = await _matched_series(conn, await _params(request))
    except PromQLError as exc:
        return _error(400, "bad_data", str(exc))
    except HTTPException as exc:
        return _error(400, "bad_data", str(exc.detail))
    if matched is None:
        return _error(400, "bad_data", "no match[] parameter provided")
    return _answer([labels_of(s) for s in matched[:MAX_SERIES_LISTED]])


@router.get("/labels", operation_id="label_names_get")
@router.post("/labels", operation_id="label_names_post")
async def label_names(request: Request, conn: ConnDep) -> Response:
    """Label names (of the series matching ``match[]``, if given)."""
    try:
        matched = await _matched_series(conn, await _params(request))
    except (PromQLError, HTTPException) as exc:
        return _error(400, "bad_data", str(getattr(exc, "detail", exc)))
    if matched is not None:
        names = {name for s in matched for name in labels_of(s)}
    else:
        cur = await conn.execute(_LABEL_NAMES, (MAX_VALUES_LISTED,))
        names = {"__name__", "agent_id", *(row[0] for row in await cur.fetchall())}
    return _answer(sorted(names))


@router.get("/label/{name}/values")
async def label_values(name: str, request: Request, conn: ConnDep) -> Response:
    """Values of one label (of the series matching ``match[]``, if given)."""
    try:
        matched = await _matched_series(conn, await _params(request))
    except (PromQLError, HTTPException) as exc:
        return _error(400, "bad_data", str(getattr(exc, "detail", exc)))
    if matched is not None:
        values = {labels_of(s).get(name) for s in matched} - {None}
        return _answer(sorted(values))
    if "\x00" in name:
        return _answer([])
    if name == "__name__":
        cur = await conn.execute(_NAMES, (MAX_VALUES_LISTED,))
    elif name == "agent_id":
        cur = await conn.execute(_AGENTS, (MAX_VALUES_LISTED,))
    else:
        cur = await conn.execute(_LABEL_VALUES, (name, name, MAX_VALUES_LISTED))
    return _answer([row[0] for row in await cur.fetchall()])

"""Call history: `GET /api/calls` (filters, date range, cursor paging) and its CSV export.

Pages are newest first; the next page's key travels as an opaque cursor in the `X-Next-Cursor` header (and a
`Link: <...>; rel="next"`), so the body keeps the seed's shape (a list of calls).
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import json
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from broker.core.errors import BadRequest
from broker.core.history_query import HistoryPageQuery as HistoryQuery
from http_api.auth import scope_to_caller
from http_api.envelope import ok, parse_query
from http_api.keys import SERVICES

__all__ = ["CSV_COLUMNS", "history", "history_csv"]

CSV_COLUMNS = ("call_id", "start_time", "household_number", "device_id", "status", "end_reason", "resident_id",
               "connected_at", "ended_at", "target_resident_ids", "door_opened_by", "door_opened_at",
               "ring_phase", "answered_client_id")
_CSV_PAGE = 500


def encode_cursor(key: tuple[float, str]) -> str:
    return base64.urlsafe_b64encode(json.dumps([key[0], key[1]]).encode()).decode().rstrip("=")


def decode_cursor(text: str) -> tuple[float, str]:
    try:
        start, call_id = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        if isinstance(start, int | float) and not isinstance(start, bool) and isinstance(call_id, str):
            return float(start), call_id
    except (ValueError, TypeError, binascii.Error):
        pass
    raise BadRequest("cursor: not a cursor this API returned (take it from the X-Next-Cursor header)")


def _filters(request: web.Request, query: HistoryQuery) -> dict[str, str]:
    filters = query.model_dump(include={"household_number", "device_id", "status"}, exclude_none=True)
    scope_to_caller(request, filters, "calls")
    if query.since is not None and query.until is not None and query.since >= query.until:
        raise BadRequest("until: must be after since")
    return filters


async def history(request: web.Request) -> web.StreamResponse:
    """Newest first: `?household_number=&device_id=&status=&since=&until=&q=&limit=&cursor=&format=json|csv`."""
    query = parse_query(request, HistoryQuery)
    if query.format == "csv":
        return await _csv(request, query)
    filters = _filters(request, query)
    after = decode_cursor(query.cursor) if query.cursor is not None else None
    rows, key = request.app[SERVICES].calls.history_page(filters, query.limit, query.since, query.until, after,
                                                         query.q)
    response = ok(rows)
    if key is not None:
        cursor = encode_cursor(key)
        response.headers["X-Next-Cursor"] = cursor
        params = {k: v for k, v in request.query.items() if k != "cursor"}
        response.headers["Link"] = f'<{request.path}?{urlencode({**params, "cursor": cursor})}>; rel="next"'
    return response


async def history_csv(request: web.Request) -> web.StreamResponse:
    """`GET /api/calls.csv?since=&until=&...`: every call in the range as CSV (the same filters, no paging)."""
    return await _csv(request, parse_query(request, HistoryQuery))


async def _csv(request: web.Request, query: HistoryQuery) -> web.StreamResponse:
    filters = _filters(request, query)
    calls = request.app[SERVICES].calls
    response = web.StreamResponse(headers={
        "Content-Type": "text/csv; charset=utf-8",
        "Content-Disposition": 'attachment; filename="calls.csv"'})
    await response.prepare(request)
    buf = io.StringIO()
    out = csv.writer(buf)
    out.writerow(CSV_COLUMNS)
    after = decode_cursor(query.cursor) if query.cursor is not None else None
    while True:
        rows, after = calls.history_page(filters, _CSV_PAGE, query.since, query.until, after, query.q)
        for row in rows:
            out.writerow([_cell(row.get(c)) for c in CSV_COLUMNS])
        await response.write(buf.getvalue().encode())
        buf.seek(0)
        buf.truncate()
        if after is None:
            break
    await response.write_eof()
    return response


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    text = str(value)
    # a spreadsheet runs a cell starting with = + - @ as a formula
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text

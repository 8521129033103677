"""What every API checks the same way: UTC instants and [from, to) windows, and text without NUL
characters, with a 422 that says what is wrong rather than a 500 on what no store can hold."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from fastapi import Request

from shared.errors import ApiError

EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)


def utc(value: datetime | None, name: str) -> datetime | None:
    """`value` with its offset, as UTC; a 422 if it has no offset or lies outside 1900-9000."""
    if value is None:
        return None
    if value.tzinfo is None:
        raise ApiError(422, f"'{name}' needs a UTC offset, e.g. 2024-05-01T00:00:00Z.", details=[{"loc": name}])
    try:
        at = value.astimezone(UTC)
    except OverflowError:
        at = EARLIEST - timedelta(days=1)
    if not EARLIEST <= at < LATEST:
        raise ApiError(422, f"'{name}' must be between 1900 and 9000.", details=[{"loc": name}])
    return at


def time_window(from_: datetime | None, to: datetime | None, now: datetime, days: float = 30) -> tuple[datetime, datetime]:
    """[from, to): `to` defaults to now, `from` to `days` before `to`; from must come first."""
    end = utc(to, "to") or now
    start = utc(from_, "from") or max(end - timedelta(days=days), EARLIEST)
    if start >= end:
        raise ApiError(422, "'from' must be before 'to'.", details=[{"loc": "from"}])
    return start, end


NUL_MESSAGE = "contains a NUL character (U+0000)"


async def refuse_nul_characters(request: Request) -> None:
    """A router dependency: a NUL in a path or query parameter or anywhere in a JSON body is a 422
    naming where (PostgreSQL cannot hold U+0000 in text: it would be a 500 from the store)."""
    for name, value in [*request.path_params.items(), *request.query_params.multi_items()]:
        if "\x00" in name or "\x00" in str(value):
            where = "path" if name in request.path_params else "query"
            raise _nul_error([where, name], f"The {where} parameter {name!r}")
    body = await request.body()
    if b"\\u0000" in body:  # JSON carries a NUL only escaped
        try:
            found = nul_location(orjson.loads(body))
        except orjson.JSONDecodeError:
            return  # not JSON: the route's own parsing says so
        if found is not None:
            raise _nul_error(["body", *found], "The body at " + ".".join(map(str, found or ["(top)"])))


def nul_location(document: Any) -> list[str | int] | None:
    """The path to the first key or text holding a NUL (a loop: bodies may nest deeply)."""
    stack: list[tuple[Any, list[str | int]]] = [(document, [])]
    while stack:
        value, path = stack.pop()
        if isinstance(value, str) and "\x00" in value:
            return path
        if isinstance(value, dict):
            for key, child in reversed(value.items()):
                if "\x00" in key:
                    return [*path, key]
                stack.append((child, [*path, key]))
        elif isinstance(value, list):
            stack.extend((child, [*path, i]) for i, child in reversed(list(enumerate(value))))
    return None


def _nul_error(loc: list[Any], what: str) -> ApiError:
    return ApiError(422, f"{what} {NUL_MESSAGE}, which no text may hold; remove it.",
                    details=[{"loc": loc, "msg": NUL_MESSAGE}])

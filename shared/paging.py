"""The contract's paging: `?limit=` (default 50, max 1000) and an opaque `?cursor=`."""
from __future__ import annotations

import base64
from datetime import datetime
from typing import Annotated, Any, Generic, TypeVar

import orjson
from fastapi import Query
from pydantic import BaseModel

from shared.errors import ApiError
from shared.keys import KEY_PATTERN

T = TypeVar("T")

Limit = Annotated[int, Query(ge=1, le=1000, description="Page size (1-1000).")]
Cursor = Annotated[str | None, Query(description="`next_cursor` of the previous page.")]


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None


def encode_cursor(*values: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(values)).decode().rstrip("=")


def decode_cursor(cursor: str | None, *types: type) -> list[Any] | None:
    """The values `encode_cursor` wrote, checked against `types`; a 400 for anything else."""
    if cursor is None:
        return None
    try:
        values = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except ValueError:
        values = None
    if not (isinstance(values, list) and len(values) == len(types) and all(map(_is, values, types))):
        raise invalid_cursor()
    return values


def decode_key_cursor(cursor: str | None) -> str | None:
    """The key of a listing by key (funnels, policies) that `encode_cursor(key)` wrote; a 400 for
    anything that is not a key (shared/keys.py) at all."""
    after = decode_cursor(cursor, str)
    if after is None:
        return None
    if not KEY_PATTERN.fullmatch(after[0]):
        raise invalid_cursor()
    key: str = after[0]
    return key


def cursor_time(value: str) -> datetime:
    """A time a cursor carries (`encode_cursor(at.isoformat(), ...)`); a 400 for anything else."""
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise invalid_cursor() from None
    if at.tzinfo is None:
        raise invalid_cursor()
    return at


def invalid_cursor() -> ApiError:
    return ApiError(400, "The cursor is not one this API gave out; start again without it.", "invalid_cursor")


def _is(value: Any, kind: type) -> bool:
    if kind is int:  # a 64-bit store id, never a bool
        return isinstance(value, int) and not isinstance(value, bool) and -2**63 <= value < 2**63
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) < 1e15
    if kind is str:  # ids and times this API wrote: never a NUL, which no text column holds
        return isinstance(value, str) and "\x00" not in value
    return isinstance(value, kind)

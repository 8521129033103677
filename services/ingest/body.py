"""Reading a tracking request: size limits, gzip, JSON, the write key."""
from __future__ import annotations

import base64
import binascii
import zlib
from typing import Any

import orjson
from fastapi import Request

from shared.errors import ApiError
from shared.http import read_limited, too_large


async def read_json(request: Request, max_bytes: int) -> Any:
    """The parsed body; 413 above `max_bytes` as sent or once inflated, 400 if not JSON."""
    body = await read_limited(request, max_bytes)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding == "gzip":
        body = _gunzip(body, max_bytes)
    elif encoding not in ("identity", ""):
        raise ApiError(415, f"Content-Encoding {encoding!r} is not supported; send gzip or none.")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"The body is not valid JSON: {exc}.", "invalid_json") from None


def _gunzip(data: bytes, max_bytes: int) -> bytes:
    """Inflate at most max_bytes + 1 bytes: a gzip bomb stops at the limit."""
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, max_bytes + 1)
    except zlib.error as exc:
        raise ApiError(400, f"The body is not valid gzip: {exc}.", "invalid_gzip") from None
    if len(out) > max_bytes or inflater.unconsumed_tail:
        raise too_large(max_bytes, "once inflated ")
    return out


def write_key_of(request: Request, body: Any) -> str | None:
    """HTTP Basic with the key as user name (Segment SDKs), else `writeKey` in the body."""
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "basic":
        try:
            user, _, _ = base64.b64decode(credentials.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise ApiError(401, "The Basic credentials are not valid base64.", "invalid_write_key") from None
        return user
    key = body.get("writeKey") if isinstance(body, dict) else None
    return key if isinstance(key, str) else None

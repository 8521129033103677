"""Reading request bodies without trusting their size."""
from __future__ import annotations

from fastapi import Request

from shared.errors import ApiError


async def read_limited(request: Request, max_bytes: int) -> bytes:
    """The body, or a 413 as soon as it is known to exceed `max_bytes` (never buffered past it)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_large(max_bytes)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise too_large(max_bytes)
    return bytes(body)


def too_large(max_bytes: int, qualifier: str = "") -> ApiError:
    return ApiError(413, f"The request is {qualifier}over the limit of {max_bytes} bytes; send smaller batches.")

"""Forward a request to a service and its answer back, the same way in-process and over HTTP."""
from __future__ import annotations

import re
from urllib.parse import quote, quote_from_bytes

import httpx
from fastapi import Request, Response

from shared.errors import ApiError

# Hop-by-hop headers, and ones the gateway sets itself (CORS, request id, length).
DROPPED_REQUEST_HEADERS = {
    b"host", b"content-length", b"connection", b"keep-alive", b"transfer-encoding", b"upgrade", b"x-request-id",
}
DROPPED_RESPONSE_HEADERS = {
    b"content-length", b"connection", b"keep-alive", b"transfer-encoding", b"x-request-id", b"server", b"date",
}
CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")
# Printable ASCII stays as the client wrote it (its own %-escapes included); anything else is escaped.
QUERY_SAFE = "".join(chr(c) for c in range(0x21, 0x7F))
PATH_SAFE = "/:@!$&'()*+,;=-._~"


def check_path(path: str) -> None:
    """400 for a decoded path with a control character: no route has one, and no hop can carry it."""
    if found := CONTROL_CHARACTER.search(path):
        raise ApiError(
            400,
            f"The path contains the control character %{ord(found.group()):02X} at position {found.start()}; "
            "paths may not contain %00-%1F or %7F.",
            "invalid_path",
        )


async def forward(
    client: httpx.AsyncClient, service: str, request: Request, body: bytes, request_id: str
) -> Response:
    # Raw bytes both ways: header values are not always ASCII, and the service reads them as sent.
    headers = [(k, v) for k, v in request.headers.raw if k.lower() not in DROPPED_REQUEST_HEADERS]
    headers.append((b"x-request-id", request_id.encode()))
    if request.client:
        headers.append((b"x-forwarded-for", request.client.host.encode()))
    try:
        upstream = await client.request(request.method, upstream_url(request), headers=headers, content=body)
    except httpx.TimeoutException as exc:
        raise ApiError(504, f"The {service} service did not answer in time.", "upstream_timeout") from exc
    except httpx.TransportError as exc:
        raise ApiError(503, f"The {service} service cannot be reached.", "upstream_unavailable",
                       headers={"Retry-After": "5"}) from exc
    response = Response(upstream.content, status_code=upstream.status_code)
    response.raw_headers += [
        (k, v)
        for k, v in upstream.headers.raw
        if k.lower() not in DROPPED_RESPONSE_HEADERS and not k.lower().startswith(b"access-control-")
    ]
    return response


def upstream_url(request: Request) -> httpx.URL:
    """The path as the service will decode it, and the query string as the client sent it."""
    query = quote_from_bytes(request.scope.get("query_string", b""), safe=QUERY_SAFE)
    return httpx.URL(path=quote(request.scope["path"], safe=PATH_SAFE), query=query.encode())

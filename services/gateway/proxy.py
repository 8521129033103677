"""Forward a request to a service and its answer back, the same way in-process and over HTTP."""
from __future__ import annotations

import httpx
from fastapi import Request, Response

from shared.errors import ApiError

# Hop-by-hop headers, and ones the gateway sets itself (CORS, request id, length).
DROPPED_REQUEST_HEADERS = {"host", "content-length", "connection", "keep-alive", "transfer-encoding", "upgrade"}
DROPPED_RESPONSE_HEADERS = {
    "content-length", "connection", "keep-alive", "transfer-encoding", "x-request-id", "server", "date",
}


async def forward(
    client: httpx.AsyncClient, service: str, request: Request, body: bytes, request_id: str
) -> Response:
    headers = [(k, v) for k, v in request.headers.items() if k.lower() not in DROPPED_REQUEST_HEADERS]
    headers.append(("x-request-id", request_id))
    if request.client:
        headers.append(("x-forwarded-for", request.client.host))
    try:
        upstream = await client.request(
            request.method,
            request.url.path,
            params=request.url.query.encode(),
            headers=headers,
            content=body,
        )
    except httpx.TimeoutException as exc:
        raise ApiError(504, f"The {service} service did not answer in time.", "upstream_timeout") from exc
    except httpx.TransportError as exc:
        raise ApiError(503, f"The {service} service cannot be reached.", "upstream_unavailable",
                       headers={"Retry-After": "5"}) from exc
    kept = {
        k: v
        for k, v in upstream.headers.multi_items()
        if k.lower() not in DROPPED_RESPONSE_HEADERS and not k.lower().startswith("access-control-")
    }
    return Response(upstream.content, status_code=upstream.status_code, headers=kept)

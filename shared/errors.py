"""The contract's error shape, and handlers that turn every failure into it.

`{"error": {"code": "snake_case_code", "message": "human sentence", "details": [...]}}`
"""
from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.rules import RuleError
from shared.store import CONFLICT_SQLSTATES, sqlstate

log = logging.getLogger("funnelstream.errors")

STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_fields",
    429: "rate_limited",
    502: "bad_gateway",
    503: "unavailable",
    504: "gateway_timeout",
}


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        details: list[Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or STATUS_CODES.get(status, "error")
        self.message = message
        self.details = details or []
        self.headers = headers


@contextmanager
def rule_errors_as_422(what: str) -> Iterator[None]:
    """A RuleError raised inside (a bad rule, funnel, policy or alert) becomes the contract's 422
    naming the bad part: "Bad {what} at {where}: {message}.", code `invalid_{what}`."""
    try:
        yield
    except RuleError as err:
        raise ApiError(422, f"Bad {what} at {err.where}: {err.message}.", f"invalid_{what}",
                       [{"loc": err.where, "msg": err.message}]) from None


def error_body(code: str, message: str, details: list[Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details or []}}


def error_response(err: ApiError) -> JSONResponse:
    return JSONResponse(
        error_body(err.code, err.message, err.details), status_code=err.status, headers=err.headers
    )


def _validation_details(exc: RequestValidationError) -> list[dict[str, Any]]:
    return [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in exc.errors()
    ]


async def _on_api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc)


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    message = exc.detail if isinstance(exc.detail, str) else STATUS_CODES.get(exc.status_code, "error")
    if exc.status_code == 404 and message == "Not Found":
        message = "No such route. See /docs for the API."
    if exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        message = f"{request.method} is not allowed on {request.url.path}" + (f"; use {allowed}." if allowed else ".")
    return error_response(ApiError(exc.status_code, message, headers=exc.headers))


async def _on_validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = _validation_details(exc)
    if any(d["type"] == "json_invalid" for d in details):
        return error_response(ApiError(400, "The request body is not valid JSON.", "invalid_json", details))
    return error_response(ApiError(422, "Some fields are invalid; see details.", details=details))


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    if sqlstate(exc) in CONFLICT_SQLSTATES:
        # A write that met a consumer's batch (deadlock victim, serialization failure): nothing
        # was written and the same request succeeds when sent again, so say so instead of a 500.
        log.info("%s %s aborted by the database as a conflict; answered 503", request.method, request.url.path)
        return error_response(ApiError(503, "The store was busy with a conflicting change; send the request again.",
                                       "conflict_retry", headers={"Retry-After": "1"}))
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(ApiError(500, "Internal error; the request id tells operators where to look.", "internal_error"))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _on_api_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(Exception, _on_unexpected)

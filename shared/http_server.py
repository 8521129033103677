"""uvicorn with the deadlines and the cap it lacks, so one client cannot hold a server's sockets.

uvicorn closes idle kept-alive connections (`timeout_keep_alive`) but waits for ever for request
headers and bodies, and its `limit_concurrency` answers over the cap in plain text. So:
- `GuardedHttpProtocol` (its httptools protocol, which `uvicorn[standard]` uses) closes a
  connection whose request line and headers are not complete in time (408 if some arrived), and
  answers requests on connections over the cap 503 in the contract's error shape;
- `BodyDeadline` (ASGI) answers 408 when the body is not complete in time after the headers: raised
  from the app's own `receive`, so the app's error handlers shape, count and log it.
"""
from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from shared.errors import error_body
from shared.settings import CommonSettings


class GuardedHttpProtocol(HttpToolsProtocol):
    header_timeout = 10.0  # set per server by `guarded_protocol`
    max_connections = 1000

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._started_request = False
        self._header_deadline: asyncio.TimerHandle | None = self.loop.call_later(
            self.header_timeout, self._headers_too_slow)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_deadline()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        # The first byte of a request; on a kept-alive connection the clock starts here.
        super().on_message_begin()
        self._started_request = True
        if self._header_deadline is None:
            self._header_deadline = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def on_headers_complete(self) -> None:
        self._cancel_header_deadline()
        self._started_request = False
        if len(self.connections) <= self.max_connections:
            super().on_headers_complete()
            return
        app, self.app = self.app, _over_capacity  # uvicorn answers this request with it
        try:
            super().on_headers_complete()
        finally:
            self.app = app

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if self.transport.is_closing():
            return
        if self._started_request:
            body = json.dumps(error_body(
                "request_timeout", f"The request headers were not complete within {self.header_timeout:g} s."
            )).encode()
            self.transport.write(
                b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
        self.transport.close()

    def _cancel_header_deadline(self) -> None:
        if getattr(self, "_header_deadline", None) is not None:
            self._header_deadline.cancel()  # type: ignore[union-attr]
            self._header_deadline = None


async def _over_capacity(scope: Scope, receive: Receive, send: Send) -> None:
    body = json.dumps(error_body(
        "too_many_connections", "The server has as many connections open as it serves; retry in a moment."
    )).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"retry-after", b"1"), (b"connection", b"close")]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def guarded_protocol(settings: CommonSettings) -> type[GuardedHttpProtocol]:
    return type("GuardedHttpProtocol", (GuardedHttpProtocol,), {
        "header_timeout": settings.http_header_timeout_seconds,
        "max_connections": settings.http_max_connections,
    })


class BodyTimeout(HTTPException):
    def __init__(self, seconds: float) -> None:
        super().__init__(408, f"The request body was not complete within {seconds:g} s of its headers.",
                         headers={"Connection": "close"})


class BodyDeadline:
    """The whole body within `seconds` of the headers (when the app is called), however it trickles."""

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = asyncio.get_running_loop().time() + self.seconds
        complete = False

        async def receive_in_time() -> Message:
            nonlocal complete
            if complete:  # later calls wait for a disconnect, for as long as the response takes
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message: dict[str, Any] = dict(await receive())
            except TimeoutError:
                raise BodyTimeout(self.seconds) from None
            complete = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        await self.app(scope, receive_in_time, send)

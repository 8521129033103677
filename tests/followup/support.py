"""What the follow-up tests share: publishing the events segmentation and the funnel service
publish, waiting until the follow-up consumer has applied them, running the scheduler and the
webhook sender at the moved clock, reading the API through the gateway, and a real HTTP receiver
for webhooks."""
from __future__ import annotations

import hashlib
import hmac
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import orjson
from fastapi import FastAPI
from sqlalchemy import select

from services.followup.jobs import run_scheduler, send_webhooks
from services.followup.settings import FollowupSettings
from services.followup.store import deliveries
from shared.clock import FixedClock
from shared.events import (
    CUSTOMERS,
    FOLLOWUPS,
    FUNNEL,
    SEGMENTS,
    CustomerErased,
    Event,
    FunnelStageChanged,
    SegmentChanged,
    encode,
    to_iso,
)
from shared.service import Runtime
from tests.helpers import ADMIN, READER, eventually, free_port, read_topic

T0 = datetime(2024, 3, 1, tzinfo=UTC)
SECRET = "test-webhook-secret"


def at(days: float = 0, **delta: float) -> datetime:
    return T0 + timedelta(days=days, **delta)


def iso(days: float = 0, **delta: float) -> str:
    """The contract's time format, `days` after T0."""
    return to_iso(at(days, **delta))


class Followups:
    """The gateway with its in-process follow-up service, driven as a test needs."""

    def __init__(self, gateway_app: FastAPI, client: httpx.AsyncClient, clock: FixedClock) -> None:
        self.client = client
        self.clock = clock
        self.app: FastAPI = gateway_app.state.upstreams["followup"].app

    @property
    def runtime(self) -> Runtime:
        runtime: Runtime = self.app.state.runtime
        return runtime

    @property
    def settings(self) -> FollowupSettings:
        settings: FollowupSettings = self.app.state.settings
        return settings

    # --- what other services publish --------------------------------------------------------------

    async def publish(self, *events: Event) -> None:
        """Events on the bus as their services publish them; returns once follow-up applied them."""
        await self.runtime.bus.publish([encode(e) for e in events])
        await self.settle()

    async def settle(self) -> None:
        async def caught_up() -> bool:
            lag = await self.runtime.bus.lag("followup", [SEGMENTS, FUNNEL, CUSTOMERS])
            return not any(lag.values())

        await eventually(caught_up)

    async def entered(self, customer: str, segment: str, days: float = 0, reason: str = "") -> None:
        await self.publish(SegmentChanged(customer_id=customer, segment=segment, change="entered", at=at(days),
                                          reason=reason))

    async def exited(self, customer: str, segment: str, days: float = 0) -> None:
        await self.publish(SegmentChanged(customer_id=customer, segment=segment, change="exited", at=at(days)))

    async def moved(self, customer: str, to_stage: str | None, days: float = 0, funnel: str = "lifecycle",
                    from_stage: str | None = None) -> None:
        await self.publish(FunnelStageChanged(customer_id=customer, funnel=funnel, from_stage=from_stage,
                                              to_stage=to_stage, at=at(days)))

    async def erased(self, customer: str, days: float = 0) -> None:
        await self.publish(CustomerErased(customer_id=customer, at=at(days)))

    # --- the scheduler and the webhook sender, by the test's clock --------------------------------

    async def sweep(self) -> int:
        return await run_scheduler(self.runtime, self.settings)

    async def advance(self, **delta: float) -> int:
        """Time passes; then one scheduler pass."""
        self.clock.advance(**delta)
        return await self.sweep()

    async def send(self, client: httpx.AsyncClient) -> int:
        return await send_webhooks(self.runtime, self.settings, client)

    async def deliveries(self) -> list[Any]:
        async with self.runtime.store.read() as session:
            return list((await session.execute(select(deliveries).order_by(deliveries.c.event, deliveries.c.url))).all())

    async def events(self) -> list[dict[str, Any]]:
        """Every FollowupChanged on followups.v1 so far (the outbox relayed first), by `at`."""
        await self.runtime.relay.flush()
        records = await read_topic(self.runtime.bus, FOLLOWUPS)
        payloads = [orjson.loads(r.value) for r in records]
        return sorted(payloads, key=lambda p: p["at"])  # stable: bus order within a customer

    # --- the API ----------------------------------------------------------------------------------

    async def get(self, followup_id: str) -> dict[str, Any]:
        response = await self.client.get(f"/api/followups/{followup_id}", headers=READER)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def list(self, **params: Any) -> list[dict[str, Any]]:
        """Every follow-up the filters select, following `next_cursor` in small pages."""
        return await self.paged("/api/followups", **params)

    async def paged(self, path: str, limit: int = 2, **params: Any) -> list[dict[str, Any]]:
        """Every item of a paged list, following `next_cursor` (pages of `limit`, never more)."""
        items: list[dict[str, Any]] = []
        cursor = None
        while True:
            query = {"limit": limit, **params, **({"cursor": cursor} if cursor else {})}
            response = await self.client.get(path, params=query, headers=READER)
            assert response.status_code == 200, response.text
            page = response.json()["items"]
            assert len(page) <= limit and (page or cursor is None), response.text  # no empty page after a cursor
            items += page
            if not (cursor := response.json()["next_cursor"]):
                return items

    async def of(self, customer: str) -> list[dict[str, Any]]:
        return await self.list(customer_id=customer)

    async def only(self, customer: str) -> dict[str, Any]:
        """The customer's one follow-up."""
        found = await self.of(customer)
        assert len(found) == 1, found
        return found[0]

    async def act(self, followup_id: str, action: str, body: Any) -> httpx.Response:
        return await self.client.post(f"/api/followups/{followup_id}/{action}", json=body, headers=ADMIN)

    async def ok(self, followup_id: str, action: str, body: Any) -> dict[str, Any]:
        response = await self.act(followup_id, action, body)
        assert response.status_code == 200, response.text
        answer: dict[str, Any] = response.json()
        return answer

    async def manual(self, **body: Any) -> dict[str, Any]:
        response = await self.client.post("/api/followups", json=body, headers=ADMIN)
        assert response.status_code == 201, response.text
        answer: dict[str, Any] = response.json()
        return answer

    async def policy(self, key: str) -> dict[str, Any]:
        response = await self.client.get(f"/api/followups/policies/{key}", headers=READER)
        assert response.status_code == 200, response.text
        answer: dict[str, Any] = response.json()
        return answer

    async def stats(self, **params: Any) -> list[dict[str, Any]]:
        response = await self.client.get("/api/followups/stats", params=params, headers=READER)
        assert response.status_code == 200, response.text
        items: list[dict[str, Any]] = response.json()["items"]
        return items


def signature(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A real HTTP server on 127.0.0.1 in a thread: records every POST and answers with the
    statuses it is told (then 200)."""

    port: int = field(default_factory=free_port)
    answers: list[int] = field(default_factory=list)
    received: list[Delivery] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the standard library's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.received.append(Delivery({k.lower(): v for k, v in self.headers.items()}, body))
                status = receiver.answers.pop(0) if receiver.answers else 200
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

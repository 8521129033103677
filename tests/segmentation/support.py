"""What the segmentation tests share: sending events as an SDK does, waiting until segmentation
has applied them, running the scheduled pass, and reading profiles and segments."""
from __future__ import annotations

import base64
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Self

import httpx
import orjson
from fastapi import FastAPI

from services.segmentation.jobs import reevaluate_now
from shared.bus.base import Consumer, Record
from shared.bus.embedded import EmbeddedBus
from shared.clock import FixedClock
from shared.events import (
    CUSTOMERS,
    FUNNEL,
    ID_HEADER,
    INTERACTIONS,
    SEGMENTS,
    FunnelStageChanged,
    Interaction,
    encode,
)
from shared.service import Runtime
from tests.helpers import ADMIN, READER, eventually

T0 = datetime(2024, 3, 1, tzinfo=UTC)
WRITE_KEY = "dev-write-key"
BASIC = {"Authorization": "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()}


def at(days: float = 0, **delta: float) -> str:
    """An ISO-8601 time `days` after T0, as an SDK sends `timestamp`."""
    return (T0 + timedelta(days=days, **delta)).isoformat().replace("+00:00", "Z")


def _who(user: str | None, anon: str | None) -> dict[str, str]:
    return {k: v for k, v in (("userId", user), ("anonymousId", anon)) if v}


def order(mid: str, user: str | None, days: float = 0, anon: str | None = None, **properties: Any) -> dict[str, Any]:
    return {"type": "track", "event": "Order Completed", "messageId": mid, "timestamp": at(days),
            "properties": properties, **_who(user, anon)}


def identify(mid: str, user: str | None, days: float = 0, anon: str | None = None, **traits: Any) -> dict[str, Any]:
    return {"type": "identify", "messageId": mid, "timestamp": at(days), "traits": traits, **_who(user, anon)}


def page(
    mid: str, user: str | None, days: float = 0, anon: str | None = None, context: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {"type": "page", "name": "Home", "messageId": mid, "timestamp": at(days), "context": context or {},
            **_who(user, anon)}


def track(mid: str, user: str | None, event: str, days: float = 0, anon: str | None = None) -> dict[str, Any]:
    return {"type": "track", "event": event, "messageId": mid, "timestamp": at(days), **_who(user, anon)}


def survey(mid: str, user: str | None, kind: Any, score: Any, days: float = 0, anon: str | None = None,
           channel: str | None = None) -> dict[str, Any]:
    """A `Survey Responded` answer (docs/api.md section 11); `channel` as the SDK's context.channel."""
    return {"type": "track", "event": "Survey Responded", "messageId": mid, "timestamp": at(days),
            "properties": {"survey": kind, "score": score}, "context": {"channel": channel} if channel else {},
            **_who(user, anon)}


def interaction(mid: str, user: str, name: str, days: float = 0, **properties: Any) -> Interaction:
    """A track event as ingest publishes it on interactions.v1 (for records no SDK could send today)."""
    when = T0 + timedelta(days=days)
    return Interaction(event_id=mid, customer_id=user, user_id=user, type="track", name=name, properties=properties,
                       occurred_at=when, received_at=when)


class Segmentation:
    """The gateway with its in-process ingest and segmentation, driven as a test needs."""

    def __init__(self, gateway_app: FastAPI, client: httpx.AsyncClient, clock: FixedClock) -> None:
        self.client = client
        self.clock = clock
        self.ingest_app = gateway_app.state.upstreams["ingest"].app
        self.app = gateway_app.state.upstreams["segmentation"].app

    @property
    def runtime(self) -> Runtime:
        runtime: Runtime = self.app.state.runtime
        return runtime

    async def send(self, *messages: dict[str, Any]) -> None:
        """One batch as an SDK sends it; returns once segmentation has applied it."""
        body = orjson.dumps({"batch": list(messages)})
        response = await self.client.post("/v1/batch", content=body, headers={**BASIC, "Content-Type": "application/json"})
        assert response.status_code == 200, response.text
        assert response.json()["rejected"] == [], response.text
        await self.settle()

    async def settle(self) -> None:
        """Everything sent so far is applied: ingest's inbox is drained onto the bus, and the
        segmentation consumer has committed past every record of its topics."""
        await self.ingest_app.state.pipeline.drain(self.ingest_app.state.runtime)

        async def caught_up() -> bool:
            lag = await self.runtime.bus.lag("segmentation", [CUSTOMERS, INTERACTIONS, FUNNEL])
            return not any(lag.values())

        await eventually(caught_up)

    async def published(self, topic: str, message_id: str) -> list[Record]:
        """The records of `topic` carrying `message_id`, read by a consumer group of the test's own."""
        consumer = self.runtime.bus.consumer(f"segmentation-test-{uuid.uuid4().hex[:8]}", [topic])
        await consumer.start()
        try:
            records: list[Record] = []
            while batch := await consumer.poll(timeout=0.2):
                records += batch
        finally:
            await consumer.stop()
        return [r for r in records if r.headers.get(ID_HEADER) == message_id]

    async def reevaluate(self) -> int:
        """The scheduled pass, now (by the service clock)."""
        return await reevaluate_now(self.runtime, self.app.state.settings)

    async def advance(self, days: float) -> int:
        """Time passes without any event; then the scheduled pass runs."""
        self.clock.advance(days=days)
        return await self.reevaluate()

    async def define(self, key: str, rule: dict[str, Any]) -> dict[str, Any]:
        """A custom segment, created as an admin does."""
        response = await self.client.post("/api/segments", json={"key": key, "rule": rule}, headers=ADMIN)
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body

    async def publish(self, *events: Interaction) -> None:
        """Interactions straight onto interactions.v1, as ingest publishes them; returns once applied."""
        await self.runtime.bus.publish([encode(e) for e in events])
        await self.settle()

    async def funnel_move(self, customer_id: str, funnel: str, to_stage: str | None, days: float = 0,
                          order: str | None = None) -> None:
        """A FunnelStageChanged on funnel.v1, as the funnel service publishes it (`order`: as it
        recorded the moves); returns once applied."""
        at_ = T0 + timedelta(days=days)
        await self.runtime.bus.publish([encode(FunnelStageChanged(
            customer_id=customer_id, funnel=funnel, from_stage=None, to_stage=to_stage, at=at_, order=order))])
        await self.settle()

    async def get_profile(self, customer_id: str) -> httpx.Response:
        return await self.client.get(f"/api/customers/{customer_id}", headers=READER)

    async def profile(self, customer_id: str) -> dict[str, Any]:
        response = await self.get_profile(customer_id)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def members(self, key: str) -> list[str]:
        """Every member's id, following `next_cursor`."""
        return [m["customer_id"] for m in await self.paged(f"/api/segments/{key}/members")]

    async def history(self, key: str, customer_id: str | None = None) -> list[dict[str, Any]]:
        """Entries and exits, oldest first."""
        params = {"customer_id": customer_id} if customer_id else {}
        return list(reversed(await self.paged(f"/api/segments/{key}/history", **params)))

    async def paged(self, path: str, **params: Any) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        cursor = None
        while True:
            query = {**params, "limit": 2, **({"cursor": cursor} if cursor else {})}  # small pages: the cursor is used
            response = await self.client.get(path, params=query, headers=READER)
            assert response.status_code == 200, response.text
            items += response.json()["items"]
            if not (cursor := response.json()["next_cursor"]):
                return items

    async def segments(self) -> dict[str, dict[str, Any]]:
        """Every segment, in listed order, following `next_cursor`."""
        return {s["key"]: s for s in await self.paged("/api/segments")}

    async def sizes(self, key: str, **params: Any) -> list[tuple[str, int]]:
        response = await self.client.get(f"/api/segments/{key}/size", params=params, headers=READER)
        assert response.status_code == 200, response.text
        return [(p["at"], p["size"]) for p in response.json()["points"]]


class SegmentFeed:
    """segments.v1 read from the embedded bus file by a consumer group of the test's own, as
    another service reads it."""

    def __init__(self, bus_path: Path) -> None:
        self.bus = EmbeddedBus(bus_path)
        self.consumer: Consumer | None = None
        self.records: list[Record] = []

    async def __aenter__(self) -> Self:
        await self.bus.start()
        self.consumer = self.bus.consumer(f"segmentation-test-{uuid.uuid4().hex[:8]}", [SEGMENTS])
        await self.consumer.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self.consumer is not None
        await self.consumer.stop()
        await self.bus.stop()

    async def changes(self, until: Callable[[list[dict[str, Any]]], bool]) -> list[dict[str, Any]]:
        """Every SegmentChanged so far (payload plus `_key` and `_type`), once `until` holds."""
        assert self.consumer is not None
        consumer = self.consumer

        async def check() -> list[dict[str, Any]] | None:
            self.records += await consumer.poll(timeout=0.05)
            payloads = [{**orjson.loads(r.value), "_key": r.key, "_type": r.headers.get("event-type")}
                        for r in self.records]
            return payloads if until(payloads) else None

        result: list[dict[str, Any]] = await eventually(check)
        return result

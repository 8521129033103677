"""What the funnel tests share: sending events as an SDK does, waiting until the funnel service
has applied them (and segmentation, whose segments.v1 feeds breakdowns), and reading funnels,
reports, customers, stage lists, transitions and funnel.v1."""
from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
from fastapi import FastAPI

from shared.clock import FixedClock
from shared.events import CUSTOMERS, FUNNEL, INTERACTIONS, SEGMENTS
from shared.service import Runtime
from tests.helpers import ADMIN, READER, eventually, read_topic

T0 = datetime(2024, 3, 1, tzinfo=UTC)
DAY = 86400.0
WRITE_KEY = "dev-write-key"
BASIC = {"Authorization": "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()}
EMAIL_VISIT = {"page": {"url": "https://shop.example/?utm_source=newsletter&utm_medium=email"}}
SEARCH_VISIT = {"page": {"url": "https://shop.example/", "referrer": "https://www.bing.com/"}}


def at(days: float = 0, **delta: float) -> str:
    """An ISO-8601 time `days` after T0, as an SDK sends `timestamp`."""
    return iso(T0 + timedelta(days=days, **delta))


def iso(moment: datetime) -> str:
    """The contract's output format: UTC with `Z`."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _who(user: str | None, anon: str | None) -> dict[str, str]:
    return {k: v for k, v in (("userId", user), ("anonymousId", anon)) if v}


def track(mid: str, user: str | None, event: str, days: float = 0, anon: str | None = None,
          context: dict[str, Any] | None = None, **properties: Any) -> dict[str, Any]:
    return {"type": "track", "event": event, "messageId": mid, "timestamp": at(days), "properties": properties,
            "context": context or {}, **_who(user, anon)}


def order(mid: str, user: str | None, days: float = 0, anon: str | None = None, **properties: Any) -> dict[str, Any]:
    return track(mid, user, "Order Completed", days, anon, **properties)


def page(mid: str, user: str | None, days: float = 0, anon: str | None = None,
         context: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"type": "page", "name": "Home", "messageId": mid, "timestamp": at(days), "context": context or {},
            **_who(user, anon)}


def identify(mid: str, user: str | None, days: float = 0, anon: str | None = None, **traits: Any) -> dict[str, Any]:
    return {"type": "identify", "messageId": mid, "timestamp": at(days), "traits": traits, **_who(user, anon)}


def walk(user: str, start: float = 0, step: float = 1, prefix: str = "") -> list[dict[str, Any]]:
    """awareness -> interest -> consideration -> purchase -> loyalty, one event a `step` apart."""
    p = prefix or user
    return [page(f"{p}-page", user, start), identify(f"{p}-id", user, start + step, email=f"{user}@example.com"),
            track(f"{p}-view", user, "Product Viewed", start + 2 * step),
            order(f"{p}-o1", user, start + 3 * step, revenue=10), order(f"{p}-o2", user, start + 4 * step, revenue=20)]


class Funnels:
    """The gateway with its in-process services, driven as a funnel test needs."""

    def __init__(self, gateway_app: FastAPI, client: httpx.AsyncClient, clock: FixedClock) -> None:
        self.client = client
        self.clock = clock
        self.ingest_app = gateway_app.state.upstreams["ingest"].app
        self.segmentation: Runtime = gateway_app.state.upstreams["segmentation"].app.state.runtime
        self.runtime: Runtime = gateway_app.state.upstreams["funnel"].app.state.runtime

    async def send(self, *messages: dict[str, Any]) -> None:
        """One batch as an SDK sends it; returns once the funnel service has applied it."""
        body = orjson.dumps({"batch": list(messages)})
        response = await self.client.post("/v1/batch", content=body, headers={**BASIC, "Content-Type": "application/json"})
        assert response.status_code == 200, response.text
        assert response.json()["rejected"] == [], response.text
        await self.settle()

    async def settle(self) -> None:
        """Everything sent so far is applied: ingest's inbox is drained onto the bus, segmentation
        has consumed it and relayed its segment changes, and the funnel consumer has committed
        past every record of interactions.v1, customers.v1 and segments.v1 (its own stage changes
        relayed onto funnel.v1)."""
        await self.ingest_app.state.pipeline.drain(self.ingest_app.state.runtime)

        async def caught_up() -> bool:
            if await self.ingest_app.state.runtime.relay.flush():  # links, erasures
                return False
            for runtime, group, topics in ((self.segmentation, "segmentation", [CUSTOMERS, INTERACTIONS, FUNNEL]),
                                           (self.runtime, "funnel", [INTERACTIONS, CUSTOMERS, SEGMENTS])):
                if any((await runtime.bus.lag(group, topics)).values()) or await runtime.relay.flush():
                    return False
            return True

        await eventually(caught_up)

    async def erase(self, customer_id: str) -> None:
        """DELETE /api/customers/{id} as an admin; returns once the funnel API no longer knows them."""
        response = await self.client.delete(f"/api/customers/{customer_id}", headers=ADMIN)
        assert response.status_code == 202, response.text

        async def gone() -> bool:
            return (await self.get_customer("lifecycle", customer_id)).status_code == 404

        await eventually(gone)
        await self.settle()

    async def create(self, definition: dict[str, Any]) -> dict[str, Any]:
        response = await self.client.post("/api/funnels", json=definition, headers=ADMIN)
        assert response.status_code == 201, response.text
        await self.settle()
        body: dict[str, Any] = response.json()
        return body

    async def update(self, key: str, definition: dict[str, Any]) -> dict[str, Any]:
        response = await self.client.put(f"/api/funnels/{key}", json=definition, headers=ADMIN)
        assert response.status_code == 200, response.text
        await self.settle()
        body: dict[str, Any] = response.json()
        return body

    async def get(self, path: str, **params: Any) -> Any:
        response = await self.client.get(path, params=params, headers=READER)
        assert response.status_code == 200, response.text
        return response.json()

    async def report(self, key: str, **params: Any) -> dict[str, Any]:
        body: dict[str, Any] = await self.get(f"/api/funnels/{key}/report", **params)
        return body

    async def get_customer(self, key: str, customer_id: str) -> httpx.Response:
        return await self.client.get(f"/api/funnels/{key}/customers/{customer_id}", headers=READER)

    async def customer(self, key: str, customer_id: str) -> dict[str, Any]:
        body: dict[str, Any] = await self.get(f"/api/funnels/{key}/customers/{customer_id}")
        return body

    async def stage(self, key: str, stage: str, **params: Any) -> list[dict[str, Any]]:
        """Who sits at the stage, following `next_cursor`."""
        return await self.paged(f"/api/funnels/{key}/stages/{stage}/customers", **params)

    async def transitions(self, key: str, **params: Any) -> list[dict[str, Any]]:
        return await self.paged(f"/api/funnels/{key}/transitions", **params)

    async def paged(self, path: str, limit: int = 2, **params: Any) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        cursor = None
        while True:
            page_ = await self.get(path, **params, limit=limit, **({"cursor": cursor} if cursor else {}))
            assert len(page_["items"]) <= limit
            items += page_["items"]
            if not (cursor := page_["next_cursor"]):
                return items

    async def published(self) -> list[dict[str, Any]]:
        """Every FunnelStageChanged on funnel.v1 so far, read by a consumer group of the test's own
        (without `order`, the opaque recording-order token, checked to grow per customer instead)."""
        records = await read_topic(self.runtime.bus, FUNNEL)
        moves = [orjson.loads(r.value) for r in sorted(records, key=lambda r: (r.partition, r.offset))]
        for customer in {m["customer_id"] for m in moves}:
            orders = [m["order"] for m in moves if m["customer_id"] == customer and m["funnel"] == "lifecycle"]
            assert orders == sorted(orders) and len(set(orders)) == len(orders), orders
        return [{k: v for k, v in m.items() if k != "order"} for m in moves]

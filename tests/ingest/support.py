"""What the ingest tests share: sending as an SDK does, reading timelines, the quarantine and the bus."""
from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import httpx
import orjson

from shared.bus.base import Consumer, Record
from shared.bus.embedded import EmbeddedBus
from tests.helpers import READER, assert_error, eventually  # noqa: F401  (re-exported for the ingest tests)

WRITE_KEY = "dev-write-key"


def basic(key: str) -> dict[str, str]:
    """HTTP Basic with the write key as user name and an empty password (what Segment SDKs send)."""
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


async def send(client: httpx.AsyncClient, path: str, body: Any, key: str = WRITE_KEY) -> httpx.Response:
    return await client.post(path, content=orjson.dumps(body), headers={**basic(key), "Content-Type": "application/json"})


async def send_ok(client: httpx.AsyncClient, path: str, body: Any) -> dict[str, Any]:
    response = await send(client, path, body)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def send_batch(client: httpx.AsyncClient, messages: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return await send_ok(client, "/v1/batch", {"batch": messages, **extra})


def track(message_id: str, event: str = "Product Viewed", **fields: Any) -> dict[str, Any]:
    return {"type": "track", "messageId": message_id, "event": event, **fields}


async def timeline_page(client: httpx.AsyncClient, customer_id: str, **params: Any) -> httpx.Response:
    return await client.get(f"/api/customers/{customer_id}/timeline", params=params, headers=READER)


async def full_timeline(client: httpx.AsyncClient, customer_id: str) -> list[dict[str, Any]]:
    """Every item, following `next_cursor`; [] when the customer is unknown (404)."""
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        response = await timeline_page(client, customer_id, limit=1000, **({"cursor": cursor} if cursor else {}))
        if response.status_code == 404:
            return items
        assert response.status_code == 200, response.text
        page = response.json()
        items += page["items"]
        if not (cursor := page["next_cursor"]):
            return items


async def wait_for_events(client: httpx.AsyncClient, customer_id: str, *event_ids: str) -> list[dict[str, Any]]:
    """The customer's timeline once it shows every one of `event_ids` (the pipeline is asynchronous)."""

    async def check() -> list[dict[str, Any]] | None:
        items = await full_timeline(client, customer_id)
        return items if set(event_ids) <= {i["event_id"] for i in items} else None

    result: list[dict[str, Any]] = await eventually(check)
    return result


def ids_of(items: list[dict[str, Any]]) -> list[str]:
    return [item["event_id"] for item in items]


async def quarantine(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 1000, **({"cursor": cursor} if cursor else {})}
        response = await client.get("/api/ingest/quarantine", params=params, headers=READER)
        assert response.status_code == 200, response.text
        items += response.json()["items"]
        if not (cursor := response.json()["next_cursor"]):
            return items


class BusReader:
    """A second client of the embedded bus, in a consumer group of its own (as another service is)."""

    def __init__(self, bus: EmbeddedBus, group: str) -> None:
        self.bus = bus
        self.group = group
        self.consumers: dict[str, Consumer] = {}
        self.records: dict[str, list[Record]] = {}

    async def read(self, topic: str, until: Callable[[list[Record]], bool]) -> list[Record]:
        """Every record of `topic` so far, once `until(records)` holds."""
        if topic not in self.consumers:
            # A group per topic: the embedded bus shares a group's partitions among all its members
            # whatever topics each reads, so two single-topic members of one group would each miss some.
            self.consumers[topic] = self.bus.consumer(f"{self.group}-{topic}", [topic])
            await self.consumers[topic].start()
            self.records[topic] = []

        async def check() -> list[Record] | None:
            self.records[topic] += await self.consumers[topic].poll(timeout=0.05)
            return self.records[topic] if until(self.records[topic]) else None

        result: list[Record] = await eventually(check)
        return result

    async def payloads(self, topic: str, until: Callable[[list[dict[str, Any]]], bool]) -> list[dict[str, Any]]:
        """Like `read`, as decoded payloads with the event type under `"_type"` and the key under `"_key"`."""
        records = await self.read(topic, lambda rs: until([_payload(r) for r in rs]))
        return [_payload(r) for r in records]

    async def stop(self) -> None:
        for consumer in self.consumers.values():
            await consumer.stop()


def _payload(record: Record) -> dict[str, Any]:
    body: dict[str, Any] = orjson.loads(record.value)
    return {**body, "_type": record.headers.get("event-type"), "_key": record.key}

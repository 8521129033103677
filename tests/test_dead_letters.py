"""`/api/admin/dead-letters` through the gateway (every service in-process, embedded bus, SQLite):
admin only, paged, each dead letter with its error, group and origin; redrive sends it back, the
service that gave up processes it once, and it is no longer listed."""
from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings
from shared.bus.base import OutgoingRecord
from shared.bus.embedded import EmbeddedBus
from shared.events import INTERACTIONS
from tests.helpers import ADMIN, READER, assert_error, eventually, running

URL = "/api/admin/dead-letters"
WRITE = ("dev-write-key", "")
REFUSE = ("CREATE TRIGGER refuse_poison BEFORE INSERT ON profiles WHEN NEW.customer_id = 'poison-1' "
          "BEGIN SELECT RAISE(ABORT, 'profiles refuse poison-1'); END")


@pytest.fixture
def gateway_app(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> FastAPI:
    monkeypatch.setenv("BUS_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("SEGMENTATION_REEVALUATE_SECONDS", "86400")
    return create_app(GatewaySettings())


async def publish_undecodable(data_dir: Path, key: str) -> None:
    """A record no consumer can decode, from a producer of our own (another process, as it were)."""
    bus = EmbeddedBus(data_dir / "bus.db")
    await bus.start()
    try:
        await bus.publish([OutgoingRecord(INTERACTIONS, key, b"{not json", {"event-type": "Interaction",
                                                                           "message-id": f"broken-{key}"})])
    finally:
        await bus.stop()


async def all_items(client: httpx.AsyncClient, params: dict[str, Any]) -> list[dict[str, Any]]:
    items, cursor = [], None
    while True:
        page = (await client.get(URL, params={**params, **({"cursor": cursor} if cursor else {})}, headers=ADMIN)).json()
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items


async def listed(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    return (await client.get(URL, params={"topic": INTERACTIONS}, headers=ADMIN)).json()["items"]


class TestAccess:
    async def test_only_an_admin_key_lists_or_redrives(self, gateway_app: FastAPI):
        async with running(gateway_app) as client:
            assert_error(await client.get(URL), 401, "missing_api_key")
            assert_error(await client.get(URL, headers=READER), 403, "admin_required")
            assert_error(await client.post(f"{URL}/redrive", json={"topic": INTERACTIONS}, headers=READER),
                         403, "admin_required")
            assert (await client.get(URL, headers=ADMIN)).json() == {"items": [], "next_cursor": None}

    async def test_unknown_topic_and_foreign_cursor_are_client_errors(self, gateway_app: FastAPI):
        async with running(gateway_app) as client:
            assert_error(await client.get(URL, params={"topic": "nope.v1"}, headers=ADMIN), 422, "invalid_fields")
            assert_error(await client.post(f"{URL}/redrive", json={"topic": "nope"}, headers=ADMIN), 422, "invalid_fields")
            assert_error(await client.get(URL, params={"cursor": "abc"}, headers=ADMIN), 400, "invalid_cursor")


class TestListing:
    async def test_each_group_that_gave_up_is_listed_with_the_error_and_origin_paged(
            self, gateway_app: FastAPI, data_dir: Path):
        async with running(gateway_app) as client:
            for key in ("k1", "k2"):
                await publish_undecodable(data_dir, key)
            # interactions.v1 is consumed by segmentation, funnel and recommendation: each gives up on both records.
            await eventually(lambda: _count(client, 6), timeout=20)

            items = await all_items(client, {"topic": INTERACTIONS, "limit": 1})
            by_page = await all_items(client, {"limit": 3})  # every topic's

            assert len(items) == 6 and by_page == items
            assert {(i["group"], i["key"]) for i in items} == {
                (g, k) for g in ("segmentation", "funnel", "recommendation") for k in ("k1", "k2")}
            assert len({i["id"] for i in items}) == 6
            for item in items:
                assert item["topic"] == INTERACTIONS and item["attempts"] == 1
                assert item["event_id"] == f"broken-{item['key']}" and item["event_type"] == "Interaction"
                assert item["error"].startswith("UndecodableRecord: Interaction payload does not fit its contract")
                assert item["partition"] >= 0 and item["offset"] >= 0
                assert abs((datetime.fromisoformat(item["dead_lettered_at"]) - datetime.now(UTC)).total_seconds()) < 60


async def _count(client: httpx.AsyncClient, n: int) -> bool:
    return len(await listed(client)) == n


class TestRedrive:
    async def test_the_service_that_gave_up_processes_it_once_and_it_is_not_listed_again(
            self, gateway_app: FastAPI, data_dir: Path):
        async with running(gateway_app) as client:
            await execute(data_dir / "segmentation.db", REFUSE)  # segmentation cannot store poison-1
            sent = await client.post("/v1/track", json={"userId": "poison-1", "event": "Signed Up", "messageId": "m-1"},
                                     auth=WRITE)
            assert sent.json()["accepted"] == 1
            (letter,) = await eventually(lambda: listed(client), timeout=20)
            assert letter["group"] == "segmentation" and letter["key"] == "poison-1" and letter["attempts"] == 2
            assert "profiles refuse poison-1" in letter["error"]
            assert (await client.get("/api/customers/poison-1", headers=READER)).status_code == 404

            await execute(data_dir / "segmentation.db", "DROP TRIGGER refuse_poison")  # fixed
            answer = await client.post(f"{URL}/redrive", json={"topic": INTERACTIONS}, headers=ADMIN)

            assert answer.status_code == 200 and answer.json() == {
                "topic": INTERACTIONS, "redriven": [letter["id"]], "not_found": []}
            profile = await eventually(lambda: _profile(client, "poison-1"), timeout=20)
            assert profile["event_count"] == 1
            assert await listed(client) == []
            again = await client.post(f"{URL}/redrive", json={"topic": f"{INTERACTIONS}.dlq", "ids": [letter["id"]]},
                                      headers=ADMIN)
            assert again.json() == {"topic": INTERACTIONS, "redriven": [], "not_found": [letter["id"]]}
            # The funnel service had processed the message: the redriven copy changed nothing there.
            assert await execute(data_dir / "funnel.db", "SELECT count(*) FROM processed_messages WHERE message_id = ?",
                                 letter["event_id"]) == [(1,)]


async def execute(path: Path, statement: str, *params: Any) -> list[tuple[Any, ...]]:
    """SQL on a service's SQLite file from a thread: the services run on this event loop, and a
    blocking call waiting for their write lock would wait for ever."""
    def run() -> list[tuple[Any, ...]]:
        db = sqlite3.connect(path, timeout=30, isolation_level=None)
        try:
            return db.execute(statement, params).fetchall()
        finally:
            db.close()
    return await asyncio.to_thread(run)


async def _profile(client: httpx.AsyncClient, customer: str) -> dict[str, Any] | None:
    response = await client.get(f"/api/customers/{customer}", headers=READER)
    return response.json() if response.status_code == 200 else None

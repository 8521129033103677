"""A funnel created or edited while the consumer is applying a batch counts that batch's events:
the same as the same definition created once the stream is over. (On PostgreSQL the rebuild used
to read around the batch's uncommitted events, while the batch matched them against the funnels
it knew before: those events were lost to the new definition for good.) SQLite and PostgreSQL."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from services.funnel.app import create_app
from services.funnel.settings import FunnelSettings
from shared.bus.base import Record
from shared.consumer import ConsumerLoop, Transaction
from shared.events import Event, Interaction, encode
from shared.store import Store
from tests.helpers import ADMIN, READER, running

START = datetime.now(UTC) - timedelta(days=2)
CUSTOMERS = 30


def stages(first_event: str) -> dict[str, Any]:
    return {"name": "Buyers", "conversion_window_days": 30, "stages": [
        {"key": "first", "name": "First", "match": {"type": "track", "event": first_event}},
        {"key": "bought", "name": "Bought", "match": {"type": "track", "event": "Order Completed"}}]}


def events_of(customers: range) -> list[Record]:
    """Each customer views, adds and buys, a minute apart."""
    events = [Interaction(event_id=f"c{i}-{name}", customer_id=f"c{i}", user_id=f"c{i}", type="track", name=name,
                          occurred_at=START + timedelta(minutes=i, seconds=n), received_at=START)
              for i in customers for n, name in enumerate(("Product Viewed", "Product Added", "Order Completed"))]
    return [Record(r.topic, 0, customers.start * 3 + offset, r.key, r.value, r.headers, 0)
            for offset, r in enumerate(map(encode, events))]


@pytest.fixture
async def funnel(store_url: str, tmp_path: Path) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    app = create_app(FunnelSettings(data_dir=tmp_path, database_url=store_url, cleanup_seconds=86400))
    async with running(app) as client:
        yield app, client


class Paused:
    """A step the batch runs after recording its events, before it commits: the test decides
    when the batch goes on."""

    def __init__(self) -> None:
        self.reached, self.go_on = asyncio.Event(), asyncio.Event()

    async def __call__(self, event: Event, tx: Transaction) -> None:
        async def wait() -> None:
            self.reached.set()
            await asyncio.wait_for(self.go_on.wait(), 60)

        tx.defer("test.pause", wait)  # after the funnel's "record" step, deferred by the first event


async def blocked_on_a_lock(store: Store) -> bool:
    if store.is_sqlite:
        await asyncio.sleep(0.2)  # one writer at a time: the change waits, whatever we look at
        return True
    async with store.engine.connect() as conn:
        waiting = await conn.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                         "AND wait_event_type = 'Lock'"))
    return bool(waiting)


async def during_a_batch(consumer: ConsumerLoop, store: Store, change: Any) -> None:
    """`change()` (an HTTP call) while the consumer applies the second half of the stream."""
    paused = Paused()
    handlers = consumer.handlers
    consumer.handlers = {**handlers, Interaction: [*handlers[Interaction], paused]}
    batch = asyncio.create_task(consumer.process(events_of(range(CUSTOMERS // 2, CUSTOMERS))))
    try:
        await asyncio.wait_for(paused.reached.wait(), 30)
        answer = asyncio.create_task(change())
        deadline = asyncio.get_running_loop().time() + 30
        while not answer.done() and not await blocked_on_a_lock(store):
            assert asyncio.get_running_loop().time() < deadline, "the change neither finished nor waited"
            await asyncio.sleep(0.02)
        paused.go_on.set()
        assert (await asyncio.wait_for(answer, 60)).status_code in (200, 201)
        await asyncio.wait_for(batch, 60)
    finally:
        consumer.handlers = handlers
        paused.go_on.set()


async def at_each_stage(client: httpx.AsyncClient, key: str) -> dict[str, int]:
    answer = await client.get(f"/api/funnels/{key}", headers=READER)
    assert answer.status_code == 200, answer.text
    customers: dict[str, int] = answer.json()["customers"]
    return customers


class TestDefinitionsChangedUnderLoad:
    async def test_a_funnel_created_during_a_batch_counts_it_like_one_created_after(
        self, funnel: tuple[FastAPI, httpx.AsyncClient]
    ) -> None:
        app, client = funnel
        runtime = app.state.runtime
        await runtime.consumer.process(events_of(range(CUSTOMERS // 2)))
        await during_a_batch(runtime.consumer, runtime.store, lambda: client.post(
            "/api/funnels", json={"key": "during", **stages("Product Added")}, headers=ADMIN))
        assert (await client.post("/api/funnels", json={"key": "after", **stages("Product Added")},
                                  headers=ADMIN)).status_code == 201
        assert await at_each_stage(client, "during") == await at_each_stage(client, "after") == {
            "first": 0, "bought": CUSTOMERS}

    async def test_a_funnel_edited_during_a_batch_counts_it_like_one_created_after(
        self, funnel: tuple[FastAPI, httpx.AsyncClient]
    ) -> None:
        app, client = funnel
        runtime = app.state.runtime
        assert (await client.post("/api/funnels", json={"key": "edited", **stages("Signed Up")},
                                  headers=ADMIN)).status_code == 201
        await runtime.consumer.process(events_of(range(CUSTOMERS // 2)))
        await during_a_batch(runtime.consumer, runtime.store, lambda: client.put(
            "/api/funnels/edited", json=stages("Product Added"), headers=ADMIN))
        assert (await client.post("/api/funnels", json={"key": "after", **stages("Product Added")},
                                  headers=ADMIN)).status_code == 201
        assert await at_each_stage(client, "edited") == await at_each_stage(client, "after") == {
            "first": 0, "bought": CUSTOMERS}

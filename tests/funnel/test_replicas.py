"""Two funnel replicas on one PostgreSQL store, as in scale mode: the links of stitched customers
arrive in one replica's partitions, their late anonymous events in the other's. The batches take
turns on the customers they share (shared/customer_locks.py), so every customer ends at the stage
and with the matched events one replica gives, in the default funnel and in one of our own. (Unlocked, the late order could be matched under
the visitor just after the link moved the visitor's matches: the customer never got it.)"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import insert, select

from services.funnel.app import MIGRATIONS
from services.funnel.handlers import make_handlers
from services.funnel.logic import parse_funnel
from services.funnel.store import attempts, bus_tables, customer_locks, funnels, matches
from services.funnel.tracking import lock_funnels
from shared.bus.base import Record, dlq_topic
from shared.bus.embedded import EmbeddedBus
from shared.consumer import ConsumerLoop, Transaction
from shared.events import INTERACTIONS, CustomerLinked, Event, Interaction, encode
from shared.outbox import OutboxRelay
from shared.store import Store
from tests.conftest import create_pg_database, drop_pg_database

START = datetime.now(UTC) - timedelta(days=2)
CUSTOMERS = 20
ROUNDS = 3


def batch(events: list[Event]) -> list[Record]:
    return [Record(r.topic, 0, offset, r.key, r.value, r.headers, 0) for offset, r in enumerate(map(encode, events))]


def track(customer: str, event_id: str, name: str, minutes: int, anonymous: bool) -> Interaction:
    ids = {"anonymous_id": customer} if anonymous else {"user_id": customer}
    return Interaction(event_id=event_id, customer_id=customer, type="track", name=name,
                       occurred_at=START + timedelta(minutes=minutes), received_at=START, **ids)


def rounds() -> list[tuple[list[Event], list[Event], list[Event]]]:
    """Per round: the visitors look and sign up; then, at once, the links with the users' adds and orders
    (one replica) and the visitors' late second orders (the other replica, in the other order).
    Each customer goes through the whole lifecycle, to loyalty with the visitor's order."""
    found = []
    for r in range(ROUNDS):
        visitors, users = [f"visitor-{r}-{i}" for i in range(CUSTOMERS)], [f"user-{r}-{i}" for i in range(CUSTOMERS)]
        signups: list[Event] = [track(v, f"{v}-{name}", name, n, True) for v in visitors
                                for n, name in ((0, "Product Viewed"), (1, "Signed Up"))]
        linked: list[Event] = [CustomerLinked(customer_id=u, merged_id=v, at=START) for u, v in zip(users, visitors, strict=True)]
        linked += [track(u, f"{u}-{name}", name, n, False) for u in users for n, name in ((5, "Product Added"),
                                                                                          (10, "Order Completed"))]
        late: list[Event] = [track(v, f"{v}-order", "Order Completed", 20, True) for v in reversed(visitors)]
        found.append((signups, linked, late))
    return found


def loop(bus: EmbeddedBus, store: Store) -> ConsumerLoop:
    async def prepare(tx: Transaction) -> None:
        await lock_funnels(tx.session)

    return ConsumerLoop("funnel", bus, store, bus_tables, make_handlers(0), OutboxRelay(store, bus_tables, bus),
                        max_attempts=1, prepare=prepare, customer_locks=customer_locks)


async def funnel_state(store: Store) -> dict[str, Any]:
    """Each customer's counted attempt (stage, events) per funnel, and who each match belongs to."""
    async with store.read() as session:
        counted = {(f, c): (d, e) for f, c, d, e in await session.execute(
            select(attempts.c.funnel, attempts.c.customer_id, attempts.c.depth, attempts.c.event_ids)
            .where(attempts.c.depth > 0))}
        owners = {(f, e): c for f, e, c in await session.execute(
            select(matches.c.funnel, matches.c.event_id, matches.c.customer_id))}
    return {"attempts": counted, "matches": owners}


# A funnel of our own beside the default lifecycle: a link ends the visitor's attempts in both.
VIEW_TO_BUY = parse_funnel({"key": "a-view-to-buy", "name": "View to buy", "conversion_window_days": 30, "stages": [
    {"key": "viewed", "name": "Viewed", "match": {"type": "track", "event": "Product Viewed"}},
    {"key": "bought", "name": "Bought", "match": {"type": "track", "event": "Order Completed"}}]})


async def with_view_to_buy(store: Store) -> Store:
    async with store.transaction() as session:
        definition = orjson.dumps(VIEW_TO_BUY.to_json()).decode()
        await session.execute(insert(funnels).values(key=VIEW_TO_BUY.key, definition=definition, created_at=START,
                                                     updated_at=START))
    return store


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    if store_url.startswith("sqlite"):
        pytest.skip("SQLite runs one writer at a time: replicas cannot interleave")
    store = Store(store_url)
    await store.migrate(MIGRATIONS)
    yield await with_view_to_buy(store)
    await store.dispose()


@pytest.fixture
async def reference() -> AsyncIterator[Store]:
    """A second PostgreSQL database, for one replica alone."""
    url = await create_pg_database()
    store = Store(url)
    await store.migrate(MIGRATIONS)
    yield await with_view_to_buy(store)
    await store.dispose()
    await drop_pg_database(url)


async def test_replicas_sharing_stitched_customers_count_what_one_replica_counts(
    store: Store, reference: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bus = EmbeddedBus(tmp_path / "bus.db")
    await bus.start()
    caplog.set_level(logging.INFO, "funnelstream.consumer")
    one, two, alone = loop(bus, store), loop(bus, store), loop(bus, reference)
    try:
        for signups, linked, late in rounds():
            await one.process(batch(signups))
            await asyncio.wait_for(asyncio.gather(one.process(batch(linked)), two.process(batch(late))), 120)
            for events in (signups, linked, late):
                await alone.process(batch(events))
        replicas, expected = await funnel_state(store), await funnel_state(reference)
        dead = await bus.lag("a-reader", [dlq_topic(INTERACTIONS)])
    finally:
        await bus.stop()
    assert {(f, c.split("-")[0], depth) for (f, c), (depth, _) in expected["attempts"].items()} == {
        ("lifecycle", "user", 5), (VIEW_TO_BUY.key, "user", 2)}
    assert len(expected["attempts"]) == 2 * ROUNDS * CUSTOMERS
    assert replicas == expected
    assert sum(dead.values()) == 0
    assert "message by message" not in caplog.text
    assert "hit a conflict" not in caplog.text  # no deadlock

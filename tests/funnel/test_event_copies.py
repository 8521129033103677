"""The funnel service's copy of each event keeps properties, traits and context once each; a
funnel created later is built from the copies, those written before the copy was slimmed down
(the properties also at the top) as well. SQLite and PostgreSQL."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import insert, select

from services.funnel.handlers import make_handlers
from services.funnel.logic import parse_funnel
from services.funnel.store import attempts, events
from services.funnel.tracking import add_definition, lock_funnels, rebuild
from shared.consumer import Transaction
from shared.events import Interaction
from shared.outbox import Outbox
from shared.store import Store

T0 = datetime(2024, 3, 1, tzinfo=UTC)
NOW = T0 + timedelta(days=30)
# Each stage reads another part of the event: a property, a trait, the context.
PARTS = parse_funnel({"key": "parts", "conversion_window_days": 30, "stages": [
    {"key": "big", "match": {"type": "track", "event": "Order Completed", "where": {"field": "revenue", "op": "gt", "value": 100}}},
    {"key": "vip", "match": {"type": "identify", "where": {"field": "traits.tier", "op": "eq", "value": "vip"}}},
    {"key": "mobile", "match": {"type": "page", "where": {"field": "context.device", "op": "eq", "value": "mobile"}}}]})


def interaction(event_id: str, customer: str, day: int, type_: str, name: str | None = None,
                properties: dict[str, Any] | None = None, traits: dict[str, Any] | None = None,
                context: dict[str, Any] | None = None) -> Interaction:
    return Interaction.model_validate({
        "event_id": event_id, "customer_id": customer, "type": type_, "name": name, "properties": properties or {},
        "traits": traits or {}, "context": context or {}, "occurred_at": T0 + timedelta(days=day), "received_at": NOW})


EVENTS = [
    interaction("o1", "ann", 1, "track", "Order Completed", properties={"revenue": 250, "traits": "not these"}),
    interaction("i1", "ann", 2, "identify", traits={"tier": "vip"}, properties={"context": {"device": "desktop"}}),
    interaction("p1", "ann", 3, "page", "Home", context={"device": "mobile"}),
    interaction("o2", "bob", 1, "track", "Order Completed", properties={"revenue": 50}),
    interaction("o3", "cat", 1, "track", "Order Completed", properties={"revenue": 500}),
    interaction("i3", "cat", 2, "identify", properties={"traits": {"tier": "vip"}}),  # a property named traits: no trait
]
EXPECTED = {"ann": 3, "cat": 1}  # bob's order is too small


async def built(store: Store) -> dict[str, int]:
    async with store.transaction() as session:
        await lock_funnels(session, changing_definitions=True)
        await add_definition(session, PARTS, NOW)
        await rebuild(session, PARTS, NOW, Outbox())
    async with store.read() as session:
        rows = await session.execute(select(attempts.c.customer_id, attempts.c.depth).where(attempts.c.funnel == "parts"))
        return dict(rows.tuples().all())


async def test_a_later_funnel_is_built_from_the_copies(store: Store) -> None:
    handlers = make_handlers(0)
    async with store.transaction() as session:
        tx = Transaction(session, NOW)
        await lock_funnels(session)
        for event in EVENTS:
            for handler in handlers[Interaction]:
                await handler(event, tx)
        await tx.run_deferred()
    async with store.read() as session:
        stored = {r.event_id: orjson.loads(r.document) for r in await session.execute(select(events.c.event_id, events.c.document))}
    assert stored["o1"] == {"properties": {"revenue": 250, "traits": "not these"}, "traits": {}, "context": {}}
    assert await built(store) == EXPECTED


async def test_copies_written_before_the_slim_document_are_read_too(store: Store) -> None:
    async with store.transaction() as session:
        await session.execute(insert(events), [
            {"event_id": e.event_id, "customer_id": e.customer_id, "type": e.type, "name": e.name, "channel": e.channel,
             "at": e.occurred_at, "document": orjson.dumps({**e.properties, "properties": e.properties, "traits": e.traits,
                                                            "context": e.context})} for e in EVENTS])
    assert await built(store) == EXPECTED

"""A small consumer the store tests drive: it counts each customer's interactions.

A customer's first interaction is announced as `SegmentChanged(segment="active")` through the
outbox, so the tests can see state and outgoing events commit (or vanish) together. The handler
can be told to fail for chosen customers, every time, before or after it has published.
"""

from __future__ import annotations

import collections
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import Column, Integer, String, Table, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from shared.bus.base import Record
from shared.bus.embedded import EmbeddedBus
from shared.consumer import ConsumerLoop, Handlers, Transaction
from shared.events import Event, Interaction, SegmentChanged
from shared.outbox import Outbox, write_outbox
from shared.store import Store, add_bus_tables, make_metadata

metadata = make_metadata()
bus_tables = add_bus_tables(metadata)
interaction_counts = Table(
    "interaction_counts",
    metadata,
    Column("customer_id", String(200), primary_key=True),
    Column("interactions", Integer, nullable=False),
)

LoopFactory = Callable[..., ConsumerLoop]

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def interaction(customer_id: str, n: int = 1) -> Interaction:
    return Interaction(
        customer_id=customer_id,
        event_id=f"{customer_id}-{n}",
        type="track",
        name="Viewed Product",
        occurred_at=T0,
        received_at=T0,
    )


class HandlerFailed(RuntimeError):
    pass


@dataclass
class InteractionCounter:
    """The handler under test; `calls` counts how often it saw each customer."""

    poison: set[str] = field(default_factory=set)
    fail_after_publish: set[str] = field(default_factory=set)
    calls: collections.Counter[str] = field(default_factory=collections.Counter)

    def handlers(self) -> Handlers:
        return {Interaction: [self]}

    async def __call__(self, event: Event, tx: Transaction) -> None:
        self.calls[event.customer_id] += 1
        if event.customer_id in self.poison:
            raise HandlerFailed(f"cannot count {event.customer_id}")
        await self._count(event, tx)
        if event.customer_id in self.fail_after_publish:
            raise HandlerFailed(f"failed after publishing for {event.customer_id}")

    async def _count(self, event: Event, tx: Transaction) -> None:
        column = interaction_counts.c
        seen = await tx.session.scalar(
            select(column.interactions).where(column.customer_id == event.customer_id)
        )
        if seen is None:
            await tx.session.execute(
                insert(interaction_counts).values(customer_id=event.customer_id, interactions=1)
            )
            tx.publish(entered_active(event.customer_id))
            return
        await tx.session.execute(
            update(interaction_counts)
            .where(column.customer_id == event.customer_id)
            .values(interactions=seen + 1)
        )


def entered_active(customer_id: str) -> SegmentChanged:
    return SegmentChanged(customer_id=customer_id, segment="active", change="entered", at=T0)


async def write_announcement(session: AsyncSession, customer_id: str) -> None:
    """An outbox row, written the way the consumer loop writes them."""
    outbox = Outbox()
    outbox.publish(entered_active(customer_id))
    await write_outbox(session, bus_tables, outbox)


# -- reading what happened ------------------------------------------------------------------------
async def counts(store: Store) -> dict[str, int]:
    async with store.read() as session:
        rows = await session.execute(select(interaction_counts))
        return {row.customer_id: row.interactions for row in rows}


async def outbox_rows(store: Store) -> list[dict[str, object]]:
    async with store.read() as session:
        rows = await session.execute(select(bus_tables.outbox).order_by(bus_tables.outbox.c.id))
        return [dict(row._mapping) for row in rows]


async def outbox_size(store: Store) -> int:
    async with store.read() as session:
        return await session.scalar(select(func.count()).select_from(bus_tables.outbox)) or 0


async def processed_ids(store: Store) -> list[str]:
    async with store.read() as session:
        return list(await session.scalars(select(bus_tables.processed.c.message_id)))


async def poll_all(
    bus: EmbeddedBus, topic: str, expected: int, timeout: float = 10.0
) -> list[Record]:
    """The first `expected` records of `topic`, read by a fresh consumer group."""
    consumer = bus.consumer(f"reader-{uuid.uuid4().hex[:8]}", [topic])
    await consumer.start()
    try:
        got: list[Record] = []
        deadline = time.monotonic() + timeout
        while len(got) < expected and time.monotonic() < deadline:
            got += await consumer.poll(max_records=500, timeout=0.2)
        assert len(got) >= expected, f"{topic}: {len(got)} of {expected} records in {timeout} s"
        return got
    finally:
        await consumer.stop()


async def topic_contents(bus: EmbeddedBus, topic: str) -> list[Record]:
    """Everything on `topic` now (publishes are durable before `publish` returns)."""
    ends = await bus.lag(f"reader-{uuid.uuid4().hex[:8]}", [topic])
    return await poll_all(bus, topic, sum(ends.values()))

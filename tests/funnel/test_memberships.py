"""Segment memberships for breakdowns, kept from segments.v1 a batch at a time: per (customer,
segment) the latest change by time wins, whatever the order changes come in, over batches and
within one, under the id the customer is merged into. SQLite and PostgreSQL."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from services.funnel.handlers import make_handlers
from services.funnel.store import segment_members
from shared.consumer import Transaction
from shared.events import CustomerLinked, Event, SegmentChanged
from shared.store import Store

T0 = datetime(2024, 3, 1, tzinfo=UTC)


def change(customer: str, segment: str, entered: bool, hour: int) -> SegmentChanged:
    return SegmentChanged(customer_id=customer, segment=segment, change="entered" if entered else "exited",
                          at=T0 + timedelta(hours=hour))


async def consume(store: Store, batch: list[Event]) -> None:
    handlers = make_handlers(0)
    async with store.transaction() as session:
        tx = Transaction(session, T0 + timedelta(days=1))
        for event in batch:
            for handler in handlers[type(event)]:
                await handler(event, tx)
        await tx.run_deferred()


async def memberships(store: Store) -> dict[tuple[str, str], tuple[bool, datetime]]:
    async with store.read() as session:
        rows = await session.execute(select(segment_members))
        return {(r.customer_id, r.segment): (bool(r.member), r.at) for r in rows}


async def test_the_latest_change_wins(store: Store) -> None:
    await consume(store, [change("ann", "vip", True, 1), change("bob", "vip", True, 1), change("ann", "new", True, 0)])
    await consume(store, [change("ann", "vip", False, 3), change("bob", "vip", False, 0),  # bob's is late: kept out
                          change("ann", "vip", True, 2), change("cat", "vip", True, 5), change("ann", "new", False, 4),
                          change("ann", "new", True, 6)])
    assert await memberships(store) == {
        ("ann", "vip"): (False, T0 + timedelta(hours=3)), ("ann", "new"): (True, T0 + timedelta(hours=6)),
        ("bob", "vip"): (True, T0 + timedelta(hours=1)), ("cat", "vip"): (True, T0 + timedelta(hours=5))}


async def test_a_merged_id_s_changes_are_the_customer_s(store: Store) -> None:
    await consume(store, [CustomerLinked(customer_id="ann", merged_id="anon", at=T0), change("ann", "vip", True, 1)])
    await consume(store, [change("anon", "vip", False, 2)])
    assert await memberships(store) == {("ann", "vip"): (False, T0 + timedelta(hours=2))}

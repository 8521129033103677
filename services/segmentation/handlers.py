"""What segmentation does with each consumed event: keep profiles, then re-evaluate the customer.

Interactions are recorded, and customers evaluated, once per consumed batch (see
`Transaction.defer`): recording is order-safe (`recording`), so applying a batch's interactions
after its links and erasures gives the state the events would give one by one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import orjson
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.segmentation.custom import evaluate_custom
from services.segmentation.evaluation import Wanted, apply, evaluate_customers
from services.segmentation.logic import Thresholds
from services.segmentation.recording import record_interactions, refresh_orders
from services.segmentation.store import (
    customer_events,
    erasures,
    funnel_stages,
    history,
    links,
    memberships,
    orders,
    profiles,
)
from shared.consumer import Handlers, Transaction
from shared.events import CustomerErased, CustomerLinked, Event, FunnelStageChanged, Interaction
from shared.identity import canonical_ids, erase, later_move, merge_traits
from shared.store import insert_ignoring_conflicts


async def canonical(session: AsyncSession, customer_id: str) -> str:
    return (await canonical_ids(session, links, [customer_id])).get(customer_id, customer_id)


@dataclass
class Batch:
    """What the handlers leave for the end of the batch: interactions to record, customers to
    evaluate (each once, however many of their events the batch holds)."""

    interactions: list[Interaction] = field(default_factory=list)
    dirty: set[str] = field(default_factory=set)


def make_handlers(thresholds: Thresholds, retention_days: float) -> Handlers:
    def batch(tx: Transaction) -> Batch:
        found: Batch = tx.state.setdefault("segmentation", Batch())
        return found

    def evaluate(customer: str, tx: Transaction) -> None:
        batch(tx).dirty.add(customer)

        async def evaluate_dirty() -> None:
            customers = sorted(batch(tx).dirty)
            batch(tx).dirty.clear()
            await evaluate_customers(tx.session, customers, tx.now, thresholds, tx.outbox)
            await evaluate_custom(tx.session, customers, tx.now, tx.outbox)

        tx.defer("segmentation.evaluate", evaluate_dirty)

    async def on_interaction(event: Event, tx: Transaction) -> None:
        assert isinstance(event, Interaction)
        batch(tx).interactions.append(event)

        async def record() -> None:
            events, batch(tx).interactions = batch(tx).interactions, []
            for customer in await record_interactions(tx.session, events, tx.now, retention_days):
                evaluate(customer, tx)

        tx.defer("segmentation.record", record)

    async def on_linked(event: Event, tx: Transaction) -> None:
        assert isinstance(event, CustomerLinked)
        await _merge(tx, event.merged_id, event.customer_id, tx.now)
        evaluate(event.customer_id, tx)

    async def on_funnel_stage(event: Event, tx: Transaction) -> None:
        """The customer's latest stage per funnel (latest recorded move, so late ones do not win)."""
        assert isinstance(event, FunnelStageChanged)
        if await _erased_before(tx.session, event.at, event.customer_id):
            return
        customer = await canonical(tx.session, event.customer_id)
        key = (funnel_stages.c.customer_id == customer, funnel_stages.c.funnel == event.funnel)
        held = (await tx.session.execute(select(funnel_stages.c.at, funnel_stages.c.seq).where(*key))).first()
        if held is None:
            await tx.session.execute(insert(funnel_stages).values(
                customer_id=customer, funnel=event.funnel, stage=event.to_stage, at=event.at, seq=event.order))
        elif later_move(event.order, event.at, held.seq, held.at):
            await tx.session.execute(update(funnel_stages).where(*key).values(stage=event.to_stage, at=event.at,
                                                                                 seq=event.order))
        else:
            return
        evaluate(customer, tx)

    async def on_erased(event: Event, tx: Transaction) -> None:
        assert isinstance(event, CustomerErased)
        await erase(tx.session, links, erasures, event,
                    (profiles, orders, memberships, history, customer_events, funnel_stages))

    return {Interaction: [on_interaction], CustomerLinked: [on_linked], CustomerErased: [on_erased],
            FunnelStageChanged: [on_funnel_stage]}


async def _erased_before(session: AsyncSession, at: datetime, *ids: str | None) -> bool:
    erased_at = await session.scalar(select(func.max(erasures.c.at)).where(erasures.c.customer_id.in_({i for i in ids if i})))
    return erased_at is not None and at <= erased_at


async def _merge(tx: Transaction, merged_id: str, customer: str, now: datetime) -> None:
    """`merged_id`'s profile, orders and links move to `customer`; its memberships end."""
    session = tx.session
    await session.execute(update(links).where(links.c.customer_id == merged_id).values(customer_id=customer))
    await session.execute(insert_ignoring_conflicts(links, _dialect(session)).values(alias_id=merged_id, customer_id=customer))
    old = (await session.execute(select(profiles).where(profiles.c.customer_id == merged_id))).first()
    if old is None:
        return
    await session.execute(update(orders).where(orders.c.customer_id == merged_id).values(customer_id=customer))
    await session.execute(update(customer_events).where(customer_events.c.customer_id == merged_id).values(customer_id=customer))
    await _merge_funnel_stages(session, merged_id, customer)
    await apply(session, [Wanted(merged_id, {})], None, now, tx.outbox)
    await session.execute(delete(profiles).where(profiles.c.customer_id == merged_id))
    into = (await session.execute(select(profiles).where(profiles.c.customer_id == customer))).first()
    if into is None:
        await session.execute(insert(profiles).values({**old._mapping, "customer_id": customer}))
    else:
        traits, traits_at = merge_traits(
            (orjson.loads(into.traits), orjson.loads(into.traits_at)), (orjson.loads(old.traits), orjson.loads(old.traits_at)))
        older_touch = old.channel_at is not None and (into.channel_at is None or old.channel_at < into.channel_at)
        await session.execute(update(profiles).where(profiles.c.customer_id == customer).values(
            traits=orjson.dumps(traits), traits_at=orjson.dumps(traits_at),
            first_seen=min(into.first_seen, old.first_seen), last_seen=max(into.last_seen, old.last_seen),
            event_count=into.event_count + old.event_count,
            channel=old.channel if older_touch else into.channel,
            channel_at=old.channel_at if older_touch else into.channel_at))
    await refresh_orders(session, [customer])


async def _merge_funnel_stages(session: AsyncSession, merged_id: str, customer: str) -> None:
    """Per funnel, the later of the two stages stays on `customer`."""
    theirs = (await session.execute(select(funnel_stages).where(funnel_stages.c.customer_id == merged_id))).all()
    await session.execute(delete(funnel_stages).where(funnel_stages.c.customer_id == merged_id))
    for row in theirs:
        key = (funnel_stages.c.customer_id == customer, funnel_stages.c.funnel == row.funnel)
        held = await session.scalar(select(funnel_stages.c.at).where(*key))
        if held is None:
            await session.execute(insert(funnel_stages).values({**row._mapping, "customer_id": customer}))
        elif row.at > held:
            await session.execute(update(funnel_stages).where(*key).values(stage=row.stage, at=row.at))


def _dialect(session: AsyncSession) -> str:
    return session.bind.dialect.name

"""What segmentation does with each consumed event: keep profiles, then re-evaluate the customer.

Order-safe: first/last seen are min/max, a trait keeps the value of its latest identify, the
first-touch channel is the channel of the earliest event, and order figures are recomputed from
the orders table, so late and repeated events give the same profile as events in order.
"""
from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.segmentation.custom import evaluate_custom
from services.segmentation.evaluation import Wanted, apply, evaluate_customer
from services.segmentation.logic import Thresholds
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
from shared.store import insert_ignoring_conflicts

ORDER_EVENT = "Order Completed"
# What behaviour conditions call page and screen views (Segment's names for them in destinations).
VIEW_EVENTS = {"page": "Page Viewed", "screen": "Screen Viewed"}


def order_amount(properties: dict[str, Any]) -> float:
    """`revenue`, else `total`, else `value` (Segment e-commerce spec); numbers or numeric text.
    NaN and infinities are not amounts (they would poison revenue and every tier)."""
    for key in ("revenue", "total", "value"):
        value = properties.get(key)
        if isinstance(value, bool) or value is None:
            continue
        try:
            amount = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(amount):
            return amount
    return 0.0


async def canonical(session: AsyncSession, customer_id: str) -> str:
    linked = await session.scalar(select(links.c.customer_id).where(links.c.alias_id == customer_id))
    return linked or customer_id


def make_handlers(thresholds: Thresholds, retention_days: float) -> Handlers:
    async def evaluate(customer: str, tx: Transaction) -> None:
        await evaluate_customer(tx.session, customer, tx.now, thresholds, tx.outbox)
        await evaluate_custom(tx.session, [customer], tx.now, tx.outbox)

    async def on_interaction(event: Event, tx: Transaction) -> None:
        assert isinstance(event, Interaction)
        if await _erased_before(tx.session, event.occurred_at, event.customer_id, event.user_id, event.anonymous_id):
            return  # about a customer erased after it happened (a late or replayed event)
        customer = await canonical(tx.session, event.customer_id)
        await _record_event(tx.session, customer, event)
        if event.type == "track" and event.name == ORDER_EVENT:
            amount = order_amount(event.properties)
            await tx.session.execute(insert_ignoring_conflicts(orders, _dialect(tx.session)).values(
                event_id=event.event_id, customer_id=customer, at=event.occurred_at, amount=amount))
            await _refresh_orders(tx.session, customer)
        name = event.name if event.type == "track" else VIEW_EVENTS.get(event.type)
        if name and event.occurred_at > tx.now - timedelta(days=retention_days):
            properties = {**event.properties, "name": event.name} if event.type in VIEW_EVENTS and event.name else event.properties
            await tx.session.execute(insert_ignoring_conflicts(customer_events, _dialect(tx.session)).values(
                event_id=event.event_id, customer_id=customer, name=name, at=event.occurred_at,
                properties=orjson.dumps(properties)))
        await evaluate(customer, tx)

    async def on_linked(event: Event, tx: Transaction) -> None:
        assert isinstance(event, CustomerLinked)
        await _merge(tx, event.merged_id, event.customer_id, tx.now)
        await evaluate(event.customer_id, tx)

    async def on_funnel_stage(event: Event, tx: Transaction) -> None:
        """The customer's latest stage per funnel (by `at`, so late moves do not win)."""
        assert isinstance(event, FunnelStageChanged)
        if await _erased_before(tx.session, event.at, event.customer_id):
            return
        customer = await canonical(tx.session, event.customer_id)
        key = (funnel_stages.c.customer_id == customer, funnel_stages.c.funnel == event.funnel)
        held = await tx.session.scalar(select(funnel_stages.c.at).where(*key))
        if held is None:
            await tx.session.execute(insert(funnel_stages).values(
                customer_id=customer, funnel=event.funnel, stage=event.to_stage, at=event.at))
        elif event.at >= held:
            await tx.session.execute(update(funnel_stages).where(*key).values(stage=event.to_stage, at=event.at))
        else:
            return
        await evaluate(customer, tx)

    async def on_erased(event: Event, tx: Transaction) -> None:
        assert isinstance(event, CustomerErased)
        everyone = [event.customer_id, *event.merged_ids]
        everyone += list((await tx.session.execute(
            select(links.c.alias_id).where(links.c.customer_id.in_(everyone)))).scalars())
        for table in (profiles, orders, memberships, history, links, customer_events, funnel_stages):
            column = table.c.customer_id
            await tx.session.execute(delete(table).where(column.in_(everyone)))
        await tx.session.execute(delete(links).where(links.c.alias_id.in_(everyone)))
        # Remember the erasure, so events from before it that arrive later do not bring them back.
        await tx.session.execute(delete(erasures).where(erasures.c.customer_id.in_(everyone)))
        await tx.session.execute(insert(erasures), [{"customer_id": c, "at": event.at} for c in set(everyone)])

    return {Interaction: [on_interaction], CustomerLinked: [on_linked], CustomerErased: [on_erased],
            FunnelStageChanged: [on_funnel_stage]}


async def _erased_before(session: AsyncSession, at: datetime, *ids: str | None) -> bool:
    erased_at = await session.scalar(select(func.max(erasures.c.at)).where(erasures.c.customer_id.in_({i for i in ids if i})))
    return erased_at is not None and at <= erased_at


async def _record_event(session: AsyncSession, customer: str, event: Interaction) -> None:
    row = (await session.execute(select(profiles).where(profiles.c.customer_id == customer))).first()
    at = event.occurred_at
    if row is None:
        traits_at = {name: at.isoformat() for name in event.traits}
        await session.execute(insert(profiles).values(
            customer_id=customer, traits=orjson.dumps(event.traits), traits_at=orjson.dumps(traits_at),
            first_seen=at, last_seen=at, event_count=1, order_count=0, revenue=0.0,
            channel=event.channel, channel_at=at))
        return
    traits, traits_at = _merge_traits(
        (orjson.loads(row.traits), orjson.loads(row.traits_at)), (event.traits, {k: at.isoformat() for k in event.traits}))
    first_touch = at < row.channel_at if row.channel_at else True
    await session.execute(update(profiles).where(profiles.c.customer_id == customer).values(
        traits=orjson.dumps(traits), traits_at=orjson.dumps(traits_at),
        first_seen=min(row.first_seen, at), last_seen=max(row.last_seen, at),
        event_count=row.event_count + 1,
        channel=event.channel if first_touch else row.channel,
        channel_at=at if first_touch else row.channel_at))


def _merge_traits(
    mine: tuple[dict[str, Any], dict[str, str]], theirs: tuple[dict[str, Any], dict[str, str]]
) -> tuple[dict[str, Any], dict[str, str]]:
    """Per trait, the value set latest wins (ISO-8601 UTC strings compare in time order)."""
    traits, traits_at = dict(mine[0]), dict(mine[1])
    for name, value in theirs[0].items():
        if name not in traits_at or theirs[1][name] >= traits_at[name]:
            traits[name], traits_at[name] = value, theirs[1][name]
    return traits, traits_at


async def _refresh_orders(session: AsyncSession, customer: str) -> None:
    count, revenue, last = (await session.execute(
        select(func.count(), func.coalesce(func.sum(orders.c.amount), 0.0), func.max(orders.c.at))
        .where(orders.c.customer_id == customer))).one()
    await session.execute(update(profiles).where(profiles.c.customer_id == customer).values(
        order_count=count, revenue=float(revenue), last_order_at=last))


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
        traits, traits_at = _merge_traits(
            (orjson.loads(into.traits), orjson.loads(into.traits_at)), (orjson.loads(old.traits), orjson.loads(old.traits_at)))
        older_touch = old.channel_at is not None and (into.channel_at is None or old.channel_at < into.channel_at)
        await session.execute(update(profiles).where(profiles.c.customer_id == customer).values(
            traits=orjson.dumps(traits), traits_at=orjson.dumps(traits_at),
            first_seen=min(into.first_seen, old.first_seen), last_seen=max(into.last_seen, old.last_seen),
            event_count=into.event_count + old.event_count,
            channel=old.channel if older_touch else into.channel,
            channel_at=old.channel_at if older_touch else into.channel_at))
    await _refresh_orders(session, customer)


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

"""Recording a batch of interactions into profiles, orders and the behaviour store, in a few bulk
statements per batch (not per event).

Order-safe: first/last seen are min/max, a trait keeps the value of its latest identify, the
first-touch channel is the channel of the earliest event, and order figures are recomputed from
the orders table, so late and repeated events give the same profile as events in order.
"""
from __future__ import annotations

import math
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.segmentation.store import customer_events, erasures, links, orders, profiles
from shared.events import Interaction
from shared.identity import canonical_ids, chunks, merge_traits, not_erased
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


async def record_interactions(session: AsyncSession, events: list[Interaction], now: datetime,
                              retention_days: float) -> set[str]:
    """Apply the events; returns the (canonical) customers whose profile changed."""
    events = await not_erased(session, erasures, events)
    canonical = await canonical_ids(session, links, {e.customer_id for e in events})
    by_customer: dict[str, list[Interaction]] = defaultdict(list)
    for event in events:
        by_customer[canonical.get(event.customer_id, event.customer_id)].append(event)
    await _fold_profiles(session, by_customer)
    dialect = session.bind.dialect.name if session.bind else "sqlite"
    placed = [(customer, e) for customer, evs in by_customer.items() for e in evs]
    order_rows = [{"event_id": e.event_id, "customer_id": c, "at": e.occurred_at, "amount": order_amount(e.properties)}
                  for c, e in placed if e.type == "track" and e.name == ORDER_EVENT]
    if order_rows:
        await session.execute(insert_ignoring_conflicts(orders, dialect), order_rows)
        await refresh_orders(session, sorted({r["customer_id"] for r in order_rows}))
    oldest = now - timedelta(days=retention_days)
    behaviour_rows = [{"event_id": e.event_id, "customer_id": c, "name": name, "at": e.occurred_at,
                       "properties": orjson.dumps({**e.properties, "name": e.name} if e.type in VIEW_EVENTS and e.name
                                                  else e.properties)}
                      for c, e in placed
                      if (name := e.name if e.type == "track" else VIEW_EVENTS.get(e.type)) and e.occurred_at > oldest]
    if behaviour_rows:
        await session.execute(insert_ignoring_conflicts(customer_events, dialect), behaviour_rows)
    return set(by_customer)


async def _fold_profiles(session: AsyncSession, by_customer: dict[str, list[Interaction]]) -> None:
    held: dict[str, Any] = {}
    for chunk in chunks(list(by_customer)):
        held |= {r.customer_id: r for r in await session.execute(select(
            profiles.c.customer_id, profiles.c.traits, profiles.c.traits_at, profiles.c.first_seen, profiles.c.last_seen,
            profiles.c.event_count, profiles.c.channel, profiles.c.channel_at).where(profiles.c.customer_id.in_(chunk)))}
    new, changed = [], []
    for customer, events in by_customer.items():
        row = held.get(customer)
        p = ({"traits": orjson.loads(row.traits), "traits_at": orjson.loads(row.traits_at), "first_seen": row.first_seen,
              "last_seen": row.last_seen, "event_count": row.event_count, "channel": row.channel,
              "channel_at": row.channel_at} if row else None)
        for e in events:
            p = _fold(p, e)
        assert p is not None
        values = {**p, "traits": orjson.dumps(p["traits"]), "traits_at": orjson.dumps(p["traits_at"])}
        if row is None:
            new.append({"customer_id": customer, **values, "order_count": 0, "revenue": 0.0})
        else:
            changed.append({"b_customer_id": customer, **{f"b_{k}": v for k, v in values.items()}})
    if new:
        await session.execute(insert(profiles), new)
    if changed:
        columns = ("traits", "traits_at", "first_seen", "last_seen", "event_count", "channel", "channel_at")
        await session.execute(update(profiles).where(profiles.c.customer_id == bindparam("b_customer_id"))
                              .values({c: bindparam(f"b_{c}") for c in columns}), changed)


def _fold(p: dict[str, Any] | None, e: Interaction) -> dict[str, Any]:
    """The profile after one more event, whatever the order the events come in."""
    at = e.occurred_at
    traits_at = {name: at.isoformat() for name in e.traits}
    if p is None:
        return {"traits": dict(e.traits), "traits_at": traits_at, "first_seen": at, "last_seen": at, "event_count": 1,
                "channel": e.channel, "channel_at": at}
    traits, merged_at = merge_traits((p["traits"], p["traits_at"]), (e.traits, traits_at))
    first_touch = p["channel_at"] is None or at < p["channel_at"]
    return {"traits": traits, "traits_at": merged_at, "first_seen": min(p["first_seen"], at),
            "last_seen": max(p["last_seen"], at), "event_count": p["event_count"] + 1,
            "channel": e.channel if first_touch else p["channel"], "channel_at": at if first_touch else p["channel_at"]}


async def refresh_orders(session: AsyncSession, customers: list[str]) -> None:
    """Order count, revenue and last order of these customers, from their orders."""
    for chunk in chunks(customers):
        totals = (await session.execute(
            select(orders.c.customer_id, func.count(), func.coalesce(func.sum(orders.c.amount), 0.0), func.max(orders.c.at))
            .where(orders.c.customer_id.in_(chunk)).group_by(orders.c.customer_id))).tuples().all()
        if totals:
            await session.execute(
                update(profiles).where(profiles.c.customer_id == bindparam("b_customer_id")).values(
                    order_count=bindparam("b_count"), revenue=bindparam("b_revenue"), last_order_at=bindparam("b_last")),
                [{"b_customer_id": c, "b_count": n, "b_revenue": float(r), "b_last": last} for c, n, r, last in totals])

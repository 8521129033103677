"""What every consuming service does alike about who a customer is: ids merged into another
(customers.v1 links), erasure tombstones, and traits where the latest identify wins.

Each service keeps its own `links` (alias_id -> customer_id) and `erasures` (customer_id, at)
tables (`add_identity_tables`); these helpers take them as arguments.
"""
from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import Column, MetaData, String, Table, delete, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.events import CustomerErased, Interaction
from shared.store import UTCDateTime

CHUNK = 5000  # bounded IN lists (SQLite caps bound parameters per statement)


def add_identity_tables(metadata: MetaData) -> tuple[Table, Table]:
    """`links`: ids merged into a customer (from customers.v1), so their late events land on the
    customer. `erasures`: erased ids and when, holding nothing else about the person."""
    links = Table(
        "links",
        metadata,
        Column("alias_id", String(200), primary_key=True),
        Column("customer_id", String(200), nullable=False, index=True),
    )
    erasures = Table(
        "erasures",
        metadata,
        Column("customer_id", String(200), primary_key=True),
        Column("at", UTCDateTime, nullable=False),
    )
    return links, erasures


async def erase(session: AsyncSession, links: Table, erasures: Table, event: CustomerErased,
                tables: Iterable[Table]) -> list[str]:
    """Delete every row of `tables` about the customer, under any of their ids, and remember the
    erasure so events from before it that arrive later do not bring them back. Returns the ids."""
    everyone = [event.customer_id, *event.merged_ids]
    everyone += list((await session.execute(select(links.c.alias_id).where(links.c.customer_id.in_(everyone)))).scalars())
    for table in (*tables, links):
        await session.execute(delete(table).where(table.c.customer_id.in_(everyone)))
    await session.execute(delete(links).where(links.c.alias_id.in_(everyone)))
    await session.execute(delete(erasures).where(erasures.c.customer_id.in_(everyone)))
    await session.execute(insert(erasures), [{"customer_id": c, "at": event.at} for c in sorted(set(everyone))])
    return everyone


def chunks(items: list[str], size: int = CHUNK) -> list[list[str]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


async def canonical_ids(session: AsyncSession, links: Table, ids: Iterable[str]) -> dict[str, str]:
    """id -> the customer it was merged into, for the ids that were."""
    found: dict[str, str] = {}
    for chunk in chunks(sorted(set(ids))):
        rows = await session.execute(select(links.c.alias_id, links.c.customer_id).where(links.c.alias_id.in_(chunk)))
        found |= dict(rows.tuples().all())
    return found


async def not_erased(session: AsyncSession, erasures: Table, events: list[Interaction]) -> list[Interaction]:
    """The events, without those about a customer erased after they happened (late or replayed):
    a tombstone keeps an erased customer from coming back; later events start a new customer."""
    ids = {i for e in events for i in (e.customer_id, e.user_id, e.anonymous_id) if i}
    erased: dict[str, datetime] = {}
    for chunk in chunks(sorted(ids)):
        rows = await session.execute(select(erasures.c.customer_id, erasures.c.at).where(erasures.c.customer_id.in_(chunk)))
        erased |= dict(rows.tuples().all())
    if not erased:
        return events
    return [e for e in events
            if not any(i in erased and e.occurred_at <= erased[i] for i in (e.customer_id, e.user_id, e.anonymous_id) if i)]


def merge_traits(
    mine: tuple[dict[str, Any], dict[str, str]], theirs: tuple[dict[str, Any], dict[str, str]]
) -> tuple[dict[str, Any], dict[str, str]]:
    """(traits, when each was set) merged: per trait, the value set latest wins (ISO-8601 UTC
    strings compare in time order), so identifies may arrive in any order."""
    traits, traits_at = dict(mine[0]), dict(mine[1])
    for name, value in theirs[0].items():
        if name not in traits_at or theirs[1][name] >= traits_at[name]:
            traits[name], traits_at[name] = value, theirs[1][name]
    return traits, traits_at


def later_move(order: str | None, at: datetime, held_seq: str | None, held_at: datetime) -> bool:
    """Is a funnel move (FunnelStageChanged `order`, `at`) at least as recent as the one held?
    By the order the funnel service recorded them when both have one, else by time."""
    if order is not None and held_seq is not None:
        return order >= held_seq
    return at >= held_at

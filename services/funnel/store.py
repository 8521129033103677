"""The funnel store: definitions, the events funnels are built from, each customer's counted
attempt per funnel, and the transitions; below the tables, the queries the routes read and write
with (the rebuild and recount queries sit in tracking.py, the alert check's in alerts.py)."""
from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    Row,
    String,
    Table,
    Text,
    delete,
    func,
    insert,
    select,
)
from sqlalchemy.ext.asyncio import AsyncSession

from shared.customer_locks import add_customer_locks
from shared.identity import add_identity_tables, canonical_ids, chunks
from shared.store import BigId, UTCDateTime, add_bus_tables, make_metadata, rows_of
from shared.webhooks import delivery_columns

Session = AsyncSession  # what the routes hand these queries (api.py imports no sqlalchemy)

metadata = make_metadata()
bus_tables = add_bus_tables(metadata)

funnels = Table(
    "funnels",
    metadata,
    Column("key", String(100), primary_key=True),
    Column("definition", Text, nullable=False),  # JSON, as the API returns it
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

# A slim copy of every interaction of the last FUNNEL_EVENTS_RETENTION_DAYS: what stages match on
# (type, name, properties with traits and context). A new or edited funnel is built from it.
events = Table(
    "events",
    metadata,
    Column("event_id", String(200), primary_key=True),
    Column("customer_id", String(200), nullable=False),
    Column("type", String(20), nullable=False),
    Column("name", String(200)),
    Column("document", LargeBinary, nullable=False),
    Column("channel", String(50), nullable=False),
    # Indexed for the retention cleanup: without, every hour it reads every copy, batches waiting.
    Column("at", UTCDateTime, nullable=False, index=True),
    Index("ix_events_customer_at", "customer_id", "at"),
)

# Per funnel, the events that match at least one stage (bit i: stage i), all a counted attempt needs.
matches = Table(
    "matches",
    metadata,
    Column("funnel", String(100), primary_key=True),
    Column("event_id", String(200), primary_key=True),
    Column("customer_id", String(200), nullable=False),
    Column("at", Float, nullable=False),  # epoch seconds
    Column("stages", Integer, nullable=False),
    Column("channel", String(50), nullable=False),
    # Customer first: a merge or an erasure finds a customer's rows in every funnel by it too. With
    # the time last, a customer's latest match is one lookup (`latest_times`), however many they have.
    Index("ix_matches_customer_funnel_at", "customer_id", "funnel", "at"),
)

# Each customer's counted attempt per funnel: the stage reached and the times and events of each
# stage, kept current with every matched event; reports read only this. `version` says which
# recount wrote the row (see funnel_versions); depth 0 marks a customer removed from the funnel
# (merged away, erased) until the hourly cleanup deletes the row.
attempts = Table(
    "attempts",
    metadata,
    Column("funnel", String(100), primary_key=True),
    Column("customer_id", String(200), primary_key=True),
    Column("depth", Integer, nullable=False),
    Column("times", Text, nullable=False),  # JSON list of epoch seconds, one per stage reached
    Column("event_ids", Text, nullable=False),  # JSON list
    Column("first_at", Float, nullable=False),  # t1: the cohort
    Column("reached_at", Float, nullable=False),  # when the current stage was reached
    Column("channel", String(50), nullable=False),  # of the first step's event
    # JSON {"steps": [[at, event_id, type, name, channel], ...], "revenue": [one per stage reached]}:
    # the customer's page, track and identify events from t1 to the window's end by (at, event id),
    # and the revenue of each stage's event (null without one): what journey analytics read.
    Column("journey", Text, nullable=False, server_default="{}"),
    Column("version", BigInteger, nullable=False),
    Index("ix_attempts_funnel_first_at", "funnel", "first_at"),
    Index("ix_attempts_funnel_depth_reached", "funnel", "depth", "reached_at"),
    Index("ix_attempts_funnel_version", "funnel", "version"),
)

# Per funnel: `version` goes up with every transaction that writes attempts (the row is locked
# until that transaction commits, so versions become visible in order), and `generation` changes
# when rows are deleted: a report index reads only the rows above the version it holds, and
# reloads everything when the generation moved. Every funnel holding attempts has its row: merges
# and erasures find a customer's attempts by (funnel, customer_id) in each of them.
funnel_versions = Table(
    "funnel_versions",
    metadata,
    Column("funnel", String(100), primary_key=True),
    Column("version", BigInteger, nullable=False),
    Column("generation", BigInteger, nullable=False),
)

transitions = Table(
    "transitions",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("funnel", String(100), nullable=False),
    Column("customer_id", String(200), nullable=False, index=True),
    Column("from_stage", String(100)),
    Column("to_stage", String(100)),
    Column("at", UTCDateTime, nullable=False),
    Column("event_id", String(200)),
    Index("ix_transitions_funnel_id", "funnel", "id"),
)

# From customers.v1 and segments.v1: merged ids, erasures, current segment memberships and traits
# (for breakdowns by segment and by trait).
links, erasures = add_identity_tables(metadata)
customer_locks = add_customer_locks(metadata, links)  # taken by each consumed batch
segment_members = Table(
    "segment_members",
    metadata,
    Column("customer_id", String(200), primary_key=True),
    Column("segment", String(200), primary_key=True),
    Column("member", Integer, nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Index("ix_segment_members_segment", "segment", "customer_id"),
)
traits = Table(
    "traits",
    metadata,
    Column("customer_id", String(200), primary_key=True),
    Column("traits", LargeBinary, nullable=False),
    Column("traits_at", LargeBinary, nullable=False),
)

# Alerts (docs/api.md section 9): definitions, one firing per alert and interval (the key makes it
# once), and the webhooks to send (shared/webhooks.py signs and retries them).
alerts = Table(
    "alerts",
    metadata,
    Column("key", String(100), primary_key=True),
    Column("definition", Text, nullable=False),  # JSON, as the API returns it
    Column("created_at", UTCDateTime, nullable=False),
)
alert_firings = Table(
    "alert_firings",
    metadata,
    Column("alert", String(100), primary_key=True),
    Column("period_start", UTCDateTime, primary_key=True),
    Column("body", Text, nullable=False),  # JSON, as GET /api/alerts/{key}/firings returns it
    Column("fired_at", UTCDateTime, nullable=False),
)
alert_deliveries = Table("alert_deliveries", metadata, *delivery_columns(),
                         Column("alert", String(100), nullable=False, index=True))

# Every table that holds rows about a customer: an erasure deletes theirs from each (attempts go
# first, see tracking.erase_customer).
customer_tables = (events, matches, transitions, segment_members, traits)


# --- per customer lookups of the batches -------------------------------------------------------


async def latest_times(session: AsyncSession, at: Column[Any], customers: list[str], *where: Any) -> dict[str, Any]:
    """The latest `at` of each of `customers` among the rows of its table (`where` holding), for
    those who have one. A max per customer, each an index lookup with (customer_id, ..., at)
    indexed (matches, events): a GROUP BY over the customers read all their rows, and a customer
    with thousands of events made every batch with them pay for all."""
    found: dict[str, Any] = {}
    for chunk in chunks(customers):
        customer = rows_of(chunk, session)
        latest = select(func.max(at)).where(at.table.c.customer_id == customer.c.value, *where).scalar_subquery()
        found |= {c: t for c, t in await session.execute(select(customer.c.value, latest)) if t is not None}
    return found


# --- queries of the routes ----------------------------------------------------------------------


async def customers_at_stages(session: AsyncSession, keys: list[str]) -> dict[tuple[str, int], int]:
    """(funnel, depth) -> how many customers are there now, for the funnels of `keys` (one query)."""
    rows = (await session.execute(select(attempts.c.funnel, attempts.c.depth, func.count())
                                  .where(attempts.c.funnel.in_(keys), attempts.c.depth > 0)
                                  .group_by(attempts.c.funnel, attempts.c.depth))).tuples().all()
    return {(funnel, depth): n for funnel, depth, n in rows}


async def segment_memberships(session: AsyncSession, segment: str, customers: list[str]) -> dict[str, bool]:
    """Of `customers`, those with a membership row of `segment`: whether they are in it now."""
    found: dict[str, bool] = {}
    for chunk in chunks(customers):
        query = select(segment_members.c.customer_id, segment_members.c.member).where(
            segment_members.c.segment == segment, segment_members.c.customer_id.in_(chunk))
        found |= {c: bool(member) for c, member in await session.execute(query)}
    return found


async def customer_traits(session: AsyncSession, customers: list[str]) -> dict[str, dict[str, Any]]:
    """Of `customers`, the latest traits of those who have any."""
    found: dict[str, dict[str, Any]] = {}
    for chunk in chunks(customers):
        for c, blob in await session.execute(select(traits.c.customer_id, traits.c.traits).where(traits.c.customer_id.in_(chunk))):
            found[c] = orjson.loads(blob)
    return found


async def customer_in_funnel(session: AsyncSession, funnel: str, customer_id: str) -> tuple[str, Row[Any] | None, Sequence[Row[Any]]]:
    """The customer `customer_id` stands for (merged ids followed), their counted attempt in the
    funnel (None when they hold no stage) and their transitions in it, in recorded order."""
    customer = (await canonical_ids(session, links, [customer_id])).get(customer_id, customer_id)
    row = (await session.execute(select(attempts).where(attempts.c.funnel == funnel, attempts.c.customer_id == customer,
                                                        attempts.c.depth > 0))).first()
    moves = (await session.execute(select(transitions).where(transitions.c.funnel == funnel, transitions.c.customer_id == customer)
                                   .order_by(transitions.c.id))).all()
    return customer, row, moves


async def customers_at_stage(session: AsyncSession, funnel: str, depth: int, limit: int, reached_by: float | None,
                             after: list[Any] | None) -> Sequence[Row[Any]]:
    """Up to `limit` (customer_id, reached_at) at `depth` now, longest there first; only those who
    reached it at or before epoch `reached_by` (None: all); after the (reached_at, customer_id) `after`."""
    query = (select(attempts.c.customer_id, attempts.c.reached_at)
             .where(attempts.c.funnel == funnel, attempts.c.depth == depth)
             .order_by(attempts.c.reached_at, attempts.c.customer_id).limit(limit))
    if reached_by is not None:
        query = query.where(attempts.c.reached_at <= reached_by)
    if after:
        query = query.where((attempts.c.reached_at > after[0])
                            | ((attempts.c.reached_at == after[0]) & (attempts.c.customer_id > after[1])))
    return (await session.execute(query)).all()


async def transitions_page(session: AsyncSession, funnel: str, since: datetime | None, after_id: int | None,
                           limit: int) -> Sequence[Row[Any]]:
    """Up to `limit` of the funnel's transitions in recorded order, at or after `since`, after id `after_id`."""
    query = select(transitions).where(transitions.c.funnel == funnel).order_by(transitions.c.id).limit(limit)
    if since is not None:
        query = query.where(transitions.c.at >= since)
    if after_id is not None:
        query = query.where(transitions.c.id > after_id)
    return (await session.execute(query)).all()


async def alert_exists(session: AsyncSession, key: str) -> bool:
    return bool(await session.scalar(select(func.count()).select_from(alerts).where(alerts.c.key == key)))


async def add_alert(session: AsyncSession, alert: dict[str, Any], now: datetime) -> None:
    await session.execute(insert(alerts).values(key=alert["key"], definition=orjson.dumps(alert).decode(), created_at=now))


async def alerts_page(session: AsyncSession, after: str | None, limit: int) -> list[dict[str, Any]]:
    """Up to `limit` alert definitions by key, after key `after`."""
    query = select(alerts.c.definition).order_by(alerts.c.key).limit(limit)
    if after is not None:
        query = query.where(alerts.c.key > after)
    return [orjson.loads(definition) for definition in (await session.execute(query)).scalars()]


async def alert_definition(session: AsyncSession, key: str) -> dict[str, Any] | None:
    definition = await session.scalar(select(alerts.c.definition).where(alerts.c.key == key))
    return None if definition is None else dict(orjson.loads(definition))


async def remove_alert(session: AsyncSession, key: str) -> bool:
    """The alert and its firings go (in the caller's transaction); False when there was no such alert."""
    if not (await session.execute(delete(alerts).where(alerts.c.key == key))).rowcount:  # type: ignore[attr-defined]
        return False
    await session.execute(delete(alert_firings).where(alert_firings.c.alert == key))
    return True


async def firings_page(session: AsyncSession, alert: str, before: datetime | None, limit: int) -> list[dict[str, Any]]:
    """Up to `limit` firings of the alert as the API answers them, newest interval first, those of
    intervals starting before `before`."""
    query = (select(alert_firings.c.body).where(alert_firings.c.alert == alert)
             .order_by(alert_firings.c.period_start.desc()).limit(limit))
    if before is not None:
        query = query.where(alert_firings.c.period_start < before)
    return [orjson.loads(body) for body in (await session.execute(query)).scalars()]

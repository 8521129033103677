"""Accepting messages: dedupe, identity stitching, the timeline, the quarantine, publishing.

A request commits its accepted messages as one inbox row (`enqueue_all`) and answers. The
pipeline applies the rows of several requests at once, in one transaction (`accept`): a fixed
handful of statements per batch, so the cost per event is the work on the event, not round trips.

Identity rules (Segment/PostHog-style): a message carrying both ids, an identify, or an alias
links an id to a customer. The customer of a message is its `userId`, else its `anonymousId`,
each resolved through the links. An id links once: the first user it is linked to keeps it (as
PostHog does, to avoid merging two known people by a shared device). When an id is linked, its
past events move to the customer, and a `CustomerLinked` event lets other services merge too.
"""
from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import ClauseElement, String, Text, and_, bindparam, delete, func, insert, or_, select, true, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from services.ingest.inbox import Inbound, pack
from services.ingest.messages import MAX_NESTING, Message, Rejection, clipped, nesting, printable_id
from services.ingest.on_sqlite import SqliteStatement, is_sqlite
from services.ingest.store import (
    bus_tables,
    erasures,
    events,
    identities,
    packed_inbox,
    quarantine,
    seen_messages,
)
from shared.bulk import BulkWrite
from shared.events import CustomerErased, CustomerLinked, Interaction, record
from shared.identity import add_tombstones, erasure_times, tombstone_hashes
from shared.outbox import Outbox
from shared.store import UTCDateTime, among, sqlite_utc_text


async def enqueue_all(
    session: AsyncSession, requests: list[tuple[list[Message], list[Rejection], datetime]]
) -> None:
    """The requests' part: keep the rejected in the quarantine, each request's accepted messages
    as one inbox row (in the order given). Two statements whatever the number of requests, on the
    session's connection (the inbox rows as tuples through BulkWrite: no SQLAlchemy statement
    handling on every request's path)."""
    db = await session.connection()
    rejected = [quarantine_row(r, at) for _, rejections, at in requests for r in rejections]
    if rejected:
        await db.execute(insert(quarantine), rejected)
    await INBOX_ROWS.run(session, [(at, pack(messages, at)) for messages, _, at in requests if messages])


INBOX_ROWS = BulkWrite(lambda _: insert(packed_inbox), ("received_at", "messages"))


async def accept(db: AsyncConnection, messages: list[Inbound]) -> Outbox:
    """The pipeline's part, for the messages of several requests' inbox rows at once (in the
    order they came): dedupe, stitch, write the timeline; returns the events to publish. The same
    few statements whatever the number of messages: per-statement costs are paid per batch."""
    outbox = Outbox()
    fresh = await _drop_erased(db, await _drop_duplicates(db, messages))
    if not fresh:
        return outbox
    links = await _stitch(db, fresh, outbox)
    rows = []
    stored = _stored_time(db.dialect)
    for message in fresh:
        own = message.own_id
        customer_id = links.get(own, own)
        body = message.body(customer_id)
        outbox.add(record(Interaction, customer_id, message.message_id, body))
        rows.append((message.message_id, customer_id, stored(message.occurred_at), body))
    await NEW_EVENTS.run(db, rows)
    return outbox


def _new_events(dialect: str) -> ClauseElement:
    """On SQLite occurred_at is bound as the text UTCDateTime writes (`_stored_time`)."""
    if dialect == "sqlite":
        return sqlite_insert(events).values(occurred_at=bindparam("occurred_at", type_=String())).on_conflict_do_nothing()
    return pg_insert(events).on_conflict_do_nothing()


NEW_EVENTS = BulkWrite(_new_events, ("event_id", "customer_id", "occurred_at", "body"))


def _stored_time(dialect: Dialect) -> Callable[[datetime], Any]:
    """How NEW_EVENTS takes occurred_at: on SQLite, the text UTCDateTime writes (which remembers
    it: an order's lines share one); on PostgreSQL the time, as the statement binds it."""
    return sqlite_utc_text if dialect.name == "sqlite" else lambda at: at


def quarantine_row(rejection: Rejection, received_at: datetime) -> dict[str, object]:
    raw = rejection.raw
    if isinstance(raw, dict):
        raw = {k: v for k, v in raw.items() if k != "writeKey"}  # readers see the quarantine
    if nesting(raw) > MAX_NESTING + 1:
        raw = clipped(raw, MAX_NESTING + 1)  # a message nested too deep: kept as far as it may go
    ids = raw if isinstance(raw, dict) else {}
    return {
        "received_at": received_at,
        "reason": rejection.reason,
        "message_id": printable_id(rejection.message_id),
        "user_id": printable_id(ids.get("userId", ids.get("user_id"))),
        "anonymous_id": printable_id(ids.get("anonymousId", ids.get("anonymous_id"))),
        "raw": orjson.dumps(raw),
    }


async def _drop_duplicates(db: AsyncConnection, messages: list[Inbound]) -> list[Inbound]:
    """An SDK retry (a messageId seen within the window) is acknowledged but not stored again.

    One statement: remember each sent id unless already remembered, and learn which were new."""
    sent: dict[str, datetime] = {}
    for m in messages:
        if not m.generated_id:
            sent.setdefault(m.message_id, m.received_at)  # the first copy is the one remembered
    new = await _remembering(db, sent) if sent else set()
    fresh = []
    for message in messages:
        if message.generated_id or message.message_id in new:
            new.discard(message.message_id)  # a repeat inside the batch is a duplicate too
            fresh.append(message)
    return fresh


async def _remembering(db: AsyncConnection, sent: dict[str, datetime]) -> set[str]:
    """INSERT the (id, seen at) pairs unless there, RETURNING the ids inserted: the rows as one
    or two bound parameters (a JSON array on SQLite, arrays on PostgreSQL), so the statement
    compiles once and no parameters are built per row."""
    if not is_sqlite(db):
        return set((await db.execute(REMEMBER_PG, {"ids": list(sent), "ats": list(sent.values())})).scalars())
    pairs = orjson.dumps([(mid, sqlite_utc_text(at)) for mid, at in sent.items()]).decode()
    return {message_id for message_id, in await REMEMBER_SQLITE.rows(db, pairs=pairs)}


_PAIRS = func.json_each(bindparam("pairs")).table_valued("value")
REMEMBER_SQLITE = SqliteStatement(sqlite_insert(seen_messages).from_select(
    ["message_id", "seen_at"],
    # WHERE: SQLite reads an ON CONFLICT right after FROM as a join's constraint
    select(func.json_extract(_PAIRS.c.value, "$[0]"), func.json_extract(_PAIRS.c.value, "$[1]")).where(true()),
).on_conflict_do_nothing().returning(seen_messages.c.message_id))
_ROWS = func.unnest(bindparam("ids", type_=ARRAY(Text())), bindparam("ats", type_=ARRAY(UTCDateTime()))).table_valued(
    "message_id", "seen_at").render_derived()
REMEMBER_PG = pg_insert(seen_messages).from_select(
    ["message_id", "seen_at"], select(_ROWS.c.message_id, _ROWS.c.seen_at),
).on_conflict_do_nothing().returning(seen_messages.c.message_id)


async def _drop_erased(db: AsyncConnection, messages: list[Inbound]) -> list[Inbound]:
    """Messages about an erased customer that happened before the erasure (late: a retry, an
    import) are dropped: the erasure stands. Later ones start a new customer."""
    if not messages:
        return messages
    erased = await erasure_times(db, erasures, _named_ids(messages))
    if not erased:
        return messages
    return [m for m in messages
            if not any(i in erased and m.occurred_at <= erased[i] for i in (m.user_id, m.anonymous_id, m.previous_id) if i)]


def _named_ids(messages: list[Inbound]) -> set[str]:
    """Every id the messages name (each once: a batch names its customers many times)."""
    return {i for m in messages for i in (m.user_id, m.anonymous_id, m.previous_id) if i}


async def _stitch(db: AsyncConnection, messages: list[Inbound], outbox: Outbox) -> dict[str, str]:
    """Apply the batch's new links, in order; returns id -> customer for every id the batch names.
    One read of the ids' links for the whole batch."""
    links = await _links_of(db, list(_named_ids(messages)))
    members: dict[str, list[str]] = {}  # customer -> the ids above that count for it
    for alias_id, customer in links.items():
        members.setdefault(customer, []).append(alias_id)
    linked_at: dict[str, datetime] = {}  # merged id -> when
    for merged_id, into, at in _new_links(messages):
        customer = links.get(into, into)
        if merged_id in links or merged_id == customer:
            continue  # an id links once; the first customer keeps it
        joining = [*members.pop(merged_id, []), merged_id]  # the id, and those counted for it
        links.update(dict.fromkeys(joining, customer))
        members.setdefault(customer, []).extend(joining)
        linked_at[merged_id] = at
    if linked_at:
        moves = {merged_id: (links[merged_id], at) for merged_id, at in linked_at.items()}  # final customers
        await _save_links(db, moves)
        for merged_id, (customer, at) in moves.items():
            outbox.publish(CustomerLinked(customer_id=customer, merged_id=merged_id, at=at))
    return links


async def _links_of(db: AsyncConnection, ids: list[str]) -> dict[str, str]:
    """id -> customer for those of `ids` linked to one."""
    if is_sqlite(db):
        return dict(await LINKS_SQLITE.rows(db, ids=orjson.dumps(ids).decode()))
    rows = await db.execute(select(identities.c.alias_id, identities.c.customer_id).where(among(identities.c.alias_id, ids, db)))
    return dict(rows.tuples().all())


LINKS_SQLITE = SqliteStatement(select(identities.c.alias_id, identities.c.customer_id).where(
    identities.c.alias_id.in_(select(func.json_each(bindparam("ids")).table_valued("value").c.value))))  # as `among`


async def _save_links(db: AsyncConnection, moves: dict[str, tuple[str, datetime]]) -> None:
    """Each merged id, and every id and event already counted for it, now count for its customer.
    Three statements for the whole batch, whatever the number of links."""
    params = [{"old": merged_id, "new": customer} for merged_id, (customer, _) in moves.items()]
    await db.execute(
        update(identities).where(identities.c.customer_id == bindparam("old")).values(customer_id=bindparam("new")),
        params)
    await db.execute(insert(identities), [
        {"alias_id": merged_id, "customer_id": customer, "linked_at": at} for merged_id, (customer, at) in moves.items()])
    await db.execute(
        update(events).where(events.c.customer_id == bindparam("old")).values(customer_id=bindparam("new")), params)


def _new_links(messages: list[Inbound]) -> list[tuple[str, str, datetime]]:
    """(id, the id it links to, when), in the order the messages came."""
    pairs = []
    for m in messages:
        if m.type == "alias" and m.previous_id and m.user_id:
            pairs.append((m.previous_id, m.user_id, m.received_at))
        if m.anonymous_id and m.user_id:
            pairs.append((m.anonymous_id, m.user_id, m.received_at))
    return pairs


async def resolve(session: AsyncSession, customer_id: str) -> str:
    row = await session.execute(select(identities.c.customer_id).where(identities.c.alias_id == customer_id))
    return row.scalar() or customer_id


async def timeline(session: AsyncSession, customer: str, before: tuple[datetime, str] | None, limit: int) -> list[Any]:
    """Up to `limit` of the customer's events, newest first, older than the (occurred_at,
    event_id) key `before`."""
    query = select(events.c.event_id, events.c.customer_id, events.c.occurred_at, events.c.body).where(
        events.c.customer_id == customer)
    if before:
        at, event_id = before
        query = query.where(or_(events.c.occurred_at < at, and_(events.c.occurred_at == at, events.c.event_id < event_id)))
    return list((await session.execute(
        query.order_by(events.c.occurred_at.desc(), events.c.event_id.desc()).limit(limit))).all())


async def quarantined(session: AsyncSession, before_id: int | None, limit: int) -> list[Any]:
    """Up to `limit` rejected messages, newest first, with ids below `before_id`."""
    query = select(quarantine).order_by(quarantine.c.id.desc()).limit(limit)
    if before_id is not None:
        query = query.where(quarantine.c.id < before_id)
    return list((await session.execute(query)).all())


async def erase(session: AsyncSession, customer_id: str, at: datetime, outbox: Outbox) -> CustomerErased:
    """Delete what ingest holds on the customer (and ids merged into it); tell every service."""
    customer = await resolve(session, customer_id)
    merged = list((await session.execute(
        select(identities.c.alias_id).where(identities.c.customer_id == customer))).scalars())
    everyone = [customer, *merged]
    await session.execute(delete(events).where(events.c.customer_id.in_(everyone)))
    await session.execute(delete(identities).where(identities.c.customer_id == customer))
    await session.execute(delete(quarantine).where(
        or_(quarantine.c.user_id.in_(everyone), quarantine.c.anonymous_id.in_(everyone))))
    await session.execute(delete(bus_tables.outbox).where(bus_tables.outbox.c.key.in_(everyone)))
    await add_tombstones(session, erasures, tombstone_hashes(everyone), at)
    erased = CustomerErased(customer_id=customer, merged_ids=merged, at=at)
    outbox.publish(erased)
    return erased


async def prune_quarantine(session: AsyncSession, keep: int) -> None:
    """Keep the newest `keep` rejected messages (ids grow with arrival); the older ones go."""
    cutoff = (await session.execute(
        select(quarantine.c.id).order_by(quarantine.c.id.desc()).offset(keep - 1).limit(1))).scalar()
    if cutoff is not None:
        await session.execute(delete(quarantine).where(quarantine.c.id < cutoff))


async def prune_seen(session: AsyncSession, before: datetime) -> None:
    """Forget message ids older than the dedupe window."""
    await session.execute(delete(seen_messages).where(seen_messages.c.seen_at < before))


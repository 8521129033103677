"""Keeping every customer's counted attempt current: events in, matches per funnel, attempts
recounted, transitions recorded and published on funnel.v1; and what a link, an erasure or a
segment change does to the customer's rows.

Work is done once per consumed batch: the batch's events are matched and stored in bulk, then
each touched (funnel, customer) is recounted from its matched events. A counted attempt depends
only on the set of matched events, so late and repeated events give what in-order ones give.
"""
from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from operator import itemgetter
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import orjson
from sqlalchemy import ClauseElement, String, Table, bindparam, delete, insert, literal_column, select, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.funnel.logic import (
    BUILT_IN_KEYS,
    BUILT_INS,
    DAY,
    JOURNEY_TYPES,
    NO_ATTEMPT,
    Attempt,
    Funnel,
    Matched,
    StageMasks,
    counted_attempt,
    event_document,
    parse_funnel,
    step_name,
)
from services.funnel.store import (
    attempts,
    bus_tables,
    customer_tables,
    erasures,
    events,
    funnel_versions,
    funnels,
    latest_times,
    links,
    matches,
    segment_members,
    traits,
    transitions,
)
from shared.bulk import BulkWrite, inserting_new
from shared.bus.base import OutgoingRecord
from shared.events import CustomerErased, FunnelStageChanged, Interaction, SegmentChanged, stable_id, to_iso
from shared.events import record as record_of
from shared.identity import canonical_ids, chunks, erase, erased_ids, merge_traits, not_erased, relink
from shared.keyed_rows import Key, KeyedWrites, read_keyed
from shared.metrics import EVENTS_PAST_RETENTION
from shared.outbox import Outbox
from shared.store import among, dialect_of, hold_lock, insert_ignoring_conflicts, sqlite_utc_text

FUNNELS_LOCK = "funnel.definitions"

WRITE_MEMBERSHIPS = KeyedWrites(segment_members, "segment")

# A recount's writes, a row per tuple (shared/bulk.py: SQLAlchemy's executemany cost more per row
# than the rest of the recount).
TRANSITION_COLUMNS = ("funnel", "customer_id", "from_stage", "to_stage", "at", "event_id")
NEW_TRANSITIONS = BulkWrite(lambda _: insert(transitions), TRANSITION_COLUMNS)
ATTEMPT_COLUMNS = ("funnel", "customer_id", "depth", "times", "event_ids", "first_at", "reached_at", "channel", "journey",
                   "version")
NEW_ATTEMPTS = BulkWrite(lambda _: insert(attempts), ATTEMPT_COLUMNS)
ATTEMPT_VALUES = itemgetter(*ATTEMPT_COLUMNS)  # an attempts row (a dict) as a tuple in that order
MOVED_ATTEMPTS = BulkWrite(
    lambda _: update(attempts).where(attempts.c.funnel == bindparam("b_funnel", type_=attempts.c.funnel.type),
                                     attempts.c.customer_id == bindparam("b_customer_id", type_=attempts.c.customer_id.type))
    .values({c: bindparam(f"b_{c}", type_=attempts.c[c].type) for c in ATTEMPT_COLUMNS[2:]}),
    tuple(f"b_{c}" for c in ATTEMPT_COLUMNS))
# Most recounts only add journey steps: then the attempt's other columns (and the indexes on them)
# are left as they are.
JOURNEY_COLUMNS = ("funnel", "customer_id", "journey", "version")
JOURNEY_VALUES = itemgetter(*JOURNEY_COLUMNS)
LONGER_JOURNEYS = BulkWrite(
    lambda _: update(attempts).where(attempts.c.funnel == bindparam("b_funnel", type_=attempts.c.funnel.type),
                                     attempts.c.customer_id == bindparam("b_customer_id", type_=attempts.c.customer_id.type))
    .values(journey=bindparam("b_journey", type_=attempts.c.journey.type),
            version=bindparam("b_version", type_=attempts.c.version.type)),
    tuple(f"b_{c}" for c in JOURNEY_COLUMNS))


async def lock_funnels(session: AsyncSession, changing_definitions: bool = False) -> None:
    """First thing in every transaction that writes funnel state. Consumed batches share the lock
    and match their events against the definitions they read after taking it; a definition change
    (create, edit, delete) or the cleanup takes it alone: it waits for the batches in flight to
    commit, so a rebuild reads every event they matched against the old definitions, and batches
    after it see the new one. Nothing is matched against a definition nobody rebuilds."""
    await hold_lock(session, FUNNELS_LOCK, shared=not changing_definitions)


async def definitions(session: AsyncSession, keys: list[str] | None = None) -> list[Funnel]:
    """Every funnel (or those of `keys`), the default `lifecycle` included unless edited."""
    query = select(funnels.c.key, funnels.c.definition).order_by(funnels.c.key)
    if keys is not None:
        query = query.where(funnels.c.key.in_(keys))
    found = {key: parse_funnel(orjson.loads(definition)) for key, definition in await session.execute(query)}
    for built_in in BUILT_INS:
        if built_in.key not in found and (keys is None or built_in.key in keys):
            found[built_in.key] = built_in
    return [found[k] for k in sorted(found)]


async def definitions_after(session: AsyncSession, after: str | None, limit: int) -> list[Funnel]:
    """A page of the listing: the built-in funnels first (`lifecycle`, `sales`), then the others by
    key; the `limit` first after key `after` (None: from the start). A keyset, so `after` need not
    exist any more."""
    rest = BUILT_IN_KEYS[BUILT_IN_KEYS.index(after) + 1:] if after in BUILT_IN_KEYS else () if after else BUILT_IN_KEYS
    built_ins = {f.key: f for f in await definitions(session, list(rest))} if rest else {}
    first = [built_ins[k] for k in rest][:limit]
    query = (select(funnels.c.key, funnels.c.definition).where(funnels.c.key.not_in(BUILT_IN_KEYS))
             .order_by(funnels.c.key).limit(limit - len(first)))
    if after is not None and after not in BUILT_IN_KEYS:
        query = query.where(funnels.c.key > after)
    return first + [parse_funnel(orjson.loads(definition)) for _, definition in await session.execute(query)]


async def add_definition(session: AsyncSession, funnel: Funnel, now: datetime) -> None:
    await session.execute(insert(funnels).values(key=funnel.key, definition=orjson.dumps(funnel.to_json()).decode(),
                                                 created_at=now, updated_at=now))


async def save_definition(session: AsyncSession, funnel: Funnel, now: datetime) -> None:
    """The funnel's new definition; a built-in one never edited before gets its first row."""
    definition = orjson.dumps(funnel.to_json()).decode()
    if (await session.execute(update(funnels).where(funnels.c.key == funnel.key).values(
            definition=definition, updated_at=now))).rowcount == 0:  # type: ignore[attr-defined]
        await session.execute(insert(funnels).values(key=funnel.key, definition=definition, created_at=now, updated_at=now))


async def remove_funnel(session: AsyncSession, funnel: Funnel, now: datetime, outbox: Outbox) -> None:
    """The funnel, its matches, attempts and transitions go; each customer in it gets a last
    transition to no stage (published), so consumers of funnel.v1 forget it too."""
    held = (await session.execute(select(attempts.c.customer_id, attempts.c.depth).where(
        attempts.c.funnel == funnel.key, attempts.c.depth > 0))).all()
    last = Version(time.time_ns(), 0).order(0)  # after every move of this funnel so far
    for customer, depth in held:
        outbox.add(stage_changed_record(customer, funnel.key, funnel.stages[depth - 1].key, None, now, None, last))
    for table in (matches, attempts, transitions, funnel_versions):
        await session.execute(delete(table).where(table.c.funnel == funnel.key))
    await session.execute(delete(funnels).where(funnels.c.key == funnel.key))


@dataclass
class Appended:
    """What one batch added for a customer, only rows whose insert was kept (no copy stored
    before): their journey steps, the revenue of those events, and per funnel the matched events
    and whether all of them come after every match stored before. With it, a recount can advance
    the stored attempt instead of reading the customer's whole history (see `_advanced`)."""

    steps: list[list[Any]] = field(default_factory=list)
    revenues: dict[str, float] = field(default_factory=dict)
    matched: dict[str, list[Matched]] = field(default_factory=lambda: defaultdict(list))
    after_stored: dict[str, bool] = field(default_factory=dict)
    channels: dict[str, str] = field(default_factory=dict)  # of the matched events
    stored_until: float | None = None  # the customer's latest event stored before (any type; None: unknown)


@dataclass
class Pending:
    """A batch's work: interactions to record, then (funnel, customer) pairs to recount; what the
    batch appended per customer, and the customers to recount from their whole history anyway
    (linked in this batch: another id's history became theirs)."""

    interactions: list[Interaction] = field(default_factory=list)
    dirty: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    appended: dict[str, Appended] = field(default_factory=lambda: defaultdict(Appended))
    whole: set[str] = field(default_factory=set)
    funnels: list[Funnel] | None = None  # the definitions, once read (`definitions`)

    async def definitions(self, session: AsyncSession) -> list[Funnel]:
        """Every funnel, read once per batch: a definition changes only under the funnels lock held
        alone (`lock_funnels`), which waits for the batch to commit."""
        if self.funnels is None:
            self.funnels = await definitions(session)
        return self.funnels

    def take_recounts(self) -> tuple[dict[str, set[str]], dict[str, Appended]]:
        """The pairs to recount and what was appended for the customers not to recount whole;
        both start empty again (what a later recount sees is stored by then)."""
        dirty, appended = self.dirty, {c: a for c, a in self.appended.items() if c not in self.whole}
        self.dirty, self.appended, self.whole = defaultdict(set), defaultdict(Appended), set()
        return dirty, appended


def epoch(at: datetime) -> float:
    return at.timestamp()


def from_epoch(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


class EventRow(NamedTuple):
    """An interaction as recording and rebuilding use it; `epoch` is its time in epoch seconds."""

    event_id: str
    customer_id: str
    type: str
    name: str | None
    properties: dict[str, Any]
    traits: dict[str, Any]
    context: dict[str, Any]
    channel: str
    at: datetime
    epoch: float

    def document(self) -> dict[str, Any]:
        """What stages' `where` rules read (logic.event_document)."""
        return event_document(self.properties, self.traits, self.context)

    def stored_document(self) -> bytes:
        """The copy's document: properties, traits and context (what `event_document` is made of,
        not the properties a second time)."""
        return orjson.dumps({"properties": self.properties, "traits": self.traits, "context": self.context})


# An event copy and a match, as stored (tuples in these orders).
EVENT_COLUMNS = ("event_id", "customer_id", "type", "name", "document", "channel", "at")


def _new_copies(dialect: str) -> ClauseElement:
    """On SQLite the copies' document and time come as the driver binds them (`_copy_rows`): their
    column types do not convert them again, value by value."""
    if dialect == "sqlite":
        return sqlite_insert(events).values(document=bindparam("document", type_=String()),
                                            at=bindparam("at", type_=String())).on_conflict_do_nothing()
    return inserting_new(events)(dialect)


NEW_EVENTS = BulkWrite(_new_copies, EVENT_COLUMNS)
MATCH_COLUMNS = ("funnel", "event_id", "customer_id", "at", "stages", "channel")
NEW_MATCHES = BulkWrite(inserting_new(matches), MATCH_COLUMNS)


def stored_parts(stored: bytes) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The properties, traits and context of a stored document (copies written before it was
    slimmed down hold the same three keys, and the properties at the top as well)."""
    document = orjson.loads(stored)
    return document.get("properties", {}), document.get("traits", {}), document.get("context", {})


async def record(session: AsyncSession, batch: list[Interaction], now: datetime, retention_days: float,
                 pending: Pending) -> None:
    """Store the events, their matches with every funnel, and the customers' traits."""
    batch = await not_erased(session, erasures, batch)
    if not batch:
        return
    canonical = await canonical_ids(session, links, {e.customer_id for e in batch})
    rows = [EventRow(e.event_id, canonical.get(e.customer_id, e.customer_id), e.type, e.name, e.properties, e.traits,
                     e.context, e.channel, e.occurred_at, e.occurred_at.timestamp()) for e in batch]
    copies = _within_retention(rows, horizon(now, retention_days))
    # With a retention, the cleanup drops journey steps that only a whole recount leaves out.
    appending = retention_days <= 0
    latest = await _latest_events(session, sorted({r.customer_id for r in copies})) if appending else {}
    kept = await _insert_new(session, events, NEW_EVENTS, [r.event_id for r in copies],
                             _copy_rows(copies, dialect_of(session)), appending)
    if appending:
        _append_steps(pending, kept, copies, latest)
    await _record_traits(session, [(r.customer_id, e) for r, e in zip(rows, batch, strict=True) if e.traits])
    on_journeys = {r.customer_id for r in rows if r.type in JOURNEY_TYPES}
    for funnel in await pending.definitions(session):
        matched = _matches(funnel, rows)
        if matched:
            if appending:
                latest = await _latest_matches(session, funnel.key, sorted({m[2] for m in matched}))
            kept = await _insert_new(session, matches, NEW_MATCHES, [m[1] for m in matched], matched, appending)
            if appending:
                _append_matches(pending, funnel.key, kept, matched, latest)
            pending.dirty[funnel.key] |= {m[2] for m in matched}
        pending.dirty[funnel.key] |= on_journeys  # an event inside an attempt's window changes its journey


def _copy_rows(copies: list[EventRow], dialect: str) -> list[tuple[Any, ...]]:
    """The copies in EVENT_COLUMNS order. On SQLite as NEW_EVENTS takes them there: the document's
    bytes as they are, the time as the text UTCDateTime writes."""
    if dialect == "sqlite":
        return [(r.event_id, r.customer_id, r.type, r.name, r.stored_document(), r.channel, sqlite_utc_text(r.at))
                for r in copies]
    return [(r.event_id, r.customer_id, r.type, r.name, r.stored_document(), r.channel, r.at) for r in copies]


async def _insert_new(session: AsyncSession, table: Table, bulk: BulkWrite, ids: list[str], rows: list[tuple[Any, ...]],
                      kept: bool) -> list[int]:
    """Insert the rows (event ids `ids`), skipping those whose key is already stored (a
    redelivery, or the same event twice); with `kept`, the positions of the rows kept (the first
    copy of each id not stored before), else none.

    PostgreSQL: the ids the insert returns (a batch of another customer may insert the same id
    meanwhile). SQLite: see `_inserted_on_sqlite`."""
    if not rows:
        return []
    if not kept:
        await bulk.run(session, rows)
        return []
    if dialect_of(session) == "postgresql":
        inserted = await session.execute(insert_ignoring_conflicts(table, session).returning(table.c.event_id),
                                         [dict(zip(bulk.keys, r, strict=True)) for r in rows])
        new = set(inserted.scalars())
        return _first_copies(ids, lambda i: i in new)
    return await _inserted_on_sqlite(session, table, bulk, ids, rows)


async def _inserted_on_sqlite(session: AsyncSession, table: Table, bulk: BulkWrite, ids: list[str],
                              rows: list[tuple[Any, ...]]) -> list[int]:
    """The rows written through the driver (shared/bulk.py), and the positions of those kept
    without looking the ids up first: SQLite writes one transaction at a time, and the rows an
    insert adds get the rowids after the largest before, one by one. So when it adds every row
    (the usual batch) all are kept; otherwise the ids it added are read back by rowid."""
    connection = await session.connection()
    compiled = bulk.compiled(connection.dialect)
    added = (await connection.exec_driver_sql(compiled.sql, compiled.parameters(rows))).rowcount
    if added == len(rows):
        return list(range(len(rows)))
    if added == 0:
        return []
    last = (await connection.exec_driver_sql("SELECT last_insert_rowid()")).scalar_one()
    new = set((await session.execute(select(table.c.event_id).where(literal_column("rowid") > last - added))).scalars())
    return _first_copies(ids, lambda i: i in new)


def _first_copies(ids: list[str], new: Callable[[str], bool]) -> list[int]:
    """The positions of the rows an insert kept: of those with one id, the first (the same event
    twice in a batch), if `new` says its id was not stored before."""
    first: dict[str, int] = {}
    for i, event_id in enumerate(ids):
        if event_id not in first and new(event_id):
            first[event_id] = i
    return list(first.values())


def _append_steps(pending: Pending, kept: list[int], rows: list[EventRow], latest: dict[str, float]) -> None:
    """The journey steps and revenues of the events whose copy this batch stored, and when each
    customer's latest event stored before is (-inf: none)."""
    appended_of, nothing = pending.appended, -math.inf
    for i in kept:
        r = rows[i]
        appended = appended_of[r.customer_id]
        before = latest.get(r.customer_id, nothing)
        if appended.stored_until is None or before > appended.stored_until:
            appended.stored_until = before
        if r.type in JOURNEY_TYPES:
            appended.steps.append([r.epoch, r.event_id, r.type, step_name(r.type, r.name), r.channel])
        if "revenue" in r.properties and (value := property_revenue(r.properties)) is not None:
            appended.revenues[r.event_id] = value


def _append_matches(pending: Pending, funnel: str, kept: list[int], matched: list[tuple[Any, ...]],
                    latest: dict[str, float]) -> None:
    """The funnel's matches this batch stored, per customer, and whether each customer's all come
    after their latest match stored before (-inf: none). Matches in MATCH_COLUMNS order."""
    appended_of, nothing = pending.appended, -math.inf
    for i in kept:
        _, event_id, customer, at, stages, channel = matched[i]
        appended = appended_of[customer]
        appended.matched[funnel].append(Matched(at, event_id, stages))
        appended.channels[event_id] = channel
        if at <= latest.get(customer, nothing):
            appended.after_stored[funnel] = False
        else:
            appended.after_stored.setdefault(funnel, True)


async def _latest_events(session: AsyncSession, customers: list[str]) -> dict[str, float]:
    """The time of each customer's latest event stored (none: no event)."""
    return {c: epoch(at) for c, at in (await latest_times(session, events.c.at, customers)).items()}


async def _latest_matches(session: AsyncSession, funnel: str, customers: list[str]) -> dict[str, float]:
    """The time of each customer's latest match stored in the funnel (none: not there)."""
    return await latest_times(session, matches.c.at, customers, matches.c.funnel == funnel)


def horizon(now: datetime, retention_days: float) -> datetime | None:
    """With FUNNEL_EVENTS_RETENTION_DAYS set, the time before which event copies are not kept
    (None: every copy is kept, the default). Matches are kept at any age."""
    return now - timedelta(days=retention_days) if retention_days > 0 else None


def _within_retention(rows: list[EventRow], oldest: datetime | None) -> list[EventRow]:
    """The rows whose copy is kept. An event older than the horizon still counts in every funnel
    it matches now (its matches are written); only a funnel created or edited later misses it,
    and its reports say so (`complete_from`)."""
    if oldest is None:
        return rows
    kept = [r for r in rows if r.at > oldest]
    if len(kept) < len(rows):
        EVENTS_PAST_RETENTION.labels("funnel").inc(len(rows) - len(kept))
    return kept


def _matches(funnel: Funnel, rows: list[EventRow]) -> list[tuple[Any, ...]]:
    """The funnel's matches of the events, in MATCH_COLUMNS order."""
    found = []
    stage_mask = StageMasks(funnel)
    key = funnel.key
    for r in rows:
        if mask := stage_mask.lazily(r.type, r.name, r.document):
            found.append((key, r.event_id, r.customer_id, r.epoch, mask, r.channel))
    return found


async def _record_traits(session: AsyncSession, identified: list[tuple[str, Interaction]]) -> None:
    """Latest-wins traits per customer, for breakdowns by `traits.<name>`."""
    if not identified:
        return
    customers = sorted({c for c, _ in identified})
    held = {r.customer_id: (orjson.loads(r.traits), orjson.loads(r.traits_at))
            for chunk in chunks(customers)
            for r in await session.execute(select(traits).where(among(traits.c.customer_id, chunk, session)))}
    merged = dict(held)
    for customer, e in identified:
        at = e.occurred_at.isoformat()
        merged[customer] = merge_traits(merged.get(customer, ({}, {})), (e.traits, {k: at for k in e.traits}))
    new = [{"customer_id": c, "traits": orjson.dumps(t), "traits_at": orjson.dumps(a)}
           for c, (t, a) in merged.items() if c not in held]
    changed = [{"b_id": c, "b_traits": orjson.dumps(t), "b_at": orjson.dumps(a)} for c, (t, a) in merged.items() if c in held]
    if new:
        await session.execute(insert_ignoring_conflicts(traits, session), new)
    if changed:
        await session.execute(update(traits).where(traits.c.customer_id == bindparam("b_id")).values(
            traits=bindparam("b_traits"), traits_at=bindparam("b_at")), changed)


async def _merge_traits(session: AsyncSession, merged: str, customer: str) -> None:
    """`merged`'s traits join `customer`'s, per trait the value set latest (shared merge_traits,
    as for an identify); this only moves the stored rows."""
    rows = {r.customer_id: r for r in await session.execute(select(traits).where(traits.c.customer_id.in_([merged, customer])))}
    if merged not in rows:
        return
    theirs = (orjson.loads(rows[merged].traits), orjson.loads(rows[merged].traits_at))
    await session.execute(delete(traits).where(traits.c.customer_id == merged))
    if customer not in rows:
        await session.execute(insert(traits).values(customer_id=customer, traits=rows[merged].traits,
                                                    traits_at=rows[merged].traits_at))
        return
    t, a = merge_traits((orjson.loads(rows[customer].traits), orjson.loads(rows[customer].traits_at)), theirs)
    await session.execute(update(traits).where(traits.c.customer_id == customer).values(
        traits=orjson.dumps(t), traits_at=orjson.dumps(a)))


async def record_segment_changes(session: AsyncSession, changes: list[SegmentChanged]) -> None:
    """Membership now, for `breakdown=segment:<key>`: per (canonical customer, segment), the
    latest change by time wins."""
    canonical = await canonical_ids(session, links, (e.customer_id for e in changes))
    moves = [(canonical.get(e.customer_id, e.customer_id), e) for e in changes]
    held = await read_keyed(session, segment_members, "segment", ((c, e.segment) for c, e in moves))
    written: dict[Key, dict[str, object]] = {}
    inserted: set[Key] = set()
    for customer, event in moves:
        key = (customer, event.segment)
        if key not in held:
            inserted.add(key)
        elif event.at < held[key]["at"]:
            continue
        held[key] = written[key] = {"customer_id": customer, "segment": event.segment,
                                    "member": int(event.change == "entered"), "at": event.at}
    await WRITE_MEMBERSHIPS.write(session, written, inserted)


@dataclass(frozen=True)
class Version:
    generation: int
    number: int

    def order(self, i: int) -> str:
        """Sorts as the transitions were recorded, across edits, cleanups and re-creations of the
        funnel (funnel.v1 consumers keep the latest by it, not by the stage's event time)."""
        return f"{self._prefix}{i:03d}"

    @cached_property
    def _prefix(self) -> str:  # once per recount, not per transition
        return f"{self.generation:020d}.{self.number:012d}."


async def next_version(session: AsyncSession, funnel: str) -> Version:
    """The version this transaction's attempt rows get; locks the funnel's row until commit (so
    versions become visible in order, see store.funnel_versions)."""
    result = await session.execute(update(funnel_versions).where(funnel_versions.c.funnel == funnel)
                                   .values(version=funnel_versions.c.version + 1)
                                   .returning(funnel_versions.c.generation, funnel_versions.c.version))
    row = result.first()
    if row is None:
        await session.execute(insert_ignoring_conflicts(funnel_versions, session).values(
            funnel=funnel, version=0, generation=time.time_ns()))
        return await next_version(session, funnel)
    return Version(int(row.generation), int(row.version))


async def funnels_with_attempts(session: AsyncSession) -> list[str]:
    """Every funnel that can hold attempt rows: a funnel's first row gets its funnel_versions row
    (`next_version`), and both go with the funnel (`remove_funnel`). Few: naming them lets a lookup
    by customer use the (funnel, customer_id) key instead of reading every attempt."""
    return list((await session.execute(select(funnel_versions.c.funnel).order_by(funnel_versions.c.funnel))).scalars())


async def remove_attempts(session: AsyncSession, customers: list[str], funnel_keys: list[str] | None = None) -> None:
    """Customers leave funnels (merged away, erased): their rows become removal markers (depth 0,
    no times, no events) that report indexes apply like any change; the cleanup deletes them."""
    keys = await funnels_with_attempts(session) if funnel_keys is None else funnel_keys
    if not keys:
        return
    held = (await session.execute(select(attempts.c.funnel).where(
        attempts.c.funnel.in_(keys), attempts.c.customer_id.in_(customers), attempts.c.depth > 0).distinct())).scalars().all()
    # Versions in key order, as recounts take them: two batches never lock them crosswise.
    for funnel in sorted(held):
        version = await next_version(session, funnel)
        await session.execute(update(attempts).where(attempts.c.funnel == funnel, attempts.c.customer_id.in_(customers))
                              .values(depth=0, times="[]", event_ids="[]", first_at=0.0, reached_at=0.0, channel="",
                                      journey="{}", version=version.number))


async def delete_attempts(session: AsyncSession, customers: list[str]) -> None:
    """Erased customers' attempts go at once, not as removal markers (a marker still names them):
    report indexes of those funnels reload (their generation moves)."""
    keys = await funnels_with_attempts(session)
    if not keys:
        return
    of_customers = (attempts.c.funnel.in_(keys), attempts.c.customer_id.in_(customers))
    held = (await session.execute(select(attempts.c.funnel).where(*of_customers).distinct())).scalars().all()
    if held:
        await session.execute(delete(attempts).where(attempts.c.funnel.in_(held), attempts.c.customer_id.in_(customers)))
        await session.execute(update(funnel_versions).where(funnel_versions.c.funnel.in_(held))
                              .values(generation=time.time_ns()))


async def merge_customer(session: AsyncSession, merged: str, customer: str) -> None:
    """A customers.v1 link: `merged` names `customer` from now on; its events, matches and traits
    become the customer's. One customer, one path: the recount (the caller's to schedule) records
    the merged path's stages for the customer (those it had not reached yet); the merged id's own
    transitions and attempts end with it."""
    await relink(session, links, merged, customer)
    for table in (events, matches):
        await session.execute(update(table).where(table.c.customer_id == merged).values(customer_id=customer))
    await session.execute(delete(transitions).where(transitions.c.customer_id == merged))
    await remove_attempts(session, [merged])
    await _merge_traits(session, merged, customer)


async def erase_customer(session: AsyncSession, event: CustomerErased) -> list[str]:
    """Every row about the customer, under any of their ids, goes (attempts at once, see
    `delete_attempts`), and their events waiting in the outbox. Returns the ids."""
    await delete_attempts(session, await erased_ids(session, links, event))
    return await erase(session, links, erasures, event, customer_tables, bus_tables.outbox)


async def recount(session: AsyncSession, funnel: Funnel, customers: list[str], now: datetime, outbox: Outbox,
                  appended: dict[str, Appended] | None = None) -> int:
    """Each customer's counted attempt from their matched events; transitions for stage changes.
    What this batch stored for a customer (`appended`) spares reading their whole history where it
    gives the same (see `_recounted`). Returns how many customers changed stage."""
    changed = 0
    version = await next_version(session, funnel.key)
    for chunk in chunks(sorted(customers)):
        held = {r.customer_id: r for r in await session.execute(
            select(attempts).where(attempts.c.funnel == funnel.key, among(attempts.c.customer_id, chunk, session)))}
        appended = appended or {}
        # Those the batch gave nothing in this funnel (only other events) and who hold no attempt
        # in it: still none (what `_started` gives them), nothing to write.
        chunk = [c for c in chunk if c in held or c not in appended or funnel.key in appended[c].matched]
        counted = await _recounted(session, funnel, chunk, held, appended)
        new: list[dict[str, object]] = []
        moved: list[dict[str, object]] = []
        longer: list[dict[str, object]] = []
        gone: list[str] = []
        moves: list[tuple[Any, ...]] = []
        for customer in chunk:
            attempt, row = counted[customer]
            before = held.get(customer)
            if row is None:
                if before is not None and before.depth > 0:
                    gone.append(customer)
            else:
                row["version"] = version.number
                if before is None:
                    new.append(row)
                elif before.event_ids != row["event_ids"] or before.journey != row["journey"]:
                    same = all(before._mapping[c] == row[c] for c in ATTEMPT_COLUMNS[2:-2])  # all but journey, version
                    (longer if same else moved).append(row)
            if (before.depth if before is not None else 0) != attempt.depth:
                changed += 1
                moves += _transitions(funnel, customer, before.depth if before is not None else 0, attempt, now, outbox,
                                      version)
        await NEW_TRANSITIONS.run(session, moves)
        await NEW_ATTEMPTS.run(session, list(map(ATTEMPT_VALUES, new)))
        await MOVED_ATTEMPTS.run(session, list(map(ATTEMPT_VALUES, moved)))
        await LONGER_JOURNEYS.run(session, list(map(JOURNEY_VALUES, longer)))
        if gone:
            await remove_attempts(session, gone, [funnel.key])
    return changed


# A customer's counted attempt and its attempts row without the version (None: they hold no stage).
Recounted = tuple[Attempt, dict[str, object] | None]


async def _recounted(session: AsyncSession, funnel: Funnel, customers: list[str], held: dict[str, Any],
                     appended: dict[str, Appended]) -> dict[str, Recounted]:
    """Each customer's counted attempt and row. The usual batch adds events after everything stored
    for a customer: then their stored attempt is advanced (`_advanced`), or the attempt counted from
    the appended matches alone (`_started`), instead of counting from every matched event again."""
    advanced = {c: found for c in customers if c in appended
                and (found := _advanced(funnel, c, held.get(c), appended[c])) is not None}
    started = {c: found for c in customers if c in appended and c not in advanced
               and (found := _started(funnel, held.get(c), appended[c])) is not None}
    new = {c: found for c, attempt in started.items() if (found := _new_row(funnel, c, attempt, appended[c])) is not None}
    # The channels of the appended events, for the started attempts' rows not made above.
    channels = {event_id: channel for c in started if c not in new for event_id, channel in appended[c].channels.items()}
    counted = {c: a for c, a in started.items() if c not in new} | await _counted(
        session, funnel, [c for c in customers if c not in advanced and c not in started], channels)
    return advanced | new | await _with_journeys(session, funnel, counted, channels)


async def _counted(session: AsyncSession, funnel: Funnel, customers: list[str], channels: dict[str, str]) -> dict[str, Attempt]:
    """From every matched event of the customers (their channels join `channels`)."""
    matched: dict[str, list[Matched]] = defaultdict(list)
    if customers:
        for r in await session.execute(select(matches.c.customer_id, matches.c.event_id, matches.c.at, matches.c.stages,
                                              matches.c.channel)
                                       .where(matches.c.funnel == funnel.key, among(matches.c.customer_id, customers, session))):
            matched[r.customer_id].append(Matched(r.at, r.event_id, r.stages))
            channels[r.event_id] = r.channel
    return {customer: counted_attempt(funnel, matched.get(customer, [])) for customer in customers}


async def _with_journeys(session: AsyncSession, funnel: Funnel, counted: dict[str, Attempt],
                         channels: dict[str, str]) -> dict[str, Recounted]:
    """The rows of the counted attempts, journeys and revenues read back."""
    journeys = await _journey_events(session, [c for c, a in counted.items() if a.depth])
    revenues = await _revenues(session, [e.event_id for a in counted.values() for e in a.events])
    return {customer: (attempt, {**_row(funnel, customer, attempt, channels),
                                 "journey": _journey(funnel, attempt, journeys.get(customer, []), revenues)}
                       if attempt.depth else None)
            for customer, attempt in counted.items()}


def _started(funnel: Funnel, held: Any, appended: Appended) -> Attempt | None:
    """For a customer holding no stage, the attempt counted from the appended matches alone, when
    they all come after every stored match (None otherwise). Holding no stage, the stored matches
    hold no first stage; so an attempt starts at an appended match and goes on with later ones."""
    if held is not None and held.depth > 0:
        return None
    added = appended.matched.get(funnel.key, [])
    if not added:
        return NO_ATTEMPT  # nothing new in this funnel: still no stage
    return counted_attempt(funnel, added) if appended.after_stored[funnel.key] else None


def _new_row(funnel: Funnel, customer: str, attempt: Attempt, appended: Appended) -> Recounted | None:
    """A started attempt's row from what the batch appended alone, when every event stored before
    comes before the attempt starts (so none is in its journey); None otherwise."""
    if attempt.depth == 0:
        return attempt, None
    if appended.stored_until is None or appended.stored_until >= attempt.times[0]:
        return None
    return attempt, {**_row(funnel, customer, attempt, appended.channels),
                     "journey": _journey(funnel, attempt, sorted(appended.steps, key=_step_order), appended.revenues)}


_step_order = itemgetter(0, 1)  # a journey step's (at, event_id)


def _advanced(funnel: Funnel, customer: str, held: Any, appended: Appended) -> Recounted | None:
    """The stored attempt advanced by what the batch appended, where that is what a whole recount
    gives; None where it may not be (the customer is then recounted whole).

    It is when the funnel has no per-stage windows and the appended matches all come after every
    stored match and within the stored attempt's window: an attempt starting elsewhere, or using
    other stored events, never reaches further or earlier than the stored one continued with
    appended events (it would have been counted before), so the attempt counted over the stored
    attempt's events and the appended matches is the counted one. Its journey is the stored one
    plus the appended steps inside the window (the same start, so the same window)."""
    if held is None or held.depth == 0:
        return None
    added = appended.matched.get(funnel.key, [])
    end = held.first_at + funnel.conversion_window_days * DAY
    if added and (not appended.after_stored[funnel.key] or any(m.at > end for m in added)
                  or funnel.stage_windows):
        return None
    journey = orjson.loads(held.journey)
    if len(journey.get("revenue", ())) != held.depth:  # a row from before journeys were kept: recounted whole once
        return None
    stages = tuple(Matched(at, event_id, 1 << i) for i, (at, event_id)
                   in enumerate(zip(orjson.loads(held.times), orjson.loads(held.event_ids), strict=True)))
    attempt = counted_attempt(funnel, [*stages, *added])
    if attempt.events[:held.depth] != stages:  # what the argument above rules out; whole, to be safe
        return None
    steps = sorted(journey["steps"] + appended.steps, key=_step_order)
    revenues = appended.revenues | {e.event_id: r for e, r in zip(stages, journey["revenue"], strict=True) if r is not None}
    return attempt, {**_row(funnel, customer, attempt, {stages[0].event_id: held.channel}),
                     "journey": _journey(funnel, attempt, steps, revenues)}


def _row(funnel: Funnel, customer: str, attempt: Attempt, channels: dict[str, str]) -> dict[str, object]:
    return {"funnel": funnel.key, "customer_id": customer, "depth": attempt.depth,
            "times": orjson.dumps(list(attempt.times)).decode(),
            "event_ids": orjson.dumps([e.event_id for e in attempt.events]).decode(),
            "first_at": attempt.times[0], "reached_at": attempt.times[-1],
            "channel": channels.get(attempt.events[0].event_id, "direct")}


async def _journey_events(session: AsyncSession, customers: list[str]) -> dict[str, list[list[Any]]]:
    """Each customer's page, track and identify events as journey steps [at, event_id, type, name,
    channel], ordered by (at, event id)."""
    found: dict[str, list[list[Any]]] = defaultdict(list)
    for chunk in chunks(customers):
        for r in await session.execute(select(events.c.customer_id, events.c.event_id, events.c.type, events.c.name,
                                              events.c.channel, events.c.at)
                                       .where(among(events.c.customer_id, chunk, session), events.c.type.in_(JOURNEY_TYPES))):
            found[r.customer_id].append([epoch(r.at), r.event_id, r.type, step_name(r.type, r.name), r.channel])
    for steps in found.values():
        steps.sort(key=_step_order)
    return found


async def _revenues(session: AsyncSession, event_ids: list[str]) -> dict[str, float]:
    """The numeric `revenue` property of those events that carry one."""
    found: dict[str, float] = {}
    for chunk in chunks(sorted(set(event_ids))):
        for event_id, document in await session.execute(select(events.c.event_id, events.c.document)
                                                        .where(among(events.c.event_id, chunk, session))):
            if (value := revenue(orjson.loads(document))) is not None:
                found[event_id] = value
    return found


def revenue(document: dict[str, Any]) -> float | None:
    """The event's numeric `revenue` property, if it has one."""
    return property_revenue(document.get("properties", {}))


def property_revenue(properties: dict[str, Any]) -> float | None:
    value = properties.get("revenue")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _journey(funnel: Funnel, attempt: Attempt, steps: list[list[Any]], revenues: dict[str, float]) -> str:
    """The attempt's journey: its steps from t1 to the end of its window, the revenue of each stage's event."""
    start = attempt.times[0]
    end = start + funnel.conversion_window_days * DAY
    inside = [s for s in steps if start <= s[0] <= end]
    return orjson.dumps({"steps": inside, "revenue": [revenues.get(e.event_id) for e in attempt.events]}).decode()


def _transitions(funnel: Funnel, customer: str, before: int, attempt: Attempt, now: datetime,
                 outbox: Outbox, version: Version) -> list[tuple[Any, ...]]:
    """Forward: one transition per stage newly reached, at that stage's event. Backward (a funnel
    edited, events erased): one transition to the stage now held, at `now`. Each is published.
    Rows in TRANSITION_COLUMNS order."""
    stages = funnel.stages
    rows: list[tuple[Any, ...]] = []
    if attempt.depth > before:
        for i in range(before, attempt.depth):
            rows.append((funnel.key, customer, stages[i - 1].key if i else None, stages[i].key,
                         from_epoch(attempt.events[i].at), attempt.events[i].event_id))
    else:
        rows.append((funnel.key, customer, stages[before - 1].key if before else None,
                     stages[attempt.depth - 1].key if attempt.depth else None, now, None))
    for i, (_, _, from_stage, to_stage, at, event_id) in enumerate(rows):
        outbox.add(stage_changed_record(customer, funnel.key, from_stage, to_stage, at, event_id, version.order(i)))
    return rows


def stage_changed_record(customer: str, funnel: str, from_stage: str | None, to_stage: str | None, at: datetime,
                         event_id: str | None, order: str) -> OutgoingRecord:
    """The FunnelStageChanged record `encode` would write, without validating and dumping the
    model (a recount publishes one per stage reached: the model cost more than the rest of the
    transition, issue 13). Only strings, None and a UTC time, which orjson writes as pydantic
    does; tests/funnel/test_stage_records.py holds the two (and their keys) the same."""
    iso = at.isoformat()
    value = orjson.dumps({"customer_id": customer, "funnel": funnel, "from_stage": from_stage, "to_stage": to_stage,
                          "at": iso[:-6] + "Z" if at.tzinfo is UTC else to_iso(at), "event_id": event_id, "order": order})
    dedupe_key = stable_id("funnel", customer, funnel, from_stage, to_stage, iso, order)  # FunnelStageChanged's
    return record_of(FunnelStageChanged, customer, dedupe_key, value)


async def rebuild(session: AsyncSession, funnel: Funnel, now: datetime, outbox: Outbox) -> int:
    """A new or edited funnel: its matches again from the retained events, every attempt recounted."""
    await session.execute(delete(matches).where(matches.c.funnel == funnel.key))
    touched: set[str] = set()
    query = select(events.c.event_id, events.c.customer_id, events.c.type, events.c.name, events.c.document,
                   events.c.channel, events.c.at)
    rows = [EventRow(r.event_id, r.customer_id, r.type, r.name, *stored_parts(r.document), r.channel, r.at, epoch(r.at))
            for r in await session.execute(query)]
    for start in range(0, len(rows), 5000):
        found = _matches(funnel, rows[start:start + 5000])
        await NEW_MATCHES.run(session, found)
        touched |= {m[2] for m in found}
    held = set((await session.execute(select(attempts.c.customer_id).where(attempts.c.funnel == funnel.key))).scalars())
    return await recount(session, funnel, sorted(touched | held), now, outbox)


async def clean_up(session: AsyncSession, now: datetime, retention_days: float) -> None:
    """Hourly: removal markers are deleted (report indexes of those funnels reload: their
    generation moves), and with a retention set, the slim events older than it go (none by
    default). Matches stay: they are the state attempts are counted from."""
    marked = (await session.execute(select(attempts.c.funnel).where(attempts.c.depth == 0).distinct())).scalars().all()
    if marked:
        await session.execute(delete(attempts).where(attempts.c.depth == 0))
        await session.execute(update(funnel_versions).where(funnel_versions.c.funnel.in_(marked))
                              .values(generation=time.time_ns()))
    if (oldest := horizon(now, retention_days)) is not None:
        await session.execute(delete(events).where(events.c.at < oldest))

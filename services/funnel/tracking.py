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
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.funnel.logic import (
    BUILT_IN_KEYS,
    BUILT_INS,
    DAY,
    JOURNEY_TYPES,
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
    links,
    matches,
    segment_members,
    traits,
    transitions,
)
from shared.events import CustomerErased, FunnelStageChanged, Interaction, SegmentChanged
from shared.identity import canonical_ids, chunks, erase, erased_ids, merge_traits, not_erased, relink
from shared.keyed_rows import Key, read_keyed, write_keyed
from shared.metrics import EVENTS_PAST_RETENTION
from shared.outbox import Outbox
from shared.store import hold_lock, insert_ignoring_conflicts

FUNNELS_LOCK = "funnel.definitions"


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
        outbox.publish(FunnelStageChanged(customer_id=customer, funnel=funnel.key, from_stage=funnel.stages[depth - 1].key,
                                          to_stage=None, at=now, order=last))
    for table in (matches, attempts, transitions, funnel_versions):
        await session.execute(delete(table).where(table.c.funnel == funnel.key))
    await session.execute(delete(funnels).where(funnels.c.key == funnel.key))


@dataclass
class Pending:
    """A batch's work: interactions to record, then (funnel, customer) pairs to recount."""

    interactions: list[Interaction] = field(default_factory=list)
    dirty: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))


def epoch(at: datetime) -> float:
    return at.timestamp()


def from_epoch(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


async def record(session: AsyncSession, batch: list[Interaction], now: datetime, retention_days: float,
                 pending: Pending) -> None:
    """Store the events, their matches with every funnel, and the customers' traits."""
    batch = await not_erased(session, erasures, batch)
    canonical = await canonical_ids(session, links, {e.customer_id for e in batch})
    rows = [{"event_id": e.event_id, "customer_id": canonical.get(e.customer_id, e.customer_id), "type": e.type,
             "name": e.name, "document": event_document(e.properties, e.traits, e.context), "channel": e.channel,
             "at": e.occurred_at} for e in batch]
    if not rows:
        return
    copies = _within_retention(rows, horizon(now, retention_days))
    if copies:
        await session.execute(insert_ignoring_conflicts(events, session),
                              [{**r, "document": orjson.dumps(r["document"])} for r in copies])
    await _record_traits(session, [(r["customer_id"], e) for r, e in zip(rows, batch, strict=True) if e.traits])
    on_journeys = {str(r["customer_id"]) for r in rows if r["type"] in JOURNEY_TYPES}
    for funnel in await definitions(session):
        matched = _matches(funnel, rows)
        if matched:
            await session.execute(insert_ignoring_conflicts(matches, session), matched)
            pending.dirty[funnel.key] |= {m["customer_id"] for m in matched}
        pending.dirty[funnel.key] |= on_journeys  # an event inside an attempt's window changes its journey


def horizon(now: datetime, retention_days: float) -> datetime | None:
    """With FUNNEL_EVENTS_RETENTION_DAYS set, the time before which event copies are not kept
    (None: every copy is kept, the default). Matches are kept at any age."""
    return now - timedelta(days=retention_days) if retention_days > 0 else None


def _within_retention(rows: list[dict[str, Any]], oldest: datetime | None) -> list[dict[str, Any]]:
    """The rows whose copy is kept. An event older than the horizon still counts in every funnel
    it matches now (its matches are written); only a funnel created or edited later misses it,
    and its reports say so (`complete_from`)."""
    if oldest is None:
        return rows
    kept = [r for r in rows if r["at"] > oldest]
    if len(kept) < len(rows):
        EVENTS_PAST_RETENTION.labels("funnel").inc(len(rows) - len(kept))
    return kept


def _matches(funnel: Funnel, rows: list[dict[str, object]]) -> list[dict[str, object]]:
    found = []
    stage_mask = StageMasks(funnel)
    for r in rows:
        mask = stage_mask(r["type"], r["name"], r["document"])  # type: ignore[arg-type]
        if mask:
            found.append({"funnel": funnel.key, "event_id": r["event_id"], "customer_id": r["customer_id"],
                          "at": epoch(r["at"]), "stages": mask, "channel": r["channel"]})  # type: ignore[arg-type]
    return found


async def _record_traits(session: AsyncSession, identified: list[tuple[str, Interaction]]) -> None:
    """Latest-wins traits per customer, for breakdowns by `traits.<name>`."""
    if not identified:
        return
    customers = sorted({c for c, _ in identified})
    held = {r.customer_id: (orjson.loads(r.traits), orjson.loads(r.traits_at))
            for chunk in chunks(customers)
            for r in await session.execute(select(traits).where(traits.c.customer_id.in_(chunk)))}
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
    await write_keyed(session, segment_members, "segment", written, inserted)


@dataclass(frozen=True)
class Version:
    generation: int
    number: int

    def order(self, i: int) -> str:
        """Sorts as the transitions were recorded, across edits, cleanups and re-creations of the
        funnel (funnel.v1 consumers keep the latest by it, not by the stage's event time)."""
        return f"{self.generation:020d}.{self.number:012d}.{i:03d}"


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


async def remove_attempts(session: AsyncSession, customers: list[str], funnel_keys: list[str] | None = None) -> None:
    """Customers leave funnels (merged away, erased): their rows become removal markers (depth 0,
    no times, no events) that report indexes apply like any change; the cleanup deletes them."""
    held = (await session.execute(select(attempts.c.funnel).where(attempts.c.customer_id.in_(customers), attempts.c.depth > 0)
                                  .distinct())).scalars().all()
    # Versions in key order, as recounts take them: two batches never lock them crosswise.
    for funnel in sorted(held if funnel_keys is None else [f for f in held if f in funnel_keys]):
        version = await next_version(session, funnel)
        await session.execute(update(attempts).where(attempts.c.funnel == funnel, attempts.c.customer_id.in_(customers))
                              .values(depth=0, times="[]", event_ids="[]", first_at=0.0, reached_at=0.0, channel="",
                                      journey="{}", version=version.number))


async def delete_attempts(session: AsyncSession, customers: list[str]) -> None:
    """Erased customers' attempts go at once, not as removal markers (a marker still names them):
    report indexes of those funnels reload (their generation moves)."""
    held = (await session.execute(select(attempts.c.funnel).where(attempts.c.customer_id.in_(customers))
                                  .distinct())).scalars().all()
    if held:
        await session.execute(delete(attempts).where(attempts.c.customer_id.in_(customers)))
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


async def recount(session: AsyncSession, funnel: Funnel, customers: list[str], now: datetime, outbox: Outbox) -> int:
    """Each customer's counted attempt from their matched events; transitions for stage changes.
    Returns how many customers changed stage."""
    changed = 0
    version = await next_version(session, funnel.key)
    for chunk in chunks(sorted(customers)):
        matched: dict[str, list[Matched]] = defaultdict(list)
        channels: dict[str, str] = {}
        for r in await session.execute(select(matches.c.customer_id, matches.c.event_id, matches.c.at, matches.c.stages,
                                              matches.c.channel)
                                       .where(matches.c.funnel == funnel.key, matches.c.customer_id.in_(chunk))):
            matched[r.customer_id].append(Matched(r.at, r.event_id, r.stages))
            channels[r.event_id] = r.channel
        held = {r.customer_id: r for r in await session.execute(
            select(attempts).where(attempts.c.funnel == funnel.key, attempts.c.customer_id.in_(chunk)))}
        counted = {customer: counted_attempt(funnel, matched.get(customer, [])) for customer in chunk}
        journeys = await _journey_events(session, [c for c in chunk if counted[c].depth])
        revenues = await _revenues(session, [e.event_id for a in counted.values() for e in a.events])
        new, moved, gone, moves = [], [], [], []
        for customer in chunk:
            attempt = counted[customer]
            before = held.get(customer)
            if attempt.depth == 0:
                if before is not None and before.depth > 0:
                    gone.append(customer)
            else:
                row = {**_row(funnel, customer, attempt, channels),
                       "journey": _journey(funnel, attempt, journeys.get(customer, []), revenues), "version": version.number}
                if before is None:
                    new.append(row)
                elif before.event_ids != row["event_ids"] or before.journey != row["journey"]:
                    moved.append({f"b_{k}": v for k, v in row.items()})
            if (before.depth if before is not None else 0) != attempt.depth:
                changed += 1
                moves += _transitions(funnel, customer, before.depth if before is not None else 0, attempt, now, outbox,
                                      version)
        if moves:
            await session.execute(insert(transitions), moves)
        if new:
            await session.execute(insert(attempts), new)
        if moved:
            columns = ("depth", "times", "event_ids", "first_at", "reached_at", "channel", "journey", "version")
            await session.execute(
                update(attempts).where(attempts.c.funnel == bindparam("b_funnel"), attempts.c.customer_id == bindparam("b_customer_id"))
                .values({c: bindparam(f"b_{c}") for c in columns}), moved)
        if gone:
            await remove_attempts(session, gone, [funnel.key])
    return changed


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
                                       .where(events.c.customer_id.in_(chunk), events.c.type.in_(JOURNEY_TYPES))):
            found[r.customer_id].append([epoch(r.at), r.event_id, r.type, step_name(r.type, r.name), r.channel])
    for steps in found.values():
        steps.sort(key=lambda s: (s[0], s[1]))
    return found


async def _revenues(session: AsyncSession, event_ids: list[str]) -> dict[str, float]:
    """The numeric `revenue` property of those events that carry one."""
    found: dict[str, float] = {}
    for chunk in chunks(sorted(set(event_ids))):
        for event_id, document in await session.execute(select(events.c.event_id, events.c.document)
                                                        .where(events.c.event_id.in_(chunk))):
            value = orjson.loads(document).get("properties", {}).get("revenue")
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                found[event_id] = float(value)
    return found


def _journey(funnel: Funnel, attempt: Attempt, steps: list[list[Any]], revenues: dict[str, float]) -> str:
    """The attempt's journey: its steps from t1 to the end of its window, the revenue of each stage's event."""
    start = attempt.times[0]
    end = start + funnel.conversion_window_days * DAY
    inside = [s for s in steps if start <= s[0] <= end]
    return orjson.dumps({"steps": inside, "revenue": [revenues.get(e.event_id) for e in attempt.events]}).decode()


def _transitions(funnel: Funnel, customer: str, before: int, attempt: Attempt, now: datetime,
                 outbox: Outbox, version: Version) -> list[dict[str, object]]:
    """Forward: one transition per stage newly reached, at that stage's event. Backward (a funnel
    edited, events erased): one transition to the stage now held, at `now`. Each is published."""
    stages = [s.key for s in funnel.stages]
    rows: list[dict[str, object]] = []
    if attempt.depth > before:
        for i in range(before, attempt.depth):
            rows.append({"funnel": funnel.key, "customer_id": customer, "from_stage": stages[i - 1] if i else None,
                         "to_stage": stages[i], "at": from_epoch(attempt.times[i]), "event_id": attempt.events[i].event_id})
    else:
        rows.append({"funnel": funnel.key, "customer_id": customer, "from_stage": stages[before - 1] if before else None,
                     "to_stage": stages[attempt.depth - 1] if attempt.depth else None, "at": now, "event_id": None})
    for i, r in enumerate(rows):
        outbox.publish(FunnelStageChanged(customer_id=customer, funnel=funnel.key, from_stage=r["from_stage"],  # type: ignore[arg-type]
                                          to_stage=r["to_stage"], at=r["at"], event_id=r["event_id"],  # type: ignore[arg-type]
                                          order=version.order(i)))
    return rows


async def rebuild(session: AsyncSession, funnel: Funnel, now: datetime, outbox: Outbox) -> int:
    """A new or edited funnel: its matches again from the retained events, every attempt recounted."""
    await session.execute(delete(matches).where(matches.c.funnel == funnel.key))
    touched: set[str] = set()
    query = select(events.c.event_id, events.c.customer_id, events.c.type, events.c.name, events.c.document,
                   events.c.channel, events.c.at)
    rows = [{**r._mapping, "document": orjson.loads(r.document)} for r in await session.execute(query)]
    for start in range(0, len(rows), 5000):
        found = _matches(funnel, rows[start:start + 5000])
        if found:
            await session.execute(insert_ignoring_conflicts(matches, session), found)
            touched |= {m["customer_id"] for m in found}  # type: ignore[misc]
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

"""The facts a preview evaluates, in memory and current by version (as the funnel's report index,
services/funnel/report_index.py), so `POST /api/segments:preview` reads no rows when nothing
changed and only the changed customers' rows otherwise.

The store records which customers' facts changed (`fact_changes`, with a version in commit
order): every writer of profiles, memberships, behaviour events and funnel stages marks the
customers it wrote (`mark_facts_changed`, once per transaction; no triggers since migration 0012);
the index keeps the mark it read up to and re-reads those changed since. A profile deleted or
renamed (erasure, merge) moves `fact_generation` (`forget_facts`) and the index reloads everything. Every replica reading the same store sees
every replica's writes, at the cost of two small queries per preview.

Customers sit in slots in the order they were first seen (no sorting per request); a customer whose
profile went is a dead slot, never matched. Columns are built the first time a rule needs them;
behaviours keep every event of their name that passes their `where` (slot, time), and count those
within the window of the request's `now`.
"""
from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from services.segmentation.facts import (
    MEMBERSHIP_FAMILIES,
    PROFILE_NUMBERS,
    PROFILE_TEXTS,
    ProfileFacts,
    _from_memberships,
    _funnel_stage,
    profile_value,
)
from services.segmentation.rules import FUNNEL_FIELD
from services.segmentation.store import customer_events, fact_changes, fact_generation, profiles
from shared.identity import chunks
from shared.rules import MISSING, Behaviour, Coded, EventFacts, Rule, behaviours, evaluate, fields, lookup, to_json

PROFILE_COLUMNS = sorted({profiles.c.customer_id, profiles.c.traits, profiles.c.revenue, profiles.c.order_count,
                          profiles.c.last_order_at, *PROFILE_NUMBERS.values(), *PROFILE_TEXTS.values()},
                         key=lambda c: c.name)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)


def _micros(at: datetime | None) -> float:
    """A time as µs since 1970 (exact in a float: below 2**53)."""
    return np.nan if at is None else float((at - EPOCH) // MICROSECOND)


@dataclass
class _Events:
    """A behaviour's events (of its name, passing its `where`): each one's slot and time (µs)."""

    slots: NDArray[np.int64]
    at: NDArray[np.float64]


class FactsIndex:
    def __init__(self, generation: int, sqlite: bool) -> None:
        self.generation = generation
        self.sqlite = sqlite  # marks are the last version read (SQLite) or the oldest running transaction
        self.mark: int | None = None  # versions from this one on are re-read
        self.slot: dict[str, int] = {}
        self.ids: list[str] = []
        self.alive: list[bool] = []
        self.rows: list[Any] = []
        self.traits: list[dict[str, Any]] = []
        self.columns: dict[str, list[Any]] = {}
        self.arrays: dict[str, NDArray[np.float64]] = {}  # number columns as numpy, until they change
        self._alive: NDArray[np.bool_] | None = None
        self._rank: NDArray[np.int64] | None = None  # each slot's place among the ids in order
        self._order: NDArray[np.int64] = np.zeros(0, dtype=np.int64)  # the slots in id order
        self.coded: dict[str, Sequence[Any]] = {}  # text columns coded, until they change
        self.events: dict[tuple[str, bytes], _Events] = {}
        self.behaviours: dict[tuple[str, bytes], Behaviour] = {}

    async def facts(self, session: AsyncSession, rules: list[Rule], now: datetime) -> ProfileFacts:
        """Facts over every slot for `rules` at `now` (dead slots read as missing: mask them
        with `alive_mask`)."""
        needed = set().union(*(fields(r) for r in rules))
        for field in sorted(needed - self.columns.keys()):
            self.columns[field] = await self._column(session, field, self.ids)
        columns: dict[str, Sequence[Any] | NDArray[np.float64]] = {}
        for field in needed:
            if field == "rfm.recency_days":  # as (now - last_order_at).total_seconds() / 86400, rounded alike
                columns[field] = (_micros(now) - self._array(field)) / 1e6 / 86400
            elif field in PROFILE_NUMBERS or field == "avg_order_value":
                columns[field] = self._array(field)
            else:
                columns[field] = self._coded(field)
        counts = {}
        for rule in rules:
            for behaviour in behaviours(rule):
                events = await self._events(session, behaviour)
                recent = events.at > _micros(now - timedelta(days=behaviour.within_days))
                counts[id(behaviour)] = np.bincount(events.slots[recent], minlength=len(self.ids)).astype(np.int64)
        return ProfileFacts(self.ids, columns, counts, [])

    def _array(self, field: str) -> NDArray[np.float64]:
        if field not in self.arrays:
            self.arrays[field] = np.array([np.nan if v is None else v for v in self.columns[field]], dtype=np.float64)
        return self.arrays[field]

    def _coded(self, field: str) -> Sequence[Any]:
        """A text or mixed column as its distinct values (tested once each), until it changes."""
        if field not in self.coded:
            try:
                self.coded[field] = Coded(self.columns[field])
            except TypeError:  # an object or array among the values (traits): tested row by row
                self.coded[field] = self.columns[field]
        return self.coded[field]

    def first_ids(self, matched: NDArray[np.int64], n: int) -> list[str]:
        """The `n` smallest ids among the `matched` slots, in order."""
        if self._rank is None:
            self._order = np.argsort(np.array(self.ids, dtype=object))
            self._rank = np.empty(len(self.ids), dtype=np.int64)
            self._rank[self._order] = np.arange(len(self.ids))
        ranks = self._rank[matched]
        if len(ranks) > n:
            ranks = ranks[np.argpartition(ranks, n)[:n]] if n else ranks[:0]
        return [self.ids[self._order[r]] for r in np.sort(ranks)]

    def alive_mask(self) -> NDArray[np.bool_]:
        if self._alive is None:
            self._alive = np.array(self.alive, dtype=bool)
        return self._alive

    async def load(self, session: AsyncSession, customers: list[str] | None) -> None:
        """Read the profiles of `customers` (everyone when None) and every column and behaviour
        built so far for them."""
        found = []
        for chunk in ([None] if customers is None else chunks(sorted(set(customers)))):
            query = select(*PROFILE_COLUMNS)
            if chunk is not None:
                query = query.where(profiles.c.customer_id.in_(chunk))
            found += (await session.execute(query)).all()
        seen = set()
        for row in found:
            seen.add(row.customer_id)
            slot = self.slot.get(row.customer_id)
            if slot is None:
                self._rank = None
                slot = self.slot[row.customer_id] = len(self.ids)
                self.ids.append(row.customer_id)
                self.alive.append(True)
                self.rows.append(row)
                self.traits.append(orjson.loads(row.traits))
                for column in self.columns.values():
                    column.append(MISSING)
            else:
                self.alive[slot], self.rows[slot], self.traits[slot] = True, row, orjson.loads(row.traits)
        gone = [c for c in customers or [] if c not in seen and c in self.slot]
        for customer in gone:
            self.alive[self.slot[customer]] = False
        changed = sorted(seen | set(gone))
        if not changed:
            return
        self.arrays.clear()
        self.coded.clear()
        self._alive = None
        for field, column in self.columns.items():
            for customer, value in zip(changed, await self._column(session, field, changed), strict=True):
                column[self.slot[customer]] = value
        slots = np.array([self.slot[c] for c in changed], dtype=np.int64)
        for key, events in self.events.items():
            keep = ~np.isin(events.slots, slots)
            fresh = await self._read_events(session, self.behaviours[key], changed)
            self.events[key] = _Events(np.concatenate([events.slots[keep], fresh.slots]),
                                       np.concatenate([events.at[keep], fresh.at]))

    async def _column(self, session: AsyncSession, field: str, customers: list[str]) -> list[Any]:
        """The field's values for `customers` (in that order; dead ones missing)."""
        if field in MEMBERSHIP_FAMILIES or FUNNEL_FIELD.match(field):
            everyone = len(customers) == len(self.ids)
            found: list[Any] = []
            for chunk in [customers] if everyone else chunks(customers):
                index = {c: i for i, c in enumerate(chunk)}
                if match := FUNNEL_FIELD.match(field):
                    found += await _funnel_stage(session, match.group(1), index, None if everyone else chunk)
                else:
                    found += await _from_memberships(session, MEMBERSHIP_FAMILIES[field], index, None if everyone else chunk)
            return found
        values = []
        for customer in customers:
            slot = self.slot[customer]
            if not self.alive[slot]:
                values.append(MISSING if field in PROFILE_TEXTS or field.startswith("traits.") else None)
            elif field.startswith("traits."):
                values.append(lookup(self.traits[slot], field.removeprefix("traits.")))
            elif field == "rfm.recency_days":
                values.append(_micros(self.rows[slot].last_order_at))
            else:
                values.append(profile_value(field, self.rows[slot], EPOCH))
        return values

    async def _events(self, session: AsyncSession, behaviour: Behaviour) -> _Events:
        key = (behaviour.event, orjson.dumps(to_json(behaviour.where)) if behaviour.where else b"")
        if key not in self.events:
            self.behaviours[key] = behaviour
            self.events[key] = await self._read_events(session, behaviour, None)
        return self.events[key]

    async def _read_events(self, session: AsyncSession, behaviour: Behaviour, customers: list[str] | None) -> _Events:
        wanted = [customer_events.c.customer_id, customer_events.c.at]
        if behaviour.where:
            wanted.append(customer_events.c.properties)
        rows: list[Any] = []
        for chunk in ([None] if customers is None else chunks(customers)):
            query = select(*wanted).where(customer_events.c.name == behaviour.event)
            if chunk is not None:
                query = query.where(customer_events.c.customer_id.in_(chunk))
            rows += (await session.execute(query)).all()
        if behaviour.where is not None:
            passed = evaluate(behaviour.where, EventFacts([orjson.loads(r.properties) for r in rows]))
            rows = [r for r, ok in zip(rows, passed.tolist(), strict=True) if ok]
        slot, alive = self.slot, self.alive
        kept = [(s, at) for customer, at, *_ in rows if (s := slot.get(customer)) is not None and alive[s]]
        return _Events(np.fromiter((s for s, _ in kept), dtype=np.int64, count=len(kept)),
                       np.fromiter(((at - EPOCH) // MICROSECOND for _, at in kept), dtype=np.float64, count=len(kept)))


class PreviewFacts:
    """The process's FactsIndex, brought up to the store's version before each preview."""

    def __init__(self) -> None:
        self._index: FactsIndex | None = None
        self.lock = asyncio.Lock()  # one preview at a time updates and reads the index

    async def current(self, session: AsyncSession) -> FactsIndex:
        mark = await _mark(session)
        generation = (await session.execute(select(fact_generation.c.generation))).scalar_one()
        index = self._index
        if index is None or index.generation != generation or index.mark is None:
            index = FactsIndex(generation, session.bind.dialect.name == "sqlite")
            await index.load(session, None)
        else:
            since = fact_changes.c.version > index.mark if index.sqlite else fact_changes.c.version >= index.mark
            changed = list((await session.execute(select(fact_changes.c.customer_id).where(since))).scalars())
            if changed:
                await index.load(session, changed)
        index.mark = mark
        self._index = index
        return index


async def _mark(session: AsyncSession) -> int:
    """Where the next read starts: on SQLite the largest version now (writers take turns, so
    versions commit in order); on PostgreSQL the oldest transaction still running (any change not
    yet visible has a version from there on)."""
    if session.bind.dialect.name == "sqlite":
        return int((await session.execute(select(func.coalesce(func.max(fact_changes.c.version), 0)))).scalar_one())
    return int((await session.execute(text("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint"))).scalar_one())

"""Custom segments: their definitions, and keeping their memberships true to their rules.

A customer's custom segments are re-evaluated after each of their events (and funnel moves and
merges); a new or edited rule is evaluated for everyone at once; the scheduled pass re-evaluates
what time or the population can move: rules on RFM or value tiers for everyone, the rest for the
customers the pass touched and those whose counted events left a behaviour's window.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import and_, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.segmentation.evaluation import Wanted, apply
from services.segmentation.facts import ProfileFacts, load_facts
from services.segmentation.logic import builtin_segments
from services.segmentation.rules import POPULATION_FIELDS, parse
from services.segmentation.store import customer_events, mark_facts_changed, segment_definitions
from shared.identity import chunks
from shared.outbox import Outbox
from shared.rules import Rule, behaviours, evaluate, explain, fields, summary


@dataclass(frozen=True)
class Definition:
    key: str
    name: str
    description: str
    rule: Rule
    raw_rule: dict[str, Any]
    created_at: datetime
    updated_at: datetime

    def depends_on_population(self) -> bool:
        """True when time or other customers can change the answer (RFM, value tier)."""
        return bool(fields(self.rule) & set(POPULATION_FIELDS))


async def definitions(session: AsyncSession, keys: list[str] | None = None, after: str | None = None,
                      limit: int | None = None) -> list[Definition]:
    """Custom segments by key: these `keys`, or (paging) the `limit` first after key `after`."""
    query = select(segment_definitions).order_by(segment_definitions.c.key).limit(limit)
    if keys is not None:
        query = query.where(segment_definitions.c.key.in_(keys))
    if after is not None:
        query = query.where(segment_definitions.c.key > after)
    return [Definition(r.key, r.name, r.description, parse(orjson.loads(r.rule)), orjson.loads(r.rule),
                       r.created_at, r.updated_at)
            for r in await session.execute(query)]


async def definition(session: AsyncSession, key: str) -> Definition | None:
    """The custom segment `key` (None: no such custom segment)."""
    found = await definitions(session, [key])
    return found[0] if found else None


async def segment_exists(session: AsyncSession, key: str) -> bool:
    """A built-in segment, or a custom one defined now."""
    return key in builtin_segments() or await definition(session, key) is not None


async def add_definition(session: AsyncSession, d: Definition) -> None:
    await session.execute(insert(segment_definitions).values(
        key=d.key, name=d.name, description=d.description, rule=orjson.dumps(d.raw_rule).decode(),
        created_at=d.created_at, updated_at=d.updated_at))


async def replace_definition(session: AsyncSession, d: Definition) -> None:
    """The held definition of `d.key` takes d's name, description, rule and time of update."""
    await session.execute(update(segment_definitions).where(segment_definitions.c.key == d.key).values(
        name=d.name, description=d.description, rule=orjson.dumps(d.raw_rule).decode(), updated_at=d.updated_at))


async def remove_definition(session: AsyncSession, key: str) -> None:
    await session.execute(delete(segment_definitions).where(segment_definitions.c.key == key))


async def evaluate_custom(
    session: AsyncSession, customer_ids: list[str] | None, now: datetime, outbox: Outbox,
    only: list[Definition] | None = None,
) -> int:
    """Memberships of custom segments (all, or `only`) made true for these customers (everyone
    when None). Returns how many changed."""
    defs = only if only is not None else await definitions(session)
    if not defs or customer_ids == []:
        return 0
    facts = await load_facts(session, [d.rule for d in defs], now, customer_ids)
    masks = {d.key: evaluate(d.rule, facts) for d in defs}
    wanted = [Wanted(c, {}) for c in facts.ids]
    for d in defs:
        for i in masks[d.key].nonzero()[0].tolist():
            wanted[i].segments[d.key] = why(d, facts, i)
    rows = {c: i for i, c in enumerate(facts.ids)}
    by_key = {d.key: d for d in defs}

    def exit_reason(customer: str, segment: str, _: str) -> str:
        i = rows.get(customer)
        return why(by_key[segment], facts, i) if i is not None else "no longer a customer"

    return await apply(session, wanted, tuple(by_key), now, outbox, everyone=customer_ids is None, exit_reason=exit_reason)


def why(definition: Definition, facts: ProfileFacts, row: int) -> str:
    """The conditions that decided, with the customer's values: 'revenue gt 100 (is 250.0)'."""
    return summary(explain(definition.rule, facts.row(row)))


async def window_leavers(session: AsyncSession, defs: list[Definition], last_run: datetime | None, now: datetime) -> set[str]:
    """Customers with a counted event that left a behaviour's window since the last run."""
    found: set[str] = set()
    for b in {(b.event, b.within_days) for d in defs for b in behaviours(d.rule)}:
        event, days = b
        window = timedelta(days=days)
        query = select(customer_events.c.customer_id).where(customer_events.c.name == event,
                                                            customer_events.c.at <= now - window)
        if last_run is not None:
            query = query.where(customer_events.c.at > last_run - window)
        found |= set((await session.execute(query.distinct())).scalars())
    return found


async def reevaluate_custom(session: AsyncSession, touched: set[str], last_run: datetime | None, now: datetime,
                            outbox: Outbox) -> int:
    """The scheduled pass's part: population-dependent rules for everyone, the others for the
    customers the pass touched or whose behaviour windows moved."""
    defs = await definitions(session)
    everyone = [d for d in defs if d.depends_on_population()]
    others = [d for d in defs if not d.depends_on_population()]
    changed = await evaluate_custom(session, None, now, outbox, everyone) if everyone else 0
    if others:
        customers = touched | await window_leavers(session, others, last_run, now)
        changed += await evaluate_custom(session, sorted(customers), now, outbox, others)
    return changed


def horizon(now: datetime, retention_days: float) -> datetime | None:
    """With SEGMENTATION_EVENTS_RETENTION_DAYS set, the time before which behaviour events are not
    kept (None: every event is kept, the default)."""
    return now - timedelta(days=retention_days) if retention_days > 0 else None


def complete_from(rule: Rule, now: datetime, retention_days: float) -> datetime | None:
    """The horizon, when one of the rule's behaviour windows starts before it (what the rule
    counts there is only what is still kept); None when the rule sees every event it asks for."""
    oldest = horizon(now, retention_days)
    if oldest is None or all(now - timedelta(days=b.within_days) >= oldest for b in behaviours(rule)):
        return None
    return oldest


async def prune_events(session: AsyncSession, now: datetime, retention_days: float) -> set[str]:
    """With a retention set, the behaviour events older than it go; returns whose went (their
    custom segments are evaluated again: rules reaching before the horizon count what is left).
    Found name by name, as ranges of the (name, at) index (no index on the time alone: every
    consumed event would write one more entry for a pass that runs once a minute)."""
    oldest = horizon(now, retention_days)
    if oldest is None:
        return set()
    customers: set[str] = set()
    for names in chunks(await event_names(session)):
        old = and_(customer_events.c.name.in_(names), customer_events.c.at < oldest)
        found = set((await session.execute(select(customer_events.c.customer_id).where(old).distinct())).scalars())
        if found:
            await session.execute(customer_events.delete().where(old))
            customers |= found
    await mark_facts_changed(session, customers)
    return customers


async def event_names(session: AsyncSession) -> list[str]:
    """The names behaviour events are kept under, each the next one down the (name, at) index."""
    first = select(func.min(customer_events.c.name))
    names: list[str] = []
    while (name := await session.scalar(first.where(customer_events.c.name > names[-1]) if names else first)) is not None:
        names.append(name)
    return names

"""Recording a batch of interactions into profiles, orders and the behaviour store, in a few bulk
statements per batch (not per event); each customer's latest stage per funnel; and a customers.v1
link, which folds the merged id's profile into the customer's.

Order-safe: first/last seen are min/max, a trait keeps the value of its latest identify, the
first-touch channel is the channel of the earliest event, and order figures are recomputed from
the orders table, so late and repeated events give the same profile as events in order.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from operator import attrgetter
from typing import Any, NamedTuple

import orjson
from sqlalchemy import ColumnElement, Integer, Row, bindparam, case, delete, func, insert, literal_column, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.segmentation.evaluation import Wanted, apply
from services.segmentation.feedback import SURVEY_EVENT, record_answers, refresh_feedback
from services.segmentation.store import (
    customer_events,
    erasures,
    forget_facts,
    funnel_stages,
    links,
    mark_facts_changed,
    orders,
    profile,
    profiles,
    survey_answers,
)
from shared.bulk import BulkWrite, inserting_new
from shared.events import FunnelStageChanged, Interaction
from shared.identity import canonical_ids, chunks, erasure_times, later_move, merge_traits, relink
from shared.keyed_rows import read_keyed
from shared.metrics import EVENTS_PAST_RETENTION
from shared.store import among
from shared.outbox import Outbox

ORDER_EVENT = "Order Completed"
MAX_AMOUNT = 1e12  # as ingest accepts (services/ingest/messages.py): any sum of them stays finite
# What behaviour conditions call page and screen views (Segment's names for them in destinations).
VIEW_EVENTS = {"page": "Page Viewed", "screen": "Screen Viewed"}
# A redelivered event's rows are there already: kept as they are.
NEW_ORDERS = BulkWrite(inserting_new(orders), ("event_id", "customer_id", "at", "amount"))
# What events fold into a held profile (`_fold`): written back per customer.
FOLDED = ("traits", "traits_at", "first_seen", "last_seen", "event_count", "channel", "channel_at")


def order_totals(customer: ColumnElement[str]) -> dict[str, Any]:
    """Order count, revenue and last order of `customer`, from its orders: summed where the rows
    are (no round trip of the totals through Python)."""
    theirs = orders.c.customer_id == customer
    return {"order_count": select(func.count()).where(theirs).scalar_subquery(),
            "revenue": select(func.coalesce(func.sum(orders.c.amount), literal_column("0.0"))).where(theirs).scalar_subquery(),
            "last_order_at": select(func.max(orders.c.at)).where(theirs).scalar_subquery()}


def _folding() -> BulkWrite:
    """The update of a held profile with its events (`FOLDED`), and with its order totals again
    when the batch has orders of its customer (`b_orders` 1): one statement for both kinds of
    profile, so a batch makes one round trip fewer (one write of the row, one mark of its facts)."""
    def build(_: str) -> Any:
        values: dict[str, Any] = {c: bindparam(f"b_{c}", type_=profiles.c[c].type) for c in FOLDED}
        ordered = bindparam("b_orders", type_=Integer) == literal_column("1")
        totals = {c: case((ordered, total), else_=profiles.c[c]) for c, total in order_totals(profiles.c.customer_id).items()}
        return (update(profiles).where(profiles.c.customer_id == bindparam("b_customer_id", type_=profiles.c.customer_id.type))
                .values(values | totals))
    return BulkWrite(build, ("b_customer_id", *(f"b_{c}" for c in FOLDED), "b_orders"))


def _creating(with_orders: bool) -> BulkWrite:
    """The insert of a new profile: no orders, or the order totals of the orders the batch holds."""
    if not with_orders:
        return BulkWrite(lambda _: insert(profiles), ("customer_id", *FOLDED, "order_count", "revenue"))

    def build(_: str) -> Any:
        values: dict[str, Any] = {c: bindparam(c, type_=profiles.c[c].type) for c in ("customer_id", *FOLDED)}
        return insert(profiles).values(values | order_totals(bindparam("customer_id", type_=profiles.c.customer_id.type)))
    return BulkWrite(build, ("customer_id", *FOLDED))


FOLD_INTO_PROFILES = _folding()
NEW_PROFILES = {with_orders: _creating(with_orders) for with_orders in (False, True)}
NO_ORDERS = (0, 0.0)  # a new profile's order count and revenue
NO_TRAITS = orjson.dumps({})  # a new profile's traits and their times
NEW_STAGES = BulkWrite(lambda _: insert(funnel_stages), ("customer_id", "funnel", "stage", "at", "seq"))  # StageMove's order
MOVED_STAGES = BulkWrite(
    lambda _: update(funnel_stages).where(
        funnel_stages.c.customer_id == bindparam("k_customer", type_=funnel_stages.c.customer_id.type),
        funnel_stages.c.funnel == bindparam("k_funnel", type_=funnel_stages.c.funnel.type))
    .values({c: bindparam(f"v_{c}", type_=funnel_stages.c[c].type) for c in ("stage", "at", "seq")}),
    ("v_stage", "v_at", "v_seq", "k_customer", "k_funnel"))
_OCCURRED_AT = attrgetter("occurred_at")
NEW_BEHAVIOUR = BulkWrite(inserting_new(customer_events), ("event_id", "customer_id", "name", "at", "properties"))


def order_amount(properties: dict[str, Any]) -> float:
    """`revenue`, else `total`, else `value` (Segment e-commerce spec); numbers or numeric text.
    Only 0 to MAX_AMOUNT is an amount: NaN and infinities would poison revenue and every tier,
    two amounts of 1.7e308 add up to infinity, and a negative order is no order (ingest rejects
    all of these; records from before it did still reach a replay)."""
    for key in ("revenue", "total", "value"):
        value = properties.get(key)
        if isinstance(value, bool) or value is None:
            continue
        try:
            amount = float(value)
        except (TypeError, ValueError, OverflowError):
            continue
        if 0 <= amount <= MAX_AMOUNT:
            return amount
    return 0.0


@dataclass(frozen=True)
class Identities:
    """What the store knows of a batch's ids: when each erased one was erased, and the customer
    each merged one names now. Read once for a batch's interactions and stage moves together."""

    erased: dict[str, datetime]
    canonical: dict[str, str]

    def named(self, customer_id: str) -> str:
        return self.canonical.get(customer_id, customer_id)

    def erased_since(self, at: datetime, *ids: str | None) -> bool:
        """Was one of these ids erased at or after `at`? An event then about it is dropped (late or
        replayed): a tombstone keeps an erased customer from coming back."""
        return any(i in self.erased and at <= self.erased[i] for i in ids if i)


async def identities(session: AsyncSession, interactions: list[Interaction], moves: list[FunnelStageChanged]) -> Identities:
    """Erasures of every id the events name, and links of the customers they are about."""
    customers = {e.customer_id for e in interactions} | {e.customer_id for e in moves}
    named = customers | {e.user_id for e in interactions} | {e.anonymous_id for e in interactions}
    return Identities(await erasure_times(session, erasures, named), await canonical_ids(session, links, customers))


async def record_interactions(session: AsyncSession, events: list[Interaction], now: datetime,
                              retention_days: float, known: Identities) -> set[str]:
    """Apply the events (`known`: `identities` of them); returns the (canonical) customers whose
    profile changed. One pass over the events sorts them out (issue 13: what runs per event is
    kept to a few dictionary and list operations)."""
    if known.erased:
        events = [e for e in events if not known.erased_since(e.occurred_at, e.customer_id, e.user_id, e.anonymous_id)]
    named = known.canonical.get
    by_customer: dict[str, list[Interaction]] = defaultdict(list)
    answers: list[tuple[str, Interaction]] = []
    order_rows: list[tuple[Any, ...]] = []
    behaviour_rows: list[tuple[Any, ...]] = []
    dumps = orjson.dumps
    for e in events:
        customer = named(e.customer_id, e.customer_id)
        by_customer[customer].append(e)
        kind = e.type
        if kind == "track":
            name = e.name
            if name:
                if name == ORDER_EVENT:
                    order_rows.append((e.event_id, customer, e.occurred_at, order_amount(e.properties)))
                elif name == SURVEY_EVENT:
                    answers.append((customer, e))
                behaviour_rows.append((e.event_id, customer, name, e.occurred_at, dumps(e.properties)))
        elif kind in VIEW_EVENTS:  # a page or screen view, its name in the properties kept
            behaviour_rows.append((e.event_id, customer, VIEW_EVENTS[kind], e.occurred_at,
                                   dumps({**e.properties, "name": e.name} if e.name else e.properties)))
    if order_rows:
        await NEW_ORDERS.run(session, order_rows)  # first: the profile writes sum them up
    await _fold_profiles(session, by_customer, {customer for _, customer, _, _ in order_rows})
    await record_answers(session, answers)
    # their facts were marked changed with their profile writes above (one mark per transaction)
    await NEW_BEHAVIOUR.run(session, _within_retention(behaviour_rows, now, retention_days))
    return set(by_customer)


def _within_retention(rows: list[tuple[Any, ...]], now: datetime, retention_days: float) -> list[tuple[Any, ...]]:
    """The behaviour events kept: all by default. With a retention set, one older than it still
    counts in the profile (orders, revenue, first seen, traits) but is not kept for behaviour
    conditions; rules whose window reaches before the horizon say so (`complete_from`)."""
    if retention_days <= 0:
        return rows
    oldest = now - timedelta(days=retention_days)
    kept = [r for r in rows if r[3] > oldest]  # (event_id, customer_id, name, at, properties)
    if len(kept) < len(rows):
        EVENTS_PAST_RETENTION.labels("segmentation").inc(len(rows) - len(kept))
    return kept


async def _fold_profiles(session: AsyncSession, by_customer: dict[str, list[Interaction]], ordering: set[str]) -> None:
    """Each customer's profile with their events folded in; with their order totals again, from
    the orders table, for those with orders among them (`ordering`)."""
    held: dict[str, Any] = {}
    for chunk in chunks(list(by_customer)):
        held |= {r.customer_id: r for r in await session.execute(select(
            profiles.c.customer_id, profiles.c.traits, profiles.c.traits_at, profiles.c.first_seen, profiles.c.last_seen,
            profiles.c.event_count, profiles.c.channel, profiles.c.channel_at).where(among(profiles.c.customer_id, chunk, session)))}
    new: dict[bool, list[tuple[Any, ...]]] = {False: [], True: []}
    changed: list[tuple[Any, ...]] = []
    for customer, events in by_customer.items():
        row = held.get(customer)
        folded = (customer, *_folded(row._mapping if row else None, events))
        if row:
            changed.append((*folded, 1 if customer in ordering else 0))
        elif customer in ordering:
            new[True].append(folded)
        else:
            new[False].append((*folded, *NO_ORDERS))
    for with_orders in (False, True):
        await NEW_PROFILES[with_orders].run(session, new[with_orders])
    await FOLD_INTO_PROFILES.run(session, changed)
    await mark_facts_changed(session, by_customer)  # and their behaviour events: `apply` marks none of them again


def _folded(p: Mapping[str, Any] | None, events: list[Interaction]) -> tuple[Any, ...]:
    """The profile (`FOLDED` columns, traits encoded) after these events, from the held one (its
    `FOLDED` columns as stored) or none: what folding them one at a time with `_fold` gives, in a
    loop over the events that makes no dictionaries."""
    # The events' own bounds first, then one comparison each with the held profile: its times
    # come from the store in another tzinfo, which makes every comparison with them 20x slower.
    earliest = min(events, key=_OCCURRED_AT)  # the first of the earliest: its channel is the first touch
    latest = max(map(_OCCURRED_AT, events))
    first_seen = channel_at = earliest.occurred_at
    channel = earliest.channel
    if p is None:
        traits, traits_at, last_seen, count = NO_TRAITS, NO_TRAITS, latest, 0
    else:
        traits, traits_at, count = p["traits"], p["traits_at"], p["event_count"]
        if not first_seen < p["first_seen"]:
            first_seen = p["first_seen"]
        last_seen = latest if latest > p["last_seen"] else p["last_seen"]
        if p["channel_at"] is not None and not channel_at < p["channel_at"]:
            channel, channel_at = p["channel"], p["channel_at"]
    identified = [e for e in events if e.traits]
    if identified:  # else the traits stay as they are stored: no decoding and encoding them again
        traits, traits_at = _set_traits(orjson.loads(traits), orjson.loads(traits_at), identified)
    return (traits, traits_at, first_seen, last_seen, count + len(events), channel, channel_at)


def _set_traits(traits: dict[str, Any], traits_at: dict[str, str], events: list[Interaction]) -> tuple[bytes, bytes]:
    """Per trait, the value set latest (merge_traits; a later event wins a tie), encoded."""
    for e in events:
        stamp = e.occurred_at.isoformat()
        for name, value in e.traits.items():
            if name not in traits_at or stamp >= traits_at[name]:
                traits[name], traits_at[name] = value, stamp
    return orjson.dumps(traits), orjson.dumps(traits_at)


def _loaded(row: Row[Any]) -> dict[str, Any]:
    """The part of a profile row that events fold into, traits decoded."""
    return {"traits": orjson.loads(row.traits), "traits_at": orjson.loads(row.traits_at), "first_seen": row.first_seen,
            "last_seen": row.last_seen, "event_count": row.event_count, "channel": row.channel,
            "channel_at": row.channel_at}


def _stored(p: dict[str, Any]) -> dict[str, Any]:
    return {**p, "traits": orjson.dumps(p["traits"]), "traits_at": orjson.dumps(p["traits_at"])}


def _fold(p: dict[str, Any] | None, e: Interaction) -> dict[str, Any]:
    """The profile after one more event, whatever the order the events come in."""
    at = e.occurred_at
    one = {"traits": dict(e.traits), "traits_at": {name: at.isoformat() for name in e.traits}, "first_seen": at,
           "last_seen": at, "event_count": 1, "channel": e.channel, "channel_at": at}
    return one if p is None else _combined(p, one)


def _combined(mine: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
    """Two profiles of one customer as one, in either order: per trait the value set latest, the
    earliest first and latest last seen, both event counts, and the channel of the first touch."""
    traits, traits_at = merge_traits((mine["traits"], mine["traits_at"]), (theirs["traits"], theirs["traits_at"]))
    older_touch = theirs["channel_at"] is not None and (mine["channel_at"] is None or theirs["channel_at"] < mine["channel_at"])
    return {"traits": traits, "traits_at": traits_at, "first_seen": min(mine["first_seen"], theirs["first_seen"]),
            "last_seen": max(mine["last_seen"], theirs["last_seen"]), "event_count": mine["event_count"] + theirs["event_count"],
            "channel": theirs["channel"] if older_touch else mine["channel"],
            "channel_at": theirs["channel_at"] if older_touch else mine["channel_at"]}


async def refresh_orders(session: AsyncSession, customers: list[str]) -> None:
    """Order count, revenue and last order of these customers, from their orders: one UPDATE per
    chunk that sums where the rows are."""
    for chunk in chunks(customers):
        await session.execute(update(profiles).where(among(profiles.c.customer_id, chunk, session))
                              .values(order_totals(profiles.c.customer_id)))
    await mark_facts_changed(session, customers)


class StageMove(NamedTuple):
    """A customer's stage in a funnel, as a move on funnel.v1 or a row a merged customer held."""

    customer_id: str
    funnel: str
    stage: str | None
    at: datetime
    seq: str | None  # FunnelStageChanged.order: sorts as the funnel service recorded the moves


async def keep_later_stages(session: AsyncSession, moves: list[StageMove]) -> set[str]:
    """Each move, in order, replaces the held stage of its (customer, funnel) when it is at least
    as recent (`later_move`: by the recorded order when both have one, else by time), so a late
    move never wins, whether it comes on funnel.v1 or with a merged customer. Returns whose stage
    was written."""
    held = await read_keyed(session, funnel_stages, "funnel", ((m.customer_id, m.funnel) for m in moves))
    latest: dict[tuple[str, str], StageMove] = {}
    for move in moves:
        key = (move.customer_id, move.funnel)
        before = latest.get(key)
        if before is not None:
            if not later_move(move.seq, move.at, before.seq, before.at):
                continue
        elif (row := held.get(key)) is not None and not later_move(move.seq, move.at, row["seq"], row["at"]):
            continue
        latest[key] = move
    # Rows in one order, (customer, funnel), in every writer: two that meet wait, not deadlock.
    written = sorted(latest.items())
    await NEW_STAGES.run(session, [move for key, move in written if key not in held])
    await MOVED_STAGES.run(session, [(m.stage, m.at, m.seq, m.customer_id, m.funnel) for key, m in written if key in held])
    moved = {customer for customer, _ in latest}
    await mark_facts_changed(session, moved)
    return moved


async def record_stage_moves(session: AsyncSession, events: list[FunnelStageChanged], known: Identities) -> set[str]:
    """Each move, in order, replaces the held stage of its (canonical customer, funnel) if it is
    the later one; moves about a customer erased after them are dropped (`known`: `identities` of
    them). Returns who moved."""
    if known.erased:
        events = [e for e in events if not known.erased_since(e.at, e.customer_id)]
    named = known.canonical.get
    return await keep_later_stages(session, [StageMove(named(e.customer_id, e.customer_id), e.funnel, e.to_stage, e.at, e.order)
                                             for e in events])


async def merge_customer(session: AsyncSession, merged_id: str, customer: str, now: datetime, outbox: Outbox) -> None:
    """A customers.v1 link: `merged_id` names `customer` from now on; its profile, orders,
    behaviour events, answers and stages move to `customer`, and its memberships end."""
    await relink(session, links, merged_id, customer)
    old = await profile(session, merged_id)
    if old is None:
        return
    for table in (orders, customer_events, survey_answers):
        await session.execute(update(table).where(table.c.customer_id == merged_id).values(customer_id=customer))
    await _merge_funnel_stages(session, merged_id, customer)
    await apply(session, [Wanted(merged_id, {})], None, now, outbox)
    await session.execute(delete(profiles).where(profiles.c.customer_id == merged_id))
    await forget_facts(session, [merged_id])
    into = await profile(session, customer)
    if into is None:
        await session.execute(insert(profiles).values({**old._mapping, "customer_id": customer}))
    else:
        await session.execute(update(profiles).where(profiles.c.customer_id == customer).values(
            _stored(_combined(_loaded(into), _loaded(old)))))
    await mark_facts_changed(session, [customer])  # its profile, events, orders and stages
    await refresh_orders(session, [customer])
    await refresh_feedback(session, [customer])


async def _merge_funnel_stages(session: AsyncSession, merged_id: str, customer: str) -> None:
    """Per funnel, the later of the two stages stays on `customer`, decided as for a move on
    funnel.v1 (by the recorded order, not only by time)."""
    theirs = (await session.execute(select(funnel_stages).where(funnel_stages.c.customer_id == merged_id))).all()
    await session.execute(delete(funnel_stages).where(funnel_stages.c.customer_id == merged_id))
    await keep_later_stages(session, [StageMove(customer, r.funnel, r.stage, r.at, r.seq) for r in theirs])

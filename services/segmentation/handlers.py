"""What segmentation does with each consumed event: keep profiles, then re-evaluate the customer.

Interactions are recorded, and customers evaluated, once per consumed batch (see
`Transaction.defer`): recording is order-safe (`recording`), so applying a batch's interactions
after its links and erasures gives the state the events would give one by one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import orjson
from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.segmentation.custom import evaluate_custom
from services.segmentation.evaluation import Wanted, apply, evaluate_customers
from services.segmentation.feedback import refresh_feedback
from services.segmentation.logic import Thresholds
from services.segmentation.recording import StageMove, keep_later_stages, record_interactions, refresh_orders
from services.segmentation.store import (
    bus_tables,
    customer_events,
    erasures,
    funnel_stages,
    history,
    links,
    memberships,
    orders,
    profiles,
    survey_answers,
)
from shared.consumer import Handlers, Transaction, handlers_of, on
from shared.events import CustomerErased, CustomerLinked, ErasureRecorded, FunnelStageChanged, Interaction
from shared.identity import (
    canonical_ids,
    drop_outgoing_about,
    erase,
    erasure_times,
    merge_traits,
    on_erasure_recorded,
    relink,
)


async def canonical(session: AsyncSession, customer_id: str) -> str:
    return (await canonical_ids(session, links, [customer_id])).get(customer_id, customer_id)


@dataclass
class Batch:
    """What the handlers leave for the end of the batch: interactions to record, customers to
    evaluate (each once, however many of their events the batch holds)."""

    interactions: list[Interaction] = field(default_factory=list)
    dirty: set[str] = field(default_factory=set)
    stages: list[FunnelStageChanged] = field(default_factory=list)


def make_handlers(thresholds: Thresholds, retention_days: float) -> Handlers:
    def batch(tx: Transaction) -> Batch:
        found: Batch = tx.state.setdefault("segmentation", Batch())
        return found

    def evaluate(customer: str, tx: Transaction) -> None:
        batch(tx).dirty.add(customer)

        async def evaluate_dirty() -> None:
            customers = sorted(batch(tx).dirty)
            batch(tx).dirty.clear()
            await evaluate_customers(tx.session, customers, tx.now, thresholds, tx.outbox)
            await evaluate_custom(tx.session, customers, tx.now, tx.outbox)

        tx.defer("segmentation.evaluate", evaluate_dirty)

    async def on_interaction(event: Interaction, tx: Transaction) -> None:
        batch(tx).interactions.append(event)

        async def record() -> None:
            events, batch(tx).interactions = batch(tx).interactions, []
            for customer in await record_interactions(tx.session, events, tx.now, retention_days):
                evaluate(customer, tx)

        tx.defer("segmentation.record", record)

    async def on_linked(event: CustomerLinked, tx: Transaction) -> None:
        await record_stages(tx)  # the stage changes before it first, as they came
        await _merge(tx, event.merged_id, event.customer_id, tx.now)
        evaluate(event.customer_id, tx)

    async def on_funnel_stage(event: FunnelStageChanged, tx: Transaction) -> None:
        """The customer's latest stage per funnel (latest recorded move, so late ones do not win),
        kept for the whole batch at once before its end (or before a link or erasure in it)."""
        batch(tx).stages.append(event)
        tx.defer("segmentation.stages", lambda: record_stages(tx))

    async def record_stages(tx: Transaction) -> None:
        events, batch(tx).stages = batch(tx).stages, []
        if events:
            for customer in await _record_stages(tx.session, events):
                evaluate(customer, tx)

    async def on_erased(event: CustomerErased, tx: Transaction) -> None:
        await record_stages(tx)
        everyone = await erase(tx.session, links, erasures, event,
                               (profiles, orders, memberships, history, customer_events, funnel_stages, survey_answers),
                               bus_tables.outbox)
        batch(tx).dirty.difference_update(everyone)
        drop_outgoing_about(tx, everyone)

    async def on_hashed_erasure(event: ErasureRecorded, tx: Transaction) -> None:
        await on_erasure_recorded(tx.session, erasures, event)

    return handlers_of(on(Interaction, on_interaction), on(CustomerLinked, on_linked), on(CustomerErased, on_erased),
                       on(ErasureRecorded, on_hashed_erasure), on(FunnelStageChanged, on_funnel_stage))


async def _record_stages(session: AsyncSession, events: list[FunnelStageChanged]) -> set[str]:
    """Each move, in order, replaces the held stage of its (canonical customer, funnel) if it is
    the later one; moves about a customer erased after them are dropped. Returns who moved."""
    erased = await erasure_times(session, erasures, (e.customer_id for e in events))
    events = [e for e in events if not (e.customer_id in erased and e.at <= erased[e.customer_id])]
    canonical = await canonical_ids(session, links, (e.customer_id for e in events))
    return await keep_later_stages(session, [
        StageMove(canonical.get(e.customer_id, e.customer_id), e.funnel, e.to_stage, e.at, e.order) for e in events])


async def _merge(tx: Transaction, merged_id: str, customer: str, now: datetime) -> None:
    """`merged_id`'s profile, orders and links move to `customer`; its memberships end."""
    session = tx.session
    await relink(session, links, merged_id, customer)
    old = (await session.execute(select(profiles).where(profiles.c.customer_id == merged_id))).first()
    if old is None:
        return
    await session.execute(update(orders).where(orders.c.customer_id == merged_id).values(customer_id=customer))
    await session.execute(update(customer_events).where(customer_events.c.customer_id == merged_id).values(customer_id=customer))
    await session.execute(update(survey_answers).where(survey_answers.c.customer_id == merged_id).values(customer_id=customer))
    await _merge_funnel_stages(session, merged_id, customer)
    await apply(session, [Wanted(merged_id, {})], None, now, tx.outbox)
    await session.execute(delete(profiles).where(profiles.c.customer_id == merged_id))
    into = (await session.execute(select(profiles).where(profiles.c.customer_id == customer))).first()
    if into is None:
        await session.execute(insert(profiles).values({**old._mapping, "customer_id": customer}))
    else:
        traits, traits_at = merge_traits(
            (orjson.loads(into.traits), orjson.loads(into.traits_at)), (orjson.loads(old.traits), orjson.loads(old.traits_at)))
        older_touch = old.channel_at is not None and (into.channel_at is None or old.channel_at < into.channel_at)
        await session.execute(update(profiles).where(profiles.c.customer_id == customer).values(
            traits=orjson.dumps(traits), traits_at=orjson.dumps(traits_at),
            first_seen=min(into.first_seen, old.first_seen), last_seen=max(into.last_seen, old.last_seen),
            event_count=into.event_count + old.event_count,
            channel=old.channel if older_touch else into.channel,
            channel_at=old.channel_at if older_touch else into.channel_at))
    await refresh_orders(session, [customer])
    await refresh_feedback(session, [customer])


async def _merge_funnel_stages(session: AsyncSession, merged_id: str, customer: str) -> None:
    """Per funnel, the later of the two stages stays on `customer`, decided as for a move on
    funnel.v1 (by the recorded order, not only by time)."""
    theirs = (await session.execute(select(funnel_stages).where(funnel_stages.c.customer_id == merged_id))).all()
    await session.execute(delete(funnel_stages).where(funnel_stages.c.customer_id == merged_id))
    await keep_later_stages(session, [StageMove(customer, r.funnel, r.stage, r.at, r.seq) for r in theirs])


"""What the follow-up service does with each consumed event: segment entries and funnel stages
create follow-ups by policy; exits and cancelling stages close them; links merge, erasures remove.

Customer ids on segments.v1 and funnel.v1 are already canonical (those services merge
identities themselves). Every follow-up a bus event creates is keyed by that event (`trigger_key`), so a redelivery or a
replay never makes a second one; follow-ups are due relative to the event's time, not to when it
was consumed, so a replay gives the same schedule.
"""
from __future__ import annotations

from datetime import timedelta

from sqlalchemy import and_, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.followup.followups import Versioned, cancel_for, close, create, current_policies
from services.followup.store import deliveries, erasures, followups, links, memberships, stages
from shared.consumer import Handlers, Transaction
from shared.events import CustomerErased, CustomerLinked, Event, FunnelStageChanged, SegmentChanged
from shared.identity import erase, later_move
from shared.store import insert_ignoring_conflicts


async def _erased(session: AsyncSession, customer: str, at: object) -> bool:
    erased_at = await session.scalar(select(erasures.c.at).where(erasures.c.customer_id == customer))
    return erased_at is not None and at <= erased_at  # type: ignore[operator]


def make_handlers(grace: timedelta) -> Handlers:
    async def segment_changed(event: Event, tx: Transaction) -> None:
        await on_segment_changed(event, tx, grace)

    async def stage_changed(event: Event, tx: Transaction) -> None:
        await on_stage_changed(event, tx, grace)

    async def linked(event: Event, tx: Transaction) -> None:
        await on_linked(event, tx, grace)

    return {SegmentChanged: [segment_changed], FunnelStageChanged: [stage_changed], CustomerLinked: [linked],
            CustomerErased: [on_erased]}


async def _policies(tx: Transaction) -> dict[str, Versioned]:
    """The policies in force, read once per consumed batch (a first scheduled pass in segmentation
    publishes hundreds of thousands of segment changes; policies change only through the API)."""
    if "followup.policies" not in tx.state:
        tx.state["followup.policies"] = await current_policies(tx.session)
    found: dict[str, Versioned] = tx.state["followup.policies"]
    return found


async def on_segment_changed(event: Event, tx: Transaction, grace: timedelta) -> None:
    assert isinstance(event, SegmentChanged)
    session = tx.session
    if await _erased(session, event.customer_id, event.at):
        return
    customer = event.customer_id  # segmentation publishes canonical ids (it merges profiles itself)
    key = (memberships.c.customer_id == customer, memberships.c.segment == event.segment)
    held = await session.scalar(select(memberships.c.at).where(*key))
    if held is not None and event.at < held:
        return  # an older change than the one held (late): membership stays
    member = int(event.change == "entered")
    if held is None:
        await session.execute(insert(memberships).values(customer_id=customer, segment=event.segment, member=member, at=event.at))
    else:
        await session.execute(update(memberships).where(*key).values(member=member, at=event.at))
    policies = await _policies(tx)
    if event.change == "entered":
        for versioned in policies.values():
            trigger = versioned.policy.trigger
            if trigger.on == "segment_entered" and trigger.segment == event.segment:
                await create(session, versioned, customer, event.at + timedelta(hours=versioned.policy.due_in_hours),
                             f"entered {event.segment}" + (f": {event.reason}" if event.reason else ""),
                             f"segment|{event.dedupe_key()}|{versioned.policy.key}", tx.now, tx.outbox, grace)
    else:
        cancelled = [key for key, v in policies.items() if v.policy.cancelled_by_exit(event.segment)]
        await cancel_for(session, customer, cancelled, f"left {event.segment}", tx.now, tx.outbox, grace)


async def on_stage_changed(event: Event, tx: Transaction, grace: timedelta) -> None:
    assert isinstance(event, FunnelStageChanged)
    session = tx.session
    if await _erased(session, event.customer_id, event.at):
        return
    customer = event.customer_id  # the funnel service publishes canonical ids
    key = (stages.c.customer_id == customer, stages.c.funnel == event.funnel)
    held = (await session.execute(select(stages.c.stage, stages.c.since, stages.c.seq).where(*key))).first()
    if held is not None and not later_move(event.order, event.at, held.seq, held.since):
        return  # late: a newer move is held
    if held is None:
        await session.execute(insert(stages).values(customer_id=customer, funnel=event.funnel, stage=event.to_stage,
                                                    since=event.at, seq=event.order))
    else:
        await session.execute(update(stages).where(*key).values(stage=event.to_stage, since=event.at, seq=event.order))
    policies = await _policies(tx)
    # A customer who moved on is no longer stalled where they were; a cancelling stage closes too.
    cancelled = [k for k, v in policies.items()
                 if (event.to_stage is not None and v.policy.cancelled_by_stage(event.funnel, event.to_stage))
                 or (v.policy.trigger.on == "stage_stalled" and v.policy.trigger.funnel == event.funnel
                     and v.policy.trigger.stage != event.to_stage)]
    if cancelled:
        reason = f"entered {event.funnel}/{event.to_stage}" if event.to_stage else f"left funnel {event.funnel}"
        await cancel_for(session, customer, cancelled, reason, tx.now, tx.outbox, grace)
    if event.to_stage is None:
        return
    for versioned in policies.values():
        trigger = versioned.policy.trigger
        if trigger.on == "stage_entered" and (trigger.funnel, trigger.stage) == (event.funnel, event.to_stage):
            await create(session, versioned, customer, event.at + timedelta(hours=versioned.policy.due_in_hours),
                         f"entered {event.funnel}/{event.to_stage}", f"stage|{event.dedupe_key()}|{versioned.policy.key}",
                         tx.now, tx.outbox, grace)


async def on_linked(event: Event, tx: Transaction, grace: timedelta) -> None:
    """The merged id's follow-ups and state become the customer's; where both had one open under
    the same policy, the merged id's is cancelled (one open per customer and policy)."""
    assert isinstance(event, CustomerLinked)
    session, merged, customer = tx.session, event.merged_id, event.customer_id
    await session.execute(update(links).where(links.c.customer_id == merged).values(customer_id=customer))
    dialect = session.bind.dialect.name if session.bind else "sqlite"
    await session.execute(insert_ignoring_conflicts(links, dialect).values(alias_id=merged, customer_id=customer))
    theirs = select(followups.c.policy).where(followups.c.customer_id == customer, followups.c.open_slot.is_not(None))
    await close(session, and_(followups.c.customer_id == merged, followups.c.policy.in_(theirs)), "cancelled", tx.now,
                tx.outbox, grace, f"merged into {customer}, who has one open under the same policy")
    opened = await session.execute(select(followups.c.id, followups.c.policy).where(
        followups.c.customer_id == merged, followups.c.open_slot.is_not(None)))
    for followup_id, policy in opened.all():
        await session.execute(update(followups).where(followups.c.id == followup_id).values(
            open_slot=f"{customer}|{policy}"))
    await session.execute(update(followups).where(followups.c.customer_id == merged).values(customer_id=customer))
    # Segmentation and funnel publish the merged customer's memberships and stages themselves.
    for table in (memberships, stages):
        await session.execute(delete(table).where(table.c.customer_id == merged))


async def on_erased(event: Event, tx: Transaction) -> None:
    assert isinstance(event, CustomerErased)
    session = tx.session
    everyone = [event.customer_id, *event.merged_ids]
    everyone += list((await session.execute(select(links.c.alias_id).where(links.c.customer_id.in_(everyone)))).scalars())
    theirs = select(followups.c.id).where(followups.c.customer_id.in_(everyone))
    await session.execute(delete(deliveries).where(deliveries.c.followup_id.in_(theirs)))
    await erase(session, links, erasures, event, (followups, memberships, stages))


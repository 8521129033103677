"""What the funnel service does with each consumed event: interactions are matched and recounted
once per batch (see `tracking`); links merge paths, erasures remove the customer everywhere,
segment changes keep memberships for breakdowns."""
from __future__ import annotations

import orjson
from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.funnel.store import (
    erasures,
    events,
    links,
    matches,
    segment_members,
    traits,
    transitions,
)
from services.funnel.tracking import Pending, definitions, record, recount, remove_attempts
from shared.consumer import Handlers, Transaction
from shared.events import CustomerErased, CustomerLinked, Event, Interaction, SegmentChanged
from shared.identity import canonical_ids, erase, merge_traits
from shared.store import insert_ignoring_conflicts


def make_handlers(retention_days: float) -> Handlers:
    def pending(tx: Transaction) -> Pending:
        found: Pending = tx.state.setdefault("funnel", Pending())
        return found

    def schedule_recount(tx: Transaction) -> None:
        async def recount_dirty() -> None:
            dirty, pending(tx).dirty = pending(tx).dirty, Pending().dirty
            for funnel in await definitions(tx.session, sorted(dirty)):
                await recount(tx.session, funnel, sorted(dirty[funnel.key]), tx.now, tx.outbox)

        tx.defer("funnel.recount", recount_dirty)

    async def on_interaction(event: Event, tx: Transaction) -> None:
        assert isinstance(event, Interaction)
        pending(tx).interactions.append(event)

        async def record_batch() -> None:
            batch, pending(tx).interactions = pending(tx).interactions, []
            await record(tx.session, batch, tx.now, retention_days, pending(tx))
            schedule_recount(tx)

        tx.defer("funnel.record", record_batch)

    async def on_linked(event: Event, tx: Transaction) -> None:
        """The merged id's events and matches become the customer's; their paths are one now."""
        assert isinstance(event, CustomerLinked)
        session, merged, customer = tx.session, event.merged_id, event.customer_id
        dialect = session.bind.dialect.name if session.bind else "sqlite"
        await session.execute(update(links).where(links.c.customer_id == merged).values(customer_id=customer))
        await session.execute(insert_ignoring_conflicts(links, dialect).values(alias_id=merged, customer_id=customer))
        for table in (events, matches):
            await session.execute(update(table).where(table.c.customer_id == merged).values(customer_id=customer))
        # One customer, one path: the recount records the merged path's stages for the customer
        # (those it had not reached yet); the merged id's own transitions end with it.
        await session.execute(delete(transitions).where(transitions.c.customer_id == merged))
        await remove_attempts(session, [merged])
        await _merge_traits(session, merged, customer)
        for funnel in await definitions(session):
            pending(tx).dirty[funnel.key].add(customer)
        schedule_recount(tx)

    async def on_erased(event: Event, tx: Transaction) -> None:
        assert isinstance(event, CustomerErased)
        everyone = [event.customer_id, *event.merged_ids]
        everyone += list((await tx.session.execute(select(links.c.alias_id).where(links.c.customer_id.in_(everyone)))).scalars())
        await remove_attempts(tx.session, everyone)  # markers without data; the cleanup deletes them
        everyone = await erase(tx.session, links, erasures, event, (events, matches, transitions, segment_members, traits))
        for dirty in pending(tx).dirty.values():
            dirty.difference_update(everyone)

    async def on_segment_changed(event: Event, tx: Transaction) -> None:
        """Membership now, for `breakdown=segment:<key>`: the latest change by time wins."""
        assert isinstance(event, SegmentChanged)
        session = tx.session
        customer = (await canonical_ids(session, links, [event.customer_id])).get(event.customer_id, event.customer_id)
        key = (segment_members.c.customer_id == customer, segment_members.c.segment == event.segment)
        held = await session.scalar(select(segment_members.c.at).where(*key))
        member = int(event.change == "entered")
        if held is None:
            await session.execute(insert(segment_members).values(
                customer_id=customer, segment=event.segment, member=member, at=event.at))
        elif event.at >= held:
            await session.execute(update(segment_members).where(*key).values(member=member, at=event.at))

    return {Interaction: [on_interaction], CustomerLinked: [on_linked], CustomerErased: [on_erased],
            SegmentChanged: [on_segment_changed]}


async def _merge_traits(session: AsyncSession, merged: str, customer: str) -> None:
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

"""What the funnel service does with each consumed event: interactions are matched and recounted
once per batch (see `tracking`); links merge paths, erasures remove the customer everywhere,
segment changes keep memberships for breakdowns."""
from __future__ import annotations

import orjson
from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.funnel.store import (
    bus_tables,
    erasures,
    events,
    links,
    matches,
    segment_members,
    traits,
    transitions,
)
from services.funnel.tracking import Pending, definitions, delete_attempts, record, recount, remove_attempts
from shared.consumer import Handlers, Transaction, handlers_of, on
from shared.events import CustomerErased, CustomerLinked, ErasureRecorded, Interaction, SegmentChanged
from shared.identity import canonical_ids, drop_outgoing_about, erase, merge_traits, on_erasure_recorded, relink
from shared.keyed_rows import Key, read_keyed, write_keyed


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

    async def on_interaction(event: Interaction, tx: Transaction) -> None:
        pending(tx).interactions.append(event)

        async def record_batch() -> None:
            batch, pending(tx).interactions = pending(tx).interactions, []
            await record(tx.session, batch, tx.now, retention_days, pending(tx))
            schedule_recount(tx)

        tx.defer("funnel.record", record_batch)

    async def on_linked(event: CustomerLinked, tx: Transaction) -> None:
        """The merged id's events and matches become the customer's; their paths are one now."""
        await record_segment_changes(tx)  # the segment changes before it first, as they came
        session, merged, customer = tx.session, event.merged_id, event.customer_id
        await relink(session, links, merged, customer)
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

    async def on_erased(event: CustomerErased, tx: Transaction) -> None:
        await record_segment_changes(tx)
        everyone = [event.customer_id, *event.merged_ids]
        everyone += list((await tx.session.execute(select(links.c.alias_id).where(links.c.customer_id.in_(everyone)))).scalars())
        await delete_attempts(tx.session, everyone)
        everyone = await erase(tx.session, links, erasures, event, (events, matches, transitions, segment_members, traits),
                               bus_tables.outbox)
        for dirty in pending(tx).dirty.values():
            dirty.difference_update(everyone)
        drop_outgoing_about(tx, everyone)

    async def on_hashed_erasure(event: ErasureRecorded, tx: Transaction) -> None:
        await on_erasure_recorded(tx.session, erasures, event)

    async def on_segment_changed(event: SegmentChanged, tx: Transaction) -> None:
        """Membership now, for `breakdown=segment:<key>`: the latest change by time wins (kept for
        the whole batch at once before its end, or before a link or erasure in it)."""
        tx.state.setdefault("funnel.segments", []).append(event)
        tx.defer("funnel.segments", lambda: record_segment_changes(tx))

    async def record_segment_changes(tx: Transaction) -> None:
        changes: list[SegmentChanged] = tx.state.pop("funnel.segments", [])
        if not changes:
            return
        canonical = await canonical_ids(tx.session, links, (e.customer_id for e in changes))
        moves = [(canonical.get(e.customer_id, e.customer_id), e) for e in changes]
        held = await read_keyed(tx.session, segment_members, "segment", ((c, e.segment) for c, e in moves))
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
        await write_keyed(tx.session, segment_members, "segment", written, inserted)

    return handlers_of(on(Interaction, on_interaction), on(CustomerLinked, on_linked), on(CustomerErased, on_erased),
                       on(ErasureRecorded, on_hashed_erasure), on(SegmentChanged, on_segment_changed))


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

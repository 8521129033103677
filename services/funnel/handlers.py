"""What the funnel service does with each consumed event: interactions are matched and recounted
once per batch (see `tracking`); links merge paths, erasures remove the customer everywhere,
segment changes keep memberships for breakdowns."""
from __future__ import annotations

from services.funnel.store import erasures
from services.funnel.tracking import (
    Pending,
    erase_customer,
    merge_customer,
    record,
    record_segment_changes,
    recount,
)
from shared.consumer import Handlers, Transaction, handlers_of, on
from shared.events import CustomerErased, CustomerLinked, ErasureRecorded, Interaction, SegmentChanged
from shared.identity import drop_outgoing_about, on_erasure_recorded


def make_handlers(retention_days: float) -> Handlers:
    def pending(tx: Transaction) -> Pending:
        found: Pending | None = tx.state.get("funnel")
        if found is None:  # once per batch (it is asked for once per event)
            found = tx.state["funnel"] = Pending()
        return found

    def schedule_recount(tx: Transaction) -> None:
        async def recount_dirty() -> None:
            dirty, appended = pending(tx).take_recounts()
            for funnel in [f for f in await pending(tx).definitions(tx.session) if f.key in dirty]:  # in key order
                await recount(tx.session, funnel, sorted(dirty[funnel.key]), tx.now, tx.outbox, appended)

        tx.defer("funnel.recount", recount_dirty)

    async def on_interaction(event: Interaction, tx: Transaction) -> None:
        waiting = pending(tx).interactions
        if not waiting:  # the first since the batch's were last recorded
            tx.defer("funnel.record", lambda: record_batch(tx))
        waiting.append(event)

    async def record_batch(tx: Transaction) -> None:
        batch, pending(tx).interactions = pending(tx).interactions, []
        await record(tx.session, batch, tx.now, retention_days, pending(tx))
        schedule_recount(tx)

    async def on_linked(event: CustomerLinked, tx: Transaction) -> None:
        """The merged id's events and matches become the customer's; their paths are one now."""
        await record_segments(tx)  # the segment changes before it first, as they came
        await merge_customer(tx.session, event.merged_id, event.customer_id)
        pending(tx).whole.add(event.customer_id)  # another id's history is theirs now: recounted whole
        for funnel in await pending(tx).definitions(tx.session):
            pending(tx).dirty[funnel.key].add(event.customer_id)
        schedule_recount(tx)

    async def on_erased(event: CustomerErased, tx: Transaction) -> None:
        await record_segments(tx)
        everyone = await erase_customer(tx.session, event)
        for dirty in pending(tx).dirty.values():
            dirty.difference_update(everyone)
        drop_outgoing_about(tx, everyone)

    async def on_hashed_erasure(event: ErasureRecorded, tx: Transaction) -> None:
        await on_erasure_recorded(tx.session, erasures, event)

    async def on_segment_changed(event: SegmentChanged, tx: Transaction) -> None:
        """Membership now, for `breakdown=segment:<key>`: the latest change by time wins (kept for
        the whole batch at once before its end, or before a link or erasure in it)."""
        tx.state.setdefault("funnel.segments", []).append(event)
        tx.defer("funnel.segments", lambda: record_segments(tx))

    async def record_segments(tx: Transaction) -> None:
        changes: list[SegmentChanged] = tx.state.pop("funnel.segments", [])
        if changes:
            await record_segment_changes(tx.session, changes)

    return handlers_of(on(Interaction, on_interaction), on(CustomerLinked, on_linked), on(CustomerErased, on_erased),
                       on(ErasureRecorded, on_hashed_erasure), on(SegmentChanged, on_segment_changed))


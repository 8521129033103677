"""What segmentation does with each consumed event: keep profiles, then re-evaluate the customer.

Interactions are recorded, and customers evaluated, once per consumed batch (see
`Transaction.defer`): recording is order-safe (`recording`), so applying a batch's interactions
after its links and erasures gives the state the events would give one by one.
"""
from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

from services.segmentation.custom import evaluate_custom
from services.segmentation.evaluation import evaluate_customers
from services.segmentation.logic import Thresholds
from services.segmentation.recording import identities, merge_customer, record_interactions, record_stage_moves
from services.segmentation.store import bus_tables, customer_tables, erasures, forget_facts, links
from shared.consumer import Handlers, Transaction, handlers_of, on
from shared.events import CustomerErased, CustomerLinked, ErasureRecorded, FunnelStageChanged, Interaction
from shared.identity import drop_outgoing_about, erase, on_erasure_recorded


@dataclass
class Batch:
    """What the handlers leave for the end of the batch: interactions to record, customers to
    evaluate (each once, however many of their events the batch holds)."""

    interactions: list[Interaction] = field(default_factory=list)
    dirty: set[str] = field(default_factory=set)
    stages: list[FunnelStageChanged] = field(default_factory=list)


def make_handlers(thresholds: Thresholds, retention_days: float) -> Handlers:
    def batch(tx: Transaction) -> Batch:
        found: Batch | None = tx.state.get("segmentation")
        if found is None:
            found = tx.state["segmentation"] = Batch()
        return found

    def evaluate(customers: Collection[str], tx: Transaction) -> None:
        if not customers:
            return
        batch(tx).dirty.update(customers)

        async def evaluate_dirty() -> None:
            customers = sorted(batch(tx).dirty)
            batch(tx).dirty.clear()
            await evaluate_customers(tx.session, customers, tx.now, thresholds, tx.outbox)
            await evaluate_custom(tx.session, customers, tx.now, tx.outbox)

        tx.defer("segmentation.evaluate", evaluate_dirty)

    async def on_interaction(event: Interaction, tx: Transaction) -> None:
        interactions = batch(tx).interactions
        if not interactions:  # the first since they were last recorded: they will be, at the batch's end
            tx.defer("segmentation.record", lambda: record(tx))
        interactions.append(event)

    async def on_linked(event: CustomerLinked, tx: Transaction) -> None:
        await record_stages(tx)  # the stage changes before it first, as they came
        await merge_customer(tx.session, event.merged_id, event.customer_id, tx.now, tx.outbox)
        evaluate([event.customer_id], tx)

    async def on_funnel_stage(event: FunnelStageChanged, tx: Transaction) -> None:
        """The customer's latest stage per funnel (latest recorded move, so late ones do not win),
        kept for the whole batch at once before its end (or before a link or erasure in it)."""
        stages = batch(tx).stages
        if not stages:  # the first since they were last recorded
            tx.defer("segmentation.record", lambda: record(tx))
        stages.append(event)

    async def record(tx: Transaction) -> None:
        """The batch's stage moves and interactions, with one read of the ids erased or merged."""
        moves, batch(tx).stages = batch(tx).stages, []
        events, batch(tx).interactions = batch(tx).interactions, []
        known = await identities(tx.session, events, moves)
        changed = await record_stage_moves(tx.session, moves, known) if moves else set()
        if events:
            changed |= await record_interactions(tx.session, events, tx.now, retention_days, known)
        evaluate(changed, tx)

    async def record_stages(tx: Transaction) -> None:
        moves, batch(tx).stages = batch(tx).stages, []
        if moves:
            evaluate(await record_stage_moves(tx.session, moves, await identities(tx.session, [], moves)), tx)

    async def on_erased(event: CustomerErased, tx: Transaction) -> None:
        await record_stages(tx)
        everyone = await erase(tx.session, links, erasures, event, customer_tables, bus_tables.outbox)
        await forget_facts(tx.session, everyone)  # their profiles went
        batch(tx).dirty.difference_update(everyone)
        drop_outgoing_about(tx, everyone)

    async def on_hashed_erasure(event: ErasureRecorded, tx: Transaction) -> None:
        await on_erasure_recorded(tx.session, erasures, event)

    return handlers_of(on(Interaction, on_interaction), on(CustomerLinked, on_linked), on(CustomerErased, on_erased),
                       on(ErasureRecorded, on_hashed_erasure), on(FunnelStageChanged, on_funnel_stage))


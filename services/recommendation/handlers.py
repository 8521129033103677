"""What the recommendation service does with each consumed event: the product facts of a batch
of interactions are written once per batch (see `recording`); links move the merged id's facts to
the customer; erasures delete the customer everywhere. Every batch that changed customers records
them under a new version, which the models of every process read (see `model_index`)."""
from __future__ import annotations

from dataclasses import dataclass, field

from services.recommendation.recording import (
    erase_customer,
    merge_customer,
    record_changes,
    record_interactions,
)
from services.recommendation.store import erasures
from shared.consumer import Handlers, Transaction, handlers_of, on
from shared.events import CustomerErased, CustomerLinked, ErasureRecorded, Interaction
from shared.identity import drop_outgoing_about, on_erasure_recorded


@dataclass
class Pending:
    interactions: list[Interaction] = field(default_factory=list)
    dirty: set[str] = field(default_factory=set)


def _pending(tx: Transaction) -> Pending:
    found: Pending | None = tx.state.get("recommendation")
    if found is None:  # not setdefault: that would build a Pending for every event
        found = tx.state["recommendation"] = Pending()
    return found


def _schedule_version(tx: Transaction) -> None:
    async def record_dirty() -> None:
        dirty, _pending(tx).dirty = _pending(tx).dirty, set()
        await record_changes(tx.session, dirty)

    tx.defer("recommendation.changes", record_dirty)


async def on_interaction(event: Interaction, tx: Transaction) -> None:
    pending = _pending(tx)
    if not pending.interactions:  # the batch's first (or first since a flush): not a closure per event
        tx.defer("recommendation.record", lambda: _record(tx))
    pending.interactions.append(event)


async def _record(tx: Transaction) -> None:
    pending = _pending(tx)
    batch, pending.interactions = pending.interactions, []
    pending.dirty |= await record_interactions(tx.session, batch)
    _schedule_version(tx)


async def on_linked(event: CustomerLinked, tx: Transaction) -> None:
    """The merged id's facts become the customer's: one customer, one profile."""
    await merge_customer(tx.session, event.merged_id, event.customer_id)
    _pending(tx).dirty |= {event.merged_id, event.customer_id}
    _schedule_version(tx)


async def on_erased(event: CustomerErased, tx: Transaction) -> None:
    everyone = await erase_customer(tx.session, event)
    _pending(tx).dirty.difference_update(everyone)
    drop_outgoing_about(tx, everyone)


async def on_hashed_erasure(event: ErasureRecorded, tx: Transaction) -> None:
    await on_erasure_recorded(tx.session, erasures, event)


HANDLERS: Handlers = handlers_of(on(Interaction, on_interaction), on(CustomerLinked, on_linked),
                                 on(CustomerErased, on_erased), on(ErasureRecorded, on_hashed_erasure))

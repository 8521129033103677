"""What the follow-up service does with each consumed event: segment entries and funnel stages
create follow-ups by policy; exits and cancelling stages close them; links merge, erasures remove.

Customer ids on segments.v1 and funnel.v1 are already canonical (those services merge
identities themselves). Every follow-up a bus event creates is keyed by that event (`trigger_key`), so a redelivery or a
replay never makes a second one; follow-ups are due relative to the event's time, not to when it
was consumed, so a replay gives the same schedule.
"""
from __future__ import annotations

from datetime import timedelta

from services.followup.followups import (
    Changes,
    Versioned,
    current_policies,
    erase_customer,
    merge_customer,
)
from services.followup.store import erasures, memberships, stages
from services.followup.triggers import Triggers
from shared.consumer import Handlers, Transaction, handlers_of, on
from shared.events import (
    CustomerErased,
    CustomerLinked,
    ErasureRecorded,
    FunnelStageChanged,
    SegmentChanged,
)
from shared.identity import drop_outgoing_about, later_move, on_erasure_recorded


def make_handlers(grace: timedelta) -> Handlers:
    async def changed(event: SegmentChanged | FunnelStageChanged, tx: Transaction) -> None:
        """Segment and stage changes are applied for the whole batch at once, in their order,
        before its end (or before a link or erasure in it)."""
        changes: list[SegmentChanged | FunnelStageChanged] = tx.state.setdefault("followup.changes", [])
        changes.append(event)
        tx.defer("followup.changes", lambda: apply_changes(tx, grace))

    async def linked(event: CustomerLinked, tx: Transaction) -> None:
        await apply_changes(tx, grace)
        await merge_customer(tx.session, event.merged_id, event.customer_id, tx.now, tx.outbox, grace)

    async def erased(event: CustomerErased, tx: Transaction) -> None:
        await apply_changes(tx, grace)
        drop_outgoing_about(tx, await erase_customer(tx.session, event))

    return handlers_of(on(SegmentChanged, changed), on(FunnelStageChanged, changed), on(CustomerLinked, linked),
                       on(CustomerErased, erased), on(ErasureRecorded, on_hashed_erasure))


async def _triggers(tx: Transaction) -> Triggers:
    """The policies in force, read once per consumed batch (a first scheduled pass in segmentation
    publishes hundreds of thousands of segment changes; policies change only through the API)."""
    if "followup.triggers" not in tx.state:
        tx.state["followup.triggers"] = Triggers(await current_policies(tx.session))
    found: Triggers = tx.state["followup.triggers"]
    return found


async def apply_changes(tx: Transaction, grace: timedelta) -> None:
    events: list[SegmentChanged | FunnelStageChanged] = tx.state.pop("followup.changes", [])
    if not events:
        return
    triggers = await _triggers(tx)
    triggered: list[Triggered] = []
    cancelling: dict[str, set[str]] = {}  # customer -> the policies their changes may cancel
    for event in events:
        triggered.append(triggered_by(event, triggers))
        if cancelled := may_cancel(event, triggers):
            cancelling.setdefault(event.customer_id, set()).update(cancelled)
    changes = Changes(tx, grace)
    await changes.read(events, [[key for _, key in each] for each in triggered], cancelling)
    for event, policies_triggered in zip(events, triggered, strict=True):
        if isinstance(event, SegmentChanged):
            on_segment_changed(event, changes, triggers, policies_triggered)
        else:
            on_stage_changed(event, changes, triggers, policies_triggered)
    await changes.write()


Triggered = list[tuple[Versioned, str]]  # the policies an event triggers, each with its trigger key


def triggered_by(event: SegmentChanged | FunnelStageChanged, triggers: Triggers) -> Triggered:
    """The policies whose trigger the event is, before anything about the customer is known: the
    batch reads at once which of these trigger keys made a follow-up already."""
    if isinstance(event, SegmentChanged):
        if event.change != "entered":
            return []
        kind, matches = "segment", triggers.created_by_entry(event.segment)
    else:
        kind, matches = "stage", triggers.created_by_stage(event.funnel, event.to_stage)
    if not matches:
        return []
    key = event.dedupe_key()
    return [(v, f"{kind}|{key}|{v.policy.key}") for v in matches]


def may_cancel(event: SegmentChanged | FunnelStageChanged, triggers: Triggers) -> list[str]:
    """The policies whose open follow-ups the event cancels."""
    if isinstance(event, SegmentChanged):
        return [] if event.change == "entered" else triggers.cancelled_by_exit(event.segment)
    return triggers.cancelled_by_move(event.funnel, event.to_stage)


def on_segment_changed(event: SegmentChanged, changes: Changes, triggers: Triggers, triggered: Triggered) -> None:
    if changes.is_erased(event.customer_id, event.at):
        return
    customer = event.customer_id  # segmentation publishes canonical ids (it merges profiles itself)
    key = (customer, event.segment)
    held = changes.memberships.get(key)
    if held is not None and event.at < held["at"]:
        return  # an older change than the one held (late): membership stays
    changes.hold(memberships, changes.memberships, key, {"customer_id": customer, "segment": event.segment,
                                                          "member": int(event.change == "entered"), "at": event.at})
    if event.change == "entered":
        if not triggered:
            return
        reason = f"entered {event.segment}" + (f": {event.reason}" if event.reason else "")
        for versioned, trigger_key in triggered:
            changes.create(versioned, customer, event.at + timedelta(hours=versioned.policy.due_in_hours), reason,
                           trigger_key)
    else:
        changes.cancel(customer, triggers.cancelled_by_exit(event.segment), f"left {event.segment}")


def on_stage_changed(event: FunnelStageChanged, changes: Changes, triggers: Triggers, triggered: Triggered) -> None:
    if changes.is_erased(event.customer_id, event.at):
        return
    customer = event.customer_id  # the funnel service publishes canonical ids
    key = (customer, event.funnel)
    held = changes.stages.get(key)
    if held is not None and not later_move(event.order, event.at, held["seq"], held["since"]):
        return  # late: a newer move is held
    changes.hold(stages, changes.stages, key, {"customer_id": customer, "funnel": event.funnel,
                                               "stage": event.to_stage, "since": event.at, "seq": event.order})
    cancelled = triggers.cancelled_by_move(event.funnel, event.to_stage)
    if cancelled:
        reason = f"entered {event.funnel}/{event.to_stage}" if event.to_stage else f"left funnel {event.funnel}"
        changes.cancel(customer, cancelled, reason)
    for versioned, trigger_key in triggered:  # none when the customer left the funnel
        changes.create(versioned, customer, event.at + timedelta(hours=versioned.policy.due_in_hours),
                       f"entered {event.funnel}/{event.to_stage}", trigger_key)


async def on_hashed_erasure(event: ErasureRecorded, tx: Transaction) -> None:
    await on_erasure_recorded(tx.session, erasures, event)


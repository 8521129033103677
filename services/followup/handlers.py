"""What the follow-up service does with each consumed event: segment entries and funnel stages
create follow-ups by policy; exits and cancelling stages close them; links merge, erasures remove.

Customer ids on segments.v1 and funnel.v1 are already canonical (those services merge
identities themselves). Every follow-up a bus event creates is keyed by that event (`trigger_key`), so a redelivery or a
replay never makes a second one; follow-ups are due relative to the event's time, not to when it
was consumed, so a replay gives the same schedule.
"""
from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Table, and_, delete, select, update

from services.followup.followups import OPEN, Versioned, cancel_for, close, create, current_policies
from services.followup.store import bus_tables, deliveries, erasures, followups, links, memberships, stages
from shared.consumer import Handlers, Transaction, handlers_of, on
from shared.events import CustomerErased, CustomerLinked, ErasureRecorded, FunnelStageChanged, SegmentChanged
from shared.identity import chunks, drop_outgoing_about, erase, erasure_times, later_move, on_erasure_recorded, relink
from shared.keyed_rows import Key, read_keyed, write_keyed


def make_handlers(grace: timedelta) -> Handlers:
    async def changed(event: SegmentChanged | FunnelStageChanged, tx: Transaction) -> None:
        """Segment and stage changes are applied for the whole batch at once, in their order,
        before its end (or before a link or erasure in it)."""
        changes: list[SegmentChanged | FunnelStageChanged] = tx.state.setdefault("followup.changes", [])
        changes.append(event)
        tx.defer("followup.changes", lambda: apply_changes(tx, grace))

    async def linked(event: CustomerLinked, tx: Transaction) -> None:
        await apply_changes(tx, grace)
        await on_linked(event, tx, grace)

    async def erased(event: CustomerErased, tx: Transaction) -> None:
        await apply_changes(tx, grace)
        await on_erased(event, tx)

    return handlers_of(on(SegmentChanged, changed), on(FunnelStageChanged, changed), on(CustomerLinked, linked),
                       on(CustomerErased, erased), on(ErasureRecorded, on_hashed_erasure))


async def _policies(tx: Transaction) -> dict[str, Versioned]:
    """The policies in force, read once per consumed batch (a first scheduled pass in segmentation
    publishes hundreds of thousands of segment changes; policies change only through the API)."""
    if "followup.policies" not in tx.state:
        tx.state["followup.policies"] = await current_policies(tx.session)
    found: dict[str, Versioned] = tx.state["followup.policies"]
    return found


class Changes:
    """What a batch of segment and stage changes needs, read in a few statements: erasures, the
    memberships and stages held, and the policies each customer has a follow-up open under (kept
    current as the changes create and cancel them)."""

    def __init__(self, tx: Transaction, grace: timedelta) -> None:
        self.tx, self.session, self.grace = tx, tx.session, grace
        self.erased: dict[str, datetime] = {}
        self.memberships: dict[Key, dict[str, Any]] = {}
        self.stages: dict[Key, dict[str, Any]] = {}
        self.written: dict[Table, tuple[dict[Key, dict[str, Any]], set[Key]]] = {
            memberships: ({}, set()), stages: ({}, set())}
        self.open: dict[str, set[str]] = defaultdict(set)

    async def read(self, events: list[SegmentChanged | FunnelStageChanged]) -> None:
        customers = sorted({e.customer_id for e in events})
        self.erased = await erasure_times(self.session, erasures, customers)
        self.memberships = await read_keyed(self.session, memberships, "segment", (
            (e.customer_id, e.segment) for e in events if isinstance(e, SegmentChanged)))
        self.stages = await read_keyed(self.session, stages, "funnel", (
            (e.customer_id, e.funnel) for e in events if isinstance(e, FunnelStageChanged)))
        for chunk in chunks(customers):
            rows = await self.session.execute(select(followups.c.customer_id, followups.c.policy).where(
                followups.c.customer_id.in_(chunk), followups.c.status.in_(OPEN)))
            for customer, policy in rows.tuples():
                self.open[customer].add(policy)

    def is_erased(self, customer: str, at: datetime) -> bool:
        return customer in self.erased and at <= self.erased[customer]

    def hold(self, table: Table, held: dict[Key, dict[str, Any]], key: Key, row: dict[str, Any]) -> None:
        written, inserted = self.written[table]
        if key not in held:
            inserted.add(key)
        held[key] = written[key] = row

    async def write(self) -> None:
        await write_keyed(self.session, memberships, "segment", *self.written[memberships])
        await write_keyed(self.session, stages, "funnel", *self.written[stages])

    async def create(self, versioned: Versioned, customer: str, due_at: datetime, reason: str, trigger_key: str) -> None:
        if versioned.policy.key in self.open[customer]:
            return  # one open per customer and policy: create would insert nothing
        if await create(self.session, versioned, customer, due_at, reason, trigger_key, self.tx.now, self.tx.outbox,
                        self.grace):
            self.open[customer].add(versioned.policy.key)

    async def cancel(self, customer: str, policy_keys: list[str], reason: str) -> None:
        if self.open[customer].intersection(policy_keys):
            await cancel_for(self.session, customer, policy_keys, reason, self.tx.now, self.tx.outbox, self.grace)
            self.open[customer].difference_update(policy_keys)


async def apply_changes(tx: Transaction, grace: timedelta) -> None:
    events: list[SegmentChanged | FunnelStageChanged] = tx.state.pop("followup.changes", [])
    if not events:
        return
    changes = Changes(tx, grace)
    await changes.read(events)
    policies = await _policies(tx)
    for event in events:
        if isinstance(event, SegmentChanged):
            await on_segment_changed(event, changes, policies)
        else:
            await on_stage_changed(event, changes, policies)
    await changes.write()


async def on_segment_changed(event: SegmentChanged, changes: Changes, policies: dict[str, Versioned]) -> None:
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
        for versioned in policies.values():
            trigger = versioned.policy.trigger
            if trigger.on == "segment_entered" and trigger.segment == event.segment:
                await changes.create(versioned, customer, event.at + timedelta(hours=versioned.policy.due_in_hours),
                                     f"entered {event.segment}" + (f": {event.reason}" if event.reason else ""),
                                     f"segment|{event.dedupe_key()}|{versioned.policy.key}")
    else:
        cancelled = [key for key, v in policies.items() if v.policy.cancelled_by_exit(event.segment)]
        await changes.cancel(customer, cancelled, f"left {event.segment}")


async def on_stage_changed(event: FunnelStageChanged, changes: Changes, policies: dict[str, Versioned]) -> None:
    if changes.is_erased(event.customer_id, event.at):
        return
    customer = event.customer_id  # the funnel service publishes canonical ids
    key = (customer, event.funnel)
    held = changes.stages.get(key)
    if held is not None and not later_move(event.order, event.at, held["seq"], held["since"]):
        return  # late: a newer move is held
    changes.hold(stages, changes.stages, key, {"customer_id": customer, "funnel": event.funnel,
                                               "stage": event.to_stage, "since": event.at, "seq": event.order})
    # A customer who moved on is no longer stalled where they were; a cancelling stage closes too.
    cancelled = [k for k, v in policies.items()
                 if (event.to_stage is not None and v.policy.cancelled_by_stage(event.funnel, event.to_stage))
                 or (v.policy.trigger.on == "stage_stalled" and v.policy.trigger.funnel == event.funnel
                     and v.policy.trigger.stage != event.to_stage)]
    if cancelled:
        reason = f"entered {event.funnel}/{event.to_stage}" if event.to_stage else f"left funnel {event.funnel}"
        await changes.cancel(customer, cancelled, reason)
    if event.to_stage is None:
        return
    for versioned in policies.values():
        trigger = versioned.policy.trigger
        if trigger.on == "stage_entered" and (trigger.funnel, trigger.stage) == (event.funnel, event.to_stage):
            await changes.create(versioned, customer, event.at + timedelta(hours=versioned.policy.due_in_hours),
                                 f"entered {event.funnel}/{event.to_stage}",
                                 f"stage|{event.dedupe_key()}|{versioned.policy.key}")


async def on_linked(event: CustomerLinked, tx: Transaction, grace: timedelta) -> None:
    """The merged id's follow-ups and state become the customer's; where both had one open under
    the same policy, the merged id's is cancelled (one open per customer and policy)."""
    session, merged, customer = tx.session, event.merged_id, event.customer_id
    await relink(session, links, merged, customer)
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


async def on_erased(event: CustomerErased, tx: Transaction) -> None:
    session = tx.session
    everyone = [event.customer_id, *event.merged_ids]
    everyone += list((await session.execute(select(links.c.alias_id).where(links.c.customer_id.in_(everyone)))).scalars())
    theirs = select(followups.c.id).where(followups.c.customer_id.in_(everyone))
    await session.execute(delete(deliveries).where(deliveries.c.followup_id.in_(theirs)))
    everyone = await erase(session, links, erasures, event, (followups, memberships, stages), bus_tables.outbox)
    drop_outgoing_about(tx, everyone)


async def on_hashed_erasure(event: ErasureRecorded, tx: Transaction) -> None:
    await on_erasure_recorded(tx.session, erasures, event)


"""Follow-ups in the store: creating them (once per trigger, one open per customer and policy),
closing them, moving them by the clock, and the reminders that go with each move; and what a
batch of segment and stage changes, a link or an erasure changes in the store."""
from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any

import orjson
from sqlalchemy import Table, and_, bindparam, delete, insert, null, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.followup.policies import DEFAULT_POLICIES, Policy, parse_policy
from services.followup.store import (
    bus_tables,
    customer_tables,
    deliveries,
    erasures,
    followups,
    links,
    memberships,
    policies,
    stages,
)
from shared.bulk import BulkWrite
from shared.bus.base import OutgoingRecord
from shared.consumer import Transaction
from shared.events import (
    CustomerErased,
    FollowupChanged,
    FunnelStageChanged,
    SegmentChanged,
    record,
    stable_id,
    to_iso,
)
from shared.identity import chunks, erase, erased_ids, erasure_times, relink
from shared.keyed_rows import Key, KeyedWrites, read_keyed
from shared.outbox import Outbox
from shared.store import among, insert_ignoring_conflicts

OPEN = ("pending", "due", "overdue")
SWEEP_CHUNK = 20_000  # moves read and written at a time (bounded memory however many fall due)
FINAL = ("done", "cancelled")


@dataclass(frozen=True)
class Versioned:
    policy: Policy
    version: int


async def current_policies(session: AsyncSession) -> dict[str, Versioned]:
    """Every policy in force: the defaults (version 1 until edited) and the stored ones."""
    found = {key: Versioned(policy, 1) for key, policy in DEFAULT_POLICIES.items()}
    rows = await session.execute(select(policies.c.key, policies.c.version, policies.c.definition, policies.c.deleted)
                                 .where(policies.c.current == 1))
    for key, version, definition, deleted in rows:
        if deleted:
            found.pop(key, None)
        else:
            found[key] = Versioned(parse_policy(orjson.loads(definition)), version)
    return found


async def policies_after(session: AsyncSession, after: str | None, limit: int) -> list[tuple[str, Versioned]]:
    """A page of the listing: the defaults first in their fixed order, then custom policies by
    key; the `limit` first after key `after` (None: from the start). A keyset, so `after` need not
    exist any more."""
    defaults = list(DEFAULT_POLICIES)
    if after is None:
        first = defaults
    else:
        first = defaults[defaults.index(after) + 1:] if after in DEFAULT_POLICIES else []
    held = await current_policies(session) if first else {}  # the defaults as edited
    page = [(key, held[key]) for key in first if key in held][:limit]
    query = (select(policies.c.key, policies.c.version, policies.c.definition)
             .where(policies.c.current == 1, policies.c.deleted == 0, policies.c.key.not_in(defaults))
             .order_by(policies.c.key).limit(limit - len(page)))
    if after is not None and after not in DEFAULT_POLICIES:
        query = query.where(policies.c.key > after)
    return page + [(key, Versioned(parse_policy(orjson.loads(definition)), version))
                   for key, version, definition in await session.execute(query)]


async def write_version(session: AsyncSession, key: str, definition: dict[str, Any], now: datetime,
                        deleted: bool = False) -> int:
    """A new version of policy `key` becomes the one in force (a default's first edit is version 2)."""
    latest = await session.scalar(select(policies.c.version).where(policies.c.key == key).order_by(policies.c.version.desc()).limit(1))
    version = (latest or (1 if key in DEFAULT_POLICIES else 0)) + 1
    await session.execute(update(policies).where(policies.c.key == key).values(current=0))
    await session.execute(insert(policies).values(key=key, version=version, definition=orjson.dumps(definition).decode(),
                                                  current=1, deleted=int(deleted), created_at=now))
    return version


async def reschedule_open(session: AsyncSession, key: str, policy: Policy, shift: timedelta, version: int,
                          now: datetime, outbox: Outbox, grace: timedelta) -> None:
    """Follow-ups open under policy `key` take its new channel, priority, assignee and version,
    and are due `shift` later (pending again); each move is published as a snooze."""
    is_open = and_(followups.c.policy == key, followups.c.status.in_(OPEN))
    for row in (await session.execute(select(followups.c.id, followups.c.due_at).where(is_open))).all():
        await session.execute(update(followups).where(followups.c.id == row.id).values(
            due_at=row.due_at + shift, status="pending", channel=policy.channel, priority=policy.priority,
            assignee=policy.assignee, policy_version=version))
        await publish(session, row.id, "snoozed", now, outbox, grace)


async def cancel_open(session: AsyncSession, key: str, reason: str, now: datetime, outbox: Outbox,
                      grace: timedelta) -> list[str]:
    """Every follow-up open under policy `key` is cancelled. Returns their ids."""
    return await close(session, followups.c.policy == key, "cancelled", now, outbox, grace, reason)


async def find(session: AsyncSession, followup_id: str) -> Any:
    """The follow-up's row, or None."""
    return (await session.execute(select(followups).where(followups.c.id == followup_id))).first()


async def page(session: AsyncSession, now: datetime, grace: timedelta, limit: int, after: tuple[datetime, str] | None,
               status: str | None = None, assignee: str | None = None, customer_id: str | None = None,
               due_before: datetime | None = None) -> list[Any]:
    """Up to `limit` follow-ups matching the filters (status by the clock at `now`), soonest due
    first, after the (due_at, id) key `after`."""
    query = select(followups).order_by(followups.c.due_at, followups.c.id).limit(limit)
    if status:
        query = query.where(status_filter(status, now, grace))
    if assignee:
        query = query.where(followups.c.assignee == assignee)
    if customer_id:
        query = query.where(followups.c.customer_id == customer_id)
    if due_before:
        query = query.where(followups.c.due_at < due_before)
    if after:
        at, last_id = after
        query = query.where((followups.c.due_at > at) | ((followups.c.due_at == at) & (followups.c.id > last_id)))
    return list((await session.execute(query)).all())


async def on_time_stats(session: AsyncSession, start: datetime, end: datetime, now: datetime,
                        grace: timedelta) -> list[dict[str, Any]]:
    """Per assignee and channel, among follow-ups due in [start, end): done on time (before they
    became overdue), done late, overdue now, open, cancelled; by assignee then channel."""
    rows = (await session.execute(select(followups.c.assignee, followups.c.channel, followups.c.status, followups.c.due_at,
                                         followups.c.completed_at)
                                  .where(followups.c.due_at >= start, followups.c.due_at < end))).all()
    counts: dict[tuple[str | None, str], dict[str, int]] = defaultdict(
        lambda: {"done_on_time": 0, "done_late": 0, "overdue": 0, "open": 0, "cancelled": 0})
    for r in rows:
        bucket = counts[(r.assignee, r.channel)]
        if r.status == "done":
            bucket["done_on_time" if r.completed_at < r.due_at + grace else "done_late"] += 1
        elif r.status == "cancelled":
            bucket["cancelled"] += 1
        else:
            bucket["overdue" if status_at(r.status, r.due_at, now, grace) == "overdue" else "open"] += 1
    return [{"assignee": a, "channel": c, **n} for (a, c), n in sorted(counts.items(), key=lambda i: (i[0][0] or "", i[0][1]))]


def status_at(status: str, due_at: datetime, now: datetime, grace: timedelta) -> str:
    """The status the clock gives an open follow-up (done and cancelled never move)."""
    if status in FINAL:
        return status
    if now >= due_at + grace:
        return "overdue"
    return "due" if now >= due_at else "pending"


def as_json(row: Any, now: datetime, grace: timedelta) -> dict[str, Any]:
    return {
        "id": row.id, "policy": row.policy, "policy_version": row.policy_version, "customer_id": row.customer_id,
        "channel": row.channel, "priority": row.priority, "assignee": row.assignee,
        "status": status_at(row.status, row.due_at, now, grace), "due_at": to_iso(row.due_at),
        "created_at": to_iso(row.created_at), "completed_at": to_iso(row.completed_at) if row.completed_at else None,
        "outcome": row.outcome, "note": row.note, "reason": row.reason,
    }


async def create(session: AsyncSession, versioned: Versioned, customer: str, due_at: datetime, reason: str,
                 trigger_key: str, now: datetime, outbox: Outbox, grace: timedelta) -> str | None:
    """A follow-up under a policy, unless this trigger made one already or one is open for the
    customer under the policy. Returns its id, or None."""
    row = new_row(versioned, customer, due_at, reason, trigger_key, now)
    result = await session.execute(insert_ignoring_conflicts(followups, session), row)
    if not result.rowcount:  # type: ignore[attr-defined]
        return None
    _publish_created(row, now, outbox, grace)
    return str(row["id"])


def new_row(versioned: Versioned, customer: str, due_at: datetime, reason: str, trigger_key: str,
            now: datetime) -> dict[str, Any]:
    """The follow-up `trigger_key` creates, pending and open (its id is derived from the trigger)."""
    policy = versioned.policy
    return {"id": stable_id("followup", trigger_key), "policy": policy.key, "policy_version": versioned.version,
            "customer_id": customer, "channel": policy.channel, "priority": policy.priority,
            "assignee": policy.assignee, "status": "pending", "due_at": due_at, "created_at": now, "reason": reason,
            "open_slot": f"{customer}|{policy.key}", "trigger_key": trigger_key, "completed_at": None, "outcome": None,
            "note": None}


def _publish_created(row: dict[str, Any], now: datetime, outbox: Outbox, grace: timedelta) -> None:
    # The row as inserted (no read back: one statement less per follow-up created).
    _publish_row(SimpleNamespace(**row), "created", now, outbox, grace)


async def create_manual(session: AsyncSession, values: dict[str, Any], now: datetime, outbox: Outbox,
                        grace: timedelta) -> str:
    followup_id = uuid.uuid4().hex
    await session.execute(insert(followups).values(id=followup_id, status="pending", created_at=now, **values))
    await publish(session, followup_id, "created", now, outbox, grace)
    return followup_id


async def publish(session: AsyncSession, followup_id: str, change: str, at: datetime, outbox: Outbox,
                  grace: timedelta, status: str | None = None) -> dict[str, Any]:
    """The follow-up as the API shows it at `at` (or with `status`, the move being published),
    on followups.v1."""
    row = (await session.execute(select(followups).where(followups.c.id == followup_id))).one()
    return _publish_row(row, change, at, outbox, grace, status)


def _publish_row(row: Any, change: str, at: datetime, outbox: Outbox, grace: timedelta,
                 status: str | None = None) -> dict[str, Any]:
    body = as_json(row, at, grace) | ({"status": status} if status else {})
    outbox.add(changed_record(row.customer_id, row.id, change, row.policy, at, body))
    return body


def changed_record(customer: str, followup_id: str, change: str, policy: str | None, at: datetime,
                   body: dict[str, Any], at_iso: str | None = None) -> OutgoingRecord:
    """The FollowupChanged record `encode` would write, without validating and dumping the model:
    pydantic's dump of the `followup` dict cost more than the rest of creating a follow-up (issue
    13). The body holds only strings, numbers and None (see as_json), which orjson writes as
    pydantic does; tests/followup/test_contract.py holds the two (and their keys) the same."""
    value = orjson.dumps({"customer_id": customer, "followup_id": followup_id, "change": change, "policy": policy,
                          "at": at_iso or to_iso(at), "followup": body})
    dedupe_key = stable_id("followup", followup_id, change, at.isoformat())  # FollowupChanged.dedupe_key's
    return record(FollowupChanged, customer, dedupe_key, value)


async def close(session: AsyncSession, where: Any, status: str, now: datetime, outbox: Outbox, grace: timedelta,
                reason: str | None = None, **values: Any) -> list[str]:
    """Open follow-ups matching `where` become done or cancelled (final). Returns their ids."""
    # Locked (PostgreSQL; SQLite has one writer): a close racing another (the API's complete, a
    # batch's cancel) waits, then finds the row no longer open and leaves it as the first left it.
    rows = (await session.execute(select(followups).where(where, followups.c.status.in_(OPEN)).with_for_update())).all()
    ids = [row.id for row in rows]
    if ids:
        changes = {"status": status, "completed_at": now, "open_slot": None,
                   **({"reason": reason} if reason is not None else {}), **values}
        await session.execute(update(followups).where(followups.c.id.in_(ids)).values(changes))
        for row in rows:  # as updated (no read back: one statement less per follow-up closed)
            _publish_row(SimpleNamespace(**(row._asdict() | changes)), "completed" if status == "done" else "cancelled",
                         now, outbox, grace)
    return ids


async def complete(session: AsyncSession, followup_id: str, outcome: str, note: str | None, now: datetime,
                   outbox: Outbox, grace: timedelta) -> None:
    """The follow-up is done (if still open), with its outcome."""
    await close(session, followups.c.id == followup_id, "done", now, outbox, grace, None, outcome=outcome, note=note)


async def cancel(session: AsyncSession, followup_id: str, reason: str, now: datetime, outbox: Outbox,
                 grace: timedelta) -> None:
    await close(session, followups.c.id == followup_id, "cancelled", now, outbox, grace, reason)


async def snooze(session: AsyncSession, followup_id: str, until: datetime, now: datetime, outbox: Outbox,
                 grace: timedelta) -> None:
    """Due again at `until`, pending until then."""
    await session.execute(update(followups).where(followups.c.id == followup_id).values(due_at=until, status="pending"))
    await publish(session, followup_id, "snoozed", now, outbox, grace)


async def assign(session: AsyncSession, followup_id: str, assignee: str | None, now: datetime, outbox: Outbox,
                 grace: timedelta) -> None:
    await session.execute(update(followups).where(followups.c.id == followup_id).values(assignee=assignee))
    await publish(session, followup_id, "assigned", now, outbox, grace)


async def still_qualifies(session: AsyncSession, policy: Policy, customer: str) -> bool:
    """Is the customer still in the policy's segment or stage (a cadence goes on only then)?"""
    trigger = policy.trigger
    if trigger.on == "segment_entered":
        member = await session.scalar(select(memberships.c.member).where(
            memberships.c.customer_id == customer, memberships.c.segment == trigger.segment))
        return bool(member)
    stage = await session.scalar(select(stages.c.stage).where(stages.c.customer_id == customer,
                                                              stages.c.funnel == trigger.funnel))
    return stage == trigger.stage


async def next_of(session: AsyncSession, followup_id: str, after: datetime, now: datetime, outbox: Outbox,
                  grace: timedelta, due_at: datetime | None = None) -> str | None:
    """The next follow-up of a recurring policy, `cadence_days` after `after` (or at `due_at`),
    while the customer still qualifies."""
    row = (await session.execute(select(followups).where(followups.c.id == followup_id))).one()
    versioned = (await current_policies(session)).get(row.policy) if row.policy else None
    if versioned is None or (versioned.policy.cadence_days is None and due_at is None):
        return None
    if not await still_qualifies(session, versioned.policy, row.customer_id):
        return None
    due = due_at or after + timedelta(days=versioned.policy.cadence_days or 0)
    return await create(session, versioned, row.customer_id, due, f"next of {followup_id} (every "
                        f"{versioned.policy.cadence_days:g} days)" if versioned.policy.cadence_days else f"next of {followup_id}",
                        f"next|{followup_id}", now, outbox, grace)


async def sweep(session: AsyncSession, now: datetime, grace: timedelta, urls: list[str], outbox: Outbox) -> int:
    """The scheduler's pass: stalled customers get their follow-ups, and open follow-ups move to
    due and overdue by the clock, each move published with its webhook reminders. A move is
    written with its reminders in one transaction, so a restart neither misses nor repeats one.
    Moves are found by the (status, due_at) index and written a chunk at a time in bulk."""
    moved = await _stalled(session, now, outbox, grace)
    for status, after, time_passed in (("due", ("pending",), followups.c.due_at <= now),
                                       ("overdue", ("pending", "due"), followups.c.due_at <= now - grace)):
        while rows := (await session.execute(select(followups).where(followups.c.status.in_(after), time_passed)
                                             .limit(SWEEP_CHUNK))).all():
            for chunk in chunks([r.id for r in rows]):
                await session.execute(update(followups).where(followups.c.id.in_(chunk)).values(status=status))
            reminders = []
            for row in rows:
                body = as_json(row, now, grace) | {"status": status}
                outbox.add(changed_record(row.customer_id, row.id, status, row.policy, now, body))
                reminders += _reminders(row.id, status, body, urls, now)
            for start in range(0, len(reminders), 5000):
                await session.execute(insert_ignoring_conflicts(deliveries, session), reminders[start:start + 5000])
            moved += len(rows)
    return moved


def _reminders(followup_id: str, event: str, body: dict[str, Any], urls: list[str], now: datetime) -> list[dict[str, Any]]:
    """One delivery per URL; the id changes with the due time, so a follow-up due again (snoozed,
    rescheduled) is reminded again, and the same move never twice."""
    return [{"id": stable_id("delivery", followup_id, event, body["due_at"], url), "followup_id": followup_id, "url": url,
             "event": f"followup.{event}", "body": orjson.dumps({"event": f"followup.{event}", "followup": body}),
             "attempts": 0, "next_attempt_at": now} for url in urls]


async def _stalled(session: AsyncSession, now: datetime, outbox: Outbox, grace: timedelta) -> int:
    """Customers sitting in a stage for a stalled policy's days get its follow-up, once per stay."""
    created = 0
    for versioned in (await current_policies(session)).values():
        trigger = versioned.policy.trigger
        if trigger.on != "stage_stalled" or trigger.days is None:
            continue
        sitting = await session.execute(select(stages.c.customer_id, stages.c.since).where(
            stages.c.funnel == trigger.funnel, stages.c.stage == trigger.stage,
            stages.c.since <= now - timedelta(days=trigger.days)))
        for customer, since in sitting:
            stalled_at = since + timedelta(days=trigger.days)
            reason = f"in {trigger.funnel}/{trigger.stage} since {to_iso(since)} ({trigger.days:g}+ days)"
            key = stable_id("stalled", versioned.policy.key, customer, since.isoformat())  # ids of any length fit
            if await create(session, versioned, customer, stalled_at + timedelta(hours=versioned.policy.due_in_hours),
                            reason, key, now, outbox, grace):
                created += 1
    return created


def overdue_filter(now: datetime, grace: timedelta) -> Any:
    return and_(followups.c.status.in_(OPEN), followups.c.due_at <= now - grace)


def status_filter(status: str, now: datetime, grace: timedelta) -> Any:
    """SQL for the status the clock gives (see status_at)."""
    if status in FINAL:
        return followups.c.status == status
    is_open = followups.c.status.in_(OPEN)
    if status == "overdue":
        return overdue_filter(now, grace)
    if status == "due":
        return and_(is_open, followups.c.due_at <= now, followups.c.due_at > now - grace)
    return and_(is_open, followups.c.due_at > now)


# --- what consumed events change -----------------------------------------------------------------


class Changes:
    """What a batch of segment and stage changes needs, read in a few statements: erasures, the
    memberships and stages held, the policies each customer has a follow-up open under, which of
    the batch's triggers made a follow-up already (both kept current as the changes create and
    cancel them), and the stored open follow-ups the changes may cancel. Knowing these, creating
    and cancelling need no statement of their own: the batch's closed follow-ups are updated
    together and its new ones inserted together, as they end the batch (issue 13)."""

    def __init__(self, tx: Transaction, grace: timedelta) -> None:
        self.tx, self.session, self.grace = tx, tx.session, grace
        self.erased: dict[str, datetime] = {}
        self.memberships: dict[Key, dict[str, Any]] = {}
        self.stages: dict[Key, dict[str, Any]] = {}
        self.written: dict[Table, tuple[dict[Key, dict[str, Any]], set[Key]]] = {
            memberships: ({}, set()), stages: ({}, set())}
        self.open: defaultdict[str, set[str]] = defaultdict(set)
        self.used: set[str] = set()  # trigger keys that made a follow-up
        self.created: list[dict[str, Any]] = []  # rows not inserted yet (closed since, some)
        self.held: dict[str, list[dict[str, Any]]] = {}  # customer -> their stored open follow-ups
        self.created_for: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)  # customer -> `created` rows
        self.closed: list[dict[str, Any]] = []  # stored rows closed, not updated yet
        self.now_iso = to_iso(tx.now)

    async def read(self, events: list[SegmentChanged | FunnelStageChanged], triggered: list[list[str]],
                   cancelling: dict[str, set[str]]) -> None:
        """What `events` need; `triggered` are the trigger keys each may create follow-ups under,
        and `cancelling` the customers whose changes may cancel follow-ups, with the policies they
        may cancel."""
        self.erased = await erasure_times(self.session, erasures, {e.customer_id for e in events})
        self.memberships = await read_keyed(self.session, memberships, "segment", (
            (e.customer_id, e.segment) for e in events if isinstance(e, SegmentChanged)))
        self.stages = await read_keyed(self.session, stages, "funnel", (
            (e.customer_id, e.funnel) for e in events if isinstance(e, FunnelStageChanged)))
        # The policies open matter only to customers whose changes may create or cancel some.
        self.open = await _open_policies(self.session, sorted(
            cancelling.keys() | {e.customer_id for e, keys in zip(events, triggered, strict=True) if keys}))
        self.used = await _used_triggers(self.session, [key for keys in triggered for key in keys])
        self.held = {customer: [] for customer in cancelling}
        # Only stored follow-ups the batch may cancel are read (and locked): almost every stage
        # move may cancel a stalled policy's, which few customers have open.
        self.held |= await _open_followups(self.session, sorted(
            c for c, keys in cancelling.items() if c in self.open and not self.open[c].isdisjoint(keys)))

    def is_erased(self, customer: str, at: datetime) -> bool:
        return customer in self.erased and at <= self.erased[customer]

    def hold(self, table: Table, held: dict[Key, dict[str, Any]], key: Key, row: dict[str, Any]) -> None:
        written, inserted = self.written[table]
        if key not in held:
            inserted.add(key)
        held[key] = written[key] = row

    async def write(self) -> None:
        await self._flush()
        await _WRITE_MEMBERSHIPS.write(self.session, *self.written[memberships])
        await _WRITE_STAGES.write(self.session, *self.written[stages])

    def create(self, versioned: Versioned, customer: str, due_at: datetime, reason: str, trigger_key: str) -> None:
        """As `create` does, decided in memory: inserted by `write`."""
        if versioned.policy.key in self.open[customer] or trigger_key in self.used:
            return  # one open per customer and policy, one follow-up per trigger
        row = new_row(versioned, customer, due_at, reason, trigger_key, self.tx.now)
        self.created.append(row)
        self.created_for[customer].append(row)
        self.open[customer].add(versioned.policy.key)
        self.used.add(trigger_key)
        self._publish(row, "created")

    def cancel(self, customer: str, policy_keys: list[str], reason: str) -> None:
        """As `close` would, decided in memory: the customer's stored open follow-ups under these
        policies first, then those this batch created (the order the store gives them). `read`
        was told of every customer and policy the batch's changes may cancel (`cancelling`)."""
        if not self.open[customer].intersection(policy_keys):
            return
        changes = {"status": "cancelled", "completed_at": self.tx.now, "open_slot": None, "reason": reason}
        for stored, rows in ((True, self.held[customer]), (False, self.created_for[customer])):
            for row in rows:
                if row["policy"] in policy_keys and row["status"] in OPEN:
                    row.update(changes)
                    if stored:
                        self.closed.append(row)
                    self._publish(row, "cancelled")
        self.open[customer].difference_update(policy_keys)

    def _publish(self, row: dict[str, Any], change: str) -> None:
        """The row as it stands (no read back), as `_publish_row` publishes it."""
        now = self.tx.now
        body = {"id": row["id"], "policy": row["policy"], "policy_version": row["policy_version"],
                "customer_id": row["customer_id"], "channel": row["channel"], "priority": row["priority"],
                "assignee": row["assignee"], "status": status_at(row["status"], row["due_at"], now, self.grace),
                "due_at": to_iso(row["due_at"]),
                "created_at": self.now_iso if row["created_at"] == now else to_iso(row["created_at"]),
                "completed_at": (self.now_iso if row["completed_at"] == now else to_iso(row["completed_at"]))
                if row["completed_at"] else None,
                "outcome": row["outcome"], "note": row["note"], "reason": row["reason"]}
        self.tx.outbox.add(changed_record(row["customer_id"], row["id"], change, row["policy"], now, body, self.now_iso))

    async def _flush(self) -> None:
        """The closed stored follow-ups are updated first (that frees their open slots), then the
        new ones are inserted, as they stand. A plain insert: both unique keys were checked above,
        so a conflict means another transaction won a race, and the batch runs again (ignoring
        it would publish a follow-up that is not stored)."""
        await _CLOSE.run(self.session, [(r["id"], r["status"], r["completed_at"], r["reason"]) for r in self.closed])
        await _INSERT.run(self.session, [tuple(r[c] for c in _INSERTED) for r in self.created])
        self.closed, self.created = [], []
        self.held, self.created_for = {}, defaultdict(list)  # the store has them now


_INSERTED = ("id", "policy", "policy_version", "customer_id", "channel", "priority", "assignee", "status", "due_at",
             "created_at", "completed_at", "reason", "open_slot", "trigger_key")
# A batch's rows go to the driver as tuples, compiled once (shared/bulk.py).
_INSERT = BulkWrite(lambda _: insert(followups), _INSERTED)
_CLOSE = BulkWrite(lambda _: update(followups).where(followups.c.id == bindparam("k_id")).values(
    status=bindparam("v_status", type_=followups.c.status.type),
    completed_at=bindparam("v_completed_at", type_=followups.c.completed_at.type),
    reason=bindparam("v_reason", type_=followups.c.reason.type), open_slot=null()),
    ("k_id", "v_status", "v_completed_at", "v_reason"))


_WRITE_MEMBERSHIPS = KeyedWrites(memberships, "segment")
_WRITE_STAGES = KeyedWrites(stages, "funnel")


async def merge_customer(session: AsyncSession, merged: str, customer: str, now: datetime, outbox: Outbox,
                         grace: timedelta) -> None:
    """A customers.v1 link: the merged id's follow-ups and state become the customer's; where both
    had one open under the same policy, the merged id's is cancelled (one open per customer and
    policy)."""
    await relink(session, links, merged, customer)
    theirs = select(followups.c.policy).where(followups.c.customer_id == customer, followups.c.open_slot.is_not(None))
    await close(session, and_(followups.c.customer_id == merged, followups.c.policy.in_(theirs)), "cancelled", now,
                outbox, grace, f"merged into {customer}, who has one open under the same policy")
    opened = await session.execute(select(followups.c.id, followups.c.policy).where(
        followups.c.customer_id == merged, followups.c.open_slot.is_not(None)))
    for followup_id, policy in opened.all():
        await session.execute(update(followups).where(followups.c.id == followup_id).values(
            open_slot=f"{customer}|{policy}"))
    await session.execute(update(followups).where(followups.c.customer_id == merged).values(customer_id=customer))
    # Segmentation and funnel publish the merged customer's memberships and stages themselves.
    for table in (memberships, stages):
        await session.execute(delete(table).where(table.c.customer_id == merged))


async def erase_customer(session: AsyncSession, event: CustomerErased) -> list[str]:
    """Every row about the customer, under any of their ids, goes: follow-ups with their
    deliveries, memberships, stages, and their events waiting in the outbox. Returns the ids."""
    theirs = select(followups.c.id).where(followups.c.customer_id.in_(await erased_ids(session, links, event)))
    await session.execute(delete(deliveries).where(deliveries.c.followup_id.in_(theirs)))
    return await erase(session, links, erasures, event, customer_tables, bus_tables.outbox)


async def _used_triggers(session: AsyncSession, trigger_keys: list[str]) -> set[str]:
    """The trigger keys that made a follow-up already (redelivered or replayed events)."""
    found: set[str] = set()
    for chunk in chunks(sorted(set(trigger_keys))):
        found.update(await session.scalars(select(followups.c.trigger_key).where(
            among(followups.c.trigger_key, chunk, session))))
    return found


async def _open_followups(session: AsyncSession, customers: list[str]) -> dict[str, list[dict[str, Any]]]:
    """customer -> their open follow-ups (whole rows, in the order the store gives them), for each
    of `customers`; locked until the batch commits, as `close` locks what it closes: the API cannot
    complete one the batch is about to cancel (nor the reverse)."""
    found: dict[str, list[dict[str, Any]]] = {c: [] for c in customers}
    for chunk in chunks(customers):
        rows = await session.execute(select(followups).where(among(followups.c.customer_id, chunk, session),
                                                             followups.c.status.in_(OPEN)).with_for_update())
        for row in rows.mappings():
            found[row["customer_id"]].append(dict(row))
    return found


async def _open_policies(session: AsyncSession, customers: list[str]) -> defaultdict[str, set[str]]:
    """customer -> the policies they have a follow-up open under."""
    found: defaultdict[str, set[str]] = defaultdict(set)
    for chunk in chunks(customers):
        rows = await session.execute(select(followups.c.customer_id, followups.c.policy).where(
            among(followups.c.customer_id, chunk, session), followups.c.status.in_(OPEN)))
        for customer, policy in rows.tuples():
            found[customer].add(policy)
    return found

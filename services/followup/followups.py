"""Follow-ups in the store: creating them (once per trigger, one open per customer and policy),
closing them, moving them by the clock, and the reminders that go with each move."""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import and_, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.followup.policies import DEFAULT_POLICIES, Policy, parse_policy
from services.followup.store import deliveries, followups, memberships, policies, stages
from shared.events import FollowupChanged, stable_id, to_iso
from shared.outbox import Outbox
from shared.identity import chunks
from shared.store import insert_ignoring_conflicts

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


def _dialect(session: AsyncSession) -> str:
    return session.bind.dialect.name if session.bind else "sqlite"


async def create(session: AsyncSession, versioned: Versioned, customer: str, due_at: datetime, reason: str,
                 trigger_key: str, now: datetime, outbox: Outbox, grace: timedelta) -> str | None:
    """A follow-up under a policy, unless this trigger made one already or one is open for the
    customer under the policy. Returns its id, or None."""
    policy = versioned.policy
    followup_id = stable_id("followup", trigger_key)
    row = {"id": followup_id, "policy": policy.key, "policy_version": versioned.version, "customer_id": customer,
           "channel": policy.channel, "priority": policy.priority, "assignee": policy.assignee, "status": "pending",
           "due_at": due_at, "created_at": now, "reason": reason, "open_slot": f"{customer}|{policy.key}",
           "trigger_key": trigger_key}
    result = await session.execute(insert_ignoring_conflicts(followups, _dialect(session)).values(row))
    if not result.rowcount:  # type: ignore[attr-defined]
        return None
    await publish(session, followup_id, "created", now, outbox, grace)
    return followup_id


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
    body = as_json(row, at, grace) | ({"status": status} if status else {})
    outbox.publish(FollowupChanged(customer_id=row.customer_id, followup_id=followup_id, change=change,  # type: ignore[arg-type]
                                   policy=row.policy, at=at, followup=body))
    return body


async def close(session: AsyncSession, where: Any, status: str, now: datetime, outbox: Outbox, grace: timedelta,
                reason: str | None = None, **values: Any) -> list[str]:
    """Open follow-ups matching `where` become done or cancelled (final). Returns their ids."""
    ids = list((await session.execute(select(followups.c.id).where(where, followups.c.status.in_(OPEN)))).scalars())
    if ids:
        extra = {"reason": reason} if reason is not None else {}
        await session.execute(update(followups).where(followups.c.id.in_(ids)).values(
            status=status, completed_at=now, open_slot=None, **extra, **values))
        for followup_id in ids:
            await publish(session, followup_id, "completed" if status == "done" else "cancelled", now, outbox, grace)
    return ids


async def cancel_for(session: AsyncSession, customer: str, policy_keys: list[str], reason: str, now: datetime,
                     outbox: Outbox, grace: timedelta) -> list[str]:
    if not policy_keys:
        return []
    return await close(session, and_(followups.c.customer_id == customer, followups.c.policy.in_(policy_keys)),
                       "cancelled", now, outbox, grace, reason)


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
                outbox.publish(FollowupChanged(customer_id=row.customer_id, followup_id=row.id, change=status,  # type: ignore[arg-type]
                                               policy=row.policy, at=now, followup=body))
                reminders += _reminders(row.id, status, body, urls, now)
            for start in range(0, len(reminders), 5000):
                await session.execute(insert_ignoring_conflicts(deliveries, _dialect(session)), reminders[start:start + 5000])
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


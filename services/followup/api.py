"""The follow-up HTTP API (API.md section 5): policies, follow-ups, actions, stats."""
from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Body, Query, Request, Response
from pydantic import BaseModel, Field
from sqlalchemy import and_, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.followup.followups import (
    OPEN,
    as_json,
    close,
    create_manual,
    current_policies,
    next_of,
    publish,
    status_at,
    status_filter,
)
from services.followup.policies import DEFAULT_POLICIES, parse_policy
from services.followup.settings import FollowupSettings
from services.followup.store import followups, policies
from shared.auth import AdminDep, ReaderDep
from shared.errors import ApiError
from shared.events import to_iso
from shared.params import time_window, utc
from shared.paging import Cursor, Limit, Page, decode_cursor, encode_cursor
from shared.rules import RuleError
from shared.service import Runtime

router = APIRouter(tags=["followups"])
PolicyBody = Annotated[dict[str, Any], Body(description="{key, name, trigger, channel, priority, due_in_hours, "
                                                        "cadence_days?, cancel_on?, assignee?} (+ apply_to_open on PUT)")]


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def _grace(request: Request) -> timedelta:
    settings: FollowupSettings = request.app.state.settings
    return timedelta(hours=settings.grace_hours)


# --- policies ------------------------------------------------------------------------------------

async def _policy_json(session: AsyncSession, key: str) -> dict[str, Any]:
    found = (await current_policies(session)).get(key)
    if found is None:
        raise ApiError(404, f"No policy {key!r}. GET /api/followups/policies lists them.")
    return {**found.policy.to_json(), "version": found.version, "built_in": key in DEFAULT_POLICIES}


def _parse(raw: dict[str, Any], key: str | None = None) -> Any:
    try:
        return parse_policy(raw, key)
    except RuleError as err:
        raise ApiError(422, f"Bad policy at {err.where}: {err.message}.", "invalid_policy",
                       [{"loc": err.where, "msg": err.message}]) from None


@router.get("/api/followups/policies")
async def list_policies(request: Request, _: ReaderDep) -> list[dict[str, Any]]:
    """Every policy in force (the defaults included) with its version."""
    async with _runtime(request).store.read() as session:
        held = await current_policies(session)
    return [{**v.policy.to_json(), "version": v.version, "built_in": k in DEFAULT_POLICIES} for k, v in sorted(held.items())]


@router.get("/api/followups/policies/{key}")
async def get_policy(request: Request, key: str, _: ReaderDep) -> dict[str, Any]:
    async with _runtime(request).store.read() as session:
        return await _policy_json(session, key)


async def _write_version(session: AsyncSession, key: str, definition: dict[str, Any], now: datetime, deleted: bool = False) -> int:
    latest = await session.scalar(select(policies.c.version).where(policies.c.key == key).order_by(policies.c.version.desc()).limit(1))
    version = (latest or (1 if key in DEFAULT_POLICIES else 0)) + 1
    await session.execute(update(policies).where(policies.c.key == key).values(current=0))
    await session.execute(insert(policies).values(key=key, version=version, definition=orjson.dumps(definition).decode(),
                                                  current=1, deleted=int(deleted), created_at=now))
    return version


@router.post("/api/followups/policies", status_code=201)
async def create_policy(request: Request, body: PolicyBody, _: AdminDep) -> dict[str, Any]:
    policy = _parse(body)
    runtime = _runtime(request)
    async with runtime.changing() as (session, _outbox):
        if policy.key in await current_policies(session):
            raise ApiError(409, f"A policy {policy.key!r} already exists; PUT /api/followups/policies/{policy.key} changes it.")
        await _write_version(session, policy.key, policy.to_json(), runtime.clock.now())
        return await _policy_json(session, policy.key)


@router.put("/api/followups/policies/{key}")
async def update_policy(request: Request, key: str, body: PolicyBody, _: AdminDep) -> dict[str, Any]:
    """A new version. `apply_to_open` says what happens to follow-ups open under the old one:
    `keep` (default: they stay as they are), `reschedule` (they take the new channel, priority,
    assignee and due time, counted from when they were triggered) or `cancel`."""
    apply_to_open = body.get("apply_to_open", "keep")
    if apply_to_open not in ("keep", "reschedule", "cancel"):
        raise ApiError(422, "apply_to_open is one of keep, reschedule, cancel.", "invalid_policy", [{"loc": "apply_to_open"}])
    if body.get("key", key) != key:
        raise ApiError(422, f"The body's key {body['key']!r} differs from the path's {key!r}.", details=[{"loc": "key"}])
    policy = _parse(body, key)
    runtime = _runtime(request)
    now = runtime.clock.now()
    async with runtime.changing() as (session, outbox):
        old = (await current_policies(session)).get(key)
        if old is None:
            raise ApiError(404, f"No policy {key!r}. POST /api/followups/policies creates one.")
        version = await _write_version(session, key, policy.to_json(), now)
        is_open = and_(followups.c.policy == key, followups.c.status.in_(OPEN))
        if apply_to_open == "cancel":
            await close(session, is_open, "cancelled", now, outbox, _grace(request), f"policy {key} changed (version {version})")
        elif apply_to_open == "reschedule":
            shift = timedelta(hours=policy.due_in_hours - old.policy.due_in_hours)
            for row in (await session.execute(select(followups.c.id, followups.c.due_at).where(is_open))).all():
                await session.execute(update(followups).where(followups.c.id == row.id).values(
                    due_at=row.due_at + shift, status="pending", channel=policy.channel, priority=policy.priority,
                    assignee=policy.assignee, policy_version=version))
                await publish(session, row.id, "snoozed", now, outbox, _grace(request))
        return await _policy_json(session, key)


@router.delete("/api/followups/policies/{key}", status_code=204)
async def delete_policy(request: Request, key: str, _: AdminDep) -> Response:
    """A custom policy goes and its open follow-ups are cancelled. Default policies stay (edit them)."""
    if key in DEFAULT_POLICIES:
        raise ApiError(409, f"{key!r} is a default policy: always present, PUT changes it.")
    runtime = _runtime(request)
    now = runtime.clock.now()
    async with runtime.changing() as (session, outbox):
        old = (await current_policies(session)).get(key)
        if old is None:
            raise ApiError(404, f"No policy {key!r}.")
        await _write_version(session, key, old.policy.to_json(), now, deleted=True)
        await close(session, and_(followups.c.policy == key), "cancelled", now, outbox, _grace(request), f"policy {key} deleted")
    return Response(status_code=204)


# --- follow-ups ----------------------------------------------------------------------------------

class ManualFollowup(BaseModel):
    customer_id: str = Field(min_length=1, max_length=200)
    channel: Literal["phone", "email", "sms", "meeting", "chat", "task"] = "task"
    priority: Literal["low", "normal", "high", "urgent"] = "normal"
    due_at: datetime
    assignee: str | None = Field(None, min_length=1, max_length=200)
    note: str | None = Field(None, max_length=5000)
    reason: str = Field("created by hand", max_length=1000)


class Complete(BaseModel):
    outcome: str = Field(min_length=1, max_length=50, description="e.g. reached, no_answer, converted, not_interested")
    note: str | None = Field(None, max_length=5000)
    next_due_at: datetime | None = Field(None, description="When the next one is due (else the policy's cadence).")


class Snooze(BaseModel):
    until: datetime


class Cancel(BaseModel):
    reason: str = Field(min_length=1, max_length=1000)


class Assign(BaseModel):
    assignee: str | None = Field(min_length=1, max_length=200)


@router.get("/api/followups/stats")
async def followup_stats(
    request: Request, _: ReaderDep,
    from_: Annotated[datetime | None, Query(alias="from", description="Follow-ups due at or after; default 30 days before `to`.")] = None,
    to: Annotated[datetime | None, Query(description="Follow-ups due before; default now.")] = None,
) -> dict[str, Any]:
    """Per assignee and channel, among follow-ups due in [from, to): done on time (before they
    became overdue), done late, overdue now, open (pending or due)."""
    runtime = _runtime(request)
    now, grace = runtime.clock.now(), _grace(request)
    start, end = time_window(from_, to, now)
    async with runtime.store.read() as session:
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
    items = [{"assignee": a, "channel": c, **n} for (a, c), n in sorted(counts.items(), key=lambda i: (i[0][0] or "", i[0][1]))]
    return {"from": to_iso(start), "to": to_iso(end), "items": items}


@router.get("/api/followups", response_model=Page[dict[str, Any]])
async def list_followups(
    request: Request, _: ReaderDep,
    status: Literal["pending", "due", "overdue", "done", "cancelled"] | None = None,
    assignee: str | None = None, customer_id: str | None = None,
    due_before: Annotated[datetime | None, Query(description="Only follow-ups due before this time.")] = None,
    limit: Limit = 50, cursor: Cursor = None,
) -> Page[dict[str, Any]]:
    """Follow-ups, soonest due first, with the contract's filters (status by the clock now)."""
    runtime = _runtime(request)
    now, grace = runtime.clock.now(), _grace(request)
    after = decode_cursor(cursor, str, str)
    query = select(followups).order_by(followups.c.due_at, followups.c.id).limit(limit + 1)
    if status:
        query = query.where(status_filter(status, now, grace))
    if assignee:
        query = query.where(followups.c.assignee == assignee)
    if customer_id:
        query = query.where(followups.c.customer_id == customer_id)
    if due_before:
        query = query.where(followups.c.due_at < utc(due_before, "due_before"))
    if after:
        at = _cursor_time(after[0])
        query = query.where((followups.c.due_at > at) | ((followups.c.due_at == at) & (followups.c.id > after[1])))
    async with runtime.store.read() as session:
        rows = (await session.execute(query)).all()
    last = rows[limit - 1] if len(rows) > limit else None
    return Page(items=[as_json(r, now, grace) for r in rows[:limit]],
                next_cursor=encode_cursor(last.due_at.isoformat(), last.id) if last else None)


def _cursor_time(value: str) -> datetime:
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        at = None
    if at is None or at.tzinfo is None:
        raise ApiError(400, "The cursor is not one this API gave out; start again without it.", "invalid_cursor")
    return at


@router.post("/api/followups", status_code=201)
async def create_followup(request: Request, body: ManualFollowup, _: AdminDep) -> dict[str, Any]:
    """A follow-up made by hand (no policy: any number may be open)."""
    runtime = _runtime(request)
    now = runtime.clock.now()
    values = body.model_dump()
    values["due_at"] = utc(body.due_at, "due_at")
    async with runtime.changing() as (session, outbox):
        followup_id = await create_manual(session, values, now, outbox, _grace(request))
        return await _followup(session, followup_id, request)


async def _followup(session: AsyncSession, followup_id: str, request: Request) -> dict[str, Any]:
    row = (await session.execute(select(followups).where(followups.c.id == followup_id))).first()
    if row is None:
        raise ApiError(404, f"No follow-up {followup_id!r}.")
    return as_json(row, _runtime(request).clock.now(), _grace(request))


@router.get("/api/followups/{followup_id}")
async def get_followup(request: Request, followup_id: str, _: ReaderDep) -> dict[str, Any]:
    async with _runtime(request).store.read() as session:
        return await _followup(session, followup_id, request)


async def _open(session: AsyncSession, followup_id: str, request: Request) -> Any:
    row = (await session.execute(select(followups).where(followups.c.id == followup_id))).first()
    if row is None:
        raise ApiError(404, f"No follow-up {followup_id!r}.")
    if row.status not in OPEN:
        raise ApiError(409, f"Follow-up {followup_id!r} is {row.status}: done and cancelled ones never move again.")
    return row


@router.post("/api/followups/{followup_id}/complete")
async def complete_followup(request: Request, followup_id: str, body: Complete, _: AdminDep) -> dict[str, Any]:
    """Done, with the outcome; a recurring policy schedules the next one (at `next_due_at`, else
    its cadence from now) while the customer still qualifies. The answer carries `next`."""
    runtime = _runtime(request)
    now = runtime.clock.now()
    next_due = utc(body.next_due_at, "next_due_at")
    async with runtime.changing() as (session, outbox):
        await _open(session, followup_id, request)
        await close(session, followups.c.id == followup_id, "done", now, outbox, _grace(request), None,
                    outcome=body.outcome, note=body.note)
        following = await next_of(session, followup_id, now, now, outbox, _grace(request), next_due)
        answer = await _followup(session, followup_id, request)
        answer["next"] = await _followup(session, following, request) if following else None
        return answer


@router.post("/api/followups/{followup_id}/snooze")
async def snooze_followup(request: Request, followup_id: str, body: Snooze, _: AdminDep) -> dict[str, Any]:
    """Due again at `until` (pending until then)."""
    runtime = _runtime(request)
    until = utc(body.until, "until")
    async with runtime.changing() as (session, outbox):
        await _open(session, followup_id, request)
        await session.execute(update(followups).where(followups.c.id == followup_id).values(due_at=until, status="pending"))
        await publish(session, followup_id, "snoozed", runtime.clock.now(), outbox, _grace(request))
        return await _followup(session, followup_id, request)


@router.post("/api/followups/{followup_id}/cancel")
async def cancel_followup(request: Request, followup_id: str, body: Cancel, _: AdminDep) -> dict[str, Any]:
    runtime = _runtime(request)
    async with runtime.changing() as (session, outbox):
        row = await _open(session, followup_id, request)
        await close(session, followups.c.id == row.id, "cancelled", runtime.clock.now(), outbox, _grace(request), body.reason)
        return await _followup(session, followup_id, request)


@router.post("/api/followups/{followup_id}/assign")
async def assign_followup(request: Request, followup_id: str, body: Assign, _: AdminDep) -> dict[str, Any]:
    runtime = _runtime(request)
    async with runtime.changing() as (session, outbox):
        await _open(session, followup_id, request)
        await session.execute(update(followups).where(followups.c.id == followup_id).values(assignee=body.assignee))
        await publish(session, followup_id, "assigned", runtime.clock.now(), outbox, _grace(request))
        return await _followup(session, followup_id, request)


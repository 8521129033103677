"""The follow-up HTTP API (docs/api.md section 5): policies, follow-ups, actions, stats."""
from __future__ import annotations

from datetime import datetime, timedelta
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response

from services.followup import followups
from services.followup.followups import OPEN, Versioned, as_json, current_policies, policies_after
from services.followup.policies import DEFAULT_POLICIES, parse_policy
from services.followup.schemas import (
    Assign,
    Cancel,
    Complete,
    CompletedAnswer,
    FollowupAnswer,
    FollowupStats,
    ManualFollowup,
    PolicyAnswer,
    PolicyBody,
    Snooze,
    Status,
)
from services.followup.settings import FollowupSettings
from shared.auth import AdminDep, ReaderDep
from shared.errors import ApiError, rule_errors_as_422
from shared.events import to_iso
from shared.paging import (
    Cursor,
    Limit,
    Page,
    cursor_time,
    decode_cursor,
    decode_key_cursor,
    encode_cursor,
)
from shared.params import refuse_nul_characters, time_window, utc
from shared.consumer import Transaction
from shared.service import Runtime

router = APIRouter(tags=["followups"], dependencies=[Depends(refuse_nul_characters)])


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def _grace(request: Request) -> timedelta:
    settings: FollowupSettings = request.app.state.settings
    return timedelta(hours=settings.grace_hours)


# --- policies ------------------------------------------------------------------------------------

def _policy_json(key: str, found: Versioned | None) -> PolicyAnswer:
    if found is None:
        raise ApiError(404, f"No policy {key!r}. GET /api/followups/policies lists them.")
    return PolicyAnswer(**found.policy.to_json(), version=found.version, built_in=key in DEFAULT_POLICIES)


def _parse(raw: dict[str, Any], key: str | None = None) -> Any:
    with rule_errors_as_422("policy"):
        return parse_policy(raw, key)


@router.get("/api/followups/policies")
async def list_policies(request: Request, _: ReaderDep, limit: Limit = 50, cursor: Cursor = None) -> Page[PolicyAnswer]:
    """Every policy in force with its version: the defaults first (in a fixed order), then custom
    ones by key; paged (follow `next_cursor`)."""
    after = decode_key_cursor(cursor)
    async with _runtime(request).store.read() as session:
        held = await policies_after(session, after, limit + 1)
    items = [_policy_json(k, v) for k, v in held[:limit]]
    return Page(items=items, next_cursor=encode_cursor(held[limit - 1][0]) if len(held) > limit else None)


@router.get("/api/followups/policies/{key}")
async def get_policy(request: Request, key: str, _: ReaderDep) -> PolicyAnswer:
    async with _runtime(request).store.read() as session:
        return _policy_json(key, (await current_policies(session)).get(key))


@router.post("/api/followups/policies", status_code=201)
async def create_policy(request: Request, body: PolicyBody, _: AdminDep) -> PolicyAnswer:
    policy = _parse(body)
    runtime = _runtime(request)
    async with runtime.changing() as tx:
        if policy.key in await current_policies(tx.session):
            raise ApiError(409, f"A policy {policy.key!r} already exists; PUT /api/followups/policies/{policy.key} changes it.")
        await followups.write_version(tx.session, policy.key, policy.to_json(), tx.now)
        return _policy_json(policy.key, (await current_policies(tx.session)).get(policy.key))


@router.put("/api/followups/policies/{key}")
async def update_policy(request: Request, key: str, body: PolicyBody, _: AdminDep) -> PolicyAnswer:
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
    grace = _grace(request)
    async with runtime.changing() as tx:
        old = (await current_policies(tx.session)).get(key)
        if old is None:
            raise ApiError(404, f"No policy {key!r}. POST /api/followups/policies creates one.")
        version = await followups.write_version(tx.session, key, policy.to_json(), tx.now)
        if apply_to_open == "cancel":
            await followups.cancel_open(tx.session, key, f"policy {key} changed (version {version})", tx.now, tx.outbox, grace)
        elif apply_to_open == "reschedule":
            shift = timedelta(hours=policy.due_in_hours - old.policy.due_in_hours)
            await followups.reschedule_open(tx.session, key, policy, shift, version, tx.now, tx.outbox, grace)
        return _policy_json(key, (await current_policies(tx.session)).get(key))


@router.delete("/api/followups/policies/{key}", status_code=204)
async def delete_policy(request: Request, key: str, _: AdminDep) -> Response:
    """A custom policy goes and its open follow-ups are cancelled. Default policies stay (edit them)."""
    if key in DEFAULT_POLICIES:
        raise ApiError(409, f"{key!r} is a default policy: always present, PUT changes it.")
    runtime = _runtime(request)
    async with runtime.changing() as tx:
        old = (await current_policies(tx.session)).get(key)
        if old is None:
            raise ApiError(404, f"No policy {key!r}.")
        await followups.write_version(tx.session, key, old.policy.to_json(), tx.now, deleted=True)
        await followups.cancel_open(tx.session, key, f"policy {key} deleted", tx.now, tx.outbox, _grace(request))
    return Response(status_code=204)


# --- follow-ups ----------------------------------------------------------------------------------

@router.get("/api/followups/stats")
async def followup_stats(
    request: Request, _: ReaderDep,
    from_: Annotated[datetime | None, Query(alias="from", description="Follow-ups due at or after; default 30 days before `to`.")] = None,
    to: Annotated[datetime | None, Query(description="Follow-ups due before; default now.")] = None,
) -> FollowupStats:
    """Per assignee and channel, among follow-ups due in [from, to): done on time (before they
    became overdue), done late, overdue now, open (pending or due)."""
    runtime = _runtime(request)
    now, grace = runtime.clock.now(), _grace(request)
    start, end = time_window(from_, to, now)
    async with runtime.store.read() as session:
        items = await followups.on_time_stats(session, start, end, now, grace)
    return FollowupStats.model_validate({"from": to_iso(start), "to": to_iso(end), "items": items})


@router.get("/api/followups")
async def list_followups(
    request: Request, _: ReaderDep,
    status: Status | None = None,
    assignee: str | None = None, customer_id: str | None = None,
    due_before: Annotated[datetime | None, Query(description="Only follow-ups due before this time.")] = None,
    limit: Limit = 50, cursor: Cursor = None,
) -> Page[FollowupAnswer]:
    """Follow-ups, soonest due first, with the contract's filters (status by the clock now)."""
    runtime = _runtime(request)
    now, grace = runtime.clock.now(), _grace(request)
    after = decode_cursor(cursor, str, str)
    before = utc(due_before, "due_before") if due_before else None
    key = (cursor_time(after[0]), after[1]) if after else None
    async with runtime.store.read() as session:
        rows = await followups.page(session, now, grace, limit + 1, key, status, assignee, customer_id, before)
    last = rows[limit - 1] if len(rows) > limit else None
    return Page(items=[FollowupAnswer(**as_json(r, now, grace)) for r in rows[:limit]],
                next_cursor=encode_cursor(last.due_at.isoformat(), last.id) if last else None)


@router.post("/api/followups", status_code=201)
async def create_followup(request: Request, body: ManualFollowup, _: AdminDep) -> FollowupAnswer:
    """A follow-up made by hand (no policy: any number may be open)."""
    runtime = _runtime(request)
    values = body.model_dump()
    values["due_at"] = utc(body.due_at, "due_at")
    async with runtime.changing() as tx:
        followup_id = await followups.create_manual(tx.session, values, tx.now, tx.outbox, _grace(request))
        return _followup_json(followup_id, await followups.find(tx.session, followup_id), request)


def _followup_json(followup_id: str, row: Any, request: Request) -> FollowupAnswer:
    if row is None:
        raise ApiError(404, f"No follow-up {followup_id!r}.")
    return FollowupAnswer(**as_json(row, _runtime(request).clock.now(), _grace(request)))


def _must_be_open(followup_id: str, row: Any) -> None:
    if row is None:
        raise ApiError(404, f"No follow-up {followup_id!r}.")
    if row.status not in OPEN:
        raise ApiError(409, f"Follow-up {followup_id!r} is {row.status}: done and cancelled ones never move again.")


@router.get("/api/followups/{followup_id}")
async def get_followup(request: Request, followup_id: str, _: ReaderDep) -> FollowupAnswer:
    async with _runtime(request).store.read() as session:
        return _followup_json(followup_id, await followups.find(session, followup_id), request)


@router.post("/api/followups/{followup_id}/complete")
async def complete_followup(request: Request, followup_id: str, body: Complete, _: AdminDep) -> CompletedAnswer:
    """Done, with the outcome; a recurring policy schedules the next one (at `next_due_at`, else
    its cadence from now) while the customer still qualifies. The answer carries `next`."""
    runtime = _runtime(request)
    grace = _grace(request)
    next_due = utc(body.next_due_at, "next_due_at")
    async with runtime.changing() as tx:
        _must_be_open(followup_id, await followups.find(tx.session, followup_id))
        await followups.complete(tx.session, followup_id, body.outcome, body.note, tx.now, tx.outbox, grace)
        following = await followups.next_of(tx.session, followup_id, tx.now, tx.now, tx.outbox, grace, next_due)
        answer = _followup_json(followup_id, await followups.find(tx.session, followup_id), request)
        after = _followup_json(following, await followups.find(tx.session, following), request) if following else None
        return CompletedAnswer(**answer.model_dump(), next=after)


async def _on_open(request: Request, followup_id: str, action: Callable[[Transaction, timedelta], Awaitable[object]],
                   ) -> FollowupAnswer:
    """`action` on an open follow-up (404: none such; 409: done or cancelled); answers it as it is after."""
    async with _runtime(request).changing() as tx:
        _must_be_open(followup_id, await followups.find(tx.session, followup_id))
        await action(tx, _grace(request))
        return _followup_json(followup_id, await followups.find(tx.session, followup_id), request)


@router.post("/api/followups/{followup_id}/snooze")
async def snooze_followup(request: Request, followup_id: str, body: Snooze, _: AdminDep) -> FollowupAnswer:
    """Due again at `until` (pending until then)."""
    until = utc(body.until, "until")
    return await _on_open(request, followup_id, lambda tx, grace: followups.snooze(
        tx.session, followup_id, until, tx.now, tx.outbox, grace))


@router.post("/api/followups/{followup_id}/cancel")
async def cancel_followup(request: Request, followup_id: str, body: Cancel, _: AdminDep) -> FollowupAnswer:
    return await _on_open(request, followup_id, lambda tx, grace: followups.cancel(
        tx.session, followup_id, body.reason, tx.now, tx.outbox, grace))


@router.post("/api/followups/{followup_id}/assign")
async def assign_followup(request: Request, followup_id: str, body: Assign, _: AdminDep) -> FollowupAnswer:
    return await _on_open(request, followup_id, lambda tx, grace: followups.assign(
        tx.session, followup_id, body.assignee, tx.now, tx.outbox, grace))

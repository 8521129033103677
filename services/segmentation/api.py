"""The segmentation HTTP API: customer profiles and segments (API.md section 3)."""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, Field
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.segmentation.custom import Definition, definitions, evaluate_custom
from shared.keys import KEY_PATTERN
from services.segmentation.evaluation import apply, days_between
from services.segmentation.facts import load_facts
from services.segmentation.handlers import canonical
from services.segmentation.logic import builtin_segments
from services.segmentation.rules import parse
from services.segmentation.settings import SegmentationSettings
from services.segmentation.store import history, memberships, profiles, segment_definitions
from shared.auth import AdminDep, ReaderDep
from shared.errors import ApiError
from shared.events import to_iso
from shared.params import time_window
from shared.paging import Cursor, Limit, Page, decode_cursor, encode_cursor
from shared.rules import Rule, RuleError, evaluate, explain, to_json
from shared.service import Runtime

router = APIRouter(tags=["segments"])
INTERVALS = {"hour": timedelta(hours=1), "day": timedelta(days=1), "week": timedelta(weeks=1)}
MAX_POINTS = 1000


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


@router.get("/api/customers/{customer_id}", tags=["customers"])
async def customer_profile(request: Request, customer_id: str, _: ReaderDep) -> dict[str, Any]:
    """The customer's profile, segments, and why the customer is in each one."""
    runtime = _runtime(request)
    now = runtime.clock.now()
    async with runtime.store.read() as session:
        customer = await canonical(session, customer_id)
        row = (await session.execute(select(profiles).where(profiles.c.customer_id == customer))).first()
        if row is None:
            raise ApiError(404, f"No customer {customer_id!r}.")
        held = (await session.execute(select(memberships).where(memberships.c.customer_id == customer)
                                      .order_by(memberships.c.segment))).all()
        custom = await definitions(session, [m.segment for m in held if ":" not in m.segment])
        facts = await load_facts(session, [d.rule for d in custom], now, [customer])
    if custom and facts.size == 0:  # erased (or merged away) between the reads above
        raise ApiError(404, f"No customer {customer_id!r}.")
    bare = dict(m.segment.split(":", 1) for m in held if ":" in m.segment)
    why: dict[str, Any] = {m.segment: {"reason": m.reason, "since": to_iso(m.since)} for m in held}
    for d in custom:  # the rule, with the customer's values now
        why[d.key]["rule"] = explain(d.rule, facts)
    return {
        "customer_id": customer,
        "traits": orjson.loads(row.traits),
        "first_seen": to_iso(row.first_seen),
        "last_seen": to_iso(row.last_seen),
        "event_count": row.event_count,
        "order_count": row.order_count,
        "revenue": row.revenue,
        "last_order_at": to_iso(row.last_order_at) if row.last_order_at else None,
        "avg_order_value": row.revenue / row.order_count if row.order_count else None,
        "channel": row.channel,
        "rfm": {"recency_days": round(days_between(row.last_order_at, now), 3), "r": row.rfm_r, "f": row.rfm_f,
                "m": row.rfm_m, "label": row.rfm_label} if row.last_order_at and row.rfm_label else None,
        "lifecycle": bare.get("lifecycle"),
        "value_tier": bare.get("value"),
        "frequency_tier": bare.get("frequency"),
        "segments": [m.segment for m in held],
        "why": why,
    }


class SegmentSummary(BaseModel):
    key: str
    name: str
    description: str
    built_in: bool
    member_count: int
    rule: dict[str, Any] | None = None
    created_at: str | None = None
    updated_at: str | None = None


class SegmentIn(BaseModel):
    key: str = Field(description="Letters, digits, '_', '-', '.'; no ':' (built-in keys have one).")
    name: str | None = Field(None, max_length=200)
    description: str = Field("", max_length=2000)
    rule: Any = Field(description="The rule (API.md section 3).")


class SegmentUpdate(BaseModel):
    name: str | None = Field(None, max_length=200)
    description: str | None = Field(None, max_length=2000)
    rule: Any = Field(description="The rule (API.md section 3).")


class PreviewIn(BaseModel):
    rule: Any = Field(description="The rule to count, not saved.")


class Preview(BaseModel):
    count: int
    sample: list[str]


def _summary(d: Definition, member_count: int) -> SegmentSummary:
    return SegmentSummary(key=d.key, name=d.name, description=d.description, built_in=False,
                          member_count=member_count, rule=to_json(d.rule), created_at=to_iso(d.created_at),
                          updated_at=to_iso(d.updated_at))


async def _member_counts(session: AsyncSession, keys: list[str] | None = None) -> dict[str, int]:
    query = select(memberships.c.segment, func.count()).group_by(memberships.c.segment)
    if keys is not None:
        query = query.where(memberships.c.segment.in_(keys))
    return {segment: int(n) for segment, n in (await session.execute(query)).all()}


@router.get("/api/segments", response_model=list[SegmentSummary])
async def list_segments(request: Request, _: ReaderDep) -> list[SegmentSummary]:
    """Every segment, built-in then custom, with its member count."""
    async with _runtime(request).store.read() as session:
        counts = await _member_counts(session)
        custom = await definitions(session)
    return [SegmentSummary(key=k, name=k, description=d, built_in=True, member_count=counts.get(k, 0))
            for k, d in builtin_segments().items()] + [_summary(d, counts.get(d.key, 0)) for d in custom]


def _settings(request: Request) -> SegmentationSettings:
    settings: SegmentationSettings = request.app.state.settings
    return settings


def _rule(request: Request, raw: Any) -> Rule:
    try:
        return parse(raw, _settings(request).events_retention_days)
    except RuleError as err:
        raise ApiError(422, f"Bad rule at {err.where}: {err.message}.", "invalid_rule",
                       [{"loc": err.where, "msg": err.message}]) from None


@router.post("/api/segments", status_code=201, response_model=SegmentSummary)
async def create_segment(request: Request, body: SegmentIn, _: AdminDep) -> SegmentSummary:
    """A custom segment; every customer is evaluated before the answer, so `member_count` is
    already right."""
    if body.key in builtin_segments():
        raise ApiError(409, f"{body.key!r} is a built-in segment; pick another key (custom keys have no ':').")
    if not KEY_PATTERN.fullmatch(body.key):  # no ':', so a custom key never shadows a built-in one
        raise ApiError(422, f"Bad key {body.key!r}: 1-100 letters, digits, '_', '-' or '.', starting with a letter "
                            "or digit (no ':', which built-in keys use).", details=[{"loc": "key"}])
    rule = _rule(request, body.rule)
    now = _runtime(request).clock.now()
    async with _runtime(request).changing() as (session, outbox):
        if await _definition(session, body.key):
            raise ApiError(409, f"A segment {body.key!r} already exists; PUT /api/segments/{body.key} changes it.")
        definition = Definition(body.key, body.name or body.key, body.description, rule, to_json(rule), now, now)
        await session.execute(insert(segment_definitions).values(
            key=definition.key, name=definition.name, description=definition.description,
            rule=orjson.dumps(definition.raw_rule).decode(), created_at=now, updated_at=now))
        await evaluate_custom(session, None, now, outbox, [definition])
        count = (await _member_counts(session, [definition.key])).get(definition.key, 0)
    return _summary(definition, count)


@router.get("/api/segments/{key}", response_model=SegmentSummary)
async def get_segment(request: Request, key: str, _: ReaderDep) -> SegmentSummary:
    async with _runtime(request).store.read() as session:
        await _known(session, key)
        count = (await _member_counts(session, [key])).get(key, 0)
        definition = await _definition(session, key)
    if definition is None:
        return SegmentSummary(key=key, name=key, description=builtin_segments()[key], built_in=True, member_count=count)
    return _summary(definition, count)


@router.put("/api/segments/{key}", response_model=SegmentSummary)
async def update_segment(request: Request, key: str, body: SegmentUpdate, _: AdminDep) -> SegmentSummary:
    """A new rule (and name, description): every customer is evaluated again; those who no longer
    match exit, with the conditions that failed as the reason."""
    rule = _rule(request, body.rule)
    now = _runtime(request).clock.now()
    async with _runtime(request).changing() as (session, outbox):
        old = await _custom(session, key)
        definition = Definition(key, body.name or old.name, old.description if body.description is None else body.description,
                                rule, to_json(rule), old.created_at, now)
        await session.execute(update(segment_definitions).where(segment_definitions.c.key == key).values(
            name=definition.name, description=definition.description, rule=orjson.dumps(definition.raw_rule).decode(),
            updated_at=now))
        await evaluate_custom(session, None, now, outbox, [definition])
        count = (await _member_counts(session, [key])).get(key, 0)
    return _summary(definition, count)


@router.delete("/api/segments/{key}", status_code=204)
async def delete_segment(request: Request, key: str, _: AdminDep) -> Response:
    """Members exit (recorded and published, reason "segment deleted"); the definition goes."""
    now = _runtime(request).clock.now()
    async with _runtime(request).changing() as (session, outbox):
        await _custom(session, key)
        await apply(session, [], (key,), now, outbox, everyone=True, exit_reason=lambda *_: "segment deleted")
        await session.execute(delete(segment_definitions).where(segment_definitions.c.key == key))
    return Response(status_code=204)


@router.post("/api/segments:preview", response_model=Preview)
async def preview_segment(request: Request, body: PreviewIn, _: ReaderDep) -> Preview:
    """How many customers a rule matches now, and a few of them (by id), without saving it."""
    rule = _rule(request, body.rule)
    runtime = _runtime(request)
    async with runtime.store.read() as session:
        facts = await load_facts(session, [rule], runtime.clock.now(), None)
    matched = evaluate(rule, facts).nonzero()[0]
    return Preview(count=len(matched), sample=[facts.ids[i] for i in matched[:_settings(request).preview_sample_size]])


async def _definition(session: AsyncSession, key: str) -> Definition | None:
    found = await definitions(session, [key])
    return found[0] if found else None


async def _custom(session: AsyncSession, key: str) -> Definition:
    if key in builtin_segments():
        raise ApiError(409, f"{key!r} is built in: its thresholds are settings (see the README), not a rule.")
    if (definition := await _definition(session, key)) is None:
        raise ApiError(404, f"No custom segment {key!r}. GET /api/segments lists them.")
    return definition


async def _known(session: AsyncSession, key: str) -> str:
    if key not in builtin_segments() and await _definition(session, key) is None:
        raise ApiError(404, f"No segment {key!r}. GET /api/segments lists them.")
    return key


@router.get("/api/segments/{key}/members", response_model=Page[dict[str, Any]])
async def segment_members(request: Request, key: str, _: ReaderDep, limit: Limit = 50, cursor: Cursor = None) -> Page[dict[str, Any]]:
    """Customers in the segment now, with since when and why."""
    after = decode_cursor(cursor, str)
    query = select(memberships).where(memberships.c.segment == key).order_by(memberships.c.customer_id).limit(limit + 1)
    if after:
        query = query.where(memberships.c.customer_id > after[0])
    async with _runtime(request).store.read() as session:
        await _known(session, key)
        rows = (await session.execute(query)).all()
    items = [{"customer_id": r.customer_id, "since": to_iso(r.since), "reason": r.reason} for r in rows[:limit]]
    return Page(items=items, next_cursor=encode_cursor(rows[limit - 1].customer_id) if len(rows) > limit else None)


@router.get("/api/segments/{key}/history", response_model=Page[dict[str, Any]])
async def segment_history(
    request: Request, key: str, _: ReaderDep, customer_id: str | None = None, limit: Limit = 50, cursor: Cursor = None
) -> Page[dict[str, Any]]:
    """Entries and exits, newest first, optionally for one customer."""
    after = decode_cursor(cursor, int)
    query = select(history).where(history.c.segment == key).order_by(history.c.id.desc()).limit(limit + 1)
    if customer_id:
        query = query.where(history.c.customer_id == customer_id)
    if after:
        query = query.where(history.c.id < after[0])
    async with _runtime(request).store.read() as session:
        await _known(session, key)
        rows = (await session.execute(query)).all()
    items = [{"customer_id": r.customer_id, "change": r.change, "at": to_iso(r.at), "reason": r.reason} for r in rows[:limit]]
    return Page(items=items, next_cursor=encode_cursor(rows[limit - 1].id) if len(rows) > limit else None)


@router.get("/api/segments/{key}/size")
async def segment_size(
    request: Request, key: str, _: ReaderDep,
    from_: Annotated[datetime | None, Query(alias="from")] = None, to: datetime | None = None,
    interval: Literal["hour", "day", "week"] = "day",
) -> dict[str, Any]:
    """Member count at the end of each interval in [from, to), from the recorded history
    (default: the last 30 days)."""
    start, end = time_window(from_, to, _runtime(request).clock.now())
    step = INTERVALS[interval]
    if (end - start) / step > MAX_POINTS:
        raise ApiError(422, f"At most {MAX_POINTS} {interval}s between 'from' and 'to'.")
    async with _runtime(request).store.read() as session:
        await _known(session, key)
        size = await _size_at(session, key, start)
        changes = (await session.execute(select(history.c.at, history.c.change).where(
            history.c.segment == key, history.c.at >= start, history.c.at < end).order_by(history.c.at))).all()
    points: list[dict[str, Any]] = []
    at, i = start, 0
    while at < end:
        at = min(at + step, end)
        while i < len(changes) and changes[i].at < at:
            size += 1 if changes[i].change == "entered" else -1
            i += 1
        points.append({"at": to_iso(at), "size": size})
    return {"segment": key, "interval": interval, "points": points}


async def _size_at(session: Any, key: str, at: datetime) -> int:
    """Members at `at`: entries minus exits recorded before it."""
    rows = await session.execute(select(history.c.change, func.count()).where(
        history.c.segment == key, history.c.at < at).group_by(history.c.change))
    counts = dict(rows.all())
    return int(counts.get("entered", 0)) - int(counts.get("exited", 0))

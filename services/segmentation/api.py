"""The segmentation HTTP API: customer profiles and segments (API.md section 3)."""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel
from sqlalchemy import func, select

from services.segmentation.evaluation import days_between
from services.segmentation.handlers import canonical
from services.segmentation.logic import builtin_segments
from services.segmentation.store import history, memberships, profiles
from shared.auth import ReaderDep
from shared.errors import ApiError
from shared.events import to_iso
from shared.paging import Cursor, Limit, Page, decode_cursor, encode_cursor
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
    bare = {m.segment.split(":", 1)[0]: m.segment.split(":", 1)[1] for m in held}
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
        "why": {m.segment: {"reason": m.reason, "since": to_iso(m.since)} for m in held},
    }


class SegmentSummary(BaseModel):
    key: str
    name: str
    description: str
    built_in: bool
    member_count: int


@router.get("/api/segments", response_model=list[SegmentSummary])
async def list_segments(request: Request, _: ReaderDep) -> list[SegmentSummary]:
    """Every segment with its member count."""
    async with _runtime(request).store.read() as session:
        counts = dict((await session.execute(
            select(memberships.c.segment, func.count()).group_by(memberships.c.segment))).all())
    return [SegmentSummary(key=k, name=k, description=d, built_in=True, member_count=counts.get(k, 0))
            for k, d in builtin_segments().items()]


def _known(key: str) -> str:
    if key not in builtin_segments():
        raise ApiError(404, f"No segment {key!r}. GET /api/segments lists them.")
    return key


@router.get("/api/segments/{key}/members", response_model=Page[dict[str, Any]])
async def segment_members(request: Request, key: str, _: ReaderDep, limit: Limit = 50, cursor: Cursor = None) -> Page[dict[str, Any]]:
    """Customers in the segment now, with since when and why."""
    _known(key)
    after = decode_cursor(cursor, str)
    query = select(memberships).where(memberships.c.segment == key).order_by(memberships.c.customer_id).limit(limit + 1)
    if after:
        query = query.where(memberships.c.customer_id > after[0])
    async with _runtime(request).store.read() as session:
        rows = (await session.execute(query)).all()
    items = [{"customer_id": r.customer_id, "since": to_iso(r.since), "reason": r.reason} for r in rows[:limit]]
    return Page(items=items, next_cursor=encode_cursor(rows[limit - 1].customer_id) if len(rows) > limit else None)


@router.get("/api/segments/{key}/history", response_model=Page[dict[str, Any]])
async def segment_history(
    request: Request, key: str, _: ReaderDep, customer_id: str | None = None, limit: Limit = 50, cursor: Cursor = None
) -> Page[dict[str, Any]]:
    """Entries and exits, newest first, optionally for one customer."""
    _known(key)
    after = decode_cursor(cursor, int)
    query = select(history).where(history.c.segment == key).order_by(history.c.id.desc()).limit(limit + 1)
    if customer_id:
        query = query.where(history.c.customer_id == customer_id)
    if after:
        query = query.where(history.c.id < after[0])
    async with _runtime(request).store.read() as session:
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
    _known(key)
    end = _aware(to, "to") or _runtime(request).clock.now()
    start = _aware(from_, "from") or end - timedelta(days=30)
    step = INTERVALS[interval]
    if start >= end or (end - start) / step > MAX_POINTS:
        raise ApiError(422, f"'from' must be before 'to', with at most {MAX_POINTS} {interval}s between them.")
    async with _runtime(request).store.read() as session:
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


def _aware(value: datetime | None, name: str) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise ApiError(422, f"'{name}' needs a UTC offset, e.g. 2024-05-01T00:00:00Z.")
    return value

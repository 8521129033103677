"""The segmentation HTTP API: customer profiles and segments (docs/api.md section 3)."""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Query, Request, Response

from services.segmentation import store
from services.segmentation.custom import (
    Definition,
    add_definition,
    complete_from,
    definition,
    definitions,
    evaluate_custom,
    remove_definition,
    replace_definition,
    segment_exists,
)
from services.segmentation.evaluation import apply, days_between
from services.segmentation.facts import load_facts
from services.segmentation.facts_index import PreviewFacts
from services.segmentation.store import canonical
from services.segmentation.logic import builtin_segments, nps_category
from services.segmentation.rules import parse
from services.segmentation.schemas import Preview, PreviewIn, SegmentIn, SegmentSummary, SegmentUpdate
from services.segmentation.settings import SegmentationSettings
from shared.auth import AdminDep, ReaderDep
from shared.errors import ApiError, rule_errors_as_422
from shared.events import to_iso
from shared.keys import KEY_PATTERN
from shared.paging import Cursor, Limit, Page, decode_cursor, encode_cursor
from shared.params import refuse_nul_characters, time_window
from shared.rules import Rule, evaluate, explain, to_json
from shared.service import Runtime

router = APIRouter(tags=["segments"], dependencies=[Depends(refuse_nul_characters)])
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
        row = await store.profile(session, customer)
        if row is None:
            raise ApiError(404, f"No customer {customer_id!r}.")
        held = await store.memberships_of(session, customer)
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
        "nps": {"score": row.nps_score, "at": to_iso(row.nps_at), "category": nps_category(row.nps_score)}
        if row.nps_score is not None else None,
        "csat": {"score": row.csat_score, "at": to_iso(row.csat_at)} if row.csat_score is not None else None,
        "segments": [m.segment for m in held],
        "why": why,
    }


def _summary(d: Definition, member_count: int, request: Request) -> SegmentSummary:
    return SegmentSummary(key=d.key, name=d.name, description=d.description, built_in=False,
                          member_count=member_count, rule=to_json(d.rule), created_at=to_iso(d.created_at),
                          updated_at=to_iso(d.updated_at), complete_from=_complete_from(request, d.rule))


def _complete_from(request: Request, rule: Rule) -> str | None:
    """The retention horizon when the rule looks back before it (see HistoryBounded)."""
    oldest = complete_from(rule, _runtime(request).clock.now(), _settings(request).events_retention_days)
    return to_iso(oldest) if oldest else None


@router.get("/api/segments", response_model=Page[SegmentSummary])
async def list_segments(request: Request, _: ReaderDep, limit: Limit = 50, cursor: Cursor = None) -> Page[SegmentSummary]:
    """Every segment, built-in ones first (in a fixed order), then custom ones by key, each with
    its member count; paged (follow `next_cursor`)."""
    after = decode_cursor(cursor, str)
    builtins = _builtins_after(after[0] if after else None)
    async with _runtime(request).store.read() as session:
        custom_after = after[0] if after and ":" not in after[0] else None
        custom = await definitions(session, after=custom_after, limit=limit + 1 - len(builtins[:limit + 1]))
        keys = [k for k, _ in builtins[:limit]] + [d.key for d in custom]
        counts = await store.member_counts(session, keys)
    items = [SegmentSummary(key=k, name=k, description=d, built_in=True, member_count=counts.get(k, 0))
             for k, d in builtins] + [_summary(d, counts.get(d.key, 0), request) for d in custom]
    return Page(items=items[:limit], next_cursor=encode_cursor(items[limit - 1].key) if len(items) > limit else None)


def _builtins_after(key: str | None) -> list[tuple[str, str]]:
    """The built-in segments a page starting after `key` holds first: all of them from the start,
    none after a custom key (built-in keys have a ':', custom keys never)."""
    builtins = list(builtin_segments().items())
    if key is None:
        return builtins
    if ":" not in key:
        return []
    keys = [k for k, _ in builtins]
    if key not in keys:
        raise ApiError(400, "The cursor is not one this API gave out; start again without it.", "invalid_cursor")
    return builtins[keys.index(key) + 1:]


def _settings(request: Request) -> SegmentationSettings:
    settings: SegmentationSettings = request.app.state.settings
    return settings


def _rule(request: Request, raw: Any) -> Rule:
    with rule_errors_as_422("rule"):
        return parse(raw)


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
    async with _runtime(request).changing() as tx:
        if await definition(tx.session, body.key):
            raise ApiError(409, f"A segment {body.key!r} already exists; PUT /api/segments/{body.key} changes it.")
        new = Definition(body.key, body.name or body.key, body.description, rule, to_json(rule), tx.now, tx.now)
        await add_definition(tx.session, new)
        await evaluate_custom(tx.session, None, tx.now, tx.outbox, [new])
        count = (await store.member_counts(tx.session, [new.key])).get(new.key, 0)
    return _summary(new, count, request)


@router.get("/api/segments/{key}", response_model=SegmentSummary)
async def get_segment(request: Request, key: str, _: ReaderDep) -> SegmentSummary:
    async with _runtime(request).store.read() as session:
        _known(key, await segment_exists(session, key))
        count = (await store.member_counts(session, [key])).get(key, 0)
        custom = await definition(session, key)
    if custom is None:
        return SegmentSummary(key=key, name=key, description=builtin_segments()[key], built_in=True, member_count=count)
    return _summary(custom, count, request)


@router.put("/api/segments/{key}", response_model=SegmentSummary)
async def update_segment(request: Request, key: str, body: SegmentUpdate, _: AdminDep) -> SegmentSummary:
    """A new rule (and name, description): every customer is evaluated again; those who no longer
    match exit, with the conditions that failed as the reason."""
    rule = _rule(request, body.rule)
    async with _runtime(request).changing() as tx:
        old = _custom(key, await definition(tx.session, key))
        new = Definition(key, body.name or old.name, old.description if body.description is None else body.description,
                         rule, to_json(rule), old.created_at, tx.now)
        await replace_definition(tx.session, new)
        await evaluate_custom(tx.session, None, tx.now, tx.outbox, [new])
        count = (await store.member_counts(tx.session, [key])).get(key, 0)
    return _summary(new, count, request)


@router.delete("/api/segments/{key}", status_code=204)
async def delete_segment(request: Request, key: str, _: AdminDep) -> Response:
    """Members exit (recorded and published, reason "segment deleted"); the definition goes."""
    async with _runtime(request).changing() as tx:
        _custom(key, await definition(tx.session, key))
        await apply(tx.session, [], (key,), tx.now, tx.outbox, everyone=True, exit_reason=lambda *_: "segment deleted")
        await remove_definition(tx.session, key)
    return Response(status_code=204)


@router.post("/api/segments:preview", response_model=Preview)
async def preview_segment(request: Request, body: PreviewIn, _: ReaderDep) -> Preview:
    """How many customers a rule matches now, and a few of them (by id), without saving it; a
    behaviour may look back as far as the events go (`complete_from` when a retention cuts it)."""
    rule = _rule(request, body.rule)
    runtime = _runtime(request)
    preview_facts: PreviewFacts = request.app.state.preview_facts
    async with preview_facts.lock, runtime.store.read() as session:  # facts in memory, current by version
        index = await preview_facts.current(session)
        facts = await index.facts(session, [rule], runtime.clock.now())
        matched = (evaluate(rule, facts) & index.alive_mask()).nonzero()[0]
    sample = index.first_ids(matched, _settings(request).preview_sample_size)
    return Preview(count=len(matched), sample=sample, complete_from=_complete_from(request, rule))


def _custom(key: str, held: Definition | None) -> Definition:
    """The custom segment `key` held (`definition(session, key)`), or the error saying why there is none."""
    if key in builtin_segments():
        raise ApiError(409, f"{key!r} is built in: its thresholds are settings (see the README), not a rule.")
    if held is None:
        raise ApiError(404, f"No custom segment {key!r}. GET /api/segments lists them.")
    return held


def _known(key: str, exists: bool) -> None:
    if not exists:
        raise ApiError(404, f"No segment {key!r}. GET /api/segments lists them.")


@router.get("/api/segments/{key}/members", response_model=Page[dict[str, Any]])
async def segment_members(request: Request, key: str, _: ReaderDep, limit: Limit = 50, cursor: Cursor = None) -> Page[dict[str, Any]]:
    """Customers in the segment now, with since when and why."""
    after = decode_cursor(cursor, str)
    async with _runtime(request).store.read() as session:
        _known(key, await segment_exists(session, key))
        rows = await store.members(session, key, after[0] if after else None, limit + 1)
    items = [{"customer_id": r.customer_id, "since": to_iso(r.since), "reason": r.reason} for r in rows[:limit]]
    return Page(items=items, next_cursor=encode_cursor(rows[limit - 1].customer_id) if len(rows) > limit else None)


@router.get("/api/segments/{key}/history", response_model=Page[dict[str, Any]])
async def segment_history(
    request: Request, key: str, _: ReaderDep, customer_id: str | None = None, limit: Limit = 50, cursor: Cursor = None
) -> Page[dict[str, Any]]:
    """Entries and exits, newest first, optionally for one customer."""
    after = decode_cursor(cursor, int)
    async with _runtime(request).store.read() as session:
        _known(key, await segment_exists(session, key))
        rows = await store.history_page(session, key, customer_id, after[0] if after else None, limit + 1)
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
        _known(key, await segment_exists(session, key))
        size = await store.size_at(session, key, start)
        changes = await store.changes_between(session, key, start, end)
    points: list[dict[str, Any]] = []
    at, i = start, 0
    while at < end:
        at = min(at + step, end)
        while i < len(changes) and changes[i].at < at:
            size += 1 if changes[i].change == "entered" else -1
            i += 1
        points.append({"at": to_iso(at), "size": size})
    return {"segment": key, "interval": interval, "points": points}

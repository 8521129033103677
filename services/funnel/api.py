"""The funnel HTTP API (API.md section 4): definitions, reports, customers, stages, transitions."""
from __future__ import annotations

import time
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import APIRouter, Body, Query, Request, Response
from numpy.typing import NDArray
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.funnel.logic import LIFECYCLE, Funnel, parse_funnel, report
from services.funnel.report_index import FunnelIndex
from services.funnel.store import (
    attempts,
    funnel_versions,
    funnels,
    links,
    matches,
    segment_members,
    traits,
    transitions,
)
from services.funnel.tracking import Version, definitions, epoch, from_epoch, rebuild
from shared.auth import AdminDep, ReaderDep
from shared.errors import ApiError
from shared.events import FunnelStageChanged, to_iso
from shared.identity import canonical_ids, chunks
from shared.params import time_window, utc
from shared.paging import Cursor, Limit, Page, decode_cursor, encode_cursor
from shared.rules import MISSING, RuleError, lookup
from shared.service import Runtime

router = APIRouter(tags=["funnels"])
FunnelBody = Annotated[dict[str, Any], Body(description="{key, name, stages: [{key, name, match, max_days_from_previous?}], conversion_window_days}")]


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def _parse(raw: dict[str, Any], key: str | None = None) -> Funnel:
    try:
        return parse_funnel(raw, key)
    except RuleError as err:
        raise ApiError(422, f"Bad funnel at {err.where}: {err.message}.", "invalid_funnel",
                       [{"loc": err.where, "msg": err.message}]) from None


async def _funnel(session: AsyncSession, key: str) -> Funnel:
    found = await definitions(session, [key])
    if not found:
        raise ApiError(404, f"No funnel {key!r}. GET /api/funnels lists them.")
    return found[0]


async def _summary(session: AsyncSession, funnel: Funnel) -> dict[str, Any]:
    rows = (await session.execute(select(attempts.c.depth, func.count()).where(attempts.c.funnel == funnel.key, attempts.c.depth > 0)
                                  .group_by(attempts.c.depth))).tuples().all()
    at_stage = dict(rows)
    return {**funnel.to_json(), "built_in": funnel.key == LIFECYCLE.key,
            "customers": {s.key: at_stage.get(i + 1, 0) for i, s in enumerate(funnel.stages)}}


@router.get("/api/funnels")
async def list_funnels(request: Request, _: ReaderDep) -> list[dict[str, Any]]:
    """Every funnel with how many customers are at each stage now."""
    async with _runtime(request).store.read() as session:
        return [await _summary(session, f) for f in await definitions(session)]


@router.post("/api/funnels", status_code=201)
async def create_funnel(request: Request, body: FunnelBody, _: AdminDep) -> dict[str, Any]:
    """A funnel, built at once from the retained events (so the answer already counts customers)."""
    funnel = _parse(body)
    now = _runtime(request).clock.now()
    async with _runtime(request).changing() as (session, outbox):
        if await definitions(session, [funnel.key]):
            raise ApiError(409, f"A funnel {funnel.key!r} already exists; PUT /api/funnels/{funnel.key} changes it.")
        await session.execute(insert(funnels).values(key=funnel.key, definition=orjson.dumps(funnel.to_json()).decode(),
                                                     created_at=now, updated_at=now))
        await rebuild(session, funnel, now, outbox)
        return await _summary(session, funnel)


@router.get("/api/funnels/{key}")
async def get_funnel(request: Request, key: str, _: ReaderDep) -> dict[str, Any]:
    async with _runtime(request).store.read() as session:
        return await _summary(session, await _funnel(session, key))


@router.put("/api/funnels/{key}")
async def update_funnel(request: Request, key: str, body: FunnelBody, _: AdminDep) -> dict[str, Any]:
    """A new definition: the funnel's matches and attempts are rebuilt from the retained events in
    the same transaction (other funnels are untouched); customers who moved get a transition."""
    if body.get("key", key) != key:
        raise ApiError(422, f"The body's key {body['key']!r} differs from the path's {key!r}.", details=[{"loc": "key"}])
    funnel = _parse(body, key)
    now = _runtime(request).clock.now()
    async with _runtime(request).changing() as (session, outbox):
        await _funnel(session, key)
        definition = orjson.dumps(funnel.to_json()).decode()
        if (await session.execute(update(funnels).where(funnels.c.key == key).values(
                definition=definition, updated_at=now))).rowcount == 0:  # type: ignore[attr-defined]
            await session.execute(insert(funnels).values(key=key, definition=definition, created_at=now, updated_at=now))
        await rebuild(session, funnel, now, outbox)
        return await _summary(session, funnel)


@router.delete("/api/funnels/{key}", status_code=204)
async def delete_funnel(request: Request, key: str, _: AdminDep) -> Response:
    """The funnel, its matches, attempts and transitions go; each customer in it gets a last
    transition to no stage, so consumers of funnel.v1 forget it too."""
    if key == LIFECYCLE.key:
        raise ApiError(409, "The default 'lifecycle' funnel is always present; PUT changes it.")
    now = _runtime(request).clock.now()
    async with _runtime(request).changing() as (session, outbox):
        funnel = await _funnel(session, key)
        held = (await session.execute(select(attempts.c.customer_id, attempts.c.depth).where(
            attempts.c.funnel == key, attempts.c.depth > 0))).all()
        last = Version(time.time_ns(), 0).order(0)  # after every move of this funnel so far
        for customer, depth in held:
            outbox.publish(FunnelStageChanged(customer_id=customer, funnel=key, from_stage=funnel.stages[depth - 1].key,
                                              to_stage=None, at=now, order=last))
        for table in (matches, attempts, transitions, funnel_versions):
            await session.execute(delete(table).where(table.c.funnel == key))
        await session.execute(delete(funnels).where(funnels.c.key == key))
    return Response(status_code=204)


@router.get("/api/funnels/{key}/report")
async def funnel_report(
    request: Request, key: str, _: ReaderDep,
    from_: Annotated[datetime | None, Query(alias="from", description="Cohort start (first step at or after); default 30 days before `to`.")] = None,
    to: Annotated[datetime | None, Query(description="Cohort end (first step before); default now.")] = None,
    breakdown: Annotated[str | None, Query(description="`channel`, `segment:<key>` or `traits.<name>`.")] = None,
) -> dict[str, Any]:
    """Per stage: entered, conversion from the previous stage, drop-off, in progress, median time
    from the previous stage; overall conversion. From the maintained attempts, never raw events."""
    runtime = _runtime(request)
    now = runtime.clock.now()
    start, end = time_window(from_, to, now)
    if breakdown is not None and not (breakdown == "channel" or (breakdown.startswith("segment:") and len(breakdown) > 8)
                                      or (breakdown.startswith("traits.") and len(breakdown) > 7)):
        raise ApiError(422, f"Unknown breakdown {breakdown!r}: use channel, segment:<key> or traits.<name>.",
                       details=[{"loc": "breakdown"}])
    async with runtime.store.read() as session:
        funnel = await _funnel(session, key)
        index = await request.app.state.report_indexes.current(session, funnel)
        cohort = index.cohort(epoch(start), epoch(end)).nonzero()[0]
        groups = await _groups(session, breakdown, index, cohort) if breakdown else None

    def report_of(rows: NDArray[np.int64]) -> dict[str, Any]:
        return {"customers": len(rows), **report(funnel, index.depth[rows], index.first_at[rows], index.last_at[rows],
                                                 index.gaps[rows], epoch(now))}

    body: dict[str, Any] = {"funnel": key, "from": to_iso(start), "to": to_iso(end), **report_of(cohort)}
    if groups is not None:
        by_value: dict[bytes, list[int]] = defaultdict(list)
        for row, value in zip(cohort.tolist(), groups, strict=True):
            by_value[orjson.dumps(value, option=orjson.OPT_SORT_KEYS)].append(row)
        ordered = sorted(by_value.items(), key=lambda item: (-len(item[1]), item[0]))
        body["breakdown_by"] = breakdown
        body["breakdown"] = [{"value": orjson.loads(value), **report_of(np.array(rows, dtype=np.int64))}
                             for value, rows in ordered]
    return body


async def _groups(session: AsyncSession, breakdown: str, index: FunnelIndex, cohort: NDArray[np.int64]) -> list[Any]:
    """The breakdown value of each cohort row (None when the customer has none)."""
    if breakdown == "channel":
        return [index.channels[i] for i in cohort.tolist()]
    customers = [index.ids[i] for i in cohort.tolist()]
    found: dict[str, Any] = {}
    for chunk in chunks(customers):
        if breakdown.startswith("segment:"):
            query = select(segment_members.c.customer_id, segment_members.c.member).where(
                segment_members.c.segment == breakdown.removeprefix("segment:"), segment_members.c.customer_id.in_(chunk))
            found |= {c: bool(member) for c, member in await session.execute(query)}
        else:
            path = breakdown.removeprefix("traits.")
            for c, blob in await session.execute(select(traits.c.customer_id, traits.c.traits).where(traits.c.customer_id.in_(chunk))):
                value = lookup(orjson.loads(blob), path)
                found[c] = None if value is MISSING else value
    default = False if breakdown.startswith("segment:") else None
    return [found.get(c, default) for c in customers]


@router.get("/api/funnels/{key}/customers/{customer_id}")
async def funnel_customer(request: Request, key: str, customer_id: str, _: ReaderDep) -> dict[str, Any]:
    """The customer's current stage, the counted attempt stage by stage, and their transitions."""
    async with _runtime(request).store.read() as session:
        funnel = await _funnel(session, key)
        customer = (await canonical_ids(session, links, [customer_id])).get(customer_id, customer_id)
        row = (await session.execute(select(attempts).where(attempts.c.funnel == key, attempts.c.customer_id == customer,
                                                            attempts.c.depth > 0))).first()
        moves = (await session.execute(select(transitions).where(transitions.c.funnel == key, transitions.c.customer_id == customer)
                                       .order_by(transitions.c.id))).all()
    if row is None and not moves:
        raise ApiError(404, f"Customer {customer_id!r} has no event in funnel {key!r}.")
    times = orjson.loads(row.times) if row else []
    ids = orjson.loads(row.event_ids) if row else []
    return {
        "customer_id": customer, "funnel": key,
        "stage": funnel.stages[row.depth - 1].key if row else None,
        "reached_at": to_iso(from_epoch(row.reached_at)) if row else None,
        "attempt": [{"stage": s.key, "at": to_iso(from_epoch(t)), "event_id": e} for s, t, e in zip(funnel.stages, times, ids, strict=False)],
        "transitions": [_transition(m) for m in moves],
    }


def _transition(m: Any) -> dict[str, Any]:
    return {"customer_id": m.customer_id, "from_stage": m.from_stage, "to_stage": m.to_stage, "at": to_iso(m.at),
            "event_id": m.event_id}


@router.get("/api/funnels/{key}/stages/{stage}/customers", response_model=Page[dict[str, Any]])
async def stage_customers(
    request: Request, key: str, stage: str, _: ReaderDep,
    stalled_days: Annotated[float | None, Query(ge=0, le=36500, description="Only customers who reached the stage at least this many days ago.")] = None,
    limit: Limit = 50, cursor: Cursor = None,
) -> Page[dict[str, Any]]:
    """Who is at this stage now (their furthest), longest there first; with `stalled_days`, only
    those sitting there for at least that many days."""
    runtime = _runtime(request)
    now = runtime.clock.now()
    after = decode_cursor(cursor, float, str)
    async with runtime.store.read() as session:
        funnel = await _funnel(session, key)
        keys = [s.key for s in funnel.stages]
        if stage not in keys:
            raise ApiError(404, f"Funnel {key!r} has no stage {stage!r}; its stages: {', '.join(keys)}.")
        query = (select(attempts.c.customer_id, attempts.c.reached_at)
                 .where(attempts.c.funnel == key, attempts.c.depth == keys.index(stage) + 1)
                 .order_by(attempts.c.reached_at, attempts.c.customer_id).limit(limit + 1))
        if stalled_days is not None:
            query = query.where(attempts.c.reached_at <= epoch(now - timedelta(days=stalled_days)))
        if after:
            query = query.where((attempts.c.reached_at > after[0])
                                | ((attempts.c.reached_at == after[0]) & (attempts.c.customer_id > after[1])))
        rows = (await session.execute(query)).all()
    items = [{"customer_id": r.customer_id, "reached_at": to_iso(from_epoch(r.reached_at)),
              "days_in_stage": round((epoch(now) - r.reached_at) / 86400, 3)} for r in rows[:limit]]
    last = rows[limit - 1] if len(rows) > limit else None
    return Page(items=items, next_cursor=encode_cursor(last.reached_at, last.customer_id) if last else None)


@router.get("/api/funnels/{key}/transitions", response_model=Page[dict[str, Any]])
async def funnel_transitions(
    request: Request, key: str, _: ReaderDep,
    since: Annotated[datetime | None, Query(description="Only transitions at or after this time.")] = None,
    limit: Limit = 50, cursor: Cursor = None,
) -> Page[dict[str, Any]]:
    """Every stage change in the order they were recorded (a feed: follow `next_cursor`)."""
    after = decode_cursor(cursor, int)
    async with _runtime(request).store.read() as session:
        await _funnel(session, key)
        query = select(transitions).where(transitions.c.funnel == key).order_by(transitions.c.id).limit(limit + 1)
        if since is not None:
            query = query.where(transitions.c.at >= utc(since, "since"))
        if after:
            query = query.where(transitions.c.id > after[0])
        rows = (await session.execute(query)).all()
    return Page(items=[_transition(m) for m in rows[:limit]],
                next_cursor=encode_cursor(rows[limit - 1].id) if len(rows) > limit else None)

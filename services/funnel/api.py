"""The funnel HTTP API (docs/api.md section 4): definitions, reports, customers, stages, transitions."""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import APIRouter, Depends, Query, Request, Response
from numpy.typing import NDArray

from services.funnel.alerts import parse_alert
from services.funnel.logic import (
    BUILT_IN_KEYS,
    DAY,
    INTERVALS,
    MAX_PATH_STEPS,
    MAX_PERIODS,
    MODELS,
    Funnel,
    attribution,
    names_seen,
    parse_funnel,
    paths,
    period_starts,
    report,
    touchpoints,
    trends,
)
from services.funnel.report_index import FunnelIndex, spans
from services.funnel.schemas import (
    Alert,
    AlertBody,
    AlertFiring,
    Attribution,
    CustomerInFunnel,
    FunnelBody,
    FunnelReport,
    FunnelSummary,
    FunnelTrends,
    Paths,
    StageCustomer,
    Touchpoints,
    Transition,
)
from services.funnel.store import (
    Session,
    add_alert,
    alert_definition,
    alert_exists,
    alerts_page,
    customer_in_funnel,
    customer_traits,
    customers_at_stage,
    customers_at_stages,
    firings_page,
    remove_alert,
    segment_memberships,
    transitions_page,
)
from services.funnel.tracking import (
    add_definition,
    definitions,
    definitions_after,
    epoch,
    from_epoch,
    horizon,
    lock_funnels,
    rebuild,
    remove_funnel,
    save_definition,
)
from shared.auth import AdminDep, ReaderDep
from shared.errors import ApiError, rule_errors_as_422
from shared.events import to_iso
from shared.paging import Cursor, Limit, Page, decode_cursor, decode_key_cursor, encode_cursor
from shared.params import refuse_nul_characters, time_window, utc
from shared.rules import MISSING, lookup
from shared.service import Runtime

router = APIRouter(tags=["funnels"], dependencies=[Depends(refuse_nul_characters)])
COHORT_FROM = "Cohort start (first step at or after); default 30 days before `to`."
COHORT_TO = "Cohort end (first step before); default now."


@dataclass(frozen=True)
class Cohort:
    """?from=&to= of the report and the journey routes (time_window checks and defaults them)."""

    from_: datetime | None
    to: datetime | None


@dataclass(frozen=True)
class StageCohort(Cohort):
    """?stage=&from=&to= of the journey routes about one stage."""

    stage: str


def cohort(from_: Annotated[datetime | None, Query(alias="from", description=COHORT_FROM)] = None,
           to: Annotated[datetime | None, Query(description=COHORT_TO)] = None) -> Cohort:
    return Cohort(from_, to)


def stage_cohort(stage_doc: str, from_doc: str = COHORT_FROM, to_doc: str = COHORT_TO) -> Callable[..., StageCohort]:
    """The dependency of a route about one stage, with what the stage and the range mean there. The
    descriptions are this call's values, so they sit in Query() defaults: an Annotated hint is a
    string here (postponed annotations) that FastAPI resolves in the module, where they are not."""
    def parse(stage: str = Query(description=stage_doc),  # noqa: B008
              from_: datetime | None = Query(None, alias="from", description=from_doc),  # noqa: B008
              to: datetime | None = Query(None, description=to_doc)) -> StageCohort:  # noqa: B008
        return StageCohort(from_, to, stage)
    return parse


CohortDep = Annotated[Cohort, Depends(cohort)]


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def _parse(raw: dict[str, Any], key: str | None = None) -> Funnel:
    with rule_errors_as_422("funnel"):
        return parse_funnel(raw, key)


async def _funnel(session: Session, key: str) -> Funnel:
    found = await definitions(session, [key])
    if not found:
        raise ApiError(404, f"No funnel {key!r}. GET /api/funnels lists them.")
    return found[0]


async def _summary(session: Session, funnel: Funnel) -> dict[str, Any]:
    return (await _summaries(session, [funnel]))[0]


async def _summaries(session: Session, found: list[Funnel]) -> list[dict[str, Any]]:
    """Each funnel with how many customers are at each stage now (one query for them all)."""
    at_stage = await customers_at_stages(session, [f.key for f in found])
    return [{**f.to_json(), "built_in": f.key in BUILT_IN_KEYS,
             "customers": {s.key: at_stage.get((f.key, i + 1), 0) for i, s in enumerate(f.stages)}} for f in found]


@router.get("/api/funnels", response_model=Page[FunnelSummary])
async def list_funnels(request: Request, _: ReaderDep, limit: Limit = 50, cursor: Cursor = None) -> Page[dict[str, Any]]:
    """Every funnel, the built-in `lifecycle` and `sales` first, then the others by key, each with how many
    customers are at each stage now; paged (follow `next_cursor`)."""
    after = decode_key_cursor(cursor)
    async with _runtime(request).store.read() as session:
        found = await definitions_after(session, after, limit + 1)
        items = await _summaries(session, found[:limit])
    return Page(items=items, next_cursor=encode_cursor(found[limit - 1].key) if len(found) > limit else None)


@router.post("/api/funnels", status_code=201, response_model=FunnelSummary)
async def create_funnel(request: Request, body: FunnelBody, _: AdminDep) -> dict[str, Any]:
    """A funnel, built at once from the retained events (so the answer already counts customers)."""
    funnel = _parse(body)
    async with _runtime(request).changing() as tx:
        await lock_funnels(tx.session, changing_definitions=True)  # no event in flight is missed
        if await definitions(tx.session, [funnel.key]):
            raise ApiError(409, f"A funnel {funnel.key!r} already exists; PUT /api/funnels/{funnel.key} changes it.")
        await add_definition(tx.session, funnel, tx.now)
        await rebuild(tx.session, funnel, tx.now, tx.outbox)
        return await _summary(tx.session, funnel)


@router.get("/api/funnels/{key}", response_model=FunnelSummary)
async def get_funnel(request: Request, key: str, _: ReaderDep) -> dict[str, Any]:
    async with _runtime(request).store.read() as session:
        return await _summary(session, await _funnel(session, key))


@router.put("/api/funnels/{key}", response_model=FunnelSummary)
async def update_funnel(request: Request, key: str, body: FunnelBody, _: AdminDep) -> dict[str, Any]:
    """A new definition: the funnel's matches and attempts are rebuilt from the retained events in
    the same transaction (other funnels are untouched); customers who moved get a transition."""
    if body.get("key", key) != key:
        raise ApiError(422, f"The body's key {body['key']!r} differs from the path's {key!r}.", details=[{"loc": "key"}])
    funnel = _parse(body, key)
    async with _runtime(request).changing() as tx:
        await lock_funnels(tx.session, changing_definitions=True)  # no event in flight is missed
        await _funnel(tx.session, key)
        await save_definition(tx.session, funnel, tx.now)
        await rebuild(tx.session, funnel, tx.now, tx.outbox)
        return await _summary(tx.session, funnel)


@router.delete("/api/funnels/{key}", status_code=204)
async def delete_funnel(request: Request, key: str, _: AdminDep) -> Response:
    """The funnel, its matches, attempts and transitions go; each customer in it gets a last
    transition to no stage, so consumers of funnel.v1 forget it too."""
    if key in BUILT_IN_KEYS:
        raise ApiError(409, f"The built-in funnel {key!r} is always present; PUT changes it.")
    async with _runtime(request).changing() as tx:
        await lock_funnels(tx.session, changing_definitions=True)  # no batch in flight matches it after
        await remove_funnel(tx.session, await _funnel(tx.session, key), tx.now, tx.outbox)
    return Response(status_code=204)


@router.get("/api/funnels/{key}/report", response_model=FunnelReport, response_model_exclude_unset=True)
async def funnel_report(
    request: Request, key: str, _: ReaderDep, window: CohortDep,
    breakdown: Annotated[str | None, Query(description="`channel`, `segment:<key>` or `traits.<name>`.")] = None,
) -> dict[str, Any]:
    """Per stage: entered, conversion from the previous stage, drop-off, in progress, median time
    from the previous stage; overall conversion. From the maintained attempts, never raw events.
    Every event counts at any age; only with a retention set, a cohort that starts before its
    horizon carries `complete_from` (the horizon)."""
    runtime = _runtime(request)
    now = runtime.clock.now()
    start, end = time_window(window.from_, window.to, now)
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
    oldest = horizon(now, request.app.state.settings.events_retention_days)
    if oldest is not None and start < oldest:
        body["complete_from"] = to_iso(oldest)
    if groups is not None:
        by_value: dict[bytes, list[int]] = defaultdict(list)
        for row, value in zip(cohort.tolist(), groups, strict=True):
            by_value[orjson.dumps(value, option=orjson.OPT_SORT_KEYS)].append(row)
        ordered = sorted(by_value.items(), key=lambda item: (-len(item[1]), item[0]))
        body["breakdown_by"] = breakdown
        body["breakdown"] = [{"value": orjson.loads(value), **report_of(np.array(rows, dtype=np.int64))}
                             for value, rows in ordered]
    return body


@router.get("/api/funnels/{key}/trends", response_model=FunnelTrends)
async def funnel_trends(
    request: Request, key: str, _: ReaderDep, window: CohortDep,
    interval: Annotated[str, Query(description="`day`, `week` (starting on Monday) or `month`, in UTC.")] = "day",
) -> dict[str, Any]:
    """The report's cohort cut into UTC periods by the counted first step: per period, how many
    entered each stage and the overall conversion; every period of the range present (an empty
    one with zeros and a null rate). At most 1000 periods."""
    runtime = _runtime(request)
    start, end = time_window(window.from_, window.to, runtime.clock.now())
    if interval not in INTERVALS:
        raise ApiError(422, f"Unknown interval {interval!r}: use day, week or month.", details=[{"loc": "interval"}])
    starts = period_starts(epoch(start), epoch(end), interval)
    if starts is None:
        raise ApiError(422, f"From {to_iso(start)} to {to_iso(end)} is more than {MAX_PERIODS} periods of a {interval}: "
                       "narrow the range or take a longer interval.", "too_many_periods", [{"loc": "from"}])
    async with runtime.store.read() as session:
        funnel = await _funnel(session, key)
        index = await request.app.state.report_indexes.current(session, funnel)
        cohort = index.cohort(epoch(start), epoch(end)).nonzero()[0]
    periods = trends(funnel, index.depth[cohort], index.first_at[cohort], starts)
    return {"funnel": key, "from": to_iso(start), "to": to_iso(end), "interval": interval,
            "periods": [{**p, "start": to_iso(p["start"])} for p in periods]}


def _stage_index(funnel: Funnel, stage: str, first_allowed: bool = True) -> int:
    keys = [s.key for s in funnel.stages]
    if stage not in keys:
        raise ApiError(422, f"Funnel {funnel.key!r} has no stage {stage!r}; its stages: {', '.join(keys)}.",
                       details=[{"loc": "stage"}])
    if not first_allowed and stage == keys[0]:
        raise ApiError(422, f"{stage!r} is the first stage of {funnel.key!r}: nothing comes before it; "
                       f"take a later one ({', '.join(keys[1:]) or 'none'}).", details=[{"loc": "stage"}])
    return keys.index(stage)


@router.get("/api/funnels/{key}/attribution", response_model=Attribution, response_model_exclude_unset=True)
async def funnel_attribution(
    request: Request, key: str, _: ReaderDep,
    query: Annotated[StageCohort, Depends(stage_cohort(
        "The stage whose entries are the conversions.", "Entered the stage at or after; default 30 days before `to`.",
        "Entered the stage before; default now."))],
    model: Annotated[str, Query(description="`first_touch`, `last_touch`, `linear` or `position_based`.")] = "linear",
) -> dict[str, Any]:
    """Which channels bring the customers who enter `stage` in [from, to): each conversion's credit
    of 1 shared by the model over its touchpoints (page and track events from t1 to the stage's time,
    in time order, ties by event id); `revenue` beside `credit` when the stage's events carry one."""
    runtime = _runtime(request)
    start, end = time_window(query.from_, query.to, runtime.clock.now())
    stage = query.stage
    if model not in MODELS:
        raise ApiError(422, f"Unknown model {model!r}: use {', '.join(MODELS)}.", details=[{"loc": "model"}])
    async with runtime.store.read() as session:
        funnel = await _funnel(session, key)
        s = _stage_index(funnel, stage)
        index = await request.app.state.report_indexes.current(session, funnel)
    n = len(index.ids)
    entered_at = index.stage_at[:n, s]
    rows = ((index.depth[:n] > s) & (entered_at >= epoch(start)) & (entered_at < epoch(end))).nonzero()[0]
    journeys = index.journeys()
    row, touch, place = spans(journeys.touch_start[rows], journeys.touch_count[rows])
    before = journeys.touch_at.values[touch] <= entered_at[rows][row]  # up to the stage's time inclusive: a prefix
    body = attribution(model, row[before], place[before], journeys.touch_channel.values[touch[before]],
                       journeys.channels.names, journeys.revenue[rows, s])
    return {"funnel": key, "stage": stage, "from": to_iso(start), "to": to_iso(end), **body}


@router.get("/api/funnels/{key}/touchpoints", response_model=Touchpoints)
async def funnel_touchpoints(
    request: Request, key: str, _: ReaderDep,
    query: Annotated[StageCohort, Depends(stage_cohort("The stage moved into (not the first)."))],
) -> dict[str, Any]:
    """Which events go with moving into `stage`: over the cohort's customers who entered the stage
    before it, per event name seen after entering that stage and before entering this one (or
    until the window's end), the odds ratio of moving on with and without it."""
    runtime = _runtime(request)
    start, end = time_window(query.from_, query.to, runtime.clock.now())
    stage = query.stage
    async with runtime.store.read() as session:
        funnel = await _funnel(session, key)
        s = _stage_index(funnel, stage, first_allowed=False)
        index = await request.app.state.report_indexes.current(session, funnel)
    rows = (index.cohort(epoch(start), epoch(end)) & (index.depth[:len(index.ids)] >= s)).nonzero()[0]
    window = funnel.conversion_window_days * DAY
    moved = index.depth[rows] > s
    after, entered, first = index.stage_at[rows, s - 1], index.stage_at[rows, s], index.first_at[rows]
    journeys = index.journeys()
    row, step, _ = spans(journeys.step_start[rows], journeys.step_count[rows])
    at = journeys.step_at.values[step]
    # strictly after the previous stage; strictly before entering S, or up to the window's end inclusive
    inside = (at > after[row]) & np.where(moved[row], at < entered[row], at <= first[row] + window)
    names = journeys.names.names
    having, moving = names_seen(row[inside], journeys.step_name.values[step[inside]], moved, len(names))
    found = [k for k in range(len(names)) if having[k]]
    converted = int(moved.sum())
    return {"funnel": key, "stage": stage, "from": to_iso(start), "to": to_iso(end), "customers": len(rows),
            "converted": converted, "touchpoints": touchpoints(len(rows), converted, {names[k]: having[k] for k in found},
                                                               {names[k]: moving[k] for k in found})}


@router.get("/api/funnels/{key}/paths", response_model=Paths)
async def funnel_paths(
    request: Request, key: str, _: ReaderDep,
    query: Annotated[StageCohort, Depends(stage_cohort("The stage not reached (not the first): who stopped just before it."))],
    steps: Annotated[int, Query(ge=1, le=MAX_PATH_STEPS, description="How many events after the last counted step (1-10).")] = 3,
) -> dict[str, Any]:
    """Where customers went instead: the cohort's customers who stopped at the stage before
    `stage` with their window closed, and the names of their next `steps` events after their last
    counted step (within the window); the 20 most common sequences."""
    runtime = _runtime(request)
    now = runtime.clock.now()
    start, end = time_window(query.from_, query.to, now)
    stage = query.stage
    async with runtime.store.read() as session:
        funnel = await _funnel(session, key)
        s = _stage_index(funnel, stage, first_allowed=False)
        index = await request.app.state.report_indexes.current(session, funnel)
    window = funnel.conversion_window_days * DAY
    n = len(index.ids)
    rows = (index.cohort(epoch(start), epoch(end)) & (index.depth[:n] == s)
            & (index.first_at[:n] + window < epoch(now))).nonzero()[0]
    journeys = index.journeys()
    row, step, place = spans(journeys.step_start[rows], journeys.step_count[rows])
    earlier = journeys.step_at.values[step] <= index.stage_at[rows, s - 1][row]  # a prefix of each journey
    skipped = np.bincount(row[earlier], minlength=len(rows))
    nth = place - skipped[row]
    taken = ~earlier & (nth < steps)
    sequences = np.full((len(rows), steps), -1, dtype=np.int64)
    sequences[row[taken], nth[taken]] = journeys.step_name.values[step[taken]]
    names = journeys.names.names
    counts: dict[tuple[str, ...], int] = {}
    if len(rows):
        for codes, n in zip(*np.unique(sequences, axis=0, return_counts=True), strict=True):
            counts[tuple(names[c] for c in codes.tolist() if c >= 0)] = int(n)
    return {"funnel": key, "stage": stage, "from": to_iso(start), "to": to_iso(end), "steps": steps,
            "total": len(rows), "paths": paths(counts)}


async def _groups(session: Session, breakdown: str, index: FunnelIndex, rows: NDArray[np.int64]) -> list[Any]:
    """The breakdown value of each cohort row (None when the customer has none)."""
    if breakdown == "channel":
        return [index.channels[i] for i in rows.tolist()]
    customers = [index.ids[i] for i in rows.tolist()]
    if breakdown.startswith("segment:"):
        members = await segment_memberships(session, breakdown.removeprefix("segment:"), customers)
        return [members.get(c, False) for c in customers]
    path = breakdown.removeprefix("traits.")
    values = {c: lookup(held, path) for c, held in (await customer_traits(session, customers)).items()}
    return [None if values.get(c, MISSING) is MISSING else values[c] for c in customers]


@router.get("/api/funnels/{key}/customers/{customer_id}", response_model=CustomerInFunnel)
async def funnel_customer(request: Request, key: str, customer_id: str, _: ReaderDep) -> dict[str, Any]:
    """The customer's current stage, the counted attempt stage by stage, and their transitions."""
    async with _runtime(request).store.read() as session:
        funnel = await _funnel(session, key)
        customer, row, moves = await customer_in_funnel(session, key, customer_id)
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


@router.get("/api/funnels/{key}/stages/{stage}/customers", response_model=Page[StageCustomer])
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
        reached_by = epoch(now - timedelta(days=stalled_days)) if stalled_days is not None else None
        rows = await customers_at_stage(session, key, keys.index(stage) + 1, limit + 1, reached_by, after)
    items = [{"customer_id": r.customer_id, "reached_at": to_iso(from_epoch(r.reached_at)),
              "days_in_stage": round((epoch(now) - r.reached_at) / 86400, 3)} for r in rows[:limit]]
    last = rows[limit - 1] if len(rows) > limit else None
    return Page(items=items, next_cursor=encode_cursor(last.reached_at, last.customer_id) if last else None)


@router.get("/api/funnels/{key}/transitions", response_model=Page[Transition])
async def funnel_transitions(
    request: Request, key: str, _: ReaderDep,
    since: Annotated[datetime | None, Query(description="Only transitions at or after this time.")] = None,
    limit: Limit = 50, cursor: Cursor = None,
) -> Page[dict[str, Any]]:
    """Every stage change in the order they were recorded (a feed: follow `next_cursor`)."""
    after = decode_cursor(cursor, int)
    async with _runtime(request).store.read() as session:
        await _funnel(session, key)
        rows = await transitions_page(session, key, utc(since, "since") if since is not None else None,
                                      after[0] if after else None, limit + 1)
    return Page(items=[_transition(m) for m in rows[:limit]],
                next_cursor=encode_cursor(rows[limit - 1].id) if len(rows) > limit else None)


# --- alerts (docs/api.md section 9) ---------------------------------------------------------------


@router.post("/api/alerts", status_code=201, response_model=Alert)
async def create_alert(request: Request, body: AlertBody, _: AdminDep) -> dict[str, Any]:
    """An alert on a stage's conversion from the previous one: checked at the end of each interval
    against the mean of the 4 before it, firing once when it fell by more than `drop_pct` percent."""
    async with _runtime(request).changing() as tx:
        found = await definitions(tx.session, [body["funnel"]]) if isinstance(body.get("funnel"), str) else []
        with rule_errors_as_422("alert"):
            alert = parse_alert(body, found[0] if found else None)
        if await alert_exists(tx.session, alert["key"]):
            raise ApiError(409, f"An alert {alert['key']!r} already exists; DELETE it first to change it.")
        await add_alert(tx.session, alert, tx.now)
    return alert


@router.get("/api/alerts", response_model=Page[Alert])
async def list_alerts(request: Request, _: ReaderDep, limit: Limit = 50, cursor: Cursor = None) -> Page[dict[str, Any]]:
    """Every alert by key, paged."""
    after = decode_key_cursor(cursor)
    async with _runtime(request).store.read() as session:
        found = await alerts_page(session, after, limit + 1)
    return Page(items=found[:limit], next_cursor=encode_cursor(found[limit - 1]["key"]) if len(found) > limit else None)


@router.get("/api/alerts/{key}", response_model=Alert)
async def get_alert(request: Request, key: str, _: ReaderDep) -> dict[str, Any]:
    async with _runtime(request).store.read() as session:
        found = await alert_definition(session, key)
    if found is None:
        raise ApiError(404, f"No alert {key!r}. GET /api/alerts lists them.")
    return found


@router.delete("/api/alerts/{key}", status_code=204)
async def delete_alert(request: Request, key: str, _: AdminDep) -> Response:
    """The alert and its firings go; webhooks already queued are still sent."""
    async with _runtime(request).changing() as tx:
        if not await remove_alert(tx.session, key):
            raise ApiError(404, f"No alert {key!r}. GET /api/alerts lists them.")
    return Response(status_code=204)


@router.get("/api/alerts/{key}/firings", response_model=Page[AlertFiring])
async def alert_firings_list(request: Request, key: str, _: ReaderDep, limit: Limit = 50,
                             cursor: Cursor = None) -> Page[dict[str, Any]]:
    """When the alert fired, newest interval first: `{alert, funnel, stage, interval, period_start,
    rate, baseline, drop_pct, entered_previous, fired_at}`; paged."""
    after = decode_cursor(cursor, str)
    async with _runtime(request).store.read() as session:
        if not await alert_exists(session, key):
            raise ApiError(404, f"No alert {key!r}. GET /api/alerts lists them.")
        before = utc(datetime.fromisoformat(after[0]), "cursor") if after else None
        found = await firings_page(session, key, before, limit + 1)
    return Page(items=found[:limit], next_cursor=encode_cursor(found[limit - 1]["period_start"]) if len(found) > limit else None)

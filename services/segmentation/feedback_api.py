"""The feedback reports (docs/api.md section 11): NPS with breakdowns, and CSAT."""
from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Query, Request

from services.segmentation.custom import segment_exists
from services.segmentation.feedback import breakdown_values, csat_summary, latest_answers, nps_summary
from services.segmentation.schemas import CsatReport, NpsReport
from shared.auth import ReaderDep
from shared.errors import ApiError
from shared.events import to_iso
from shared.params import refuse_nul_characters, time_window
from shared.service import Runtime

router = APIRouter(tags=["feedback"], dependencies=[Depends(refuse_nul_characters)])
From = Annotated[datetime | None, Query(alias="from", description="Answers at or after; default 30 days before `to`.")]
To = Annotated[datetime | None, Query(description="Answers before; default now.")]


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


@router.get("/api/feedback/nps", response_model=NpsReport, response_model_exclude_unset=True)
async def nps_report(
    request: Request, _: ReaderDep, from_: From = None, to: To = None,
    breakdown: Annotated[str | None, Query(description="`channel` (of the counted answer), `lifecycle`, "
                                                       "`segment:<key>` (member now) or `traits.<name>` (current value).")] = None,
) -> dict[str, Any]:
    """Net Promoter Score over each customer's latest NPS answer in [from, to): promoters 9-10,
    passives 7-8, detractors 0-6; optionally broken down, groups by size (largest first)."""
    runtime = _runtime(request)
    start, end = time_window(from_, to, runtime.clock.now())
    _check_breakdown(breakdown)
    async with runtime.store.read() as session:
        if breakdown and breakdown.startswith("segment:"):
            key = breakdown.removeprefix("segment:")
            _known_segment(key, await segment_exists(session, key))
        answers = await latest_answers(session, "nps", start, end)
        groups = await breakdown_values(session, breakdown, answers) if breakdown else None
    body: dict[str, Any] = {"from": to_iso(start), "to": to_iso(end), **nps_summary(a.score for a in answers.values())}
    if groups is not None:
        by_value: dict[bytes, list[int]] = defaultdict(list)
        for answer, value in zip(answers.values(), groups, strict=True):
            by_value[orjson.dumps(value, option=orjson.OPT_SORT_KEYS)].append(answer.score)
        ordered = sorted(by_value.items(), key=lambda item: (-len(item[1]), item[0]))
        body["breakdown_by"] = breakdown
        body["breakdown"] = [{"value": orjson.loads(value), **nps_summary(scores)} for value, scores in ordered]
    return body


@router.get("/api/feedback/csat", response_model=CsatReport)
async def csat_report(request: Request, _: ReaderDep, from_: From = None, to: To = None) -> dict[str, Any]:
    """Customer satisfaction over each customer's latest CSAT answer (1-5) in [from, to): the
    average and the share satisfied (4 or 5)."""
    runtime = _runtime(request)
    start, end = time_window(from_, to, runtime.clock.now())
    async with runtime.store.read() as session:
        answers = await latest_answers(session, "csat", start, end)
    return {"from": to_iso(start), "to": to_iso(end), **csat_summary(a.score for a in answers.values())}


def _check_breakdown(breakdown: str | None) -> None:
    if breakdown is None or breakdown in ("channel", "lifecycle"):
        return
    for prefix in ("segment:", "traits."):
        if breakdown.startswith(prefix) and len(breakdown) > len(prefix):
            return
    raise ApiError(422, f"Unknown breakdown {breakdown!r}: use channel, lifecycle, segment:<key> or traits.<name>.",
                   details=[{"loc": "breakdown"}])


def _known_segment(key: str, exists: bool) -> None:
    if not exists:
        raise ApiError(422, f"Unknown breakdown segment {key!r}: GET /api/segments lists them.", details=[{"loc": "breakdown"}])

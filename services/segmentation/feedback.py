"""Feedback and satisfaction (docs/api.md section 11): `Survey Responded` answers, each customer's
latest NPS and CSAT answer on the profile, and the sums of the NPS and CSAT reports.

Every valid answer is kept, keyed by its event id (a replay or redelivery lands once), and the
profile's answer is the latest by event time (ties by event id) among the customer's answers, so a
late older answer never overwrites a newer one, and a merge simply moves answers to the customer.
An answer with an unknown survey or a score out of its scale changes no profile: it is counted
(`funnelstream_survey_answers_ignored_total`) and logged with its event id, never a dead letter;
the event itself stays in the timeline like any other.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from datetime import datetime
from typing import Any, NamedTuple

import orjson
from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.segmentation.logic import NPS_CATEGORIES, nps_category
from services.segmentation.store import mark_facts_changed, memberships, profiles, survey_answers
from shared.events import Interaction
from shared.identity import chunks
from shared.metrics import SURVEY_ANSWERS_IGNORED
from shared.rules import MISSING, lookup
from shared.store import insert_ignoring_conflicts

SURVEY_EVENT = "Survey Responded"
SCALES = {"nps": (0, 10), "csat": (1, 5)}
SATISFIED_FROM = 4  # CSAT 4 and 5 are satisfied

log = logging.getLogger("funnelstream.segmentation.feedback")


class Answer(NamedTuple):
    survey: str
    score: int


class Problem(NamedTuple):
    code: str  # the metric's `problem` label
    message: str


def parse_answer(properties: dict[str, Any]) -> Answer | Problem:
    """`properties.survey` (nps or csat) and `properties.score`, a whole number on its scale
    (numbers or numeric text, as order amounts are read)."""
    survey = properties.get("survey")
    if not isinstance(survey, str) or survey.lower() not in SCALES:
        return Problem("unknown_survey", f"survey {survey!r} is not one of {', '.join(SCALES)}")
    survey = survey.lower()
    low, high = SCALES[survey]
    score = _whole(properties.get("score"))
    if score is None or not low <= score <= high:
        return Problem("score_out_of_range", f"{survey} score {properties.get('score')!r} is not a whole number from {low} to {high}")
    return Answer(survey, score)


def _whole(value: Any) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return int(number) if math.isfinite(number) and number.is_integer() else None


def nps_summary(scores: Iterable[int]) -> dict[str, Any]:
    """`{responses, promoters, passives, detractors, nps}`, nps = 100 (promoters - detractors) /
    responses, null over no responses."""
    counts = dict.fromkeys(NPS_CATEGORIES, 0)
    for score in scores:
        counts[nps_category(score)] += 1
    responses = sum(counts.values())
    nps = 100 * (counts["promoter"] - counts["detractor"]) / responses if responses else None
    return {"responses": responses, "promoters": counts["promoter"], "passives": counts["passive"],
            "detractors": counts["detractor"], "nps": nps}


def csat_summary(scores: Iterable[int]) -> dict[str, Any]:
    """`{responses, average, satisfied_share}` (4 and 5 are satisfied), nulls over no responses."""
    held = list(scores)
    if not held:
        return {"responses": 0, "average": None, "satisfied_share": None}
    return {"responses": len(held), "average": sum(held) / len(held),
            "satisfied_share": sum(1 for s in held if s >= SATISFIED_FROM) / len(held)}


async def record_answers(session: AsyncSession, placed: list[tuple[str, Interaction]]) -> None:
    """Keep the valid answers among these (customer, event) pairs; refresh those customers' latest."""
    rows: list[dict[str, Any]] = []
    answered: set[str] = set()
    for customer, e in placed:
        if e.type != "track" or e.name != SURVEY_EVENT:
            continue
        answer = parse_answer(e.properties)
        if isinstance(answer, Problem):
            SURVEY_ANSWERS_IGNORED.labels("segmentation", answer.code).inc()
            log.warning("survey answer ignored, event %s: %s", e.event_id, answer.message)
            continue
        rows.append({"event_id": e.event_id, "customer_id": customer, "survey": answer.survey, "score": answer.score,
                     "at": e.occurred_at, "channel": e.channel})
        answered.add(customer)
    if rows:
        await session.execute(insert_ignoring_conflicts(survey_answers, session), rows)
        await refresh_feedback(session, sorted(answered))


async def refresh_feedback(session: AsyncSession, customers: list[str]) -> None:
    """The profile's latest NPS and CSAT answer of these customers, from their answers."""
    for chunk in chunks(customers):
        rows = (await session.execute(
            select(survey_answers.c.customer_id, survey_answers.c.survey, survey_answers.c.score, survey_answers.c.at,
                   survey_answers.c.event_id).where(survey_answers.c.customer_id.in_(chunk)))).all()
        latest = _latest(rows, lambda r: (r.customer_id, r.survey))
        values = [{"b_customer_id": c, **{f"b_{s}_{part}": getattr(latest.get((c, s)), part, None)
                                          for s in SCALES for part in ("score", "at")}} for c in chunk]
        columns = [f"{s}_{part}" for s in SCALES for part in ("score", "at")]
        await session.execute(update(profiles).where(profiles.c.customer_id == bindparam("b_customer_id"))
                              .values({c: bindparam(f"b_{c}") for c in columns}), values)
    await mark_facts_changed(session, customers)  # nps.score, csat.score (none again for a batch's customers)


def _latest(rows: Iterable[Any], key: Any) -> dict[Any, Any]:
    """Per key, the row latest by event time, ties by event id (compared here, not by a collation)."""
    found: dict[Any, Any] = {}
    for r in rows:
        k = key(r)
        held = found.get(k)
        if held is None or (r.at, r.event_id) > (held.at, held.event_id):
            found[k] = r
    return found


async def latest_answers(session: AsyncSession, survey: str, start: datetime, end: datetime) -> dict[str, Any]:
    """customer -> their latest `survey` answer (score, at, channel) with a time in [start, end)."""
    rows = (await session.execute(
        select(survey_answers.c.customer_id, survey_answers.c.score, survey_answers.c.at, survey_answers.c.event_id,
               survey_answers.c.channel)
        .where(survey_answers.c.survey == survey, survey_answers.c.at >= start, survey_answers.c.at < end))).all()
    return _latest(rows, lambda r: r.customer_id)


async def breakdown_values(session: AsyncSession, breakdown: str, answers: dict[str, Any]) -> list[Any]:
    """The breakdown value of each counted answer, in the order of `answers` (customer -> answer):
    `channel` of the answer, `lifecycle` now, `segment:<key>` (member now) or `traits.<name>` now."""
    if breakdown == "channel":
        return [a.channel for a in answers.values()]
    found: dict[str, Any] = {}
    for chunk in chunks(list(answers)):
        if breakdown == "lifecycle" or breakdown.startswith("segment:"):
            segment = memberships.c.segment
            wanted = segment.startswith("lifecycle:") if breakdown == "lifecycle" else segment == breakdown.removeprefix("segment:")
            for customer, key in await session.execute(select(memberships.c.customer_id, segment).where(
                    wanted, memberships.c.customer_id.in_(chunk))):
                found[customer] = key.removeprefix("lifecycle:") if breakdown == "lifecycle" else True
        else:
            path = breakdown.removeprefix("traits.")
            for customer, blob in await session.execute(select(profiles.c.customer_id, profiles.c.traits).where(
                    profiles.c.customer_id.in_(chunk))):
                value = lookup(orjson.loads(blob), path)
                found[customer] = None if value is MISSING else value
    default = False if breakdown.startswith("segment:") else None
    return [found.get(c, default) for c in answers]

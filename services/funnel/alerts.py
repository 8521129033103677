"""Funnel alerts (docs/api.md section 9): at the end of each interval (day or week, UTC, weeks from
Monday), a stage's `converted_from_previous_rate` over the cohort of the last complete interval
is compared with the mean over the 4 intervals before it; a relative drop of more than
`drop_pct` percent, with at least `min_entered` customers in the previous stage, fires once: a
row in alert_firings (its key makes it once per alert and interval, on every replica), an event
on alerts.v1 and a webhook per configured URL, signed and retried by shared/webhooks.py.

Checked by the clock (a periodic job, once per interval across replicas), so an interval that
ends without a new event still fires. Cohorts by counted t1 are counted from the attempts.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.funnel.logic import DAY, Funnel, period_floor
from services.funnel.store import alert_deliveries, alert_firings, alerts, attempts
from services.funnel.tracking import definitions, epoch, from_epoch
from shared.events import AlertFired, stable_id, to_iso
from shared.keys import checked_key
from shared.outbox import Outbox
from shared.rules import RuleError
from shared.store import insert_ignoring_conflicts

ALERT_INTERVALS = {"day": DAY, "week": 7 * DAY}
BASELINE_INTERVALS = 4
FIELDS = ("key", "funnel", "stage", "interval", "drop_pct", "min_entered")


def parse_alert(raw: Any, funnel: Funnel | None) -> dict[str, Any]:
    """An alert definition, or a RuleError naming the bad field (`funnel` None: no such funnel)."""
    if not isinstance(raw, dict):
        raise RuleError("body", "an alert is a JSON object {key, funnel, stage, interval, drop_pct, min_entered}")
    if extra := sorted(set(raw) - set(FIELDS)):
        raise RuleError(extra[0], f"unexpected key(s) {', '.join(map(repr, extra))}; allowed: {', '.join(FIELDS)}")
    key = checked_key(raw.get("key"), "key")
    if funnel is None:
        raise RuleError("funnel", f"no funnel {raw.get('funnel')!r}; GET /api/funnels lists them")
    stages = [s.key for s in funnel.stages]
    stage = raw.get("stage")
    if stage not in stages:
        raise RuleError("stage", f"one of {', '.join(stages)}")
    if stage == stages[0]:
        raise RuleError("stage", f"{stage!r} is the first stage: it has no conversion from a previous one")
    interval = raw.get("interval")
    if interval not in ALERT_INTERVALS:
        raise RuleError("interval", "day or week")
    drop = raw.get("drop_pct")
    if not isinstance(drop, (int, float)) or isinstance(drop, bool) or not 0 < drop <= 100:
        raise RuleError("drop_pct", "a percentage above 0 and at most 100")
    least = raw.get("min_entered", 0)
    if not isinstance(least, int) or isinstance(least, bool) or not 0 <= least <= 1_000_000_000:
        raise RuleError("min_entered", "a whole number of customers, 0 or more")
    return {"key": key, "funnel": funnel.key, "stage": stage, "interval": interval, "drop_pct": drop, "min_entered": least}


async def _rate(session: AsyncSession, funnel: str, stage: int, start: float, end: float) -> tuple[int, int]:
    """(customers of the cohort [start, end) in the previous stage, of them in the stage)."""
    row = (await session.execute(
        select(func.coalesce(func.sum(case((attempts.c.depth >= stage, 1), else_=0)), 0),
               func.coalesce(func.sum(case((attempts.c.depth > stage, 1), else_=0)), 0))
        .where(attempts.c.funnel == funnel, attempts.c.depth > 0, attempts.c.first_at >= start, attempts.c.first_at < end))).one()
    return int(row[0]), int(row[1])


async def evaluate(session: AsyncSession, now: datetime, outbox: Outbox, urls: list[str]) -> list[dict[str, Any]]:
    """Check every alert for the last complete interval; returns the firings made now."""
    fired = []
    for (definition,) in await session.execute(select(alerts.c.definition).order_by(alerts.c.key)):
        alert = orjson.loads(definition)
        found = await definitions(session, [alert["funnel"]])
        stages = [s.key for s in found[0].stages] if found else []
        if alert["stage"] not in stages[1:]:
            continue  # the funnel went or changed its stages: nothing to compare
        stage, length = stages.index(alert["stage"]), ALERT_INTERVALS[alert["interval"]]
        end = period_floor(epoch(now), alert["interval"])
        start = end - length
        if await session.scalar(select(func.count()).select_from(alert_firings).where(
                alert_firings.c.alert == alert["key"], alert_firings.c.period_start == from_epoch(start))):
            continue
        previous, entered = await _rate(session, alert["funnel"], stage, start, end)
        before = [await _rate(session, alert["funnel"], stage, start - i * length, start - (i - 1) * length)
                  for i in range(1, BASELINE_INTERVALS + 1)]
        rates = [n / p for p, n in before if p]
        if not previous or previous < alert["min_entered"] or not rates:
            continue
        rate, baseline = entered / previous, sum(rates) / len(rates)
        if baseline <= 0 or (baseline - rate) / baseline * 100 <= alert["drop_pct"]:
            continue
        body = {"alert": alert["key"], "funnel": alert["funnel"], "stage": alert["stage"], "interval": alert["interval"],
                "period_start": to_iso(from_epoch(start)), "rate": rate, "baseline": baseline,
                "drop_pct": (baseline - rate) / baseline * 100, "entered_previous": previous, "fired_at": to_iso(now)}
        text = orjson.dumps(body)
        result = await session.execute(insert_ignoring_conflicts(alert_firings, session).values(
            alert=alert["key"], period_start=from_epoch(start), body=text.decode(), fired_at=now))
        if result.rowcount == 0:  # type: ignore[attr-defined]
            continue  # another replica fired it first
        outbox.publish(AlertFired(**{**body, "period_start": from_epoch(start), "fired_at": now}))
        for url in urls:
            await session.execute(alert_deliveries.insert().values(
                id=stable_id("alert", alert["key"], start, url), alert=alert["key"], url=url, event="alert.fired", body=text,
                attempts=0, next_attempt_at=now))
        fired.append(body)
    return fired

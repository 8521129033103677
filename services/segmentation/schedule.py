"""The scheduled pass: what moves as time passes and the population changes, without new events.

1. Lifecycle and frequency tier of the customers whose last order or oldest in-window order
   crossed a threshold since the previous run (nobody else's can have moved).
2. Value tiers and RFM for every buyer: they rank each buyer among all buyers, so one buyer's new
   order can move others. Recomputed in full each pass (tens of milliseconds of arithmetic for
   100k buyers), so they are never more than one interval stale.
3. Custom segments that time or the population can move (see `custom.reevaluate_custom`).
4. Events older than the retention leave the behaviour store.
The time of the run is kept, so a restart resumes from it and misses nothing.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.segmentation.custom import prune_events, reevaluate_custom
from services.segmentation.evaluation import (
    customers_to_reevaluate,
    evaluate_customers,
    recompute_population,
)
from services.segmentation.logic import Thresholds
from services.segmentation.store import job_runs
from shared.outbox import Outbox

REEVALUATE_JOB = "reevaluate"


async def reevaluate(session: AsyncSession, now: datetime, t: Thresholds, outbox: Outbox, retention_days: float) -> int:
    """One pass; returns how many memberships changed."""
    last_run = await session.scalar(select(job_runs.c.last_run_at).where(job_runs.c.name == REEVALUATE_JOB))
    touched = await customers_to_reevaluate(session, last_run, now, t)
    changed = await evaluate_customers(session, touched, now, t, outbox)
    changed += await recompute_population(session, now, t, outbox)
    changed += await reevaluate_custom(session, set(touched), last_run, now, outbox)
    await prune_events(session, now, retention_days)
    if last_run is None:
        await session.execute(insert(job_runs).values(name=REEVALUATE_JOB, last_run_at=now))
    else:
        await session.execute(update(job_runs).where(job_runs.c.name == REEVALUATE_JOB).values(last_run_at=now))
    return changed

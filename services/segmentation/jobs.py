"""Periodic work: the scheduled pass, what moves as time passes and the population changes
without new events (`reevaluate_now`, which app.py runs every `reevaluate_seconds`).

1. Lifecycle and frequency tier of the customers whose last order or oldest in-window order
   crossed a threshold since the previous run (nobody else's can have moved).
2. Value tiers and RFM for every buyer: they rank each buyer among all buyers, so one buyer's new
   order can move others. Recomputed in full each pass (tens of milliseconds of arithmetic for
   100k buyers), so they are never more than one interval stale.
3. Custom segments that time or the population can move (see `custom.reevaluate_custom`).
4. With a retention set, events older than it leave the behaviour store first (their customers'
   custom segments are evaluated again with what is left); by default every event is kept.
The time of the run is kept, so a restart resumes from it and misses nothing.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from services.segmentation.custom import prune_events, reevaluate_custom
from services.segmentation.evaluation import (
    customers_to_reevaluate,
    evaluate_customers,
    recompute_population,
)
from services.segmentation.logic import Thresholds
from services.segmentation.settings import SegmentationSettings
from services.segmentation.store import last_run, record_run
from shared.outbox import Outbox
from shared.service import Runtime

REEVALUATE_JOB = "reevaluate"


async def reevaluate_now(runtime: Runtime, settings: SegmentationSettings) -> int:
    """The scheduled pass (time-based segments, value tiers, RFM); returns memberships changed."""
    return await runtime.job(REEVALUATE_JOB, lambda tx: reevaluate(
        tx.session, tx.now, settings.thresholds(), tx.outbox, settings.events_retention_days))


async def reevaluate(session: AsyncSession, now: datetime, t: Thresholds, outbox: Outbox, retention_days: float) -> int:
    """One pass (its caller, `Runtime.job`, makes passes take turns); returns how many memberships changed."""
    previous = await last_run(session, REEVALUATE_JOB)
    touched = await customers_to_reevaluate(session, previous, now, t)
    changed = await evaluate_customers(session, touched, now, t, outbox)
    changed += await recompute_population(session, now, t, outbox)
    pruned = await prune_events(session, now, retention_days)
    changed += await reevaluate_custom(session, set(touched) | pruned, previous, now, outbox)
    await record_run(session, REEVALUATE_JOB, now)
    return changed

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from services.segmentation.api import router
from services.segmentation.facts_index import PreviewFacts
from services.segmentation.feedback_api import router as feedback_router
from services.segmentation.handlers import make_handlers
from services.segmentation.jobs import REEVALUATE_JOB, reevaluate_now
from services.segmentation.settings import SegmentationSettings
from services.segmentation.store import bus_tables, customer_locks
from shared.bus import Bus
from shared.service import Runtime, ServiceParts, create_service_app
from shared.settings import load_settings
from shared.store import hold_lock

MIGRATIONS = Path(__file__).parent / "migrations"
__all__ = ["MIGRATIONS", "create_app", "reevaluate_now"]  # reevaluate_now (jobs.py): replay and tests run it


def create_app(settings: SegmentationSettings | None = None, bus: Bus | None = None) -> FastAPI:
    settings = settings or load_settings(SegmentationSettings)

    async def scheduled(runtime: Runtime) -> None:
        await reevaluate_now(runtime, settings)  # looked up here when it runs (tests count the passes)

    parts = ServiceParts(
        name="segmentation",
        settings=settings,
        tables=bus_tables,
        migrations=MIGRATIONS,
        routers=[router, feedback_router],
        handlers=make_handlers(settings.thresholds(), settings.events_retention_days),
        customer_locks=customer_locks,
        # A consumed batch and the scheduled pass take turns: a batch that read the clock before a
        # pass and committed after it would put back the stage the pass had just moved on.
        prepare_batch=lambda tx: hold_lock(tx.session, REEVALUATE_JOB, shared=True),
        description="Customer profiles, lifecycle, value and frequency tiers, RFM, rule segments.",
        periodic=[("segmentation-reevaluate", settings.reevaluate_seconds, scheduled)],
    )
    app = create_service_app(parts, bus)
    app.state.preview_facts = PreviewFacts()
    return app

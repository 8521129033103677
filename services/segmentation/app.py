from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from services.segmentation.api import router
from services.segmentation.handlers import make_handlers
from services.segmentation.schedule import reevaluate
from services.segmentation.settings import SegmentationSettings
from services.segmentation.store import bus_tables
from shared.bus import Bus
from shared.service import Runtime, ServiceParts, create_service_app

MIGRATIONS = Path(__file__).parent / "migrations"


async def reevaluate_now(runtime: Runtime, settings: SegmentationSettings) -> int:
    """The scheduled pass (time-based segments, value tiers, RFM); returns memberships changed."""
    async with runtime.changing() as (session, outbox):
        return await reevaluate(session, runtime.clock.now(), settings.thresholds(), outbox, settings.events_retention_days)


def create_app(settings: SegmentationSettings | None = None, bus: Bus | None = None) -> FastAPI:
    settings = settings or SegmentationSettings()

    async def scheduled(runtime: Runtime) -> None:
        await reevaluate_now(runtime, settings)

    parts = ServiceParts(
        name="segmentation",
        settings=settings,
        tables=bus_tables,
        migrations=MIGRATIONS,
        routers=[router],
        handlers=make_handlers(settings.thresholds(), settings.events_retention_days),
        description="Customer profiles, lifecycle, value and frequency tiers, RFM, rule segments.",
        periodic=[("segmentation-reevaluate", settings.reevaluate_seconds, scheduled)],
    )
    return create_service_app(parts, bus)

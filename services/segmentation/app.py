from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from services.segmentation.api import router
from services.segmentation.handlers import HANDLERS
from services.segmentation.settings import SegmentationSettings
from services.segmentation.store import bus_tables
from shared.bus import Bus
from shared.service import ServiceParts, create_service_app

MIGRATIONS = Path(__file__).parent / "migrations"


def create_app(settings: SegmentationSettings | None = None, bus: Bus | None = None) -> FastAPI:
    parts = ServiceParts(
        name="segmentation",
        settings=settings or SegmentationSettings(),
        tables=bus_tables,
        migrations=MIGRATIONS,
        routers=[router],
        handlers=HANDLERS,
        description="customer profiles, lifecycle, value and frequency tiers, RFM, rule segments.",
    )
    return create_service_app(parts, bus)

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from services.funnel.api import router
from services.funnel.handlers import make_handlers
from services.funnel.settings import FunnelSettings
from services.funnel.store import bus_tables
from shared.bus import Bus
from shared.service import ServiceParts, create_service_app

MIGRATIONS = Path(__file__).parent / "migrations"


def create_app(settings: FunnelSettings | None = None, bus: Bus | None = None) -> FastAPI:
    settings = settings or FunnelSettings()
    parts = ServiceParts(
        name="funnel",
        settings=settings,
        tables=bus_tables,
        migrations=MIGRATIONS,
        routers=[router],
        handlers=make_handlers(settings.events_retention_days),
        description="Funnel definitions, stage transitions, conversion reports.",
    )
    return create_service_app(parts, bus)

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from services.ingest.api import router
from services.ingest.handlers import HANDLERS
from services.ingest.settings import IngestSettings
from services.ingest.store import bus_tables
from shared.bus import Bus
from shared.service import ServiceParts, create_service_app

MIGRATIONS = Path(__file__).parent / "migrations"


def create_app(settings: IngestSettings | None = None, bus: Bus | None = None) -> FastAPI:
    parts = ServiceParts(
        name="ingest",
        settings=settings or IngestSettings(),
        tables=bus_tables,
        migrations=MIGRATIONS,
        routers=[router],
        handlers=HANDLERS,
        description="Segment-compatible tracking API, identity stitching, timelines, quarantine.",
    )
    return create_service_app(parts, bus)

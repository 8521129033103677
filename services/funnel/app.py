from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from services.funnel.api import router
from services.funnel.handlers import make_handlers
from services.funnel.report_index import ReportIndexes
from services.funnel.settings import FunnelSettings
from services.funnel.store import bus_tables
from services.funnel.tracking import clean_up
from shared.bus import Bus
from shared.service import Runtime, ServiceParts, create_service_app

MIGRATIONS = Path(__file__).parent / "migrations"


def create_app(settings: FunnelSettings | None = None, bus: Bus | None = None) -> FastAPI:
    settings = settings or FunnelSettings()

    async def cleanup(runtime: Runtime) -> None:
        async with runtime.store.transaction() as session:
            await clean_up(session, runtime.clock.now(), settings.events_retention_days)
    parts = ServiceParts(
        name="funnel",
        settings=settings,
        tables=bus_tables,
        migrations=MIGRATIONS,
        routers=[router],
        handlers=make_handlers(settings.events_retention_days),
        description="Funnel definitions, stage transitions, conversion reports.",
        periodic=[("funnel-cleanup", settings.cleanup_seconds, cleanup)],
    )
    app = create_service_app(parts, bus)
    app.state.report_indexes = ReportIndexes()
    return app

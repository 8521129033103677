from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from fastapi import FastAPI

from services.ingest.api import add_body_schemas, router
from services.ingest.handlers import HANDLERS
from services.ingest.ingestion import prune_seen
from services.ingest.pipeline import Pipeline
from services.ingest.settings import IngestSettings
from services.ingest.store import bus_tables
from shared.bus import Bus
from shared.service import Runtime, ServiceParts, create_service_app

MIGRATIONS = Path(__file__).parent / "migrations"


async def _prune_dedupe_window(runtime: Runtime, window_hours: float) -> None:
    async with runtime.store.transaction() as session:
        await prune_seen(session, runtime.clock.now() - timedelta(hours=window_hours))


def create_app(settings: IngestSettings | None = None, bus: Bus | None = None) -> FastAPI:
    settings = settings or IngestSettings()
    pipeline = Pipeline()
    parts = ServiceParts(
        name="ingest",
        settings=settings,
        tables=bus_tables,
        migrations=MIGRATIONS,
        routers=[router],
        handlers=HANDLERS,
        description="Segment-compatible tracking API, identity stitching, timelines, quarantine.",
        workers=[("ingest-pipeline", pipeline.run)],
        periodic=[("ingest-prune-dedupe", 600, lambda rt: _prune_dedupe_window(rt, settings.dedupe_window_hours))],
    )
    app = create_service_app(parts, bus)
    app.state.pipeline = pipeline
    build_openapi = app.openapi
    app.openapi = lambda: add_body_schemas(build_openapi())  # type: ignore[method-assign]
    return app

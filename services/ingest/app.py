from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from services.ingest import admin
from services.ingest.api import add_body_schemas, router
from services.ingest.handlers import HANDLERS
from services.ingest.jobs import maintain_bus_log, prune
from services.ingest.pipeline import Pipeline
from services.ingest.settings import IngestSettings
from services.ingest.store import bus_tables
from shared.bus import Bus
from shared.service import ServiceParts, create_service_app
from shared.settings import load_settings

MIGRATIONS = Path(__file__).parent / "migrations"


def create_app(settings: IngestSettings | None = None, bus: Bus | None = None) -> FastAPI:
    settings = settings or load_settings(IngestSettings)
    pipeline = Pipeline()
    parts = ServiceParts(
        name="ingest",
        settings=settings,
        tables=bus_tables,
        migrations=MIGRATIONS,
        routers=[router, admin.router],
        handlers=HANDLERS,
        description="Segment-compatible tracking API, identity stitching, timelines, quarantine.",
        workers=[("ingest-pipeline", pipeline.run), ("ingest-bus-maintenance", lambda rt: maintain_bus_log(rt, settings))],
        periodic=[("ingest-prune", 600, lambda rt: prune(rt, settings))],
    )
    app = create_service_app(parts, bus)
    app.state.pipeline = pipeline
    build_openapi = app.openapi
    app.openapi = lambda: add_body_schemas(build_openapi())  # type: ignore[method-assign]
    return app

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from services.followup.api import router
from services.followup.handlers import HANDLERS
from services.followup.settings import FollowupSettings
from services.followup.store import bus_tables
from shared.bus import Bus
from shared.service import ServiceParts, create_service_app

MIGRATIONS = Path(__file__).parent / "migrations"


def create_app(settings: FollowupSettings | None = None, bus: Bus | None = None) -> FastAPI:
    parts = ServiceParts(
        name="followup",
        settings=settings or FollowupSettings(),
        tables=bus_tables,
        migrations=MIGRATIONS,
        routers=[router],
        handlers=HANDLERS,
        description="follow-up policies, schedules, reminders, on-time stats.",
    )
    return create_service_app(parts, bus)

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import httpx
from fastapi import FastAPI

from services.followup.api import router
from services.followup.followups import sweep
from services.followup.handlers import make_handlers
from services.followup.settings import FollowupSettings
from services.followup.store import bus_tables
from services.followup.webhooks import send_due
from shared.bus import Bus
from shared.service import Runtime, ServiceParts, create_service_app

MIGRATIONS = Path(__file__).parent / "migrations"


async def run_scheduler(runtime: Runtime, settings: FollowupSettings) -> int:
    """One scheduler pass now (by the service clock); returns how many follow-ups moved or were made."""
    async with runtime.changing() as (session, outbox):
        return await sweep(session, runtime.clock.now(), timedelta(hours=settings.grace_hours), settings.urls(), outbox)


async def send_webhooks(runtime: Runtime, settings: FollowupSettings, client: httpx.AsyncClient) -> int:
    return await send_due(runtime.store, client, settings.webhook_secret, runtime.clock.now(),
                          settings.webhook_timeout_seconds, settings.webhook_max_attempts)


def create_app(settings: FollowupSettings | None = None, bus: Bus | None = None) -> FastAPI:
    settings = settings or FollowupSettings()
    client = httpx.AsyncClient()

    async def scheduler(runtime: Runtime) -> None:
        await run_scheduler(runtime, settings)

    async def sender(runtime: Runtime) -> None:
        await send_webhooks(runtime, settings, client)

    parts = ServiceParts(
        name="followup",
        settings=settings,
        tables=bus_tables,
        migrations=MIGRATIONS,
        routers=[router],
        handlers=make_handlers(timedelta(hours=settings.grace_hours)),
        description="Follow-up policies, schedules, reminders (webhooks), overdue tracking, on-time stats.",
        periodic=[("followup-scheduler", settings.scheduler_seconds, scheduler), ("followup-webhooks", 1.0, sender)],
    )
    app = create_service_app(parts, bus)
    app.state.webhook_client = client
    return app

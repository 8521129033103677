from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import httpx
from fastapi import FastAPI

from services.followup.api import router
from services.followup.handlers import make_handlers
from services.followup.jobs import run_scheduler, send_webhooks
from services.followup.settings import FollowupSettings
from services.followup.store import bus_tables, customer_locks
from shared.bus import Bus
from shared.service import Periodic, Runtime, ServiceParts, create_service_app
from shared.settings import load_settings

MIGRATIONS = Path(__file__).parent / "migrations"


def create_app(settings: FollowupSettings | None = None, bus: Bus | None = None) -> FastAPI:
    settings = settings or load_settings(FollowupSettings)
    client = httpx.AsyncClient()

    async def scheduler(runtime: Runtime) -> None:
        await run_scheduler(runtime, settings)

    async def sender(runtime: Runtime) -> None:
        # `send_webhooks` is looked up here when the job runs (tests put a no-op in its place).
        await send_webhooks(runtime, settings, client)

    parts = ServiceParts(
        name="followup",
        settings=settings,
        tables=bus_tables,
        migrations=MIGRATIONS,
        routers=[router],
        handlers=make_handlers(timedelta(hours=settings.grace_hours)),
        customer_locks=customer_locks,
        description="Follow-up policies, schedules, reminders (webhooks), overdue tracking, on-time stats.",
        # Replicas share webhook deliveries out by claiming rows: every replica sends.
        periodic=[("followup-scheduler", settings.scheduler_seconds, scheduler),
                  Periodic("followup-webhooks", 1.0, sender, every_replica=True)],
    )
    app = create_service_app(parts, bus)
    app.state.webhook_client = client
    return app

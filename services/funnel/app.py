from __future__ import annotations

from pathlib import Path

import httpx
from fastapi import FastAPI

from services.funnel.api import router
from services.funnel.handlers import make_handlers
from services.funnel.jobs import cleanup, run_alerts, send_alert_webhooks
from services.funnel.report_index import ReportIndexes
from services.funnel.settings import FunnelSettings
from services.funnel.store import bus_tables, customer_locks
from services.funnel.tracking import lock_funnels
from shared.bus import Bus
from shared.service import Periodic, Runtime, ServiceParts, create_service_app
from shared.settings import load_settings

MIGRATIONS = Path(__file__).parent / "migrations"


def create_app(settings: FunnelSettings | None = None, bus: Bus | None = None) -> FastAPI:
    settings = settings or load_settings(FunnelSettings)
    client = httpx.AsyncClient()

    async def check_alerts(runtime: Runtime) -> None:
        await run_alerts(runtime, settings)

    async def sender(runtime: Runtime) -> None:
        await send_alert_webhooks(runtime, settings, client)

    async def clean(runtime: Runtime) -> None:
        await cleanup(runtime, settings)

    parts = ServiceParts(
        name="funnel",
        settings=settings,
        tables=bus_tables,
        migrations=MIGRATIONS,
        routers=[router],
        handlers=make_handlers(settings.events_retention_days),
        prepare_batch=lambda tx: lock_funnels(tx.session),
        customer_locks=customer_locks,
        description="Funnel definitions, stage transitions, conversion reports.",
        # Alerts are checked once per interval across replicas; their webhooks (only with URLs set)
        # are shared out by claiming rows, so every replica sends.
        periodic=[("funnel-cleanup", settings.cleanup_seconds, clean), ("funnel-alerts", settings.alerts_seconds, check_alerts),
                  *([Periodic("funnel-alert-webhooks", 1.0, sender, every_replica=True)] if settings.alert_urls() else [])],
    )
    app = create_service_app(parts, bus)
    app.state.report_indexes = ReportIndexes()
    app.state.webhook_client = client
    return app

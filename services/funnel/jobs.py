"""Periodic work app.py schedules: the alert check (once per pass across replicas), the alert
webhooks (every replica sends its claimed share) and the hourly cleanup."""
from __future__ import annotations

import httpx

from services.funnel.alerts import evaluate
from services.funnel.settings import FunnelSettings
from services.funnel.store import alert_deliveries
from services.funnel.tracking import clean_up, lock_funnels
from shared.service import Runtime
from shared.webhooks import send_due

WEBHOOK_TIMEOUT_SECONDS = 5.0
WEBHOOK_MAX_ATTEMPTS = 10


async def run_alerts(runtime: Runtime, settings: FunnelSettings) -> int:
    """One alert check now (by the service clock); returns how many fired."""
    fired = await runtime.job("alerts", lambda tx: evaluate(tx.session, tx.now, tx.outbox, settings.alert_urls()))
    return len(fired)


async def send_alert_webhooks(runtime: Runtime, settings: FunnelSettings, client: httpx.AsyncClient) -> int:
    """The alert webhooks due now, signed; a failed one is tried again later (shared/webhooks.py)."""
    return await send_due(runtime.store, alert_deliveries, client, settings.alert_webhook_secret, runtime.clock.now(),
                          WEBHOOK_TIMEOUT_SECONDS, WEBHOOK_MAX_ATTEMPTS)


async def cleanup(runtime: Runtime, settings: FunnelSettings) -> None:
    """Removal markers deleted and, with a retention set, old event copies pruned (tracking.clean_up),
    alone like a definition change so no batch in flight sees half of it."""
    async with runtime.store.transaction() as session:
        await lock_funnels(session, changing_definitions=True)
        await clean_up(session, runtime.clock.now(), settings.events_retention_days)

"""The follow-up service's periodic work: the scheduler pass (stalled customers get their
follow-ups, open ones move to due and overdue) and the webhook sender."""
from __future__ import annotations

from datetime import timedelta

import httpx

from services.followup.followups import sweep
from services.followup.settings import FollowupSettings
from services.followup.webhooks import send_due
from shared.service import Runtime


async def run_scheduler(runtime: Runtime, settings: FollowupSettings) -> int:
    """One scheduler pass now (by the service clock); returns how many follow-ups moved or were made."""
    return await runtime.job("scheduler", lambda tx: sweep(
        tx.session, tx.now, timedelta(hours=settings.grace_hours), settings.urls(), tx.outbox))


async def send_webhooks(runtime: Runtime, settings: FollowupSettings, client: httpx.AsyncClient) -> int:
    """The reminders due now go out; returns how many were delivered."""
    return await send_due(runtime.store, client, settings.webhook_secret, runtime.clock.now(),
                          settings.webhook_timeout_seconds, settings.webhook_max_attempts)

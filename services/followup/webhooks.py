"""Webhook reminders: the follow-up service's deliveries, signed and retried by shared/webhooks.py
(the same code sends funnel alerts)."""
from __future__ import annotations

from datetime import datetime

import httpx

from services.followup.store import deliveries
from shared.store import Store
from shared.webhooks import SIGNATURE_HEADER, backoff, sign
from shared.webhooks import send_due as send_due_from

__all__ = ["SIGNATURE_HEADER", "backoff", "send_due", "sign"]


async def send_due(store: Store, client: httpx.AsyncClient, secret: str, now: datetime, timeout: float,
                   max_attempts: int) -> int:
    """Send the reminders whose time has come; returns how many were delivered."""
    return await send_due_from(store, deliveries, client, secret, now, timeout, max_attempts)

"""Signed webhooks with retries kept in the store, for every service that sends them (follow-up
reminders, funnel alerts): each delivery row is POSTed until a 2xx answer, with exponential
backoff, at least once. The row is claimed (its next attempt pushed past the timeout) in a short
transaction before the POST and settled in another, so no lock is held over the network and two
replicas never send the same attempt; a crash between POST and settle means one more send,
which receivers dedupe by `X-Funnelstream-Delivery`.

Retries live in the store, not in the process (a library such as tenacity retries in memory):
they survive restarts and are shared by every replica. A service's deliveries table has at least
the columns of `delivery_columns()`.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
from datetime import datetime, timedelta

import httpx
from sqlalchemy import Column, Integer, LargeBinary, String, Table, Text, select, update

from shared.store import Store, UTCDateTime

log = logging.getLogger("funnelstream.webhooks")
SIGNATURE_HEADER = "X-Funnelstream-Signature"
BATCH = 50
BACKOFF_BASE_SECONDS = 2.0
BACKOFF_MAX_SECONDS = 3600.0


def delivery_columns() -> list[Column[object]]:
    """What `send_due` reads and writes of a deliveries table."""
    return [Column("id", String(64), primary_key=True), Column("url", Text, nullable=False),
            Column("event", String(40), nullable=False), Column("body", LargeBinary, nullable=False),
            Column("attempts", Integer, nullable=False),
            Column("next_attempt_at", UTCDateTime),  # NULL once delivered or given up
            Column("delivered_at", UTCDateTime), Column("last_error", Text)]


def sign(secret: str, body: bytes) -> str:
    """`sha256=<hex HMAC-SHA256 of the raw body>`, as GitHub signs its webhooks."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def backoff(attempts: int) -> timedelta:
    return timedelta(seconds=min(BACKOFF_BASE_SECONDS * 2 ** (attempts - 1), BACKOFF_MAX_SECONDS))


async def send_due(store: Store, deliveries: Table, client: httpx.AsyncClient, secret: str, now: datetime, timeout: float,
                   max_attempts: int) -> int:
    """Send the deliveries of `deliveries` whose time has come; returns how many were delivered."""
    lease = now + timedelta(seconds=timeout * 2)
    async with store.transaction() as session:
        ids = list((await session.execute(select(deliveries.c.id).where(deliveries.c.next_attempt_at <= now)
                                          .order_by(deliveries.c.next_attempt_at).limit(BATCH))).scalars())
        if not ids:
            return 0
        claimed = await session.execute(update(deliveries).where(deliveries.c.id.in_(ids), deliveries.c.next_attempt_at <= now)
                                        .values(next_attempt_at=lease).returning(deliveries.c.id, deliveries.c.url,
                                                                                 deliveries.c.event, deliveries.c.body,
                                                                                 deliveries.c.attempts))
        work = claimed.all()
    delivered = 0
    for row in work:
        error = await _post(client, row.url, row.id, row.event, row.body, secret, timeout)
        attempts = row.attempts + 1
        async with store.transaction() as session:
            if error is None:
                values = {"attempts": attempts, "delivered_at": now, "next_attempt_at": None, "last_error": None}
                delivered += 1
            elif attempts >= max_attempts:
                log.error("webhook %s to %s given up after %d attempts: %s", row.id, row.url, attempts, error)
                values = {"attempts": attempts, "next_attempt_at": None, "last_error": error}
            else:
                values = {"attempts": attempts, "next_attempt_at": now + backoff(attempts), "last_error": error}
            await session.execute(update(deliveries).where(deliveries.c.id == row.id).values(**values))
    return delivered


async def _post(client: httpx.AsyncClient, url: str, delivery: str, event: str, body: bytes, secret: str,
                timeout: float) -> str | None:
    headers = {"Content-Type": "application/json", "User-Agent": "Funnelstream-Webhooks/1",
               "X-Funnelstream-Event": event, "X-Funnelstream-Delivery": delivery, SIGNATURE_HEADER: sign(secret, body)}
    try:
        response = await client.post(url, content=body, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"[:500]
    if 200 <= response.status_code < 300:
        return None
    return f"HTTP {response.status_code}: {response.text[:200]}"

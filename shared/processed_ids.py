"""Forgetting old processed message ids (`PROCESSED_IDS_RETENTION_DAYS`).

Every consumer records each message it processes in its `processed_messages` (a row per service
per event, for ever otherwise). An id only has to outlive what can deliver its message again:
redelivery reaches only the records after a group's last committed offset, and the outbox relay
republishes only what it published just before a crash: both only once the process is back, so
a window longer than any outage covers them. A message sent again later under the same id (ingest
publishes an imported file's events again once past its own dedupe window) counts again once past
this window: why the setting keeps every id unless an operator sets one.

The table has no index on `processed_at` (one would cost the insert of every consumed batch). A
pass finds the old ids with a scan of the table instead, outside any write transaction (on SQLite
a reader never blocks the writer; on PostgreSQL nothing waits for it), then deletes them by key,
`CHUNK` at a time, each chunk in a short write transaction of its own: a consumer's batch waits for
one such delete at most. On a million random ids a scan took 0.1 to 0.2 s, a chunk about 30 ms on
SQLite and 16 ms on PostgreSQL (a consumed batch of 2000 events takes about 90). A scan takes
`SCAN_LIMIT` ids at most, so a backlog (the first pass once the setting is on) is taken in rounds
of bounded memory.
"""
from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from sqlalchemy import Table, delete, select

from shared.store import Store, among

CHUNK = 500  # ids per write transaction
SCAN_LIMIT = 100_000  # ids per scan


async def prune_processed_ids(store: Store, table: Table, before: datetime, chunk: int = CHUNK,
                              scan_limit: int = SCAN_LIMIT, stopping: asyncio.Event | None = None) -> int:
    """Delete the ids processed before `before`; returns how many. Stops early once `stopping` is
    set (the next pass goes on)."""
    key, stamp = table.c.message_id, table.c.processed_at
    before = before.astimezone(UTC)  # SQLite keeps no zone: stamps are UTC text
    deleted = 0
    while not stopped(stopping):
        async with store.read() as session:
            old = list(await session.scalars(select(key).where(stamp < before).limit(scan_limit)))
        for start in range(0, len(old), chunk):
            if stopped(stopping):
                return deleted
            async with store.transaction() as session:
                # the age again: these ids were read outside this transaction
                result = await session.execute(delete(table).where(among(key, old[start:start + chunk], session),
                                                                   stamp < before))
                deleted += result.rowcount  # type: ignore[attr-defined]
        if len(old) < scan_limit:
            break
    return deleted


def stopped(stopping: asyncio.Event | None) -> bool:
    return stopping is not None and stopping.is_set()

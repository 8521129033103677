"""Committing requests' inbox rows on SQLite in one round trip to the database's thread.

A request answers once its inbox row is committed. Through the store's transaction (a session,
BEGIN IMMEDIATE, the INSERT, COMMIT, the pool's reset) that is eight round trips to the
connection's thread, ~0.55 ms of CPU per commit; here the rows of a group commit are one INSERT
in autocommit (atomic: one statement) on a connection of the pipeline's own, one round trip,
~0.09 ms. The pipeline's transactions and these writes take turns on an asyncio lock
(`Pipeline.enqueue`), so neither waits in SQLite's busy handler; the store's other writers (jobs,
erasure) rarely meet them, and then SQLite's busy timeout orders them.
"""
from __future__ import annotations

from datetime import datetime
from functools import lru_cache

import aiosqlite

from services.ingest.store import packed_inbox
from shared.store import SQLITE_PRAGMAS, Store, sqlite_utc_text

BUSY_TIMEOUT_SECONDS = 30  # as the store's connections


class InboxWriter:
    """Inbox rows (received at, packed messages) into `packed_inbox` of a SQLite store."""

    def __init__(self) -> None:
        self._db: aiosqlite.Connection | None = None

    @staticmethod
    def serves(store: Store) -> bool:
        """A SQLite file (an in-memory database is the store's connection's own)."""
        return store.is_sqlite and store.engine.url.database not in (None, "", ":memory:")

    async def write(self, store: Store, rows: list[tuple[datetime, bytes]]) -> None:
        if not rows:
            return  # requests that accepted nothing
        db = self._db or await self._open(store)
        await db.execute(_insert(len(rows)), [value for at, data in rows for value in (sqlite_utc_text(at), data)])

    async def _open(self, store: Store) -> aiosqlite.Connection:
        db = await aiosqlite.connect(store.engine.url.database or "", timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
        for pragma in SQLITE_PRAGMAS:  # as the store's own connections
            await db.execute(pragma)
        self._db = db
        return db

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await db.close()


@lru_cache(maxsize=256)
def _insert(rows: int) -> str:
    """One INSERT of `rows` rows (a group commit holds a few; SQLite binds up to 32,766 values)."""
    return (f"INSERT INTO {packed_inbox.name} (received_at, messages) VALUES "
            + ", ".join(["(?, ?)"] * rows))

"""Relays events written to a service's outbox (in the same transaction as its state) to the bus.

At least once: rows are deleted only after the bus has stored them, so a crash in between
publishes them again and consumers drop the repeat by its message id.
"""
from __future__ import annotations

import asyncio
import logging
from typing import cast

import orjson
from sqlalchemy import Table, delete, insert, select
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncSession

from shared.bulk import BulkWrite
from shared.bus.base import Bus, OutgoingRecord
from shared.events import Event, encode
from shared.store import BusTables, Store, among

log = logging.getLogger("funnelstream.outbox")


class Outbox:
    """Collects the events one transaction publishes; written to the outbox table with it."""

    def __init__(self) -> None:
        self.records: list[OutgoingRecord] = []

    def publish(self, event: Event) -> None:
        self.records.append(encode(event))

    def add(self, record: OutgoingRecord) -> None:
        self.records.append(record)

    def rows(self) -> list[tuple[str, str, bytes, bytes]]:
        return [(r.topic, r.key, r.value, orjson.dumps(r.headers)) for r in self.records]


_writes: dict[Table, BulkWrite] = {}  # per service's outbox table: its INSERT compiled once


async def write_outbox(session: AsyncSession, tables: BusTables, outbox: Outbox) -> None:
    if outbox.records:
        write = _writes.get(tables.outbox)
        if write is None:
            write = _writes[tables.outbox] = BulkWrite(lambda _: insert(tables.outbox), ("topic", "key", "value", "headers"))
        await write.run(session, outbox.rows())


class OutboxRelay:
    BATCH = 1000

    def __init__(self, store: Store, tables: BusTables, bus: Bus, interval: float = 1.0) -> None:
        self.store = store
        self.table = tables.outbox
        self.bus = bus
        self.interval = interval
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._stopping = False
        self._sql: dict[str, str] = {}  # per dialect: `_oldest_rows`

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        """Flush once more, then return from `run`."""
        self._stopping = True
        self._wake.set()

    def restart(self) -> None:
        self._stopping = False

    async def flush(self) -> int:
        """Publish everything in the outbox now; returns how many records went out."""
        sent = 0
        async with self._lock:
            while True:
                batch = await self._publish_batch()
                sent += batch
                # A short batch took all there was (a write transaction more would find nothing);
                # rows committed since then woke the relay, which flushes again.
                if batch < self.BATCH:
                    return sent

    async def _publish_batch(self) -> int:
        async with self.store.transaction() as session:
            connection = await session.connection()
            result = await connection.exec_driver_sql(self._oldest_rows(connection.dialect))
            rows = cast(list[tuple[int, str, str, bytes, bytes]], result.all())  # id, topic, key, value, headers
            if not rows:
                return 0
            await self.bus.publish([OutgoingRecord(topic, key, value, orjson.loads(headers))
                                    for _, topic, key, value, headers in rows])
            await session.execute(delete(self.table).where(among(self.table.c.id, [row[0] for row in rows], session)))
        return len(rows)

    def _oldest_rows(self, dialect: Dialect) -> str:
        """The SELECT of a batch, compiled once and run as the driver's SQL: through SQLAlchemy's
        statement and result machinery, rows cost 1.4 us more each (every event a service
        publishes passes here)."""
        found = self._sql.get(dialect.name)
        if found is None:
            table = self.table
            query = select(table.c.id, table.c.topic, table.c.key, table.c.value, table.c.headers)
            query = query.order_by(table.c.id).limit(self.BATCH)
            if not self.store.is_sqlite:  # replicas relay side by side without sending a row twice
                query = query.with_for_update(skip_locked=True)
            found = self._sql[dialect.name] = str(query.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
        return found

    async def run(self) -> None:
        """Flush when woken, and every `interval` for rows a crashed process left behind."""
        while not self._stopping:
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.flush()
            except Exception:  # the bus or store is down: keep the rows, try again later
                log.exception("outbox relay failed; will retry")
                if not self._stopping:
                    await asyncio.sleep(self.interval)

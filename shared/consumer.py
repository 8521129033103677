"""The loop around every service's handlers: at-least-once delivery with idempotent effects.

For each polled batch: one store transaction runs the handlers, records the message ids as
processed and writes outgoing events to the outbox; it commits, then the bus offsets are
committed. A redelivered message is found in `processed_messages` and skipped. If the batch
fails, each message is retried alone, and one that still fails after `max_attempts` goes to
`<topic>.dlq` with its error, so a poison message never stalls the partition.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.bus.base import Bus, Consumer, OutgoingRecord, Record, TopicPartition, dlq_topic
from shared.events import Event, UndecodableRecord, decode, message_id
from shared.metrics import BUS_DLQ, BUS_DLQ_SIZE, BUS_LAG, BUS_PROCESSED
from shared.outage import raise_if_outage
from shared.outbox import Outbox, OutboxRelay, write_outbox
from shared.store import BusTables, Store

log = logging.getLogger("funnelstream.consumer")
DLQ_SIZE_GROUP = "funnelstream-dlq-size"  # never commits


@dataclass
class Transaction:
    """What a handler gets: the open store session, `publish` for events to send after commit,
    and `now`, the service clock when the transaction began (tests move that clock).

    `defer` lets handlers do their work once per batch instead of once per event (a few bulk
    statements for 500 events rather than 500 round trips): the work runs after the last
    handler, in the same transaction, before it commits. `state` holds what it needs."""

    session: AsyncSession
    now: datetime = field(default_factory=lambda: datetime.now(UTC))
    outbox: Outbox = field(default_factory=Outbox)
    state: dict[str, Any] = field(default_factory=dict)
    deferred: dict[str, Callable[[], Awaitable[None]]] = field(default_factory=dict)

    def publish(self, event: Event) -> None:
        self.outbox.publish(event)

    def defer(self, key: str, work: Callable[[], Awaitable[None]]) -> None:
        """Run `work` once before commit, however many times it is deferred under `key`."""
        self.deferred.setdefault(key, work)

    async def run_deferred(self) -> None:
        """Deferred work may defer more; all of it runs, in the order it was first deferred."""
        while self.deferred:
            key = next(iter(self.deferred))
            await self.deferred.pop(key)()


Handler = Callable[[Event, Transaction], Awaitable[None]]
Handlers = dict[type[Event], list[Handler]]


def topics_of(handlers: Handlers) -> list[str]:
    return sorted({event_type.topic for event_type in handlers})


class ConsumerLoop:
    def __init__(
        self,
        service: str,
        bus: Bus,
        store: Store,
        tables: BusTables,
        handlers: Handlers,
        relay: OutboxRelay,
        max_attempts: int = 5,
        group: str | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.service = service
        self.bus = bus
        self.store = store
        self.tables = tables
        self.handlers = handlers
        self.relay = relay
        self.max_attempts = max_attempts
        self.group = group or service
        self.now = now
        self.topics = topics_of(handlers)
        self.consumer: Consumer | None = None
        self.healthy = False
        self._last_lag_report = 0.0
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        """Finish the batch in hand (processed, committed), then return from `run`."""
        self._stopping.set()

    def restart(self) -> None:
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        self.consumer = self.bus.consumer(self.group, self.topics)
        await self.consumer.start()
        self.healthy = True
        try:
            while not self._stopping.is_set():
                records = await self.consumer.poll(max_records=500, timeout=0.5)
                if records:
                    await self.process(records)
                    await self.consumer.commit(next_offsets(records))
                    self.relay.wake()
                await self._report_lag()
        finally:
            self.healthy = False
            await self.consumer.stop()

    async def process(self, records: list[Record]) -> None:
        """Apply a batch; afterwards every record is either processed or in the DLQ."""
        try:
            await self._apply(records)
        except Exception:
            log.warning("batch of %d failed; retrying message by message", len(records), exc_info=True)
            for record in records:
                await self._apply_alone(record)

    async def _apply_alone(self, record: Record) -> None:
        for attempt in range(1, self.max_attempts + 1):
            try:
                await self._apply([record])
                return
            except UndecodableRecord as exc:
                await self._dead_letter(record, exc, attempt)
                return
            except Exception as exc:
                if attempt == self.max_attempts:
                    await raise_if_outage(self.store, self.bus, exc)  # not poison: nothing committed
                    await self._dead_letter(record, exc, attempt)
                    return
                await asyncio.sleep(min(2.0, 0.05 * 2**attempt))

    async def _apply(self, records: list[Record]) -> None:
        events = [(message_id(r), r) for r in records]
        async with self.store.transaction() as session:
            done = await self._already_processed(session, [mid for mid, _ in events])
            tx = Transaction(session, self.now())
            fresh: list[str] = []
            for mid, record in events:
                if mid in done:
                    continue
                done.add(mid)
                fresh.append(mid)
                await self._handle(decode(record), tx)
            await tx.run_deferred()
            if fresh:
                await session.execute(insert(self.tables.processed), [{"message_id": m} for m in fresh])
            await write_outbox(session, self.tables, tx.outbox)
        BUS_PROCESSED.labels(self.service, records[0].topic).inc(len(records))

    async def _handle(self, event: Event, tx: Transaction) -> None:
        for handler in self.handlers.get(type(event), ()):
            await handler(event, tx)

    async def _already_processed(self, session: AsyncSession, ids: list[str]) -> set[str]:
        column = self.tables.processed.c.message_id
        rows = await session.execute(select(column).where(column.in_(ids)))
        return set(rows.scalars())

    async def _dead_letter(self, record: Record, exc: BaseException, attempts: int) -> None:
        log.error(
            "message %s/%d/%d failed %d time(s), sent to %s: %s",
            record.topic, record.partition, record.offset, attempts, dlq_topic(record.topic), exc,
        )
        headers = {
            **record.headers,
            "dlq-error": f"{type(exc).__name__}: {exc}"[:2000],
            "dlq-original-topic": record.topic,
            "dlq-original-partition": str(record.partition),
            "dlq-original-offset": str(record.offset),
            "dlq-attempts": str(attempts),
            "dlq-group": self.group,
        }
        await self.bus.publish([OutgoingRecord(dlq_topic(record.topic), record.key, record.value, headers)])
        BUS_DLQ.labels(self.service, record.topic).inc()

    async def _report_lag(self) -> None:
        if time.monotonic() - self._last_lag_report < 5:
            return
        self._last_lag_report = time.monotonic()
        try:
            for (topic, partition), lag in (await self.bus.lag(self.group, self.topics)).items():
                BUS_LAG.labels(self.service, self.group, topic, str(partition)).set(lag)
            # A group that never commits lags by the whole topic: the dead letter topics' sizes.
            sizes: dict[str, int] = {}
            for (topic, _), records in (await self.bus.lag(DLQ_SIZE_GROUP, [dlq_topic(t) for t in self.topics])).items():
                sizes[topic] = sizes.get(topic, 0) + records
            for topic, records in sizes.items():
                BUS_DLQ_SIZE.labels(self.service, topic).set(records)
        except Exception:
            log.debug("could not read consumer lag", exc_info=True)


def next_offsets(records: list[Record]) -> dict[TopicPartition, int]:
    offsets: dict[TopicPartition, int] = {}
    for r in records:
        offsets[(r.topic, r.partition)] = max(offsets.get((r.topic, r.partition), 0), r.offset + 1)
    return offsets

"""The loop around every service's handlers: at-least-once delivery with idempotent effects.

For each polled batch: one store transaction runs the handlers, records the message ids as
processed and writes outgoing events to the outbox; it commits, then the bus offsets are
committed. A redelivered message is found in `processed_messages` and skipped. If the batch
fails, each message is retried alone, and one that still fails after `max_attempts` goes to
`<topic>.dlq` with its error, so a poison message never stalls the partition.

Replicas of a service share stitched customers (the anonymous id's events sit in another
replica's partition): with `customer_locks`, each batch first locks the customers its events
name, so batches sharing one take turns (see shared/customer_locks.py).

A deadlock or serialization failure (replicas of a service touching the same rows) is not the
messages' fault: the database aborted the transaction so that the other could go on. The same
batch runs again after a short random backoff, as often as needed; it never counts as an attempt
nor reaches the dead letter topic. A unique key violation is most often the same story (both
replicas looked for one row, then both inserted it), so the batch gets a few more runs first.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import attrgetter
from typing import TYPE_CHECKING, Any, TypeVar, cast

import orjson
from sqlalchemy import String, Table, bindparam, func, select, true
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.dml import Insert

from shared.bus.base import Bus, Consumer, OutgoingRecord, Record, TopicPartition, dlq_topic
from shared.events import Event, UndecodableRecord, decode, message_id
from shared.metrics import BUS_BATCH_SECONDS, BUS_BATCHES, BUS_CONFLICTS, BUS_DLQ, BUS_DLQ_SIZE, BUS_LAG, BUS_PROCESSED
from shared.outage import raise_if_outage
from shared.outbox import Outbox, OutboxRelay, write_outbox
from shared.store import CONFLICT_SQLSTATES, RACE_SQLSTATE, BusTables, Store, sqlstate

if TYPE_CHECKING:  # shared.customer_locks imports shared.identity, which imports this module
    from shared.customer_locks import CustomerLocks

log = logging.getLogger("funnelstream.consumer")
DLQ_SIZE_GROUP = "funnelstream-dlq-size"  # never commits
CONFLICT_BACKOFF_SECONDS = (0.02, 1.0)  # first and longest wait before a batch runs again
TOPIC = attrgetter("topic")
RACE_RETRIES = 3  # runs of a batch that lost a unique key race, before it is retried message by message


@dataclass
class Transaction:
    """The one unit of work of handlers, API routes (`Runtime.changing`) and jobs (`Runtime.job`):
    the open store session, `publish` for events to send after commit, and `now`, the service
    clock when the transaction began (tests move that clock).

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
E = TypeVar("E", bound=Event)


def on(event_type: type[E], *handlers: Callable[[E, Transaction], Awaitable[None]]) -> tuple[type[Event], list[Handler]]:
    """One entry of `Handlers`, typed: each handler takes an `event_type` (the loop dispatches by
    the event's exact type, `type(event)`, so a handler never has to check what it was given)."""
    return event_type, [cast(Handler, handler) for handler in handlers]


def handlers_of(*entries: tuple[type[Event], list[Handler]]) -> Handlers:
    """`Handlers` from `on(...)` entries: `handlers_of(on(Interaction, on_interaction), ...)`."""
    handlers = dict(entries)
    if len(handlers) != len(entries):
        raise ValueError("one on(...) entry per event type: list every handler of a type in it")
    return handlers


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
        prepare: Callable[[Transaction], Awaitable[None]] | None = None,
        customer_locks: CustomerLocks | None = None,
        max_batch: int = 2000,
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
        self.prepare = prepare
        self.customer_locks = customer_locks
        self.max_batch = max_batch
        self.topics = topics_of(handlers)
        self.processed = ProcessedMessages(tables.processed)
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
                started = time.perf_counter()
                records = await self._poll()
                if records:
                    fetched = time.perf_counter()
                    await self.process(records)
                    applied = time.perf_counter()
                    await self.consumer.commit(next_offsets(records))
                    self._count_batch(fetched - started, applied - fetched, time.perf_counter() - applied)
                await self._report_lag()
        finally:
            self.healthy = False
            await self.consumer.stop()

    async def _poll(self) -> list[Record]:
        """The next records, or none once stopping: a stop cuts the wait short instead of waiting
        out the poll's timeout (half a second per service at every shutdown and restart). Records
        fetched but dropped this way are not committed: the next run reads them again."""
        assert self.consumer is not None
        poll = asyncio.ensure_future(self.consumer.poll(max_records=self.max_batch, timeout=0.5))
        stop = asyncio.ensure_future(self._stopping.wait())
        await asyncio.wait((poll, stop), return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if poll.done():
            return poll.result()
        poll.cancel()
        await asyncio.gather(poll, return_exceptions=True)
        return []

    def _count_batch(self, fetch: float, apply: float, commit: float) -> None:
        BUS_BATCHES.labels(self.service, self.group).inc()
        for step, seconds in (("fetch", fetch), ("apply", apply), ("commit", commit)):
            BUS_BATCH_SECONDS.labels(self.service, self.group, step).inc(seconds)

    async def process(self, records: list[Record]) -> None:
        """Apply a batch; afterwards every record is either processed or in the DLQ."""
        try:
            await self._apply_through_conflicts(records)
        except Exception:
            log.warning("batch of %d failed; retrying message by message", len(records), exc_info=True)
            for record in records:
                await self._apply_alone(record)

    async def _apply_alone(self, record: Record) -> None:
        for attempt in range(1, self.max_attempts + 1):
            try:
                await self._apply_through_conflicts([record])
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

    async def _apply_through_conflicts(self, records: list[Record]) -> None:
        """`_apply`, run again for as long as the database aborts it as a deadlock victim or for a
        serialization failure, and a few times when it lost a race for a unique key (each run is
        a new transaction; the other side commits meanwhile)."""
        first, longest = CONFLICT_BACKOFF_SECONDS
        races = 0
        for conflicts in itertools.count():
            try:
                await self._apply(records)
                return
            except Exception as exc:
                state = sqlstate(exc)
                races += state == RACE_SQLSTATE
                if state not in CONFLICT_SQLSTATES and not (state == RACE_SQLSTATE and races <= RACE_RETRIES):
                    raise
                BUS_CONFLICTS.labels(self.service).inc()
                log.info("batch of %d hit a conflict (SQLSTATE %s); running it again", len(records), state)
                await asyncio.sleep(min(longest, first * 2 ** min(conflicts, 10)) * random.uniform(0.5, 1.5))

    async def _apply(self, records: list[Record]) -> None:
        ids = [message_id(r) for r in records]
        async with self.store.transaction() as session:
            tx = Transaction(session, self.now())
            if self.prepare is not None:
                await self.prepare(tx)  # first, before any row is locked (the service's own locks)
                tx.now = self.now()  # a batch that waited for a job works at a time after it
            fresh = await self.processed.claim(session, ids, tx.now)
            decoded: list[Event] = []
            for mid, record in zip(ids, records, strict=True):
                if mid in fresh:
                    fresh.discard(mid)  # a message twice in one batch runs once
                    decoded.append(decode(record))
            if self.customer_locks is not None:
                await self.customer_locks.hold(session, decoded)  # then the first row locks
            await self._handle(decoded, tx)
            await tx.run_deferred()
            await write_outbox(session, self.tables, tx.outbox)
        if tx.outbox.records:  # else nothing to relay: an empty flush is a write transaction of its own
            self.relay.wake()
        for topic, count in Counter(map(TOPIC, records)).items():
            BUS_PROCESSED.labels(self.service, topic).inc(count)

    async def _handle(self, events: list[Event], tx: Transaction) -> None:
        """Each event to the handlers of its type, in order (one loop: a coroutine per event more
        is a cost every record of every consumer pays)."""
        handlers = self.handlers
        for event in events:
            for handler in handlers.get(type(event), ()):
                await handler(event, tx)

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


class ProcessedMessages:
    """The `processed_messages` table of a consumer: one statement per batch both records the
    batch's message ids and says which of them are new (INSERT ... ON CONFLICT DO NOTHING
    RETURNING), where a lookup and then an insert took two statements and probed each id twice.
    Recorded before the handlers run, in their transaction: rolled back with it. On PostgreSQL a
    replica claiming an id another has claimed but not committed waits for that one to end, then
    skips the message (it was processed) or runs it (it was rolled back). Each id is stamped with
    the batch's time on the service clock, the time pruning compares (shared/processed_ids.py)."""

    def __init__(self, table: Table) -> None:
        self.table = table
        # per dialect: compiled once, run as the driver's SQL; its parameters' names in order and
        # how the driver takes a time
        self._sql: dict[str, tuple[str, tuple[str, ...], Callable[[Any], Any] | None]] = {}

    async def claim(self, session: AsyncSession, ids: list[str], at: datetime) -> set[str]:
        """Record `ids` as processed at `at`; returns those that were not already."""
        connection = await session.connection()
        dialect = connection.dialect
        compiled = self._sql.get(dialect.name)
        if compiled is None:
            statement = self._statement(dialect.name).compile(dialect=dialect)
            processor = self.table.c.processed_at.type.dialect_impl(dialect).bind_processor(dialect)
            compiled = self._sql[dialect.name] = (str(statement), tuple(statement.positiontup or ()), processor)
        sql, order, time_to_driver = compiled
        utc = at.astimezone(UTC)  # SQLite keeps no zone: every stamp in UTC, so they compare as text
        values = {
            "ids": ids if dialect.name == "postgresql" else orjson.dumps(ids).decode(),
            "at": time_to_driver(utc) if time_to_driver is not None else utc,
        }
        return set((await connection.exec_driver_sql(sql, tuple(values[name] for name in order))).scalars())

    def _statement(self, dialect: str) -> Insert:
        column, stamp = self.table.c.message_id, self.table.c.processed_at
        at = bindparam("at", type_=stamp.type)
        if dialect == "postgresql":
            listed = select(func.unnest(bindparam("ids", type_=ARRAY(String))), at)
            return (pg_insert(self.table).from_select([column.name, stamp.name], listed)
                    .on_conflict_do_nothing().returning(column))
        values = func.json_each(bindparam("ids")).table_valued("value")
        # SQLite reads "SELECT ... ON CONFLICT" as a join without the WHERE (its documented ambiguity)
        listed = select(values.c.value, at).where(true())
        return (sqlite_insert(self.table).from_select([column.name, stamp.name], listed)
                .on_conflict_do_nothing().returning(column))


def next_offsets(records: list[Record]) -> dict[TopicPartition, int]:
    """Per partition, the offset after its last record (a poll gives each partition's records in
    offset order, so the last one seen is the highest)."""
    return {(r.topic, r.partition): r.offset + 1 for r in records}

"""The ingest pipeline: from the inbox to the timeline and the bus, behind the request.

A tracking request validates its messages, commits them as one inbox row and answers; this task
takes inbox rows in order, many requests per transaction, and applies their messages together
(`ingestion.accept`: dedupe, stitching, timeline; the same few statements for the whole batch).
So a request costs one small write whatever happens
downstream, as with Segment's and PostHog's capture APIs, and events reach the timeline and the
bus within milliseconds. A row that keeps failing while the store and the bus answer (so the row
itself is at fault) is moved to the quarantine with the error instead of stalling the rows behind
it; during an outage the row waits.

Requests come first: each request commits its inbox row through one group commit (requests
that arrive while a commit is under way are written together by the next, one transaction for all;
on SQLite one INSERT on a connection of its own, inbox_writer.py, taking turns with the pipeline),
and while requests come the pipeline gives way to them: it waits for a pause of QUIET_SECONDS, or
for GIVE_WAY times as long as its last transaction took, so requests get most of the time, unless
more than BACKLOG_ROWS rows wait; past that bound it no longer waits and requests slow to its pace. In one process the two
share a core: a burst is answered at the rate of the request path, and applied right after.

The events are published before the transaction commits, not through the outbox: if the commit
fails or the process dies in between, the inbox rows are applied again and the same events are
published again under the same ids, which consumers drop (at least once, without an outbox copy
of every event).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractAsyncContextManager, contextmanager, nullcontext
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Row, Select, Table, bindparam, delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from services.ingest import ingestion
from services.ingest.inbox import as_sent, pack, unpack
from services.ingest.inbox_writer import InboxWriter
from services.ingest.messages import Message, Rejection
from services.ingest.on_sqlite import SqliteStatement, is_sqlite
from services.ingest.store import INBOXES, packed_inbox, quarantine
from shared.outage import raise_if_outage
from shared.store import among
from shared.service import Runtime

log = logging.getLogger("funnelstream.ingest.pipeline")

# A transaction applies the oldest inbox rows (requests), at most this many, and at most this much
# of their messages (JSON, at least one row): a few MB in memory whatever the requests' size, and
# ~2,500 events when requests carry a hundred (with one each, 200).
ROWS_PER_TRANSACTION = 200
BYTES_PER_TRANSACTION = 2_000_000
ROWS_BESIDE_REQUESTS = 2  # a transaction's rows while requests keep coming
MAX_ATTEMPTS = 3
QUIET_SECONDS = 0.1  # no request for this long: the pipeline runs freely
GIVE_WAY = 9  # while requests come: the pipeline waits 9 times as long as its last transaction took (a tenth of the time)
BACKLOG_ROWS = 500  # inbox rows (requests) past which the pipeline no longer gives way
GROUP_COMMIT = 500  # requests committed together at most (their rows are one statement on SQLite)


class Pipeline:
    def __init__(self) -> None:
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._commit_lock = asyncio.Lock()
        self._sqlite_writer = asyncio.Lock()
        self._inbox = InboxWriter()
        self._waiting: list[tuple[list[Message], list[Rejection], datetime, asyncio.Future[bool]]] = []
        self._requests = 0
        self._last_request = 0.0
        self._backlog = 0  # inbox rows written here and not yet applied here (other replicas aside)
        # The inboxes a drain still reads: once an earlier release's is found empty, only this
        # one's for the rest of the drain (a statement less a transaction; its rows wait a drain).
        self._inboxes: tuple[Table, ...] = INBOXES

    def wake(self) -> None:
        self._wake.set()

    @contextmanager
    def request(self) -> Iterator[None]:
        """A tracking request in flight: the pipeline gives way to it."""
        self._requests += 1
        try:
            yield
        finally:
            self._requests -= 1
            self._last_request = time.monotonic()

    async def enqueue(self, runtime: Runtime, messages: list[Message], rejections: list[Rejection],
                      received_at: datetime) -> None:
        """Commit the request's inbox row (and its rejections to the quarantine), with those of
        the requests waiting beside it in one transaction; returns once it is committed."""
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.append((messages, rejections, received_at, done))
        async with self._commit_lock:
            if not done.done():
                group, self._waiting = self._waiting[:GROUP_COMMIT], self._waiting[GROUP_COMMIT:]
                written = False
                try:
                    await self._write(runtime, [(m, r, at) for m, r, at, _ in group])
                    written = True
                finally:  # failed or cancelled: each request of the group writes its own row
                    for *_, future in group:
                        if not future.done():
                            future.set_result(written)
        if not done.result():
            async with self._commit_lock:
                await self._write(runtime, [(messages, rejections, received_at)])
        self._backlog += 1
        self.wake()

    async def _write(self, runtime: Runtime, requests: list[tuple[list[Message], list[Rejection], datetime]]) -> None:
        """On SQLite, requests without rejections (the usual) through the inbox writer: one round
        trip; else the store's transaction, the quarantine beside the inbox rows."""
        if self._inbox.serves(runtime.store) and not runtime.stopping.is_set() and not any(r for _, r, _ in requests):
            rows = [(at, pack(m, at)) for m, _, at in requests if m]
            async with self._writer_turn(runtime):
                await self._inbox.write(runtime.store, rows)
            return
        async with self._writer_turn(runtime), runtime.store.transaction() as session:
            await ingestion.enqueue_all(session, requests)

    def _writer_turn(self, runtime: Runtime) -> AbstractAsyncContextManager[Any]:
        """SQLite has one writer: the pipeline's transactions and the inbox writer's rows (not on
        the store's connections, so not in the store's queue) take turns here."""
        return self._sqlite_writer if runtime.store.is_sqlite else nullcontext()

    async def _give_way(self, last_turn: float) -> int:
        """Wait until no request has been in flight for QUIET_SECONDS (then the pipeline runs
        freely); while requests keep coming, wait GIVE_WAY times as long as the pipeline's last
        transaction took, so requests get most of the time, and apply fewer rows at a time (the
        loop and the store's writer are the requests' again sooner). No waiting past BACKLOG_ROWS.
        Returns the rows to apply next."""
        deadline = time.monotonic() + GIVE_WAY * last_turn
        while self._backlog <= BACKLOG_ROWS:
            now = time.monotonic()
            quiet_for = 0.0 if self._requests else now - self._last_request
            if quiet_for >= QUIET_SECONDS:
                break
            if now >= deadline:
                return ROWS_BESIDE_REQUESTS
            await asyncio.sleep(min(QUIET_SECONDS - quiet_for, deadline - now))
        return ROWS_PER_TRANSACTION

    async def run(self, runtime: Runtime) -> None:
        try:
            await self._run(runtime)
        finally:
            async with self._commit_lock:  # no request is writing through it
                await self._inbox.close()

    async def _run(self, runtime: Runtime) -> None:
        while not runtime.stopping.is_set():
            # Until a request queues rows, half a second passes, or the service stops (a stop
            # must not wait out the half second).
            waits = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(runtime.stopping.wait())]
            await asyncio.wait(waits, timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
            for waiting in waits:
                waiting.cancel()
            self._wake.clear()
            try:
                await self.drain(runtime, give_way=True)
            except Exception:
                log.exception("ingest pipeline failed; retrying in 1 s")
                await asyncio.sleep(1)

    async def drain(self, runtime: Runtime, give_way: bool = False) -> None:
        """Apply every inbox row there is now (erasure calls this first, so nothing pending
        about the customer can land after it)."""
        more, took = True, 0.0
        self._inboxes = INBOXES
        while more:
            rows = await self._give_way(took) if give_way else ROWS_PER_TRANSACTION
            started = time.monotonic()
            async with self._lock:
                more = await self._apply_next(runtime, rows)
            took = time.monotonic() - started

    async def _apply_next(self, runtime: Runtime, rows: int) -> bool:
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                return await self._apply(runtime, rows if attempt == 1 else 1)
            except Exception as exc:
                if attempt == MAX_ATTEMPTS:
                    await raise_if_outage(runtime.store, runtime.bus, exc)  # keep the row for later
                    await self._quarantine_first(runtime, exc)
                    return True
                log.warning("inbox batch failed (attempt %d); retrying row by row", attempt, exc_info=True)
                await asyncio.sleep(0.05 * 2**attempt)
        return False

    async def _apply(self, runtime: Runtime, rows: int) -> bool:
        """Apply the oldest `rows` inbox rows together: one dedupe, one stitch and one timeline
        write for all their messages, on the transaction's connection (Core statements, no ORM
        session bookkeeping)."""
        async with self._writer_turn(runtime), runtime.store.transaction() as session:
            db = await session.connection()
            table, pending = await _oldest_rows(db, rows, self._inboxes)
            if table is packed_inbox:
                self._inboxes = (packed_inbox,)
            if not pending:
                return False
            messages = [message for row in pending for message in unpack(row.messages, row.received_at)]
            outbox = await ingestion.accept(db, messages)
            await _delete_rows(db, table, [r.id for r in pending])
            await runtime.bus.publish(outbox.records)
        self._backlog = max(0, self._backlog - len(pending))
        return True

    async def _quarantine_first(self, runtime: Runtime, exc: Exception) -> None:
        """Move the oldest inbox row's messages to the quarantine, with the error."""
        log.error("inbox row keeps failing, quarantined: %s", exc)
        async with self._writer_turn(runtime), runtime.store.transaction() as session:
            for table in INBOXES:
                row = (await session.execute(select(table).order_by(table.c.id).limit(1))).first()
                if row is not None:
                    break
            else:
                return
            reason = f"processing failed: {type(exc).__name__}: {exc}"[:1000]
            rejections = [Rejection(i, m["message_id"], reason, m) for i, m in enumerate(_as_sent(row))]
            await session.execute(insert(quarantine),
                                  [ingestion.quarantine_row(r, row.received_at) for r in rejections])
            await session.execute(delete(table).where(table.c.id == row.id))


def _as_sent(row: Row[Any]) -> list[dict[str, Any]]:
    """The row's messages, or a note when they cannot be read (nothing else would remove it)."""
    try:
        return as_sent(row.messages, row.received_at)
    except Exception:  # noqa: BLE001  (a row the pipeline cannot read: kept as the note says)
        return [{"message_id": None, "inbox_row": f"unreadable ({len(row.messages)} bytes)"}]


async def _oldest_rows(db: AsyncConnection, rows: int, inboxes: Sequence[Table],
                       ) -> tuple[Table, list[Row[Any]]]:
    """The oldest inbox rows of the first of `inboxes` holding any (an earlier release's first), at most
    `rows` and BYTES_PER_TRANSACTION of messages (at least one row), with their table. Their sizes
    first, so no more messages are read than the transaction applies; but the few rows of a
    transaction beside requests are read whole at once (a statement less, on the path taken most
    often). PostgreSQL: the rows read are locked, skipping locked ones, so replicas take different
    rows side by side; those read and not taken are free again at commit."""
    for table in inboxes:
        if rows <= ROWS_BESIDE_REQUESTS:
            found = (await db.execute(_locking(select(table).order_by(table.c.id).limit(rows), db))).all()
            taken = len(_within_bytes([(row.id, len(row.messages)) for row in found]))
            if taken:
                return table, list(found[:taken])
            continue
        sizes = select(table.c.id, func.length(table.c.messages)).order_by(table.c.id).limit(rows)
        ids = _within_bytes((await db.execute(_locking(sizes, db))).all())
        if ids:
            return table, list((await db.execute(select(table).where(among(table.c.id, ids, db)).order_by(table.c.id))).all())
    return packed_inbox, []


def _locking(query: Select[Any], db: AsyncConnection) -> Select[Any]:
    return query if db.dialect.name == "sqlite" else query.with_for_update(skip_locked=True)


async def _delete_rows(db: AsyncConnection, table: Table, ids: list[int]) -> None:
    if is_sqlite(db):
        await DELETE_ON_SQLITE[table.name].rows(db, ids=orjson.dumps(ids).decode())
    else:
        await db.execute(delete(table).where(among(table.c.id, ids, db)))


DELETE_ON_SQLITE = {table.name: SqliteStatement(delete(table).where(  # as `among`
    table.c.id.in_(select(func.json_each(bindparam("ids")).table_valued("value").c.value)))) for table in INBOXES}


def _within_bytes(sizes: Sequence[tuple[int, int]]) -> list[int]:
    """The ids of the first rows whose messages add up to at most BYTES_PER_TRANSACTION (the
    first row whatever its size)."""
    ids: list[int] = []
    total = 0
    for row_id, size in sizes:
        total += size
        if ids and total > BYTES_PER_TRANSACTION:
            break
        ids.append(row_id)
    return ids

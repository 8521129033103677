"""The ingest pipeline: from the inbox to the timeline and the bus, behind the request.

A tracking request validates its messages, commits them as one inbox row and answers; this task
takes inbox rows in order, a few requests per transaction, and applies them (`ingestion.accept`:
dedupe, stitching, timeline, outbox). So a request costs one small write whatever happens
downstream, as with Segment's and PostHog's capture APIs, and events reach the timeline and the
bus within milliseconds. A row that keeps failing while the store and the bus answer (so the row
itself is at fault) is moved to the quarantine with the error instead of stalling the rows behind
it; during an outage the row waits.

The events are published before the transaction commits, not through the outbox: if the commit
fails or the process dies in between, the inbox rows are applied again and the same events are
published again under the same ids, which consumers drop (at least once, without an outbox copy
of every event).
"""
from __future__ import annotations

import asyncio
import logging

import orjson
from sqlalchemy import delete, insert, select

from services.ingest import ingestion
from services.ingest.messages import Rejection, unpack
from services.ingest.store import inbox, quarantine
from shared.outage import raise_if_outage
from shared.service import Runtime

log = logging.getLogger("funnelstream.ingest.pipeline")

ROWS_PER_TRANSACTION = 20
MAX_ATTEMPTS = 3


class Pipeline:
    def __init__(self) -> None:
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()

    def wake(self) -> None:
        self._wake.set()

    async def run(self, runtime: Runtime) -> None:
        while not runtime.stopping.is_set():
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=0.5)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.drain(runtime)
            except Exception:
                log.exception("ingest pipeline failed; retrying in 1 s")
                await asyncio.sleep(1)

    async def drain(self, runtime: Runtime) -> None:
        """Apply every inbox row there is now (erasure calls this first, so nothing pending
        about the customer can land after it)."""
        async with self._lock:
            more = True
            while more:
                more = await self._apply_next(runtime)

    async def _apply_next(self, runtime: Runtime) -> bool:
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                return await self._apply(runtime, ROWS_PER_TRANSACTION if attempt == 1 else 1)
            except Exception as exc:
                if attempt == MAX_ATTEMPTS:
                    await raise_if_outage(runtime.store, runtime.bus, exc)  # keep the row for later
                    await self._quarantine_first(runtime, exc)
                    return True
                log.warning("inbox batch failed (attempt %d); retrying row by row", attempt, exc_info=True)
                await asyncio.sleep(0.05 * 2**attempt)
        return False

    async def _apply(self, runtime: Runtime, rows: int) -> bool:
        async with runtime.store.transaction() as session:
            query = select(inbox).order_by(inbox.c.id).limit(rows)
            if not runtime.store.is_sqlite:
                query = query.with_for_update(skip_locked=True)
            pending = (await session.execute(query)).all()
            if not pending:
                return False
            outgoing = []
            for row in pending:
                outcome = await ingestion.accept(session, unpack(row.messages), [], row.received_at)
                outgoing += outcome.outbox.records
            await session.execute(delete(inbox).where(inbox.c.id.in_([r.id for r in pending])))
            await runtime.bus.publish(outgoing)
        return True

    async def _quarantine_first(self, runtime: Runtime, exc: Exception) -> None:
        """Move the oldest inbox row's messages to the quarantine, with the error."""
        log.error("inbox row keeps failing, quarantined: %s", exc)
        async with runtime.store.transaction() as session:
            row = (await session.execute(select(inbox).order_by(inbox.c.id).limit(1))).first()
            if row is None:
                return
            reason = f"processing failed: {type(exc).__name__}: {exc}"[:1000]
            raws = orjson.loads(row.messages)
            rejections = [Rejection(i, m.get("message_id"), reason, m) for i, m in enumerate(raws)]
            await session.execute(insert(quarantine),
                                  [ingestion.quarantine_row(r, row.received_at) for r in rejections])
            await session.execute(delete(inbox).where(inbox.c.id == row.id))

"""Pruning processed message ids (PROCESSED_IDS_RETENTION_DAYS), on SQLite and PostgreSQL with the
real embedded bus: ids processed before the window go, those inside it (its edge included) stay,
a redelivered recent message is still skipped afterwards, deletes come in chunks, and the service
shell's job prunes by the service clock. Time passes by moving that clock, never by sleeping."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event

from shared.bus.base import Record
from shared.bus.embedded import EmbeddedBus
from shared.clock import FixedClock
from shared.consumer import ConsumerLoop
from shared.events import INTERACTIONS, encode, message_id
from shared.outbox import OutboxRelay
from shared.processed_ids import prune_processed_ids
from shared.service import PRUNE_PROCESSED_IDS_SECONDS, Runtime, processed_ids_pruning
from shared.settings import ServiceSettings
from shared.store import Store
from tests.store.counting import T0, InteractionCounter, bus_tables, counts, interaction, poll_all, processed_ids

WINDOW_DAYS = 30
# Customers whose ids interleave in key order (c00-1, c01-1, ...), so every chunk of the primary
# key mixes ids to delete with ids to keep.
OLD = [f"c{i:02d}" for i in range(0, 24, 2)]  # processed 35 days before the pass
RECENT = [f"c{i:02d}" for i in range(1, 18, 2)]  # 15 days before
PAST_EDGE = ["c90"]  # a second more than the window before
AT_EDGE = ["c91"]  # exactly the window before: kept (ids older than the window go)


class Consumed:
    """A counting consumer whose batches are stamped by a clock the test moves."""

    def __init__(self, store: Store, bus: EmbeddedBus) -> None:
        self.clock = FixedClock(T0)
        self.counter = InteractionCounter()
        self.loop = ConsumerLoop("counting", bus, store, bus_tables, self.counter.handlers(),
                                 OutboxRelay(store, bus_tables, bus), 3, now=self.clock.now)
        self.records: dict[str, Record] = {}

    async def deliver(self, bus: EmbeddedBus) -> None:
        customers = OLD + RECENT + PAST_EDGE + AT_EDGE
        await bus.publish([encode(interaction(c)) for c in customers])
        for record in await poll_all(bus, INTERACTIONS, len(customers)):
            self.records[record.key] = record

    async def process(self, customers: list[str]) -> None:
        await self.loop.process([self.records[c] for c in customers])

    def ids(self, customers: list[str]) -> set[str]:
        return {message_id(self.records[c]) for c in customers}

    async def history(self) -> None:
        """OLD at T0, the edge cases at T0 + 5 days (one second apart), RECENT at T0 + 20 days;
        the clock ends at T0 + 35 days: the window's start is T0 + 5 days."""
        await self.process(OLD)
        self.clock.advance(days=5, seconds=-1)
        await self.process(PAST_EDGE)
        self.clock.advance(seconds=1)
        await self.process(AT_EDGE)
        self.clock.advance(days=15)
        await self.process(RECENT)
        self.clock.advance(days=15)

    def window_start(self) -> Any:
        return self.clock.now() - timedelta(days=WINDOW_DAYS)


@pytest.fixture
async def consumed(store: Store, bus: EmbeddedBus) -> AsyncIterator[Consumed]:
    consumed = Consumed(store, bus)
    await consumed.deliver(bus)
    await consumed.history()
    yield consumed


async def test_ids_older_than_the_window_are_pruned_and_the_rest_kept(store: Store, consumed: Consumed) -> None:
    everything = consumed.ids(OLD + RECENT + PAST_EDGE + AT_EDGE)
    assert set(await processed_ids(store)) == everything

    pruned = await prune_processed_ids(store, bus_tables.processed, consumed.window_start(), chunk=4)

    assert set(await processed_ids(store)) == consumed.ids(RECENT + AT_EDGE)
    assert pruned == len(OLD + PAST_EDGE)
    assert await prune_processed_ids(store, bus_tables.processed, consumed.window_start(), chunk=4) == 0


async def test_a_redelivered_recent_message_is_still_skipped_after_pruning(store: Store, consumed: Consumed) -> None:
    await prune_processed_ids(store, bus_tables.processed, consumed.window_start(), chunk=4)
    before = await counts(store)

    await consumed.process(RECENT + AT_EDGE + OLD)  # all delivered again, after the pass

    after = await counts(store)
    assert {c: after[c] for c in RECENT + AT_EDGE} == {c: before[c] for c in RECENT + AT_EDGE}  # skipped
    assert {c: after[c] for c in OLD} == {c: before[c] + 1 for c in OLD}  # forgotten: the window decides
    assert all(consumed.counter.calls[c] == 1 for c in RECENT + AT_EDGE)


async def test_a_pass_scans_and_deletes_a_bounded_number_at_a_time(store: Store, consumed: Consumed) -> None:
    deletes: list[int] = []

    def seen(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("DELETE FROM PROCESSED_MESSAGES"):
            deletes.append(cursor.rowcount)

    event.listen(store.engine.sync_engine, "after_cursor_execute", seen)
    try:  # scans of 5 ids at most, deletes of 4: rounds of a 4 and a 1, then the last 3
        await prune_processed_ids(store, bus_tables.processed, consumed.window_start(), chunk=4, scan_limit=5)
    finally:
        event.remove(store.engine.sync_engine, "after_cursor_execute", seen)

    assert sum(deletes) == len(OLD + PAST_EDGE) == 13
    assert deletes == [4, 1, 4, 1, 3]
    assert set(await processed_ids(store)) == consumed.ids(RECENT + AT_EDGE)


async def test_a_stopping_service_ends_the_pass_and_the_next_goes_on(store: Store, consumed: Consumed) -> None:
    stopping = asyncio.Event()
    stopping.set()
    assert await prune_processed_ids(store, bus_tables.processed, consumed.window_start(), stopping=stopping) == 0
    assert set(await processed_ids(store)) == consumed.ids(OLD + RECENT + PAST_EDGE + AT_EDGE)
    assert await prune_processed_ids(store, bus_tables.processed, consumed.window_start()) == len(OLD + PAST_EDGE)


class TestTheServiceShellsJob:
    def runtime(self, store: Store, bus: EmbeddedBus, consumed: Consumed) -> Runtime:
        return Runtime(store, bus_tables, bus, consumed.loop.relay, consumed.loop, clock=consumed.clock)

    async def test_it_prunes_by_the_service_clock(self, store: Store, bus: EmbeddedBus, consumed: Consumed) -> None:
        runtime = self.runtime(store, bus, consumed)
        [job] = runtime.shell_jobs(ServiceSettings(processed_ids_retention_days=WINDOW_DAYS))
        assert job.seconds == PRUNE_PROCESSED_IDS_SECONDS and not job.every_replica

        await job.job(runtime)
        assert set(await processed_ids(store)) == consumed.ids(RECENT + AT_EDGE)

        consumed.clock.advance(days=15, seconds=1)  # RECENT (at the edge a second ago) and AT_EDGE now past it
        await job.job(runtime)
        assert await processed_ids(store) == []

    async def test_it_is_off_at_zero_and_without_a_consumer(
        self, store: Store, bus: EmbeddedBus, consumed: Consumed
    ) -> None:
        runtime = self.runtime(store, bus, consumed)
        assert runtime.shell_jobs(ServiceSettings()) == []  # the default keeps every id
        runtime.consumer = None
        assert runtime.shell_jobs(ServiceSettings(processed_ids_retention_days=WINDOW_DAYS)) == []
        assert processed_ids_pruning(WINDOW_DAYS).name == "prune-processed-ids"

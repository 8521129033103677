"""Dead letters on both backends: what a consumer group gave up on is listed with its error and
origin; redriven, the group that gave up processes it once, a group that had processed it does
not process it again, and it is no longer listed."""
from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Column, Integer, String, Table, insert, select

from shared import dead_letters
from shared.bus.base import Bus
from shared.consumer import ConsumerLoop, Transaction
from shared.events import INTERACTIONS, Event, Interaction, encode
from shared.outbox import OutboxRelay
from shared.store import Store, add_bus_tables, make_metadata
from tests.bus.conftest import BusFactory
from tests.helpers import eventually

AT = datetime(2026, 5, 1, tzinfo=UTC)


def interaction(event_id: str, customer: str) -> Interaction:
    return Interaction(customer_id=customer, event_id=event_id, user_id=customer, type="track", name="Viewed",
                       occurred_at=AT, received_at=AT)


class Group:
    """A consumer group of our own: its handler records what it processed, and fails on the
    customers in `refused` (as a handler does on a bug or a bad row)."""

    def __init__(self, name: str, bus: Bus, store: Store, refused: set[str]) -> None:
        self.refused = refused
        metadata = make_metadata()
        self.tables = add_bus_tables(metadata)
        self.handled = Table("handled", metadata, Column("n", Integer, primary_key=True, autoincrement=True),
                             Column("event_id", String(200), nullable=False))
        self.metadata = metadata
        self.loop = ConsumerLoop(name, bus, store, self.tables, {Interaction: [self.handle]},
                                 OutboxRelay(store, self.tables, bus), max_attempts=2)
        self.store = store

    async def handle(self, event: Event, tx: Transaction) -> None:
        assert isinstance(event, Interaction)
        if event.customer_id in self.refused:
            raise RuntimeError(f"cannot process {event.customer_id}")
        await tx.session.execute(insert(self.handled).values(event_id=event.event_id))

    async def processed(self) -> list[str]:
        """What it processed, as committed (a failed transaction leaves nothing)."""
        async with self.store.read() as session:
            return list((await session.execute(select(self.handled.c.event_id))).scalars())


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[list[Store]]:
    made = [Store(f"sqlite+aiosqlite:///{tmp_path / f'{name}.db'}") for name in ("alpha", "beta")]
    yield made
    for store in made:
        await store.dispose()


async def caught_up(bus: Bus, group: str) -> bool:
    return sum((await bus.lag(group, [INTERACTIONS])).values()) == 0


async def test_a_redriven_dead_letter_is_processed_once_and_no_longer_listed(make_bus: BusFactory, stores: list[Store]):
    bus = await make_bus()  # type: ignore[misc]
    broken = {"poison"}
    # Our own groups and event ids: the Kafka broker is shared with other tests, which may leave
    # dead letters and groups (id() of an object is reused once it is freed: a uuid is not).
    run = uuid.uuid4().hex[:12]
    alpha = Group(f"alpha-{run}", bus, stores[0], broken)
    beta = Group(f"beta-{run}", bus, stores[1], set())
    for group in (alpha, beta):
        async with group.store.engine.begin() as conn:
            await conn.run_sync(group.metadata.create_all)
    ids = {name: f"{name}-{run}" for name in ("ok-1", "bad", "ok-2")}
    tasks = [asyncio.create_task(g.loop.run()) for g in (alpha, beta)]
    try:
        await bus.publish([encode(interaction(ids["ok-1"], "ann")), encode(interaction(ids["bad"], "poison")),
                           encode(interaction(ids["ok-2"], "bob"))])
        await eventually(lambda: caught_up(bus, alpha.loop.group), timeout=60)
        await eventually(lambda: caught_up(bus, beta.loop.group), timeout=60)

        ours = [d async for d in dead_letters.pending(bus, [INTERACTIONS]) if d.event_id == ids["bad"]]
        assert [(d.topic, d.group, d.key, d.attempts, d.error) for d in ours] == [
            (INTERACTIONS, alpha.loop.group, "poison", 2, "RuntimeError: cannot process poison")]
        original = [r for r in await bus.read(INTERACTIONS, ours[0].partition, ours[0].offset, 1)]
        assert original[0].headers["message-id"] == ids["bad"] and original[0].key == "poison"
        # (A new group reads the topic from its start: other tests' records on the shared broker too.)
        assert sorted(set(await alpha.processed()) & set(ids.values())) == sorted([ids["ok-1"], ids["ok-2"]])

        broken.clear()  # the bug is fixed
        done = await dead_letters.redrive(bus, INTERACTIONS, [ours[0].id])
        assert done.redriven == [ours[0].id] and done.not_found == []
        await eventually(lambda: caught_up(bus, alpha.loop.group), timeout=60)
        await eventually(lambda: caught_up(bus, beta.loop.group), timeout=60)

        assert (await alpha.processed()).count(ids["bad"]) == 1
        assert (await beta.processed()).count(ids["bad"]) == 1  # it had processed it: the copy is skipped
        assert [d async for d in dead_letters.pending(bus, [INTERACTIONS]) if d.event_id == ids["bad"]] == []
        again = await dead_letters.redrive(bus, INTERACTIONS, [ours[0].id])
        assert again.redriven == [] and again.not_found == [ours[0].id]
    finally:
        for group in (alpha, beta):
            group.loop.stop()
        await asyncio.gather(*tasks)

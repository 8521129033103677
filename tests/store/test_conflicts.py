"""Replicas of one service on one PostgreSQL database: when their batches deadlock (a stitched
customer whose anonymous events sit in another replica's partition) or fail to serialise, the
aborted batch runs again, whole; no message counts an attempt for it or reaches the dead letter
topic. A batch that lost a race for a unique key (both replicas inserted one stitched customer's
row) runs again a few times before it is split. (SQLite has one writer at a time: nothing to deadlock.)"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import pytest
from sqlalchemy import insert, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from shared.bus.base import dlq_topic
from shared.bus.embedded import EmbeddedBus
from shared.consumer import Handlers, Transaction
from shared.events import INTERACTIONS, Event, Interaction, encode
from shared.store import Store
from tests.store.counting import (
    InteractionCounter,
    LoopFactory,
    counts,
    interaction,
    poll_all,
    topic_contents,
)

DLQ = dlq_topic(INTERACTIONS)


@pytest.fixture(autouse=True)
def postgresql_only(store_url: str) -> None:
    if store_url.startswith("sqlite"):
        pytest.skip("SQLite runs one writer at a time: no deadlock, no serialization failure")


async def bump(session: AsyncSession, customer: str) -> None:
    from tests.store.counting import interaction_counts as table

    await session.execute(update(table).where(table.c.customer_id == customer)
                          .values(interactions=table.c.interactions + 1))


@dataclass
class Crossing:
    """Counts each interaction on two rows, `first` then `second`; it waits, holding `first`,
    until the other replica holds its own first row. Two replicas given opposite orders deadlock
    on their first run, whatever the timing."""

    first: str
    second: str
    holding: asyncio.Event
    other_holding: asyncio.Event
    calls: int = 0

    def handlers(self) -> Handlers:
        return {Interaction: [self]}

    async def __call__(self, event: Event, tx: Transaction) -> None:
        self.calls += 1
        await bump(tx.session, self.first)
        self.holding.set()
        await asyncio.wait_for(self.other_holding.wait(), 30)
        await bump(tx.session, self.second)


@dataclass
class AbortedAtFirst(InteractionCounter):
    """Counts interactions, but PostgreSQL aborts its transaction with `sqlstate` the first
    `aborts` times, as it aborts a deadlock victim or a transaction it cannot serialise."""

    sqlstate: str = "40P01"
    aborts: int = 3
    aborted: list[str] = field(default_factory=list)

    async def __call__(self, event: Event, tx: Transaction) -> None:
        if len(self.aborted) < self.aborts:
            self.aborted.append(event.customer_id)
            await tx.session.execute(text(
                f"DO $$ BEGIN RAISE EXCEPTION 'aborted for another transaction' USING ERRCODE = '{self.sqlstate}'; END $$"))
        await super().__call__(event, tx)


class TestDeadlockedReplicas:
    async def test_two_replicas_locking_rows_in_opposite_orders_both_apply_their_batch_whole(
        self, store: Store, bus: EmbeddedBus, make_loop: LoopFactory, caplog: pytest.LogCaptureFixture
    ) -> None:
        from tests.store.counting import interaction_counts

        async with store.transaction() as session:
            await session.execute(insert(interaction_counts), [{"customer_id": c, "interactions": 0} for c in "xy"])
        x_held, y_held = asyncio.Event(), asyncio.Event()
        one, two = Crossing("x", "y", x_held, y_held), Crossing("y", "x", y_held, x_held)
        await bus.publish([encode(interaction("ann", n)) for n in (1, 2)] + [encode(interaction("bob", n)) for n in (1, 2)])
        records = await poll_all(bus, INTERACTIONS, 4)
        ann = [r for r in records if r.key == "ann"]
        bob = [r for r in records if r.key == "bob"]
        caplog.set_level(logging.INFO, "funnelstream.consumer")
        await asyncio.wait_for(asyncio.gather(make_loop(one, max_attempts=1).process(ann),
                                              make_loop(two, max_attempts=1).process(bob)), 60)
        assert await counts(store) == {"x": 4, "y": 4}
        assert await topic_contents(bus, DLQ) == []
        assert "deadlock" in caplog.text.lower() or "conflict" in caplog.text
        assert "message by message" not in caplog.text  # the victim's batch ran again as one
        assert sorted((one.calls, two.calls)) == [2, 3]  # the victim deadlocked on its first event, then ran both

    @pytest.mark.parametrize("sqlstate", ["40P01", "40001"], ids=["deadlock", "serialization_failure"])
    async def test_a_batch_aborted_more_often_than_max_attempts_is_applied_once_and_never_dead_lettered(
        self, store: Store, bus: EmbeddedBus, make_loop: LoopFactory, sqlstate: str
    ) -> None:
        handler = AbortedAtFirst(sqlstate=sqlstate, aborts=4)
        loop = make_loop(handler, max_attempts=2)
        await bus.publish([encode(interaction("ann", n)) for n in (1, 2)] + [encode(interaction("bob", 1))])
        await loop.process(await poll_all(bus, INTERACTIONS, 3))
        assert await counts(store) == {"ann": 2, "bob": 1}
        assert await topic_contents(bus, DLQ) == []
        assert len(handler.aborted) == 4

    async def test_a_batch_that_lost_a_unique_key_race_runs_again_whole(
        self, store: Store, bus: EmbeddedBus, make_loop: LoopFactory, caplog: pytest.LogCaptureFixture
    ) -> None:
        handler = AbortedAtFirst(sqlstate="23505", aborts=2)  # another replica inserted the row first
        caplog.set_level(logging.INFO, "funnelstream.consumer")
        await bus.publish([encode(interaction("ann", n)) for n in (1, 2)])
        await make_loop(handler, max_attempts=1).process(await poll_all(bus, INTERACTIONS, 2))
        assert await counts(store) == {"ann": 2}
        assert await topic_contents(bus, DLQ) == []
        assert "message by message" not in caplog.text

    async def test_a_unique_key_violated_every_time_is_still_a_poison_message(
        self, store: Store, bus: EmbeddedBus, make_loop: LoopFactory
    ) -> None:
        handler = AbortedAtFirst(sqlstate="23505", aborts=1000)
        await bus.publish([encode(interaction("ann", 1))])
        await asyncio.wait_for(make_loop(handler, max_attempts=2).process(await poll_all(bus, INTERACTIONS, 1)), 60)
        [dead] = await topic_contents(bus, DLQ)
        assert "aborted for another transaction" in dead.headers["dlq-error"]

"""The consumer loop around every service's handlers, on SQLite and on PostgreSQL with the real
embedded bus: effects once per message, outgoing events committed with the state that caused
them, and messages no retry can fix set aside in `<topic>.dlq` while the rest of the batch goes on."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from shared.bus.base import OutgoingRecord, Record, dlq_topic
from shared.bus.embedded import EmbeddedBus
from shared.consumer import ConsumerLoop
from shared.events import ID_HEADER, INTERACTIONS, SEGMENTS, TYPE_HEADER, decode, encode
from shared.outage import Outage
from shared.outbox import OutboxRelay
from shared.store import Store
from tests.helpers import eventually
from tests.store.counting import (
    InteractionCounter,
    LoopFactory,
    bus_tables,
    counts,
    entered_active,
    interaction,
    outbox_rows,
    outbox_size,
    poll_all,
    processed_ids,
    topic_contents,
)

DLQ = dlq_topic(INTERACTIONS)


def interactions(*customers: str, each: int = 1) -> list[OutgoingRecord]:
    return [encode(interaction(c, n)) for c in customers for n in range(1, each + 1)]


def raw(customer: str, value: bytes, event_type: str = "Interaction") -> OutgoingRecord:
    return OutgoingRecord(
        INTERACTIONS, customer, value, {TYPE_HEADER: event_type, ID_HEADER: f"raw-{customer}"}
    )


async def delivered(bus: EmbeddedBus, records: list[OutgoingRecord]) -> list[Record]:
    """Publish `records` and return them as a consumer receives them (one polled batch)."""
    await bus.publish(records)
    return await poll_all(bus, INTERACTIONS, len(records))


async def announced(bus: EmbeddedBus) -> list[str]:
    """The customers announced on the segments topic, sorted."""
    return sorted(decode(r).customer_id for r in await topic_contents(bus, SEGMENTS))


async def announced_after_flush(loop: ConsumerLoop, bus: EmbeddedBus) -> list[str]:
    await loop.relay.flush()
    return await announced(bus)


async def _outbox_empty(store: Store) -> bool:
    return await outbox_size(store) == 0


@contextlib.asynccontextmanager
async def running(loop: ConsumerLoop) -> AsyncIterator[None]:
    """The loop and its outbox relay, as a service runs them; stopped at the end."""
    tasks = [asyncio.create_task(loop.run()), asyncio.create_task(loop.relay.run())]
    try:
        yield
    finally:
        loop.stop()
        loop.relay.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=10)


async def caught_up(bus: EmbeddedBus, loop: ConsumerLoop) -> None:
    async def no_lag() -> bool:
        return all(lag == 0 for lag in (await bus.lag(loop.group, loop.topics)).values())

    await eventually(no_lag, what=f"group {loop.group} catching up")


class TestEffectsApplyOnce:
    async def test_each_interaction_is_counted_once(
        self, store: Store, bus: EmbeddedBus, make_loop: LoopFactory
    ) -> None:
        loop = make_loop(InteractionCounter())
        await loop.process(await delivered(bus, interactions("ann", "bob", each=3)))
        assert await counts(store) == {"ann": 3, "bob": 3}
        assert len(await processed_ids(store)) == 6

    async def test_a_redelivered_batch_changes_nothing(
        self, store: Store, bus: EmbeddedBus, make_loop: LoopFactory
    ) -> None:
        handler = InteractionCounter()
        loop = make_loop(handler)
        records = await delivered(bus, interactions("ann", "bob", each=3))
        await loop.process(records)
        await loop.process(records)
        assert await counts(store) == {"ann": 3, "bob": 3}
        assert sum(handler.calls.values()) == 6
        assert await outbox_size(store) == 2
        assert await topic_contents(bus, DLQ) == []

    async def test_replaying_the_topic_from_the_start_changes_nothing(
        self, store: Store, bus: EmbeddedBus, make_loop: LoopFactory
    ) -> None:
        loop = make_loop(InteractionCounter())
        await bus.publish(interactions("ann", "bob", each=3))
        consumer = bus.consumer("replayer", [INTERACTIONS])
        await consumer.start()
        try:
            await loop.process(await consumer.poll(timeout=5))
            for topic, partition in consumer.assignment():
                await consumer.seek(topic, partition, 0)
            replayed = await consumer.poll(timeout=5)
            assert len(replayed) == 6
            await loop.process(replayed)
        finally:
            await consumer.stop()
        assert await counts(store) == {"ann": 3, "bob": 3}
        assert await topic_contents(bus, DLQ) == []

    async def test_the_same_message_twice_in_one_batch_is_counted_once(
        self, store: Store, bus: EmbeddedBus, make_loop: LoopFactory
    ) -> None:
        handler = InteractionCounter()
        loop = make_loop(handler)
        twice = [
            encode(interaction("ann", 1)),
            encode(interaction("ann", 2)),
            encode(interaction("ann", 1)),
        ]
        await loop.process(await delivered(bus, twice))
        assert await counts(store) == {"ann": 2}
        assert handler.calls == {"ann": 2}
        assert sorted(await processed_ids(store)) == ["ann-1", "ann-2"]

    async def test_messages_without_a_message_id_are_told_apart_by_their_position(
        self, store: Store, bus: EmbeddedBus, make_loop: LoopFactory
    ) -> None:
        loop = make_loop(InteractionCounter())
        same_event = encode(interaction("ann", 1))
        anonymous = OutgoingRecord(
            INTERACTIONS, "ann", same_event.value, {TYPE_HEADER: "Interaction"}
        )
        records = await delivered(bus, [anonymous, anonymous])
        await loop.process(records)
        await loop.process(records)
        assert await counts(store) == {"ann": 2}
        assert await topic_contents(bus, DLQ) == []

    async def test_a_running_consumer_restarted_with_its_offsets_does_not_count_again(
        self, store: Store, bus: EmbeddedBus, make_loop: LoopFactory
    ) -> None:
        await bus.publish(interactions("ann", "bob", each=2))
        first = make_loop(InteractionCounter())
        async with running(first):
            await caught_up(bus, first)
        await bus.publish([encode(interaction("ann", 3))])
        restarted = make_loop(handler := InteractionCounter())
        async with running(restarted):
            await caught_up(bus, restarted)
        assert handler.calls == {"ann": 1}
        assert await counts(store) == {"ann": 3, "bob": 2}

    async def test_a_new_consumer_group_reading_from_the_start_changes_nothing(
        self, store: Store, bus: EmbeddedBus, make_loop: LoopFactory
    ) -> None:
        await bus.publish(interactions("ann", "bob", each=2))
        first = make_loop(InteractionCounter())
        async with running(first):
            await caught_up(bus, first)
        replay = make_loop(handler := InteractionCounter(), group="counting-replay")
        async with running(replay):
            await caught_up(bus, replay)
        assert sum(handler.calls.values()) == 0
        assert await counts(store) == {"ann": 2, "bob": 2}
        assert await topic_contents(bus, DLQ) == []


class TestOutgoingEvents:
    async def test_an_event_published_by_a_handler_waits_in_the_outbox_with_the_state(
        self, store: Store, bus: EmbeddedBus, make_loop: LoopFactory
    ) -> None:
        loop = make_loop(InteractionCounter())
        await loop.process(await delivered(bus, interactions("ann", "bob", each=2)))
        assert await counts(store) == {"ann": 2, "bob": 2}
        rows = sorted(await outbox_rows(store), key=lambda r: str(r["key"]))
        assert [(r["topic"], r["key"]) for r in rows] == [(SEGMENTS, "ann"), (SEGMENTS, "bob")]
        assert rows[0]["value"] == encode(entered_active("ann")).value
        assert await topic_contents(bus, SEGMENTS) == []

    async def test_a_flushed_outbox_is_on_the_bus_and_empty(
        self, store: Store, bus: EmbeddedBus, make_loop: LoopFactory
    ) -> None:
        loop = make_loop(InteractionCounter())
        await loop.process(await delivered(bus, interactions("ann", "bob", each=2)))
        assert await loop.relay.flush() == 2
        on_bus = await topic_contents(bus, SEGMENTS)
        assert sorted((r.key, decode(r)) for r in on_bus) == [
            ("ann", entered_active("ann")),
            ("bob", entered_active("bob")),
        ]
        assert on_bus[0].headers == encode(entered_active(on_bus[0].key)).headers
        assert await outbox_size(store) == 0
        assert await loop.relay.flush() == 0

    async def test_a_handler_failing_after_publishing_leaves_neither_state_nor_event(
        self, store: Store, bus: EmbeddedBus, make_loop: LoopFactory
    ) -> None:
        loop = make_loop(InteractionCounter(fail_after_publish={"bob"}), max_attempts=2)
        await loop.process(await delivered(bus, interactions("ann", "bob", "cid")))
        assert await counts(store) == {"ann": 1, "cid": 1}
        assert sorted(str(r["key"]) for r in await outbox_rows(store)) == ["ann", "cid"]
        await loop.relay.flush()
        assert await announced(bus) == ["ann", "cid"]

    async def test_a_running_service_relays_its_events_without_a_manual_flush(
        self, store: Store, bus: EmbeddedBus, make_loop: LoopFactory
    ) -> None:
        await bus.publish(interactions("ann", "bob", each=3))
        loop = make_loop(InteractionCounter())
        async with running(loop):
            await caught_up(bus, loop)
            await eventually(lambda: _outbox_empty(store), what="the outbox emptying")
        assert await announced(bus) == ["ann", "bob"]
        assert await counts(store) == {"ann": 3, "bob": 3}


class TestPoisonMessages:
    async def test_a_message_that_always_fails_goes_to_the_dlq_and_the_rest_of_the_batch_applies(
        self, store: Store, bus: EmbeddedBus, make_loop: LoopFactory
    ) -> None:
        handler = InteractionCounter(poison={"bob"})
        loop = make_loop(handler, max_attempts=3)
        records = await delivered(bus, interactions("ann", "bob", "cid", each=2))
        await loop.process(records)
        assert await counts(store) == {"ann": 2, "cid": 2}
        assert await announced_after_flush(loop, bus) == ["ann", "cid"]
        dead = await topic_contents(bus, DLQ)
        assert sorted(r.headers[ID_HEADER] for r in dead) == ["bob-1", "bob-2"]
        assert handler.calls["bob"] >= 2 * 3

    async def test_a_dead_letter_says_where_it_came_from_and_why(
        self, store: Store, bus: EmbeddedBus, make_loop: LoopFactory
    ) -> None:
        loop = make_loop(InteractionCounter(poison={"bob"}), max_attempts=2, group="counting-g")
        records = await delivered(bus, interactions("ann", "bob"))
        await loop.process(records)
        original = next(r for r in records if r.key == "bob")
        [dead] = await topic_contents(bus, DLQ)
        assert (dead.key, dead.value) == (original.key, original.value)
        assert dead.headers == {
            **original.headers,
            "dlq-error": "HandlerFailed: cannot count bob",
            "dlq-original-topic": INTERACTIONS,
            "dlq-original-partition": str(original.partition),
            "dlq-original-offset": str(original.offset),
            "dlq-attempts": "2",
            "dlq-group": "counting-g",
        }

    async def test_an_unknown_event_type_goes_straight_to_the_dlq(
        self, store: Store, bus: EmbeddedBus, make_loop: LoopFactory
    ) -> None:
        handler = InteractionCounter()
        loop = make_loop(handler, max_attempts=3)
        unknown = raw("zed", encode(interaction("zed")).value, event_type="InteractionV9")
        await loop.process(await delivered(bus, [*interactions("ann"), unknown]))
        assert await counts(store) == {"ann": 1}
        [dead] = await topic_contents(bus, DLQ)
        assert dead.headers["dlq-attempts"] == "1"
        assert "unknown event type 'InteractionV9'" in dead.headers["dlq-error"]
        assert handler.calls["zed"] == 0

    async def test_a_payload_that_is_not_json_goes_straight_to_the_dlq(
        self, store: Store, bus: EmbeddedBus, make_loop: LoopFactory
    ) -> None:
        loop = make_loop(InteractionCounter(), max_attempts=3)
        await loop.process(await delivered(bus, [raw("zed", b"{not json"), *interactions("ann")]))
        assert await counts(store) == {"ann": 1}
        [dead] = await topic_contents(bus, DLQ)
        assert (dead.value, dead.headers["dlq-attempts"]) == (b"{not json", "1")
        assert dead.headers["dlq-error"].startswith("UndecodableRecord: Interaction payload")

    async def test_a_payload_missing_required_fields_goes_straight_to_the_dlq(
        self, store: Store, bus: EmbeddedBus, make_loop: LoopFactory
    ) -> None:
        loop = make_loop(InteractionCounter(), max_attempts=3)
        await loop.process(
            await delivered(bus, [raw("zed", b'{"customer_id": "zed"}'), *interactions("ann")])
        )
        assert await counts(store) == {"ann": 1}
        [dead] = await topic_contents(bus, DLQ)
        assert dead.headers["dlq-attempts"] == "1"

    async def test_a_running_consumer_moves_past_a_poison_message(
        self, store: Store, bus: EmbeddedBus, make_loop: LoopFactory
    ) -> None:
        await bus.publish(interactions("ann", "bob", "cid", each=2))
        loop = make_loop(InteractionCounter(poison={"bob"}), max_attempts=2)
        async with running(loop):
            await caught_up(bus, loop)
        assert await counts(store) == {"ann": 2, "cid": 2}
        assert len(await topic_contents(bus, DLQ)) == 2


class TestOutages:
    async def test_while_the_store_is_down_no_message_goes_to_the_dead_letter_topic(self, bus: EmbeddedBus) -> None:
        down = Store("postgresql+asyncpg://postgres@127.0.0.1:1/nowhere")  # nothing listens on port 1
        loop = ConsumerLoop("counting", bus, down, bus_tables, InteractionCounter().handlers(),
                            OutboxRelay(down, bus_tables, bus), max_attempts=2)
        records = await delivered(bus, interactions("ann", "bob", each=1))
        try:
            with pytest.raises(Outage, match="store is unreachable"):
                await loop.process(records)  # raises: the loop does not commit, and retries later
        finally:
            await down.dispose()
        assert await topic_contents(bus, DLQ) == []

"""Kafka's semantics, checked the same way on every bus backend."""
from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import Column, String, Table, insert, select

from shared.bus.base import Bus, Consumer, OutgoingRecord, Record, partition_for
from shared.consumer import ConsumerLoop, Transaction, next_offsets
from shared.events import Event, Interaction, encode
from shared.outbox import OutboxRelay
from shared.store import Store, add_bus_tables, make_metadata


def records(topic: str, n: int, keys: int) -> list[OutgoingRecord]:
    return [OutgoingRecord(topic, f"customer-{i % keys}", f"{i}".encode(), {"n": str(i)}) for i in range(n)]


async def consume(consumer: Consumer, n: int, timeout: float = 30) -> list[Record]:
    got: list[Record] = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        got += await consumer.poll(max_records=100, timeout=0.5)
    assert len(got) >= n, f"received {len(got)} of {n} records in {timeout}s"
    return got


async def drain(consumer: Consumer, quiet: float = 1.5) -> list[Record]:
    """Everything that arrives until nothing has come for `quiet` seconds."""
    got: list[Record] = []
    while batch := await consumer.poll(max_records=100, timeout=quiet):
        got += batch
    return got


async def started(bus: Bus, group: str, topics: list[str]) -> Consumer:
    consumer = bus.consumer(group, topics)
    await consumer.start()
    return consumer


class TestOrdering:
    async def test_records_of_one_key_arrive_in_the_order_published(self, make_bus, topic):
        bus = await make_bus()
        await bus.publish(records(topic, 300, keys=7))
        consumer = await started(bus, "g", [topic])
        got = await consume(consumer, 300)
        by_key: dict[str, list[int]] = defaultdict(list)
        for r in got:
            by_key[r.key].append(int(r.value))
        assert len(by_key) == 7
        for values in by_key.values():
            assert values == sorted(values)
        await consumer.stop()

    async def test_a_key_always_lands_on_the_same_partition(self, make_bus, topic):
        bus = await make_bus()
        await bus.publish(records(topic, 40, keys=5))
        consumer = await started(bus, "g", [topic])
        for r in await consume(consumer, 40):
            assert r.partition == partition_for(r.key, 4)
        await consumer.stop()

    async def test_headers_and_keys_survive_the_trip(self, make_bus, topic):
        bus = await make_bus()
        await bus.publish([OutgoingRecord(topic, "k", b"\x00bytes\xff", {"event-type": "Thing", "x": "é"})])
        consumer = await started(bus, "g", [topic])
        (r,) = await consume(consumer, 1)
        assert (r.key, r.value, r.headers) == ("k", b"\x00bytes\xff", {"event-type": "Thing", "x": "é"})
        await consumer.stop()


class TestAtLeastOnce:
    async def test_records_polled_but_not_committed_are_delivered_again(self, make_bus, topic):
        bus = await make_bus()
        await bus.publish(records(topic, 50, keys=5))
        crashed = await started(bus, "g", [topic])
        first = await consume(crashed, 50)
        await crashed.stop()  # "crash" before committing

        again = await started(bus, "g", [topic])
        second = await consume(again, 50)
        assert sorted(int(r.value) for r in second) == sorted(int(r.value) for r in first)
        await again.commit(next_offsets(second))
        await again.stop()

        after_commit = await started(bus, "g", [topic])
        assert await drain(after_commit, quiet=1) == []
        await after_commit.stop()

    async def test_committed_offsets_survive_a_new_bus_client(self, make_bus, topic):
        bus = await make_bus()
        await bus.publish(records(topic, 20, keys=4))
        consumer = await started(bus, "g", [topic])
        await consumer.commit(next_offsets(await consume(consumer, 20)))
        await consumer.stop()
        await bus.publish(records(topic, 5, keys=1))

        other_process = await make_bus()
        consumer = await started(other_process, "g", [topic])
        rest = await consume(consumer, 5)
        assert len(rest) == 5 and await drain(consumer, quiet=1) == []
        await consumer.stop()

    async def test_lag_counts_what_the_group_has_not_committed(self, make_bus, topic):
        bus = await make_bus()
        await bus.publish(records(topic, 30, keys=6))
        consumer = await started(bus, "g", [topic])
        got = await consume(consumer, 30)
        assert sum((await bus.lag("g", [topic])).values()) == 30
        await consumer.commit(next_offsets(got[:10]))  # some partitions partly
        committed = sum(1 for r in got if r.offset < next_offsets(got[:10]).get((r.topic, r.partition), 0))
        assert sum((await bus.lag("g", [topic])).values()) == 30 - committed
        await consumer.commit(next_offsets(got))
        assert sum((await bus.lag("g", [topic])).values()) == 0
        await consumer.stop()


class TestReplay:
    async def test_seek_to_zero_replays_the_partition(self, make_bus, topic):
        bus = await make_bus()
        await bus.publish(records(topic, 40, keys=1))  # one key: one partition
        consumer = await started(bus, "g", [topic])
        first = await consume(consumer, 40)
        await consumer.commit(next_offsets(first))
        await consumer.seek(topic, first[0].partition, 0)
        replayed = await consume(consumer, 40)
        assert [r.value for r in replayed] == [r.value for r in first]
        await consumer.stop()

    async def test_seek_to_a_middle_offset_starts_there(self, make_bus, topic):
        bus = await make_bus()
        await bus.publish(records(topic, 10, keys=1))
        consumer = await started(bus, "g", [topic])
        first = await consume(consumer, 10)
        await consumer.seek(topic, first[0].partition, first[6].offset)
        assert [r.value for r in await consume(consumer, 4)] == [r.value for r in first[6:]]
        await consumer.stop()


class TestGroups:
    async def test_two_groups_each_see_every_record(self, make_bus, topic):
        bus = await make_bus()
        await bus.publish(records(topic, 60, keys=9))
        a = await started(bus, "group-a", [topic])
        b = await started(bus, "group-b", [topic])
        got_a, got_b = await asyncio.gather(consume(a, 60), consume(b, 60))
        assert sorted(r.value for r in got_a) == sorted(r.value for r in got_b)
        await a.stop()
        await b.stop()

    async def test_two_members_of_one_group_share_the_partitions(self, make_bus, topic):
        bus_one, bus_two = await make_bus(), await make_bus()  # as two processes
        await bus_one.publish(records(topic, 200, keys=40))
        one = await started(bus_one, "shared", [topic])
        two = await started(bus_two, "shared", [topic])
        got_one: list[Record] = []
        got_two: list[Record] = []

        async def run(consumer: Consumer, sink: list[Record]) -> None:
            deadline = time.monotonic() + 45
            while time.monotonic() < deadline:
                batch = await consumer.poll(max_records=20, timeout=0.3)
                sink += batch
                if batch:
                    await consumer.commit(next_offsets(batch))
                if one.assignment() and two.assignment() and len({*map(_id, got_one), *map(_id, got_two)}) >= 200:
                    return

        await asyncio.gather(run(one, got_one), run(two, got_two))
        assert one.assignment() and two.assignment(), "both members got partitions"
        assert not one.assignment() & two.assignment(), "no partition is owned twice"
        assert len(one.assignment() | two.assignment()) == 4
        assert {*map(_id, got_one), *map(_id, got_two)} == {(topic, i) for i in range(200)}
        await one.stop()
        await two.stop()


def _id(r: Record) -> tuple[str, int]:
    return (r.topic, int(r.value))


class TestDeadLetters:
    async def test_a_message_that_keeps_failing_goes_to_the_dlq_and_the_rest_flow(self, make_bus, tmp_path: Path):
        bus = await make_bus()
        metadata = make_metadata()
        tables = add_bus_tables(metadata)
        seen = Table("seen", metadata, Column("customer_id", String, primary_key=True))
        store = Store(f"sqlite+aiosqlite:///{tmp_path / 'svc.db'}")
        async with store.engine.begin() as conn:
            await conn.run_sync(metadata.create_all)

        async def handler(event: Event, tx: Transaction) -> None:
            await tx.session.execute(insert(seen).values(customer_id=event.customer_id))
            if event.customer_id == "poison":
                raise ValueError("cannot handle this one")

        async def handled() -> list[str]:
            async with store.read() as session:
                return sorted((await session.execute(select(seen.c.customer_id))).scalars())

        group = f"dlq-{time.monotonic_ns()}"
        loop = ConsumerLoop("test", bus, store, tables, {Interaction: [handler]},
                            OutboxRelay(store, tables, bus), max_attempts=2, group=group)
        now = datetime.now(timezone.utc)
        customers = ["a", "poison", "b"]
        await bus.publish([encode(Interaction(event_id=f"e-{c}-{group}", customer_id=c, type="track",
                                              name="X", occurred_at=now, received_at=now)) for c in customers])
        task = asyncio.create_task(loop.run())
        dlq = await started(bus, f"reader-{group}", ["interactions.v1.dlq"])
        try:
            dead = [r for r in await consume(dlq, 1, timeout=30) if r.headers.get("dlq-group") == group]
            deadline = time.monotonic() + 20
            while await handled() != ["a", "b"] and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert await handled() == ["a", "b"]
        finally:
            loop.stop()
            await asyncio.wait_for(task, timeout=15)
            await dlq.stop()
            await store.dispose()
        assert [r.key for r in dead] == ["poison"]
        assert "cannot handle this one" in dead[0].headers["dlq-error"]
        assert dead[0].headers["dlq-attempts"] == "2"


class TestGroupsAcrossTopics:
    async def test_members_subscribed_to_different_topics_each_get_all_of_their_topic(self, make_bus, topic):
        other = f"{topic}-other"
        bus = await make_bus()
        await bus.publish(records(topic, 40, keys=10) + records(other, 40, keys=10))
        first = await started(bus, "mixed", [topic])
        second = await started(bus, "mixed", [other])
        got_first, got_second = await asyncio.gather(consume(first, 40), consume(second, 40))
        assert {r.topic for r in got_first} == {topic} and len({r.value for r in got_first}) == 40
        assert {r.topic for r in got_second} == {other} and len({r.value for r in got_second}) == 40
        await first.stop()
        await second.stop()

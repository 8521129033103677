"""The embedded log keeps what replay needs and no more than allowed: retention removes old records
only once every consumer group has committed past them (dead letters by age alone), unset keeps
everything; an erasure every group has applied removes every record about the customer (dead
letters included), keeps the erasure itself as keyed hashes, and is safe to run from several
processes at once."""
from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from shared.bus import OutgoingRecord
from shared.bus.embedded import EmbeddedBus
from shared.bus.kafka import KafkaBus
from shared.bus.maintenance import maintain
from shared.events import (
    CUSTOMERS,
    INTERACTIONS,
    TYPE_HEADER,
    CustomerErased,
    CustomerLinked,
    ErasureRecorded,
    Interaction,
    decode,
    encode,
)
from shared.identity import id_hash

DAY_MS = 86_400_000
AT = datetime(2024, 3, 1, tzinfo=UTC)


@pytest.fixture
async def bus(tmp_path: Path) -> AsyncIterator[EmbeddedBus]:
    started = EmbeddedBus(tmp_path / "bus.db", partitions=1)
    await started.start()
    yield started
    await started.stop()


def now_ms() -> int:
    return int(time.time() * 1000)


def age(bus: EmbeddedBus, topic: str, below_offset: int, days: float) -> None:
    """Records of `topic` below `below_offset` were appended `days` ago."""
    with sqlite3.connect(bus.path) as conn:
        conn.execute('UPDATE records SET ts = ? WHERE topic = ? AND "offset" < ?',
                     (now_ms() - int(days * DAY_MS), topic, below_offset))


def offsets(bus: EmbeddedBus, topic: str) -> list[int]:
    with sqlite3.connect(bus.path) as conn:
        return [o for (o,) in conn.execute('SELECT "offset" FROM records WHERE topic = ? ORDER BY 1', (topic,))]


def records(bus: EmbeddedBus) -> list[tuple[str, str, bytes, str]]:
    with sqlite3.connect(bus.path) as conn:
        return conn.execute('SELECT topic, key, value, headers FROM records ORDER BY topic, "offset"').fetchall()


async def publish(bus: EmbeddedBus, topic: str, count: int, key: str = "k") -> None:
    await bus.publish([OutgoingRecord(topic, key, f"v{i}".encode()) for i in range(count)])


async def commit(bus: EmbeddedBus, group: str, topic: str, offset: int) -> None:
    consumer = bus.consumer(group, [topic])
    await consumer.start()
    await consumer.commit({(topic, 0): offset})
    await consumer.stop()


class TestRetention:
    async def test_old_records_go_only_once_every_group_has_committed_past_them(self, bus: EmbeddedBus) -> None:
        await publish(bus, "t", 10)
        age(bus, "t", 8, days=40)  # offsets 0-7 are old, 8 and 9 recent
        await commit(bus, "fast", "t", 10)
        await commit(bus, "slow", "t", 3)
        assert (await maintain(bus, now_ms(), retention_days=30)).expired_records == 3
        assert offsets(bus, "t") == list(range(3, 10))
        await commit(bus, "slow", "t", 10)
        assert (await maintain(bus, now_ms(), retention_days=30)).expired_records == 5
        assert offsets(bus, "t") == [8, 9]  # read by everyone, but within retention

    async def test_unset_retention_keeps_everything(self, bus: EmbeddedBus) -> None:
        await publish(bus, "t", 5)
        await publish(bus, "t.dlq", 2)
        age(bus, "t", 5, days=3650)
        age(bus, "t.dlq", 2, days=3650)
        await commit(bus, "g", "t", 5)
        assert (await maintain(bus, now_ms(), retention_days=0)).expired_records == 0
        assert offsets(bus, "t") == list(range(5)) and offsets(bus, "t.dlq") == [0, 1]

    async def test_a_topic_no_group_has_read_yet_is_kept(self, bus: EmbeddedBus) -> None:
        await publish(bus, "t", 4)
        age(bus, "t", 4, days=40)
        assert (await maintain(bus, now_ms(), retention_days=30)).expired_records == 0
        assert offsets(bus, "t") == list(range(4))

    async def test_a_group_rewound_for_a_replay_holds_what_it_will_read_again(self, bus: EmbeddedBus) -> None:
        await publish(bus, "t", 4)
        age(bus, "t", 4, days=40)
        await commit(bus, "g", "t", 0)
        assert (await maintain(bus, now_ms(), retention_days=30)).expired_records == 0

    async def test_dead_letters_go_by_age_alone(self, bus: EmbeddedBus) -> None:
        await publish(bus, "t.dlq", 4)
        age(bus, "t.dlq", 3, days=40)
        assert (await maintain(bus, now_ms(), retention_days=30)).expired_records == 3
        assert offsets(bus, "t.dlq") == [3]

    async def test_consumers_read_on_across_the_gap_and_lag_starts_at_the_first_record_left(self, bus: EmbeddedBus) -> None:
        await publish(bus, "t", 6)
        age(bus, "t", 6, days=40)
        await commit(bus, "done", "t", 6)
        await commit(bus, "g", "t", 2)
        await publish(bus, "t", 1)
        await commit(bus, "g", "t", 6)
        await maintain(bus, now_ms(), retention_days=30)
        assert offsets(bus, "t") == [6]
        assert await bus.lag("new", ["t"]) == {("t", 0): 1}
        consumer = bus.consumer("new", ["t"])
        await consumer.start()
        assert [r.offset for r in await consumer.poll(timeout=0.2)] == [6]
        await consumer.stop()


def interaction(customer: str, event_id: str, anonymous_id: str | None = None, **properties: object) -> Interaction:
    return Interaction(customer_id=customer, event_id=event_id, user_id=customer, anonymous_id=anonymous_id,
                       type="track", name="Order Completed", properties=properties, occurred_at=AT, received_at=AT)


async def history(bus: EmbeddedBus) -> None:
    """ann (anon-ann merged into her) and bob, and a dead letter about ann."""
    await bus.publish([encode(e) for e in (
        interaction("anon-ann", "e1"), CustomerLinked(customer_id="ann", merged_id="anon-ann", at=AT),
        interaction("ann", "e2", email="ann@example.com"), interaction("bob", "e3", product_id="ann"),
        interaction("bob", "e4", anonymous_id="anon-ann"))])
    await bus.publish([OutgoingRecord(f"{INTERACTIONS}.dlq", "ann", b'{"not": "json', {"dlq-error": "boom"})])


async def erase(bus: EmbeddedBus) -> None:
    await bus.publish([encode(CustomerErased(customer_id="ann", merged_ids=["anon-ann"], at=AT))])


async def everyone_read(bus: EmbeddedBus, *groups: str) -> None:
    for group in groups:
        for topic in (CUSTOMERS, INTERACTIONS):
            await commit(bus, group, topic, 100)


def about(bus: EmbeddedBus, *needles: str) -> list[tuple[str, str]]:
    return [(t, k) for t, k, v, _ in records(bus) if k in needles or any(n.encode() in v for n in needles)]


class TestErasureInTheLog:
    async def test_every_record_about_the_customer_goes_once_every_group_applied_the_erasure(
        self, bus: EmbeddedBus
    ) -> None:
        await history(bus)
        await erase(bus)
        await everyone_read(bus, "segmentation")
        await commit(bus, "funnel", CUSTOMERS, 1)  # a lagging service has not seen the erasure yet
        assert (await maintain(bus, now_ms(), 0)).erasures == 0
        assert len(about(bus, "ann", "anon-ann")) == 7

        await everyone_read(bus, "funnel")
        done = await maintain(bus, now_ms(), 0)
        assert (done.erasures, done.erased_records) == (1, 5)
        assert about(bus, "ann@example.com") == []
        # bob's order of a product named "ann" is bob's; his event naming anon-ann as his device went
        assert about(bus, '"ann"', "anon-ann") == [(INTERACTIONS, "bob")]
        kept = [r for r in records(bus) if r[0] == CUSTOMERS]
        assert len(kept) == 1 and orjson.loads(kept[0][3])[TYPE_HEADER] == "ErasureRecorded"
        assert (await maintain(bus, now_ms(), 0)).erasures == 0  # idempotent

    async def test_the_erasure_kept_as_hashes_still_reads_as_an_erasure(self, bus: EmbeddedBus) -> None:
        await erase(bus)
        await everyone_read(bus, "segmentation")
        await maintain(bus, now_ms(), 0)
        consumer = bus.consumer("replay", [CUSTOMERS])
        await consumer.start()
        (record,) = await consumer.poll(timeout=0.2)
        await consumer.stop()
        event = decode(record)
        assert isinstance(event, ErasureRecorded)
        assert record.key == event.customer_id == id_hash("ann")
        assert event.id_hashes == sorted([id_hash("ann"), id_hash("anon-ann")]) and event.at == AT
        assert b"ann" not in record.value.replace(b"id_hashes", b"").replace(b"erasure_id", b"")

    async def test_records_appended_after_the_erasure_are_a_new_customer_and_stay(self, bus: EmbeddedBus) -> None:
        await erase(bus)
        age(bus, CUSTOMERS, 1, days=1 / 86400)  # a second ago (the same millisecond counts as before it)
        await bus.publish([encode(interaction("ann", "back-again"))])
        await everyone_read(bus, "segmentation")
        await maintain(bus, now_ms(), 0)
        assert about(bus, "back-again") == [(INTERACTIONS, "ann")]

    async def test_a_pass_reads_only_what_is_new_and_finds_an_erasure_appended_since(self, bus: EmbeddedBus) -> None:
        await history(bus)
        await everyone_read(bus, "segmentation")
        assert (await maintain(bus, now_ms(), 0)).erasures == 0
        await erase(bus)
        await everyone_read(bus, "segmentation")
        assert (await maintain(bus, now_ms(), 0)).erasures == 1

    async def test_several_processes_maintaining_one_file_apply_each_erasure_once(self, tmp_path: Path) -> None:
        buses = [EmbeddedBus(tmp_path / "bus.db", partitions=1) for _ in range(3)]
        for b in buses:
            await b.start()
        try:
            await history(buses[0])
            await erase(buses[0])
            await everyone_read(buses[0], "segmentation")
            passes = await asyncio.gather(*(maintain(b, now_ms(), 0) for b in buses))
            assert sorted(p.erasures for p in passes) == [0, 0, 1]
            assert sum(p.erased_records for p in passes) == 5
        finally:
            for b in buses:
                await b.stop()


class TestKafkaTopicRetention:
    @pytest.mark.parametrize(("days", "retention_ms"), [(0, "-1"), (30, str(30 * DAY_MS))])
    async def test_topics_the_bus_creates_keep_records_as_long_as_the_setting_says(
        self, kafka_broker: Any, days: float, retention_ms: str
    ) -> None:
        bus = KafkaBus(kafka_broker.bootstrap, partitions=1, idempotent=kafka_broker.idempotent_producer,
                       retention_days=days)
        await bus.start()
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap)
        await admin.start()
        try:
            topic = f"retention-{uuid.uuid4().hex[:8]}"
            await bus.ensure_topics([topic])
            (response,) = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
            entries = {name: value for name, value, *_ in response.resources[0][4]}
            assert entries["retention.ms"] == retention_ms
        finally:
            await admin.close()
            await bus.stop()

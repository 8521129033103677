"""`Bus.read`: one partition from an offset, outside any consumer group, on both backends."""
from __future__ import annotations

from shared.bus.base import OutgoingRecord, partition_for
from tests.bus.conftest import BusFactory

PARTITIONS = 4


def keys_on_one_partition(count: int) -> tuple[int, list[str]]:
    """`count` keys that all go to the same partition (found by the public hash, not asked of the bus)."""
    keys = [f"customer-{i}" for i in range(200)]
    partition = partition_for(keys[0], PARTITIONS)
    return partition, [k for k in keys if partition_for(k, PARTITIONS) == partition][:count]


class TestRead:
    async def test_reads_a_partition_from_an_offset_in_order_up_to_the_limit(self, make_bus: BusFactory, topic: str):
        bus = await make_bus()  # type: ignore[misc]
        partition, keys = keys_on_one_partition(5)
        await bus.publish([OutgoingRecord(topic, k, f"v{i}".encode(), {"n": str(i)}) for i, k in enumerate(keys)])

        records = await bus.read(topic, partition, 1, 3)

        assert [(r.offset, r.key, r.value, r.headers["n"]) for r in records] == [
            (1, keys[1], b"v1", "1"), (2, keys[2], b"v2", "2"), (3, keys[3], b"v3", "3")]
        assert {(r.topic, r.partition) for r in records} == {(topic, partition)}
        assert [r.offset for r in await bus.read(topic, partition, 0, 100)] == [0, 1, 2, 3, 4]

    async def test_past_the_end_and_on_an_empty_partition_reads_nothing(self, make_bus: BusFactory, topic: str):
        bus = await make_bus()  # type: ignore[misc]
        partition, keys = keys_on_one_partition(2)
        await bus.publish([OutgoingRecord(topic, k, b"x") for k in keys])
        other = (partition + 1) % PARTITIONS

        assert await bus.read(topic, partition, 2, 10) == []
        assert await bus.read(topic, other, 0, 10) == []

    async def test_reading_moves_no_consumer_group(self, make_bus: BusFactory, topic: str):
        bus = await make_bus()  # type: ignore[misc]
        partition, keys = keys_on_one_partition(3)
        await bus.publish([OutgoingRecord(topic, k, b"x") for k in keys])
        before = await bus.lag("readers", [topic])

        await bus.read(topic, partition, 0, 10)

        assert await bus.lag("readers", [topic]) == before
        assert before[(topic, partition)] == 3

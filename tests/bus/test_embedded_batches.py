"""The embedded bus fills a poll from the partitions that have records: a member assigned many
partitions, most of them empty, still gets full batches (one transaction per 500 records, not
per few dozen), each partition in offset order, and no partition starved."""
from __future__ import annotations

from pathlib import Path

from shared.bus.base import OutgoingRecord, partition_for
from shared.bus.embedded import EmbeddedBus


def key_in_partition(partition: int, partitions: int) -> str:
    return next(k for i in range(10_000) if partition_for(k := f"key-{i}", partitions) == partition)


async def test_a_poll_is_filled_from_the_busy_partition(tmp_path: Path) -> None:
    bus = EmbeddedBus(tmp_path / "bus.db", partitions=8)
    await bus.start()
    try:
        key = key_in_partition(3, 8)
        await bus.publish([OutgoingRecord("busy", key, str(i).encode()) for i in range(1200)])
        consumer = bus.consumer("g", ["busy", "quiet"])  # 16 partitions, one with records
        await consumer.start()
        first = await consumer.poll(max_records=500, timeout=1)
        second = await consumer.poll(max_records=500, timeout=1)
        third = await consumer.poll(max_records=500, timeout=1)
        await consumer.stop()
    finally:
        await bus.stop()
    assert [len(first), len(second), len(third)] == [500, 500, 200]
    assert [int(r.value) for r in first + second + third] == list(range(1200))


async def test_every_busy_partition_gets_its_share(tmp_path: Path) -> None:
    bus = EmbeddedBus(tmp_path / "bus.db", partitions=4)
    await bus.start()
    try:
        keys = [key_in_partition(p, 4) for p in range(4)]
        counts = {keys[0]: 1000, keys[1]: 3, keys[2]: 1000}  # partition 3 empty
        await bus.publish([OutgoingRecord("t", k, f"{k}:{i}".encode()) for k, n in counts.items() for i in range(n)])
        consumer = bus.consumer("g", ["t"])
        await consumer.start()
        batch = await consumer.poll(max_records=500, timeout=1)
        await consumer.stop()
    finally:
        await bus.stop()
    per_key = {k: [int(r.value.split(b":")[1]) for r in batch if r.key == k] for k in counts}
    assert len(batch) == 500
    assert len(per_key[keys[1]]) == 3  # the small partition is not starved
    assert abs(len(per_key[keys[0]]) - len(per_key[keys[2]])) <= 1  # the rest split evenly
    assert all(offsets == list(range(len(offsets))) for offsets in per_key.values())  # in order

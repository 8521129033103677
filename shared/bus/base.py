"""The bus interface both backends (embedded log, Kafka) implement.

Kafka's model, kept small: a topic has a fixed number of partitions; a record goes to the partition
its key hashes to, so one key's records stay in order; a consumer group shares a topic's partitions
among its members and remembers, per partition, the offset of the next record to read.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol


@dataclass(frozen=True)
class OutgoingRecord:
    topic: str
    key: str
    value: bytes
    headers: dict[str, str] = field(default_factory=dict)


class Record(NamedTuple):
    """A consumed record. A tuple, not a frozen dataclass: as immutable, and made for every record
    every consumer reads, at a quarter of the cost (a frozen dataclass sets each field through
    object.__setattr__)."""

    topic: str
    partition: int
    offset: int
    key: str
    value: bytes
    headers: dict[str, str]
    timestamp_ms: int


TopicPartition = tuple[str, int]


def partition_for(key: str, partitions: int) -> int:
    """The partition of a key: stable across processes and restarts (unlike hash())."""
    return zlib.crc32(key.encode()) % partitions


def dlq_topic(topic: str) -> str:
    return f"{topic}.dlq"


class Consumer(Protocol):
    """One member of a consumer group. Offsets are committed explicitly, never automatically."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def poll(self, max_records: int = 500, timeout: float = 1.0) -> list[Record]:
        """Records from the member's assigned partitions, in offset order per partition.

        Waits up to `timeout` seconds for at least one record; an empty list means none came.
        After a rebalance or a restart, delivery resumes at the group's committed offsets, so a
        record polled but not committed is delivered again (at least once).
        """
        ...

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Store, for each partition, the offset of the next record the group should read."""
        ...

    async def seek(self, topic: str, partition: int, offset: int) -> None:
        """Read this partition from `offset` on (replay); takes effect at the next poll."""
        ...

    def assignment(self) -> set[TopicPartition]: ...


class Bus(Protocol):
    partitions: int

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def publish(self, records: list[OutgoingRecord]) -> None:
        """Append records durably; returns once every record is stored (acks=all)."""
        ...

    def consumer(self, group: str, topics: list[str]) -> Consumer: ...

    async def ping(self) -> None:
        """Raise if the bus cannot be reached (used by /ready)."""
        ...

    async def lag(self, group: str, topics: list[str]) -> dict[TopicPartition, int]:
        """Records not yet committed by `group`, per partition (for metrics and tests)."""
        ...

    async def read(self, topic: str, partition: int, offset: int, limit: int) -> list[Record]:
        """Up to `limit` records of one partition from `offset` on, in offset order, without
        joining a consumer group or committing anything (dead letters are read this way).
        An empty list: nothing from `offset` on (an offset before the log start reads from it)."""
        ...

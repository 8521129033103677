"""Dead letters: the messages consumers gave up on (`<topic>.dlq`), listed and sent back.

A dead letter is the original record (key, value, headers) plus the `dlq-*` headers the consumer
loop adds (error, group, original topic/partition/offset, attempts). Its id is
`<dlq topic>:<partition>:<offset>`, the same for its whole life.

Redriving publishes the original record again on its topic, with its message id, so every
consumer group that already processed the message skips it and the group that gave up
processes it once. Which dead letters were redriven is recorded on the bus itself, in the topic
`dead-letters.redriven` (ids only, no customer data): any process of any service sees it, and a
redriven dead letter is never listed or redriven again. A dead letter is redriven before it is
marked, so a crash in between redrives it twice at worst, which consumers absorb the same way.
"""
from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

from shared.bus.base import Bus, OutgoingRecord, Record, dlq_topic
from shared.bus.shredding import SHREDDED_TYPE
from shared.events import ID_HEADER, TYPE_HEADER, TOPICS

REDRIVEN_TOPIC = "dead-letters.redriven"
REDRIVEN_FROM_HEADER = "redriven-from"
DLQ_HEADER_PREFIX = "dlq-"
# A group that never commits: its lag on a topic lists the topic's partitions.
NO_GROUP = "funnelstream-dead-letters"
READ_CHUNK = 500
MARK_CHUNK = 1000  # ids per marker record (a record stays far below Kafka's 1 MB limit)


class UnknownTopic(ValueError):
    """Not a topic of the contract: there is no dead letter topic for it."""


@dataclass(frozen=True)
class Position:
    """Where a listing goes on: this dead letter topic's partition, from this offset."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True)
class DeadLetter:
    id: str
    topic: str  # where the message came from, and goes back to
    partition: int
    offset: int
    group: str
    error: str
    attempts: int
    key: str
    event_id: str | None
    event_type: str | None
    dead_lettered_at: datetime
    record: Record  # as stored in the dead letter topic

    def message_id(self) -> str:
        """What consumers dedupe on (shared.events.message_id of the original record)."""
        return self.event_id or f"{self.topic}/{self.partition}/{self.offset}"

    def original(self) -> OutgoingRecord:
        headers = {k: v for k, v in self.record.headers.items() if not k.startswith(DLQ_HEADER_PREFIX)}
        headers[ID_HEADER] = self.message_id()
        headers[REDRIVEN_FROM_HEADER] = self.id
        return OutgoingRecord(self.topic, self.record.key, self.record.value, headers)


@dataclass(frozen=True)
class Redrive:
    topic: str
    redriven: list[str]
    not_found: list[str]


def source_topic(topic: str) -> str:
    """The contract topic a name means (`interactions.v1` or `interactions.v1.dlq`)."""
    name = topic.removesuffix(".dlq")
    if name not in TOPICS:
        raise UnknownTopic(f"{topic!r} is not a topic; one of {', '.join(TOPICS)}")
    return name


def dead_letter(record: Record) -> DeadLetter:
    h = record.headers
    topic = h.get("dlq-original-topic") or record.topic.removesuffix(".dlq")
    return DeadLetter(
        id=f"{record.topic}:{record.partition}:{record.offset}",
        topic=topic,
        partition=_int(h.get("dlq-original-partition")),
        offset=_int(h.get("dlq-original-offset")),
        group=h.get("dlq-group", ""),
        error=h.get("dlq-error", ""),
        attempts=_int(h.get("dlq-attempts")),
        key=record.key,
        event_id=h.get(ID_HEADER),
        event_type=h.get(TYPE_HEADER),
        dead_lettered_at=datetime.fromtimestamp(record.timestamp_ms / 1000, UTC),
        record=record,
    )


def _int(value: str | None) -> int:
    try:
        return int(value or -1)
    except ValueError:
        return -1


async def _partitions(bus: Bus, topic: str) -> list[int]:
    return sorted(p for _, p in await bus.lag(NO_GROUP, [topic]))


async def _records(bus: Bus, topic: str, start: Position | None = None) -> AsyncIterator[Record]:
    """Every record of the topic, partition by partition, from `start` on."""
    for partition in await _partitions(bus, topic):
        if start is not None and partition < start.partition:
            continue
        offset = start.offset if start is not None and partition == start.partition else 0
        while True:
            records = await bus.read(topic, partition, offset, READ_CHUNK)
            if not records:
                break
            for record in records:
                yield record
            offset = records[-1].offset + 1


async def redriven_ids(bus: Bus) -> set[str]:
    ids: set[str] = set()
    async for record in _records(bus, REDRIVEN_TOPIC):
        ids.update(orjson.loads(record.value)["ids"])
    return ids


async def pending(bus: Bus, topics: list[str], start: Position | None = None) -> AsyncIterator[DeadLetter]:
    """The dead letters of `topics` (contract names) not redriven yet, in a stable order."""
    done = await redriven_ids(bus)
    dlqs = [dlq_topic(t) for t in topics]
    for dlq in dlqs:
        if start is not None and dlqs.index(dlq) < dlqs.index(start.topic):
            continue
        async for record in _records(bus, dlq, start if start is not None and start.topic == dlq else None):
            if record.headers.get(TYPE_HEADER) == SHREDDED_TYPE:
                continue  # an erased customer's (Kafka): unreadable, nothing to send back
            letter = dead_letter(record)
            if letter.id not in done:
                yield letter


async def list_page(bus: Bus, topic: str | None, limit: int, start: Position | None
                    ) -> tuple[list[DeadLetter], Position | None]:
    """A page of pending dead letters (of one topic, or of all), and where the next page starts."""
    topics = [source_topic(topic)] if topic else list(TOPICS)
    if start is not None and start.topic not in {dlq_topic(t) for t in topics}:
        start = None  # a cursor of another listing: the caller rejects it before this
    page: list[DeadLetter] = []
    async for letter in pending(bus, topics, start):
        if len(page) == limit:
            last = page[-1].record
            return page, Position(last.topic, last.partition, last.offset + 1)
        page.append(letter)
    return page, None


async def redrive(bus: Bus, topic: str, ids: list[str] | None = None) -> Redrive:
    """Send the topic's pending dead letters (all, or those of `ids`) back to the topic."""
    topic = source_topic(topic)
    wanted = None if ids is None else set(ids)
    redriven: list[str] = []
    chunk: list[DeadLetter] = []
    async for letter in pending(bus, [topic]):
        if wanted is None or letter.id in wanted:
            chunk.append(letter)
        if len(chunk) == READ_CHUNK:
            redriven += await _send_back(bus, chunk)
            chunk = []
    redriven += await _send_back(bus, chunk)
    return Redrive(topic, redriven, _not_found(ids, redriven))


def _not_found(ids: list[str] | None, redriven: list[str]) -> list[str]:
    if ids is None:
        return []
    sent = set(redriven)
    return list(dict.fromkeys(i for i in ids if i not in sent))


async def _send_back(bus: Bus, letters: list[DeadLetter]) -> list[str]:
    """Publish the originals, then mark them redriven; returns their ids."""
    if not letters:
        return []
    copies: dict[str, OutgoingRecord] = {}
    for letter in letters:  # one copy per message: several groups may have given up on it
        copies.setdefault(letter.message_id(), letter.original())
    await bus.publish(list(copies.values()))
    ids = [d.id for d in letters]
    await bus.publish([
        OutgoingRecord(REDRIVEN_TOPIC, letters[0].record.topic, orjson.dumps({"ids": ids[i:i + MARK_CHUNK]}))
        for i in range(0, len(ids), MARK_CHUNK)
    ])
    return ids

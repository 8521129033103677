"""Erasure on Kafka, where records cannot be rewritten: every record is sealed with its customer's
key, so nothing in the broker's log names anyone; once every consumer group has applied an
erasure, the customer's keys are shredded, their records are unreadable for good (a replay gets
placeholders it skips), everyone else's read as before, and the erasure stays as keyed hashes.
On a Tansu broker of this module's own (group discovery must not see other tests' groups)."""
from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaConsumer

from shared.bus.kafka import KafkaBus
from shared.bus.maintenance import ERASURE_GROUP, KafkaErasures
from shared.bus.shredding import KEYS_TOPIC, KeyRing
from shared.events import (
    CUSTOMERS,
    INTERACTIONS,
    CustomerErased,
    CustomerLinked,
    ErasureRecorded,
    Event,
    Interaction,
    RecordShredded,
    decode,
    encode,
)
from shared.identity import id_hash
from tests.bus.tansu import Broker, start_broker

AT = datetime(2024, 3, 1, tzinfo=UTC)
SECRET = b"test-erasure-key"
NEEDLES = [b"ann-k1", b"anon-ann-k1", b"ann@example.com", b"Zanzibar"]


@pytest.fixture(scope="module")
def broker() -> Iterator[Broker]:
    with start_broker() as started:
        yield started


@pytest.fixture
async def new_bus(broker: Broker) -> AsyncIterator[object]:
    buses: list[KafkaBus] = []

    async def make() -> KafkaBus:
        bus = KafkaBus(broker.bootstrap, partitions=2, idempotent=broker.idempotent_producer,
                       session_timeout_ms=6000, keyring=KeyRing(SECRET))
        await bus.start()
        buses.append(bus)
        return bus

    yield make
    for bus in buses:
        await bus.stop()


def interaction(customer: str, event_id: str, anonymous_id: str | None = None, **traits: object) -> Interaction:
    return Interaction(customer_id=customer, event_id=event_id, user_id=customer, anonymous_id=anonymous_id,
                       type="identify", traits=traits, occurred_at=AT, received_at=AT)


async def read_all(bus: KafkaBus, group: str, topics: list[str], expected: int) -> list[Event]:
    """Every record of the topics, as a consumer group reads them (and commits)."""
    consumer = bus.consumer(group, topics)
    await consumer.start()
    events: list[Event] = []
    try:
        for _ in range(40):
            records = await consumer.poll(timeout=0.5)
            events += [decode(r) for r in records]
            if records:
                offsets: dict[tuple[str, int], int] = {}
                for r in records:
                    offsets[(r.topic, r.partition)] = max(offsets.get((r.topic, r.partition), 0), r.offset + 1)
                await consumer.commit(offsets)
            if len(events) >= expected and not records:
                break
    finally:
        await consumer.stop()
    return events


async def raw_bytes(broker: Broker, topics: list[str]) -> bytes:
    """Everything the broker holds in these topics (keys, values, headers), read without our bus."""
    reader = AIOKafkaConsumer(*topics, bootstrap_servers=broker.bootstrap, group_id=f"raw-{uuid.uuid4().hex[:6]}",
                              auto_offset_reset="earliest", enable_auto_commit=False)
    await reader.start()
    data = b""
    try:
        for _ in range(10):
            batches = await reader.getmany(timeout_ms=500)
            for messages in batches.values():
                for m in messages:
                    data += (m.key or b"") + (m.value or b"") + b"".join(k.encode() + v for k, v in m.headers)
            if not batches and data:
                break
    finally:
        await reader.stop()
    return data


class TestErasureOnKafka:
    async def test_an_erased_customer_is_unreadable_in_the_log_and_everyone_else_reads_as_before(
        self, new_bus, broker: Broker  # type: ignore[no-untyped-def]
    ) -> None:
        publisher: KafkaBus = await new_bus()
        await publisher.publish([encode(e) for e in (
            interaction("anon-ann-k1", "e1", city="Zanzibar"),
            CustomerLinked(customer_id="ann-k1", merged_id="anon-ann-k1", at=AT),
            interaction("ann-k1", "e2", "anon-ann-k1", email="ann@example.com"),
            interaction("bob-k1", "e3", email="bob@example.com"))])
        await publisher.publish([encode(CustomerErased(customer_id="ann-k1", merged_ids=["anon-ann-k1"], at=AT))])
        raw = await raw_bytes(broker, [INTERACTIONS, CUSTOMERS, KEYS_TOPIC])
        assert b"bob@example.com" not in raw and [n for n in NEEDLES if n in raw] == []  # sealed from the start

        # another process (its own key ring, from the keys topic) reads everything as published
        service: KafkaBus = await new_bus()
        seen = await read_all(service, "segmentation", [CUSTOMERS, INTERACTIONS], expected=5)
        assert {e.event_id for e in seen if isinstance(e, Interaction)} == {"e1", "e2", "e3"}
        assert any(isinstance(e, Interaction) and e.traits.get("email") == "ann@example.com" for e in seen)

        erasures = KafkaErasures(await new_bus())
        try:
            done = 0
            for _ in range(20):
                done += await erasures.run_once(timeout=0.5)
                if done:
                    break
            assert done == 1
        finally:
            await erasures.stop()

        replayed = await read_all(await new_bus(), f"replay-{uuid.uuid4().hex[:6]}", [CUSTOMERS, INTERACTIONS],
                                  expected=6)
        kinds = sorted(type(e).__name__ for e in replayed)
        assert kinds == sorted(["RecordShredded"] * 4 + ["Interaction", "ErasureRecorded"]), kinds
        (bob,) = [e for e in replayed if isinstance(e, Interaction)]
        assert bob.customer_id == "bob-k1" and bob.traits == {"email": "bob@example.com"}
        (hashed,) = [e for e in replayed if isinstance(e, ErasureRecorded)]
        assert hashed.id_hashes == sorted(id_hash(i) for i in ("ann-k1", "anon-ann-k1"))
        assert all(isinstance(e, RecordShredded) for e in replayed if getattr(e, "customer_id", None) == "")

    async def test_an_erasure_waits_until_every_consumer_group_has_applied_it(
        self, new_bus, broker: Broker  # type: ignore[no-untyped-def]
    ) -> None:
        bus: KafkaBus = await new_bus()
        await bus.publish([encode(CustomerErased(customer_id="cy-k2", at=AT))])
        await bus.publish([encode(interaction("cy-k2", "c1"))])
        # the groups of the previous test read everything then, but not this erasure yet
        groups = sorted(set(await bus.groups_committed(CUSTOMERS)) - {ERASURE_GROUP})
        assert "segmentation" in groups
        erasures = KafkaErasures(await new_bus())
        try:
            assert sum([await erasures.run_once(timeout=0.5) for _ in range(4)]) == 0
            for group in groups[:-1]:
                await read_all(await new_bus(), group, [CUSTOMERS, INTERACTIONS], expected=1)
            assert sum([await erasures.run_once(timeout=0.5) for _ in range(2)]) == 0  # one group still lags
            await read_all(await new_bus(), groups[-1], [CUSTOMERS, INTERACTIONS], expected=1)
            done = 0
            for _ in range(20):
                done += await erasures.run_once(timeout=0.5)
                if done:
                    break
            assert done == 1
        finally:
            await erasures.stop()

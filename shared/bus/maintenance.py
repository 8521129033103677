"""Keeping the embedded log to what the product may keep (run by the ingest service, see
`maintain`): erased customers' records go, and with `BUS_RETENTION_DAYS` old records go once
every consumer group has read them.

Erasure: ingest publishes `CustomerErased` on customers.v1; each service applies it. Once every
consumer group of customers.v1 has committed past that record (so no service can miss it), the
records about the customer appended up to it, in every topic (dead letters included), are found
by a read that holds up no writer, and deleted in one writer transaction: those keyed by one of
their ids, and those whose payload names one (`names_any`). The erasure record itself is rewritten in place as an `ErasureRecorded` holding
only keyed hashes, so a replay from offset 0 still keeps the customer's late events out. The
pass is idempotent (a rewritten record is no longer a `CustomerErased`) and several processes
may run it on one file (they take turns on the writer lock).

Records appended after the erasure are not touched: they are a new customer under the same id
(ingest drops late messages about the erased customer, and services drop the events their
erasure transaction would publish about them).

Kafka cannot rewrite records in place: there every record is sealed with its customer's key
(shared/bus/shredding.py), and `KafkaErasures` destroys the keys of an erased customer once
every consumer group of customers.v1 has committed past the erasure, then appends the erasure's
hashed form (`ErasureRecorded`) for replays. Kafka's own retention applies there (`retention.ms`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from weakref import WeakKeyDictionary

import orjson

from shared.bus.base import Consumer, Record
from shared.bus.embedded import EmbeddedBus, LogEditor
from shared.bus.kafka import KafkaBus
from shared.events import CUSTOMERS, TYPE_HEADER, CustomerErased, ErasureRecorded, encode
from shared.identity import id_hash

log = logging.getLogger("funnelstream.bus.maintenance")

# Payload fields that name a customer, in every event contract (and FollowupChanged.followup).
ID_FIELDS = ("customer_id", "user_id", "anonymous_id", "merged_id", "previous_id")


@dataclass
class Maintained:
    erasures: int = 0
    erased_records: int = 0
    expired_records: int = 0


def names_any(value: bytes, ids: set[str]) -> bool:
    """Does this payload name one of `ids` in a field that says whom it is about?"""
    try:
        body = orjson.loads(value)
    except orjson.JSONDecodeError:
        return False
    if not isinstance(body, dict):
        return False
    named = [body.get(name) for name in ID_FIELDS]
    if isinstance(body.get("followup"), dict):
        named.append(body["followup"].get("customer_id"))
    if isinstance(body.get("merged_ids"), list):
        named += body["merged_ids"]
    return any(isinstance(n, str) and n in ids for n in named)


def hashed(erased: CustomerErased) -> ErasureRecorded:
    """The erasure as the log keeps it: keyed hashes of the ids only."""
    ids = {erased.customer_id, *erased.merged_ids}
    return ErasureRecorded(customer_id=id_hash(erased.customer_id), erasure_id=erased.erasure_id,
                           id_hashes=sorted(id_hash(i) for i in ids), at=erased.at)


@dataclass
class Found:
    """What a read of the log found: erasures every group has applied, the records about their
    customers, and where the next pass may start reading customers.v1."""

    ready: list[tuple[Record, CustomerErased]]
    about: list[tuple[str, int, int]]
    scanned: dict[int, int]


def find_erasures(editor: LogEditor, start: dict[int, int]) -> Found:
    """The erasures all consumer groups have applied, from `start` on, and every record about
    their customers appended up to each erasure (later ones are a new customer). The next pass
    may start at the first erasure still there, else at the end: erasures are only appended,
    and one carried out is no longer a `CustomerErased`."""
    found = editor.records_with_header(CUSTOMERS, TYPE_HEADER, CustomerErased.__name__, start)
    scanned = {p: editor.end_offset(CUSTOMERS, p) for p in range(editor.partitions(CUSTOMERS))}
    ready: list[tuple[Record, CustomerErased]] = []
    appended_until: dict[str, int] = {}  # customer id -> time of their latest erasure (ms)
    for record in found:
        scanned[record.partition] = min(scanned[record.partition], record.offset)
        if not editor.read_by_every_group(record):
            continue
        try:
            erased = CustomerErased.model_validate_json(record.value)
        except ValueError:
            continue  # not one ingest wrote; it stays for an operator
        ready.append((record, erased))
        for customer_id in (erased.customer_id, *erased.merged_ids):
            appended_until[customer_id] = max(record.timestamp_ms, appended_until.get(customer_id, 0))
    about = editor.records_about(appended_until, names_any) if ready else []
    kept = {(r.topic, r.partition, r.offset) for r, _ in ready}  # the erasures themselves stay, as hashes
    return Found(ready, [place for place in about if place not in kept], scanned)


def carry_out(editor: LogEditor, found: Found) -> tuple[int, int]:
    """In one writer transaction: each erasure kept as hashes, the records about them deleted.
    Returns (erasures carried out here, records deleted); another process may have done some."""
    erasures = 0
    for record, erased in found.ready:
        if editor.header_of(record, TYPE_HEADER) == CustomerErased.__name__:
            editor.replace(record, encode(hashed(erased)))
            erasures += 1
    return erasures, editor.delete(found.about)


# Per bus client, where the last pass left off reading customers.v1 (a pass reads what is new).
_scanned: WeakKeyDictionary[EmbeddedBus, dict[int, int]] = WeakKeyDictionary()


async def maintain(bus: EmbeddedBus, now_ms: int, retention_days: float) -> Maintained:
    """One pass: erasures every group has applied, then retention (0 days: keep everything).
    The log is read on a connection of its own (writers go on meanwhile); the writer lock is
    held only for the deletes."""
    done = Maintained()
    start = _scanned.get(bus, {})
    found = await bus.scan_log(lambda editor: find_erasures(editor, start))
    _scanned[bus] = found.scanned
    if found.ready:
        done.erasures, done.erased_records = await bus.edit_log(lambda editor: carry_out(editor, found))
    if retention_days > 0:
        horizon = now_ms - int(timedelta(days=retention_days).total_seconds() * 1000)
        done.expired_records = await bus.apply_retention(horizon)
    if done.erased_records or done.expired_records or done.erasures:
        await bus.checkpoint()
        log.info("bus log: %d erasure(s) applied (%d records deleted), %d records past retention deleted",
                 done.erasures, done.erased_records, done.expired_records)
    return done


ERASURE_GROUP = "funnelstream-erasure"


class KafkaErasures:
    """Kafka: reads customers.v1 as its own consumer group; an erasure every other group has
    committed past has its customer's keys shredded and its hashed form appended. An erasure
    not yet applied everywhere is read again next pass (nothing after it is committed)."""

    def __init__(self, bus: KafkaBus) -> None:
        self.bus = bus
        self.consumer: Consumer | None = None

    async def run_once(self, timeout: float = 1.0) -> int:
        """One pass; returns how many erasures were carried out."""
        if self.consumer is None:
            self.consumer = self.bus.consumer(ERASURE_GROUP, [CUSTOMERS])
            await self.consumer.start()
        records = await self.consumer.poll(timeout=timeout)
        if not records:
            return 0
        erasures = any(r.headers.get(TYPE_HEADER) == CustomerErased.__name__ for r in records)
        groups = ([o for g, o in (await self.bus.groups_committed(CUSTOMERS)).items() if g != ERASURE_GROUP]
                  if erasures else [])
        done, offsets = 0, {}
        for partition in sorted({r.partition for r in records}):
            for record in sorted((r for r in records if r.partition == partition), key=lambda r: r.offset):
                if record.headers.get(TYPE_HEADER) == CustomerErased.__name__:
                    if not all(g.get(partition, 0) > record.offset for g in groups):
                        await self.consumer.seek(CUSTOMERS, partition, record.offset)
                        break
                    await self._carry_out(record)
                    done += 1
                offsets[(CUSTOMERS, partition)] = record.offset + 1
        if offsets:
            await self.consumer.commit(offsets)
        return done

    async def _carry_out(self, record: Record) -> None:
        erased = CustomerErased.model_validate_json(record.value)
        shredded = await self.bus.shred([erased.customer_id, *erased.merged_ids])
        await self.bus.publish([encode(hashed(erased))])
        log.info("erasure %s carried out on Kafka: %d key(s) shredded", erased.erasure_id, shredded)

    async def stop(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()
            self.consumer = None

"""Erasure on Kafka by crypto-shredding: Kafka cannot rewrite or delete one record in place, so
every record is sealed with a data key of its own customer (its bus key), and erasing the customer
destroys their keys; the records stay in Kafka's log, unreadable by anyone.

- Each customer (record key) gets a random AES-256-GCM data key with an id (`kid`). Data keys
  live in the compacted topic `funnelstream.keys.v1` (record key: kid), wrapped with a
  key-encryption key derived from ERASURE_KEY, with a keyed hash of the customer id (`tag`) so
  that erasure finds them; every bus client reads that topic into its `KeyRing`.
- A sealed record: Kafka key = kid (no customer id), partition = the partition of the customer id
  (so one customer's records keep their order), no headers, value = MAGIC, kid, nonce, and
  AES-GCM(customer key, headers + key + value). Consumers get the record as it was published.
- Shredding publishes a tombstone (null value) for each of the customer's kids: clients drop the
  key, and Kafka's compaction removes the wrapped key from the keys topic's log (the topic is
  created with cleanup.policy=compact and short segments). Records sealed with a shredded key
  are delivered as `RecordShredded` placeholders: consumers skip them and commit past them.
- Records without MAGIC (written before sealing, or by a client without a key ring) pass as they are.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import struct
import uuid
from dataclasses import dataclass, field

import orjson
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shared.bus.base import OutgoingRecord, Record

KEYS_TOPIC = "funnelstream.keys.v1"
KEYS_TOPIC_CONFIGS = {
    "cleanup.policy": "compact",
    "retention.ms": "-1",
    "segment.ms": str(3_600_000),  # a shredded key's record is compactable within the hour
    "min.cleanable.dirty.ratio": "0.01",
    "delete.retention.ms": str(86_400_000),
}
MAGIC = b"FSE1"
KID_BYTES = 36  # a UUID as text
NONCE_BYTES = 12
# What consumers see instead of a record whose key was shredded (header names of shared/events.py).
SHREDDED_TYPE = "RecordShredded"


def _frame(*parts: bytes) -> bytes:
    return b"".join(struct.pack(">I", len(p)) + p for p in parts)


def _unframe(data: bytes, count: int) -> list[bytes]:
    parts, at = [], 0
    for _ in range(count):
        (size,) = struct.unpack_from(">I", data, at)
        parts.append(data[at + 4:at + 4 + size])
        at += 4 + size
    return parts


@dataclass
class KeyRing:
    """The data keys a bus client knows: kid -> key (None once shredded), and per customer tag
    the kids it has and the one new records are sealed with."""

    secret: bytes
    keys: dict[str, bytes | None] = field(default_factory=dict)
    kids_of: dict[str, set[str]] = field(default_factory=dict)
    current: dict[str, str] = field(default_factory=dict)
    position: int = 0  # next offset of the keys topic to read

    def __post_init__(self) -> None:
        self._kek = AESGCM(hmac.new(self.secret, b"funnelstream bus key-encryption key", hashlib.sha256).digest())

    def tag(self, customer: str) -> str:
        return hmac.new(self.secret, b"customer\x00" + customer.encode(), hashlib.sha256).hexdigest()

    def apply(self, kid: str, value: bytes | None) -> None:
        """A record of the keys topic: a wrapped key, or a tombstone (shredded)."""
        if value is None:
            self.keys[kid] = None
            self.current = {t: k for t, k in self.current.items() if k != kid}
            return
        if self.keys.get(kid, b"") is None:
            return  # shredded already (a redelivered key record must not bring it back)
        body = orjson.loads(value)
        nonce, wrapped = bytes.fromhex(body["n"]), bytes.fromhex(body["k"])
        self.keys[kid] = self._kek.decrypt(nonce, wrapped, kid.encode())
        self.kids_of.setdefault(body["c"], set()).add(kid)
        self.current.setdefault(body["c"], kid)

    def new_key(self, customer: str) -> tuple[str, bytes]:
        """A fresh data key for the customer: (kid, the keys topic record's value)."""
        kid, key, nonce = str(uuid.uuid4()), AESGCM.generate_key(bit_length=256), os.urandom(NONCE_BYTES)
        value = orjson.dumps({"c": self.tag(customer), "n": nonce.hex(),
                              "k": self._kek.encrypt(nonce, key, kid.encode()).hex()})
        return kid, value

    def kid_for(self, customer: str) -> str | None:
        return self.current.get(self.tag(customer))

    def kids_to_shred(self, customers: list[str]) -> list[str]:
        return sorted(k for c in customers for k in self.kids_of.get(self.tag(c), ()) if self.keys.get(k) is not None)

    def seal(self, kid: str, record: OutgoingRecord) -> bytes:
        key = self.keys[kid]
        assert key is not None, "sealing with a shredded key"
        nonce = os.urandom(NONCE_BYTES)
        plain = _frame(record.key.encode(), orjson.dumps(record.headers), record.value)
        return MAGIC + kid.encode() + nonce + AESGCM(key).encrypt(nonce, plain, kid.encode())

    @staticmethod
    def kid_of(value: bytes | None) -> str | None:
        """The kid a value was sealed with; None for a value that was not sealed."""
        if value is None or not value.startswith(MAGIC):
            return None
        return value[len(MAGIC):len(MAGIC) + KID_BYTES].decode()

    def open(self, topic: str, partition: int, offset: int, value: bytes, timestamp_ms: int) -> Record:
        """The record as published, or a `RecordShredded` placeholder once its key is gone."""
        kid = self.kid_of(value)
        assert kid is not None
        key = self.keys.get(kid)
        if key is None:
            return shredded(topic, partition, offset, timestamp_ms)
        start = len(MAGIC) + KID_BYTES
        nonce, sealed = value[start:start + NONCE_BYTES], value[start + NONCE_BYTES:]
        record_key, headers, payload = _unframe(AESGCM(key).decrypt(nonce, sealed, kid.encode()), 3)
        return Record(topic, partition, offset, record_key.decode(), payload, orjson.loads(headers), timestamp_ms)


def shredded(topic: str, partition: int, offset: int, timestamp_ms: int) -> Record:
    return Record(topic, partition, offset, "", b'{"customer_id": ""}',
                  {"event-type": SHREDDED_TYPE, "message-id": f"shredded/{topic}/{partition}/{offset}"}, timestamp_ms)

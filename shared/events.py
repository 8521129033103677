"""Event contracts on the bus (docs/api.md section 2). Versions live in the topic name.

A breaking change is a new topic, never an edited field. Each event knows its topic, its partition
key (the canonical customer id, so one customer's events stay in order) and a dedupe key that is
the same every time the same fact is published, so consumers can drop redeliveries.
"""
from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from shared.bus.base import OutgoingRecord, Record

INTERACTIONS = "interactions.v1"
CUSTOMERS = "customers.v1"
SEGMENTS = "segments.v1"
FUNNEL = "funnel.v1"
FOLLOWUPS = "followups.v1"
ALERTS = "alerts.v1"  # funnel alerts (docs/api.md section 9); no service consumes it
TOPICS = (INTERACTIONS, CUSTOMERS, SEGMENTS, FUNNEL, FOLLOWUPS)

TYPE_HEADER = "event-type"
ID_HEADER = "message-id"


def new_id() -> str:
    return str(uuid.uuid4())


def stable_id(*parts: object) -> str:
    """The same id for the same fact, however often it is derived (replays, redeliveries): the
    UUID version 5 of the parts joined by "|" in the URL namespace, as `uuid.uuid5` makes it
    (RFC 4122: SHA-1 of namespace and name, version and variant bits set), built from the digest
    directly: a quarter of uuid5's cost, and consumers derive one or more per event."""
    digest = bytearray(hashlib.sha1(_URL_NAMESPACE + "|".join(str(p) for p in parts).encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_URL_NAMESPACE = uuid.NAMESPACE_URL.bytes


class Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")
    topic: ClassVar[str]

    customer_id: str

    def partition_key(self) -> str:
        return self.customer_id

    def dedupe_key(self) -> str:
        raise NotImplementedError


class Interaction(Event):
    """A customer did something: one Segment message after validation and identity stitching."""

    topic: ClassVar[str] = INTERACTIONS
    event_id: str
    user_id: str | None = None
    anonymous_id: str | None = None
    type: Literal["track", "identify", "page", "screen", "group", "alias"]
    name: str | None = None
    properties: dict[str, Any] = Field(default_factory=dict)
    traits: dict[str, Any] = Field(default_factory=dict)
    context: dict[str, Any] = Field(default_factory=dict)
    channel: str = "direct"
    occurred_at: datetime
    received_at: datetime

    def dedupe_key(self) -> str:
        return self.event_id


class CustomerLinked(Event):
    """`merged_id` (an anonymous id, or an alias's previous id) is now `customer_id`."""

    topic: ClassVar[str] = CUSTOMERS
    merged_id: str
    at: datetime

    def dedupe_key(self) -> str:
        return stable_id("linked", self.merged_id, self.customer_id)


class CustomerErased(Event):
    """Every service deletes what it holds about `customer_id` (and ids merged into it)."""

    topic: ClassVar[str] = CUSTOMERS
    erasure_id: str = Field(default_factory=new_id)
    merged_ids: list[str] = Field(default_factory=list)
    at: datetime

    def dedupe_key(self) -> str:
        return self.erasure_id


class ErasureRecorded(Event):
    """A `CustomerErased` as the bus log keeps it once every consumer group has applied it: keyed
    hashes of the ids only (`customer_id` and the record key are the customer's hash), so a
    replay from offset 0 still keeps the customer's late events out, and nothing names them."""

    topic: ClassVar[str] = CUSTOMERS
    erasure_id: str
    id_hashes: list[str]
    at: datetime

    def dedupe_key(self) -> str:
        return self.erasure_id  # the original's: a consumer that applied it skips this


class RecordShredded(Event):
    """What a Kafka consumer gets instead of a record sealed with a shredded customer key (see
    shared/bus/shredding.py): nothing to do; it is skipped and committed past like any other."""

    topic: ClassVar[str] = ""

    def dedupe_key(self) -> str:
        return ""


class SegmentChanged(Event):
    topic: ClassVar[str] = SEGMENTS
    segment: str
    change: Literal["entered", "exited"]
    at: datetime
    reason: str = ""

    def dedupe_key(self) -> str:
        return stable_id("segment", self.customer_id, self.segment, self.change, self.at.isoformat())


class FunnelStageChanged(Event):
    topic: ClassVar[str] = FUNNEL
    funnel: str
    from_stage: str | None
    to_stage: str | None
    at: datetime
    event_id: str | None = None  # the interaction that caused the move
    # Sorts as the funnel service recorded the moves (a move back after a funnel edit, then forward
    # again, keeps the stage's event time as `at`): keep the latest by this, not by `at`.
    order: str | None = None

    def dedupe_key(self) -> str:
        return stable_id("funnel", self.customer_id, self.funnel, self.from_stage, self.to_stage, self.at.isoformat(),
                         self.order or "")


class FollowupChanged(Event):
    topic: ClassVar[str] = FOLLOWUPS
    followup_id: str
    change: Literal["created", "due", "overdue", "completed", "cancelled", "snoozed", "assigned"]
    policy: str | None = None
    at: datetime
    followup: dict[str, Any] = Field(default_factory=dict)

    def dedupe_key(self) -> str:
        return stable_id("followup", self.followup_id, self.change, self.at.isoformat())


class AlertFired(Event):
    """A funnel alert fired for one interval (docs/api.md section 9); keyed by the alert."""

    topic: ClassVar[str] = ALERTS
    customer_id: str = ""  # about no customer
    alert: str
    funnel: str
    stage: str
    interval: str
    period_start: datetime
    rate: float
    baseline: float
    drop_pct: float
    entered_previous: int
    fired_at: datetime

    def partition_key(self) -> str:
        return self.alert

    def dedupe_key(self) -> str:
        return stable_id("alert", self.alert, self.period_start.isoformat())


EVENT_TYPES: dict[str, type[Event]] = {
    cls.__name__: cls
    for cls in (Interaction, CustomerLinked, CustomerErased, ErasureRecorded, RecordShredded, SegmentChanged, FunnelStageChanged, FollowupChanged,
                AlertFired)
}


class UndecodableRecord(ValueError):
    """A record no retry can fix: unknown type or a payload that does not fit its contract."""


def encode(event: Event) -> OutgoingRecord:
    return record(type(event), event.partition_key(), event.dedupe_key(), orjson.dumps(event.model_dump(mode="json")))


def record(event_type: type[Event], key: str, dedupe_key: str, value: bytes) -> OutgoingRecord:
    """A record from a payload already serialised (hot paths skip building the model)."""
    return OutgoingRecord(event_type.topic, key, value, {TYPE_HEADER: event_type.__name__, ID_HEADER: dedupe_key})


def to_iso(at: datetime) -> str:
    """The contract's time format: UTC with a `Z`, as pydantic writes it."""
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def decode(record: Record) -> Event:
    cls = EVENT_TYPES.get(record.headers.get(TYPE_HEADER, ""))
    if cls is None:
        raise UndecodableRecord(f"unknown event type {record.headers.get(TYPE_HEADER)!r}")
    try:  # the validator itself: model_validate_json is a Python wrapper around it, paid per record
        return cls.__pydantic_validator__.validate_json(record.value)  # type: ignore[no-any-return]
    except ValueError as exc:
        raise UndecodableRecord(f"{cls.__name__} payload does not fit its contract: {exc}") from exc


def message_id(record: Record) -> str:
    """The dedupe key a consumer records as processed."""
    return record.headers.get(ID_HEADER) or f"{record.topic}/{record.partition}/{record.offset}"

"""The inbox row: one request's accepted messages, in the form the pipeline reads back cheaply.

The request path writes each message's event body (interactions.v1) already as JSON, but for
the two fields only the pipeline knows: the customer the message counts for (stitching) and its
traffic channel (kept as the few strings it depends on, `channels.traffic`). Beside the bodies, a
small JSON header holds what dedupe, erasure and stitching read. So the pipeline parses a few
short strings per message and joins bytes, instead of parsing and writing again every message's
properties and context.

Layout: FORMAT, the header's length (4 bytes, big-endian), the header (a JSON array with an array
per message, HEADER_FIELDS), then each message's two body parts (`head`, `rest`). Rows written
before this layout (a JSON array of messages) are read too.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple

import orjson

from services.ingest.channels import Traffic, classify_traffic, traffic
from services.ingest.messages import Message
from shared.events import to_iso

FORMAT = b"\x01"
HEADER_FIELDS = ("message_id", "generated_id", "type", "user_id", "anonymous_id", "previous_id", "occurred_at",
                 "traffic", "head_bytes", "rest_bytes")


class Inbound(NamedTuple):
    """An accepted message as the pipeline takes it from the inbox."""

    message_id: str
    generated_id: bool
    type: str
    user_id: str | None
    anonymous_id: str | None
    previous_id: str | None
    occurred_at: datetime
    received_at: datetime
    traffic: Traffic
    times: bytes  # the body's occurred_at and received_at fields
    head: bytes  # the body's fields from user_id to context: JSON without the braces
    rest: bytes  # the body's optional fields (previous_id, group_id, extra) after a comma, or nothing

    @property
    def own_id(self) -> str:
        """The id the message names its customer by, before stitching."""
        return self.user_id or self.anonymous_id  # type: ignore[return-value]

    def body(self, customer_id: str) -> bytes:
        """The interactions.v1 payload (plus what only the timeline shows: extra fields, ids),
        byte for byte what orjson writes for it as one object."""
        return b"".join((b'{"event_id":', orjson.dumps(self.message_id), b',"customer_id":', orjson.dumps(customer_id),
                         b",", self.head, b',"channel":"', classify_traffic(*self.traffic).encode(), self.times,
                         self.rest, b"}"))


def pack(messages: list[Message], received_at: datetime) -> bytes:
    """One request's messages (received at `received_at`) as an inbox row."""
    iso: dict[datetime, str] = {}  # an order's lines share occurred_at
    header: list[tuple[Any, ...]] = []
    parts: list[bytes] = []
    for m in messages:
        head = orjson.dumps({"user_id": m.user_id, "anonymous_id": m.anonymous_id, "type": m.type, "name": m.name,
                             "properties": m.properties, "traits": m.traits, "context": m.context})
        rest = _rest(m)
        occurred = iso.get(m.occurred_at) or iso.setdefault(m.occurred_at, to_iso(m.occurred_at))
        header.append((m.message_id, m.generated_id, m.type, m.user_id, m.anonymous_id, m.previous_id, occurred,
                       traffic(m.context, m.properties), len(head), len(rest)))
        parts += (head, rest)
    encoded = orjson.dumps(header)
    return b"".join((FORMAT, len(encoded).to_bytes(4, "big"), encoded, *parts))


def _rest(m: Message) -> bytes:
    if not (m.previous_id or m.group_id or m.extra):
        return b""
    rest: dict[str, Any] = {}
    if m.previous_id:
        rest["previous_id"] = m.previous_id
    if m.group_id:
        rest["group_id"] = m.group_id
    if m.extra:
        rest["extra"] = m.extra
    return b"," + orjson.dumps(rest)[1:-1]


def unpack(data: bytes, received_at: datetime) -> list[Inbound]:
    """An inbox row's messages. `occurred_at` repeats (one order's lines): each distinct text is
    parsed once."""
    if not data.startswith(FORMAT):
        return unpack(pack(_legacy(data, received_at), received_at), received_at)
    size = int.from_bytes(data[1:5], "big")
    at = 5 + size
    received = f'","received_at":"{to_iso(received_at)}"'
    times: dict[str, tuple[datetime, bytes]] = {}
    out = []
    for message_id, generated, kind, user_id, anonymous_id, previous_id, occurred, sources, head, rest \
            in orjson.loads(data[5:at]):
        found = times.get(occurred)
        if found is None:
            found = times[occurred] = (datetime.fromisoformat(occurred), f'","occurred_at":"{occurred}{received}'.encode())
        out.append(Inbound(message_id, generated, kind, user_id, anonymous_id, previous_id, found[0], received_at,
                           tuple(sources), found[1], data[at + 1:at + head - 1], data[at + head:at + head + rest]))
        at += head + rest
    return out


def _legacy(data: bytes, received_at: datetime) -> list[Message]:
    """A row written before FORMAT: a JSON array of messages (as orjson writes the dataclass)."""
    out = []
    for item in orjson.loads(data):
        item["occurred_at"] = datetime.fromisoformat(item["occurred_at"])
        item["received_at"] = received_at
        out.append(Message(**item))
    return out


def as_sent(data: bytes, received_at: datetime) -> list[dict[str, Any]]:
    """A row's messages as JSON objects, each its event body and `message_id` (to quarantine a
    row that keeps failing)."""
    return [{"message_id": m.message_id, **orjson.loads(m.body(m.own_id))} for m in unpack(data, received_at)]

"""One Segment message in, a normalised message or a rejection reason out. No I/O.

Follows the Segment tracking spec: `userId` or `anonymousId` is required; `event` for track,
`previousId` (and `userId`) for alias, `groupId` for group. Unknown top-level fields are kept.
Clock skew: when `sentAt` is given, `timestamp` is moved by `receivedAt - sentAt`, the device's
clock error, as Segment does; a message without `timestamp` happened at `receivedAt`.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

MESSAGE_TYPES = ("track", "identify", "page", "screen", "group", "alias")
SPEC_FIELDS = {
    "type", "messageId", "userId", "anonymousId", "event", "name", "properties", "traits", "context",
    "timestamp", "sentAt", "previousId", "groupId", "integrations", "receivedAt", "originalTimestamp",
    "writeKey", "channel", "version",
}
MAX_ID_LENGTH = 200


@dataclass
class Message:
    message_id: str
    generated_id: bool
    type: str
    user_id: str | None
    anonymous_id: str | None
    name: str | None
    properties: dict[str, Any]
    traits: dict[str, Any]
    context: dict[str, Any]
    previous_id: str | None
    group_id: str | None
    occurred_at: datetime
    received_at: datetime
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def own_id(self) -> str:
        """The id the message names its customer by, before stitching."""
        return self.user_id or self.anonymous_id  # type: ignore[return-value]


@dataclass
class Rejection:
    index: int
    message_id: str | None
    reason: str
    raw: Any


class Invalid(ValueError):
    pass


def normalize(
    raw: Any,
    *,
    index: int,
    received_at: datetime,
    path_type: str | None = None,
    batch_context: dict[str, Any] | None = None,
    batch_sent_at: Any = None,
    max_bytes: int = 32 * 1024,
) -> Message | Rejection:
    message_id = _message_id_of(raw)
    try:
        if not isinstance(raw, dict):
            raise Invalid(f"a message must be a JSON object, not {json_type(raw)}")
        size = len(orjson.dumps(raw))
        if size > max_bytes:
            raise Invalid(f"message is {size} bytes; the limit is {max_bytes} bytes")
        return _normalize(raw, received_at, path_type, batch_context or {}, batch_sent_at)
    except Invalid as exc:
        return Rejection(index, message_id, str(exc), raw)


def _normalize(
    raw: dict[str, Any], received_at: datetime, path_type: str | None,
    batch_context: dict[str, Any], batch_sent_at: Any,
) -> Message:
    kind = path_type or raw.get("type")
    if kind not in MESSAGE_TYPES:
        raise Invalid(f"type must be one of {', '.join(MESSAGE_TYPES)}; got {raw.get('type')!r}")
    user_id, anonymous_id = _id(raw, "userId"), _id(raw, "anonymousId")
    if user_id is None and anonymous_id is None:
        raise Invalid("userId or anonymousId is required")
    message_id, previous_id, group_id = _id(raw, "messageId"), _id(raw, "previousId"), _id(raw, "groupId")
    if kind == "alias" and (previous_id is None or user_id is None):
        raise Invalid("alias needs 'previousId' (the old id) and 'userId' (the id it becomes)")
    if kind == "group" and group_id is None:
        raise Invalid("group needs 'groupId'")
    return Message(
        message_id=message_id or str(uuid.uuid4()),
        generated_id=message_id is None,
        type=kind,
        user_id=user_id,
        anonymous_id=anonymous_id,
        name=_name(raw, kind),
        properties=_object(raw, "properties"),
        traits=_object(raw, "traits"),
        context={**batch_context, **_object(raw, "context")},
        previous_id=previous_id,
        group_id=group_id,
        occurred_at=_occurred_at(raw, received_at, batch_sent_at),
        received_at=received_at,
        extra={k: v for k, v in raw.items() if k not in SPEC_FIELDS},
    )


def _name(raw: dict[str, Any], kind: str) -> str | None:
    if kind == "track":
        event = raw.get("event")
        if not isinstance(event, str) or not event.strip():
            raise Invalid("track needs a non-empty string 'event'")
        return event
    if kind in ("page", "screen"):
        name = raw.get("name")
        if name is not None and not isinstance(name, str):
            raise Invalid(f"{kind} 'name' must be a string")
        return name
    return None


def _id(raw: dict[str, Any], key: str) -> str | None:
    value = raw.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise Invalid(f"'{key}' must be a string")
    text = str(value)
    if len(text) > MAX_ID_LENGTH:
        raise Invalid(f"'{key}' is longer than {MAX_ID_LENGTH} characters")
    if "\x00" in text:
        raise Invalid(f"'{key}' contains a NUL character")
    return text


def _object(raw: dict[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Invalid(f"'{key}' must be an object")
    return value


def _occurred_at(raw: dict[str, Any], received_at: datetime, batch_sent_at: Any) -> datetime:
    timestamp = parse_time(raw.get("timestamp"), "timestamp")
    if timestamp is None:
        return received_at
    sent_at = parse_time(raw.get("sentAt") or batch_sent_at, "sentAt")
    return timestamp + (received_at - sent_at) if sent_at else timestamp


def parse_time(value: Any, name: str) -> datetime | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise Invalid(f"'{name}' must be an ISO-8601 string")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise Invalid(f"'{name}' {value[:40]!r} is not an ISO-8601 time") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def json_type(value: Any) -> str:
    """What a client calls the value it sent."""
    names = {type(None): "null", bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array"}
    return names.get(type(value), "an object")


def _message_id_of(raw: Any) -> str | None:
    """The messageId as far as it can be read, to name a rejected message."""
    value = raw.get("messageId") if isinstance(raw, dict) else None
    return printable_id(value)


def printable_id(value: Any) -> str | None:
    """An id fit to store and show whatever was sent: text, bounded, without NUL characters."""
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        return None
    return str(value).replace("\x00", "")[:MAX_ID_LENGTH] or None


def pack(messages: list[Message]) -> bytes:
    """Messages as JSON, for the inbox (orjson writes dataclasses and datetimes natively)."""
    return orjson.dumps(messages)


def unpack(data: bytes) -> list[Message]:
    out = []
    for item in orjson.loads(data):
        item["occurred_at"] = datetime.fromisoformat(item["occurred_at"])
        item["received_at"] = datetime.fromisoformat(item["received_at"])
        out.append(Message(**item))
    return out

"""One Segment message in, a normalised message or a rejection reason out. No I/O.

Follows the Segment tracking spec: `userId` or `anonymousId` is required; `event` for track,
`previousId` (and `userId`) for alias, `groupId` for group. Unknown top-level fields are kept.
No field nests objects and arrays more than MAX_NESTING levels deep (the batch's context neither).
The batch's context is copied into each message it joins: it counts toward the message's size,
and a batch copies it for at most the request limit in all (BatchContextCopies).
Amounts (`properties.revenue` of any track; `total` and `value` of an order) are numbers in range.
Clock skew: when `sentAt` is given, `timestamp` is moved by `receivedAt - sentAt`, the device's
clock error, as Segment does; a message without `timestamp` happened at `receivedAt`. Every time
a message carries (`timestamp`, its own or the batch's `sentAt`, and the corrected timestamp) lies
in the years 1900-8999 UTC, the range every API's query times take, or the message is rejected.
"""
from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import orjson

from shared.params import EARLIEST, LATEST

MESSAGE_TYPES = ("track", "identify", "page", "screen", "group", "alias")
SPEC_FIELDS = {
    "type", "messageId", "userId", "anonymousId", "event", "name", "properties", "traits", "context",
    "timestamp", "sentAt", "previousId", "groupId", "integrations", "receivedAt", "originalTimestamp",
    "writeKey", "channel", "version",
}
MAX_ID_LENGTH = 200
# Levels of objects and arrays a field of a message may nest. Every consumer must decode what
# ingest accepts: the bus contract's decoder (pydantic's JSON parser) stops at 200 levels for the
# whole event and orjson writes at most 254; an event adds 2 levels around a field (the event and
# `extra`), so 64 leaves a wide margin, as JSON tools commonly cap depth at 32-64.
MAX_NESTING = 64
# Money: amounts beyond a trillion are mistakes, and a sum of such amounts stays finite.
MAX_AMOUNT = 1e12
ORDER_COMPLETED = "Order Completed"
ORDER_EVENTS = (ORDER_COMPLETED, "Order Refunded")
# Times outside these years are rejected, so no service meets a date it cannot add a window to.
TIME_RANGE = f"the years {EARLIEST.year}-{LATEST.year - 1} (UTC)"


@dataclass(slots=True)
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
    batch_problem: str | None = None,
    batch_context_bytes: int = 0,
    max_bytes: int = 32 * 1024,
) -> Message | Rejection:
    try:
        if not isinstance(raw, dict):
            raise Invalid(f"a message must be a JSON object, not {json_type(raw)}")
        encoded = _encoded(raw)
        if batch_problem:
            raise Invalid(batch_problem)
        size = len(encoded)
        if size > max_bytes:
            raise Invalid(f"message is {size} bytes; the limit is {max_bytes} bytes")
        if size + batch_context_bytes > max_bytes:
            raise Invalid(f"message is {size + batch_context_bytes} bytes with the batch's 'context' copied into it "
                          f"({size} without); the limit is {max_bytes} bytes")
        return _normalize(raw, received_at, path_type, batch_context or {}, batch_sent_at)
    except Invalid as exc:  # the id to name it by is read only here: most messages are valid
        return Rejection(index, _message_id_of(raw), str(exc), raw)


def _encoded(raw: dict[str, Any]) -> bytes:
    """The message as JSON (its size counts), once its nesting is known to be within bounds.
    Each level of nesting opens a bracket, so a message with at most MAX_NESTING + 1 of them
    (a usual one has a handful) needs no walk through its levels: on every message's path, the
    walk cost more than the rest of the checks together."""
    try:
        encoded = orjson.dumps(raw)
    except orjson.JSONEncodeError:
        _check_nesting(raw)  # deeper than orjson writes: say how deep
        raise
    if encoded.count(b"{") + encoded.count(b"[") > MAX_NESTING + 1:
        _check_nesting(raw)
    return encoded


def _check_nesting(raw: dict[str, Any]) -> None:
    if nesting(raw) <= MAX_NESTING + 1:
        return  # the message's fields are one level less deep than the message
    for key, value in raw.items():
        if (levels := nesting(value)) > MAX_NESTING:
            raise Invalid(_too_deep(f"'{key}'", levels))


def batch_context_problem(context: dict[str, Any] | None) -> str | None:
    """Why the batch's context, which joins every message, cannot be accepted; measure it once
    per batch (`normalize(batch_problem=...)`), not once per message."""
    levels = nesting(context) if context else 0
    return _too_deep("the batch's 'context'", levels) if levels > MAX_NESTING else None


class BatchContextCopies:
    """The batch's context is copied into every message it joins: at most `budget` bytes of
    copies per request, so one request never stores more than twice the request limit."""

    def __init__(self, context: dict[str, Any] | None, budget: int) -> None:
        self.size = len(orjson.dumps(context)) if context and not batch_context_problem(context) else 0
        self.left = budget // self.size if self.size else None  # None: no context, nothing to copy
        self.refusal = (f"the batch's 'context' ({self.size} bytes) is copied into each message, and this batch "
                        f"already holds {self.left} copies, the most {budget} bytes allow; send the context in "
                        "each message, or fewer messages per batch")

    def take(self) -> bool:
        """One more copy, if the budget allows (always, without a context)."""
        if self.left is None:
            return True
        self.left -= 1
        return self.left >= 0


def _too_deep(what: str, levels: int) -> str:
    return f"{what} nests objects and arrays {levels} levels deep; at most {MAX_NESTING} are accepted"


def nesting(value: Any) -> int:
    """How many objects and arrays deep `value` goes: 0 for a number or a string, 1 for {"a": 1}.
    A loop, not recursion: the body parser admits about 1,000 levels, more than Python's stack.
    Level by level, keeping only the objects and arrays (on every request's path: a scalar costs
    one type check)."""
    deepest, level = 0, [value] if type(value) in (dict, list) else []
    while level:
        deepest += 1
        level = [child for item in level for child in (item.values() if type(item) is dict else item)
                 if type(child) in (dict, list)]
    return deepest


def clipped(value: Any, levels: int) -> Any:
    """`value` with what lies deeper than `levels` replaced by a note (to keep a rejected message
    that no JSON writer could store whole)."""
    if not isinstance(value, (dict, list)):
        return value
    if levels == 0:
        return f"(nested deeper than {MAX_NESTING} levels: not kept)"
    if isinstance(value, dict):
        return {k: clipped(v, levels - 1) for k, v in value.items()}
    return [clipped(v, levels - 1) for v in value]


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
    name, properties = _name(raw, kind), _object(raw, "properties")
    if kind == "track":
        _check_amounts(name, properties)
    return Message(  # by position, in the fields' order: on every message's path, keywords cost a tenth of it
        message_id or str(uuid.uuid4()),  # message_id
        message_id is None,  # generated_id
        kind,  # type
        user_id,
        anonymous_id,
        name,
        properties,
        _object(raw, "traits"),
        _context(raw, batch_context),
        previous_id,
        group_id,
        _occurred_at(raw, received_at, batch_sent_at),
        received_at,
        {} if SPEC_FIELDS.issuperset(raw) else {k: v for k, v in raw.items() if k not in SPEC_FIELDS},  # extra
    )


def _context(raw: dict[str, Any], batch_context: dict[str, Any]) -> dict[str, Any]:
    """The message's context over the batch's; the message's own as it is when there is none."""
    own = _object(raw, "context")
    return {**batch_context, **own} if batch_context else own


def _check_amounts(event: str | None, properties: dict[str, Any]) -> None:
    """The amounts services add up are numbers they can add: finite, within +-MAX_AMOUNT, and an
    order's not negative. `revenue` is money on any event (Segment's spec); an order's amount
    falls back to `total`, then `value` (as segmentation reads it), so those count on orders."""
    fields = ("revenue", "total", "value") if event in ORDER_EVENTS else ("revenue",)
    for key in fields:
        value = properties.get(key)
        if value is None:
            continue
        amount = _amount(value)
        low = 0.0 if event == ORDER_COMPLETED else -MAX_AMOUNT
        if amount is None or not low <= amount <= MAX_AMOUNT:
            raise Invalid(f"'properties.{key}' must be a number from {low:g} to {MAX_AMOUNT:g}"
                          + (" (a refund is an 'Order Refunded')" if event == ORDER_COMPLETED else "")
                          + f"; got {str(value)[:40]!r}")


def _amount(value: Any) -> float | None:
    """A number, or text holding one (SDKs often send "12.50"); None for anything else."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        amount = float(value)
    except (ValueError, OverflowError):
        return None
    return amount if math.isfinite(amount) else None


def _name(raw: dict[str, Any], kind: str) -> str | None:
    if kind == "track":
        event = raw.get("event")
        if not isinstance(event, str) or not event.strip():
            raise Invalid("track needs a non-empty string 'event'")
        return _storable_name(event, "event")
    if kind in ("page", "screen"):
        name = raw.get("name")
        if name is not None and not isinstance(name, str):
            raise Invalid(f"{kind} 'name' must be a string")
        return None if name is None else _storable_name(name, "name")
    return None


def _storable_name(name: str, key: str) -> str:
    """Names are columns downstream (funnel and segmentation stores): bounded, no NUL (PostgreSQL
    refuses it in text), or every consumer would dead-letter the event."""
    if len(name) > MAX_ID_LENGTH:
        raise Invalid(f"'{key}' is longer than {MAX_ID_LENGTH} characters")
    if "\x00" in name:
        raise Invalid(f"'{key}' contains a NUL character")
    return name


def _id(raw: dict[str, Any], key: str) -> str | None:
    value = raw.get(key)
    if type(value) is str and 0 < len(value) <= MAX_ID_LENGTH and "\x00" not in value:
        return value  # the usual id, in one test (five ids a message, on every request)
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
    sent_at = parse_time(raw.get("sentAt") or batch_sent_at, "sentAt")
    if timestamp is None:
        return received_at
    if sent_at is None:
        return timestamp
    try:
        corrected = timestamp + (received_at - sent_at)
    except OverflowError:
        corrected = None
    if corrected is None or not EARLIEST <= corrected < LATEST:
        raise Invalid(f"'timestamp' corrected for clock skew (by receivedAt - sentAt) falls outside {TIME_RANGE}; "
                      "check the device's clock and the 'sentAt' sent with it")
    return corrected


def parse_time(value: Any, name: str) -> datetime | None:
    """An ISO-8601 time as UTC, within the years every service and store can hold."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise Invalid(f"'{name}' must be an ISO-8601 string")
    at = _utc(value) if len(value) <= MAX_TIME_LENGTH else _utc.__wrapped__(value)
    if at is NOT_A_TIME:
        raise Invalid(f"'{name}' {value[:40]!r} is not an ISO-8601 time")
    if at is OUT_OF_RANGE:
        raise Invalid(f"'{name}' {value[:40]!r} is outside {TIME_RANGE}")
    return at  # type: ignore[return-value]


# Times repeat (an order's lines, a batch's sentAt): each text is read once. Longer texts are no
# times, and are not kept.
MAX_TIME_LENGTH = 64
NOT_A_TIME, OUT_OF_RANGE = object(), object()


@lru_cache(maxsize=4096)
def _utc(value: str) -> datetime | object:
    """`value` as a time in UTC, else NOT_A_TIME or OUT_OF_RANGE."""
    try:
        parsed = datetime.fromisoformat(value)
        at = parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except ValueError:
        return NOT_A_TIME
    except OverflowError:  # 0001-01-01T00:00:00+14:00 is before year 1 in UTC
        return OUT_OF_RANGE
    return at if EARLIEST <= at < LATEST else OUT_OF_RANGE


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

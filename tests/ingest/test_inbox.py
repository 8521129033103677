"""The inbox row keeps what the pipeline needs: read back, each message gives the event body that
orjson writes for the message as one object, whatever the message holds; rows written in the
earlier layout (a JSON array of the messages) read the same."""
from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from bench.retail import messages as retail_messages
from services.ingest.channels import classify
from services.ingest.inbox import pack, unpack
from services.ingest.messages import Message, normalize
from shared.events import to_iso
from tests.retail_data import online_retail

RECEIVED = datetime(2026, 12, 1, 9, 30, 15, 123456, tzinfo=UTC)


def expected_body(m: Message, customer_id: str) -> bytes:
    """The interactions.v1 body as the pipeline wrote it from the message itself."""
    body: dict[str, object] = {
        "event_id": m.message_id, "customer_id": customer_id, "user_id": m.user_id, "anonymous_id": m.anonymous_id,
        "type": m.type, "name": m.name, "properties": m.properties, "traits": m.traits, "context": m.context,
        "channel": classify(m.context, m.properties), "occurred_at": to_iso(m.occurred_at),
        "received_at": to_iso(m.received_at),
    }
    if m.previous_id:
        body["previous_id"] = m.previous_id
    if m.group_id:
        body["group_id"] = m.group_id
    if m.extra:
        body["extra"] = m.extra
    return orjson.dumps(body)


def varied(rng: random.Random, i: int) -> dict[str, object]:
    """A valid message of any type, with the optional parts present or not, odd text included."""
    text = rng.choice(["plain", "ünïcødé ✓", 'quote " and \\ backslash', "emoji 🎉", "tab\tnew\nline", "line\u2028separator"])
    kind = rng.choice(["track", "identify", "page", "screen", "group", "alias"])
    message: dict[str, object] = {"type": kind, "userId": f"u{i} {text}"}
    if rng.random() < 0.5:
        message["anonymousId"] = f"a{i}"
    if rng.random() < 0.8:
        message["messageId"] = f"m{i}"
    if kind == "track":
        message["event"] = rng.choice(["Order Completed", "Product Viewed", text])
    if kind in ("page", "screen") and rng.random() < 0.5:
        message["name"] = text
    if kind == "alias":
        message["previousId"] = f"old{i}"
    if kind == "group":
        message["groupId"] = f"g{i}"
    if rng.random() < 0.7:
        message["properties"] = {"revenue": rng.choice([1, 2.5, "3.10"]), "nested": {"list": [1, None, True, text]},
                                 "url": rng.choice(["https://x.example/?utm_source=news&utm_medium=email", text])}
    if rng.random() < 0.5:
        message["traits"] = {"email": f"{i}@example.com", "name": text}
    if rng.random() < 0.7:
        message["context"] = {"page": {"url": "https://shop.example/p", "referrer": rng.choice(
            ["https://www.google.com/", "android-app://com.google.android.gm", "", 3])},
            "campaign": rng.choice([{}, {"source": "Facebook", "medium": " CPC "}, "not an object"]),
            "channel": rng.choice(["email", "browser", None, 7])}
    if rng.random() < 0.6:
        at = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=rng.randrange(10**8), microseconds=rng.randrange(10**6))
        message["timestamp"] = at.isoformat() if rng.random() < 0.5 else at.astimezone().isoformat()
    if rng.random() < 0.3:
        message["sentAt"] = (RECEIVED - timedelta(seconds=rng.randrange(1000))).isoformat()
    if rng.random() < 0.3:
        message["custom"] = {"kept": text}
    return message


def accepted(raws: list[dict[str, object]], batch_context: dict[str, object] | None = None) -> list[Message]:
    out = [normalize(raw, index=i, received_at=RECEIVED, batch_context=batch_context) for i, raw in enumerate(raws)]
    assert all(isinstance(m, Message) for m in out)
    return out  # type: ignore[return-value]


def assert_read_back(messages: list[Message], row: bytes) -> None:
    inbound = unpack(row, RECEIVED)
    assert len(inbound) == len(messages)
    for m, got in zip(messages, inbound, strict=True):
        assert (got.message_id, got.generated_id, got.type, got.user_id, got.anonymous_id, got.previous_id,
                got.occurred_at, got.received_at) == (m.message_id, m.generated_id, m.type, m.user_id,
                                                     m.anonymous_id, m.previous_id, m.occurred_at, m.received_at)
        assert got.own_id == m.own_id
        for customer in (m.own_id, "someone else", 'a "quoted" ✓ id'):
            assert got.body(customer) == expected_body(m, customer)


@pytest.mark.parametrize("seed", range(5))
def test_varied_messages_give_the_bodies_they_gave_before(seed):
    rng = random.Random(seed)
    messages = accepted([varied(rng, i) for i in range(300)])
    assert_read_back(messages, pack(messages, RECEIVED))


def test_retail_messages_with_a_batch_context():
    messages = accepted(retail_messages(500, online_retail()), batch_context={"library": {"name": "analytics-python"}, "ip": "1.2.3.4"})
    assert_read_back(messages, pack(messages, RECEIVED))


def test_rows_in_the_earlier_layout_read_the_same():
    rng = random.Random(7)
    messages = accepted([varied(rng, i) for i in range(200)])
    assert_read_back(messages, orjson.dumps(messages))  # how rows were written before


def test_an_empty_row_reads_empty():
    assert unpack(pack([], RECEIVED), RECEIVED) == []

"""The Segment tracking API as a frontend team meets it: one endpoint per message type, batches,
the answer, the timeline (with unknown fields kept), rejected messages and the quarantine."""
from __future__ import annotations

import uuid

import pytest

from tests.helpers import ADMIN, READER, eventually
from tests.ingest.support import (
    assert_error,
    full_timeline,
    ids_of,
    quarantine,
    send_batch,
    send_ok,
    timeline_page,
    track,
    wait_for_events,
)


def one_of_each(user: str) -> list[dict]:
    """The six message types, one minute apart, oldest first."""
    at = "2024-05-01T10:0{}:00Z".format
    return [
        {"type": "identify", "messageId": f"{user}-identify", "userId": user, "traits": {"email": "ada@example.com"},
         "timestamp": at(0)},
        {"type": "track", "messageId": f"{user}-track", "userId": user, "event": "Product Viewed",
         "properties": {"sku": "A-1", "price": 9.5}, "timestamp": at(1)},
        {"type": "page", "messageId": f"{user}-page", "userId": user, "name": "Pricing",
         "properties": {"url": "https://shop.example.com/pricing"}, "timestamp": at(2)},
        {"type": "screen", "messageId": f"{user}-screen", "userId": user, "name": "Basket",
         "properties": {"items": 2}, "timestamp": at(3)},
        {"type": "group", "messageId": f"{user}-group", "userId": user, "groupId": "acme",
         "traits": {"name": "Acme Ltd"}, "timestamp": at(4)},
        {"type": "alias", "messageId": f"{user}-alias", "userId": user, "previousId": f"{user}-crm-7",
         "timestamp": at(5)},
    ]


def assert_shows_one_of_each(items: list[dict], user: str) -> None:
    assert [i["type"] for i in items] == ["alias", "group", "screen", "page", "track", "identify"]  # newest first
    by_type = {i["type"]: i for i in items}
    assert by_type["track"]["name"] == "Product Viewed"
    assert by_type["track"]["properties"] == {"sku": "A-1", "price": 9.5}
    assert by_type["page"]["name"] == "Pricing" and by_type["screen"]["name"] == "Basket"
    assert by_type["identify"]["traits"] == {"email": "ada@example.com"}
    assert by_type["group"]["traits"] == {"name": "Acme Ltd"} and by_type["group"]["group_id"] == "acme"
    assert by_type["alias"]["previous_id"] == f"{user}-crm-7"
    assert by_type["screen"]["occurred_at"] == "2024-05-01T10:03:00Z"
    for item in items:
        assert item["customer_id"] == user and item["user_id"] == user
        assert item["channel"] == "direct"
        assert item["occurred_at"].endswith("Z") and item["received_at"].endswith("Z")


class TestEachMessageType:
    async def test_each_endpoint_accepts_its_message_and_answers_in_the_segment_shape(self, client):
        for message in one_of_each("u-single"):
            kind = message.pop("type")
            answer = await send_ok(client, f"/v1/{kind}", message)
            assert answer == {"success": True, "accepted": 1, "rejected": []}
        items = await wait_for_events(client, "u-single", "u-single-alias", "u-single-identify")
        assert_shows_one_of_each(items, "u-single")

    async def test_a_batch_carries_every_type_at_once(self, client):
        answer = await send_batch(client, one_of_each("u-batch"))
        assert answer == {"success": True, "accepted": 6, "rejected": []}
        assert_shows_one_of_each(await wait_for_events(client, "u-batch", *ids_of_batch("u-batch")), "u-batch")

    async def test_the_endpoint_decides_the_type_of_a_single_message(self, client):
        await send_ok(client, "/v1/page", {"messageId": "p-1", "userId": "u-path", "name": "Home"})
        [item] = await wait_for_events(client, "u-path", "p-1")
        assert item["type"] == "page" and item["name"] == "Home"


def ids_of_batch(user: str) -> list[str]:
    return [m["messageId"] for m in one_of_each(user)]


class TestTimelineItems:
    async def test_unknown_fields_are_kept_not_rejected(self, client):
        message = track("x-1", userId="u-extra", experiment={"arm": "B"}, sdkBuild=42,
                        context={"device": {"model": "Pixel 8"}, "myTeamField": "kept"})
        assert (await send_batch(client, [message]))["accepted"] == 1
        [item] = await wait_for_events(client, "u-extra", "x-1")
        assert item["extra"] == {"experiment": {"arm": "B"}, "sdkBuild": 42}
        assert item["context"] == {"device": {"model": "Pixel 8"}, "myTeamField": "kept"}

    async def test_times_with_an_offset_come_out_in_utc_with_z(self, client):
        await send_batch(client, [track("tz-1", userId="u-tz", timestamp="2024-03-01T12:00:00+02:00")])
        [item] = await wait_for_events(client, "u-tz", "tz-1")
        assert item["occurred_at"] == "2024-03-01T10:00:00Z"

    async def test_batch_context_applies_to_its_messages_and_theirs_wins(self, client):
        await send_batch(client, [track("bc-1", userId="u-bc", context={"locale": "fr-FR"}),
                                  track("bc-2", userId="u-bc")],
                         context={"locale": "en-GB", "app": {"name": "shop"}})
        items = {i["event_id"]: i for i in await wait_for_events(client, "u-bc", "bc-1", "bc-2")}
        assert items["bc-1"]["context"] == {"locale": "fr-FR", "app": {"name": "shop"}}
        assert items["bc-2"]["context"] == {"locale": "en-GB", "app": {"name": "shop"}}

    async def test_numeric_user_ids_are_read_as_strings(self, client):
        await send_batch(client, [track("num-1", userId=12345)])
        [item] = await wait_for_events(client, "12345", "num-1")
        assert item["user_id"] == "12345" and item["customer_id"] == "12345"

    async def test_a_message_without_message_id_gets_one_and_is_not_taken_for_a_retry(self, client):
        twice = [{"type": "track", "userId": "u-noid", "event": "Clicked"}] * 2
        assert (await send_batch(client, twice))["accepted"] == 2

        async def both() -> list[dict] | None:
            items = await full_timeline(client, "u-noid")
            return items if len(items) == 2 else None

        items = await eventually(both)
        ids = ids_of(items)
        assert len(set(ids)) == 2 and all(uuid.UUID(i) for i in ids)


class TestTimelinePaging:
    @pytest.fixture
    def ingest_db_url(self, store_url: str) -> str:
        return store_url  # paging compares times in SQL: run on SQLite and PostgreSQL

    async def test_pages_follow_next_cursor_newest_first_without_gaps_or_repeats(self, client):
        times = [f"2024-01-0{d}T09:00:00Z" for d in (1, 2, 3, 3, 3, 4, 5)]  # three share a time
        messages = [track(f"pg-{n}", userId="u-pages", timestamp=t) for n, t in enumerate(times)]
        await send_batch(client, messages)
        everything = await wait_for_events(client, "u-pages", *(m["messageId"] for m in messages))

        pages, cursor = [], None
        while True:
            response = await timeline_page(client, "u-pages", limit=2, **({"cursor": cursor} if cursor else {}))
            body = response.json()
            pages.append(body["items"])
            if not (cursor := body["next_cursor"]):
                break
        assert [len(p) for p in pages] == [2, 2, 2, 1]
        walked = [i for p in pages for i in p]
        assert ids_of(walked) == ids_of(everything)
        occurred = [i["occurred_at"] for i in walked]
        assert occurred == sorted(occurred, reverse=True)
        assert sorted(ids_of(walked)) == sorted(m["messageId"] for m in messages)

    async def test_default_page_is_fifty(self, client):
        await send_batch(client, [track(f"d-{n:02}", userId="u-many") for n in range(51)])
        await wait_for_events(client, "u-many", *(f"d-{n:02}" for n in range(51)))
        body = (await timeline_page(client, "u-many")).json()
        assert len(body["items"]) == 50 and body["next_cursor"]

    async def test_a_cursor_it_never_gave_out_is_a_400(self, client):
        await send_batch(client, [track("c-1", userId="u-cursor")])
        await wait_for_events(client, "u-cursor", "c-1")
        assert_error(await timeline_page(client, "u-cursor", cursor="not-a-cursor"), 400, "invalid_cursor")

    async def test_a_limit_over_1000_is_a_422(self, client):
        assert_error(await timeline_page(client, "anyone", limit=1001), 422, "invalid_fields")

    async def test_an_unknown_customer_is_a_404(self, client):
        assert_error(await timeline_page(client, "nobody-at-all"), 404, "not_found")

    async def test_the_timeline_needs_an_api_key(self, client):
        assert_error(await client.get("/api/customers/u/timeline"), 401, "missing_api_key")


INVALID = [
    ({"type": "track", "messageId": "bad-noid", "event": "Clicked"}, "userId or anonymousId"),
    ({"type": "track", "messageId": "bad-noevent", "userId": "u-mixed"}, "event"),
    ({"type": "purchase", "messageId": "bad-type", "userId": "u-mixed"}, "type must be one of"),
    ({"type": "alias", "messageId": "bad-alias", "userId": "u-mixed"}, "previousId"),
    ({"type": "group", "messageId": "bad-group", "userId": "u-mixed"}, "groupId"),
    ({"type": "track", "messageId": "bad-time", "userId": "u-mixed", "event": "E", "timestamp": "yesterday"},
     "timestamp"),
    ({"type": "track", "messageId": "bad-props", "userId": "u-mixed", "event": "E", "properties": [1, 2]},
     "properties"),
    ("not an object", "JSON object"),
]


class TestRejectedMessages:
    async def test_invalid_messages_are_listed_and_the_others_accepted(self, client):
        batch = [track("ok-1", userId="u-mixed")] + [m for m, _ in INVALID] + [track("ok-2", userId="u-mixed")]
        answer = await send_batch(client, batch)
        assert answer["success"] is True and answer["accepted"] == 2
        assert [r["index"] for r in answer["rejected"]] == list(range(1, len(INVALID) + 1))
        for rejected, (message, expected) in zip(answer["rejected"], INVALID, strict=True):
            assert rejected["messageId"] == (message.get("messageId") if isinstance(message, dict) else None)
            assert expected in rejected["reason"]
        items = await wait_for_events(client, "u-mixed", "ok-1", "ok-2")
        assert sorted(ids_of(items)) == ["ok-1", "ok-2"]

    async def test_rejected_messages_are_kept_in_the_quarantine_as_sent_with_the_reason(self, client):
        answer = await send_batch(client, [m for m, _ in INVALID])
        kept = await quarantine(client)
        assert len(kept) == len(INVALID)
        by_raw = {repr(k["message"]): k for k in kept}
        for rejected, (message, _) in zip(answer["rejected"], INVALID, strict=True):
            item = by_raw[repr(message)]
            assert item["reason"] == rejected["reason"]
            assert item["message_id"] == rejected["messageId"]
            assert item["received_at"]

    async def test_a_single_invalid_message_is_a_200_with_its_rejection(self, client):
        answer = await send_ok(client, "/v1/track", {"messageId": "lonely", "userId": "u-1"})
        assert answer["accepted"] == 0
        assert answer["rejected"] == [{"index": 0, "messageId": "lonely",
                                       "reason": "track needs a non-empty string 'event'"}]

    async def test_the_quarantine_is_paged_newest_first(self, client):
        for n in range(3):
            await send_batch(client, [{"type": "track", "messageId": f"q-{n}", "event": "E"}])
        first = (await client.get("/api/ingest/quarantine", params={"limit": 2}, headers=READER)).json()
        assert [i["message_id"] for i in first["items"]] == ["q-2", "q-1"] and first["next_cursor"]
        second = (await client.get("/api/ingest/quarantine", params={"limit": 2, "cursor": first["next_cursor"]},
                                   headers=ADMIN)).json()
        assert [i["message_id"] for i in second["items"]] == ["q-0"] and second["next_cursor"] is None

    async def test_the_quarantine_needs_an_api_key(self, client):
        assert_error(await client.get("/api/ingest/quarantine"), 401, "missing_api_key")

    async def test_quarantine_times_are_utc_with_z(self, client):
        await send_batch(client, [{"type": "track", "messageId": "qz", "event": "E"}])
        [item] = await quarantine(client)
        assert item["received_at"].endswith("Z")

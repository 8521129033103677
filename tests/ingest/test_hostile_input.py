"""Input a client may send by mistake or on purpose must never stall ingest nor be a 500.

Each test here once found a bug: a NUL in an id (PostgreSQL refuses it in text columns) stalled
the pipeline; forged cursors were 500s."""
from __future__ import annotations

import base64
import json

import orjson
import pytest

from tests.helpers import READER, eventually
from tests.ingest.support import (
    WRITE_KEY,
    assert_error,
    basic,
    full_timeline,
    quarantine,
    send,
    send_batch,
    timeline_page,
    track,
    wait_for_events,
)


@pytest.fixture
def ingest_db_url(store_url: str) -> str:
    return store_url


def cursor_of(*values: object) -> str:
    """A well-formed cursor holding values this API never gives out."""
    return base64.urlsafe_b64encode(orjson.dumps(values)).decode().rstrip("=")


class TestNulCharacters:
    async def test_a_nul_in_an_id_does_not_hold_up_everyone_elses_events(self, client):
        await send_batch(client, [track("nul-1", userId="evil\u0000id")])
        await send_batch(client, [track("after-nul", userId="u-after")])

        async def landed() -> bool:
            return [i["event_id"] for i in await full_timeline(client, "u-after")] == ["after-nul"]

        await eventually(landed, timeout=2)

    async def test_a_nul_in_a_rejected_messages_id_is_still_quarantined(self, client):
        response = await send(client, "/v1/batch", {"batch": [{"type": "track", "messageId": "q\u0000", "userId": "u"}]})
        assert response.status_code == 200 and len(response.json()["rejected"]) == 1


class TestForgedCursors:
    @pytest.fixture
    def ingest_db_url(self) -> None:
        return None  # parsing, not SQL: SQLite is enough

    async def test_a_quarantine_cursor_it_never_gave_out_is_a_400(self, client):
        response = await client.get("/api/ingest/quarantine", params={"cursor": cursor_of("abc")}, headers=READER)
        assert_error(response, 400, "invalid_cursor")

    async def test_a_timeline_cursor_with_a_forged_id_is_a_400(self, client):
        await send_batch(client, [track("fc-1", userId="u-fc")])
        await wait_for_events(client, "u-fc", "fc-1")
        response = await timeline_page(client, "u-fc", cursor=cursor_of("2024-01-01T00:00:00+00:00", {"a": 1}))
        assert_error(response, 400, "invalid_cursor")

    @pytest.mark.parametrize("at", ["yesterday", "2024-01-01T00:00:00"])  # not a time; a time without its zone
    async def test_a_timeline_cursor_with_a_forged_time_is_a_400(self, client, at):
        response = await timeline_page(client, "u-fc", cursor=cursor_of(at, "fc-1"))
        assert_error(response, 400, "invalid_cursor")


# (what the message carries, the field its rejection names): times no calendar or store can hold
CALENDAR_ENDS = [
    ({"timestamp": "0001-01-01T00:00:00+14:00"}, "timestamp"),  # before year 1 in UTC
    ({"timestamp": "9999-12-31T23:59:59-10:00"}, "timestamp"),  # after year 9999 in UTC
    ({"timestamp": "9999-12-31T23:59:59Z", "sentAt": "0001-01-01T00:00:00Z"}, "timestamp"),  # the skew correction overflows
    ({"timestamp": "0001-01-01T00:00:00Z", "sentAt": "9999-12-31T23:59:59Z"}, "timestamp"),
    ({"timestamp": "1850-01-01T00:00:00Z"}, "timestamp"),
    ({"timestamp": "9500-01-01T00:00:00Z"}, "timestamp"),
    ({"timestamp": "2024-07-01T12:00:00Z", "sentAt": "0001-01-01T00:00:00+14:00"}, "sentAt"),
    ({"sentAt": "0001-01-01T00:00:00+14:00"}, "sentAt"),
    ({"timestamp": "2024-07-01T12:00:00Z", "sentAt": "9999-12-31T23:59:59Z"}, "sentAt"),
    ({"timestamp": "1901-01-01T00:00:00Z", "sentAt": "8999-01-01T00:00:00Z"}, "timestamp"),  # corrected: before 1900
]


class TestCalendarEnds:
    @pytest.mark.parametrize(("fields", "named"), CALENDAR_ENDS)
    async def test_a_time_at_the_calendars_end_rejects_that_message_alone(self, client, fields, named):
        bad = track("cal-bad", userId="u-cal", **fields)
        answer = await send_batch(client, [track("cal-before", userId="u-cal"), bad, track("cal-after", userId="u-cal")])
        assert answer["accepted"] == 2
        [rejected] = answer["rejected"]
        assert (rejected["index"], rejected["messageId"]) == (1, "cal-bad")
        assert f"'{named}'" in rejected["reason"] and "1900" in rejected["reason"], rejected["reason"]
        [kept] = await quarantine(client)
        assert kept["message"] == bad and kept["reason"] == rejected["reason"]
        assert {i["event_id"] for i in await wait_for_events(client, "u-cal", "cal-before", "cal-after")} == {
            "cal-before", "cal-after"}

    async def test_a_batch_sent_at_at_the_calendars_end_rejects_its_messages_with_a_timestamp(self, client):
        answer = await send_batch(client, [track("bsa-1", userId="u-bsa", timestamp="2024-07-01T12:00:00Z"),
                                           track("bsa-2", userId="u-bsa")], sentAt="0001-01-01T00:00:00+14:00")
        assert answer["accepted"] == 0
        assert [(r["messageId"], "'sentAt'" in r["reason"]) for r in answer["rejected"]] == [("bsa-1", True), ("bsa-2", True)]

    async def test_the_last_accepted_moments_are_kept_as_sent(self, client):
        answer = await send_batch(client, [track("cal-first", userId="u-edge", timestamp="1900-01-01T00:00:00Z"),
                                           track("cal-last", userId="u-edge", timestamp="8999-12-31T23:59:59Z")])
        assert answer == {"success": True, "accepted": 2, "rejected": []}
        items = {i["event_id"]: i["occurred_at"] for i in await wait_for_events(client, "u-edge", "cal-first", "cal-last")}
        assert items == {"cal-first": "1900-01-01T00:00:00Z", "cal-last": "8999-12-31T23:59:59Z"}

    async def test_a_single_track_at_the_calendars_end_is_a_200_that_rejects_it(self, client):
        response = await send(client, "/v1/track", track("cal-one", userId="u-one", timestamp="0001-01-01T00:00:00+14:00"))
        assert response.status_code == 200, response.text
        assert response.json()["accepted"] == 0 and len(response.json()["rejected"]) == 1


def nested(levels: int, leaf: object = 1, array: bool = False) -> object:
    """A value `levels` objects (or arrays) deep: nested(2) == {"a": {"a": 1}}."""
    value = leaf
    for _ in range(levels):
        value = [value] if array else {"a": value}
    return value


async def send_deep(client, path: str, body: object):
    """As `send`, for bodies deeper than orjson writes (254 levels): what a client's own JSON writer sends."""
    return await client.post(path, content=json.dumps(body), headers={**basic(WRITE_KEY), "Content-Type": "application/json"})


async def send_deep_batch(client, messages: list, **extra: object) -> dict:
    response = await send_deep(client, "/v1/batch", {"batch": messages, **extra})
    assert response.status_code == 200, response.text
    return response.json()


class TestNestingDepth:
    """At most 64 levels of objects and arrays in any field: what every consumer can decode (the
    bus contract's decoder stops at 200 levels of the whole event, orjson writes at most 254)."""

    @pytest.mark.parametrize("field", ["properties", "traits", "context", "custom"])
    @pytest.mark.parametrize("levels", [65, 253, 600])
    async def test_a_field_nested_deeper_than_64_levels_rejects_that_message_alone(self, client, field, levels):
        deep = track("deep-bad", userId="u-deep", **{field: nested(levels)})
        answer = await send_deep_batch(client, [track("deep-before", userId="u-deep"), deep])
        assert answer["accepted"] == 1
        [rejected] = answer["rejected"]
        assert (rejected["index"], rejected["messageId"]) == (1, "deep-bad")
        assert f"'{field}'" in rejected["reason"] and "64" in rejected["reason"], rejected["reason"]
        [kept] = await quarantine(client)
        assert (kept["message_id"], kept["reason"]) == ("deep-bad", rejected["reason"])
        assert kept["message"]["event"] == "Product Viewed"
        assert [i["event_id"] for i in await wait_for_events(client, "u-deep", "deep-before")] == ["deep-before"]

    def test_the_limit_sits_well_below_where_the_consumers_decoder_and_orjson_stop(self):
        """Where decoding really fails, so the limit is known safe (and this fails if a library moves it)."""
        from pydantic import ValidationError

        from services.ingest.messages import MAX_NESTING
        from shared.events import Interaction

        def event_with_extra(levels: int) -> str:  # the deepest field of an event: extra.<name>
            return json.dumps({"event_id": "e", "customer_id": "c", "type": "track", "occurred_at": "2024-01-01T00:00:00Z",
                               "received_at": "2024-01-01T00:00:00Z", "extra": {"custom": nested(levels)}})

        Interaction.model_validate_json(event_with_extra(198))  # 200 levels in all: pydantic's JSON parser's limit
        with pytest.raises(ValidationError, match="recursion limit"):
            Interaction.model_validate_json(event_with_extra(199))
        orjson.dumps(nested(254))
        with pytest.raises(orjson.JSONEncodeError):
            orjson.dumps(nested(255))
        assert MAX_NESTING + 2 <= 198 // 2  # the accepted depth is under half of either

    async def test_arrays_count_as_levels_too(self, client):
        answer = await send_deep_batch(client, [track("arr-ok", userId="u-arr", properties={"a": nested(63, array=True)}),
                                           track("arr-bad", userId="u-arr", properties={"a": nested(64, array=True)})])
        assert answer["accepted"] == 1 and [r["messageId"] for r in answer["rejected"]] == ["arr-bad"]

    async def test_a_batch_context_nested_too_deep_rejects_every_message_it_would_join(self, client):
        answer = await send_deep_batch(client, [track("bc-1", userId="u-bc"), track("bc-2", userId="u-bc")],
                                  context=nested(65))
        assert answer["accepted"] == 0
        assert all("batch's 'context'" in r["reason"] for r in answer["rejected"]), answer

    async def test_exactly_64_levels_are_accepted_and_on_the_timeline_as_sent(self, client):
        properties = {"deep": nested(63)}
        answer = await send_deep_batch(client, [track("deep-ok", userId="u-deep-ok", properties=properties)])
        assert answer == {"success": True, "accepted": 1, "rejected": []}
        [item] = await wait_for_events(client, "u-deep-ok", "deep-ok")
        assert item["properties"] == properties

    async def test_many_objects_side_by_side_are_not_depth(self, client):
        """Hundreds of brackets (items of an order, braces inside text) at a shallow depth."""
        properties = {"items": [{"sku": f"S-{i}", "tags": [i]} for i in range(200)], "note": "{[" * 300}
        answer = await send_deep_batch(client, [track("wide-ok", userId="u-wide", properties=properties)])
        assert answer == {"success": True, "accepted": 1, "rejected": []}
        [item] = await wait_for_events(client, "u-wide", "wide-ok")
        assert item["properties"] == properties

    async def test_a_single_track_nested_600_levels_is_a_200_that_rejects_it(self, client):
        response = await send_deep(client, "/v1/track", track("deep-one", userId="u-one", properties=nested(600)))
        assert response.status_code == 200, response.text
        assert response.json()["accepted"] == 0 and len(response.json()["rejected"]) == 1


def order(message_id: str, event: str = "Order Completed", **properties: object) -> dict:
    return track(message_id, event, userId="u-money", properties=properties)


class TestMoney:
    """An amount the services add up (`revenue` on any track; `total` and `value` of an order) is a
    finite number, or numeric text, from -1e12 to 1e12; an order's is not negative (a refund is an
    `Order Refunded`, whose amount may be written either way)."""

    @pytest.mark.parametrize(("properties", "field"), [
        ({"revenue": 1.7e308}, "properties.revenue"),
        ({"revenue": 1e12 + 1}, "properties.revenue"),
        ({"revenue": -5}, "properties.revenue"),
        ({"revenue": "1e999"}, "properties.revenue"),
        ({"revenue": "NaN"}, "properties.revenue"),
        ({"revenue": "n/a", "total": 7}, "properties.revenue"),
        ({"revenue": True}, "properties.revenue"),
        ({"revenue": {"amount": 5}}, "properties.revenue"),
        ({"total": -0.01}, "properties.total"),
        ({"revenue": 10, "value": 1e300}, "properties.value"),
    ])
    async def test_an_order_with_an_amount_out_of_range_is_rejected_alone(self, client, properties, field):
        answer = await send_batch(client, [order("m-ok", revenue=25), order("m-bad", **properties)])
        assert answer["accepted"] == 1
        [rejected] = answer["rejected"]
        assert rejected["messageId"] == "m-bad" and f"'{field}'" in rejected["reason"], rejected["reason"]
        [kept] = await quarantine(client)
        assert (kept["message_id"], kept["reason"]) == ("m-bad", rejected["reason"])

    @pytest.mark.parametrize("properties", [{"revenue": 1.7e308}, {"revenue": -1}, {"revenue": "lots"}])
    async def test_revenue_on_any_event_is_checked(self, client, properties):
        answer = await send_batch(client, [order("m-any", "Checkout Started", **properties)])
        if properties["revenue"] == -1:  # a negative amount is only refused on an order
            assert answer["accepted"] == 1
        else:
            assert answer["accepted"] == 0 and "'properties.revenue'" in answer["rejected"][0]["reason"]

    async def test_amounts_in_range_are_accepted_refunds_negative_too(self, client):
        messages = [order("m-max", revenue=1e12), order("m-zero", total=0), order("m-text", revenue="12.50"),
                    order("m-null", revenue=None, value=3), order("r-neg", "Order Refunded", revenue=-25.5),
                    order("r-pos", "Order Refunded", total=25.5), order("m-other", "Form Submitted", value="abc", total=-3)]
        answer = await send_batch(client, messages)
        assert answer == {"success": True, "accepted": len(messages), "rejected": []}

    async def test_a_refund_beyond_the_range_is_rejected(self, client):
        answer = await send_batch(client, [order("r-huge", "Order Refunded", revenue=-1e13)])
        assert answer["accepted"] == 0 and "'properties.revenue'" in answer["rejected"][0]["reason"]


class TestQuarantineBound:
    """The quarantine keeps the newest INGEST_QUARANTINE_MAX_ROWS rejected messages: a client that
    sends only bad messages cannot fill the disk."""

    @pytest.fixture
    def ingest_db_url(self, store_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
        monkeypatch.setenv("INGEST_QUARANTINE_MAX_ROWS", "3")
        return store_url

    async def test_the_periodic_prune_keeps_the_newest_rows(self, client, ingest, gateway_app):
        from services.ingest.jobs import prune

        bad = [{"type": "track", "messageId": f"q-{n}", "userId": "u-q"} for n in range(5)]  # no event: rejected
        await send_batch(client, bad[:2])
        await send_batch(client, bad[2:])
        assert len(await quarantine(client)) == 5  # kept until the periodic work runs
        await prune(ingest, gateway_app.state.upstreams["ingest"].app.state.settings)
        assert [q["message_id"] for q in await quarantine(client)] == ["q-4", "q-3", "q-2"]
        await prune(ingest, gateway_app.state.upstreams["ingest"].app.state.settings)  # nothing more to do
        assert len(await quarantine(client)) == 3

    def test_the_default_bound_is_a_hundred_thousand_rows(self, monkeypatch: pytest.MonkeyPatch):
        from services.ingest.settings import IngestSettings

        monkeypatch.delenv("INGEST_QUARANTINE_MAX_ROWS", raising=False)
        assert IngestSettings().quarantine_max_rows == 100_000


class TestBatchContext:
    """The batch's `context` joins every message: it counts toward each message's 32 KB, and a
    batch may copy it into messages for at most INGEST_MAX_REQUEST_BYTES in all, so one request
    never stores more than twice its limit (a 400 KB context over 2,500 tiny messages was 1 GB)."""

    async def test_a_message_over_32_kb_with_the_batch_context_is_rejected(self, client):
        context = {"blob": "x" * (31 * 1024)}
        answer = await send_batch(client, [track("bc-small", userId="u-bc"),
                                           track("bc-big", userId="u-bc", properties={"note": "y" * 2048})], context=context)
        assert answer["accepted"] == 1
        [rejected] = answer["rejected"]
        assert rejected["messageId"] == "bc-big" and "batch's 'context'" in rejected["reason"], rejected["reason"]

    async def test_copies_of_the_batch_context_stop_at_the_request_limit(self, client):
        context = {"blob": "x" * (30 * 1024)}  # a little over 30 KB: 16 copies fit in 500 KB, not 17
        messages = [track(f"bcc-{n}", userId="u-bcc") for n in range(20)]
        answer = await send_batch(client, messages, context=context)
        assert answer["accepted"] == 16
        assert [r["messageId"] for r in answer["rejected"]] == [f"bcc-{n}" for n in range(16, 20)]
        assert all("batch's 'context'" in r["reason"] for r in answer["rejected"])
        assert len(await wait_for_events(client, "u-bcc", *(f"bcc-{n}" for n in range(16)))) == 16

"""Who an event belongs to, and forgetting them: SDK retries counted once, anonymous visitors
stitched to the user they become, and erasure. On SQLite and on PostgreSQL."""
from __future__ import annotations

import pytest

from shared.events import CUSTOMERS
from tests.helpers import ADMIN, READER
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


@pytest.fixture
def ingest_db_url(store_url: str) -> str:
    return store_url


async def settled(client, name: str) -> None:
    """Everything sent before has been applied: a marker sent now has reached the timeline."""
    await send_batch(client, [track(f"marker-{name}", userId="marker")])
    await wait_for_events(client, "marker", f"marker-{name}")


class TestSdkRetries:
    async def test_the_same_batch_sent_twice_is_acknowledged_twice_and_stored_once(self, client):
        batch = [track("r-1", userId="u-retry"), track("r-2", userId="u-retry", event="Product Added")]
        first, second = await send_batch(client, batch), await send_batch(client, batch)
        assert first == second == {"success": True, "accepted": 2, "rejected": []}
        await settled(client, "retry")
        assert sorted(ids_of(await full_timeline(client, "u-retry"))) == ["r-1", "r-2"]

    async def test_a_message_id_repeated_inside_one_batch_is_stored_once(self, client):
        batch = [track("dup-1", userId="u-dup", properties={"n": 1}), track("dup-1", userId="u-dup", properties={"n": 2}),
                 track("dup-2", userId="u-dup")]
        assert (await send_batch(client, batch))["accepted"] == 3
        await settled(client, "dup")
        items = {i["event_id"]: i for i in await full_timeline(client, "u-dup")}
        assert sorted(items) == ["dup-1", "dup-2"]
        assert items["dup-1"]["properties"] == {"n": 1}  # the first one sent

    async def test_a_retry_through_another_endpoint_is_still_a_retry(self, client):
        await send_ok(client, "/v1/track", {"messageId": "ep-1", "userId": "u-ep", "event": "Clicked"})
        await send_batch(client, [track("ep-1", userId="u-ep", event="Clicked")])
        await settled(client, "ep")
        assert ids_of(await full_timeline(client, "u-ep")) == ["ep-1"]


class TestIdentityStitching:
    async def test_an_anonymous_visitors_events_before_and_after_identify_are_the_users(self, client):
        await send_batch(client, [track("a-1", anonymousId="anon-1", timestamp="2024-06-01T10:00:00Z"),
                                  {"type": "page", "messageId": "a-2", "anonymousId": "anon-1", "name": "Pricing",
                                   "timestamp": "2024-06-01T10:01:00Z"}])
        await wait_for_events(client, "anon-1", "a-1", "a-2")  # stored under the anonymous id first
        await send_batch(client, [{"type": "identify", "messageId": "a-3", "userId": "user-1", "anonymousId": "anon-1",
                                   "traits": {"email": "grace@example.com"}, "timestamp": "2024-06-01T10:02:00Z"}])
        await send_batch(client, [track("a-4", anonymousId="anon-1", event="Checkout Started",
                                        timestamp="2024-06-01T10:03:00Z")])

        items = await wait_for_events(client, "user-1", "a-1", "a-2", "a-3", "a-4")
        assert ids_of(items) == ["a-4", "a-3", "a-2", "a-1"]
        assert {i["customer_id"] for i in items} == {"user-1"}
        assert await full_timeline(client, "anon-1") == items  # asked by the anonymous id: the user's

    async def test_events_earlier_in_the_same_batch_as_the_identify_are_stitched(self, client):
        await send_batch(client, [track("s-1", anonymousId="anon-s"),
                                  {"type": "identify", "messageId": "s-2", "userId": "user-s", "anonymousId": "anon-s"}])
        items = await wait_for_events(client, "user-s", "s-1", "s-2")
        assert {i["customer_id"] for i in items} == {"user-s"}

    async def test_any_message_with_both_ids_links_them(self, client):
        await send_batch(client, [track("b-1", anonymousId="anon-b")])
        await wait_for_events(client, "anon-b", "b-1")
        await send_batch(client, [track("b-2", anonymousId="anon-b", userId="user-b", event="Signed Up")])
        assert sorted(ids_of(await wait_for_events(client, "user-b", "b-1", "b-2"))) == ["b-1", "b-2"]
        assert sorted(ids_of(await full_timeline(client, "anon-b"))) == ["b-1", "b-2"]

    async def test_alias_moves_the_previous_ids_events_to_the_new_id(self, client):
        await send_batch(client, [track("al-1", userId="crm-42", event="Lead Created")])
        await wait_for_events(client, "crm-42", "al-1")
        await send_ok(client, "/v1/alias", {"messageId": "al-2", "previousId": "crm-42", "userId": "user-al"})
        await send_batch(client, [track("al-3", userId="crm-42", event="Order Completed")])
        items = await wait_for_events(client, "user-al", "al-1", "al-2", "al-3")
        assert {i["customer_id"] for i in items} == {"user-al"}
        assert sorted(ids_of(await full_timeline(client, "crm-42"))) == ["al-1", "al-2", "al-3"]

    async def test_an_anonymous_id_stays_with_the_first_user_it_was_linked_to(self, client):
        await send_batch(client, [{"type": "identify", "messageId": "f-1", "userId": "user-a", "anonymousId": "shared-device"}])
        await wait_for_events(client, "user-a", "f-1")
        await send_batch(client, [track("f-2", userId="user-b", anonymousId="shared-device", event="Signed Up")])
        await send_batch(client, [track("f-3", anonymousId="shared-device")])

        assert ids_of(await wait_for_events(client, "user-b", "f-2")) == ["f-2"]  # the message counts for B
        assert sorted(ids_of(await wait_for_events(client, "user-a", "f-1", "f-3"))) == ["f-1", "f-3"]
        assert sorted(ids_of(await full_timeline(client, "shared-device"))) == ["f-1", "f-3"]

    async def test_ids_linked_to_a_user_follow_that_user_when_it_is_aliased(self, client):
        await send_batch(client, [{"type": "identify", "messageId": "c-1", "userId": "old-user", "anonymousId": "anon-c"},
                                  track("c-2", anonymousId="anon-c")])
        await wait_for_events(client, "old-user", "c-1", "c-2")
        await send_batch(client, [{"type": "alias", "messageId": "c-3", "previousId": "old-user", "userId": "new-user"}])
        await send_batch(client, [track("c-4", anonymousId="anon-c")])
        items = await wait_for_events(client, "new-user", "c-1", "c-2", "c-3", "c-4")
        assert {i["customer_id"] for i in items} == {"new-user"}
        assert await full_timeline(client, "anon-c") == items == await full_timeline(client, "old-user")

    async def test_aliasing_back_and_forth_does_not_loop(self, client):
        await send_batch(client, [{"type": "alias", "messageId": "l-1", "previousId": "id-x", "userId": "id-y"}])
        await send_batch(client, [{"type": "alias", "messageId": "l-2", "previousId": "id-y", "userId": "id-x"}])
        await send_batch(client, [track("l-3", userId="id-x")])
        items = await wait_for_events(client, "id-y", "l-1", "l-2", "l-3")
        assert await full_timeline(client, "id-x") == items


class TestRequestsAppliedTogether:
    """The pipeline applies the requests waiting in the inbox together, in one transaction: what
    comes out is what applying them one by one gives."""

    async def test_requests_waiting_together_are_deduped_and_stitched_in_the_order_they_came(self, client, gateway_app, bus):
        pipeline = gateway_app.state.upstreams["ingest"].app.state.pipeline
        async with pipeline._lock:  # the pipeline is busy: the three requests wait in the inbox
            await send_batch(client, [track("w-1", anonymousId="anon-w"), track("w-dup", userId="user-w")])
            await send_batch(client, [{"type": "identify", "messageId": "w-2", "userId": "user-w", "anonymousId": "anon-w"}])
            await send_batch(client, [track("w-dup", userId="user-w"),
                                      {"type": "alias", "messageId": "w-3", "previousId": "user-w", "userId": "user-v"},
                                      track("w-4", anonymousId="anon-w")])
        items = await wait_for_events(client, "user-v", "w-1", "w-dup", "w-2", "w-3", "w-4")
        assert sorted(ids_of(items)) == ["w-1", "w-2", "w-3", "w-4", "w-dup"]  # the retry stored once
        assert {i["customer_id"] for i in items} == {"user-v"}
        assert await full_timeline(client, "anon-w") == items == await full_timeline(client, "user-w")
        linked = await bus.payloads(CUSTOMERS, lambda ps: len(ps) >= 2)
        into = {p["merged_id"]: p["customer_id"] for p in linked}  # anon-w to user-w or straight to user-v
        assert sorted(into) == ["anon-w", "user-w"]
        assert into["user-w"] == "user-v" and into.get(into["anon-w"], into["anon-w"]) == "user-v"


class TestErasure:
    async def _customer_with_history(self, client) -> None:
        await send_batch(client, [
            track("e-1", anonymousId="anon-e"),
            {"type": "identify", "messageId": "e-2", "userId": "user-e", "anonymousId": "anon-e",
             "traits": {"email": "erase@example.com"}},
            {"type": "alias", "messageId": "e-3", "previousId": "crm-e", "userId": "user-e"},
            {"type": "track", "messageId": "e-bad", "userId": "user-e"},  # quarantined: no event
            {"type": "track", "messageId": "e-bad-anon", "anonymousId": "anon-e", "event": ""},
            {"type": "track", "messageId": "other-bad", "userId": "user-other"},
            track("o-1", userId="user-other"),
        ])
        await wait_for_events(client, "user-e", "e-1", "e-2", "e-3")
        await wait_for_events(client, "user-other", "o-1")

    async def test_erasure_needs_an_admin_key(self, client):
        assert_error(await client.delete("/api/customers/user-e"), 401, "missing_api_key")
        assert_error(await client.delete("/api/customers/user-e", headers=READER), 403, "admin_required")

    async def test_after_erasure_no_timeline_answers_for_the_customer_or_its_merged_ids(self, client):
        await self._customer_with_history(client)
        response = await client.delete("/api/customers/user-e", headers=ADMIN)
        assert response.status_code == 202
        body = response.json()
        assert body["customer_id"] == "user-e" and sorted(body["merged_ids"]) == ["anon-e", "crm-e"]
        for customer_id in ("user-e", "anon-e", "crm-e"):
            assert_error(await timeline_page(client, customer_id), 404, "not_found")
        assert ids_of(await full_timeline(client, "user-other")) == ["o-1"]

    async def test_the_customers_quarantined_messages_are_erased_and_no_one_elses(self, client):
        await self._customer_with_history(client)
        assert {q["message_id"] for q in await quarantine(client)} == {"e-bad", "e-bad-anon", "other-bad"}
        assert (await client.delete("/api/customers/user-e", headers=ADMIN)).status_code == 202
        assert [q["message_id"] for q in await quarantine(client)] == ["other-bad"]

    async def test_events_still_on_their_way_are_erased_too(self, client):
        await send_batch(client, [track(f"w-{n}", userId="user-w") for n in range(20)])
        assert (await client.delete("/api/customers/user-w", headers=ADMIN)).status_code == 202  # no wait before
        await settled(client, "erasure")
        assert_error(await timeline_page(client, "user-w"), 404, "not_found")

    async def test_an_erased_customer_who_comes_back_starts_afresh(self, client):
        await self._customer_with_history(client)
        await client.delete("/api/customers/user-e", headers=ADMIN)
        await send_batch(client, [track("back-1", anonymousId="anon-e")])
        items = await wait_for_events(client, "anon-e", "back-1")
        assert ids_of(items) == ["back-1"] and items[0]["customer_id"] == "anon-e"
        assert_error(await timeline_page(client, "user-e"), 404, "not_found")

"""What the other services see of ingest: canonical events on `interactions.v1`, identity links
and erasures on `customers.v1`, read by a second bus client in a consumer group of its own."""
from __future__ import annotations

from shared.events import CUSTOMERS, INTERACTIONS, Interaction
from tests.helpers import ADMIN
from tests.ingest.support import send_batch, track, wait_for_events

CANONICAL_FIELDS = {"event_id", "customer_id", "user_id", "anonymous_id", "type", "name", "properties", "traits",
                    "context", "channel", "occurred_at", "received_at"}


def having(*event_ids: str):
    return lambda payloads: set(event_ids) <= {p.get("event_id") for p in payloads}


class TestInteractions:
    async def test_each_accepted_message_is_one_canonical_event_keyed_by_its_stitched_customer(self, client, bus):
        await send_batch(client, [
            track("i-1", anonymousId="anon-i", properties={"sku": "S-1"},
                  context={"campaign": {"source": "newsletter", "medium": "email"}}),
            {"type": "identify", "messageId": "i-2", "userId": "user-i", "anonymousId": "anon-i",
             "traits": {"plan": "pro"}},
        ])
        await send_batch(client, [track("i-3", anonymousId="anon-i", timestamp="2024-02-02T08:00:00+01:00")])
        events = {p["event_id"]: p for p in await bus.payloads(INTERACTIONS, having("i-1", "i-2", "i-3"))}

        for event in events.values():
            assert CANONICAL_FIELDS <= set(event)
            assert event["_type"] == "Interaction" and event["_key"] == event["customer_id"]
            Interaction.model_validate({k: v for k, v in event.items() if not k.startswith("_")})
        assert events["i-1"]["customer_id"] == "user-i"  # the link is in the same batch: stitched already
        assert events["i-1"]["channel"] == "email" and events["i-1"]["properties"] == {"sku": "S-1"}
        assert events["i-2"]["traits"] == {"plan": "pro"} and events["i-2"]["channel"] == "direct"
        assert events["i-3"]["customer_id"] == "user-i" and events["i-3"]["anonymous_id"] == "anon-i"
        assert events["i-3"]["occurred_at"] == "2024-02-02T07:00:00Z"

    async def test_a_retried_batch_is_not_published_again(self, client, bus):
        batch = [track("rp-1", userId="user-rp"), track("rp-2", userId="user-rp")]
        await send_batch(client, batch)
        await send_batch(client, batch)
        await send_batch(client, [track("rp-marker", userId="user-rp")])  # applied and relayed after the retry
        payloads = await bus.payloads(INTERACTIONS, having("rp-marker"))
        assert sorted(p["event_id"] for p in payloads) == ["rp-1", "rp-2", "rp-marker"]


class TestCustomerRecords:
    async def test_an_identify_publishes_customer_linked_once(self, client, bus):
        await send_batch(client, [track("k-1", anonymousId="anon-k")])
        await wait_for_events(client, "anon-k", "k-1")
        identify = {"type": "identify", "messageId": "k-2", "userId": "user-k", "anonymousId": "anon-k"}
        await send_batch(client, [identify])
        await send_batch(client, [identify | {"messageId": "k-3"}])  # the same link again: nothing new
        await send_batch(client, [track("k-marker", userId="user-k")])
        await bus.payloads(INTERACTIONS, having("k-marker"))
        records = await bus.payloads(CUSTOMERS, lambda ps: any(p["_type"] == "CustomerLinked" for p in ps))
        linked = [p for p in records if p["_type"] == "CustomerLinked"]
        assert [(p["customer_id"], p["merged_id"], p["_key"]) for p in linked] == [("user-k", "anon-k", "user-k")]

    async def test_a_second_user_on_a_linked_device_publishes_no_link(self, client, bus):
        await send_batch(client, [{"type": "identify", "messageId": "d-1", "userId": "user-d1", "anonymousId": "device"}])
        await send_batch(client, [{"type": "identify", "messageId": "d-2", "userId": "user-d2", "anonymousId": "device"}])
        interactions = await bus.payloads(INTERACTIONS, having("d-1", "d-2"))
        assert {p["event_id"]: p["customer_id"] for p in interactions} == {"d-1": "user-d1", "d-2": "user-d2"}
        linked = await bus.payloads(CUSTOMERS, lambda ps: len(ps) >= 1)
        assert [(p["customer_id"], p["merged_id"]) for p in linked] == [("user-d1", "device")]

    async def test_an_erasure_publishes_customer_erased_with_the_merged_ids(self, client, bus):
        await send_batch(client, [{"type": "identify", "messageId": "x-1", "userId": "user-x", "anonymousId": "anon-x"},
                                  {"type": "alias", "messageId": "x-2", "previousId": "crm-x", "userId": "user-x"}])
        await wait_for_events(client, "user-x", "x-1", "x-2")
        assert (await client.delete("/api/customers/user-x", headers=ADMIN)).status_code == 202
        records = await bus.payloads(CUSTOMERS, lambda ps: any(p["_type"] == "CustomerErased" for p in ps))
        [erased] = [p for p in records if p["_type"] == "CustomerErased"]
        assert erased["customer_id"] == "user-x" and erased["_key"] == "user-x"
        assert sorted(erased["merged_ids"]) == ["anon-x", "crm-x"]
        assert erased["at"].endswith("Z")

"""Real shop data (UCI Online Retail, via bench.retail) as a web SDK would send it."""
from __future__ import annotations

from collections import defaultdict

from bench.retail import messages
from tests.helpers import eventually
from tests.retail_data import online_retail
from tests.ingest.support import full_timeline, send_batch


class TestRetailOrders:
    async def test_300_real_orders_in_three_batches_are_all_accepted_and_on_their_customers_timelines(self, client):
        orders = messages(300, online_retail())
        for start in range(0, 300, 100):
            answer = await send_batch(client, orders[start:start + 100])
            assert answer == {"success": True, "accepted": 100, "rejected": []}

        expected: dict[str, set[str]] = defaultdict(set)
        for order in orders:
            expected[order.get("userId") or order["anonymousId"]].add(order["messageId"])

        async def all_visible() -> dict[str, list[dict]] | None:
            seen = {customer: await full_timeline(client, customer) for customer in expected}
            complete = all({i["event_id"] for i in items} == expected[c] for c, items in seen.items())
            return seen if complete else None

        timelines = await eventually(all_visible)
        by_id = {order["messageId"]: order for order in orders}
        for customer, items in timelines.items():
            for item in items:
                sent = by_id[item["event_id"]]
                assert item["customer_id"] == customer and item["name"] == sent["event"]
                assert item["properties"] == sent["properties"]
                assert item["channel"] in {"ads", "email", "social", "search", "direct"}
            assert [i["occurred_at"] for i in items] == sorted((i["occurred_at"] for i in items), reverse=True)
        channels = {i["channel"] for items in timelines.values() for i in items}
        assert channels == {"ads", "email", "social", "search", "direct"}

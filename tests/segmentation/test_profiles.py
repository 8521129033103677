"""A customer's profile as the API shows it: traits, activity, orders and revenue, first-touch
channel, lifecycle stage with its reasons; duplicates and identity merges. SQLite and PostgreSQL."""
from __future__ import annotations

import pytest

from shared.bus.base import OutgoingRecord
from shared.events import INTERACTIONS
from tests.segmentation.support import (
    BASIC,
    Segmentation,
    at,
    identify,
    interaction,
    order,
    page,
    track,
)


@pytest.fixture
def segmentation_db_url(store_url: str) -> str:
    return store_url


EMAIL_VISIT = {"page": {"url": "https://shop.example/?utm_source=newsletter&utm_medium=email"}}
SEARCH_VISIT = {"page": {"url": "https://shop.example/", "referrer": "https://www.google.com/search?q=shoes"}}


class TestProfile:
    async def test_identify_traits_merge_and_a_late_older_identify_does_not_overwrite_newer_values(
        self, seg: Segmentation
    ) -> None:
        await seg.send(identify("i-new", "ann", days=-1, plan="pro", name="Ann"))
        await seg.send(identify("i-old", "ann", days=-5, plan="free", name="Annie", city="Paris"))
        profile = await seg.profile("ann")
        assert profile["customer_id"] == "ann"
        assert profile["traits"] == {"plan": "pro", "name": "Ann", "city": "Paris"}
        assert (profile["first_seen"], profile["last_seen"], profile["event_count"]) == (at(-5), at(-1), 2)

    async def test_orders_add_up_whichever_amount_field_they_carry(self, seg: Segmentation) -> None:
        await seg.send(
            page("p-1", "bob", days=-3),
            order("o-rev", "bob", days=-2, revenue=10, total=999, value=999),
            order("o-total", "bob", days=-1, total="20.5", value=999),
            order("o-value", "bob", days=0, value=30),
            order("o-text", "bob", days=-1.5, revenue="12.50"),
            order("o-null", "bob", days=-1.2, revenue=None, total=7),
            track("t-1", "bob", "Product Viewed", days=-4),
        )
        profile = await seg.profile("bob")
        assert profile["event_count"] == 7
        assert profile["order_count"] == 5
        assert profile["revenue"] == pytest.approx(80.0)
        assert profile["avg_order_value"] == pytest.approx(80.0 / 5)
        assert profile["last_order_at"] == at(0)
        assert (profile["first_seen"], profile["last_seen"]) == (at(-4), at(0))

    async def test_an_amount_out_of_range_is_rejected_at_ingest_and_leaves_the_profile_alone(self, seg: Segmentation) -> None:
        """'NaN' and '1e999' parse as floats; two amounts of 1.7e308 add up to infinity (shown as null)."""
        await seg.send(order("o-kim", "kim", days=-3, revenue=5))
        for properties in ({"revenue": "NaN", "total": 5}, {"revenue": "1e999"}, {"revenue": 1.7e308},
                           {"revenue": -20}, {"revenue": "n/a", "total": 7}):
            response = await seg.client.post("/v1/batch", json={"batch": [order("o-bad", "kim", days=-1, **properties)]},
                                             headers=BASIC)
            assert response.status_code == 200 and response.json()["accepted"] == 0, response.text
        await seg.settle()
        profile = await seg.profile("kim")
        assert (profile["event_count"], profile["order_count"], profile["revenue"]) == (1, 1, 5.0)

    async def test_an_amount_out_of_range_on_the_bus_counts_as_no_amount(self, seg: Segmentation) -> None:
        """Records written before ingest checked amounts (or by another producer): not a finite
        number from 0 to 1e12, an order counts with no amount, so revenue is never inf or NaN."""
        amounts = [5.0, "NaN", 1.7e308, 1.7e308, -20.0, 1e12, float("inf")]
        await seg.publish(*(interaction(f"o-{i}", "kim", "Order Completed", -1, revenue=a) for i, a in enumerate(amounts)))
        profile = await seg.profile("kim")
        assert (profile["event_count"], profile["order_count"], profile["revenue"]) == (7, 7, 5.0 + 1e12)
        assert profile["avg_order_value"] == pytest.approx((5.0 + 1e12) / 7)

    async def test_a_refund_is_an_event_not_an_order(self, seg: Segmentation) -> None:
        await seg.send(order("o-1", "lea", days=-3, revenue=40),
                       track("r-1", "lea", "Order Refunded", days=-1) | {"properties": {"revenue": -40}})
        profile = await seg.profile("lea")
        assert (profile["event_count"], profile["order_count"], profile["revenue"]) == (2, 1, 40.0)

    async def test_first_touch_channel_is_the_earliest_events_even_when_it_arrives_late(self, seg: Segmentation) -> None:
        await seg.send(page("p-email", "dee", days=3, context=EMAIL_VISIT))
        assert (await seg.profile("dee"))["channel"] == "email"
        await seg.send(page("p-search", "dee", days=1, context=SEARCH_VISIT))
        await seg.send(page("p-direct", "dee", days=2))
        assert (await seg.profile("dee"))["channel"] == "search"


class TestLifecycleStages:
    async def test_each_stage_is_reached_with_its_segment_and_reason(self, seg: Segmentation) -> None:
        await seg.send(
            page("p-pot", "pot", days=-1),
            order("o-new", "new", days=-1, revenue=5),
            order("o-act-1", "act", days=-20, revenue=5), order("o-act-2", "act", days=-2, revenue=5),
            *(order(f"o-loy-{i}", "loy", days=-10 * i, revenue=5) for i in range(1, 4)),
            *(order(f"o-risk-{i}", "risk", days=-100 - i, revenue=5) for i in range(1, 4)),
            order("o-gone", "gone", days=-200, revenue=5),
        )
        expected = {"pot": "potential", "new": "new", "act": "active", "loy": "loyal", "risk": "at_risk",
                    "gone": "churned"}
        for customer, stage in expected.items():
            profile = await seg.profile(customer)
            assert profile["lifecycle"] == stage
            assert [s for s in profile["segments"] if s.startswith("lifecycle:")] == [f"lifecycle:{stage}"]
            assert profile["why"][f"lifecycle:{stage}"]["since"] == at(0)
            assert await seg.members(f"lifecycle:{stage}") == [customer]
        visitor = await seg.profile("pot")
        assert (visitor["order_count"], visitor["revenue"], visitor["last_order_at"], visitor["avg_order_value"]) == (
            0, 0.0, None, None)
        assert (visitor["rfm"], visitor["value_tier"], visitor["frequency_tier"]) == (None, None, None)
        why = {c: (await seg.profile(c))["why"][f"lifecycle:{s}"]["reason"] for c, s in expected.items()}
        assert why["pot"] == "no order yet"
        assert "1 order" in why["new"] and "1.0 days ago" in why["new"]
        assert "3 orders" in why["loy"] and ">= 3" in why["loy"]
        assert "101.0 days ago" in why["risk"] and "> 90" in why["risk"]
        assert "200.0 days ago" in why["gone"] and "> 180" in why["gone"]


class TestDuplicates:
    async def test_an_order_delivered_twice_counts_once(self, seg: Segmentation) -> None:
        """An SDK retry (same messageId), and the ingest pipeline publishing again under the same
        ids after a crash before its commit."""
        await seg.send(order("o-1", "fay", days=-1, revenue=25))
        await seg.send(order("o-1", "fay", days=-1, revenue=25))
        await seg.send(order("o-2", "gus", days=-1, revenue=25))
        (published,) = await seg.published(INTERACTIONS, "o-2")
        again = OutgoingRecord(published.topic, published.key, published.value, published.headers)
        await seg.runtime.bus.publish([again, again])
        await seg.send(page("p-after", "gus", days=0))  # same customer, same partition: applied after
        fay, gus = await seg.profile("fay"), await seg.profile("gus")
        assert (fay["event_count"], fay["order_count"], fay["revenue"], fay["lifecycle"]) == (1, 1, 25.0, "new")
        assert (gus["event_count"], gus["order_count"], gus["revenue"], gus["lifecycle"]) == (2, 1, 25.0, "new")


class TestIdentityMerge:
    async def test_an_anonymous_visitors_orders_join_the_user_they_identify_as(self, seg: Segmentation) -> None:
        await seg.send(
            page("p-anon", None, days=-5, anon="anon-1", context=EMAIL_VISIT),
            order("o-anon", None, days=-4, anon="anon-1", revenue=10),
        )
        assert (await seg.profile("anon-1"))["lifecycle"] == "new"
        await seg.send(identify("i-1", "hal", days=-3, anon="anon-1", email="hal@example.com"))
        await seg.send(order("o-user", "hal", days=-2, revenue=20), page("p-later", None, days=-1, anon="anon-1"))
        profile = await seg.profile("hal")
        assert profile["customer_id"] == "hal"
        assert (profile["event_count"], profile["order_count"], profile["revenue"]) == (5, 2, 30.0)
        assert profile["traits"] == {"email": "hal@example.com"}
        assert (profile["first_seen"], profile["last_seen"], profile["channel"]) == (at(-5), at(-1), "email")
        assert profile["lifecycle"] == "active"
        assert await seg.profile("anon-1") == profile
        assert await seg.members("lifecycle:active") == ["hal"]
        assert await seg.members("lifecycle:new") == []
        assert [h["change"] for h in await seg.history("lifecycle:new", "anon-1")] == ["entered", "exited"]

    async def test_when_both_ids_have_a_profile_the_merge_keeps_every_order_and_the_latest_traits(self, seg: Segmentation) -> None:
        await seg.send(identify("i-1", "ida", days=-6, name="Ida", plan="free"), order("o-1", "ida", days=-6, revenue=5))
        await seg.send(
            identify("i-anon", None, days=-2, anon="anon-2", plan="pro"),
            order("o-anon", None, days=-7, anon="anon-2", revenue=7),
        )
        await seg.send(track("t-link", "ida", "Signed In", days=-1, anon="anon-2"))
        profile = await seg.profile("anon-2")
        assert profile["customer_id"] == "ida"
        assert profile["traits"] == {"name": "Ida", "plan": "pro"}  # the latest identify wins, across both ids
        assert (profile["order_count"], profile["revenue"], profile["first_seen"]) == (2, 12.0, at(-7))
        assert sorted(await seg.members("lifecycle:active")) == ["ida"]

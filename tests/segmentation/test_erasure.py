"""Erasure: after DELETE /api/customers/{id} no segmentation API returns the customer, under any
of their ids. SQLite and PostgreSQL."""
from __future__ import annotations

from datetime import timedelta

import pytest

from services.segmentation.logic import builtin_segments
from shared.events import CustomerErased, Interaction, encode
from tests.helpers import ADMIN, READER, eventually
from tests.segmentation.support import T0, Segmentation, at, identify, order, page


@pytest.fixture
def segmentation_db_url(store_url: str) -> str:
    return store_url


class TestErasure:
    async def test_an_erased_customer_is_in_no_profile_and_no_segment(self, seg: Segmentation) -> None:
        await seg.send(
            page("p-anon", None, days=-9, anon="anon-ann"),
            order("o-anon", None, days=-8, anon="anon-ann", revenue=15),
            identify("i-ann", "ann", days=-7, anon="anon-ann", email="ann@example.com"),
            *(order(f"o-ann-{d}", "ann", days=-d, revenue=50) for d in (1, 2, 3)),
            order("o-bob", "bob", days=-1, revenue=20),
        )
        await seg.reevaluate()
        assert len((await seg.profile("ann"))["segments"]) == 4

        response = await seg.client.delete("/api/customers/anon-ann", headers=READER)
        assert response.status_code == 403
        response = await seg.client.delete("/api/customers/anon-ann", headers=ADMIN)
        assert response.status_code == 202, response.text

        async def gone() -> bool:
            return (await seg.get_profile("ann")).status_code == 404

        await eventually(gone)
        assert (await seg.get_profile("anon-ann")).status_code == 404
        for key in builtin_segments():
            assert set(await seg.members(key)) <= {"bob"}, key
            assert await seg.history(key, "ann") == await seg.history(key, "anon-ann") == []
        counts = {k: s["member_count"] for k, s in (await seg.segments()).items() if s["member_count"]}
        assert counts == {"lifecycle:new": 1, "frequency:low": 1, "value:low": 1, "rfm:loyal_customers": 1}

        await seg.reevaluate()  # the remaining buyer is ranked among the remaining buyers only
        assert (await seg.profile("bob"))["rfm"]["label"] == "champions"
        assert await seg.members("rfm:champions") == ["bob"]

    async def test_an_erased_customer_who_comes_back_starts_afresh(self, seg: Segmentation) -> None:
        await seg.send(identify("i-ann", "ann", days=-2, email="ann@example.com"), order("o-ann", "ann", days=-1, revenue=9))
        assert (await seg.client.delete("/api/customers/ann", headers=ADMIN)).status_code == 202

        async def gone() -> bool:
            return (await seg.get_profile("ann")).status_code == 404

        await eventually(gone)
        seg.clock.advance(days=1)
        await seg.send(page("p-back", "ann", days=1))
        profile = await seg.profile("ann")
        assert (profile["traits"], profile["event_count"], profile["order_count"], profile["first_seen"]) == (
            {}, 1, 0, at(1))
        assert profile["segments"] == ["lifecycle:potential"]
        assert [h["change"] for h in await seg.history("lifecycle:new", "ann")] == []

    async def test_events_from_before_the_erasure_consumed_after_it_do_not_bring_the_customer_back(
        self, seg: Segmentation
    ) -> None:
        """customers.v1 and interactions.v1 are separate topics: on a replay from offset 0, or with a
        lagging partition, the erasure can be consumed before the events it erased."""
        erased_at = T0 - timedelta(hours=1)
        await seg.runtime.bus.publish([encode(CustomerErased(customer_id="zoe", at=erased_at))])
        await seg.settle()
        earlier = Interaction(
            customer_id="zoe", event_id="o-zoe", user_id="zoe", type="track", name="Order Completed",
            properties={"revenue": 30}, occurred_at=erased_at - timedelta(days=2), received_at=erased_at - timedelta(days=2))
        await seg.runtime.bus.publish([encode(earlier)])
        await seg.settle()
        assert (await seg.get_profile("zoe")).status_code == 404
        assert await seg.members("lifecycle:new") == []

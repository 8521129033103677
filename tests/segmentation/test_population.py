"""Segments relative to all buyers (value tiers by revenue rank, RFM labels), recomputed by the
scheduled pass, and every membership change published on segments.v1. SQLite and PostgreSQL."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.segmentation.support import Segmentation, SegmentFeed, at, order, page
from tests.segmentation.test_logic import reference_rfm


@pytest.fixture
def segmentation_db_url(store_url: str) -> str:
    return store_url


# customer -> orders as (day, revenue); distinct revenue totals 10, 20, ..., 100
BUYERS = {
    "c01": [(-1, 10)],
    "c02": [(-2, 20)],
    "c03": [(-150, 5), (-120, 25)],
    "c04": [(-60, 40)],
    "c05": [(-30, 20), (-3, 30)],
    "c06": [(-200, 20), (-170, 20), (-160, 20)],
    "c07": [(-40, 30), (-20, 20), (-5, 20)],
    "c08": [(-100, 40), (-95, 40)],
    "c09": [(-50, 30), (-45, 30), (-40, 30)],
    "c10": [(-30, 20), (-25, 20), (-20, 20), (-15, 20), (-10, 20)],
}
RFM = {  # worked out by hand from the contract (and by `reference_rfm`)
    "c01": (5, 2, 1, "potential_loyalists"),
    "c02": (5, 2, 1, "potential_loyalists"),
    "c03": (1, 3, 2, "at_risk"),
    "c04": (2, 2, 2, "hibernating"),
    "c05": (4, 3, 3, "loyal_customers"),
    "c06": (1, 5, 3, "at_risk"),
    "c07": (4, 5, 4, "champions"),
    "c08": (2, 3, 4, "at_risk"),
    "c09": (3, 5, 5, "loyal_customers"),
    "c10": (3, 5, 5, "loyal_customers"),
}


async def send_population(seg: Segmentation) -> None:
    await seg.send(
        *(order(f"{c}-{i}", c, days=d, revenue=r) for c, orders in BUYERS.items() for i, (d, r) in enumerate(orders)),
        page("p-visitor", "visitor", days=-1),
    )


class TestValueTiers:
    async def test_ten_buyers_with_distinct_revenue_are_two_high_five_medium_three_low(self, seg: Segmentation) -> None:
        await send_population(seg)
        assert (await seg.profile("c10"))["value_tier"] is None  # relative tiers wait for the scheduled pass
        await seg.reevaluate()
        assert await seg.members("value:high") == ["c09", "c10"]
        assert await seg.members("value:medium") == ["c04", "c05", "c06", "c07", "c08"]
        assert await seg.members("value:low") == ["c01", "c02", "c03"]
        profile = await seg.profile("c09")
        assert (profile["value_tier"], profile["revenue"]) == ("high", 90.0)
        assert profile["why"]["value:high"]["reason"] == "revenue rank among 10 buyers puts it in the high tier"
        for customer in BUYERS:  # every segment of every profile explained
            profile = await seg.profile(customer)
            assert len(profile["segments"]) == 4 and set(profile["why"]) == set(profile["segments"])
            assert all(w["reason"] and w["since"] == at(0) for w in profile["why"].values())
        visitor = await seg.profile("visitor")
        assert (visitor["value_tier"], visitor["rfm"], visitor["lifecycle"]) == (None, None, "potential")

    async def test_the_first_buyer_of_a_fresh_install_is_high_then_the_top_of_two(self, seg: Segmentation) -> None:
        # rank <= max(1, 0.2 N): the top buyer is high however few buyers there are
        await seg.send(order("o-ann", "ann", days=0, revenue=10), page("p-visitor", "visitor", days=0))
        await seg.reevaluate()
        profile = await seg.profile("ann")
        assert (profile["value_tier"], profile["why"]["value:high"]["reason"]) == (
            "high", "revenue rank among 1 buyers puts it in the high tier")
        assert (await seg.members("value:high"), await seg.members("value:low")) == (["ann"], [])
        await seg.send(order("o-bob", "bob", days=0, revenue=25))
        await seg.reevaluate()
        # N = 2: bob rank 1 <= 1 is high; ann rank 2 > 1.4 is low
        assert (await seg.members("value:high"), await seg.members("value:low")) == (["bob"], ["ann"])

    async def test_a_new_top_buyer_pushes_the_others_down_a_rank(self, seg: Segmentation) -> None:
        await send_population(seg)
        await seg.reevaluate()
        seg.clock.advance(days=1)
        await seg.send(order("c11-0", "c11", days=1, revenue=500))
        await seg.reevaluate()
        # 11 buyers: high is rank <= 2.2, low is rank > 7.7
        assert await seg.members("value:high") == ["c10", "c11"]
        assert await seg.members("value:low") == ["c01", "c02", "c03", "c04"]
        assert [(h["change"], h["at"]) for h in await seg.history("value:high", "c09")] == [
            ("entered", at(0)), ("exited", at(1))]
        assert [(h["change"], h["at"]) for h in await seg.history("value:medium", "c09")] == [("entered", at(1))]


class TestRfm:
    async def test_scores_and_labels_of_a_known_population(self, seg: Segmentation) -> None:
        await send_population(seg)
        await seg.reevaluate()
        buyers = {c: (float(-max(d for d, _ in o)), len(o), float(sum(r for _, r in o))) for c, o in BUYERS.items()}
        assert {c: (s.r, s.f, s.m, s.label) for c, s in reference_rfm(buyers).items()} == RFM
        for customer, (r, f, m, label) in RFM.items():
            profile = await seg.profile(customer)
            assert profile["rfm"] == {"recency_days": buyers[customer][0], "r": r, "f": f, "m": m, "label": label}
            assert [s for s in profile["segments"] if s.startswith("rfm:")] == [f"rfm:{label}"]
            assert profile["why"][f"rfm:{label}"]["reason"] == f"r={r} f={f} m={m}"
        for label in {label for *_, label in RFM.values()}:
            assert await seg.members(f"rfm:{label}") == sorted(c for c, s in RFM.items() if s[3] == label)
        assert await seg.members("rfm:lost") == []

    async def test_recency_scores_move_as_time_passes(self, seg: Segmentation) -> None:
        await seg.send(order("o-a", "ann", days=-10, revenue=50), order("o-b", "bob", days=-1, revenue=50))
        await seg.reevaluate()
        assert ((await seg.profile("bob"))["rfm"]["r"], (await seg.profile("ann"))["rfm"]["r"]) == (5, 3)
        seg.clock.advance(days=20)
        await seg.send(order("o-c", "cy", days=20, revenue=50))
        await seg.reevaluate()
        assert [(await seg.profile(c))["rfm"]["r"] for c in ("cy", "bob", "ann")] == [5, 4, 2]
        assert (await seg.profile("ann"))["rfm"]["recency_days"] == 30.0


class TestWhyStaysTrue:
    async def test_why_agrees_with_the_profile_after_the_population_changes(self, seg: Segmentation) -> None:
        """A customer who stays in a segment for new reasons gets the new reasons (no history entry)."""
        await seg.send(order("o-a1", "ann", days=-2, revenue=10), order("o-a2", "ann", days=-1, revenue=10))
        await seg.reevaluate()
        await seg.send(order("o-b", "bob", days=-1, revenue=100), order("o-a3", "ann", days=-1, revenue=10))
        await seg.reevaluate()
        profile = await seg.profile("ann")
        rfm = profile["rfm"]
        assert (rfm["r"], rfm["f"], rfm["m"], rfm["label"]) == (5, 5, 3, "champions")
        assert (profile["value_tier"], profile["frequency_tier"]) == ("low", "medium")
        why = {key: w["reason"] for key, w in profile["why"].items()}
        assert {k: why[k] for k in ("rfm:champions", "value:low", "frequency:medium")} == {
            "rfm:champions": "r=5 f=5 m=3",
            "value:low": "revenue rank among 2 buyers puts it in the low tier",
            "frequency:medium": "3 order(s) in the last 365 days",
        }


class TestSegmentEvents:
    async def test_every_entry_and_exit_is_published_on_segments_v1(self, seg: Segmentation, data_dir: Path) -> None:
        async with SegmentFeed(data_dir / "bus.db") as feed:
            await seg.send(order("o-1", "ann", days=0, revenue=10))
            await seg.reevaluate()
            await seg.advance(days=91)
            expected = {
                ("lifecycle:new", "entered", at(0)), ("frequency:low", "entered", at(0)),
                ("value:high", "entered", at(0)), ("rfm:champions", "entered", at(0)),
                ("lifecycle:new", "exited", at(91)), ("lifecycle:at_risk", "entered", at(91)),
            }
            changes = await feed.changes(lambda cs: len(cs) >= len(expected))
        assert {(c["segment"], c["change"], c["at"]) for c in changes} == expected
        assert len(changes) == len(expected)
        assert {(c["customer_id"], c["_key"], c["_type"]) for c in changes} == {("ann", "ann", "SegmentChanged")}
        reasons = {(c["segment"], c["change"]): c["reason"] for c in changes}
        assert reasons[("lifecycle:at_risk", "entered")] == "last order 91.0 days ago (> 90)"
        assert all(reasons.values())

"""Time passing without new events: buyers go at risk after 90 days and churned after 180, orders
leave the 365-day frequency window, and the membership history and segment sizes record it.
The scheduled pass (`reevaluate_now`) runs after the test moves the clock. SQLite and PostgreSQL."""
from __future__ import annotations

import asyncio

import pytest

from services.segmentation.jobs import REEVALUATE_JOB, reevaluate
from shared.consumer import Transaction
from tests.segmentation.support import BASIC, Segmentation, at, order, page


@pytest.fixture
def segmentation_db_url(store_url: str) -> str:
    return store_url


def changes(history: list[dict]) -> list[tuple[str, str]]:
    return [(h["change"], h["at"]) for h in history]


class TestLifecycleOverTime:
    async def test_a_buyer_goes_at_risk_after_91_days_and_churned_after_181_without_new_events(
        self, seg: Segmentation
    ) -> None:
        await seg.send(order("o-1", "ann", days=0, revenue=10))
        await seg.reevaluate()
        assert (await seg.profile("ann"))["lifecycle"] == "new"

        await seg.advance(days=91)
        profile = await seg.profile("ann")
        assert profile["lifecycle"] == "at_risk"
        assert profile["why"]["lifecycle:at_risk"] == {"reason": "last order 91.0 days ago (> 90)", "since": at(91)}

        await seg.advance(days=90)
        profile = await seg.profile("ann")
        assert profile["lifecycle"] == "churned"
        assert profile["why"]["lifecycle:churned"] == {"reason": "last order 181.0 days ago (> 180)", "since": at(181)}
        assert profile["rfm"]["recency_days"] == 181.0

        assert changes(await seg.history("lifecycle:new", "ann")) == [("entered", at(0)), ("exited", at(91))]
        got = changes(await seg.history("lifecycle:at_risk", "ann"))
        assert got == [("entered", at(91)), ("exited", at(181))], got
        assert changes(await seg.history("lifecycle:churned", "ann")) == [("entered", at(181))]
        exit_reason = (await seg.history("lifecycle:new", "ann"))[-1]["reason"]
        assert exit_reason == "1 order(s), last order 0.0 days ago"  # the reason it had been a member
        assert await seg.members("lifecycle:churned") == ["ann"]
        assert await seg.members("lifecycle:new") == await seg.members("lifecycle:at_risk") == []

    async def test_segment_sizes_over_time_follow_the_history(self, seg: Segmentation) -> None:
        await seg.send(order("o-a", "ann", days=0, revenue=10), order("o-b", "bob", days=0, revenue=10))
        seg.clock.advance(days=30)
        await seg.send(order("o-c", "cy", days=30, revenue=10))
        await seg.advance(days=61)   # day 91: ann and bob at risk
        await seg.advance(days=30)   # day 121: cy at risk too
        await seg.advance(days=60)   # day 181: ann and bob churned
        window = {"from": at(0), "to": at(210), "interval": "week"}
        weekly = dict(await seg.sizes("lifecycle:at_risk", **window))
        assert [weekly[at(d)] for d in (7, 84, 91, 98, 119, 126, 175, 182, 210)] == [0, 0, 0, 2, 2, 3, 3, 1, 1]
        daily = dict(await seg.sizes("lifecycle:new", **{"from": at(0), "to": at(150)}))
        assert (daily[at(1)], daily[at(30)], daily[at(31)], daily[at(91)], daily[at(92)], daily[at(122)]) == (
            2, 2, 3, 3, 1, 0)
        assert (await seg.segments())["lifecycle:at_risk"]["member_count"] == 1


class TestLifecycleBoundaries:
    async def test_exactly_90_and_180_days_keep_the_stage_and_a_day_later_moves_it(self, seg: Segmentation) -> None:
        """A pass that finds a last order exactly on a threshold leaves it, and the next pass must
        still pick it up (it only looks at buyers who crossed a threshold since the previous one)."""
        await seg.send(order("o-a", "ann", days=0, revenue=10), order("o-b", "bob", days=-90, revenue=10))
        await seg.reevaluate()
        await seg.advance(days=90)  # ann: exactly 90 days, bob: exactly 180 days
        assert (await seg.profile("ann"))["lifecycle"] == "new"
        assert (await seg.profile("bob"))["lifecycle"] == "at_risk"
        await seg.advance(days=1)
        assert ((await seg.profile("ann"))["lifecycle"], (await seg.profile("bob"))["lifecycle"]) == (
            "at_risk", "churned")


class TestFrequencyOverTime:
    async def test_the_frequency_tier_drops_as_orders_leave_the_365_day_window(self, seg: Segmentation) -> None:
        await seg.send(*(order(f"o-{d}", "ann", days=d, revenue=10) for d in (-40, -30, -20, -10, 0)))
        await seg.reevaluate()
        assert (await seg.profile("ann"))["frequency_tier"] == "high"

        await seg.advance(days=326)  # the order of day -40 is out
        profile = await seg.profile("ann")
        assert (profile["frequency_tier"], profile["order_count"]) == ("medium", 5)
        assert profile["why"]["frequency:medium"]["reason"] == "4 order(s) in the last 365 days"

        await seg.advance(days=30)  # day 356: only the order of day 0 is in
        assert (await seg.profile("ann"))["frequency_tier"] == "low"

        await seg.advance(days=10)  # day 366: none
        profile = await seg.profile("ann")
        assert (profile["frequency_tier"], profile["lifecycle"], profile["order_count"]) == (None, "churned", 5)
        assert [s for s in profile["segments"] if s.startswith("frequency:")] == []
        # (on day 0 the five orders, applied one by one, went through low and medium to high)
        assert changes(await seg.history("frequency:high", "ann")) == [("entered", at(0)), ("exited", at(326))]
        assert changes(await seg.history("frequency:medium", "ann"))[-2:] == [("entered", at(326)), ("exited", at(356))]
        assert changes(await seg.history("frequency:low", "ann"))[-2:] == [("entered", at(356)), ("exited", at(366))]


class TestPassAndBatchesTakeTurns:
    async def test_a_batch_waits_for_a_running_pass_and_then_works_at_the_later_time(self, seg: Segmentation) -> None:
        """Seen in CI: a consumed batch that read the clock before a pass and committed after it put
        bob back from at_risk to new. Here a pass is held open while bob's page view arrives; the
        clock moves 90 days; then the pass moves bob on. PostgreSQL only (SQLite runs one write
        transaction at a time: they take turns already)."""
        if seg.runtime.store.is_sqlite:
            pytest.skip("SQLite runs one write transaction at a time")
        await seg.send(order("o-b", "bob", days=-90, revenue=10))
        await seg.reevaluate()
        gate, started = asyncio.Event(), asyncio.Event()
        t = seg.app.state.settings.thresholds()

        async def held_pass(tx: Transaction) -> int:
            started.set()
            await gate.wait()
            return await reevaluate(tx.session, seg.clock.now(), t, tx.outbox, 0)

        pass_task = asyncio.create_task(seg.runtime.job(REEVALUATE_JOB, held_pass))
        await started.wait()
        response = await seg.client.post("/v1/batch", json={"batch": [page("p-1", "bob", days=0)]}, headers=BASIC)
        assert response.status_code == 200
        await seg.ingest_app.state.pipeline.drain(seg.ingest_app.state.runtime)
        await asyncio.sleep(1.5)  # time enough for the consumer to apply it, were it not waiting
        assert (await seg.profile("bob"))["event_count"] == 1  # the page view waits for the pass
        seg.clock.advance(days=90)
        gate.set()
        assert await pass_task == 2  # bob: out of new, into at_risk
        await seg.settle()
        assert (await seg.profile("bob"))["event_count"] == 2
        # The batch began at day 0 but worked at day 90, after the pass: no step back to new.
        assert changes(await seg.history("lifecycle:new", "bob")) == [("entered", at(0)), ("exited", at(90))]
        assert changes(await seg.history("lifecycle:at_risk", "bob")) == [("entered", at(90))]

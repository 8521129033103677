"""Reports through the gateway: the cohort, in progress while a window is open and dropped once
the clock passes it, breakdowns by channel, trait and segment; who sits at a stage (stalled, paged);
the transition feed. SQLite and PostgreSQL."""
from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from services.funnel.logic import LIFECYCLE
from tests.funnel.support import (
    EMAIL_VISIT,
    SEARCH_VISIT,
    T0,
    Funnels,
    at,
    identify,
    order,
    page,
    track,
    walk,
)
from tests.funnel.test_semantics import reference_report

WIDE = {"from": at(-200), "to": at(1)}


@pytest.fixture
def funnel_db_url(store_url: str) -> str:
    return store_url


def stages(*attempts: list[float], now: float = 0) -> list[dict[str, Any]]:
    """The lifecycle report's stages over these counted attempts (days after T0)."""
    times = [tuple((T0 + timedelta(days=d)).timestamp() for d in t) for t in attempts]
    return reference_report(LIFECYCLE, times, (T0 + timedelta(days=now)).timestamp())["stages"]


def numbers(report: dict[str, Any], stage: int) -> tuple[int, int, int]:
    s = report["stages"][stage]
    return s["entered"], s["in_progress"], s["drop_off"]


class TestCohort:
    async def test_the_cohort_is_customers_whose_first_step_is_in_from_to(self, funnels: Funnels) -> None:
        await funnels.send(*walk("ann", -40)[:2], *walk("bob", -20)[:3], *walk("cy", -10)[:4], page("dan", "dan", -1))
        # from with an offset: the same instant as at(-20)
        got = await funnels.report("lifecycle", **{"from": "2024-02-10T02:00:00+02:00", "to": at(-1)})
        assert got == {"funnel": "lifecycle", "from": at(-20), "to": at(-1), "customers": 2,
                       "stages": stages([-20, -19, -18], [-10, -9, -8, -7]), "overall_conversion_rate": 0.0}

    async def test_by_default_the_last_30_days_up_to_now(self, funnels: Funnels) -> None:
        await funnels.send(page("p-ann", "ann", -30.01), page("p-bob", "bob", -30), page("p-cy", "cy", -0.01))
        got = await funnels.report("lifecycle")
        assert (got["from"], got["to"], got["customers"]) == (at(-30), at(0), 2)
        funnels.clock.advance(days=1)
        got = await funnels.report("lifecycle", to=at(0))
        assert (got["from"], got["to"], got["customers"]) == (at(-30), at(0), 2)

    async def test_a_window_still_open_is_in_progress_and_dropped_once_the_clock_passes_it(self, funnels: Funnels) -> None:
        await funnels.send(page("p-ann", "ann", -89), *walk("bob", -10)[:2])
        got = await funnels.report("lifecycle", **WIDE)
        assert [numbers(got, i) for i in range(3)] == [(2, 0, 0), (1, 1, 0), (0, 1, 0)]
        funnels.clock.advance(days=1)  # ann's window ends now: still open
        assert numbers(await funnels.report("lifecycle", **WIDE), 1) == (1, 1, 0)
        funnels.clock.advance(seconds=1)
        got = await funnels.report("lifecycle", **WIDE)
        assert [numbers(got, i) for i in range(3)] == [(2, 0, 0), (1, 0, 1), (0, 1, 0)]
        assert got["stages"] == stages([-89], [-10, -9], now=1 + 1 / 86400)
        funnels.clock.advance(days=80)
        assert numbers(await funnels.report("lifecycle", **WIDE), 2) == (0, 0, 1)


def sizes(report: dict[str, Any]) -> dict[Any, int]:
    """Customers per breakdown value; the groups come largest first."""
    counts = [g["customers"] for g in report["breakdown"]]
    assert counts == sorted(counts, reverse=True), report["breakdown"]
    return {g["value"]: g["customers"] for g in report["breakdown"]}


def group(report: dict[str, Any], value: Any) -> dict[str, Any]:
    found = [g for g in report["breakdown"] if g["value"] == value]
    assert len(found) == 1, report["breakdown"]
    return found[0]


class TestBreakdowns:
    async def test_by_the_channel_of_the_first_step(self, funnels: Funnels) -> None:
        await funnels.send(
            page("ann-p", "ann", -10, context=EMAIL_VISIT), track("ann-up", "ann", "Signed Up", -9, context=SEARCH_VISIT),
            page("bob-p", "bob", -8, context=SEARCH_VISIT), page("cy-p", "cy", -7),
            page("dan-p", "dan", -6, context=EMAIL_VISIT), track("dan-up", "dan", "Signed Up", -5, context=EMAIL_VISIT),
            # eve's counted attempt starts with the email visit: the search visit's window closed long ago
            page("eve-old", "eve", -150, context=SEARCH_VISIT), page("eve-p", "eve", -4, context=EMAIL_VISIT),
            track("eve-up", "eve", "Signed Up", -3))
        got = await funnels.report("lifecycle", breakdown="channel", **WIDE)
        assert got["breakdown_by"] == "channel"
        assert sizes(got) == {"email": 3, "direct": 1, "search": 1}
        assert group(got, "email")["stages"] == stages([-10, -9], [-6, -5], [-4, -3])
        assert group(got, "email")["overall_conversion_rate"] == 0.0
        assert group(got, "search")["stages"] == stages([-8])
        assert {k: v for k, v in got.items() if k not in ("breakdown", "breakdown_by")} == await funnels.report("lifecycle", **WIDE)

    async def test_by_a_trait_latest_identify_wins_and_null_without(self, funnels: Funnels) -> None:
        await funnels.send(*walk("ann", -10)[:2], identify("ann-plan", "ann", -9, plan="pro"),
                           page("bob-p", "bob", -8), identify("bob-plan-new", "bob", -1, plan="pro"),
                           page("cy-p", "cy", -7), page("dan-p", "dan", -6), identify("dan-plan", "dan", -6, plan="free"))
        await funnels.send(identify("bob-plan-old", "bob", -3, plan="free"))  # late, and older: pro stays
        got = await funnels.report("lifecycle", breakdown="traits.plan", **WIDE)
        assert sizes(got) == {"pro": 2, "free": 1, None: 1}
        assert group(got, "pro")["stages"] == stages([-10, -9], [-8])
        assert group(got, None)["stages"] == stages([-7])

    async def test_a_trait_is_kept_when_its_batch_also_holds_an_old_event(self, funnels: Funnels) -> None:
        await funnels.send(page("bob-old", "bob", -400), page("bob-p", "bob", -2), identify("bob-plan", "bob", -1, plan="pro"))
        got = await funnels.report("lifecycle", breakdown="traits.plan", **{"from": at(-500), "to": at(1)})
        assert sizes(got) == {"pro": 1}  # bob's first step is the 400-day-old page: every event counts at any age

    async def test_by_a_segment_membership_now(self, funnels: Funnels) -> None:
        await funnels.send(page("ann-p", "ann", -10), order("ann-o", "ann", -9, revenue=5),
                           page("bob-p", "bob", -8), order("bob-o1", "bob", -7, revenue=5),
                           order("bob-o2", "bob", -6, revenue=5), page("cy-p", "cy", -5))
        got = await funnels.report("lifecycle", breakdown="segment:lifecycle:new", **WIDE)
        assert sizes(got) == {False: 2, True: 1}
        assert group(got, True)["stages"] == stages([-10])  # the order is awareness, not interest
        # ann buys again: no longer new (segmentation says so on segments.v1)
        await funnels.send(order("ann-o2", "ann", -1, revenue=5))
        got = await funnels.report("lifecycle", breakdown="segment:lifecycle:new", **WIDE)
        assert sizes(got) == {False: 3}


class TestStageCustomers:
    async def test_longest_there_first_paged_with_days_in_stage(self, funnels: Funnels) -> None:
        await funnels.send(*walk("ann", -13)[:3], *walk("bob", -7)[:3], *walk("dan", -5)[:3], *walk("cy", -5)[:3],
                           *walk("eve", -3)[:3], *walk("fay", -9)[:4])
        got = await funnels.stage("lifecycle", "consideration")
        assert got == [{"customer_id": c, "reached_at": at(-d), "days_in_stage": float(d)}
                       for c, d in [("ann", 11), ("bob", 5), ("cy", 3), ("dan", 3), ("eve", 1)]]
        for limit in (1, 3, 1000):  # cy and dan reached it at the same time: a page may end between them
            assert await funnels.stage("lifecycle", "consideration", limit=limit) == got
        assert [c["customer_id"] for c in await funnels.stage("lifecycle", "purchase")] == ["fay"]

    async def test_stalled_days_keeps_those_there_at_least_that_long(self, funnels: Funnels) -> None:
        await funnels.send(*walk("ann", -13)[:3], *walk("bob", -7)[:3], *walk("cy", -5)[:3], *walk("eve", -3)[:3])
        assert [c["customer_id"] for c in await funnels.stage("lifecycle", "consideration", stalled_days=3)] == [
            "ann", "bob", "cy"]
        assert [c["customer_id"] for c in await funnels.stage("lifecycle", "consideration", stalled_days=3.5)] == [
            "ann", "bob"]
        funnels.clock.advance(days=2)
        assert [c["customer_id"] for c in await funnels.stage("lifecycle", "consideration", stalled_days=3)] == [
            "ann", "bob", "cy", "eve"]
        assert await funnels.stage("lifecycle", "consideration", stalled_days=14) == []

    async def test_moving_on_leaves_the_stage_list(self, funnels: Funnels) -> None:
        await funnels.send(*walk("ann", -13)[:3], *walk("bob", -7)[:3])
        await funnels.send(order("ann-buys", "ann", -1, revenue=3))
        assert [c["customer_id"] for c in await funnels.stage("lifecycle", "consideration")] == ["bob"]
        assert await funnels.stage("lifecycle", "purchase") == [
            {"customer_id": "ann", "reached_at": at(-1), "days_in_stage": 1.0}]


class TestTransitionFeed:
    async def test_in_recorded_order_since_a_time_through_the_cursor(self, funnels: Funnels) -> None:
        await funnels.send(*walk("ann", -10))
        await funnels.send(*walk("bob", -3)[:3])
        feed = await funnels.transitions("lifecycle")
        assert [(t["customer_id"], t["to_stage"], t["at"]) for t in feed] == [
            *[("ann", s, at(-10 + i)) for i, s in enumerate(["awareness", "interest", "consideration", "purchase", "loyalty"])],
            *[("bob", s, at(-3 + i)) for i, s in enumerate(["awareness", "interest", "consideration"])]]
        assert feed[1] == {"customer_id": "ann", "from_stage": "awareness", "to_stage": "interest", "at": at(-9),
                           "event_id": "ann-id"}
        since = await funnels.transitions("lifecycle", since=at(-7))
        assert since == feed[3:]
        assert await funnels.transitions("lifecycle", since="2024-02-22T01:00:00+01:00") == feed[2:]  # at(-8)
        assert await funnels.transitions("lifecycle", since=at(0)) == []

    async def test_the_feed_pages_by_cursor_without_gaps_or_repeats(self, funnels: Funnels) -> None:
        await funnels.send(*walk("ann", -10), *walk("bob", -5))
        whole = (await funnels.get("/api/funnels/lifecycle/transitions", limit=1000))
        assert whole["next_cursor"] is None
        first = await funnels.get("/api/funnels/lifecycle/transitions", limit=3)
        second = await funnels.get("/api/funnels/lifecycle/transitions", limit=3, cursor=first["next_cursor"])
        assert first["items"] + second["items"] == whole["items"][:6]
        assert await funnels.transitions("lifecycle") == whole["items"]
        assert len(whole["items"]) == 10

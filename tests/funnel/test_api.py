"""The default lifecycle funnel through the gateway: a customer's walk, its transitions on the API
and on funnel.v1, late and repeated events, identity merge and erasure. SQLite and PostgreSQL."""
from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

import pytest

from services.funnel.logic import LIFECYCLE
from tests.funnel.support import T0, Funnels, at, identify, order, page, track, walk
from tests.funnel.test_semantics import reference_report

STAGES = ["awareness", "interest", "consideration", "purchase", "loyalty"]
SALES_STAGES = ["lead", "screening", "development", "conversion", "maintenance"]
WIDE = {"from": at(-200), "to": at(1)}  # a cohort holding every customer of these tests


@pytest.fixture
def funnel_db_url(store_url: str) -> str:
    return store_url


def attempt(*steps: tuple[float, str]) -> list[dict[str, Any]]:
    """The API's `attempt`: stage by stage, (days after T0, event id)."""
    return [{"stage": s, "at": at(d), "event_id": e} for s, (d, e) in zip(STAGES, steps, strict=False)]


def moves(customer: str, *steps: tuple[float, str], funnel: str | None = None) -> list[dict[str, Any]]:
    """Forward transitions through the stages, one per step, as the API (or funnel.v1) shows them."""
    return [{"customer_id": customer, **({"funnel": funnel} if funnel else {}), "from_stage": STAGES[i - 1] if i else None,
             "to_stage": STAGES[i], "at": at(d), "event_id": e} for i, (d, e) in enumerate(steps)]


def expected_report(attempts: Mapping[str, Sequence[float]], **params: str) -> dict[str, Any]:
    """The lifecycle report over these customers' counted attempts (days after T0), now = T0."""
    times = [tuple((T0 + timedelta(days=d)).timestamp() for d in t) for t in attempts.values()]
    return {"funnel": "lifecycle", "from": params["from"], "to": params["to"], "customers": len(times),
            **reference_report(LIFECYCLE, times, T0.timestamp())}


ANN = [(-10, "ann-page"), (-9, "ann-id"), (-8, "ann-view"), (-7, "ann-o1"), (-6, "ann-o2")]


class TestLifecycleWalk:
    async def test_the_built_in_funnels_are_always_listed(self, funnels: Funnels) -> None:
        listed = await funnels.paged("/api/funnels")
        assert [(f["key"], f["built_in"], f["conversion_window_days"]) for f in listed] == [
            ("lifecycle", True, 90), ("sales", True, 180)]
        assert [s["key"] for s in listed[0]["stages"]] == STAGES
        assert [s["key"] for s in listed[1]["stages"]] == SALES_STAGES
        assert listed[0]["customers"] == dict.fromkeys(STAGES, 0)
        assert listed[1]["customers"] == dict.fromkeys(SALES_STAGES, 0)
        assert await funnels.get("/api/funnels/lifecycle") == listed[0]
        assert await funnels.get("/api/funnels/sales") == listed[1]

    async def test_a_customer_walks_every_stage_with_times_and_transitions(self, funnels: Funnels) -> None:
        await funnels.send(*walk("ann", start=-10))
        assert await funnels.customer("lifecycle", "ann") == {
            "customer_id": "ann", "funnel": "lifecycle", "stage": "loyalty", "reached_at": at(-6),
            "attempt": attempt(*ANN), "transitions": moves("ann", *ANN)}
        assert (await funnels.get("/api/funnels/lifecycle"))["customers"] == {**dict.fromkeys(STAGES, 0), "loyalty": 1}

    async def test_a_customer_walks_the_sales_process(self, funnels: Funnels) -> None:
        # docs/api.md section 4: lead (Lead Created or an identify with an email), screening (Lead
        # Qualified), development (Meeting Booked, Demo Completed, Quote Sent), conversion (an order),
        # maintenance (a later order or a renewal); a second order alone is not a lead's walk.
        await funnels.send(identify("bo-id", "bo", -20, email="bo@example.com"), track("bo-q", "bo", "Lead Qualified", -19),
                           track("bo-demo", "bo", "Demo Completed", -18), order("bo-o", "bo", -17),
                           track("bo-renew", "bo", "Subscription Renewed", -2),
                           track("cy-lead", "cy", "Lead Created", -5), track("cy-q", "cy", "Lead Qualified", -4),
                           track("cy-quote", "cy", "Quote Sent", -3), order("cy-o1", "cy", -2), order("cy-o2", "cy", -1),
                           order("di-o1", "di", -3), order("di-o2", "di", -2), track("ed-q", "ed", "Lead Qualified", -3),
                           track("ed-lead", "ed", "Lead Created", -1))
        bo = await funnels.customer("sales", "bo")
        assert (bo["stage"], [s["event_id"] for s in bo["attempt"]]) == ("maintenance", ["bo-id", "bo-q", "bo-demo", "bo-o", "bo-renew"])
        cy = await funnels.customer("sales", "cy")
        assert (cy["stage"], [s["event_id"] for s in cy["attempt"]]) == ("maintenance", ["cy-lead", "cy-q", "cy-quote", "cy-o1", "cy-o2"])
        assert (await funnels.get_customer("sales", "di")).status_code == 404  # orders without ever being a lead
        assert (await funnels.customer("sales", "ed"))["stage"] == "lead"  # qualified before being a lead
        assert (await funnels.get("/api/funnels/sales"))["customers"] == {**dict.fromkeys(SALES_STAGES, 0), "lead": 1,
                                                                         "maintenance": 2}

    async def test_each_event_moves_the_customer_one_stage(self, funnels: Funnels) -> None:
        for message, stage in zip(walk("ann", start=-10), STAGES, strict=True):
            await funnels.send(message)
            assert (await funnels.customer("lifecycle", "ann"))["stage"] == stage
        assert (await funnels.customer("lifecycle", "ann"))["transitions"] == moves("ann", *ANN)

    async def test_funnel_v1_carries_each_transition_once_when_messages_are_sent_twice(self, funnels: Funnels) -> None:
        await funnels.send(*walk("ann", start=-10))
        await funnels.send(*walk("ann", start=-10))
        await funnels.send(*walk("ann", start=-10)[2:])
        assert [m for m in await funnels.published() if m["funnel"] == "lifecycle"] == moves("ann", *ANN, funnel="lifecycle")
        assert [m for m in await funnels.published() if m["funnel"] == "sales"] == [  # her identify with an email
            {"customer_id": "ann", "funnel": "sales", "from_stage": None, "to_stage": "lead", "at": at(-9), "event_id": "ann-id"}]
        assert (await funnels.customer("lifecycle", "ann"))["transitions"] == moves("ann", *ANN)

    async def test_a_customer_without_a_first_step_is_not_in_the_funnel(self, funnels: Funnels) -> None:
        await funnels.send(identify("i-dan", "dan", -1, email="dan@example.com"))
        assert (await funnels.get_customer("lifecycle", "dan")).status_code == 404


def late_history() -> list[dict[str, Any]]:
    """Repeated attempts, steps out of order and an expired window, for four customers (and one
    with no first step)."""
    return [
        page("ann-page0", "ann", -30), *walk("ann", start=-20),
        track("bob-view", "bob", "Product Viewed", -5), page("bob-page", "bob", -6), track("bob-up", "bob", "Signed Up", -4),
        order("cy-order", "cy", -3, revenue=5), track("cy-up", "cy", "Signed Up", -1), page("cy-page", "cy", -2),
        page("eve-page", "eve", -100), order("eve-order", "eve", -5, revenue=8),
        identify("eve-id", "eve", -2, email="eve@example.com"),
        identify("dan-id", "dan", -1, email="dan@example.com"),
    ]


LATE_ATTEMPTS = {
    "ann": [(-30, "ann-page0"), (-19, "ann-id"), (-18, "ann-view"), (-17, "ann-o1"), (-16, "ann-o2")],
    "bob": [(-6, "bob-page"), (-4, "bob-up")],  # the view came before the sign-up: it does not count
    "cy": [(-3, "cy-order"), (-1, "cy-up")],  # the order is a track: the earliest awareness
    "eve": [(-5, "eve-order"), (-2, "eve-id")],  # the page is 98 days before the identify: outside the window
}


async def arrive(funnels: Funnels, messages: list[dict[str, Any]], how: str) -> None:
    rng = random.Random(7)
    if how == "in order":
        for m in sorted(messages, key=lambda m: m["timestamp"]):
            await funnels.send(m)
    elif how == "newest first":
        for m in sorted(messages, key=lambda m: m["timestamp"], reverse=True):
            await funnels.send(m)
    elif how == "shuffled":
        await funnels.send(*rng.sample(messages, len(messages)))
    else:  # several batches, each repeating some messages already sent, then all of them again
        shuffled = rng.sample(messages, len(messages))
        for i in range(0, len(shuffled), 4):
            await funnels.send(*shuffled[i:i + 4], *rng.sample(shuffled[:i], min(i, 2)))
        await funnels.send(*shuffled)


class TestLateEvents:
    @pytest.mark.parametrize("how", ["in order", "newest first", "shuffled", "batches with duplicates"])
    async def test_arrival_order_changes_no_stage_attempt_or_report(self, funnels: Funnels, how: str) -> None:
        await arrive(funnels, late_history(), how)
        for customer, steps in LATE_ATTEMPTS.items():
            got = await funnels.customer("lifecycle", customer)
            assert (got["stage"], got["attempt"]) == (STAGES[len(steps) - 1], attempt(*steps)), customer
        assert (await funnels.get_customer("lifecycle", "dan")).status_code == 404
        days = {c: [d for d, _ in steps] for c, steps in LATE_ATTEMPTS.items()}
        assert await funnels.report("lifecycle", **WIDE) == expected_report(days, **WIDE)
        assert [c["customer_id"] for c in await funnels.stage("lifecycle", "interest")] == ["bob", "eve", "cy"]


class TestIdentity:
    async def test_anonymous_steps_count_for_the_user_they_are_linked_to(self, funnels: Funnels) -> None:
        await funnels.send(page("p-anon", None, -5, anon="anon-1"))
        assert (await funnels.report("lifecycle", **WIDE))["customers"] == 1  # the report index is warm
        await funnels.send(identify("i-bob", "bob", -4, anon="anon-1", email="bob@example.com"))
        bob = await funnels.customer("lifecycle", "bob")
        assert (bob["stage"], bob["attempt"]) == ("interest", attempt((-5, "p-anon"), (-4, "i-bob")))
        assert await funnels.customer("lifecycle", "anon-1") == bob
        assert await funnels.stage("lifecycle", "awareness") == []
        assert [c["customer_id"] for c in await funnels.stage("lifecycle", "interest")] == ["bob"]
        assert await funnels.report("lifecycle", **WIDE) == expected_report({"bob": [-5, -4]}, **WIDE)

    async def test_a_late_anonymous_event_after_the_link_counts_for_the_user(self, funnels: Funnels) -> None:
        await funnels.send(identify("i-bob", "bob", -4, anon="anon-2", email="bob@example.com"))
        assert (await funnels.get_customer("lifecycle", "bob")).status_code == 404  # no first step yet
        await funnels.send(page("p-anon", None, -5, anon="anon-2"))
        bob = await funnels.customer("lifecycle", "bob")
        assert (bob["customer_id"], bob["attempt"]) == ("bob", attempt((-5, "p-anon"), (-4, "i-bob")))

    async def test_a_merged_path_has_one_transition_per_stage(self, funnels: Funnels) -> None:
        await funnels.send(page("p-anon", None, -5, anon="anon-1"))
        await funnels.send(identify("i-bob", "bob", -4, anon="anon-1", email="bob@example.com"))
        assert (await funnels.customer("lifecycle", "bob"))["transitions"] == moves("bob", (-5, "p-anon"), (-4, "i-bob"))


class TestErasure:
    async def test_an_erased_customer_is_gone_from_every_answer(self, funnels: Funnels) -> None:
        await funnels.create({"key": "buyers", "conversion_window_days": 30, "stages": [
            {"key": "viewed", "match": {"type": "track", "event": "Product Viewed"}},
            {"key": "bought", "match": {"type": "track", "event": "Order Completed"}}]})
        await funnels.send(*walk("ann", start=-10), page("p-anon", None, -12, anon="anon-ann"),
                           identify("link", "ann", -11, anon="anon-ann"), *walk("bob", start=-4)[:3])
        assert (await funnels.report("lifecycle", **WIDE))["customers"] == 2  # the report index is warm
        await funnels.erase("ann")
        for customer in ("ann", "anon-ann"):
            assert (await funnels.get_customer("lifecycle", customer)).status_code == 404
        for stage in STAGES:
            assert [c["customer_id"] for c in await funnels.stage("lifecycle", stage)] == (
                ["bob"] if stage == "consideration" else [])
        assert await funnels.report("lifecycle", **WIDE) == expected_report({"bob": [-4, -3, -2]}, **WIDE)
        assert {t["customer_id"] for t in await funnels.transitions("lifecycle")} == {"bob"}
        assert (await funnels.get("/api/funnels/lifecycle"))["customers"] == {
            **dict.fromkeys(STAGES, 0), "consideration": 1}
        assert (await funnels.get_customer("buyers", "ann")).status_code == 404
        assert (await funnels.get("/api/funnels/buyers"))["customers"] == {"viewed": 1, "bought": 0}
        assert (await funnels.report("buyers", **WIDE))["customers"] == 1

    async def test_events_from_before_the_erasure_that_arrive_later_do_not_bring_them_back(self, funnels: Funnels) -> None:
        await funnels.send(*walk("ann", start=-10))
        await funnels.erase("ann")
        await funnels.send(page("late-page", "ann", -3), track("late-up", "ann", "Signed Up", -2))
        assert (await funnels.get_customer("lifecycle", "ann")).status_code == 404
        funnels.clock.advance(days=1)
        await funnels.send(page("new-page", "ann", 0.5))
        ann = await funnels.customer("lifecycle", "ann")
        assert (ann["stage"], ann["attempt"]) == ("awareness", attempt((0.5, "new-page")))
        assert ann["transitions"] == moves("ann", (0.5, "new-page"))

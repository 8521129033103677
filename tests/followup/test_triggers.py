"""Each trigger and each default policy as a customer meets them: entering a segment, entering a
funnel stage, sitting in a stage for days (found by the scheduler, once per stay), and what
cancels them (cancel_on, leaving the segment). SQLite and PostgreSQL."""
from __future__ import annotations

from typing import Any

import pytest

from tests.followup.support import Followups, iso
from tests.helpers import ADMIN


@pytest.fixture
def followup_db_url(store_url: str) -> str:
    return store_url


def without_id(followup: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in followup.items() if k != "id"}


def by_policy(found: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for followup in found:
        grouped.setdefault(followup["policy"], []).append(followup)
    return grouped


SEGMENT_DEFAULTS = [
    # policy, segment, channel, priority, due_in_hours, cadence_days
    ("high_value_7d", "value:high", "phone", "high", 24, 7),
    ("medium_value_30d", "value:medium", "email", "normal", 72, 30),
    ("low_value_90d", "value:low", "email", "low", 168, 90),
    ("welcome_new", "lifecycle:new", "email", "normal", 24, None),
    ("winback_churned", "lifecycle:churned", "email", "high", 48, None),
]


class TestSegmentEntered:
    @pytest.mark.parametrize(("policy", "segment", "channel", "priority", "due_hours", "cadence"), SEGMENT_DEFAULTS)
    async def test_each_default_segment_policy_makes_its_follow_up_and_cadence(
        self, fu: Followups, policy: str, segment: str, channel: str, priority: str, due_hours: int, cadence: int | None
    ) -> None:
        fu.clock.advance(days=2, hours=1)  # the event is an hour old when it arrives
        await fu.entered("ann", segment, days=2, reason="why segmentation says so")
        made = await fu.only("ann")
        assert without_id(made) == {
            "policy": policy, "policy_version": 1, "customer_id": "ann", "channel": channel, "priority": priority,
            "assignee": None, "status": "pending", "due_at": iso(2, hours=due_hours), "created_at": iso(2, hours=1),
            "completed_at": None, "outcome": None, "note": None, "reason": f"entered {segment}: why segmentation says so"}

        fu.clock.advance(hours=due_hours - 1)  # completed right when due
        done = await fu.ok(made["id"], "complete", {"outcome": "reached"})
        assert (done["status"], done["completed_at"], done["outcome"]) == ("done", iso(2, hours=due_hours), "reached")
        if cadence is None:
            assert done["next"] is None
            assert [f["id"] for f in await fu.of("ann")] == [made["id"]]
        else:
            assert without_id(done["next"]) == {
                **without_id(made), "status": "pending", "due_at": iso(2 + cadence, hours=due_hours),
                "created_at": iso(2, hours=due_hours), "reason": f"next of {made['id']} (every {cadence} days)"}

    async def test_a_segment_no_policy_watches_makes_nothing(self, fu: Followups) -> None:
        await fu.entered("ann", "frequency:high")
        await fu.entered("ann", "lifecycle:active")
        assert await fu.of("ann") == []

    async def test_two_segments_two_policies_each_their_own(self, fu: Followups) -> None:
        await fu.entered("ann", "value:high")
        await fu.entered("ann", "lifecycle:new")
        await fu.entered("bob", "value:high")
        assert sorted(f["policy"] for f in await fu.of("ann")) == ["high_value_7d", "welcome_new"]
        assert [f["policy"] for f in await fu.of("bob")] == ["high_value_7d"]


class TestStageEntered:
    async def test_purchase_asks_about_satisfaction_seven_days_later(self, fu: Followups) -> None:
        fu.clock.advance(days=1)
        await fu.moved("ann", "consideration", days=0.5)
        assert await fu.of("ann") == []
        await fu.moved("ann", "purchase", days=1, from_stage="consideration")
        made = await fu.only("ann")
        assert without_id(made) == {
            "policy": "satisfaction_after_purchase_7d", "policy_version": 1, "customer_id": "ann", "channel": "email",
            "priority": "normal", "assignee": None, "status": "pending", "due_at": iso(8), "created_at": iso(1),
            "completed_at": None, "outcome": None, "note": None, "reason": "entered lifecycle/purchase"}

    async def test_the_same_stage_of_another_funnel_is_not_the_trigger(self, fu: Followups) -> None:
        await fu.moved("ann", "purchase", funnel="checkout")
        assert await fu.of("ann") == []


class TestStageStalled:
    async def test_three_days_in_consideration_makes_one_when_the_scheduler_passes(self, fu: Followups) -> None:
        await fu.moved("ann", "consideration", days=1)
        fu.clock.advance(days=4, minutes=-1)
        assert await fu.sweep() == 0  # 3 days in the stage, less a minute
        assert await fu.of("ann") == []
        assert await fu.advance(minutes=1) == 1
        made = await fu.only("ann")
        assert without_id(made) == {
            "policy": "stalled_consideration_3d", "policy_version": 1, "customer_id": "ann", "channel": "email",
            "priority": "normal", "assignee": None, "status": "pending", "due_at": iso(5), "created_at": iso(4),
            "completed_at": None, "outcome": None, "note": None,
            "reason": "in lifecycle/consideration since 2024-03-02T00:00:00Z (3+ days)"}

    async def test_once_per_stay_even_after_it_is_done(self, fu: Followups) -> None:
        await fu.moved("ann", "consideration")
        await fu.advance(days=3)
        first = await fu.only("ann")
        await fu.advance(days=1)
        await fu.ok(first["id"], "complete", {"outcome": "reached"})
        for _ in range(3):
            await fu.advance(days=10)
        assert [f["id"] for f in await fu.of("ann")] == [first["id"]]

    async def test_a_new_stay_is_a_new_stall(self, fu: Followups) -> None:
        await fu.moved("ann", "consideration")
        await fu.advance(days=3)
        first = await fu.only("ann")
        await fu.ok(first["id"], "complete", {"outcome": "reached"})
        await fu.moved("ann", "interest", days=3.5, from_stage="consideration")
        await fu.moved("ann", "consideration", days=4, from_stage="interest")
        assert await fu.advance(days=3) == 0  # day 6: two days into the new stay
        assert await fu.advance(days=1) == 1
        stalled = [f for f in await fu.of("ann") if f["policy"] == "stalled_consideration_3d"]
        assert [(f["status"], f["due_at"]) for f in stalled] == [("done", iso(4)), ("pending", iso(8))]

    async def test_a_customer_who_moved_on_is_not_stalled(self, fu: Followups) -> None:
        await fu.moved("ann", "consideration")
        await fu.moved("ann", "interest", days=1)
        await fu.advance(days=30)
        assert await fu.of("ann") == []

    async def test_a_custom_stalled_policy_counts_its_own_days(self, fu: Followups) -> None:
        response = await fu.client.post("/api/followups/policies", headers=ADMIN, json={
            "key": "stuck_interest", "channel": "phone", "due_in_hours": 0,
            "trigger": {"on": "stage_stalled", "funnel": "lifecycle", "stage": "interest", "days": 0.5}})
        assert response.status_code == 201, response.text
        await fu.moved("ann", "interest")
        assert await fu.advance(hours=11) == 0
        assert await fu.advance(hours=1) == 2  # made, and due at once (due_in_hours 0)
        made = await fu.only("ann")
        assert (made["policy"], made["channel"], made["due_at"], made["status"]) == (
            "stuck_interest", "phone", iso(0.5), "due")


class TestCancelOn:
    async def test_a_purchase_cancels_the_stalled_nudge_with_the_reason(self, fu: Followups) -> None:
        await fu.moved("ann", "consideration")
        await fu.advance(days=3)
        stalled = await fu.only("ann")
        fu.clock.advance(hours=5)
        await fu.moved("ann", "purchase", days=3.1, from_stage="consideration")
        found = by_policy(await fu.of("ann"))
        assert without_id(found["stalled_consideration_3d"][0]) == {
            **without_id(stalled), "status": "cancelled", "completed_at": iso(3, hours=5),
            "reason": "entered lifecycle/purchase"}
        assert [f["status"] for f in found["satisfaction_after_purchase_7d"]] == ["pending"]

    async def test_a_buyer_is_not_nudged_after_the_purchase(self, fu: Followups) -> None:
        await fu.moved("ann", "consideration")
        await fu.moved("ann", "purchase", days=2)
        await fu.advance(days=10)
        assert [f["policy"] for f in await fu.of("ann")] == ["satisfaction_after_purchase_7d"]

    async def test_a_stage_of_another_funnel_does_not_cancel(self, fu: Followups) -> None:
        await fu.moved("ann", "consideration")
        await fu.advance(days=3)
        await fu.moved("ann", "purchase", days=3.1, funnel="checkout")
        assert (await fu.only("ann"))["status"] == "pending"

    async def test_leaving_the_segment_cancels_its_follow_up_only(self, fu: Followups) -> None:
        await fu.entered("ann", "value:high")
        await fu.entered("ann", "lifecycle:new")
        fu.clock.advance(hours=6)
        await fu.exited("ann", "lifecycle:new", days=0.25)
        found = by_policy(await fu.of("ann"))
        welcome = found["welcome_new"][0]
        assert (welcome["status"], welcome["reason"], welcome["completed_at"]) == ("cancelled", "left lifecycle:new",
                                                                                   iso(hours=6))
        assert found["high_value_7d"][0]["status"] == "pending"

    async def test_leaving_a_segment_listed_in_cancel_on_cancels_a_custom_policy(self, fu: Followups) -> None:
        response = await fu.client.post("/api/followups/policies", headers=ADMIN, json={
            "key": "vip_call", "trigger": {"on": "segment_entered", "segment": "vip"},
            "cancel_on": [{"segment_exited": "value:high"}]})
        assert response.status_code == 201, response.text
        await fu.entered("ann", "vip")
        await fu.exited("ann", "value:medium", days=0.1)
        assert (await fu.only("ann"))["status"] == "pending"
        await fu.exited("ann", "value:high", days=0.2)
        cancelled = await fu.only("ann")
        assert (cancelled["policy"], cancelled["status"], cancelled["reason"]) == ("vip_call", "cancelled", "left value:high")

    async def test_an_exit_older_than_the_entry_held_cancels_nothing(self, fu: Followups) -> None:
        await fu.entered("ann", "value:high", days=2)
        await fu.exited("ann", "value:high", days=1)  # late: the customer is in the segment since day 2
        assert (await fu.only("ann"))["status"] == "pending"


class TestLongCustomerIds:
    async def test_a_customer_id_of_200_characters_stalls_like_any_other(self, fu: Followups) -> None:
        long_id = "u" * 200  # ingest accepts ids up to 200 characters
        await fu.moved(long_id, "consideration")
        await fu.entered("ann", "lifecycle:new")
        await fu.advance(days=3)
        assert (await fu.only(long_id))["policy"] == "stalled_consideration_3d"
        assert [e["change"] for e in await fu.events() if e["customer_id"] == "ann"] == ["created", "due", "overdue"]

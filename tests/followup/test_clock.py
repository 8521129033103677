"""The clock moves status: pending, due at `due_at`, overdue once FOLLOWUP_GRACE_HOURS have
passed, as GET shows it and as `?status=` selects it, before and after a scheduler pass; done
and cancelled never move; recurring cadences over several periods; snooze and assign.
SQLite and PostgreSQL."""
from __future__ import annotations

from typing import Any

import pytest

from tests.followup.support import Followups, iso
from tests.helpers import ADMIN

STATUSES = ("pending", "due", "overdue", "done", "cancelled")


@pytest.fixture
def followup_db_url(store_url: str) -> str:
    return store_url


async def selected_by(fu: Followups, followup_id: str) -> list[str]:
    """The `?status=` filters whose answer holds the follow-up."""
    return [s for s in STATUSES if followup_id in [f["id"] for f in await fu.list(status=s)]]


async def welcome(fu: Followups) -> dict[str, Any]:
    """ann enters lifecycle:new at T0: welcome_new, due a day later."""
    await fu.entered("ann", "lifecycle:new")
    made = await fu.only("ann")
    assert made["due_at"] == iso(1)
    return made


# (time since T0, status) with the default grace of 24 hours, due at day 1
TIMELINE = [({"days": 0}, "pending"), ({"days": 1, "seconds": -1}, "pending"), ({"days": 1}, "due"),
            ({"days": 2, "seconds": -1}, "due"), ({"days": 2}, "overdue"), ({"days": 300}, "overdue")]


class TestStatusByTheClock:
    @pytest.mark.parametrize(("moved", "status"), TIMELINE)
    async def test_get_and_filters_follow_the_clock_without_a_scheduler_pass(
        self, fu: Followups, moved: dict[str, float], status: str
    ) -> None:
        made = await welcome(fu)
        fu.clock.advance(**moved)
        assert (await fu.get(made["id"]))["status"] == status
        assert await selected_by(fu, made["id"]) == [status]

    @pytest.mark.parametrize(("moved", "status"), TIMELINE)
    async def test_a_scheduler_pass_agrees_with_the_clock(self, fu: Followups, moved: dict[str, float], status: str) -> None:
        made = await welcome(fu)
        await fu.advance(**moved)
        assert (await fu.get(made["id"]))["status"] == status
        assert await selected_by(fu, made["id"]) == [status]

    async def test_the_scheduler_records_each_move_once(self, fu: Followups) -> None:
        made = await welcome(fu)
        assert [await fu.advance(hours=12) for _ in range(6)] == [0, 1, 0, 1, 0, 0]
        changes = [(e["change"], e["at"]) for e in await fu.events() if e["followup_id"] == made["id"]]
        assert changes == [("created", iso(0)), ("due", iso(1)), ("overdue", iso(2))]

    async def test_a_pass_after_a_long_pause_records_due_then_overdue(self, fu: Followups) -> None:
        made = await welcome(fu)
        assert await fu.advance(days=10) == 2
        changes = [(e["change"], e["at"]) for e in await fu.events() if e["followup_id"] == made["id"]]
        assert changes == [("created", iso(0)), ("due", iso(10)), ("overdue", iso(10))]


class TestGraceSetting:
    @pytest.fixture
    def followup_env(self) -> dict[str, str]:
        return {"FOLLOWUP_GRACE_HOURS": "2"}

    async def test_overdue_two_hours_after_due(self, fu: Followups) -> None:
        made = await welcome(fu)
        fu.clock.advance(days=1, hours=2, seconds=-1)
        assert (await fu.get(made["id"]))["status"] == "due"
        fu.clock.advance(seconds=1)
        assert (await fu.get(made["id"]))["status"] == "overdue"
        assert await selected_by(fu, made["id"]) == ["overdue"]


class TestFinalStatuses:
    @pytest.mark.parametrize(("action", "body", "final"), [
        ("complete", {"outcome": "reached", "note": "called back"}, "done"),
        ("cancel", {"reason": "customer asked us not to call"}, "cancelled"),
    ])
    async def test_done_and_cancelled_never_move_and_refuse_every_action(
        self, fu: Followups, action: str, body: dict[str, Any], final: str
    ) -> None:
        made = await welcome(fu)
        await fu.advance(days=1, hours=1)  # recorded as due
        closed = await fu.ok(made["id"], action, body)
        assert (closed["status"], closed["completed_at"]) == (final, iso(1, hours=1))
        for _ in range(3):
            assert await fu.advance(days=5) == 0
        assert await fu.get(made["id"]) == {k: v for k, v in closed.items() if k != "next"}
        assert await selected_by(fu, made["id"]) == [final]
        for again, again_body in [("complete", {"outcome": "reached"}), ("snooze", {"until": iso(30)}),
                                  ("cancel", {"reason": "again"}), ("assign", {"assignee": "carol"})]:
            response = await fu.act(made["id"], again, again_body)
            assert response.status_code == 409, (again, response.text)
            assert response.json()["error"]["code"] == "conflict"
        assert await fu.get(made["id"]) == {k: v for k, v in closed.items() if k != "next"}
        changes = [e["change"] for e in await fu.events() if e["followup_id"] == made["id"]]
        assert changes == ["created", "due", "completed" if final == "done" else "cancelled"]

    async def test_outcome_and_note_are_kept(self, fu: Followups) -> None:
        made = await welcome(fu)
        done = await fu.ok(made["id"], "complete", {"outcome": "no_answer", "note": "voicemail left"})
        assert (done["outcome"], done["note"], done["reason"]) == ("no_answer", "voicemail left", "entered lifecycle:new")


class TestSnoozeAndAssign:
    async def test_a_snoozed_overdue_one_is_pending_until_the_new_time(self, fu: Followups) -> None:
        made = await welcome(fu)
        await fu.advance(days=3)
        snoozed = await fu.ok(made["id"], "snooze", {"until": iso(5)})
        assert (snoozed["status"], snoozed["due_at"]) == ("pending", iso(5))
        assert await selected_by(fu, made["id"]) == ["pending"]
        await fu.advance(days=2)
        assert (await fu.get(made["id"]))["status"] == "due"
        await fu.advance(days=1)
        assert (await fu.get(made["id"]))["status"] == "overdue"
        changes = [e["change"] for e in await fu.events() if e["followup_id"] == made["id"]]
        assert changes == ["created", "due", "overdue", "snoozed", "due", "overdue"]

    async def test_assign_and_unassign(self, fu: Followups) -> None:
        made = await welcome(fu)
        assert (await fu.ok(made["id"], "assign", {"assignee": "carol"}))["assignee"] == "carol"
        assert [f["id"] for f in await fu.list(assignee="carol")] == [made["id"]]
        assert (await fu.ok(made["id"], "assign", {"assignee": None}))["assignee"] is None
        assert await fu.list(assignee="carol") == []


class TestRecurringCadence:
    async def test_a_weekly_call_over_several_periods_until_the_customer_leaves(self, fu: Followups) -> None:
        await fu.entered("ann", "value:high")
        first = await fu.only("ann")
        fu.clock.advance(days=1)
        second = (await fu.ok(first["id"], "complete", {"outcome": "reached"}))["next"]
        assert (second["due_at"], second["status"]) == (iso(8), "pending")
        await fu.advance(days=8)  # day 9: due
        third = (await fu.ok(second["id"], "complete", {"outcome": "reached"}))["next"]
        assert third["due_at"] == iso(16)
        await fu.advance(days=8.5)  # day 17.5: overdue
        assert (await fu.get(third["id"]))["status"] == "overdue"
        fourth = (await fu.ok(third["id"], "complete", {"outcome": "no_answer"}))["next"]
        assert fourth["due_at"] == iso(24.5)
        fu.clock.advance(days=2.5)  # day 20: early, and the next one is set by hand
        fifth = (await fu.ok(fourth["id"], "complete", {"outcome": "reached", "next_due_at": iso(21)}))["next"]
        assert fifth["due_at"] == iso(21)
        await fu.exited("ann", "value:high", days=22)
        for _ in range(5):
            await fu.advance(days=30)
        found = await fu.of("ann")
        assert [(f["id"], f["status"], f["due_at"]) for f in found] == [
            (first["id"], "done", iso(1)), (second["id"], "done", iso(8)), (third["id"], "done", iso(16)),
            (fifth["id"], "cancelled", iso(21)), (fourth["id"], "done", iso(24.5))]
        assert found[3]["reason"] == "left value:high"

    async def test_no_next_one_once_the_customer_left_the_stage(self, fu: Followups) -> None:
        response = await fu.client.post("/api/followups/policies", headers=ADMIN,
                                        json={"key": "loyal_check", "due_in_hours": 24, "cadence_days": 14,
                                              "trigger": {"on": "stage_entered", "funnel": "lifecycle", "stage": "loyalty"}})
        assert response.status_code == 201, response.text
        await fu.moved("ann", "loyalty")
        first = await fu.only("ann")
        fu.clock.advance(days=1)
        second = (await fu.ok(first["id"], "complete", {"outcome": "reached"}))["next"]
        assert second["due_at"] == iso(15)
        await fu.moved("ann", "purchase", days=2, from_stage="loyalty")
        fu.clock.advance(days=14)
        done = await fu.ok(second["id"], "complete", {"outcome": "reached"})
        assert done["next"] is None
        assert [(f["policy"], f["status"]) for f in await fu.of("ann")] == [
            ("loyal_check", "done"), ("satisfaction_after_purchase_7d", "overdue"), ("loyal_check", "done")]

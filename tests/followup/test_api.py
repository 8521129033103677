"""Follow-ups by hand, the list with every filter of the contract and its cursors, and stats per
assignee and channel on a known set."""
from __future__ import annotations

from typing import Any

import pytest

from tests.followup.support import Followups, iso
from tests.helpers import ADMIN, READER, assert_error

COUNTS = ("done_on_time", "done_late", "overdue", "open", "cancelled")


class TestManualFollowups:
    async def test_made_by_hand_with_every_field(self, fu: Followups) -> None:
        fu.clock.advance(hours=2)
        made = await fu.manual(customer_id="ann", channel="meeting", priority="urgent", due_at="2024-03-03T09:30:00+02:00",
                               assignee="carol", note="bring the contract", reason="asked for a demo")
        assert len(made["id"]) == 32
        assert {k: v for k, v in made.items() if k != "id"} == {
            "policy": None, "policy_version": None, "customer_id": "ann", "channel": "meeting", "priority": "urgent",
            "assignee": "carol", "status": "pending", "due_at": "2024-03-03T07:30:00Z", "created_at": iso(hours=2),
            "completed_at": None, "outcome": None, "note": "bring the contract", "reason": "asked for a demo"}
        assert await fu.get(made["id"]) == made
        assert [e["change"] for e in await fu.events()] == ["created"]

    async def test_the_defaults_and_any_number_open_for_one_customer(self, fu: Followups) -> None:
        first = await fu.manual(customer_id="ann", due_at=iso(1))
        second = await fu.manual(customer_id="ann", due_at=iso(1))
        assert first["id"] != second["id"]
        assert {(f["channel"], f["priority"], f["assignee"], f["reason"], f["status"]) for f in await fu.of("ann")} == {
            ("task", "normal", None, "created by hand", "pending")}
        assert len(await fu.of("ann")) == 2

    async def test_a_past_due_time_is_due_or_overdue_at_once_and_the_scheduler_reminds(self, fu: Followups) -> None:
        fu.clock.advance(days=10)
        due = await fu.manual(customer_id="ann", due_at=iso(9.5))
        overdue = await fu.manual(customer_id="bob", due_at=iso(8))
        assert (due["status"], overdue["status"]) == ("due", "overdue")
        assert await fu.sweep() == 3
        assert sorted((e["customer_id"], e["change"]) for e in await fu.events() if e["change"] != "created") == [
            ("ann", "due"), ("bob", "due"), ("bob", "overdue")]

    async def test_the_created_event_shows_the_status_the_api_shows(self, fu: Followups) -> None:
        fu.clock.advance(days=1)
        made = await fu.manual(customer_id="ann", due_at=iso(0.5))
        assert made["status"] == "due"
        [created] = await fu.events()
        assert created["followup"] == made

    async def test_completing_one_made_by_hand_schedules_no_next(self, fu: Followups) -> None:
        made = await fu.manual(customer_id="ann", due_at=iso(1))
        done = await fu.ok(made["id"], "complete", {"outcome": "reached", "next_due_at": iso(5)})
        assert (done["status"], done["next"]) == ("done", None)
        assert len(await fu.of("ann")) == 1

    async def test_a_reader_may_not_make_one(self, fu: Followups) -> None:
        body = {"customer_id": "ann", "due_at": iso(1)}
        assert_error(await fu.client.post("/api/followups", json=body, headers=READER), 403, "admin_required")
        assert_error(await fu.client.post("/api/followups", json=body), 401, "missing_api_key")
        made = await fu.manual(**body)
        for action, action_body in [("complete", {"outcome": "x"}), ("snooze", {"until": iso(2)}),
                                    ("cancel", {"reason": "x"}), ("assign", {"assignee": "x"})]:
            response = await fu.client.post(f"/api/followups/{made['id']}/{action}", json=action_body, headers=READER)
            assert_error(response, 403, "admin_required")
        assert await fu.get(made["id"]) == made
        assert_error(await fu.client.get(f"/api/followups/{made['id']}"), 401, "missing_api_key")


@pytest.fixture
async def known(fu: Followups) -> dict[str, str]:
    """A known set at day 1.5 (grace 24 h): name -> id."""
    ids = {"welcome": "", "ann_carol": "", "bob_carol": "", "bob_dave": "", "cy_carol": ""}
    await fu.entered("ann", "lifecycle:new")  # due day 1, email, nobody
    ids["welcome"] = (await fu.only("ann"))["id"]
    ids["ann_carol"] = (await fu.manual(customer_id="ann", due_at=iso(2), assignee="carol", channel="phone"))["id"]
    ids["bob_carol"] = (await fu.manual(customer_id="bob", due_at=iso(2, hours=1), assignee="carol"))["id"]
    ids["bob_dave"] = (await fu.manual(customer_id="bob", due_at=iso(3), assignee="dave"))["id"]
    ids["cy_carol"] = (await fu.manual(customer_id="cy", due_at=iso(0.25), assignee="carol"))["id"]
    ids["done"] = (await fu.manual(customer_id="cy", due_at=iso(0.5), assignee="carol"))["id"]
    await fu.ok(ids["done"], "complete", {"outcome": "reached"})
    fu.clock.advance(days=1.5)
    return ids


class TestFilters:
    @pytest.mark.parametrize(("params", "names"), [
        ({}, ["cy_carol", "done", "welcome", "ann_carol", "bob_carol", "bob_dave"]),
        ({"status": "overdue"}, ["cy_carol"]),
        ({"status": "due"}, ["welcome"]),
        ({"status": "pending"}, ["ann_carol", "bob_carol", "bob_dave"]),
        ({"status": "done"}, ["done"]),
        ({"status": "cancelled"}, []),
        ({"assignee": "carol"}, ["cy_carol", "done", "ann_carol", "bob_carol"]),
        ({"assignee": "nobody"}, []),
        ({"customer_id": "bob"}, ["bob_carol", "bob_dave"]),
        ({"due_before": iso(2)}, ["cy_carol", "done", "welcome"]),
        ({"due_before": "2024-03-03T00:00:01+00:00"}, ["cy_carol", "done", "welcome", "ann_carol"]),
        ({"status": "pending", "assignee": "carol"}, ["ann_carol", "bob_carol"]),
        ({"status": "pending", "assignee": "carol", "customer_id": "bob", "due_before": iso(3)}, ["bob_carol"]),
    ])
    async def test_each_filter_and_their_combination(
        self, fu: Followups, known: dict[str, str], params: dict[str, str], names: list[str]
    ) -> None:
        assert [f["id"] for f in await fu.list(**params)] == [known[n] for n in names]


class TestPaging:
    async def test_small_pages_give_every_follow_up_once_in_due_order(self, fu: Followups) -> None:
        made = [(await fu.manual(customer_id=f"c{i}", due_at=iso(i % 3)))["id"] for i in range(7)]
        everything = await fu.client.get("/api/followups", params={"limit": 1000}, headers=READER)
        assert everything.json()["next_cursor"] is None
        in_order = [f["id"] for f in everything.json()["items"]]
        assert sorted(in_order) == sorted(made)
        assert [f["due_at"] for f in everything.json()["items"]] == [iso(0)] * 3 + [iso(1)] * 2 + [iso(2)] * 2
        for due in (iso(0), iso(1), iso(2)):
            same = [f["id"] for f in everything.json()["items"] if f["due_at"] == due]
            assert same == sorted(same)  # ties by id
        for limit in (1, 2, 3, 7):
            pages, cursor = [], None
            while True:
                params = {"limit": limit, **({"cursor": cursor} if cursor else {})}
                page = (await fu.client.get("/api/followups", params=params, headers=READER)).json()
                pages.append([f["id"] for f in page["items"]])
                if not (cursor := page["next_cursor"]):
                    break
            assert [i for p in pages for i in p] == in_order
            assert [len(p) for p in pages] == [limit] * (7 // limit) + ([7 % limit] if 7 % limit else [])

    async def test_a_filter_holds_across_pages(self, fu: Followups) -> None:
        for i in range(5):
            await fu.manual(customer_id="ann" if i % 2 else "bob", due_at=iso(i))
        assert [f["due_at"] for f in await fu.list(customer_id="bob")] == [iso(0), iso(2), iso(4)]


class TestStats:
    async def build(self, fu: Followups) -> None:
        """Due in [day 0, day 30), looked at on day 3.5 (grace 24 h)."""
        async def make(customer: str, due: float, assignee: str | None, channel: str) -> str:
            return str((await fu.manual(customer_id=customer, due_at=iso(due), assignee=assignee, channel=channel))["id"])

        await fu.entered("hal", "lifecycle:new")  # nobody, email, due day 1: overdue
        on_time, late = await make("a", 1, "alice", "phone"), await make("b", 1, "alice", "phone")
        await make("c", 2, "alice", "phone")  # overdue
        await make("d", 3, "alice", "email")  # due: open
        await make("e", 5, "bob", "phone")  # pending: open
        cancelled = await make("f", 0.5, "bob", "phone")
        at_the_edge = await make("i", 1, "bob", "email")  # done exactly when it became overdue: late
        await make("l", 0, "bob", "sms")  # from is inclusive: overdue
        await make("k", 30, "bob", "sms")  # to is exclusive: not counted
        await make("g", 40, "alice", "phone")  # outside
        await fu.ok(cancelled, "cancel", {"reason": "moved away"})
        fu.clock.advance(days=1.5)
        await fu.ok(on_time, "complete", {"outcome": "reached"})
        fu.clock.advance(days=0.5)
        await fu.ok(at_the_edge, "complete", {"outcome": "reached"})
        fu.clock.advance(days=0.5)
        await fu.ok(late, "complete", {"outcome": "reached"})
        fu.clock.advance(days=1)

    @staticmethod
    def row(assignee: str | None, channel: str, **counts: int) -> dict[str, Any]:
        return {"assignee": assignee, "channel": channel, **{c: counts.get(c, 0) for c in COUNTS}}

    async def test_per_assignee_and_channel_on_a_known_set(self, fu: Followups) -> None:
        await self.build(fu)
        assert await fu.stats(**{"from": iso(0), "to": iso(30)}) == [
            self.row(None, "email", overdue=1),
            self.row("alice", "email", open=1),
            self.row("alice", "phone", done_on_time=1, done_late=1, overdue=1),
            self.row("bob", "email", done_late=1),
            self.row("bob", "phone", open=1, cancelled=1),
            self.row("bob", "sms", overdue=1),
        ]

    async def test_a_narrower_window_and_the_default_window(self, fu: Followups) -> None:
        await self.build(fu)
        assert await fu.stats(**{"from": iso(1), "to": iso(2)}) == [
            self.row(None, "email", overdue=1),
            self.row("alice", "phone", done_on_time=1, done_late=1),
            self.row("bob", "email", done_late=1),
        ]
        response = await fu.client.get("/api/followups/stats", headers=READER)
        assert (response.json()["from"], response.json()["to"]) == (iso(3.5 - 30), iso(3.5))
        assert sum(r["open"] + r["overdue"] + r["cancelled"] + r["done_on_time"] + r["done_late"]
                   for r in response.json()["items"]) == 8  # due before day 3.5: not those due at day 5, 30 and 40

    async def test_an_empty_window_is_an_empty_list(self, fu: Followups) -> None:
        await self.build(fu)
        assert await fu.stats(**{"from": iso(100), "to": iso(101)}) == []


async def test_stats_and_policies_are_not_taken_for_follow_up_ids(fu: Followups) -> None:
    for path in ("/api/followups/stats", "/api/followups/policies"):
        assert (await fu.client.get(path, headers=READER)).status_code == 200
    assert_error(await fu.client.get("/api/followups/nope", headers=READER), 404, "not_found")
    assert_error(await fu.client.post("/api/followups/stats/complete", json={"outcome": "x"}, headers=ADMIN),
                 404, "not_found")

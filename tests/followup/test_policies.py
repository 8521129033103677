"""Policies through the gateway: the defaults, custom ones, errors that name the bad part,
versions and what an edit does to follow-ups already open (keep, reschedule, cancel), deletion,
and who may do what."""
from __future__ import annotations

from typing import Any

import pytest

from tests.followup.support import Followups, iso
from tests.helpers import ADMIN, READER, assert_error

NO_CANCEL: list[Any] = []
DEFAULTS = {
    "high_value_7d": ({"on": "segment_entered", "segment": "value:high"}, "phone", "high", 24, 7, NO_CANCEL),
    "medium_value_30d": ({"on": "segment_entered", "segment": "value:medium"}, "email", "normal", 72, 30, NO_CANCEL),
    "low_value_90d": ({"on": "segment_entered", "segment": "value:low"}, "email", "low", 168, 90, NO_CANCEL),
    "welcome_new": ({"on": "segment_entered", "segment": "lifecycle:new"}, "email", "normal", 24, None, NO_CANCEL),
    "winback_churned": ({"on": "segment_entered", "segment": "lifecycle:churned"}, "email", "high", 48, None, NO_CANCEL),
    "stalled_consideration_3d": ({"on": "stage_stalled", "funnel": "lifecycle", "stage": "consideration", "days": 3},
                                 "email", "normal", 24, None,
                                 [{"stage_entered": {"funnel": "lifecycle", "stage": "purchase"}}]),
    "satisfaction_after_purchase_7d": ({"on": "stage_entered", "funnel": "lifecycle", "stage": "purchase"},
                                       "email", "normal", 168, None, NO_CANCEL),
    "detractor_callback_24h": ({"on": "segment_entered", "segment": "nps:detractor"}, "phone", "high", 24, None, NO_CANCEL),
}
VIP = {"key": "vip_call", "trigger": {"on": "segment_entered", "segment": "vip"}}
HIGH_VALUE = {"name": "High value, by text", "trigger": {"on": "segment_entered", "segment": "value:high"},
              "channel": "sms", "priority": "urgent", "due_in_hours": 48, "cadence_days": 7, "assignee": "dave"}


async def policies(fu: Followups) -> dict[str, dict[str, Any]]:
    """Every policy in listed order, following `next_cursor` over small pages."""
    return {p["key"]: p for p in await fu.paged("/api/followups/policies", limit=3)}


async def put(fu: Followups, key: str, body: dict[str, Any]) -> dict[str, Any]:
    response = await fu.client.put(f"/api/followups/policies/{key}", json=body, headers=ADMIN)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def post(fu: Followups, body: dict[str, Any]) -> dict[str, Any]:
    response = await fu.client.post("/api/followups/policies", json=body, headers=ADMIN)
    assert response.status_code == 201, response.text
    answer: dict[str, Any] = response.json()
    return answer


class TestDefaults:
    async def test_every_default_is_listed_at_version_1(self, fu: Followups) -> None:
        listed = await policies(fu)
        assert list(listed) == list(DEFAULTS)  # in their fixed order
        for key, (trigger, channel, priority, due, cadence, cancel_on) in DEFAULTS.items():
            policy = listed[key]
            assert policy["name"]
            assert {k: v for k, v in policy.items() if k != "name"} == {
                "key": key, "trigger": trigger, "channel": channel, "priority": priority, "due_in_hours": due,
                "cadence_days": cadence, "cancel_on": cancel_on, "assignee": None, "version": 1, "built_in": True}
            assert await fu.policy(key) == policy

    async def test_a_default_cannot_be_deleted_but_is_edited(self, fu: Followups) -> None:
        response = await fu.client.delete("/api/followups/policies/welcome_new", headers=ADMIN)
        assert_error(response, 409, "conflict")
        edited = await put(fu, "welcome_new", {"trigger": {"on": "segment_entered", "segment": "lifecycle:new"},
                                               "due_in_hours": 4})
        assert (edited["version"], edited["due_in_hours"], edited["built_in"]) == (2, 4, True)
        assert (await policies(fu))["welcome_new"] == edited


class TestCustomPolicies:
    async def test_created_with_the_defaults_of_every_optional_part(self, fu: Followups) -> None:
        created = await post(fu, VIP)
        assert created == {"key": "vip_call", "name": "vip_call", "trigger": VIP["trigger"], "channel": "task",
                           "priority": "normal", "due_in_hours": 24, "cadence_days": None, "cancel_on": [],
                           "assignee": None, "version": 1, "built_in": False}
        assert (await policies(fu))["vip_call"] == created
        await fu.entered("ann", "vip")
        made = await fu.only("ann")
        assert (made["policy"], made["channel"], made["due_at"]) == ("vip_call", "task", iso(1))

    async def test_a_taken_key_is_409(self, fu: Followups) -> None:
        await post(fu, VIP)
        for body in (VIP, {**VIP, "key": "high_value_7d"}):
            response = await fu.client.post("/api/followups/policies", json=body, headers=ADMIN)
            assert_error(response, 409, "conflict")
        assert (await fu.policy("vip_call"))["version"] == 1

    @pytest.mark.parametrize(("change", "where"), [
        ({"trigger": {"on": "stage_entered", "funnel": "lifecycle"}}, "trigger.stage"),
        ({"trigger": {"on": "stage_stalled", "funnel": "lifecycle", "stage": "interest", "days": 0}}, "trigger.days"),
        ({"trigger": {"on": "segment_entered", "segment": "vip", "days": 3}}, "trigger"),
        ({"trigger": {"on": "visited"}}, "trigger.on"),
        ({"trigger": None}, "trigger.on"),
        ({"cancel_on": ["purchase"]}, "cancel_on[0]"),
        ({"cancel_on": [{"segment_exited": "vip"}, {"stage_entered": {"funnel": "lifecycle"}}]},
         "cancel_on[1].stage_entered.stage"),
        ({"cancel_on": {"segment_exited": "vip"}}, "cancel_on"),
        ({"channel": "fax"}, "channel"),
        ({"priority": "asap"}, "priority"),
        ({"due_in_hours": -1}, "due_in_hours"),
        ({"due_in_hours": "24"}, "due_in_hours"),
        ({"due_in_hours": True}, "due_in_hours"),
        ({"cadence_days": 0}, "cadence_days"),
        ({"assignee": ""}, "assignee"),
        ({"name": ""}, "name"),
        ({"key": "no spaces"}, "key"),
        ({"key": None}, "key"),
        ({"colour": "red"}, "body"),
    ])
    async def test_a_bad_part_is_422_naming_it(self, fu: Followups, change: dict[str, Any], where: str) -> None:
        response = await fu.client.post("/api/followups/policies", json={**VIP, **change}, headers=ADMIN)
        assert_error(response, 422, "invalid_policy")
        assert response.json()["error"]["details"][0]["loc"] == where
        assert f"Bad policy at {where}:" in response.json()["error"]["message"]
        assert "vip_call" not in await policies(fu)

    async def test_a_bad_edit_is_422_and_changes_nothing(self, fu: Followups) -> None:
        response = await fu.client.put("/api/followups/policies/high_value_7d", headers=ADMIN,
                                       json={**HIGH_VALUE, "cancel_on": [{"stage_entered": "purchase"}]})
        assert_error(response, 422, "invalid_policy")
        assert response.json()["error"]["details"][0]["loc"] == "cancel_on[0]"
        response = await fu.client.put("/api/followups/policies/high_value_7d", headers=ADMIN,
                                       json={**HIGH_VALUE, "apply_to_open": "later"})
        assert_error(response, 422, "invalid_policy")
        response = await fu.client.put("/api/followups/policies/high_value_7d", headers=ADMIN,
                                       json={**HIGH_VALUE, "key": "other"})
        assert_error(response, 422, "invalid_fields")
        assert (await fu.policy("high_value_7d"))["version"] == 1

    async def test_deleting_a_custom_policy_cancels_its_open_follow_ups(self, fu: Followups) -> None:
        await post(fu, VIP)
        await fu.entered("bob", "vip")
        bobs = await fu.only("bob")
        await fu.ok(bobs["id"], "complete", {"outcome": "reached"})
        await fu.entered("ann", "vip")
        await fu.entered("ann", "lifecycle:new")
        response = await fu.client.delete("/api/followups/policies/vip_call", headers=ADMIN)
        assert (response.status_code, response.content) == (204, b"")
        assert {f["policy"]: (f["status"], f["reason"]) for f in await fu.of("ann")} == {
            "vip_call": ("cancelled", "policy vip_call deleted"), "welcome_new": ("pending", "entered lifecycle:new")}
        assert (await fu.only("bob"))["status"] == "done"
        assert "vip_call" not in await policies(fu)
        for response in (await fu.client.get("/api/followups/policies/vip_call", headers=READER),
                         await fu.client.delete("/api/followups/policies/vip_call", headers=ADMIN),
                         await fu.client.put("/api/followups/policies/vip_call", json=VIP, headers=ADMIN)):
            assert_error(response, 404, "not_found")
        await fu.entered("cy", "vip")
        assert await fu.of("cy") == []


class TestEditingVersions:
    async def test_keep_leaves_open_ones_and_new_ones_follow_the_new_version(self, fu: Followups) -> None:
        await fu.entered("ann", "value:high")
        before = await fu.only("ann")
        edited = await put(fu, "high_value_7d", HIGH_VALUE)
        assert {k: edited[k] for k in ("version", "channel", "priority", "due_in_hours", "assignee")} == {
            "version": 2, "channel": "sms", "priority": "urgent", "due_in_hours": 48, "assignee": "dave"}
        assert await fu.get(before["id"]) == before
        await fu.entered("bob", "value:high", days=1)
        bobs = await fu.only("bob")
        assert (bobs["policy_version"], bobs["channel"], bobs["priority"], bobs["assignee"], bobs["due_at"]) == (
            2, "sms", "urgent", "dave", iso(3))
        assert (await put(fu, "high_value_7d", {**HIGH_VALUE, "apply_to_open": "keep"}))["version"] == 3

    async def test_reschedule_moves_open_ones_from_their_trigger(self, fu: Followups) -> None:
        await fu.entered("bob", "value:high")
        done = await fu.ok((await fu.only("bob"))["id"], "complete", {"outcome": "reached"})
        await fu.entered("ann", "value:high")
        await fu.advance(days=2.5)  # ann's is recorded overdue
        ann = await fu.only("ann")
        assert ann["status"] == "overdue"
        await put(fu, "high_value_7d", {**HIGH_VALUE, "due_in_hours": 72, "apply_to_open": "reschedule"})
        moved = await fu.get(ann["id"])
        assert moved == {**ann, "policy_version": 2, "channel": "sms", "priority": "urgent", "assignee": "dave",
                         "status": "pending", "due_at": iso(3)}
        found = {f["id"]: f for f in await fu.of("bob")}
        assert found[done["id"]] == {k: v for k, v in done.items() if k != "next"}
        assert found[done["next"]["id"]]["due_at"] == iso(9)  # completed at day 0, + 7 days, then + (72 - 24) h
        assert [e["change"] for e in await fu.events() if e["followup_id"] == ann["id"]] == [
            "created", "due", "overdue", "snoozed"]

    async def test_cancel_closes_open_ones_with_the_reason(self, fu: Followups) -> None:
        await fu.entered("bob", "value:high")
        done = await fu.ok((await fu.only("bob"))["id"], "complete", {"outcome": "reached", "next_due_at": iso(1)})
        await fu.ok(done["next"]["id"], "complete", {"outcome": "reached"})
        await fu.entered("ann", "value:high")
        await fu.entered("ann", "lifecycle:new")
        fu.clock.advance(hours=3)
        await put(fu, "high_value_7d", {**HIGH_VALUE, "apply_to_open": "cancel"})
        assert {f["policy"]: (f["status"], f["reason"], f["completed_at"]) for f in await fu.of("ann")} == {
            "high_value_7d": ("cancelled", "policy high_value_7d changed (version 2)", iso(hours=3)),
            "welcome_new": ("pending", "entered lifecycle:new", None)}
        assert [f["status"] for f in await fu.of("bob")] == ["done", "done", "cancelled"]


class TestWhoMay:
    @pytest.mark.parametrize(("method", "path", "body"), [
        ("POST", "/api/followups/policies", VIP),
        ("PUT", "/api/followups/policies/high_value_7d", HIGH_VALUE),
        ("DELETE", "/api/followups/policies/high_value_7d", None),
    ])
    async def test_a_reader_is_403_and_no_key_is_401(self, fu: Followups, method: str, path: str, body: Any) -> None:
        response = await fu.client.request(method, path, json=body, headers=READER)
        assert_error(response, 403, "admin_required")
        response = await fu.client.request(method, path, json=body)
        assert_error(response, 401, "missing_api_key")
        assert (await fu.policy("high_value_7d"))["version"] == 1
        assert "vip_call" not in await policies(fu)

    async def test_reading_needs_a_key(self, fu: Followups) -> None:
        for path in ("/api/followups/policies", "/api/followups/policies/welcome_new"):
            assert_error(await fu.client.get(path), 401, "missing_api_key")
            response = await fu.client.get(path, headers={"Authorization": "Bearer nope"})
            assert_error(response, 401, "invalid_api_key")

"""Bad input on every follow-up endpoint: the contract's error shape with the right status (400
bad JSON or cursor, 422 bad fields and times without an offset, 404 unknown ids), never a 500,
and nothing changed."""
from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest

from tests.followup.support import Followups, iso
from tests.helpers import ADMIN, READER, assert_error

ACTIONS = ("complete", "snooze", "cancel", "assign")
GOOD = {"complete": {"outcome": "reached"}, "snooze": {"until": iso(2)}, "cancel": {"reason": "x"},
        "assign": {"assignee": "carol"}}
POLICY = {"trigger": {"on": "segment_entered", "segment": "lifecycle:new"}}
NAIVE = "2024-03-02T00:00:00"


@pytest.fixture
async def open_one(fu: Followups) -> dict[str, Any]:
    """ann's welcome follow-up, open."""
    await fu.entered("ann", "lifecycle:new")
    return await fu.only("ann")


def forged(*values: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(values)).decode().rstrip("=")


class TestBadJson:
    @pytest.mark.parametrize(("method", "path"), [
        ("POST", "/api/followups"), *(("POST", f"/api/followups/{{id}}/{a}") for a in ACTIONS),
        ("POST", "/api/followups/policies"), ("PUT", "/api/followups/policies/welcome_new"),
    ])
    async def test_a_body_that_is_not_json_is_400(self, fu: Followups, open_one: dict[str, Any], method: str,
                                                  path: str) -> None:
        response = await fu.client.request(method, path.replace("{id}", open_one["id"]), content=b'{"outcome": ',
                                           headers={**ADMIN, "Content-Type": "application/json"})
        assert_error(response, 400, "invalid_json")
        assert await fu.get(open_one["id"]) == open_one
        assert (await fu.policy("welcome_new"))["version"] == 1


class TestBadFields:
    @pytest.mark.parametrize(("path", "body", "loc"), [
        ("/api/followups", {}, ["body", "customer_id"]),
        ("/api/followups", [], ["body"]),
        ("/api/followups", {"customer_id": "", "due_at": iso(1)}, ["body", "customer_id"]),
        ("/api/followups", {"customer_id": "a" * 201, "due_at": iso(1)}, ["body", "customer_id"]),
        ("/api/followups", {"customer_id": "bob", "due_at": "tomorrow"}, ["body", "due_at"]),
        ("/api/followups", {"customer_id": "bob", "due_at": NAIVE}, "due_at"),
        ("/api/followups", {"customer_id": "bob", "due_at": "0001-01-01T00:00:00Z"}, "due_at"),
        ("/api/followups", {"customer_id": "bob", "due_at": iso(1), "channel": "fax"}, ["body", "channel"]),
        ("/api/followups", {"customer_id": "bob", "due_at": iso(1), "priority": "asap"}, ["body", "priority"]),
        ("/api/followups/{id}/complete", {}, ["body", "outcome"]),
        ("/api/followups/{id}/complete", {"outcome": ""}, ["body", "outcome"]),
        ("/api/followups/{id}/complete", {"outcome": "x" * 51}, ["body", "outcome"]),
        ("/api/followups/{id}/complete", {"outcome": "reached", "next_due_at": NAIVE}, "next_due_at"),
        ("/api/followups/{id}/snooze", {}, ["body", "until"]),
        ("/api/followups/{id}/snooze", {"until": NAIVE}, "until"),
        ("/api/followups/{id}/snooze", {"until": "soon"}, ["body", "until"]),
        ("/api/followups/{id}/cancel", {}, ["body", "reason"]),
        ("/api/followups/{id}/cancel", {"reason": ""}, ["body", "reason"]),
        ("/api/followups/{id}/assign", {}, ["body", "assignee"]),
        ("/api/followups/{id}/assign", {"assignee": ""}, ["body", "assignee"]),
        ("/api/followups/policies", [], ["body"]),
        ("/api/followups/policies", "a policy", ["body"]),
    ])
    async def test_a_bad_field_is_422_naming_it(self, fu: Followups, open_one: dict[str, Any], path: str, body: Any,
                                                loc: Any) -> None:
        response = await fu.client.post(path.replace("{id}", open_one["id"]), json=body, headers=ADMIN)
        assert_error(response, 422, "invalid_fields")
        assert loc in [d["loc"] for d in response.json()["error"]["details"]]
        assert await fu.of("bob") == []
        assert await fu.of("ann") == [open_one]

    async def test_a_policy_edit_that_is_not_an_object_is_422(self, fu: Followups) -> None:
        response = await fu.client.put("/api/followups/policies/welcome_new", json=[POLICY], headers=ADMIN)
        assert_error(response, 422, "invalid_fields")
        assert (await fu.policy("welcome_new"))["version"] == 1


class TestBadQueries:
    @pytest.mark.parametrize(("path", "params", "loc"), [
        ("/api/followups", {"status": "late"}, ["query", "status"]),
        ("/api/followups", {"limit": "0"}, ["query", "limit"]),
        ("/api/followups", {"limit": "1001"}, ["query", "limit"]),
        ("/api/followups", {"limit": "ten"}, ["query", "limit"]),
        ("/api/followups", {"due_before": NAIVE}, "due_before"),
        ("/api/followups", {"due_before": "yesterday"}, ["query", "due_before"]),
        ("/api/followups/stats", {"from": NAIVE}, "from"),
        ("/api/followups/stats", {"to": NAIVE}, "to"),
        ("/api/followups/stats", {"from": iso(1), "to": iso(1)}, "from"),
        ("/api/followups/stats", {"from": iso(2), "to": iso(1)}, "from"),
        ("/api/followups/stats", {"from": "last week"}, ["query", "from"]),
        ("/api/followups/stats", {"to": "0001-01-01T00:00:00Z"}, "to"),
    ])
    async def test_a_bad_parameter_is_422_naming_it(self, fu: Followups, path: str, params: dict[str, str],
                                                    loc: Any) -> None:
        response = await fu.client.get(path, params=params, headers=READER)
        assert_error(response, 422, "invalid_fields")
        assert loc in [d["loc"] for d in response.json()["error"]["details"]]

    @pytest.mark.parametrize("cursor", ["not-a-cursor", forged(1, 2), forged("2024-03-01T00:00:00+00:00"), "e30"])
    async def test_a_cursor_this_api_did_not_give_is_400(self, fu: Followups, open_one: dict[str, Any],
                                                         cursor: str) -> None:
        response = await fu.client.get("/api/followups", params={"cursor": cursor}, headers=READER)
        assert_error(response, 400, "invalid_cursor")

    @pytest.mark.parametrize("cursor", [forged("yesterday", "x"), forged(NAIVE, "x")])
    async def test_a_forged_cursor_of_two_strings_is_400(self, fu: Followups, open_one: dict[str, Any],
                                                         cursor: str) -> None:
        response = await fu.client.get("/api/followups", params={"cursor": cursor}, headers=READER)
        assert_error(response, 400, "invalid_cursor")


class TestUnknownIds:
    @pytest.mark.parametrize("action", ACTIONS)
    async def test_an_action_on_an_unknown_follow_up_is_404(self, fu: Followups, action: str) -> None:
        response = await fu.client.post(f"/api/followups/nope/{action}", json=GOOD[action], headers=ADMIN)
        assert_error(response, 404, "not_found")
        assert "'nope'" in response.json()["error"]["message"]

    @pytest.mark.parametrize(("method", "path", "body"), [
        ("GET", "/api/followups/nope", None),
        ("GET", "/api/followups/policies/nope", None),
        ("PUT", "/api/followups/policies/nope", POLICY),
        ("DELETE", "/api/followups/policies/nope", None),
    ])
    async def test_an_unknown_follow_up_or_policy_is_404(self, fu: Followups, method: str, path: str, body: Any) -> None:
        response = await fu.client.request(method, path, json=body, headers=ADMIN)
        assert_error(response, 404, "not_found")
        assert "nope" not in [p["key"] for p in await fu.paged("/api/followups/policies")]

    async def test_a_method_the_route_does_not_have_is_405(self, fu: Followups, open_one: dict[str, Any]) -> None:
        response = await fu.client.delete(f"/api/followups/{open_one['id']}", headers=ADMIN)
        assert_error(response, 405, "method_not_allowed")
        assert await fu.get(open_one["id"]) == open_one


class TestNumbersNoCalendarHolds:
    """A policy whose hours or days no date can hold is accepted today; the follow-ups it should
    make then break what they touch."""

    @pytest.mark.parametrize(("change", "where"), [
        ({"trigger": {"on": "stage_stalled", "funnel": "lifecycle", "stage": "interest", "days": 1e6}}, "trigger.days"),
        ({"due_in_hours": 1e12}, "due_in_hours"),
        ({"cadence_days": 1e12}, "cadence_days"),
    ])
    async def test_refused_with_422_naming_the_part(self, fu: Followups, change: dict[str, Any], where: str) -> None:
        response = await fu.client.post("/api/followups/policies", headers=ADMIN, json={
            "key": "huge", "trigger": {"on": "segment_entered", "segment": "vip"}, **change})
        assert_error(response, 422, "invalid_policy")
        assert response.json()["error"]["details"][0]["loc"] == where

    async def test_a_stalled_policy_of_a_million_days_does_not_stop_the_scheduler(self, fu: Followups) -> None:
        await fu.client.post("/api/followups/policies", headers=ADMIN, json={
            "key": "forever", "trigger": {"on": "stage_stalled", "funnel": "lifecycle", "stage": "interest", "days": 1e6}})
        await fu.entered("ann", "lifecycle:new")
        fu.clock.advance(days=1)
        await fu.sweep()
        assert [e["change"] for e in await fu.events()] == ["created", "due"]

    async def test_a_huge_due_time_does_not_cost_other_policies_their_follow_up(self, fu: Followups) -> None:
        await fu.client.post("/api/followups/policies", headers=ADMIN, json={
            "key": "huge", "due_in_hours": 1e12, "trigger": {"on": "segment_entered", "segment": "value:high"}})
        await fu.entered("bob", "value:high")
        assert "high_value_7d" in [f["policy"] for f in await fu.of("bob")]

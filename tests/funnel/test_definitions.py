"""Custom funnels through the gateway: create, read, edit (rebuilt from retained events, customers
move both ways with transitions), delete, refusals; and bad query input, always the contract's
error shape. SQLite and PostgreSQL."""
from __future__ import annotations

import base64
import copy
from typing import Any

import orjson
import pytest

from tests.funnel.support import Funnels, at, iso, order, page, track, walk
from tests.helpers import ADMIN, READER, assert_error

VIEW_TO_BUY: dict[str, Any] = {
    "key": "view-to-buy", "name": "View to buy", "conversion_window_days": 30, "stages": [
        {"key": "viewed", "name": "Viewed", "match": {"type": "track", "event": ["Product Viewed", "Product Added"]}},
        {"key": "bought", "name": "Bought", "max_days_from_previous": 7,
         "match": {"type": "track", "event": "Order Completed", "where": {"field": "revenue", "op": "gt", "value": 20}}}]}
TRIAL: dict[str, Any] = {"key": "trial", "name": "Trial", "conversion_window_days": 30, "stages": [
    {"key": "visit", "name": "Visit", "match": {"type": "page"}},
    {"key": "signup", "name": "Sign-up", "match": {"type": "track", "event": "Signed Up"}}]}
PRO_ONLY = {"field": "plan", "op": "eq", "value": "pro"}


@pytest.fixture
def funnel_db_url(store_url: str) -> str:
    return store_url


def with_(definition: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy with the value at a dotted path (`stages.1.match.type`) replaced."""
    changed = copy.deepcopy(definition)
    *parents, last = path.split(".")
    node: Any = changed
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    node[int(last) if isinstance(node, list) else last] = value
    return changed


BAD_DEFINITIONS: list[tuple[str, Any, str]] = [  # (what is changed, to what, the part the 422 names)
    ("stages.1.match.type", "click", "stages[1].match.type"),
    ("stages.1.match.event", "", "stages[1].match.event"),
    ("stages.1.match.where.op", "bigger", "stages[1].match.where.op"),
    ("stages.1.match.where", {"event": "Order Completed", "within_days": 3}, "stages[1].match.where"),
    ("stages.1.match", {}, "stages[1].match"),
    ("stages.0.max_days_from_previous", 3, "stages[0].max_days_from_previous"),
    ("stages.1.max_days_from_previous", 0, "stages[1].max_days_from_previous"),
    ("stages.0.matches", {"type": "page"}, "stages[0]"),
    ("stages.1.key", "viewed", "stages"),
    ("stages", [], "stages"),
    ("conversion_window_days", "30", "conversion_window_days"),
    ("conversion_window_days", 0, "conversion_window_days"),
    ("conversion_window_days", 10**30, "conversion_window_days"),  # numbers no store can hold
    ("conversion_window_days", 1e308, "conversion_window_days"),
    ("conversion_window_days", 36501, "conversion_window_days"),  # over a century
    ("stages.1.max_days_from_previous", 10**30, "stages[1].max_days_from_previous"),
    ("stages.1.max_days_from_previous", 36500.5, "stages[1].max_days_from_previous"),
    ("stages.1.match.where.value", 10**30, "stages[1].match.where.value"),
    ("stages.1.match.where.value", -1e308, "stages[1].match.where.value"),
    ("stages.1.match.where", {"field": "sku", "op": "in", "value": ["a", 2**64]}, "stages[1].match.where.value"),
    ("stages.1.match.where", {"field": "sku", "op": "eq", "value": {"a": 10**30}}, "stages[1].match.where.value"),
    ("key", "view to buy", "key"),
]


def viewers() -> list[dict[str, Any]]:
    return [track("ann-add", "ann", "Product Added", -10), order("ann-o", "ann", -5, revenue=30),
            track("bob-view", "bob", "Product Viewed", -10), order("bob-o", "bob", -9, revenue=10),
            track("cy-view", "cy", "Product Viewed", -20), order("cy-o", "cy", -12, revenue=50),
            track("dan-click", "dan", "Product Clicked", -3), order("eve-o", "eve", -2, revenue=50)]


class TestCreate:
    async def test_a_new_funnel_is_built_from_the_events_already_received(self, funnels: Funnels) -> None:
        await funnels.send(*viewers())
        created = await funnels.create(VIEW_TO_BUY)
        assert created == {**VIEW_TO_BUY, "built_in": False, "customers": {"viewed": 2, "bought": 1}}
        assert await funnels.get("/api/funnels/view-to-buy") == created
        assert [f["key"] for f in await funnels.paged("/api/funnels")] == ["lifecycle", "sales", "view-to-buy"]
        ann = await funnels.customer("view-to-buy", "ann")
        assert ann["attempt"] == [{"stage": "viewed", "at": at(-10), "event_id": "ann-add"},
                                  {"stage": "bought", "at": at(-5), "event_id": "ann-o"}]
        for customer in ("bob", "cy"):  # an order of 10; an order 8 days after the view
            assert (await funnels.customer("view-to-buy", customer))["stage"] == "viewed"
        for customer in ("dan", "eve"):
            assert (await funnels.get_customer("view-to-buy", customer)).status_code == 404

    async def test_events_after_creation_move_customers_in_it(self, funnels: Funnels) -> None:
        await funnels.create(VIEW_TO_BUY)
        await funnels.send(*viewers())
        assert (await funnels.get("/api/funnels/view-to-buy"))["customers"] == {"viewed": 2, "bought": 1}
        assert [t["customer_id"] for t in await funnels.transitions("view-to-buy")] == ["ann", "ann", "bob", "cy"]

    @pytest.mark.parametrize("key", ["view-to-buy", "lifecycle"])
    async def test_a_taken_key_is_a_conflict(self, funnels: Funnels, key: str) -> None:
        await funnels.create(VIEW_TO_BUY)
        response = await funnels.client.post("/api/funnels", json={**VIEW_TO_BUY, "key": key}, headers=ADMIN)
        assert_error(response, 409, "conflict")

    async def test_a_bad_definition_is_a_422_naming_the_bad_part(self, funnels: Funnels) -> None:
        for path, value, where in BAD_DEFINITIONS:
            response = await funnels.client.post("/api/funnels", json=with_(VIEW_TO_BUY, path, value), headers=ADMIN)
            assert_error(response, 422, "invalid_funnel")
            assert [d["loc"] for d in response.json()["error"]["details"]] == [where], (path, value)
        assert [f["key"] for f in await funnels.paged("/api/funnels")] == ["lifecycle", "sales"]

    async def test_a_body_that_is_not_json_is_a_400(self, funnels: Funnels) -> None:
        response = await funnels.client.post("/api/funnels", content=b"{not json",
                                              headers={**ADMIN, "Content-Type": "application/json"})
        assert_error(response, 400, "invalid_json")

    @pytest.mark.parametrize(("method", "path"), [("POST", "/api/funnels"), ("PUT", "/api/funnels/trial"),
                                                  ("DELETE", "/api/funnels/trial")])
    async def test_changes_need_an_admin_key(self, funnels: Funnels, method: str, path: str) -> None:
        await funnels.create(TRIAL)
        body = orjson.dumps(TRIAL)
        assert_error(await funnels.client.request(method, path, content=body, headers=READER), 403, "admin_required")
        assert_error(await funnels.client.request(method, path, content=body), 401, "missing_api_key")
        assert await funnels.get("/api/funnels/trial") == {**TRIAL, "built_in": False,
                                                           "customers": {"visit": 0, "signup": 0}}


class TestEdit:
    async def test_a_stricter_definition_moves_customers_back_and_a_looser_one_forward(self, funnels: Funnels) -> None:
        await funnels.send(page("ann-p", "ann", -5), track("ann-up", "ann", "Signed Up", -4, plan="free"),
                           page("bob-p", "bob", -3), track("bob-up", "bob", "Signed Up", -2, plan="pro"))
        await funnels.create(TRIAL)
        funnels.clock.advance(hours=1)
        strict = await funnels.update("trial", with_(TRIAL, "stages.1.match.where", PRO_ONLY))
        assert strict["customers"] == {"visit": 1, "signup": 1}
        back = {"customer_id": "ann", "from_stage": "signup", "to_stage": "visit", "at": iso(funnels.clock.now()),
                "event_id": None}
        ann = await funnels.customer("trial", "ann")
        assert (ann["stage"], ann["transitions"][2:]) == ("visit", [back])
        assert [c["customer_id"] for c in await funnels.stage("trial", "signup")] == ["bob"]
        funnels.clock.advance(hours=1)
        await funnels.update("trial", TRIAL)
        ann = await funnels.customer("trial", "ann")
        assert (ann["stage"], ann["transitions"][2:]) == ("signup", [back, {
            "customer_id": "ann", "from_stage": "visit", "to_stage": "signup", "at": at(-4), "event_id": "ann-up"}])
        assert [p["to_stage"] for p in await funnels.published() if p["funnel"] == "trial" and p["customer_id"] == "ann"] == [
            "visit", "signup", "visit", "signup"]

    async def test_segments_on_the_stage_follow_a_customer_moved_back_and_forward_by_edits(self, funnels: Funnels) -> None:
        rule = {"field": "funnel.trial.stage", "op": "eq", "value": "signup"}
        created = await funnels.client.post("/api/segments", json={"key": "signed-up", "rule": rule}, headers=ADMIN)
        assert created.status_code == 201, created.text
        await funnels.send(page("ann-p", "ann", -5), track("ann-up", "ann", "Signed Up", -4, plan="free"))
        await funnels.create(TRIAL)
        await funnels.update("trial", with_(TRIAL, "stages.1.match.where", PRO_ONLY))
        await funnels.update("trial", TRIAL)
        assert (await funnels.customer("trial", "ann"))["stage"] == "signup"
        members = await funnels.get("/api/segments/signed-up/members")
        assert [m["customer_id"] for m in members["items"]] == ["ann"]

    async def test_an_added_stage_moves_customers_forward(self, funnels: Funnels) -> None:
        await funnels.send(*walk("ann", -10)[:3])
        await funnels.create(TRIAL)
        bigger = {**TRIAL, "stages": [TRIAL["stages"][0], {"key": "engaged", "match": {"type": "identify",
                  "where": {"field": "traits.email", "op": "contains", "value": "@example.com"}}},
                  {"key": "viewing", "match": [{"type": "track", "event": "Product Viewed"}, {"type": "screen"}]}]}
        updated = await funnels.update("trial", bigger)
        assert updated == {**bigger, "stages": [{**s, "name": s.get("name", s["key"])} for s in bigger["stages"]],
                           "built_in": False, "customers": {"visit": 0, "engaged": 0, "viewing": 1}}
        assert [t["to_stage"] for t in (await funnels.customer("trial", "ann"))["transitions"]] == [
            "visit", "engaged", "viewing"]

    async def test_the_lifecycle_funnel_can_be_edited_but_not_deleted(self, funnels: Funnels) -> None:
        await funnels.send(page("ann-p", "ann", -5), track("ann-up", "ann", "Signed Up", -3))
        lifecycle = await funnels.get("/api/funnels/lifecycle")
        assert (lifecycle["customers"]["awareness"], lifecycle["customers"]["interest"]) == (0, 1)
        definition = {k: v for k, v in lifecycle.items() if k not in ("built_in", "customers")}
        edited = await funnels.update("lifecycle", {**definition, "conversion_window_days": 1})  # the steps are 2 days apart
        assert (edited["built_in"], edited["customers"]["awareness"], edited["customers"]["interest"]) == (True, 1, 0)
        assert (await funnels.customer("lifecycle", "ann"))["transitions"][-1]["to_stage"] == "awareness"
        assert_error(await funnels.client.delete("/api/funnels/lifecycle", headers=ADMIN), 409, "conflict")
        assert_error(await funnels.client.delete("/api/funnels/sales", headers=ADMIN), 409, "conflict")

    async def test_a_body_key_other_than_the_path_or_an_unknown_funnel_is_refused(self, funnels: Funnels) -> None:
        await funnels.create(TRIAL)
        assert_error(await funnels.client.put("/api/funnels/trial", json={**TRIAL, "key": "other"}, headers=ADMIN),
                     422, "invalid_fields")
        assert_error(await funnels.client.put("/api/funnels/nope", json={**TRIAL, "key": "nope"}, headers=ADMIN),
                     404, "not_found")


class TestDelete:
    async def test_deleting_takes_customers_out_with_a_last_transition(self, funnels: Funnels) -> None:
        await funnels.send(page("ann-p", "ann", -5), track("ann-up", "ann", "Signed Up", -4), page("bob-p", "bob", -3))
        await funnels.create(TRIAL)
        response = await funnels.client.delete("/api/funnels/trial", headers=ADMIN)
        assert response.status_code == 204, response.text
        await funnels.settle()
        for path in ("/api/funnels/trial", "/api/funnels/trial/customers/ann", "/api/funnels/trial/report"):
            assert_error(await funnels.client.get(path, headers=READER), 404, "not_found")
        assert [f["key"] for f in await funnels.paged("/api/funnels")] == ["lifecycle", "sales"]
        last = [(p["customer_id"], p["from_stage"], p["to_stage"], p["at"]) for p in await funnels.published()
                if p["funnel"] == "trial" and p["to_stage"] is None]
        assert sorted(last) == [("ann", "signup", None, at(0)), ("bob", "visit", None, at(0))]
        assert_error(await funnels.client.delete("/api/funnels/trial", headers=ADMIN), 404, "not_found")

    async def test_a_funnel_created_again_starts_from_the_events_not_the_old_state(self, funnels: Funnels) -> None:
        await funnels.send(page("ann-p", "ann", -5), track("ann-up", "ann", "Signed Up", -4))
        await funnels.create(TRIAL)
        assert (await funnels.report("trial"))["customers"] == 1  # the report index is warm
        assert (await funnels.client.delete("/api/funnels/trial", headers=ADMIN)).status_code == 204
        await funnels.send(page("bob-p", "bob", -3))
        again = await funnels.create(TRIAL)
        assert again["customers"] == {"visit": 1, "signup": 1}
        assert [s["entered"] for s in (await funnels.report("trial"))["stages"]] == [2, 1]
        assert [(t["customer_id"], t["to_stage"]) for t in await funnels.transitions("trial")] == [
            ("ann", "visit"), ("ann", "signup"), ("bob", "visit")]
        stricter = await funnels.update("trial", with_(TRIAL, "stages.1.match.where", PRO_ONLY))
        assert stricter["customers"] == {"visit": 2, "signup": 0}
        assert [s["entered"] for s in (await funnels.report("trial"))["stages"]] == [2, 0]


def cursor(*values: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(values)).decode().rstrip("=")


REPORT, STAGE, FEED = "/api/funnels/lifecycle/report", "/api/funnels/lifecycle/stages/interest/customers", "/api/funnels/lifecycle/transitions"
NEVER_500 = "the contract: never a 500 for anything a client sent"


BAD_QUERIES: list[tuple[str, dict[str, Any], int, str]] = [
    (REPORT, {"breakdown": "bogus"}, 422, "invalid_fields"),
    (REPORT, {"breakdown": "segment:"}, 422, "invalid_fields"),
    (REPORT, {"from": at(-1), "to": at(-1)}, 422, "invalid_fields"),
    (REPORT, {"from": at(-1), "to": at(-2)}, 422, "invalid_fields"),
    (REPORT, {"from": "2024-02-01T00:00:00"}, 422, "invalid_fields"),
    (REPORT, {"to": "yesterday"}, 422, "invalid_fields"),
    (FEED, {"since": "2024-02-01T00:00:00"}, 422, "invalid_fields"),
    ("/api/funnels/nope/report", {}, 404, "not_found"),
    ("/api/funnels/nope/customers/ann", {}, 404, "not_found"),
    ("/api/funnels/nope/transitions", {}, 404, "not_found"),
    ("/api/funnels/nope/stages/interest/customers", {}, 404, "not_found"),
    ("/api/funnels/lifecycle/stages/nope/customers", {}, 404, "not_found"),
    ("/api/funnels/lifecycle/customers/nobody", {}, 404, "not_found"),
    (STAGE, {"cursor": "forged"}, 400, "invalid_cursor"),
    (STAGE, {"cursor": cursor(7)}, 400, "invalid_cursor"),  # the feed's cursor
    (FEED, {"cursor": cursor(1.5, "ann")}, 400, "invalid_cursor"),  # a stage list's cursor
    (FEED, {"cursor": "%%%"}, 400, "invalid_cursor"),
    (STAGE, {"stalled_days": -1}, 422, "invalid_fields"),
    (STAGE, {"limit": 0}, 422, "invalid_fields"),
    (FEED, {"limit": 1001}, 422, "invalid_fields"),
]


class TestBadQueries:
    async def test_the_contract_error_never_a_500(self, funnels: Funnels) -> None:
        await funnels.send(*walk("ann", -10))
        for path, params, status, code in BAD_QUERIES:
            response = await funnels.client.get(path, params=params, headers=READER)
            assert (response.status_code, response.json()["error"]["code"]) == (status, code), (path, params)
            assert_error(response, status, code)

    @pytest.mark.parametrize(("path", "params", "status", "code"), [
        pytest.param(FEED, {"cursor": cursor(2**63)}, 400, "invalid_cursor"),
        pytest.param(STAGE, {"stalled_days": 1_000_000}, 422, "invalid_fields"),
        pytest.param(REPORT, {"from": "0001-01-01T00:00:00+01:00"}, 422, "invalid_fields"),
        pytest.param(FEED, {"since": "0001-01-01T00:00:00+01:00"}, 422, "invalid_fields"),
    ])
    async def test_input_at_the_edges_of_the_number_and_time_ranges(self, funnels: Funnels, path: str,
                                                                    params: dict[str, Any], status: int, code: str) -> None:
        assert_error(await funnels.client.get(path, params=params, headers=READER), status, code)


class TestListing:
    async def test_funnels_are_paged_built_ins_first_then_by_key_each_once(self, funnels: Funnels) -> None:
        await funnels.send(page("ann-p", "ann", -5), track("ann-up", "ann", "Signed Up", -4), page("bob-p", "bob", -3))
        for key in ("zeta", "alpha", "mid"):  # sorting before, between and after lifecycle and sales
            await funnels.create({**TRIAL, "key": key})
        await funnels.update("lifecycle", {**TRIAL, "key": "lifecycle"})  # edited: stored, still built in
        expected = ["lifecycle", "sales", "alpha", "mid", "zeta"]
        first = await funnels.get("/api/funnels")
        assert ([f["key"] for f in first["items"]], first["next_cursor"]) == (expected, None)
        assert [f["built_in"] for f in first["items"]] == [True, True, False, False, False]
        assert first["items"] == [await funnels.get(f"/api/funnels/{key}") for key in expected]  # counts per funnel
        assert first["items"][2]["customers"] == {"visit": 1, "signup": 1}
        for limit in (1, 2, 3, 4, 5, 1000):
            assert [f["key"] for f in await funnels.paged("/api/funnels", limit=limit)] == expected, limit
        assert (await funnels.get("/api/funnels", limit=5))["next_cursor"] is None

    async def test_a_page_resumes_after_its_cursor_even_when_that_funnel_was_deleted(self, funnels: Funnels) -> None:
        for key in ("a1", "a2", "a3"):
            await funnels.create({**TRIAL, "key": key})
        first = await funnels.get("/api/funnels", limit=3)
        assert [f["key"] for f in first["items"]] == ["lifecycle", "sales", "a1"]
        assert (await funnels.client.delete("/api/funnels/a1", headers=ADMIN)).status_code == 204
        rest = await funnels.get("/api/funnels", cursor=first["next_cursor"])
        assert ([f["key"] for f in rest["items"]], rest["next_cursor"]) == (["a2", "a3"], None)

    @pytest.mark.parametrize(("params", "status", "code"), [
        ({"limit": 0}, 422, "invalid_fields"), ({"limit": 1001}, 422, "invalid_fields"),
        ({"cursor": "nonsense"}, 400, "invalid_cursor"), ({"cursor": "%%%"}, 400, "invalid_cursor"),
        ({"cursor": base64.urlsafe_b64encode(b"lifecycle").decode()}, 400, "invalid_cursor"),  # not JSON
        ({"cursor": cursor("not a key!")}, 400, "invalid_cursor"), ({"cursor": cursor("")}, 400, "invalid_cursor"),
        ({"cursor": cursor(7)}, 400, "invalid_cursor"), ({"cursor": cursor("a", "b")}, 400, "invalid_cursor"),
    ])
    async def test_a_bad_limit_or_cursor_is_refused(self, funnels: Funnels, params: dict[str, Any], status: int,
                                                    code: str) -> None:
        assert_error(await funnels.client.get("/api/funnels", params=params, headers=READER), status, code)

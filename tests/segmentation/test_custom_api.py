"""Custom segments as an admin and a reader meet them through the gateway: defining, changing and
deleting a rule, previewing one, the refusals, and memberships that follow customers' events."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from services.segmentation.logic import builtin_segments
from shared.paging import encode_cursor
from tests.helpers import ADMIN, READER, assert_error
from tests.segmentation.support import Segmentation, SegmentFeed, at, identify, order, page

EMAIL_VISIT = {"page": {"url": "https://shop.example/?utm_source=newsletter&utm_medium=email"}}
SEARCH_VISIT = {"page": {"url": "https://shop.example/", "referrer": "https://www.google.com/search?q=shoes"}}
PLAN_IN = {"field": "traits.plan", "op": "in", "value": ["pro", "team"]}
LYON = {"field": "traits.address.city", "op": "eq", "value": "Lyon"}


async def create(seg: Segmentation, key: str, rule: Any, **extra: Any) -> httpx.Response:
    return await seg.client.post("/api/segments", json={"key": key, "rule": rule, **extra}, headers=ADMIN)


async def preview(seg: Segmentation, rule: Any) -> dict[str, Any]:
    response = await seg.client.post("/api/segments:preview", json={"rule": rule}, headers=READER)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def plans(seg: Segmentation, **by_customer: str) -> None:
    await seg.send(*(identify(f"i-{c}", c, days=-1, plan=p) for c, p in by_customer.items()))


class TestDefinitions:
    async def test_a_new_segment_is_listed_after_the_built_ins_with_its_members_counted(self, seg: Segmentation) -> None:
        await plans(seg, ann="pro", bob="team", cy="free")
        response = await create(seg, "paid", PLAN_IN, name="Paying plans", description="pro or team")
        assert response.status_code == 201, response.text
        expected = {"key": "paid", "name": "Paying plans", "description": "pro or team", "built_in": False,
                    "member_count": 2, "rule": PLAN_IN, "created_at": at(0), "updated_at": at(0)}
        assert response.json() == expected
        listed = (await seg.client.get("/api/segments", headers=READER)).json()
        assert listed["items"][-1] == expected and [s["built_in"] for s in listed["items"]].count(False) == 1
        assert listed["next_cursor"] is None
        assert (await seg.client.get("/api/segments/paid", headers=READER)).json() == expected
        assert await seg.members("paid") == ["ann", "bob"]
        assert await seg.history("paid", "bob") == [
            {"customer_id": "bob", "change": "entered", "at": at(0), "reason": "traits.plan in ['pro', 'team'] (is 'team')"}]

    async def test_a_name_defaults_to_the_key(self, seg: Segmentation) -> None:
        assert (await create(seg, "lyon", LYON)).json()["name"] == "lyon"

    async def test_a_changed_rule_lets_out_those_who_no_longer_match(self, seg: Segmentation) -> None:
        await plans(seg, ann="pro", bob="team", cy="free")
        await create(seg, "paid", PLAN_IN, description="pro or team")
        seg.clock.advance(days=1)
        rule = {"field": "traits.plan", "op": "eq", "value": "pro"}
        response = await seg.client.put("/api/segments/paid", json={"rule": rule, "name": "Pro"}, headers=ADMIN)
        assert response.status_code == 200, response.text
        assert response.json() == {"key": "paid", "name": "Pro", "description": "pro or team", "built_in": False,
                                   "member_count": 1, "rule": rule, "created_at": at(0), "updated_at": at(1)}
        assert await seg.members("paid") == ["ann"]
        assert [(h["change"], h["at"], h["reason"]) for h in await seg.history("paid", "bob")] == [
            ("entered", at(0), "traits.plan in ['pro', 'team'] (is 'team')"),
            ("exited", at(1), "not traits.plan eq 'pro' (is 'team')"),
        ]
        assert [h["change"] for h in await seg.history("paid", "ann")] == ["entered"]

    async def test_a_deleted_segment_is_gone_and_its_members_exit(self, seg: Segmentation, data_dir: Path) -> None:
        async with SegmentFeed(data_dir / "bus.db") as feed:
            await plans(seg, ann="pro", bob="team")
            await create(seg, "paid", PLAN_IN)
            assert "paid" in (await seg.profile("ann"))["segments"]
            seg.clock.advance(days=2)
            response = await seg.client.delete("/api/segments/paid", headers=ADMIN)
            assert (response.status_code, response.content) == (204, b"")
            changes = await feed.changes(lambda cs: sum(c["segment"] == "paid" for c in cs) >= 4)
        assert sorted((c["customer_id"], c["change"], c["at"], c["reason"]) for c in changes if c["segment"] == "paid") == [
            ("ann", "entered", at(0), "traits.plan in ['pro', 'team'] (is 'pro')"),
            ("ann", "exited", at(2), "segment deleted"),
            ("bob", "entered", at(0), "traits.plan in ['pro', 'team'] (is 'team')"),
            ("bob", "exited", at(2), "segment deleted"),
        ]
        for path in ("/api/segments/paid", "/api/segments/paid/members", "/api/segments/paid/history"):
            assert_error(await seg.client.get(path, headers=READER), 404, "not_found")
        assert "paid" not in await seg.segments()
        profile = await seg.profile("ann")
        assert ("paid" in profile["segments"], "paid" in profile["why"]) == (False, False)


CUSTOMERS = [
    page("p-ann", "ann", days=-4, context=EMAIL_VISIT),
    identify("i-ann", "ann", days=-3, plan="pro", age=34, email="Ann@Gmail.com", tags=["vip", "beta"],
             address={"city": "Lyon"}, signup="2024-02-10"),
    order("o-ann-1", "ann", days=-2, revenue=100), order("o-ann-2", "ann", days=-1, revenue=50),
    identify("i-bob", "bob", days=-3, plan="free", age="34", tags=["beta"], address={"city": "Paris"}, signup="2024-01-15"),
    order("o-bob", "bob", days=-1, revenue=20),
    page("p-cy", "cy", days=-3, context=SEARCH_VISIT), identify("i-cy", "cy", days=-2, vip=True, address={"city": "lyon"}),
    order("o-dee-1", "dee", days=-3, revenue=10), order("o-dee-2", "dee", days=-2, total=10),
    order("o-dee-3", "dee", days=-1, value=10),
]
ORDERS_OF_50 = {"field": "revenue", "op": "gte", "value": 50}
CASES: dict[str, tuple[dict[str, Any], list[str]]] = {
    "eq": ({"field": "traits.plan", "op": "eq", "value": "pro"}, ["ann"]),
    "ne": ({"field": "traits.plan", "op": "ne", "value": "pro"}, ["bob", "cy", "dee"]),
    "gt": ({"field": "traits.age", "op": "gt", "value": 30}, ["ann"]),               # bob's "34" is text
    "gte": ({"field": "event_count", "op": "gte", "value": 3}, ["ann", "dee"]),
    "lt": ({"field": "order_count", "op": "lt", "value": 2}, ["bob", "cy"]),
    "lt-text": ({"field": "traits.signup", "op": "lt", "value": "2024-02-01"}, ["bob"]),
    "lte": ({"field": "revenue", "op": "lte", "value": 30}, ["bob", "cy", "dee"]),
    "in": ({"field": "traits.address.city", "op": "in", "value": ["Lyon", "Paris"]}, ["ann", "bob"]),
    "not_in": ({"field": "channel", "op": "not_in", "value": ["email", "search"]}, ["bob", "dee"]),
    "contains": ({"field": "traits.email", "op": "contains", "value": "GMAIL"}, ["ann"]),
    "contains-list": ({"field": "traits.tags", "op": "contains", "value": "beta"}, ["ann", "bob"]),
    "exists": ({"field": "traits.vip", "op": "exists", "value": True}, ["cy"]),
    "exists-not": ({"field": "traits.plan", "op": "exists", "value": False}, ["cy", "dee"]),
    "between": ({"field": "avg_order_value", "op": "between", "value": [20, 75]}, ["ann", "bob"]),
    "lifecycle": ({"field": "lifecycle", "op": "in", "value": ["new", "loyal"]}, ["bob", "dee"]),
    "frequency": ({"field": "frequency_tier", "op": "eq", "value": "medium"}, ["ann", "dee"]),
    "no-frequency": ({"field": "frequency_tier", "op": "exists", "value": False}, ["cy"]),
    "behaviour": ({"event": "Order Completed", "where": ORDERS_OF_50, "within_days": 30}, ["ann"]),
    "behaviour-window": ({"event": "Order Completed", "op": "eq", "value": 2, "within_days": 2.5}, ["ann", "dee"]),
    "combined": ({"all": [{"field": "lifecycle", "op": "ne", "value": "potential"},
                          {"not": {"field": "traits.plan", "op": "eq", "value": "pro"}}]}, ["bob", "dee"]),
}


class TestRules:
    async def test_each_operator_selects_exactly_its_customers(self, seg: Segmentation) -> None:
        await seg.send(*CUSTOMERS)
        profiles = [await seg.profile(c) for c in ("ann", "bob", "cy", "dee")]
        assert [(p["event_count"], p["order_count"], p["revenue"], p["avg_order_value"], p["channel"], p["lifecycle"],
                 p["frequency_tier"]) for p in profiles] == [
            (4, 2, 150.0, 75.0, "email", "active", "medium"), (2, 1, 20.0, 20.0, "direct", "new", "low"),
            (2, 0, 0.0, None, "search", "potential", None), (3, 3, 30.0, 10.0, "direct", "loyal", "medium")]
        previewed = {name: await preview(seg, rule) for name, (rule, _) in CASES.items()}
        assert previewed == {name: {"count": len(ids), "sample": ids} for name, (_, ids) in CASES.items()}
        for name, (rule, _) in CASES.items():
            assert (await create(seg, name, rule)).status_code == 201
        saved = {name: (s["member_count"], await seg.members(name)) for name, s in (await seg.segments()).items()
                 if not s["built_in"]}
        assert saved == {name: (len(ids), ids) for name, (_, ids) in CASES.items()}

    async def test_a_preview_counts_and_samples_without_saving(self, seg: Segmentation) -> None:
        await seg.send(*(identify(f"i-{i}", f"c-{i:02}", days=-1, plan="pro") for i in (7, 11, 0, 3, 9, 1, 10, 2, 8, 5, 4, 6)))
        await seg.send(identify("i-x", "x", days=-1, plan="free"))
        before = await seg.segments()
        body = await preview(seg, {"field": "traits.plan", "op": "eq", "value": "pro"})
        assert body == {"count": 12, "sample": [f"c-{i:02}" for i in range(10)]}
        assert await seg.segments() == before
        assert (await seg.profile("c-00"))["segments"] == ["lifecycle:potential"]


class TestListing:
    async def test_segments_are_paged_built_ins_first_then_custom_by_key(self, seg: Segmentation) -> None:
        for key in ("zeta", "alpha", "mid"):
            assert (await create(seg, key, PLAN_IN)).status_code == 201
        expected = [*builtin_segments(), "alpha", "mid", "zeta"]
        first = (await seg.client.get("/api/segments", headers=READER)).json()
        assert [s["key"] for s in first["items"]] == expected[:50] and (first["next_cursor"] is None) == (len(expected) <= 50)
        for limit in (1, 7, len(builtin_segments()), 1000):
            keys, cursor = [], None
            while True:
                params = {"limit": limit, **({"cursor": cursor} if cursor else {})}
                page_ = (await seg.client.get("/api/segments", params=params, headers=READER)).json()
                assert 0 < len(page_["items"]) <= limit
                keys += [s["key"] for s in page_["items"]]
                if not (cursor := page_["next_cursor"]):
                    break
            assert keys == expected, limit

    async def test_a_page_resumes_after_its_cursor_even_when_that_segment_was_deleted(self, seg: Segmentation) -> None:
        for key in ("a1", "a2", "a3"):
            await create(seg, key, PLAN_IN)
        builtins = len(builtin_segments())
        page_ = (await seg.client.get("/api/segments", params={"limit": builtins + 1}, headers=READER)).json()
        assert page_["items"][-1]["key"] == "a1"
        assert (await seg.client.delete("/api/segments/a1", headers=ADMIN)).status_code == 204
        rest = (await seg.client.get("/api/segments", params={"cursor": page_["next_cursor"]}, headers=READER)).json()
        assert [s["key"] for s in rest["items"]] == ["a2", "a3"]

    @pytest.mark.parametrize(("params", "status", "code"), [
        ({"limit": 0}, 422, "invalid_fields"), ({"limit": 1001}, 422, "invalid_fields"),
        ({"cursor": "nonsense"}, 400, "invalid_cursor"), ({"cursor": encode_cursor("lifecycle:vip")}, 400, "invalid_cursor"),
        ({"cursor": encode_cursor(7)}, 400, "invalid_cursor")])
    async def test_a_bad_limit_or_cursor_is_refused(self, seg: Segmentation, params: dict[str, Any], status: int,
                                                    code: str) -> None:
        assert_error(await seg.client.get("/api/segments", params=params, headers=READER), status, code)


BAD_RULE = {"all": [{"field": "traits.plan", "op": "like", "value": "pro"}]}
NESTED_300: Any = [1]
for _ in range(299):
    NESTED_300 = [NESTED_300]


class TestRefusals:
    @pytest.mark.parametrize(("method", "path"), [
        ("POST", "/api/segments"), ("PUT", "/api/segments/paid"), ("POST", "/api/segments:preview")])
    @pytest.mark.parametrize(("rule", "where"), [
        (BAD_RULE, "rule.all[0].op"), ({"field": "lifecycle", "op": "eq", "value": "vip"}, "rule.value"),
        ({"event": "Signed Up", "within_days": 73_001}, "rule.within_days"), (None, "rule"), ("traits.plan", "rule"),
        # numbers no store or JSON writer holds, and values nested deeper than any property: never a 500
        ({"field": "revenue", "op": "gt", "value": 10**30}, "rule.value"),
        ({"field": "revenue", "op": "between", "value": [1, 1e308]}, "rule.value"),
        ({"field": "traits.x", "op": "in", "value": ["a", 10**30]}, "rule.value"),
        ({"field": "traits.x", "op": "eq", "value": {"a": [10**400]}}, "rule.value"),
        ({"field": "traits.x", "op": "eq", "value": NESTED_300}, "rule.value"),
        ({"event": "Signed Up", "within_days": 30, "value": 10**30}, "rule.value"),
        ({"event": "Signed Up", "within_days": 30, "where": {"field": "p", "op": "gt", "value": 10**30}}, "rule.where.value")])
    async def test_a_bad_rule_is_a_422_naming_its_bad_part(
        self, seg: Segmentation, method: str, path: str, rule: Any, where: str
    ) -> None:
        await create(seg, "paid", PLAN_IN)
        response = await seg.client.request(method, path, json={"key": "other", "rule": rule}, headers=ADMIN)
        assert_error(response, 422, "invalid_rule")
        assert response.json()["error"]["message"].startswith(f"Bad rule at {where}: ")
        assert [d["loc"] for d in response.json()["error"]["details"]] == [where]
        assert (await seg.client.get("/api/segments/paid", headers=READER)).json()["rule"] == PLAN_IN

    @pytest.mark.parametrize("key", [
        "", "a:b", "x" * 101, "-vip", "a b", "vip\n",
    ])
    async def test_a_bad_key_is_a_422(self, seg: Segmentation, key: str) -> None:
        response = await create(seg, key, PLAN_IN)
        assert_error(response, 422, "invalid_fields")
        assert response.json()["error"]["details"] == [{"loc": "key"}]
        assert [s for s in await seg.segments() if ":" not in s] == []

    async def test_the_longest_key_is_accepted(self, seg: Segmentation) -> None:
        assert (await create(seg, "a" + "-._9" * 24 + "zzz", PLAN_IN)).status_code == 201

    async def test_a_built_in_key_is_a_409(self, seg: Segmentation) -> None:
        assert_error(await create(seg, "lifecycle:new", PLAN_IN), 409, "conflict")

    async def test_a_taken_key_is_a_409(self, seg: Segmentation) -> None:
        assert (await create(seg, "paid", PLAN_IN)).status_code == 201
        assert_error(await create(seg, "paid", LYON), 409, "conflict")
        assert (await seg.client.get("/api/segments/paid", headers=READER)).json()["rule"] == PLAN_IN

    @pytest.mark.parametrize("method", ["PUT", "DELETE"])
    async def test_a_built_in_segment_cannot_be_changed(self, seg: Segmentation, method: str) -> None:
        response = await seg.client.request(method, "/api/segments/lifecycle:new", json={"rule": PLAN_IN}, headers=ADMIN)
        assert_error(response, 409, "conflict")

    @pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
    async def test_an_unknown_segment_is_a_404(self, seg: Segmentation, method: str) -> None:
        response = await seg.client.request(method, "/api/segments/vip", json={"rule": PLAN_IN}, headers=ADMIN)
        assert_error(response, 404, "not_found")

    @pytest.mark.parametrize(("method", "path"), [
        ("POST", "/api/segments"), ("PUT", "/api/segments/paid"), ("POST", "/api/segments:preview")])
    @pytest.mark.parametrize(("body", "status", "code"), [
        (b"{not json", 400, "invalid_json"), (b"", 422, "invalid_fields"), (b"[1, 2]", 422, "invalid_fields")])
    async def test_a_body_that_is_not_a_json_object_is_refused(
        self, seg: Segmentation, method: str, path: str, body: bytes, status: int, code: str
    ) -> None:
        await create(seg, "paid", PLAN_IN)
        response = await seg.client.request(method, path, content=body,
                                            headers={**ADMIN, "Content-Type": "application/json"})
        assert_error(response, status, code)

    @pytest.mark.parametrize(("method", "path"), [
        ("POST", "/api/segments"), ("PUT", "/api/segments/paid"), ("DELETE", "/api/segments/paid")])
    async def test_writes_need_an_admin_key(self, seg: Segmentation, method: str, path: str) -> None:
        await create(seg, "paid", PLAN_IN)
        body = {"key": "other", "rule": LYON}
        assert_error(await seg.client.request(method, path, json=body, headers=READER), 403, "admin_required")
        assert_error(await seg.client.request(method, path, json=body), 401, "missing_api_key")
        assert [(s["key"], s["rule"]) for s in (await seg.segments()).values() if not s["built_in"]] == [("paid", PLAN_IN)]


class TestMembershipFollowsEvents:
    async def test_a_customer_enters_and_exits_as_their_traits_change(self, seg: Segmentation) -> None:
        await create(seg, "lyon", LYON)
        await seg.send(identify("i-1", "ann", days=-2, address={"city": "Lyon"}))
        assert await seg.members("lyon") == ["ann"]
        why = (await seg.profile("ann"))["why"]["lyon"]
        assert why == {"reason": "traits.address.city eq 'Lyon' (is 'Lyon')", "since": at(0),
                       "rule": {**LYON, "actual": "Lyon", "matched": True}}
        seg.clock.advance(days=1)
        await seg.send(identify("i-2", "ann", days=0, address={"city": "Paris"}))
        assert await seg.members("lyon") == []
        assert [(h["change"], h["at"], h["reason"]) for h in await seg.history("lyon", "ann")] == [
            ("entered", at(0), "traits.address.city eq 'Lyon' (is 'Lyon')"),
            ("exited", at(1), "not traits.address.city eq 'Lyon' (is 'Paris')"),
        ]
        profile = await seg.profile("ann")
        assert ("lyon" in profile["segments"], "lyon" in profile["why"]) == (False, False)

    async def test_why_shows_each_condition_with_the_customers_value(self, seg: Segmentation) -> None:
        rule = {"all": [LYON, {"any": [{"field": "order_count", "op": "gte", "value": 2},
                                       {"not": {"field": "channel", "op": "eq", "value": "search"}}]}]}
        await create(seg, "lyon-regulars", rule)
        await seg.send(identify("i-1", "ann", days=-2, address={"city": "Lyon"}), order("o-1", "ann", days=-1, revenue=5))
        assert (await seg.profile("ann"))["why"]["lyon-regulars"]["rule"] == {"matched": True, "all": [
            {**LYON, "actual": "Lyon", "matched": True},
            {"matched": True, "any": [
                {"field": "order_count", "op": "gte", "value": 2, "actual": 1.0, "matched": False},
                {"not": {"field": "channel", "op": "eq", "value": "search", "actual": "direct", "matched": False},
                 "matched": True}]},
        ]}

    async def test_a_reason_shows_a_number_as_the_customer_sees_it(self, seg: Segmentation) -> None:
        await seg.send(order("o-1", "ann", days=-2, revenue=5), order("o-2", "ann", days=-1, revenue=7))
        await create(seg, "repeat", {"field": "order_count", "op": "gte", "value": 2})
        assert (await seg.profile("ann"))["why"]["repeat"]["reason"] == "order_count gte 2 (is 2.0)"


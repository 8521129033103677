"""The segment API's shape and its refusals: every built-in listed with its member count, unknown
segments, bad size parameters, missing or bad keys. Nothing here depends on the store, so it runs
on SQLite only."""
from __future__ import annotations

import httpx

from tests.helpers import READER
from tests.segmentation.support import Segmentation, at, order, page

LIFECYCLE = ["lifecycle:potential", "lifecycle:new", "lifecycle:active", "lifecycle:loyal", "lifecycle:at_risk",
             "lifecycle:churned"]
NPS = ["nps:promoter", "nps:passive", "nps:detractor"]  # API.md section 11
TIERS = ["value:high", "value:medium", "value:low", "frequency:high", "frequency:medium", "frequency:low"]
RFM = ["rfm:champions", "rfm:cannot_lose_them", "rfm:at_risk", "rfm:loyal_customers", "rfm:new_customers",
       "rfm:promising", "rfm:potential_loyalists", "rfm:need_attention", "rfm:about_to_sleep", "rfm:hibernating",
       "rfm:lost"]


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["message"]


class TestSegmentList:
    async def test_every_built_in_segment_is_listed_with_its_member_count(self, seg: Segmentation) -> None:
        listed = await seg.segments()
        assert sorted(listed) == sorted(LIFECYCLE + TIERS + RFM + NPS)
        assert all(s["built_in"] and s["description"] and s["member_count"] == 0 for s in listed.values())

        await seg.send(page("p-1", "ann", days=-1), order("o-1", "bob", days=-1, revenue=5),
                       order("o-2", "cy", days=-2, revenue=5), order("o-3", "cy", days=-1, revenue=5))
        await seg.reevaluate()
        counts = {k: s["member_count"] for k, s in (await seg.segments()).items() if s["member_count"]}
        assert counts == {"lifecycle:potential": 1, "lifecycle:new": 1, "lifecycle:active": 1, "frequency:low": 1,
                          "frequency:medium": 1, "value:high": 1, "value:low": 1, "rfm:champions": 1,
                          "rfm:loyal_customers": 1}
        for key, count in counts.items():
            assert len(await seg.members(key)) == count

    async def test_members_come_in_pages(self, seg: Segmentation) -> None:
        await seg.send(*(page(f"p-{i}", f"visitor-{i:02}", days=-1) for i in range(7)))
        response = await seg.client.get("/api/segments/lifecycle:potential/members", params={"limit": 3},
                                         headers=READER)
        first = response.json()
        assert [m["customer_id"] for m in first["items"]] == ["visitor-00", "visitor-01", "visitor-02"]
        assert first["items"][0] == {"customer_id": "visitor-00", "since": at(0), "reason": "no order yet"}
        assert await seg.members("lifecycle:potential") == [f"visitor-{i:02}" for i in range(7)]


class TestRefusals:
    async def test_an_unknown_customer_or_segment_is_a_404(self, seg: Segmentation) -> None:
        assert_error(await seg.get_profile("nobody"), 404, "not_found")
        for path in ("/api/segments/vip/members", "/api/segments/vip/history", "/api/segments/vip/size",
                     "/api/segments/lifecycle:vip/members"):
            assert_error(await seg.client.get(path, headers=READER), 404, "not_found")

    async def test_bad_size_parameters_are_a_422(self, seg: Segmentation) -> None:
        bad = [
            {"from": at(10), "to": at(0)},                            # backwards
            {"from": at(0), "to": at(0)},                             # empty
            {"from": "2024-03-01T00:00:00", "to": at(5)},              # no offset
            {"from": at(0), "to": "2024-03-05T00:00:00"},
            {"from": "yesterday", "to": at(5)},
            {"from": at(0), "to": at(5), "interval": "month"},
            {"from": at(0), "to": at(50), "interval": "hour"},        # 1200 points
        ]
        for params in bad:
            response = await seg.client.get("/api/segments/lifecycle:new/size", params=params, headers=READER)
            assert_error(response, 422, "invalid_fields")
        ok = await seg.sizes("lifecycle:new", **{"from": at(0), "to": at(41), "interval": "hour"})
        assert len(ok) == 984

    async def test_a_size_request_without_a_window_covers_the_last_30_days(self, seg: Segmentation) -> None:
        points = await seg.sizes("lifecycle:new")
        assert (points[0][0], points[-1][0], len(points)) == (at(-29), at(0), 30)

    async def test_no_key_or_a_wrong_key_is_a_401(self, seg: Segmentation) -> None:
        for path in ("/api/customers/ann", "/api/segments", "/api/segments/lifecycle:new/members",
                     "/api/segments/lifecycle:new/history", "/api/segments/lifecycle:new/size"):
            assert_error(await seg.client.get(path), 401, "missing_api_key")
            assert_error(await seg.client.get(path, headers={"Authorization": "Bearer nope"}), 401, "invalid_api_key")

"""Every event counts at any age (docs/api.md section 7): buyers whose orders are two and five years
old, sent shuffled with SDK retries, have the profiles their orders give, and a behaviour rule
looks back as far as the events go. With a retention set, a rule reaching before the horizon is
still accepted and says so (`complete_from`). SQLite and PostgreSQL."""
from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

import pytest

from tests.helpers import ADMIN, READER
from tests.segmentation.support import Segmentation, at, order, page

FIVE_YEARS, TWO_YEARS = -1826.0, -730.0
HORIZON = at(-365)  # with SEGMENTATION_EVENTS_RETENTION_DAYS=365, the clock at T0
BOUGHT_IN_2000_DAYS = {"event": "Order Completed", "op": "gte", "value": 1, "within_days": 2000}
BOUGHT_IN_1000_DAYS = {**BOUGHT_IN_2000_DAYS, "within_days": 1000}
BOUGHT_IN_30_DAYS = {**BOUGHT_IN_2000_DAYS, "within_days": 30}


@pytest.fixture
def segmentation_db_url(store_url: str) -> str:
    return store_url


def shop(seed: int) -> list[dict[str, Any]]:
    """Buyers of five and two years ago (a few orders each over some weeks, a visit before), and
    one of last week."""
    rng = random.Random(seed)
    messages = []
    for name, start in [("five-a", FIVE_YEARS), ("five-b", FIVE_YEARS - 40), ("two-a", TWO_YEARS), ("now-a", -7)]:
        messages.append(page(f"{name}-visit", name, start - 1))
        for i in range(rng.randint(1, 4)):
            messages.append(order(f"{name}-o{i}", name, start + rng.uniform(0, 60) if start < -7 else start + i,
                                  revenue=round(rng.uniform(5, 500), 2)))
    return messages


def expected_profiles(messages: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per customer, what the profile says of the orders: count, revenue, last order, first seen."""
    found: dict[str, dict[str, Any]] = defaultdict(lambda: {"order_count": 0, "revenue": 0.0, "last_order_at": None})
    for m in sorted(messages, key=lambda m: m["timestamp"]):
        p = found[m["userId"]]
        p.setdefault("first_seen", m["timestamp"])
        if m.get("event") == "Order Completed":
            p["order_count"] += 1
            p["revenue"] += m["properties"]["revenue"]
            p["last_order_at"] = m["timestamp"]
    return found


async def send_shuffled(seg: Segmentation, seed: int, messages: list[dict[str, Any]]) -> None:
    """In random order and batches, each batch with a few messages sent before (SDK retries)."""
    rng = random.Random(seed)
    shuffled, sent = rng.sample(messages, len(messages)), []
    while shuffled:
        batch, shuffled = shuffled[:3], shuffled[3:]
        await seg.send(*batch, *rng.sample(sent, min(len(sent), 2)))
        sent += batch


async def preview(seg: Segmentation, rule: dict[str, Any]) -> dict[str, Any]:
    response = await seg.client.post("/api/segments:preview", json={"rule": rule}, headers=READER)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


class TestOldBuyers:
    async def test_profiles_of_buyers_two_and_five_years_back_are_what_their_orders_say(self, seg: Segmentation) -> None:
        messages = shop(1)
        await send_shuffled(seg, 1, messages)
        await seg.reevaluate()
        for customer, want in expected_profiles(messages).items():
            got = await seg.profile(customer)
            assert {k: got[k] for k in ("order_count", "last_order_at", "first_seen")} == \
                {k: want[k] for k in ("order_count", "last_order_at", "first_seen")}, customer
            assert got["revenue"] == pytest.approx(want["revenue"]), customer
            if not customer.startswith("now"):
                assert got["lifecycle"] == "churned", customer  # their last order is years old

    async def test_a_rule_looks_back_as_far_as_the_events_go(self, seg: Segmentation) -> None:
        await send_shuffled(seg, 2, shop(2))
        created = await seg.define("bought-in-2000-days", BOUGHT_IN_2000_DAYS)
        assert created["member_count"] == 4 and "complete_from" not in created
        assert sorted(await seg.members("bought-in-2000-days")) == ["five-a", "five-b", "now-a", "two-a"]
        assert (await preview(seg, BOUGHT_IN_1000_DAYS)) == {"count": 2, "sample": ["now-a", "two-a"]}

    async def test_a_rule_defined_before_the_import_sees_old_orders_as_they_arrive(self, seg: Segmentation) -> None:
        await seg.define("bought-in-2000-days", BOUGHT_IN_2000_DAYS)
        await send_shuffled(seg, 3, shop(3))
        assert sorted(await seg.members("bought-in-2000-days")) == ["five-a", "five-b", "now-a", "two-a"]
        await seg.advance(days=1)  # the scheduled pass keeps them: nothing is pruned by default
        assert sorted(await seg.members("bought-in-2000-days")) == ["five-a", "five-b", "now-a", "two-a"]


class TestWithRetention:
    """SEGMENTATION_EVENTS_RETENTION_DAYS=365: behaviour events older than a year are not kept."""

    @pytest.fixture
    def segmentation_db_url(self, store_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
        monkeypatch.setenv("SEGMENTATION_EVENTS_RETENTION_DAYS", "365")
        return store_url

    async def test_a_rule_reaching_before_the_horizon_says_complete_from(self, seg: Segmentation) -> None:
        messages = shop(4)
        await send_shuffled(seg, 4, messages)
        created = await seg.define("bought-in-2000-days", BOUGHT_IN_2000_DAYS)  # accepted: not a 422
        assert created["complete_from"] == HORIZON
        assert created["member_count"] == 1  # what is kept: last week's buyer
        assert (await seg.segments())["bought-in-2000-days"]["complete_from"] == HORIZON
        response = await seg.client.get("/api/segments/bought-in-2000-days", headers=READER)
        assert response.json()["complete_from"] == HORIZON
        assert await preview(seg, BOUGHT_IN_1000_DAYS) == {"count": 1, "sample": ["now-a"], "complete_from": HORIZON}
        assert await preview(seg, BOUGHT_IN_30_DAYS) == {"count": 1, "sample": ["now-a"]}
        response = await seg.client.put("/api/segments/bought-in-2000-days", json={"rule": BOUGHT_IN_30_DAYS}, headers=ADMIN)
        assert "complete_from" not in response.json()

    async def test_profiles_still_count_orders_older_than_the_horizon(self, seg: Segmentation) -> None:
        messages = shop(5)
        await send_shuffled(seg, 5, messages)
        for customer, want in expected_profiles(messages).items():
            got = await seg.profile(customer)
            assert (got["order_count"], got["last_order_at"]) == (want["order_count"], want["last_order_at"]), customer
            assert got["revenue"] == pytest.approx(want["revenue"])

    async def test_members_whose_events_pass_the_horizon_exit_at_the_next_pass(self, seg: Segmentation) -> None:
        await seg.define("bought-in-2000-days", BOUGHT_IN_2000_DAYS)
        await seg.send(order("late-o", "late", -300, revenue=5))
        assert await seg.members("bought-in-2000-days") == ["late"]
        await seg.advance(days=100)  # its order is now 400 days old: past the horizon, pruned
        assert await seg.members("bought-in-2000-days") == []
        assert (await seg.history("bought-in-2000-days", "late"))[-1]["change"] == "exited"

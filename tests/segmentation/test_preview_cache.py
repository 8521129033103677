"""Previews read facts kept in memory (facts_index.py): they must see every change committed after
the facts were built, by the consumer's handlers or by any other writer of the store (another
replica), including merges and erasures. Each preview is held to a brute-force reference worked
out from what the test sent. SQLite and PostgreSQL."""
from __future__ import annotations

import random
from typing import Any

import orjson
import pytest
from sqlalchemy import update

from services.segmentation.store import mark_facts_changed, profiles
from tests.helpers import ADMIN, READER, eventually
from tests.segmentation.support import Segmentation, identify, order

WINDOW_DAYS = 30
RULE = {"all": [
    {"field": "traits.plan", "op": "eq", "value": "pro"},
    {"event": "Order Completed", "where": {"field": "revenue", "op": "gte", "value": 100},
     "op": "gte", "value": 2, "within_days": WINDOW_DAYS},
]}


@pytest.fixture
def segmentation_db_url(store_url: str) -> str:
    return store_url


class Reference:
    """What the rule should match, from the messages the test sent (latest plan by time; orders
    of 100 or more after now - 30 days), never from the service."""

    def __init__(self) -> None:
        self.plan: dict[str, tuple[float, str]] = {}
        self.orders: dict[str, list[tuple[float, float]]] = {}
        self.erased: set[str] = set()

    def identify(self, customer: str, days: float, plan: str) -> dict[str, Any]:
        if customer not in self.plan or self.plan[customer][0] <= days:
            self.plan[customer] = (days, plan)
        return identify(f"i-{customer}-{days}-{plan}", customer, days=days, plan=plan)

    def order(self, customer: str, days: float, revenue: float) -> dict[str, Any]:
        self.orders.setdefault(customer, []).append((days, revenue))
        return order(f"o-{customer}-{days}-{revenue}", customer, days=days, revenue=revenue)

    def matches(self, now_days: float) -> list[str]:
        return sorted(c for c, (_, plan) in self.plan.items() if plan == "pro" and c not in self.erased and sum(
            1 for days, revenue in self.orders.get(c, []) if revenue >= 100 and days > now_days - WINDOW_DAYS) >= 2)


async def preview(seg: Segmentation) -> dict[str, Any]:
    response = await seg.client.post("/api/segments:preview", json={"rule": RULE}, headers=READER)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def expected(ids: list[str]) -> dict[str, Any]:
    return {"count": len(ids), "sample": ids[:10]}


def random_messages(rng: random.Random, ref: Reference, customers: list[str], n: int) -> list[dict[str, Any]]:
    out = []
    for _ in range(n):
        customer = rng.choice(customers)
        days = -rng.randrange(0, 60 * 4) / 4
        if rng.random() < 0.3:
            out.append(ref.identify(customer, days, rng.choice(["pro", "free"])))
        else:
            out.append(ref.order(customer, days, rng.choice([20, 99.99, 100, 250])))
    return out


class TestPreviewCache:
    async def test_changes_after_the_facts_were_built_are_seen(self, seg: Segmentation) -> None:
        rng = random.Random(7)
        ref = Reference()
        customers = [f"c{i:02}" for i in range(16)]
        await seg.send(*random_messages(rng, ref, customers, 80))
        assert await preview(seg) == expected(ref.matches(0))  # builds the facts

        # The consumer's handlers commit more (orders, plan changes, new customers).
        for round_ in range(3):
            await seg.send(*random_messages(rng, ref, customers + [f"n{round_}{i}" for i in range(3)], 25))
            assert await preview(seg) == expected(ref.matches(0))

        # Another writer of the store (as another replica would): a plan set straight in the profile,
        # its customer marked changed as every writer of profiles marks them.
        target = next(c for c in sorted(ref.plan) if ref.plan[c][1] == "free")
        ref.plan[target] = (1e9, "pro")
        async with seg.runtime.store.transaction() as session:
            await session.execute(update(profiles).where(profiles.c.customer_id == target)
                                  .values(traits=orjson.dumps({"plan": "pro"})))
            await mark_facts_changed(session, [target])
        ref.orders.setdefault(target, [])
        await seg.send(ref.order(target, -1, 150), ref.order(target, -2, 150))
        assert target in ref.matches(0)
        assert await preview(seg) == expected(ref.matches(0))

        # Time passes: the window moves without any write.
        seg.clock.advance(days=10)
        assert await preview(seg) == expected(ref.matches(10))

    async def test_an_erased_customer_leaves_the_preview(self, seg: Segmentation) -> None:
        ref = Reference()
        messages = [m for c in ("ann", "bob", "cy") for m in (
            ref.identify(c, -3, "pro"), ref.order(c, -2, 150), ref.order(c, -1, 300))]
        await seg.send(*messages)
        assert await preview(seg) == expected(["ann", "bob", "cy"])

        response = await seg.client.delete("/api/customers/bob", headers=ADMIN)
        assert response.status_code == 202, response.text
        ref.erased.add("bob")

        async def gone() -> bool:
            return (await seg.get_profile("bob")).status_code == 404

        await eventually(gone)
        assert await preview(seg) == expected(ref.matches(0)) == expected(["ann", "cy"])

    async def test_a_merged_id_counts_for_its_customer(self, seg: Segmentation) -> None:
        ref = Reference()
        await seg.send(ref.identify("dee", -5, "pro"), ref.order("dee", -2, 150),
                       order("o-anon-1", None, days=-1, anon="anon-dee", revenue=120))
        assert await preview(seg) == expected([])
        # The anonymous visitor turns out to be dee: their order now counts for dee.
        await seg.send(identify("i-link", "dee", days=0, anon="anon-dee"))
        ref.orders["dee"].append((-1, 120))
        assert await preview(seg) == expected(ref.matches(0)) == expected(["dee"])

    async def test_lifecycle_moved_by_the_scheduled_pass_alone_is_seen(self, seg: Segmentation) -> None:
        """A membership the scheduled pass changes, with no other write about the customer (time
        moved the only buyer's last order past at_risk_days, 90: their value tier and RFM scores
        stay), marks their facts changed: a preview on lifecycle sees it, as it sees the
        memberships the consumer's batches change."""
        at_risk = {"field": "lifecycle", "op": "eq", "value": "at_risk"}

        async def at_risk_now() -> dict[str, Any]:
            response = await seg.client.post("/api/segments:preview", json={"rule": at_risk}, headers=READER)
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            return body

        await seg.send(order("o-ann", "ann", days=-1, revenue=10), identify("i-cy", "cy", days=0, plan="free"))
        await seg.advance(days=1)  # the first pass gives ann her value tier and RFM scores
        assert await at_risk_now() == expected([])  # builds the facts
        await seg.advance(days=95)  # ann's last order is 97 days old: nothing else about her moves
        assert await at_risk_now() == expected(["ann"])
        await seg.send(order("o-ann-2", "ann", days=95, revenue=10))  # a batch moves her back
        assert await at_risk_now() == expected([])

def test_reference_window_is_strict() -> None:
    """The reference counts orders strictly after now - 30 days, as the rule does (`at > since`)."""
    ref = Reference()
    ref.identify("a", 0, "pro")
    ref.order("a", -WINDOW_DAYS, 100)
    ref.order("a", -1, 100)
    assert ref.matches(0) == []

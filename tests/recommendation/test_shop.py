"""A hand-made shop where the right answers are known: two bundles and a bag everyone buys, a
refunded order, an erased customer, an anonymous visitor identified later; late, duplicate and
redelivered events give the same answers, and so does `funnelstream replay` (the store rebuilt
from the bus). SQLite and PostgreSQL."""
from __future__ import annotations

import random
import uuid
from typing import Any

from fastapi import FastAPI

from services import replay
from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings
from shared.bus.base import OutgoingRecord
from shared.clock import FixedClock
from shared.events import CUSTOMERS, INTERACTIONS
from tests.helpers import READER, assert_error, fix_clocks, running
from tests.recommendation.support import (
    ON_DAY_0,
    T0,
    Shop,
    assert_matches_reference,
    bought,
    identify,
    reference,
    refund,
    shop_messages,
    viewed,
)

# Customers who bought, by how many: bag 9, ink 4, pen 4, paper 3, tea 3, cups 2, saucers 2 (ties by id).
POPULAR = ["bag", "ink", "pen", "paper", "tea", "cups", "saucers"]
# In France (b1-b6): bag 6, ink 4, pen 4, paper 3.
POPULAR_IN_FRANCE = ["bag", "ink", "pen", "paper"]


def ids(answer: dict) -> list[str]:  # type: ignore[type-arg]
    return [i["product_id"] for i in answer["items"]]


async def late_and_duplicated(shop: Shop) -> None:
    """The shop's messages in a shuffled order, over several batches, each sent twice (the second
    time under a new message id, as a client retrying after a lost answer would not, but a replayed
    export might)."""
    messages = shop_messages()
    random.Random(16).shuffle(messages)
    again = [{**m, "messageId": f"{m['messageId']}-again"} for m in messages]
    for start in range(0, len(messages), 5):
        await shop.send(*messages[start:start + 5], *again[start:start + 3])
    await shop.send(*again[3:])


class TestBundles:
    async def test_late_and_duplicated_events_give_each_customer_their_bundle_and_the_everyday_bag_last(
            self, shop: Shop) -> None:
        await late_and_duplicated(shop)
        answer = await shop.recommend("q")
        # Only what was bought with tea: cups and saucers (one order each), the bag (two orders,
        # but everyone buys it); nothing from the other bundle.
        assert ids(answer) == ["cups", "saucers", "bag"]
        assert_matches_reference(answer, reference(ON_DAY_0, {}, "q"))
        assert all(item["because"] == ["tea"] for item in answer["items"])
        related = await shop.related("tea")
        # Orders holding tea: a1, a2, q. cups 1/sqrt(3*2), saucers 1/sqrt(3*2), bag 2/sqrt(3*9).
        assert related == {"product_id": "tea", "items": [
            {"product_id": "cups", "score": 0.408248, "together": 1},
            {"product_id": "saucers", "score": 0.408248, "together": 1},
            {"product_id": "bag", "score": 0.3849, "together": 2}]}
        for customer in ("a1", "b4"):
            assert_matches_reference(await shop.recommend(customer), reference(ON_DAY_0, {}, customer))

        # No history: what customers of their country buy, else what everyone buys.
        await shop.send(identify("newbie-id", "newbie", country="France"), identify("other-id", "other", country="Peru"))
        assert await shop.recommend("newbie", limit=3) == {"customer_id": "newbie", "strategy": "popular_in_country",
            "items": [{"product_id": p, "score": s, "because": []} for p, s in (("bag", 6), ("ink", 4), ("pen", 4))]}
        assert ids(await shop.recommend("newbie")) == POPULAR_IN_FRANCE
        assert (await shop.recommend("other"))["strategy"] == "popular"
        never_seen = await shop.recommend("never-seen")
        assert (never_seen["strategy"], ids(never_seen)) == ("popular", POPULAR)


class TestRefundsAndErasure:
    async def test_refunded_and_erased_purchases_leave_every_answer_even_when_delivered_again_or_replayed(
            self, gateway_app: FastAPI, clock: FixedClock) -> None:
        async with running(gateway_app) as client:
            before = await refunds_and_erasure(Shop(gateway_app, client, clock))
        # funnelstream replay --service recommendation: the store emptied and rebuilt from offset 0.
        summary = await replay.replay(replay.spec_of("recommendation"), Progress())
        assert summary.records > 0
        again = create_app(GatewaySettings())
        fix_clocks(again, FixedClock(T0))
        async with running(again) as client:
            assert await answers(Shop(again, client, clock)) == before


async def refunds_and_erasure(shop: Shop) -> list[dict[str, Any]]:
    """r's whole order refunded, s's ink refunded, e erased (now is T0); v a visitor who signed in.
    Returns the answers, unchanged by every record delivered again."""
    await shop.send(*shop_messages(), bought("r-o", "r", ["tea", "pen"], order_id="r-1"),
                    bought("s-o", "s", ["tea", "ink"], order_id="s-1"), bought("e-o", "e", ["tea", "paper"], days=-1),
                    bought("v-o", "v", ["pen"]), viewed("visit-1", None, "paper", days=1, anon="visitor-1"))
    assert {"pen", "ink", "paper"} <= set(ids(await shop.related("tea")))
    await shop.send(refund("r-refund", "r", "r-1", days=1), refund("s-refund", "s", "s-1", ["ink"], days=1),
                    identify("visit-id", "v", days=2, anon="visitor-1"))
    await shop.erase("e")
    assert {"pen", "ink", "paper"} & set(ids(await shop.related("tea"))) == set()
    answer = await shop.recommend("r")  # nothing bought any more: what is popular, less what they ordered
    assert (answer["strategy"], ids(answer)) == ("popular", [p for p in POPULAR_AFTER if p not in ("tea", "pen")])
    assert_matches_reference(await shop.recommend("q"), reference(ON_DAY_0 | {"s": {"tea": 0.0}, "v": {"pen": 0.0}},
                                                                  {"v": {"paper": 1.0}}, "q"))
    answer = await shop.recommend("e")
    assert (answer["strategy"], ids(answer)) == ("popular", POPULAR_AFTER)

    # A late order of e from before the erasure stays out; every record delivered again changes nothing.
    await shop.send(bought("e-late", "e", ["tea", "paper"], days=-0.5))
    before = await answers(shop)
    assert before[ASKED.index("visitor-1")]["customer_id"] == "v"
    await redeliver_everything(shop)
    assert await answers(shop) == before
    return before


# Buyers after the refunds and the erasure: bag 9, pen 5 (v), ink 4, tea 4 (s), paper 3, cups 2, saucers 2.
POPULAR_AFTER = ["bag", "pen", "ink", "tea", "paper", "cups", "saucers"]
ASKED = ("q", "a1", "b4", "r", "s", "e", "v", "visitor-1")
PRODUCTS = ("tea", "pen", "ink", "paper", "bag")


async def answers(shop: Shop) -> list[dict[str, Any]]:
    return [await shop.recommend(c) for c in ASKED] + [await shop.related(p) for p in PRODUCTS]


class Progress:
    def set_total(self, total: int) -> None:
        pass

    def advance(self, records: int) -> None:
        pass


async def redeliver_everything(shop: Shop) -> None:
    """Every record of interactions.v1 and customers.v1 published again (at-least-once delivery)."""
    bus = shop.recommendation.bus
    reader = bus.consumer(f"test-{uuid.uuid4().hex[:8]}", [INTERACTIONS, CUSTOMERS])
    await reader.start()
    records = []
    while batch := await reader.poll(timeout=0.2):
        records += batch
    await reader.stop()
    await bus.publish([OutgoingRecord(r.topic, r.key, r.value, r.headers) for r in records])
    await shop.settle()


class TestIdentityStitching:
    async def test_a_visitor_identified_later_is_one_customer_with_what_they_viewed_and_bought(self, shop: Shop) -> None:
        await shop.send(*shop_messages(), bought("v-o", "v", ["pen"]))
        await shop.send(viewed("visit-1", None, "paper", days=1, anon="visitor-1"))
        assert (await shop.recommend("visitor-1"))["customer_id"] == "visitor-1"
        await shop.send(identify("visit-id", "v", days=2, anon="visitor-1"))
        expected = reference(ON_DAY_0 | {"v": {"pen": 0.0}}, {"v": {"paper": 1.0}}, "v")
        for who in ("v", "visitor-1"):
            answer = await shop.recommend(who)
            assert answer["customer_id"] == "v"
            assert_matches_reference(answer, expected)
        # The view reached "v": ink goes with both pen and paper.
        assert {i["product_id"]: i["because"] for i in (await shop.recommend("v"))["items"]}["ink"] == ["pen", "paper"]
        await TestBadInput.check_bad_requests_get_a_4xx_naming_what_was_wrong(shop)


class TestBadInput:
    @staticmethod
    async def check_bad_requests_get_a_4xx_naming_what_was_wrong(shop: Shop) -> None:
        """(Run in the stitching test: it needs no store of its own.)"""
        client = shop.client
        for path in ("/api/recommendations/customers/q?limit=0", "/api/recommendations/customers/q?limit=101",
                     "/api/recommendations/customers/q?limit=ten", "/api/recommendations/products/tea/related?limit=-1",
                     f"/api/recommendations/customers/{'x' * 201}"):
            response = await client.get(path, headers=READER)
            assert_error(response, 422, "invalid_fields")
            assert response.json()["error"]["details"], response.text
        response = await client.get("/api/recommendations/products/unknown/related", headers=READER)
        assert_error(response, 404, "not_found")
        assert "unknown" in response.json()["error"]["message"]
        assert (await client.get("/api/recommendations/customers/q")).status_code == 401
        assert (await client.get("/api/recommendations/customers/q%00x", headers=READER)).status_code == 400

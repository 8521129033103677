"""The demo shop of `make demo` (services/demo): the same seed gives the same bytes; the shop has
the shape its docstring claims, every message passes ingest's own validation; and a small shop
sent through the gateway (every service in-process) gives the lifecycle funnel report and a
profile the test works out from the messages itself."""
from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from services.demo import shop
from services.demo.__main__ import parser
from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings
from services.ingest.channels import CHANNELS, classify
from services.ingest.messages import Rejection, normalize
from shared.clock import FixedClock
from tests.helpers import READER, eventually, fix_clocks, running

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
DAY = 86400.0
WRITE = ("dev-write-key", "")


def at(message: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(message["timestamp"].replace("Z", "+00:00"))


def by_customer(messages: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Each customer's messages in time order, under the id the services name them by (stitched)."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for message in messages:
        groups[message["anonymousId"]].append(message)
    return {next((m["userId"] for m in ms if m.get("userId")), anon): sorted(ms, key=at) for anon, ms in groups.items()}


@pytest.fixture(scope="module")
def messages() -> list[dict[str, Any]]:
    return shop.generate(seed=3, customers=2000, now=NOW)


class TestDeterminism:
    def test_the_same_seed_gives_the_same_bytes_and_ids(self) -> None:
        first = b"".join(shop.lines(shop.generate(seed=7, customers=300, now=NOW)))
        again = b"".join(shop.lines(shop.generate(seed=7, customers=300, now=NOW)))
        assert first == again

    def test_another_seed_gives_another_shop(self) -> None:
        one, other = shop.generate(seed=7, customers=300, now=NOW), shop.generate(seed=8, customers=300, now=NOW)
        assert {m["messageId"] for m in one}.isdisjoint(m["messageId"] for m in other)
        assert [m["timestamp"] for m in one] != [m["timestamp"] for m in other]

    def test_another_day_moves_the_shop_not_its_ids(self) -> None:
        """A demo started on another day looks fresh; its ids name the same shop (a re-import adds nothing)."""
        today, later = shop.generate(seed=7, customers=50, now=NOW), shop.generate(seed=7, customers=50, now=NOW + timedelta(days=30))
        assert max(m["timestamp"] for m in later) > max(m["timestamp"] for m in today)
        assert {m["messageId"] for m in later} & {m["messageId"] for m in today}

    def test_the_command_writes_the_file_make_demo_imports(self, tmp_path) -> None:
        from services.demo.__main__ import main

        path = tmp_path / "shop.jsonl"
        assert main(["generate", str(path), "--seed", "7", "--customers", "300", "--now", NOW.isoformat()]) == 0
        assert path.read_bytes() == b"".join(shop.lines(shop.generate(seed=7, customers=300, now=NOW)))
        assert parser().parse_args([]).customers == 20_000


class TestShape:
    def test_customers_are_as_many_as_asked_and_seen_over_the_last_180_days(self, messages) -> None:
        customers = by_customer(messages)
        assert len(customers) == 2000
        assert len({m["messageId"] for m in messages}) == len(messages)
        first_seen = [at(ms[0]) for ms in customers.values()]
        assert max(at(m) for m in messages) <= NOW
        recent = sum(1 for t in first_seen if t >= NOW - timedelta(days=180))
        assert 0.97 * len(first_seen) <= recent < len(first_seen)  # and a few regulars from before
        assert min(first_seen) >= NOW - timedelta(days=365)

    def test_every_message_passes_ingests_validation(self, messages) -> None:
        rejected = [r for i, m in enumerate(messages)
                    if isinstance(r := normalize(m, index=i, received_at=NOW), Rejection)]
        assert rejected == []

    def test_visits_come_from_every_channel_ingest_knows(self, messages) -> None:
        channels = Counter(classify(m["context"], m["properties"]) for m in messages if m["type"] == "page")
        assert set(channels) == set(CHANNELS)
        assert channels.most_common(1)[0][0] in ("search", "direct")

    def test_every_event_the_shop_claims_is_there(self, messages) -> None:
        events = Counter(m.get("event") or m["type"] for m in messages)
        assert set(events) == {"page", "identify", "Product Viewed", "Product Added", "Checkout Started", "Order Completed",
                               "Order Refunded", "Survey Responded", "Signed Up", "Lead Created", "Lead Qualified",
                               "Meeting Booked", "Quote Sent"}
        viewed = next(m["properties"] for m in messages if m.get("event") == "Product Viewed")
        assert {"product_id", "name", "price", "category"} <= set(viewed)
        order = next(m["properties"] for m in messages if m.get("event") == "Order Completed")
        assert {"order_id", "revenue", "currency", "products"} <= set(order)
        assert order["revenue"] == round(sum(p["price"] * p["quantity"] for p in order["products"]), 2)
        traits = next(m["traits"] for m in messages if m["type"] == "identify")
        assert {"email", "name", "country"} <= set(traits)

    def test_the_funnel_narrows_and_some_buy_again(self, messages) -> None:
        customers = by_customer(messages)

        def doing(event: str, times: int = 1) -> int:
            return sum(1 for ms in customers.values() if sum(m.get("event") == event for m in ms) >= times)

        viewers, adders, checkouts = doing("Product Viewed"), doing("Product Added"), doing("Checkout Started")
        buyers, again, loyal = doing("Order Completed"), doing("Order Completed", 2), doing("Order Completed", 3)
        assert len(customers) > viewers > adders > checkouts > buyers > again > loyal > 0
        assert 0.08 < buyers / len(customers) < 0.2

    def test_some_customers_are_identified_late(self, messages) -> None:
        late = 0
        for ms in by_customer(messages).values():
            identify = next((m for m in ms if m["type"] == "identify"), None)
            if identify is None:
                assert all("userId" not in m for m in ms)  # anonymous throughout
                continue
            before = [m for m in ms if at(m) < at(identify)]
            assert before and all("userId" not in m for m in before)  # browsing anonymously first
            assert identify["anonymousId"] == ms[0]["anonymousId"]  # the identify links the two ids
            late += at(identify) - at(ms[0]) >= timedelta(days=1)
        assert late >= 50

    def test_refunds_name_earlier_orders_of_the_same_customer(self, messages) -> None:
        orders = {m["properties"]["order_id"]: m for m in messages if m.get("event") == "Order Completed"}
        refunds = [m for m in messages if m.get("event") == "Order Refunded"]
        assert refunds
        for refund in refunds:
            order = orders[refund["properties"]["order_id"]]
            assert order["userId"] == refund["userId"] and at(order) < at(refund)
            assert 0 < refund["properties"]["revenue"] <= order["properties"]["revenue"]

    def test_surveys_carry_the_contracts_names_and_scales(self, messages) -> None:
        answers = [m["properties"] for m in messages if m.get("event") == "Survey Responded"]
        nps = [a["score"] for a in answers if a["survey"] == "nps"]
        csat = [a["score"] for a in answers if a["survey"] == "csat"]
        assert set(nps) <= set(range(11)) and set(csat) <= set(range(1, 6))
        assert {0, 6, 7, 8, 9, 10} <= set(nps) and {1, 5} <= set(csat)  # detractors, passives, promoters

    def test_sales_leads_move_step_by_step(self, messages) -> None:
        steps = ["Lead Created", "Lead Qualified", "Meeting Booked", "Quote Sent"]
        reached = Counter()
        for ms in by_customer(messages).values():
            seen = [m["event"] for m in ms if m.get("event") in steps]
            assert seen == steps[:len(seen)]
            reached.update(seen)
        assert reached["Lead Created"] > reached["Lead Qualified"] > reached["Meeting Booked"] > reached["Quote Sent"] > 0


# -- through the product --------------------------------------------------------------------------
LIFECYCLE = [  # docs/api.md section 4, the stages of the default funnel `lifecycle`
    lambda m: m["type"] in ("page", "track"),
    lambda m: m.get("event") == "Signed Up" or (m["type"] == "identify" and "email" in m["traits"]),
    lambda m: m.get("event") in ("Product Viewed", "Product Added", "Lead Created", "Checkout Started"),
    lambda m: m.get("event") == "Order Completed",
    lambda m: m.get("event") == "Order Completed",
]


def lifecycle_depth(ms: list[dict[str, Any]], window_days: float = 90) -> tuple[int, datetime | None]:
    """The furthest stage any attempt reaches and its first step's time (the earliest such): from
    each candidate first step, each later stage takes the earliest unused event that fits."""
    best, first = 0, None
    for start, head in enumerate(ms):
        if not LIFECYCLE[0](head):
            continue
        depth, previous, used = 1, at(head), {start}
        for stage in LIFECYCLE[1:]:
            step = next((i for i, m in enumerate(ms) if i not in used and at(m) >= previous and stage(m)), None)
            if step is None or at(ms[step]) - at(head) > timedelta(days=window_days):
                break
            depth, previous = depth + 1, at(ms[step])
            used.add(step)
        if depth > best:
            best, first = depth, at(head)
    return best, first


@pytest.fixture
async def product(data_dir) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(GatewaySettings())
    fix_clocks(app, FixedClock(NOW))
    async with running(app) as client:
        yield client


class TestThroughTheProduct:
    async def test_a_small_shop_is_accepted_whole_and_reports_what_it_holds(self, product) -> None:
        messages = shop.generate(seed=11, customers=300, now=NOW)
        for start in range(0, len(messages), 250):
            answer = await product.post("/v1/batch", json={"batch": messages[start:start + 250]}, auth=WRITE)
            assert answer.status_code == 200, answer.text
            assert answer.json()["rejected"] == [] and answer.json()["accepted"] == len(messages[start:start + 250])

        customers = by_customer(messages)
        depths = Counter()
        for ms in customers.values():
            depth, _ = lifecycle_depth(ms)
            depths.update(range(depth))
        expected = [depths[k] for k in range(len(LIFECYCLE))]
        assert expected[0] == 300 and expected[-1] > 0
        window = {"from": (NOW - timedelta(days=400)).isoformat(), "to": (NOW + timedelta(seconds=1)).isoformat()}

        async def entered() -> list[int] | None:
            report = (await product.get("/api/funnels/lifecycle/report", params=window, headers=READER)).json()
            counts = [s["entered"] for s in report["stages"]]
            return counts if counts == expected else None

        await eventually(entered, timeout=60, interval=0.5)

        orders = Counter(m["userId"] for m in messages if m.get("event") == "Order Completed")
        top = orders.most_common(1)[0][0]
        mine = customers[top]
        bought = [m for m in mine if m.get("event") == "Order Completed"]
        days_since = (NOW - at(bought[-1])).total_seconds() / DAY
        lifecycle = "churned" if days_since > 180 else "at_risk" if days_since > 90 else "loyal" if len(bought) >= 3 else \
            "new" if len(bought) == 1 else "active"

        async def profile() -> dict[str, Any] | None:
            body = (await product.get(f"/api/customers/{top}", headers=READER)).json()
            return body if body.get("event_count") == len(mine) else None

        body = await eventually(profile, timeout=30, interval=0.5)
        assert body["order_count"] == len(bought)
        assert body["revenue"] == pytest.approx(sum(m["properties"]["revenue"] for m in bought))
        assert body["traits"]["email"] == next(m for m in mine if m["type"] == "identify")["traits"]["email"]
        assert body["lifecycle"] == lifecycle
        assert body["channel"] == classify(mine[0]["context"], mine[0]["properties"])

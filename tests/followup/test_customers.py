"""What customers.v1 does to follow-ups (erasure removes them, a merge moves them keeping one open
per policy), and the whole path: real events through ingest, segmentation and the funnel service
to follow-ups, then an erasure through the gateway."""
from __future__ import annotations

from typing import Any

import orjson
import pytest
from fastapi import FastAPI

from services.segmentation.app import reevaluate_now
from shared.events import CustomerErased, CustomerLinked
from tests.followup.conftest import webhook_env
from tests.followup.support import Followups, at, iso
from tests.helpers import ADMIN, READER, assert_error, eventually, free_port
from tests.segmentation.support import BASIC, identify, order, page, track


def summary(found: list[dict[str, Any]]) -> set[tuple[str, str | None, str]]:
    return {(f["customer_id"], f["policy"], f["status"]) for f in found}


class TestErasure:
    @pytest.fixture
    def followup_env(self) -> dict[str, str]:
        return webhook_env(f"http://127.0.0.1:{free_port()}/hooks")  # reminders queued, never sent

    async def history(self, fu: Followups) -> dict[str, Any]:
        await fu.entered("ann", "lifecycle:new")
        await fu.entered("ann", "value:high")
        await fu.moved("ann", "consideration")
        await fu.entered("bob", "lifecycle:new")
        manual = await fu.manual(customer_id="ann", due_at=iso(1), assignee="carol")
        welcome = next(f for f in await fu.of("ann") if f["policy"] == "welcome_new")
        await fu.ok(welcome["id"], "complete", {"outcome": "reached"})
        await fu.advance(days=3)  # stalled, due and overdue: reminders queued
        assert {d.followup_id for d in await fu.deliveries()} >= {manual["id"]}
        return manual

    async def test_an_erasure_event_removes_every_follow_up_of_the_customer(self, fu: Followups) -> None:
        manual = await self.history(fu)
        assert len(await fu.of("ann")) == 4
        bobs = await fu.of("bob")
        await fu.erased("ann", days=3)
        assert await fu.of("ann") == []
        assert_error(await fu.client.get(f"/api/followups/{manual['id']}", headers=READER), 404, "not_found")
        assert await fu.of("bob") == bobs
        assert {d.followup_id for d in await fu.deliveries()} == {bobs[0]["id"]}
        assert [(r["assignee"], r["channel"]) for r in await fu.stats(**{"from": iso(-1), "to": iso(30)})] == [
            (None, "email")]
        await fu.advance(days=10)  # ann sat in consideration: no stalled follow-up comes back
        assert await fu.of("ann") == []

    async def test_erasing_through_the_gateway(self, fu: Followups) -> None:
        await self.history(fu)
        response = await fu.client.delete("/api/customers/ann", headers=ADMIN)
        assert response.status_code == 202, response.text

        async def gone() -> bool:
            # One page: the erasure may remove items between the pages `fu.of` would follow.
            response = await fu.client.get("/api/followups", params={"customer_id": "ann"}, headers=READER)
            return bool(response.json()["items"] == [])

        await eventually(gone)
        assert summary(await fu.list()) == {("bob", "welcome_new", "overdue")}

    async def test_events_from_before_the_erasure_do_not_bring_them_back(self, fu: Followups) -> None:
        await fu.entered("ann", "value:high", days=1)
        await fu.erased("ann", days=2)
        await fu.entered("ann", "lifecycle:new", days=1.5)  # late
        await fu.moved("ann", "purchase", days=2)
        assert await fu.of("ann") == []
        await fu.entered("ann", "lifecycle:new", days=2.5)  # a new customer under the same id
        assert summary(await fu.of("ann")) == {("ann", "welcome_new", "pending")}

    async def test_ids_merged_into_the_customer_go_too(self, fu: Followups) -> None:
        await fu.entered("anon-1", "value:high")
        await fu.publish(CustomerLinked(customer_id="ann", merged_id="anon-1", at=at(0.5)))
        await fu.manual(customer_id="anon-1", due_at=iso(1))  # written under the old id after the merge
        await fu.publish(CustomerErased(customer_id="ann", merged_ids=["anon-1"], at=at(1)))
        assert await fu.list() == []


class TestMerge:
    async def test_a_merge_moves_follow_ups_and_keeps_one_open_per_policy(self, fu: Followups) -> None:
        await fu.entered("anon-1", "lifecycle:new")
        await fu.entered("anon-1", "value:high")
        await fu.entered("bob", "lifecycle:new", days=0.5)
        fu.clock.advance(hours=1)
        await fu.publish(CustomerLinked(customer_id="bob", merged_id="anon-1", at=at(hours=1)))
        assert await fu.of("anon-1") == []
        found = {(f["policy"], f["status"], f["due_at"], f["reason"]) for f in await fu.of("bob")}
        assert found == {
            ("welcome_new", "cancelled", iso(1), "merged into bob, who has one open under the same policy"),
            ("welcome_new", "pending", iso(1.5), "entered lifecycle:new"),
            ("high_value_7d", "pending", iso(1), "entered value:high")}
        await fu.entered("bob", "value:high", days=2)  # the moved one holds bob's slot
        assert len([f for f in await fu.of("bob") if f["policy"] == "high_value_7d"]) == 1


async def through_the_services(fu: Followups, gateway_app: FastAPI, *messages: dict[str, Any]) -> None:
    """Messages sent as an SDK does, then every service has applied them and published what they
    cause, and follow-up has applied that."""
    if messages:
        response = await fu.client.post("/v1/batch", content=orjson.dumps({"batch": list(messages)}),
                                        headers={**BASIC, "Content-Type": "application/json"})
        assert (response.status_code, response.json()["rejected"]) == (200, []), response.text
    ingest = gateway_app.state.upstreams["ingest"].app
    await ingest.state.pipeline.drain(ingest.state.runtime)
    for name in ("segmentation", "funnel"):
        runtime = gateway_app.state.upstreams[name].app.state.runtime

        async def caught_up() -> bool:
            return not any((await runtime.bus.lag(name, runtime.consumer.topics)).values())  # noqa: B023

        await eventually(caught_up)
        await runtime.relay.flush()
    await fu.settle()


class TestEndToEnd:
    async def test_real_orders_make_the_follow_ups_of_their_tiers_and_stages(self, fu: Followups, gateway_app: FastAPI) -> None:
        await through_the_services(fu, gateway_app, page("p-ann", "ann"), identify("i-ann", "ann", 0.1, email="a@x.io"),
                                   track("t-ann", "ann", "Product Viewed", days=0.2))
        fu.clock.advance(days=3.2)
        assert await fu.sweep() == 1
        stalled = await fu.only("ann")
        assert (stalled["policy"], stalled["due_at"]) == ("stalled_consideration_3d", iso(4.2))

        fu.clock.advance(days=0.3)
        revenue = {"ann": 500, "bob": 400, "cy": 300, "dan": 200, "eve": 100}
        await through_the_services(fu, gateway_app, *(order(f"o-{c}", c, 3.5, revenue=r) for c, r in revenue.items()))
        segmentation = gateway_app.state.upstreams["segmentation"].app
        await reevaluate_now(segmentation.state.runtime, segmentation.state.settings)
        await through_the_services(fu, gateway_app)

        found = await fu.list()
        assert summary(found) == {
            ("ann", "stalled_consideration_3d", "cancelled"), ("ann", "satisfaction_after_purchase_7d", "pending"),
            ("ann", "high_value_7d", "pending"), ("bob", "medium_value_30d", "pending"),
            ("cy", "medium_value_30d", "pending"), ("dan", "low_value_90d", "pending"),
            ("eve", "low_value_90d", "pending"),
            *((c, "welcome_new", "pending") for c in revenue)}
        assert next(f for f in found if f["policy"] == "stalled_consideration_3d")["reason"] == "entered lifecycle/purchase"
        high = next(f for f in found if f["policy"] == "high_value_7d")
        assert (high["channel"], high["priority"], high["due_at"]) == ("phone", "high", iso(4.5))

        response = await fu.client.delete("/api/customers/ann", headers=ADMIN)
        assert response.status_code == 202, response.text
        await through_the_services(fu, gateway_app)
        assert await fu.of("ann") == []
        assert len(await fu.list()) == 8

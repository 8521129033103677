"""What ingest accepts at the edge of its limits reaches every service: the profile (segmentation)
and the funnels, with nothing dead-lettered on the way. SQLite and PostgreSQL.

Each test here once found a bug: properties nested 200-252 levels were accepted, then no consumer
could decode the event (the bus contract's decoder stops at 200 levels) and it was dead-lettered."""
from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI

from services.segmentation.app import reevaluate_now
from shared.bus.base import dlq_topic
from shared.events import CUSTOMERS, FUNNEL, INTERACTIONS, SEGMENTS
from tests.funnel.support import BASIC, Funnels, identify, order, page, track
from tests.helpers import READER, eventually

MAX_NESTING = 64  # docs/api.md section 1 as the README documents it


@pytest.fixture
def funnel_db_url(store_url: str, empty_store_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    # Segmentation on a store of the same kind as the funnel's (PostgreSQL refuses what SQLite keeps).
    monkeypatch.setenv("SEGMENTATION_DATABASE_URL", empty_store_url)
    # Every event counts whatever its age (docs/api.md section 7): the services keep all of history
    # (FUNNEL_ and SEGMENTATION_EVENTS_RETENTION_DAYS default to 0: keep everything).
    return store_url


def nested(levels: int) -> Any:
    """A value `levels` objects deep: nested(2) == {"a": {"a": "leaf"}}."""
    value: Any = "leaf"
    for _ in range(levels):
        value = {"a": value}
    return value


def view_then_buy(key: str, window: float, where: dict[str, Any] | None = None) -> dict[str, Any]:
    viewed: dict[str, Any] = {"type": "track", "event": "Product Viewed", **({"where": where} if where else {})}
    return {"key": key, "conversion_window_days": window, "stages": [
        {"key": "viewed", "match": viewed},
        {"key": "bought", "max_days_from_previous": window, "match": {"type": "track", "event": "Order Completed"}}]}


async def dead_letters(funnels: Funnels) -> int:
    """Records on every dead letter topic (a group that never commits lags by the whole topic)."""
    lag = await funnels.runtime.bus.lag("dead-letter-count", [dlq_topic(t) for t in (INTERACTIONS, CUSTOMERS, SEGMENTS, FUNNEL)])
    return sum(lag.values())


async def profile(funnels: Funnels, customer_id: str) -> dict[str, Any]:
    response = await funnels.client.get(f"/api/customers/{customer_id}", headers=READER)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


class TestNestingAtTheLimit:
    async def test_an_event_nested_64_levels_reaches_the_profile_and_the_funnel(self, funnels: Funnels) -> None:
        await funnels.create(view_then_buy("deep", 30, {"field": "deep.a.a", "op": "exists", "value": True}))
        deep = nested(MAX_NESTING - 1)  # inside `properties` (or `traits`): 64 levels
        view = track("deep-view", "ann", "Product Viewed", -2, deep=deep)
        view["context"] = {"deep": nested(MAX_NESTING - 1)}
        view["custom"] = nested(MAX_NESTING)  # an unknown field: kept under `extra`, one level deeper in the event
        await funnels.send(identify("deep-id", "ann", -3, deep=deep), view, order("deep-o", "ann", -1, revenue=25, deep=deep))
        ann = await profile(funnels, "ann")
        assert (ann["event_count"], ann["order_count"], ann["revenue"]) == (3, 1, 25.0)
        assert ann["traits"] == {"deep": deep}
        assert (await funnels.customer("deep", "ann"))["stage"] == "bought"
        assert (await funnels.customer("lifecycle", "ann"))["attempt"][0]["event_id"] == "deep-view"
        assert await dead_letters(funnels) == 0


class TestCalendarEdges:
    async def test_events_at_the_first_and_last_accepted_moments_reach_every_service(self, funnels: Funnels,
                                                                                     gateway_app: FastAPI) -> None:
        await funnels.create(view_then_buy("century", 36500))
        late_view = {**track("late-view", "late", "Product Viewed"), "timestamp": "8999-12-30T00:00:00Z"}
        late_order = {**order("late-o", "late", revenue=5), "timestamp": "8999-12-31T23:59:59Z"}
        early_view = {**track("early-view", "early", "Product Viewed"), "timestamp": "1900-01-01T00:00:00Z"}
        early_order = {**order("early-o", "early", revenue=7), "timestamp": "1999-12-01T00:00:00Z"}  # 36,493 days later
        await funnels.send(late_view, late_order, early_view, early_order)
        assert (await profile(funnels, "late"))["last_order_at"] == "8999-12-31T23:59:59Z"
        assert (await profile(funnels, "early"))["first_seen"] == "1900-01-01T00:00:00Z"
        for customer in ("late", "early"):
            assert (await funnels.customer("century", customer))["stage"] == "bought"
        report = await funnels.report("century", **{"from": "1900-01-01T00:00:00Z", "to": "8999-12-31T23:59:59Z"})
        assert [s["entered"] for s in report["stages"]] == [2, 2]
        assert [c["customer_id"] for c in await funnels.stage("century", "bought", stalled_days=8000)] == ["early"]  # since 1999
        funnels.clock.advance(days=1)
        segmentation = gateway_app.state.upstreams["segmentation"].app.state
        await reevaluate_now(segmentation.runtime, segmentation.settings)  # the scheduled pass, by the moved clock
        await funnels.settle()
        assert (await profile(funnels, "early"))["lifecycle"] == "churned"
        # follow-ups: `late` became lifecycle:new (when segmentation saw it, by its clock)
        followup = gateway_app.state.upstreams["followup"].app.state.runtime

        async def followups_done() -> bool:
            return not any((await followup.bus.lag("followup", [SEGMENTS, FUNNEL])).values())

        await eventually(followups_done)
        welcome = await funnels.get("/api/followups", customer_id="late")
        assert "welcome_new" in {f["policy"] for f in welcome["items"]}
        assert await dead_letters(funnels) == 0


class TestNames:
    async def test_event_and_page_names_of_200_characters_reach_every_service(self, funnels: Funnels) -> None:
        name = "N" * 199 + "\u00e9"
        await funnels.create({"key": "long", "conversion_window_days": 30, "stages": [
            {"key": "seen", "match": {"type": "page", "event": name}},
            {"key": "done", "match": {"type": "track", "event": name}}]})
        await funnels.send({**page("long-page", "ann", -2), "name": name}, track("long-track", "ann", name, -1))
        assert (await funnels.customer("long", "ann"))["stage"] == "done"
        assert (await profile(funnels, "ann"))["event_count"] == 2
        assert await dead_letters(funnels) == 0

    @pytest.mark.parametrize(("message", "field"), [
        ({"type": "track", "event": "N" * 201}, "event"),
        ({"type": "page", "name": "N" * 201}, "name"),
        ({"type": "track", "event": "Signed\u0000Up"}, "event"),
        ({"type": "screen", "name": "Home\u0000"}, "name"),
    ])
    async def test_a_name_no_store_holds_rejects_that_message(self, funnels: Funnels, message: dict[str, Any],
                                                               field: str) -> None:
        response = await funnels.client.post("/v1/batch", json={"batch": [
            {**message, "messageId": "bad-name", "userId": "ann"}, page("ok", "ann", -1)]}, headers=BASIC)
        assert response.status_code == 200, response.text
        assert response.json()["accepted"] == 1
        [rejected] = response.json()["rejected"]
        assert f"'{field}'" in rejected["reason"], rejected["reason"]
        await funnels.settle()
        assert (await profile(funnels, "ann"))["event_count"] == 1
        assert await dead_letters(funnels) == 0

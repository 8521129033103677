"""Replaying interactions.v1 and customers.v1 from offset 0 into an empty segmentation store
gives the same profiles and memberships. SQLite and PostgreSQL."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from services.segmentation.app import create_app
from services.segmentation.jobs import reevaluate_now
from services.segmentation.logic import builtin_segments
from services.segmentation.settings import SegmentationSettings
from shared.clock import FixedClock
from shared.events import CUSTOMERS, INTERACTIONS
from tests.helpers import ADMIN, READER, eventually, rewind, running
from tests.segmentation.support import Segmentation, identify, order, page, track

EMAIL_VISIT = {"page": {"url": "https://shop.example/?utm_source=newsletter&utm_medium=email"}}
SEARCH_VISIT = {"page": {"url": "https://shop.example/", "referrer": "https://www.bing.com/"}}
CUSTOM = {
    "pro-buyers": {"all": [{"field": "traits.plan", "op": "eq", "value": "pro"}, {"field": "order_count", "op": "gte", "value": 1}]},
    "recent-orders": {"event": "Order Completed", "op": "gte", "value": 1, "within_days": 90},
    "email-or-loyal": {"any": [{"field": "channel", "op": "eq", "value": "email"},
                               {"field": "lifecycle", "op": "in", "value": ["loyal", "at_risk"]}]},
    "top-rfm": {"field": "rfm.label", "op": "in", "value": ["champions", "loyal_customers"]},
}
CUSTOMER_IDS = ["ann", "bob", "anon-bob", "cy", "dan", "eve", "fay", "gus", "anon-gus", "anon-only", "hank",
                "anon-hank"]


@pytest.fixture
def segmentation_db_url(store_url: str) -> str:
    return store_url




async def history_of_events(seg: Segmentation) -> None:
    """Late identifies, anonymous visitors who sign in, duplicates, channels, an erasure, and time
    passing; custom segments defined before the events."""
    for key, rule in CUSTOM.items():
        await seg.define(key, rule)
    await seg.send(
        identify("i-ann-2", "ann", days=-5, plan="pro"),
        identify("i-ann-1", "ann", days=-30, plan="free", city="Oslo"),
        page("p-ann", "ann", days=-31, context=SEARCH_VISIT),
        *(order(f"o-ann-{d}", "ann", days=-d, revenue=40) for d in (3, 20, 25)),
        page("p-anon-bob", None, days=-12, anon="anon-bob", context=EMAIL_VISIT),
        order("o-anon-bob", None, days=-11, anon="anon-bob", total="35.5"),
        page("p-cy", "cy", days=-2),
        order("o-dan", "dan", days=-200, value=90),
        order("o-eve-1", "eve", days=-120, revenue=10), order("o-eve-2", "eve", days=-100, revenue=15),
        page("p-only", None, days=-1, anon="anon-only"),
        page("p-anon-hank", None, days=-8, anon="anon-hank"),
        order("o-hank", "hank", days=-7, anon="anon-hank", revenue=1000),
    )
    await seg.send(identify("i-bob", "bob", days=-10, anon="anon-bob", email="bob@example.com"),
                   order("o-bob", "bob", days=-9, revenue=20))
    await seg.send(order("o-bob", "bob", days=-9, revenue=20))  # an SDK retry
    await seg.reevaluate()
    seg.clock.advance(days=40)
    await seg.send(
        order("o-fay", "fay", days=39, revenue=300), order("o-fay-2", "fay", days=40, revenue=30),
        track("t-gus", None, "Product Viewed", days=38, anon="anon-gus"),
        order("o-gus", "gus", days=39, anon="anon-gus", revenue=5),
        order("o-ann-late", "ann", days=35, revenue=60),
    )
    response = await seg.client.delete("/api/customers/hank", headers=ADMIN)
    assert response.status_code == 202, response.text

    async def erased() -> bool:
        return (await seg.get_profile("anon-hank")).status_code == 404

    await eventually(erased)
    await seg.advance(days=60)


async def observed(client: httpx.AsyncClient) -> dict[str, Any]:
    """Every profile (without when each membership began) and every segment's members."""
    profiles: dict[str, Any] = {}
    for customer in CUSTOMER_IDS:
        response = await client.get(f"/api/customers/{customer}", headers=READER)
        if response.status_code == 404:
            profiles[customer] = None
            continue
        assert response.status_code == 200, response.text
        profile = response.json()
        # a lifecycle reason quotes the days since the last order when the stage was last worked out
        profile["why"] = {k: k if k.startswith("lifecycle:") else w["reason"] for k, w in profile["why"].items()}
        profiles[customer] = profile
    members: dict[str, list[str]] = {}
    for key in [*builtin_segments(), *CUSTOM]:
        response = await client.get(f"/api/segments/{key}/members", params={"limit": 1000}, headers=READER)
        members[key] = [m["customer_id"] for m in response.json()["items"]]
    return {"profiles": profiles, "members": members}




def fresh_segmentation(data_dir: Path, bus_path: Path, store_url: str, clock: FixedClock) -> FastAPI:
    settings = SegmentationSettings(data_dir=data_dir, bus_path=bus_path, database_url=store_url,
                                    reevaluate_seconds=86400)
    app = create_app(settings)
    app.state.runtime.clock = clock
    return app


class TestReplay:
    async def test_replaying_the_bus_into_an_empty_store_gives_the_same_profiles_and_segments(
        self, gateway_app: FastAPI, clock: FixedClock, data_dir: Path, tmp_path: Path, empty_store_url: str
    ) -> None:
        async with running(gateway_app) as client:
            seg = Segmentation(gateway_app, client, clock)
            await history_of_events(seg)
            before = await observed(client)
        assert before["profiles"]["anon-bob"]["customer_id"] == "bob"
        assert before["profiles"]["hank"] is before["profiles"]["anon-hank"] is None
        assert {p["lifecycle"] for p in before["profiles"].values() if p} == {
            "potential", "new", "active", "loyal", "at_risk", "churned"}
        assert all(before["members"][key] for key in CUSTOM), {k: before["members"][k] for k in CUSTOM}

        await rewind(data_dir / "bus.db", "segmentation", [CUSTOMERS, INTERACTIONS])
        replay = fresh_segmentation(tmp_path / "replay", data_dir / "bus.db", empty_store_url, FixedClock(clock.now()))
        async with running(replay) as client:
            runtime = replay.state.runtime
            for key, rule in CUSTOM.items():  # definitions live in the store, not on the bus
                response = await client.post("/api/segments", json={"key": key, "rule": rule}, headers=ADMIN)
                assert response.status_code == 201, response.text

            async def caught_up() -> bool:
                return not any((await runtime.bus.lag("segmentation", [CUSTOMERS, INTERACTIONS])).values())

            await eventually(caught_up)
            await reevaluate_now(runtime, replay.state.settings)
            after = await observed(client)
        assert after["profiles"] == before["profiles"]
        assert after["members"] == before["members"]

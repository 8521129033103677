"""One open follow-up per (customer, policy): redelivered and replayed events add nothing, a later
entry while one is open adds nothing, a new entry after the last one closed starts a new one, and
replaying the topics into a rebuilt store gives the same follow-ups. SQLite and PostgreSQL."""
from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi import FastAPI

from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings
from shared.clock import FixedClock
from shared.events import CUSTOMERS, FUNNEL, SEGMENTS, SegmentChanged, encode, record

from tests.followup.support import Followups, at, iso
from tests.helpers import fix_clocks, rewind, running


@pytest.fixture
def followup_db_url(store_url: str) -> str:
    return store_url


def entered(customer: str, segment: str, days: float = 0) -> SegmentChanged:
    return SegmentChanged(customer_id=customer, segment=segment, change="entered", at=at(days), reason="top 20%")


def replayed(event: SegmentChanged) -> Any:
    """The same fact published again as a new record (another message id): a replay upstream."""
    return record(SegmentChanged, event.customer_id, f"replay-{uuid.uuid4()}", orjson.dumps(event.model_dump(mode="json")))


class TestRedelivery:
    async def test_the_same_segment_change_twice_makes_one_follow_up(self, fu: Followups) -> None:
        event = entered("ann", "value:high")
        await fu.runtime.bus.publish([encode(event), encode(event)])
        await fu.settle()
        await fu.publish(event)
        assert len(await fu.of("ann")) == 1
        assert [e["change"] for e in await fu.events()] == ["created"]

    async def test_a_replayed_fact_under_a_new_message_id_makes_nothing_new(self, fu: Followups) -> None:
        event = entered("ann", "lifecycle:new")
        await fu.publish(event)
        first = await fu.only("ann")
        await fu.ok(first["id"], "complete", {"outcome": "reached"})  # closed: the open slot is free again
        await fu.runtime.bus.publish([replayed(event), replayed(event)])
        await fu.settle()
        assert [(f["id"], f["status"]) for f in await fu.of("ann")] == [(first["id"], "done")]
        assert [e["change"] for e in await fu.events()] == ["created", "completed"]

    async def test_a_replayed_stage_change_makes_nothing_new(self, fu: Followups) -> None:
        await fu.moved("ann", "purchase", days=1)
        made = await fu.only("ann")
        await fu.ok(made["id"], "cancel", {"reason": "test"})
        await fu.moved("ann", "purchase", days=1)
        assert [f["id"] for f in await fu.of("ann")] == [made["id"]]


class TestOneOpenPerCustomerAndPolicy:
    async def test_a_later_entry_while_one_is_open_makes_nothing(self, fu: Followups) -> None:
        await fu.publish(entered("ann", "value:high", days=0))
        await fu.publish(entered("ann", "value:high", days=3))
        only = await fu.only("ann")
        assert only["due_at"] == iso(1)

    async def test_a_new_entry_after_the_last_one_closed_makes_a_new_one(self, fu: Followups) -> None:
        await fu.publish(entered("ann", "lifecycle:new", days=0))
        first = await fu.only("ann")
        await fu.ok(first["id"], "complete", {"outcome": "reached"})
        await fu.exited("ann", "lifecycle:new", days=5)
        await fu.publish(entered("ann", "lifecycle:new", days=40))
        found = await fu.of("ann")
        assert [(f["status"], f["due_at"]) for f in found] == [("done", iso(1)), ("pending", iso(41))]
        assert found[1]["id"] != first["id"]

    async def test_a_new_entry_after_a_cancellation_makes_a_new_one(self, fu: Followups) -> None:
        await fu.publish(entered("ann", "value:high", days=0))
        await fu.exited("ann", "value:high", days=1)
        await fu.publish(entered("ann", "value:high", days=2))
        found = await fu.of("ann")
        assert [(f["status"], f["reason"]) for f in found] == [("cancelled", "left value:high"),
                                                               ("pending", "entered value:high: top 20%")]

    async def test_customers_do_not_share_the_slot(self, fu: Followups) -> None:
        await fu.runtime.bus.publish([encode(entered(c, "value:high")) for c in ("ann", "bob", "cy")])
        await fu.settle()
        assert sorted(f["customer_id"] for f in await fu.list(status="pending")) == ["ann", "bob", "cy"]






def schedule(found: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(f["id"], f["policy"], f["customer_id"], f["status"], f["due_at"], f["reason"]) for f in found]


class TestReplayIntoARebuiltStore:
    async def test_the_same_follow_ups_with_the_same_ids_and_due_times(
        self, gateway_app: FastAPI, clock: FixedClock, data_dir: Path, empty_store_url: str,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        async with running(gateway_app) as client:
            fu = Followups(gateway_app, client, clock)
            await fu.publish(entered("ann", "value:high"), entered("bob", "lifecycle:new", days=1),
                             entered("cy", "lifecycle:churned", days=2))
            await fu.moved("dan", "consideration", days=1)
            await fu.moved("eve", "purchase", days=2)
            await fu.exited("bob", "lifecycle:new", days=3)
            await fu.advance(days=5)
            await fu.publish(entered("ann", "value:high"))  # redelivered later
            before = schedule(await fu.list())
        assert len(before) == 5

        await rewind(data_dir / "bus.db", "followup", [CUSTOMERS, FUNNEL, SEGMENTS])
        monkeypatch.setenv("FOLLOWUP_DATABASE_URL", empty_store_url)
        rebuilt = create_app(GatewaySettings())
        fix_clocks(rebuilt, clock)
        async with running(rebuilt) as client:
            fu = Followups(rebuilt, client, clock)
            await fu.settle()
            await fu.sweep()  # stalled ones come from the scheduler, not the bus
            after = schedule(await fu.list())
        assert after == before

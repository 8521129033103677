"""A consumed batch decides its follow-ups in memory and inserts them together (issue 13): what a
batch holding several changes about one customer gives is what the same changes give one batch
each. SQLite and PostgreSQL."""
from __future__ import annotations

from typing import Any

import pytest

from shared.events import Event, FunnelStageChanged, SegmentChanged, encode

from tests.followup.support import Followups, at


@pytest.fixture
def followup_db_url(store_url: str) -> str:
    return store_url


def story(customer: str) -> list[Event]:
    """Enters, leaves and enters again (a new follow-up after the cancelled one), purchases twice
    (one satisfaction follow-up), and the first entry redelivered as a replay would."""
    def segment(change: str, days: float) -> SegmentChanged:
        return SegmentChanged(customer_id=customer, segment="value:high", change=change, at=at(days))  # type: ignore[arg-type]

    def purchase(days: float) -> FunnelStageChanged:
        return FunnelStageChanged(customer_id=customer, funnel="lifecycle", from_stage="consideration",
                                  to_stage="purchase", at=at(days))

    return [segment("entered", 0), segment("exited", 1), segment("entered", 2), purchase(2), purchase(3),
            segment("entered", 0)]


def shape(found: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Follow-ups without their ids and customer (which differ between the two customers)."""
    return sorted((f["policy"], f["status"], f["due_at"], f["reason"]) for f in found)


def changes(events: list[dict[str, Any]], customer: str) -> list[tuple[str, str]]:
    """The customer's published changes in order per policy (segment and stage changes come on two
    topics, which the consumer may take in either order)."""
    return sorted(((e["change"], e["policy"]) for e in events if e["customer_id"] == customer), key=lambda c: c[1])


class TestManyChangesOfOneCustomerInOneBatch:
    async def test_give_what_the_same_changes_give_one_at_a_time(self, fu: Followups) -> None:
        await fu.runtime.bus.publish([encode(e) for e in story("ann")])
        await fu.settle()
        for event in story("bob"):
            await fu.publish(event)

        assert shape(await fu.of("ann")) == shape(await fu.of("bob"))
        assert len(await fu.of("ann")) == 3  # cancelled and open value:high, satisfaction
        published = await fu.events()
        assert changes(published, "ann") == changes(published, "bob")

    async def test_a_follow_up_created_and_cancelled_in_one_batch_is_stored_cancelled(self, fu: Followups) -> None:
        await fu.runtime.bus.publish([encode(e) for e in story("ann")[:2]])
        await fu.settle()
        assert [(f["status"], f["reason"]) for f in await fu.of("ann")] == [("cancelled", "left value:high")]
        assert changes(await fu.events(), "ann") == [("created", "high_value_7d"), ("cancelled", "high_value_7d")]


class TestABatchCancelsWhatItsChangesName:
    async def test_and_leaves_the_customers_other_follow_ups_open(self, fu: Followups) -> None:
        """Stored: ann's welcome, high-value call and stalled nudge. One batch: she moves on from
        consideration (which cancels the nudge only) and leaves value:high (the call only)."""
        await fu.entered("ann", "lifecycle:new")
        await fu.entered("ann", "value:high")
        await fu.moved("ann", "consideration")
        await fu.advance(days=3)  # the stalled nudge is made
        batch = [FunnelStageChanged(customer_id="ann", funnel="lifecycle", from_stage="consideration",
                                    to_stage="interest", at=at(3.5)),
                 SegmentChanged(customer_id="ann", segment="value:high", change="exited", at=at(3.5))]
        await fu.runtime.bus.publish([encode(e) for e in batch])
        await fu.settle()

        found = {f["policy"]: (f["status"] == "cancelled", f["reason"]) for f in await fu.of("ann")}
        assert found == {"welcome_new": (False, "entered lifecycle:new"),
                         "high_value_7d": (True, "left value:high"),
                         "stalled_consideration_3d": (True, "entered lifecycle/interest")}

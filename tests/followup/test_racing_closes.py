"""Two closes of one follow-up at once (the API's complete, a consumed batch's cancel, a sweep):
the first wins, the second waits for it and then finds the follow-up closed. One final status, one
final event. PostgreSQL runs them side by side (SQLite has one writer at a time)."""
from __future__ import annotations

import asyncio
from datetime import timedelta

import orjson
import pytest

from services.followup import followups
from shared.outbox import Outbox
from tests.followup.support import Followups, at


@pytest.fixture
def followup_db_url(store_url: str) -> str:
    return store_url


async def test_a_complete_racing_a_cancel_leaves_the_first(fu: Followups, store_url: str) -> None:
    if not store_url.startswith("postgresql"):
        pytest.skip("SQLite runs one writer at a time: no two closes overlap")
    await fu.entered("ann", "value:high")
    made = await fu.only("ann")
    store, grace, now = fu.runtime.store, timedelta(hours=1), at(1)
    first, second = Outbox(), Outbox()
    async with store.transaction() as session:  # the cancel holds its row until it commits
        assert await followups.close(session, followups.followups.c.id == made["id"], "cancelled", now, first, grace,
                                     "left the segment") == [made["id"]]

        async def complete() -> None:
            async with store.transaction() as other:
                await followups.complete(other, made["id"], "reached", None, now, second, grace)

        racing = asyncio.create_task(complete())
        await asyncio.sleep(0.5)
        assert not racing.done()  # it waits for the cancel's lock
    await asyncio.wait_for(racing, 10)
    assert [orjson.loads(r.value)["change"] for r in first.records] == ["cancelled"]
    assert second.records == []  # it found the follow-up closed: no second final event
    assert (await fu.only("ann"))["status"] == "cancelled"

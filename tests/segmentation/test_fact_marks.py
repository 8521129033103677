"""Whose facts changed (fact_changes, read by the previews' in-memory facts): a change of a
customer's memberships marks them, as their profile writes do, whoever makes it (a consumed batch,
the scheduled pass, a custom segment's evaluation). Memberships carry no trigger (migration 0011):
`apply` marks the customers whose memberships it changed, once per transaction, and skips the
ones a write of the same transaction marked already. SQLite and PostgreSQL."""
from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import insert, select

from services.segmentation.evaluation import Wanted, apply
from services.segmentation.store import fact_changes, facts_marked, profiles
from shared.outbox import Outbox
from shared.store import Store

NOW = datetime(2024, 3, 1, tzinfo=UTC)


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    store = Store(store_url)
    async with store.transaction() as session:
        await session.execute(insert(profiles), [
            {"customer_id": c, "traits": b"{}", "traits_at": b"{}", "first_seen": NOW, "last_seen": NOW, "event_count": 1,
             "order_count": 0, "revenue": 0.0} for c in ("ann", "bob")])
    yield store
    await store.dispose()


async def versions(store: Store) -> dict[str, int]:
    async with store.read() as session:
        return {c: int(v) for c, v in (await session.execute(select(fact_changes.c.customer_id, fact_changes.c.version))).all()}


async def change_lifecycle(store: Store, wanted: list[Wanted]) -> Outbox:
    outbox = Outbox()
    async with store.transaction() as session:
        await apply(session, wanted, ("lifecycle:",), NOW, outbox)
    return outbox


class TestMembershipChangesMarkFacts:
    async def test_entries_and_exits_mark_their_customers_and_no_one_else(self, store: Store) -> None:
        before = await versions(store)
        assert set(before) == {"ann", "bob"}  # the profile inserts' trigger
        await change_lifecycle(store, [Wanted("ann", {"lifecycle:new": "1 order(s)"}), Wanted("nobody", {"lifecycle:new": "x"})])
        entered = await versions(store)
        assert entered["ann"] > before["ann"] and entered["bob"] == before["bob"]
        assert "nobody" not in entered  # no profile, no facts to mark (as the triggers did)

        await change_lifecycle(store, [Wanted("ann", {"lifecycle:new": "reworded"})])  # the same segment: facts unchanged
        assert await versions(store) == entered

        await change_lifecycle(store, [Wanted("ann", {})])  # exits
        exited = await versions(store)
        assert exited["ann"] > entered["ann"] and exited["bob"] == before["bob"]

    async def test_a_customer_marked_earlier_in_the_transaction_is_not_marked_again(self, store: Store) -> None:
        before = await versions(store)
        async with store.transaction() as session:
            facts_marked(session).add("ann")  # as a profile write of this transaction would have
            await apply(session, [Wanted("ann", {"lifecycle:new": "x"}), Wanted("bob", {"lifecycle:new": "x"})],
                        ("lifecycle:",), NOW, Outbox())
        after = await versions(store)
        assert after["ann"] == before["ann"] and after["bob"] > before["bob"]
        async with store.transaction() as session:  # a new transaction starts with no one marked
            assert facts_marked(session) == set()

"""Whose facts changed (fact_changes, read by the previews' in-memory facts): every write to a
table a rule reads (profiles, memberships, behaviour events, funnel stages) marks its customers,
whoever makes it (a consumed batch, a merge, the scheduled pass, a custom segment's evaluation);
a profile that goes (erasure, merge) moves the generation. No trigger does it (migrations 0011,
0012): the writers call `mark_facts_changed`, once per customer and transaction. The brute-force
check: after each kind of write, the previews' facts equal facts loaded afresh from the rows.
SQLite and PostgreSQL."""
from __future__ import annotations

import math
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from sqlalchemy import insert, select

from services.segmentation.evaluation import Wanted, apply
from services.segmentation.facts import ProfileFacts, load_facts
from services.segmentation.rules import CHOICE_FIELDS, NUMBER_FIELDS, TEXT_FIELDS, parse
from services.segmentation.store import fact_changes, facts_marked, mark_facts_changed, profiles
from shared.events import FunnelStageChanged, Interaction, encode
from shared.outbox import Outbox
from shared.rules import Rule, behaviours
from shared.store import Store
from tests.helpers import ADMIN, eventually
from tests.segmentation.support import T0, Segmentation, identify, order, page, survey, track

NOW = datetime(2024, 3, 1, tzinfo=UTC)
RETENTION_DAYS = 20


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    store = Store(store_url)
    async with store.transaction() as session:
        await session.execute(insert(profiles), [
            {"customer_id": c, "traits": b"{}", "traits_at": b"{}", "first_seen": NOW, "last_seen": NOW, "event_count": 1,
             "order_count": 0, "revenue": 0.0} for c in ("ann", "bob")])
        await mark_facts_changed(session, ["ann", "bob"])  # as every writer of profiles does
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
        assert set(before) == {"ann", "bob"}
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


class TestMarkingWithoutAProfile:
    async def test_a_customer_without_a_profile_is_marked_once_their_profile_is_written(self, store: Store) -> None:
        """A stage move (or membership) of a customer with no profile yet marks nobody; their
        profile written later in the same transaction marks them (a consumed batch records stage
        moves before interactions)."""
        async with store.transaction() as session:
            await mark_facts_changed(session, ["cy"])
            assert "cy" not in facts_marked(session)
            await session.execute(insert(profiles).values(
                customer_id="cy", traits=b"{}", traits_at=b"{}", first_seen=NOW, last_seen=NOW, event_count=1,
                order_count=0, revenue=0.0))
            await mark_facts_changed(session, ["cy"])
        assert "cy" in await versions(store)


# Every field a rule can read of a customer, and behaviours of each kind of event kept.
FIELDS = (*NUMBER_FIELDS, *CHOICE_FIELDS, *TEXT_FIELDS, "traits.plan", "funnel.checkout.stage")
EVERY_FACT = {"any": [{"field": f, "op": "exists"} for f in FIELDS] + [
    {"event": "Order Completed", "op": "gte", "value": 1, "within_days": 30},
    {"event": "Order Completed", "where": {"field": "revenue", "op": "gte", "value": 100}, "op": "gte", "value": 1,
     "within_days": 365},
    {"event": "Page Viewed", "op": "gte", "value": 1, "within_days": 365},
    {"event": "Signed Up", "op": "gte", "value": 1, "within_days": 365},
]}


def _plain(value: Any) -> Any:
    """A fact as comparable: numbers rounded (the two loads compute day counts a little apart), NaN as None."""
    if isinstance(value, float | np.floating):
        return None if math.isnan(value) else round(float(value), 6)
    return value


def by_customer(facts: ProfileFacts, rule: Rule, alive: Any = None) -> dict[str, tuple[Any, ...]]:
    """Each (living) customer's value of every field and count of every behaviour."""
    columns = [facts.column(f) for f in FIELDS]
    counts = [facts.counts(b) for b in behaviours(rule)]
    return {c: (*(_plain(col[i]) for col in columns), *(int(n[i]) for n in counts))
            for i, c in enumerate(facts.ids) if alive is None or alive[i]}


@pytest.fixture
def segmentation_db_url(store_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("SEGMENTATION_EVENTS_RETENTION_DAYS", str(RETENTION_DAYS))  # so the scheduled pass prunes
    return store_url


class TestEveryWriterMarks:
    async def check(self, seg: Segmentation, step: str) -> None:
        """The facts previews keep (brought up to date by the marks) equal facts loaded afresh."""
        rule = parse(EVERY_FACT)
        now = seg.clock.now()
        preview_facts = seg.app.state.preview_facts
        async with preview_facts.lock, seg.runtime.store.read() as session:
            index = await preview_facts.current(session)
            kept = by_customer(await index.facts(session, [rule], now), rule, index.alive_mask())
            fresh = by_customer(await load_facts(session, [rule], now, None), rule)
        assert kept == fresh, step

    async def test_previews_see_every_kind_of_write(self, seg: Segmentation) -> None:
        await seg.send(identify("i1", "ann", days=-3, plan="pro"), order("o1", "ann", days=-2, revenue=150),
                       page("p1", "bob", days=-1), track("t1", "cy", "Signed Up", days=-10))
        await self.check(seg, "built")  # the facts are built here: what follows must reach them by marks

        await seg.send(order("o2", "bob", days=-1, revenue=80), identify("i2", "ann", days=-1, plan="free"),
                       survey("s1", "ann", "nps", 9, days=-1), survey("s2", "bob", "csat", 2),
                       page("p2", "dee", days=-1), track("t2", "cy", "Signed Up", days=-4))
        await self.check(seg, "consumed batch")

        await seg.funnel_move("ann", "checkout", "cart", days=-1)
        await seg.funnel_move("ann", "checkout", "paid", days=0)
        await self.check(seg, "stage moves")

        # a stage move and the customer's first event in one consumed batch (the moves go first)
        when = T0 - timedelta(hours=1)
        await seg.runtime.bus.publish([
            encode(FunnelStageChanged(customer_id="eve", funnel="checkout", from_stage=None, to_stage="cart", at=when)),
            encode(Interaction(event_id="e1", customer_id="eve", user_id="eve", type="track", name="Signed Up",
                               properties={}, occurred_at=when, received_at=when))])
        await seg.settle()
        await self.check(seg, "stage and first event together")

        await seg.send(order("o3", None, days=-1, anon="anon-bob", revenue=300), page("p3", None, days=-1, anon="anon-bob"))
        await self.check(seg, "anonymous visitor")
        await seg.send(identify("i3", "bob", days=0, anon="anon-bob"))  # merged into bob
        await self.check(seg, "merge")

        await seg.advance(days=1)  # lifecycle, value tiers and RFM
        await self.check(seg, "scheduled pass")
        await seg.advance(days=RETENTION_DAYS)  # every behaviour event kept is past retention now
        await self.check(seg, "retention")

        response = await seg.client.delete("/api/customers/ann", headers=ADMIN)
        assert response.status_code == 202, response.text

        async def gone() -> bool:
            return (await seg.get_profile("ann")).status_code == 404

        await eventually(gone)
        await self.check(seg, "erasure")
        async with seg.runtime.store.read() as session:
            assert "ann" not in set((await session.execute(select(fact_changes.c.customer_id))).scalars())

"""A consumed batch advances stored attempts from what it appended when that gives the same (events
after everything stored), and recounts a customer's whole history otherwise. Whichever way each
customer went, the attempts after random batches with late, repeated, out-of-order and
equal-time events, a link and a funnel with a per-stage window are those a whole recount of
every customer gives (`rebuild`), and their times are the brute-force reference's.
SQLite and PostgreSQL."""
from __future__ import annotations

import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from sqlalchemy import select

from services.funnel.app import MIGRATIONS
from services.funnel.handlers import make_handlers
from services.funnel.logic import LIFECYCLE, Matched, parse_funnel
from services.funnel.store import attempts
from services.funnel.tracking import add_definition, definitions, lock_funnels, rebuild
from shared.consumer import Transaction
from shared.events import CustomerLinked, Event, Interaction
from shared.outbox import Outbox
from shared.store import Store
from tests.funnel.test_semantics import reference_attempt

T0 = datetime(2024, 3, 1, tzinfo=UTC)
NOW = T0 + timedelta(days=400)
# A funnel with a short window, a per-stage window (a day from seen to added) and a stage a
# screen (no journey step) fills.
QUICK = parse_funnel({"key": "quick", "conversion_window_days": 10, "stages": [
    {"key": "seen", "match": [{"type": ["page", "screen"]}, {"type": "track", "event": "Product Viewed"}]},
    {"key": "added", "match": {"type": "track", "event": "Product Added"}, "max_days_from_previous": 1},
    {"key": "bought", "match": {"type": "track", "event": "Order Completed"}}]})

# Each kind of message and the lifecycle stages it fills (bits), written down apart from logic.py:
# awareness 1, interest 2, consideration 4, purchase 8, loyalty 16.
KINDS: dict[str, tuple[str, str | None, int]] = {
    "page": ("page", "Home", 0b00001), "screen": ("screen", "Home", 0b00000),
    "signup": ("track", "Signed Up", 0b00011), "view": ("track", "Product Viewed", 0b00101),
    "added": ("track", "Product Added", 0b00101), "order": ("track", "Order Completed", 0b11001),
    "email": ("identify", None, 0b00010), "plain": ("identify", None, 0b00000)}
WALK = ["page", "signup", "view", "added", "order", "order"]


def interaction(event_id: str, customer: str, kind: str, day: float) -> Interaction:
    type_, name, _ = KINDS[kind]
    traits = {"email": f"{customer}@example.com"} if kind == "email" else {"plan": "pro"} if kind == "plain" else {}
    properties = {"revenue": 5 + day % 7} if kind == "order" else {}
    return Interaction(event_id=event_id, customer_id=customer, user_id=customer, type=type_, name=name,
                       properties=properties, traits=traits, channel=random.Random(customer).choice(["direct", "email"]),
                       occurred_at=T0 + timedelta(days=day), received_at=NOW)


def customer_events(rng: random.Random, customer: str) -> list[Interaction]:
    """Steps forward in time (a quarter day to 100 days apart, some at equal times): a walk through
    the lifecycle's stages with other kinds in between."""
    day, found = float(rng.randint(0, 100)), []
    kinds = [k for step in WALK[:rng.randint(2, len(WALK))] for k in [*rng.choices(list(KINDS), k=rng.randint(0, 2)), step]]
    for i, kind in enumerate(kinds):
        day += rng.choice([0, 0.25, 0.5, 1, 1, 3, 3, 8, 20, 100])
        found.append(interaction(f"{customer}-{i}", customer, kind, day))
    return found


def arrivals(rng: random.Random, events: list[Interaction]) -> list[list[Event]]:
    """Batches in time order except: some events come batches late, some come again (a redelivery,
    or the same id with another time: the first copy stays), and `c01` is linked with `anon`."""
    order = sorted(events, key=lambda e: e.occurred_at)
    late = [e for e in order if rng.random() < 0.15]
    stream: list[Event] = [e for e in order if e not in late]
    for e in late:
        due = sum(1 for x in stream if isinstance(x, Interaction) and x.occurred_at <= e.occurred_at)
        stream.insert(rng.randint(due, len(stream)), e)
    for e in rng.sample(order, len(order) // 8):
        again = e if rng.random() < 0.5 else e.model_copy(update={"occurred_at": e.occurred_at + timedelta(days=1)})
        stream.insert(rng.randint(0, len(stream)), again)
    stream.insert(len(stream) // 2, CustomerLinked(customer_id="c01", merged_id="anon", at=NOW))
    batches = []
    while stream:
        size = rng.randint(1, 8)
        batches.append(stream[:size])
        stream = stream[size:]
    return batches


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    store = Store(store_url)
    await store.migrate(MIGRATIONS)
    async with store.transaction() as session:
        await add_definition(session, QUICK, NOW)
    yield store
    await store.dispose()


async def consume(store: Store, batch: list[Event]) -> None:
    handlers = make_handlers(0)
    async with store.transaction() as session:
        tx = Transaction(session, NOW)
        await lock_funnels(session)
        for event in batch:
            for handler in handlers[type(event)]:
                await handler(event, tx)
        await tx.run_deferred()


async def attempt_rows(store: Store) -> dict[tuple[str, str], tuple[Any, ...]]:
    columns = (attempts.c.depth, attempts.c.times, attempts.c.event_ids, attempts.c.first_at, attempts.c.reached_at,
               attempts.c.channel, attempts.c.journey)
    async with store.read() as session:
        rows = await session.execute(select(attempts.c.funnel, attempts.c.customer_id, *columns)
                                     .where(attempts.c.depth > 0))
        return {(r[0], r[1]): tuple(r[2:]) for r in rows}


async def recounted_whole(store: Store) -> dict[tuple[str, str], tuple[Any, ...]]:
    async with store.transaction() as session:
        await lock_funnels(session, changing_definitions=True)
        for funnel in await definitions(session):
            await rebuild(session, funnel, NOW, Outbox())
    return await attempt_rows(store)


def reference_times(events: list[Interaction]) -> dict[str, tuple[float, ...]]:
    """Per customer, the lifecycle attempt's times from the first copy of each event."""
    kept: dict[str, Interaction] = {}
    for e in events:
        kept.setdefault(e.event_id, e)
    matched: dict[str, list[Matched]] = {}
    for e in kept.values():
        customer = "c01" if e.customer_id == "anon" else e.customer_id
        kind = next(k for k, (t, n, _) in KINDS.items() if (t, n) == (e.type, e.name)
                    and (t != "identify" or ("email" in e.traits) == (k == "email")))
        if KINDS[kind][2]:
            matched.setdefault(customer, []).append(Matched(e.occurred_at.timestamp(), e.event_id, KINDS[kind][2]))
    return {c: reference_attempt(LIFECYCLE, m) for c, m in matched.items()}


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_advanced_attempts_are_those_of_a_whole_recount(store: Store, seed: int) -> None:
    rng = random.Random(seed)
    events = [e for n in range(16) for e in customer_events(rng, f"c{n:02d}")] + customer_events(rng, "anon")
    sent: list[Interaction] = []
    for batch in arrivals(rng, events):
        await consume(store, batch)
        sent += [e for e in batch if isinstance(e, Interaction)]
    advanced = await attempt_rows(store)
    assert advanced == await recounted_whole(store)
    lifecycle = {c: tuple(orjson.loads(row[1])) for (f, c), row in advanced.items() if f == "lifecycle"}
    assert lifecycle == {c: t for c, t in reference_times(sent).items() if t}


async def consumed(store: Store, *batches: list[Event]) -> dict[tuple[str, str], tuple[Any, ...]]:
    """The attempts after the batches, having checked they are those of a whole recount."""
    for batch in batches:
        await consume(store, batch)
    advanced = await attempt_rows(store)
    assert advanced == await recounted_whole(store)
    return advanced


def days(row: tuple[Any, ...]) -> list[float]:
    return [(t - T0.timestamp()) / 86400 for t in orjson.loads(row[1])]


class TestWhereOnlyAWholeRecountIsRight:
    async def test_a_stage_window_lets_a_later_start_go_further(self, store: Store) -> None:
        """Seen at 0 and 5, added at 5.5: only the start at 5 has added within its day."""
        rows = await consumed(store, [interaction("p1", "ann", "page", 0), interaction("p2", "ann", "page", 5)],
                              [interaction("a", "ann", "added", 5.5)])
        assert days(rows[("quick", "ann")]) == [5, 5.5]

    async def test_a_later_start_reaches_an_event_past_the_first_window(self, store: Store) -> None:
        """Lifecycle (90 days): a page at 0, a view at 50, then a signup at 95 (past the page's window)."""
        rows = await consumed(store, [interaction("p", "ann", "page", 0), interaction("v", "ann", "view", 50)],
                              [interaction("s", "ann", "signup", 95)])
        assert days(rows[("lifecycle", "ann")]) == [50, 95]

    async def test_a_late_first_stage_uses_stored_later_stages(self, store: Store) -> None:
        """An identify with an email (interest, no awareness) holds no stage; a page before it comes later."""
        rows = await consumed(store, [interaction("e", "ann", "email", 5)], [interaction("p", "ann", "page", 1)])
        assert days(rows[("lifecycle", "ann")]) == [1, 5]

    async def test_a_link_brings_the_merged_history(self, store: Store) -> None:
        """`anon` paged and signed up; `ann` paged later, then views a product and is linked in one batch."""
        rows = await consumed(store, [interaction("p0", "anon", "page", 0), interaction("s", "anon", "signup", 1),
                                      interaction("p3", "ann", "page", 3)],
                              [interaction("v", "ann", "view", 4), CustomerLinked(customer_id="ann", merged_id="anon", at=NOW)])
        assert days(rows[("lifecycle", "ann")]) == [0, 1, 4]

    async def test_a_repeated_event_with_another_time_keeps_the_first_copy(self, store: Store) -> None:
        rows = await consumed(store, [interaction("p", "ann", "page", 0)],
                              [interaction("s", "ann", "signup", 2), interaction("s", "ann", "signup", 1)],
                              [interaction("s", "ann", "signup", 3), interaction("v", "ann", "view", 4)])
        assert days(rows[("lifecycle", "ann")]) == [0, 2, 4]

"""Two segmentation replicas on one PostgreSQL store, as in scale mode: the links of stitched
customers arrive in one replica's partitions, their late anonymous events in the other's. The
batches take turns on the customers they share (shared/customer_locks.py): every stitched
profile ends with both orders and every event, without a deadlock. (Unlocked, the late order
could commit under the visitor just after the link moved the visitor's rows: lost to the
customer for good.) And the scheduled pass runs once per interval between the replicas, not
once in each."""
from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from services.segmentation.app import MIGRATIONS
from services.segmentation.handlers import make_handlers
from services.segmentation.settings import SegmentationSettings
from services.segmentation.store import bus_tables, customer_locks, profiles
from shared.bus.base import Record, dlq_topic
from shared.bus.embedded import EmbeddedBus
from shared.consumer import ConsumerLoop
from shared.events import INTERACTIONS, CustomerLinked, Event, Interaction, encode
from shared.outbox import OutboxRelay
from shared.periodic import DUE_AFTER
from shared.store import Store
from tests.segmentation.support import T0

CUSTOMERS = 20


def batch(events: list[Event]) -> list[Record]:
    return [Record(r.topic, 0, offset, r.key, r.value, r.headers, 0) for offset, r in enumerate(map(encode, events))]


def anonymous(visitor: str, n: int, name: str) -> Interaction:
    return Interaction(event_id=f"{visitor}-{n}", customer_id=visitor, anonymous_id=visitor, type="track", name=name,
                       occurred_at=T0, received_at=T0)


def order(customer: str) -> Interaction:
    return Interaction(event_id=f"{customer}-order", customer_id=customer, user_id=customer, type="track",
                       name="Order Completed", properties={"revenue": 10}, occurred_at=T0, received_at=T0)


@pytest.fixture
async def store(store_url: str) -> Store:
    if store_url.startswith("sqlite"):
        pytest.skip("SQLite runs one writer at a time: nothing to deadlock")
    store = Store(store_url)
    await store.migrate(MIGRATIONS)
    yield store  # type: ignore[misc]
    await store.dispose()


async def test_replicas_sharing_stitched_customers_lose_no_event_and_deadlock_never(
    store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bus = EmbeddedBus(tmp_path / "bus.db")
    await bus.start()
    handlers = make_handlers(SegmentationSettings(data_dir=tmp_path).thresholds(), 365)
    one, two = (ConsumerLoop("segmentation", bus, store, bus_tables, handlers, OutboxRelay(store, bus_tables, bus),
                             max_attempts=1, customer_locks=customer_locks) for _ in range(2))
    caplog.set_level(logging.INFO, "funnelstream.consumer")
    try:
        for round_ in range(3):
            visitors = [f"visitor-{round_}-{i}" for i in range(CUSTOMERS)]
            users = [f"user-{round_}-{i}" for i in range(CUSTOMERS)]
            await one.process(batch([anonymous(v, 1, "Product Viewed") for v in visitors]))
            links = [CustomerLinked(customer_id=u, merged_id=v, at=T0) for u, v in zip(users, visitors, strict=True)]
            late = [anonymous(v, 2, "Order Completed") for v in reversed(visitors)]  # the other order
            await asyncio.wait_for(asyncio.gather(one.process(batch([*links, *map(order, users)])),
                                                  two.process(batch(late))), 120)
        async with store.read() as session:
            held = {c: (orders, events) for c, orders, events in await session.execute(
                select(profiles.c.customer_id, profiles.c.order_count, profiles.c.event_count))}
        dead = await bus.lag("a-reader", [dlq_topic(INTERACTIONS)])
    finally:
        await bus.stop()
    assert held == {f"user-{r}-{i}": (2, 3) for r in range(3) for i in range(CUSTOMERS)}  # view, two orders
    assert sum(dead.values()) == 0
    assert "message by message" not in caplog.text
    assert "hit a conflict" not in caplog.text  # no deadlock


async def test_two_replicas_run_the_scheduled_pass_once_per_interval(
    store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Both replicas' timers fire every half second; between them the pass runs about every half
    second, never twice in one interval, and never fails on the other's run record."""
    from services.segmentation import app as segmentation_app
    from tests.helpers import eventually, running

    interval = 0.5
    passes: list[float] = []
    real_pass = segmentation_app.reevaluate_now

    async def counted(runtime, settings):  # type: ignore[no-untyped-def]
        passes.append(time.monotonic())
        return await real_pass(runtime, settings)

    monkeypatch.setattr(segmentation_app, "reevaluate_now", counted)
    replicas = [segmentation_app.create_app(SegmentationSettings(
        data_dir=tmp_path / f"replica-{n}", database_url=store_url, reevaluate_seconds=interval)) for n in (1, 2)]
    started = time.monotonic()
    async with running(replicas[0]), running(replicas[1]):
        async def enough() -> bool:
            return len(passes) >= 5
        await eventually(enough, timeout=60)
        elapsed = time.monotonic() - started
        ran = len(passes)
    assert ran <= elapsed / (interval * DUE_AFTER) + 1, (ran, elapsed)
    assert "periodic job segmentation-reevaluate failed" not in caplog.text


async def test_a_lock_table_emptied_by_hand_is_restored_not_a_dead_letter(store: Store, tmp_path: Path) -> None:
    from sqlalchemy import func, text

    from shared.customer_locks import bucket_of

    async with store.transaction() as session:
        await session.execute(text("DELETE FROM customer_locks"))
    bus = EmbeddedBus(tmp_path / "bus.db")
    await bus.start()
    handlers = make_handlers(SegmentationSettings(data_dir=tmp_path).thresholds(), 365)
    loop = ConsumerLoop("segmentation", bus, store, bus_tables, handlers, OutboxRelay(store, bus_tables, bus),
                        max_attempts=1, customer_locks=customer_locks)
    try:
        await loop.process(batch([order("user-a"), order("user-b")]))
        dead = await bus.lag("a-reader", [dlq_topic(INTERACTIONS)])
    finally:
        await bus.stop()
    async with store.read() as session:
        held = dict((await session.execute(select(profiles.c.customer_id, profiles.c.order_count))).tuples().all())
        rows = await session.scalar(select(func.count()).select_from(text("customer_locks")))
    assert held == {"user-a": 1, "user-b": 1}
    assert sum(dead.values()) == 0
    assert rows == len({bucket_of("user-a"), bucket_of("user-b")})
